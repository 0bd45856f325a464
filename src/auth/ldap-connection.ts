/**
 * Opening a TLS-protected LDAP connection to the first of the configured servers that answers.
 * ldaps:// is TLS from the first byte; ldap:// is upgraded with StartTLS (RFC 4513 §3) before
 * anything else is sent, and a failed StartTLS is a failed server: never plaintext.
 *
 * A server that does not answer (refused, timed out, TLS handshake failed) is skipped for the
 * next; the last server that answered is tried first next time, so a dead first server costs
 * one timeout, not one per sign-in. The connect and TLS handshake are bounded by `timeout`
 * here, and ldapts bounds every operation by it.
 */
import net from 'node:net';
import tls, { type ConnectionOptions } from 'node:tls';
import { Client, ResultCodeError } from 'ldapts';

export interface LdapServers {
  readonly urls: readonly string[];
  readonly startTls: boolean;
  /** PEM CA bundle for the servers' certificates; the system's CAs when undefined. */
  readonly ca: Buffer | undefined;
  readonly verifyCertificate: boolean;
  /** Milliseconds, for the connect, the TLS handshake and each operation. */
  readonly timeout: number;
}

/** No server could be reached over TLS. The message lists each URL with its error. */
export class LdapUnreachable extends Error {
  constructor(readonly failures: readonly { readonly url: string; readonly error: string }[]) {
    super(failures.map((f) => `${f.url}: ${f.error}`).join('; '));
    this.name = 'LdapUnreachable';
  }
}

/** One open, TLS-protected connection, not yet bound. */
export interface LdapConnection {
  readonly client: Client;
  readonly url: string;
  /** The servers tried before this one, with their errors. */
  readonly skipped: readonly { readonly url: string; readonly error: string }[];
  /** Unbinds and closes the socket; never rejects. */
  close(): Promise<void>;
}

export class LdapConnector {
  readonly #servers: LdapServers;
  /** Index of the URL that answered last. */
  #preferred = 0;

  constructor(servers: LdapServers) {
    if (servers.urls.length === 0) throw new Error('auth.ldap.url: no server given');
    for (const url of servers.urls) {
      // The config schema refuses this too; this is the line that keeps passwords off the wire.
      if (/^ldap:\/\//i.test(url) && !servers.startTls) throw new Error(`${url} would send passwords in cleartext: use ldaps://, or startTls: true`);
    }
    this.#servers = servers;
  }

  get urls(): readonly string[] {
    return this.#servers.urls;
  }

  /** The first server that answers, starting with the one that answered last; rejects with LdapUnreachable. */
  async open(): Promise<LdapConnection> {
    const { urls } = this.#servers;
    const failures: { url: string; error: string }[] = [];
    for (let n = 0; n < urls.length; n++) {
      const index = (this.#preferred + n) % urls.length;
      const url = urls[index]!;
      try {
        const client = await this.#connect(url);
        this.#preferred = index;
        return { client, url, skipped: failures, close: () => client.unbind().catch(() => undefined) };
      } catch (err) {
        failures.push({ url, error: describeLdapError(err) });
      }
    }
    throw new LdapUnreachable(failures);
  }

  async #connect(url: string): Promise<Client> {
    const { timeout } = this.#servers;
    const parsed = new URL(url);
    const host = parsed.hostname.replace(/^\[|\]$/g, '');
    const secure = parsed.protocol.toLowerCase() === 'ldaps:';
    const port = parsed.port ? Number(parsed.port) : secure ? 636 : 389;
    const tlsOptions: ConnectionOptions = {
      rejectUnauthorized: this.#servers.verifyCertificate,
      ...(this.#servers.ca ? { ca: this.#servers.ca } : {}),
      // RFC 6066 §3: SNI carries host names only; an IP is still checked against the certificate.
      ...(net.isIP(host) ? {} : { servername: host }),
    };
    // The socket is opened here, so that a server that does not answer is known before any
    // LDAP operation, and handed to ldapts already connected.
    const socket = await openSocket(secure ? () => tls.connect({ ...tlsOptions, host, port }) : () => net.connect({ host, port }), secure ? 'secureConnect' : 'connect', timeout);
    // ldapts calls the factory again only to reconnect a closed client on its own, unbound:
    // smtpgate opens a new connection instead, so a second call gets a socket that fails.
    let handed = false;
    const handOver = (() => {
      if (!handed) {
        handed = true;
        return socket;
      }
      const closed = new net.Socket();
      closed.destroy(new Error('the connection was closed'));
      return closed;
    }) as unknown as typeof net.connect & typeof tls.connect;
    // ldapts treats any tlsOptions as "TLS from the first byte", so ldap:// gets none here.
    const client = new Client({ url, timeout, connectTimeout: timeout, ...(secure ? { tlsOptions, createSecureConnection: handOver } : { createConnection: handOver }) });
    if (secure) return client;
    try {
      await withDeadline(client.startTLS({ ...tlsOptions, host }), timeout, 'StartTLS handshake timed out');
    } catch (err) {
      await client.unbind().catch(() => undefined);
      socket.destroy();
      throw new Error(`StartTLS failed: ${describeLdapError(err)}`);
    }
    return client;
  }
}

/** Resolves with the socket once `ready` fires; rejects on its error or after `ms`. */
function openSocket(open: () => net.Socket, ready: 'connect' | 'secureConnect', ms: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = open();
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new Error(`no answer within ${ms} ms`)), ms);
    socket.once('error', fail);
    socket.once(ready, () => {
      clearTimeout(timer);
      socket.removeListener('error', fail);
      // Until ldapts puts its own listener on (at the first operation), an error must not be
      // unhandled; ldapts then sees a closed socket.
      socket.on('error', () => undefined);
      resolve(socket);
    });
  });
}

/** An error as one line for a log or a probe report: the message, and the code when the message lacks it. */
export function describeLdapError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  if (err instanceof ResultCodeError) {
    // ldapts writes "<diagnostic message> Code: 0x31", and the diagnostic is often empty.
    const diagnostic = err.message.replace(/\s*Code: 0x[0-9a-f]+$/i, '').trim();
    return `${err.name.replace(/Error$/, '')} (LDAP result ${err.code})${diagnostic ? `: ${diagnostic}` : ''}`;
  }
  const code = (err as { code?: unknown }).code;
  const message = err.message.replace(/\s+/g, ' ').trim();
  return typeof code === 'string' && !message.includes(code) ? `${message} (${code})` : message;
}

/** `promise`, or a rejection with `message` after `ms`. */
function withDeadline<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}
