/**
 * One backend session per client session: opened lazily at the first approved MAIL FROM,
 * kept for further transactions, closed at QUIT or when the client goes away. Nothing is
 * queued: every envelope command is passed on and awaited, and the client gets the backend's
 * reply. This is what lets smtpgate refuse a single recipient at RCPT time instead of
 * silently dropping it.
 */
import { BackendConnection, BackendError, type BackendClientOptions, type DataWriter, type SmtpReply } from './smtp-client.js';
import type { BackendPool, BackendTarget } from './backend-pool.js';
import { UpstreamAuthError, type TokenSource } from './upstream-tokens.js';

export type { BackendTarget } from './backend-pool.js';

/** Who the client is, for XCLIENT/XFORWARD (Postfix XCLIENT_README). */
export interface ClientIdentity {
  readonly addr: string;
  readonly port: number;
  /** Reverse-resolved name, or undefined when unknown. */
  readonly name?: string;
  readonly helo?: string;
  readonly proto: 'SMTP' | 'ESMTP';
  readonly login?: string;
  /** The signed-in user's groups, for backend.auth.mailboxes (asked only when a rule names a group). */
  readonly groups?: () => readonly string[];
}

export type IdentityMode = 'xclient' | 'xforward' | 'none';

/** How smtpgate itself signs in to a backend that demands AUTH (backend.auth). */
export type BackendLogin =
  | { readonly mechanism: 'PLAIN' | 'LOGIN'; readonly user: string; readonly password: string }
  | {
      readonly mechanism: 'XOAUTH2';
      /** The upstream mailbox this session's mail goes out as (upstream-mailbox.ts). */
      readonly mailbox: (identity: ClientIdentity) => string;
      readonly tokens: TokenSource;
    };

export interface BackendSessionSettings {
  readonly identity: IdentityMode;
  readonly auth?: BackendLogin;
}

export interface BackendSessionEvents {
  /** Called once per opened connection with the time it took. */
  onConnected(target: BackendTarget, seconds: number): void;
  onError(target: BackendTarget, err: BackendError): void;
  /**
   * Client-chosen identity attributes that went to the backend as [UNAVAILABLE] because it
   * could not hold them unchanged (a login over 255 octets encoded, say): the backend then
   * judges the client without them, which its operator should be able to find out.
   */
  onIdentityReplaced?(target: BackendTarget, attributes: string[]): void;
}

type Connect = (opts: BackendClientOptions) => Promise<BackendConnection>;

export class BackendSession {
  readonly #pool: BackendPool;
  readonly #settings: BackendSessionSettings;
  readonly #events: BackendSessionEvents;
  readonly #connect: Connect;
  #conn: BackendConnection | undefined;
  /** The backend the open (or last) connection went to, or was last tried. */
  #target: BackendTarget | undefined;
  /** MAIL was accepted and neither a final dot nor RSET has ended the transaction. */
  #inTransaction = false;
  /** The client session is over: a connection that finishes opening after this is dropped. */
  #closed = false;
  /**
   * The errors of connections smtpgate dropped on purpose (a refused or abandoned message, a
   * client gone mid-exchange). What they cause is not the backend's failure, and is not
   * reported as one: otherwise every smuggling attempt or lost client would count towards
   * smtpgate_backend_errors_total and wake whoever alerts on it.
   */
  readonly #dropped = new WeakSet<BackendError>();

  constructor(pool: BackendPool, settings: BackendSessionSettings, events: BackendSessionEvents, connect: Connect = (o) => BackendConnection.connect(o)) {
    this.#pool = pool;
    this.#settings = settings;
    this.#events = events;
    this.#connect = connect;
  }

  /**
   * Label of the backend this session talks to; when none could be reached, the one tried last
   * ("none" only before the first attempt).
   */
  get targetName(): string {
    return this.#target?.name ?? 'none';
  }

  get isOpen(): boolean {
    return this.#conn !== undefined && !this.#conn.closed;
  }

  /** The backend's EHLO capabilities; opens the session if needed. */
  async capabilities(identity: ClientIdentity): Promise<ReadonlyMap<string, string>> {
    return (await this.#open(identity)).capabilities;
  }

  /** The capabilities of the open connection, without opening one (undefined if none is open). */
  get openCapabilities(): ReadonlyMap<string, string> | undefined {
    return this.#conn && !this.#conn.closed && !this.#closed ? this.#conn.capabilities : undefined;
  }

  /**
   * Starts a transaction. A transaction the client abandoned (RSET, or a new MAIL after a
   * refused DATA) is reset on the backend first, so the backend never merges two envelopes.
   */
  async mail(line: string, identity: ClientIdentity): Promise<SmtpReply> {
    const open = this.#conn;
    const conn = open && !open.closed && !this.#closed ? open : await this.#open(identity);
    if (this.#inTransaction) {
      const rset = await this.#run(conn.command('RSET'));
      this.#inTransaction = false;
      if (rset.code !== 250) throw new BackendError('protocol', `backend refused RSET: ${rset.code} ${rset.text}`);
    }
    if (this.#settings.identity === 'xforward' && conn.hasCapability('XFORWARD')) {
      // XFORWARD describes the next transaction only, so it precedes every MAIL.
      const target = this.#target!;
      const reply = await this.#run(conn.xforward(xforwardAttributes(identity), { onReplaced: (names) => this.#events.onIdentityReplaced?.(target, names) }));
      if (reply.code !== 250) throw new BackendError('protocol', `backend refused XFORWARD: ${reply.code} ${reply.text}`);
    }
    const reply = await this.#run(conn.command(line));
    if (reply.code >= 200 && reply.code < 300) this.#inTransaction = true;
    return reply;
  }

  /**
   * Passthrough AUTH: opens the session (with the client's identity) and forwards the client's
   * credentials. A refused login leaves the connection open for another try, as SMTP allows.
   */
  async authenticate(user: string, password: string, mechanism: 'PLAIN' | 'LOGIN', identity: ClientIdentity): Promise<SmtpReply> {
    const conn = await this.#open(identity);
    return this.#run(mechanism === 'LOGIN' ? conn.authLogin(user, password) : conn.authPlain(user, password));
  }

  rcpt(line: string): Promise<SmtpReply> {
    return this.#command(line);
  }

  /** Sends DATA; resolves with the 354 (or the refusal). */
  startData(): Promise<SmtpReply> {
    return this.#command('DATA');
  }

  /** One command on the open connection (rejects if none is open). */
  #command(line: string): Promise<SmtpReply> {
    try {
      return this.#run(this.#require().command(line));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * After the 354: returns the writer for the canonical body (see BackendConnection.beginData).
   * `onFailure` hears of a connection failure before finishData(); the message is then lost.
   * To abandon the message (smuggling guard, size limit, client gone), call abort(): the
   * connection is dropped without the final dot, so the backend delivers nothing.
   */
  beginData(onFailure: (err: unknown) => void): DataWriter {
    const conn = this.#require();
    let writer: DataWriter;
    try {
      writer = conn.beginData();
    } catch (err) {
      throw this.#report(err);
    }
    writer.onFailure((err) => onFailure(this.#report(err)));
    return writer;
  }

  /** Writes the final dot and returns the backend's reply to the message. */
  async finishData(writer: DataWriter): Promise<SmtpReply> {
    try {
      return await this.#run(writer.finish());
    } finally {
      this.#inTransaction = false;
      if (this.#conn?.closed) this.#conn = undefined;
    }
  }

  /**
   * The client signed in after a MAIL had opened this connection: the connection carries the
   * identity it was opened with (XCLIENT without LOGIN, the fallback upstream mailbox), so it
   * is QUIT and the next MAIL opens one with the new identity. AUTH is refused inside a
   * transaction, so nothing is in flight here.
   */
  releaseIdentity(): void {
    const conn = this.#conn;
    this.#conn = undefined;
    this.#inTransaction = false;
    if (conn && !conn.closed) void conn.quit();
  }

  /** Abandon the current transaction without a final dot: the only safe abort mid-DATA. */
  abort(): void {
    if (this.#conn) this.#drop(this.#conn);
    this.#conn = undefined;
    this.#inTransaction = false;
  }

  /**
   * QUIT politely; never throws. A connection in the middle of an exchange (the client left
   * while the backend's reply to DATA was awaited, say) is dropped instead: after a 354 the
   * backend would take the QUIT for message text and hold the connection open.
   */
  async close(): Promise<void> {
    this.#closed = true;
    const conn = this.#conn;
    this.#conn = undefined;
    this.#inTransaction = false;
    if (!conn || conn.closed) return;
    if (conn.busy) this.#drop(conn);
    else await conn.quit();
  }

  async #open(identity: ClientIdentity): Promise<BackendConnection> {
    if (this.#closed) throw this.#clientGone('the client session is over');
    if (this.#conn && !this.#conn.closed) return this.#conn;
    this.#conn = undefined;
    this.#inTransaction = false;
    const login = this.#settings.auth;
    // The token first: without one there is no point in opening a connection. Each session
    // opens its own connection, so one never carries two mailboxes' sign-ins.
    let oauth: { mailbox: string; token: string } | undefined;
    if (login?.mechanism === 'XOAUTH2') {
      const mailbox = login.mailbox(identity);
      oauth = { mailbox, token: await login.tokens.token(mailbox) };
    }
    // After the token: smtpgate_backend_connect_seconds times the backend, not the token endpoint.
    const started = process.hrtime.bigint();
    const { conn, target } = await this.#connectFirstAvailable();
    this.#target = target;
    try {
      if (this.#settings.identity === 'xclient' && conn.hasCapability('XCLIENT')) {
        // A backend session holds one SASL identity: with fixed backend credentials smtpgate
        // logs in itself, so XCLIENT must not claim the client's login (the AUTH would get 503).
        const attrs = xclientAttributes(identity);
        if (this.#settings.auth) delete attrs.LOGIN;
        const reply = await conn.xclient(attrs, { clientHelo: identity.helo, onReplaced: (names) => this.#events.onIdentityReplaced?.(target, names) });
        // Postfix answers 220 and expects a new EHLO (the client module re-sends it).
        if (reply.code !== 220 && reply.code !== 250) {
          throw new BackendError('protocol', `backend refused XCLIENT: ${reply.code} ${reply.text}; check smtpd_authorized_xclient_hosts on the backend`);
        }
      }
      // After XCLIENT, which resets the backend's session state, so the login sticks.
      if (login?.mechanism === 'XOAUTH2' && oauth) {
        const { reply, challenge } = await conn.authXOAuth2(oauth.mailbox, oauth.token);
        if (reply.code !== 235) {
          login.tokens.rejected(oauth.mailbox, reply, challenge);
          throw new UpstreamAuthError('refused', oauth.mailbox, `the backend refused the OAuth2 token of ${oauth.mailbox}: ${reply.code} ${reply.text}${challenge ? ` (${challenge})` : ''}`, reply);
        }
        login.tokens.accepted(oauth.mailbox);
      } else if (login && login.mechanism !== 'XOAUTH2') {
        const reply = login.mechanism === 'LOGIN' ? await conn.authLogin(login.user, login.password) : await conn.authPlain(login.user, login.password);
        if (reply.code !== 235) throw new BackendError('protocol', `backend refused smtpgate's own credentials (backend.auth): ${reply.code} ${reply.text}`);
      }
    } catch (err) {
      this.#drop(conn);
      throw this.#report(err);
    }
    // The client left while this connection was being opened: nobody will ever close it.
    if (this.#closed) {
      void conn.quit();
      throw this.#clientGone('the client session ended while the backend session was opening');
    }
    conn.on('close', () => {
      if (this.#conn === conn) {
        this.#conn = undefined;
        this.#inTransaction = false;
      }
    });
    this.#conn = conn;
    this.#events.onConnected(target, Number(process.hrtime.bigint() - started) / 1e9);
    return conn;
  }

  /**
   * Tries the pool's candidates in order. A backend that can't be reached, times out or greets
   * with a refusal is marked down and the next is tried; nothing of the client's transaction
   * has been sent at this point, so failing over can't duplicate a message.
   */
  async #connectFirstAvailable(): Promise<{ conn: BackendConnection; target: BackendTarget }> {
    let last: unknown;
    for (const target of this.#pool.candidates()) {
      // So that a failure to reach any names the backend it last tried (the log's "backend").
      this.#target = target;
      try {
        const conn = await this.#connect(target.options);
        this.#pool.markUp(target);
        return { conn, target };
      } catch (err) {
        if (!(err instanceof BackendError)) throw err;
        this.#pool.markDown(target);
        this.#events.onError(target, err);
        last = err;
      }
    }
    throw last;
  }

  #require(): BackendConnection {
    // The client left while this command waited (on the limits store, say).
    if (this.#closed) throw this.#clientGone('the client session is over');
    if (!this.#conn || this.#conn.closed) throw this.#report(new BackendError('closed', 'backend session is not open'));
    return this.#conn;
  }

  /** Reports a BackendError from `op` to the pool's events on its way to the caller. */
  #run<T>(op: Promise<T>): Promise<T> {
    return op.catch((err: unknown) => {
      throw this.#report(err);
    });
  }

  #report(err: unknown): unknown {
    // A refusal of the client itself (kind 'refused') is no fault of the backend's.
    if (err instanceof BackendError && err.kind !== 'refused' && this.#target && !this.droppedByUs(err)) this.#events.onError(this.#target, err);
    return err;
  }

  /** An error for a call made after the client left: smtpgate's doing, not the backend's (see #dropped). */
  #clientGone(message: string): BackendError {
    const err = new BackendError('closed', message);
    this.#dropped.add(err);
    return err;
  }

  /** Aborts `conn` on smtpgate's own account (see #dropped). */
  #drop(conn: BackendConnection): void {
    // Known before the abort: the connection's failure callbacks run inside it.
    const err = new BackendError('closed', 'backend connection aborted by smtpgate');
    this.#dropped.add(err);
    conn.abort(err);
  }

  /**
   * True for an error that smtpgate caused itself by dropping the connection (see #dropped):
   * the abort error, or a "connection is closed" error caused by it. The caller should treat
   * it as the client's leaving, not as a backend failure.
   */
  droppedByUs(err: unknown): boolean {
    if (!(err instanceof BackendError)) return false;
    return this.#dropped.has(err) || (err.cause instanceof BackendError && this.#dropped.has(err.cause));
  }
}

/**
 * XCLIENT_README: an IPv6 ADDR carries the "IPV6:" prefix. An IPv4 client seen through a
 * dual-stack socket ("::ffff:192.0.2.1") goes as its IPv4 address: a backend without IPv6
 * (Postfix inet_protocols = ipv4) refuses any IPv6 form, and its mynetworks lists IPv4.
 */
export function identityAddr(addr: string): string {
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(addr);
  if (mapped) return mapped[1]!;
  return addr.includes(':') ? `IPV6:${addr}` : addr;
}

/** The attributes XCLIENT and XFORWARD share; LOGIN is XCLIENT's alone. Values are encoded by identity-lines.ts. */
function identityAttributes(id: ClientIdentity): Record<string, string | undefined> {
  const attrs: Record<string, string | undefined> = { ADDR: identityAddr(id.addr), PORT: String(id.port), NAME: id.name, PROTO: id.proto };
  if (id.helo) attrs.HELO = id.helo;
  return attrs;
}

function xclientAttributes(id: ClientIdentity): Record<string, string | undefined> {
  const attrs = identityAttributes(id);
  if (id.login) attrs.LOGIN = id.login;
  return attrs;
}

const xforwardAttributes = identityAttributes;
