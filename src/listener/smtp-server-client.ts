/**
 * smtp-server's session and TLS socket, adapted into the plain values the ClientSession reads
 * (session/client-session.ts): smtp-server's types stop here.
 */
import type { TLSSocket } from 'node:tls';
import type { SMTPServerSession } from 'smtp-server';
import type { ClientConnection, PeerCertificate } from '../session/client-session.js';

/** One client connection as smtp-server's session object has it now (read when asked, not copied). */
export class SmtpServerClient implements ClientConnection {
  readonly #session: SMTPServerSession;

  constructor(session: SMTPServerSession) {
    this.#session = session;
  }

  get id(): string {
    return this.#session.id;
  }

  get remoteAddress(): string {
    return this.#session.remoteAddress;
  }

  get remotePort(): number {
    return this.#session.remotePort;
  }

  secure(): boolean {
    return this.#session.secure;
  }

  tlsVersion(): string | undefined {
    const tls = this.#session.tlsOptions;
    return tls ? tls.version : undefined;
  }

  tlsCipher(): string | undefined {
    const tls = this.#session.tlsOptions;
    return tls ? tls.name : undefined;
  }

  tlsServername(): string | undefined {
    // smtp-server sets it from the handshake (implicit TLS and STARTTLS); its typings lack it.
    const name = (this.#session as { servername?: unknown }).servername;
    return typeof name === 'string' && name ? name : undefined;
  }

  helo(): string | undefined {
    return this.#session.hostNameAppearsAs || undefined;
  }

  greeting(): 'HELO' | 'EHLO' | undefined {
    const opening = this.#session.openingCommand;
    return opening === 'HELO' || opening === 'EHLO' ? opening : undefined;
  }

  inTransaction(): boolean {
    return Boolean(this.#session.envelope?.mailFrom);
  }

  recipients(): readonly string[] {
    return this.#session.envelope?.rcptTo?.map((r) => r.address) ?? [];
  }

  recipientCount(): number {
    return this.#session.envelope.rcptTo.length;
  }
}

/** The client certificate of a finished handshake (empty fingerprint: the client sent none). */
export function peerCertificate(socket: TLSSocket): PeerCertificate {
  const cert = socket.getPeerCertificate();
  return {
    fingerprint256: (cert && cert.fingerprint256) || '',
    subjectCN: typeof cert?.subject?.CN === 'string' ? cert.subject.CN : undefined,
    authorized: socket.authorized,
    authorizationError: String(socket.authorizationError),
  };
}
