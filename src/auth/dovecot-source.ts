/**
 * `auth.backend: dovecot`: passwords are checked by Dovecot's auth service, over its
 * auth-client socket (the one Postfix's `smtpd_sasl_type = dovecot` uses), so smtpgate signs
 * users in against whatever passdb the mail server already has.
 *
 *   auth:
 *     backend: dovecot
 *     dovecot: { socket: /run/dovecot/auth-client, service: smtp, timeout: 5s }
 *
 * One connection is opened at the first sign-in and kept; sign-ins share it. When it ends
 * (Dovecot restarted, a protocol error) the requests on it fail as `unavailable` and the next
 * sign-in opens a new one. Whatever the client used (PLAIN or LOGIN), smtpgate holds the
 * password and asks Dovecot with PLAIN.
 *
 * Dovecot holds every failed sign-in back for `auth_failure_delay` (2 s by default) before it
 * answers, so `timeout` must be longer than that, or wrong passwords read as `unavailable`.
 */
import type { DovecotConfig } from '../config/auth-section.js';
import type { Logger } from '../logging/logger.js';
import type { AuthOutcome, AuthRequest, Authenticator, SourceDeps } from './authenticator.js';
import { DovecotConnection, describeSocket } from './dovecot-connection.js';
import { DovecotProtocolError, authPlainLine, interpretReply, plainCanCarry } from './dovecot-protocol.js';

export class DovecotAuthenticator implements Authenticator {
  readonly kind = 'dovecot';
  readonly #config: DovecotConfig;
  readonly #log: Logger;
  /** "dovecot auth at /run/dovecot/auth-client", the start of every detail and probe message. */
  readonly #where: string;
  /** The connection in use or being opened; undefined until the first sign-in and after it ends. */
  #connection: Promise<DovecotConnection> | undefined;
  #closed = false;

  constructor(config: DovecotConfig, deps: SourceDeps) {
    this.#config = config;
    this.#log = deps.log.child({ source: 'dovecot' });
    this.#where = `dovecot auth at ${describeSocket(config.socket)}`;
  }

  async authenticate(req: AuthRequest): Promise<AuthOutcome> {
    if (!plainCanCarry(req.username, req.password)) {
      this.#log.debug({ user: req.username, session: req.sessionId }, 'dovecot: NUL in the login or password, not sent');
      return { ok: false, reason: 'bad_credentials', detail: 'a NUL in the login or password cannot be sent with PLAIN' };
    }
    const started = Date.now();
    let outcome: AuthOutcome;
    try {
      const connection = await this.#connect();
      const remaining = Math.max(1, this.#config.timeout - (Date.now() - started));
      const reply = await connection.request(
        (id) =>
          authPlainLine({
            id,
            service: this.#config.service,
            login: req.username,
            password: req.password,
            remoteAddress: req.remoteAddress,
            sessionId: req.sessionId,
            tls: req.tls !== undefined,
          }),
        remaining,
      );
      outcome = interpretReply(reply, req.username);
      if (reply.kind === 'CONT') this.#log.warn({ user: req.username, session: req.sessionId }, 'dovecot: CONT for a complete PLAIN sign-in; refused');
      if (!outcome.ok && outcome.detail) outcome = { ...outcome, detail: `${this.#where}: ${outcome.detail}` };
    } catch (err) {
      outcome = { ok: false, reason: 'unavailable', detail: `${this.#where}: ${describeError(err)}` };
    }
    this.#report(req, outcome, Date.now() - started);
    return outcome;
  }

  /**
   * Opens a connection of its own (not the shared one), completes the handshake and reports
   * the protocol version and the mechanisms. Rejects when PLAIN is not among them: smtpgate
   * could then sign nobody in.
   */
  async probe(): Promise<string> {
    let connection: DovecotConnection;
    try {
      connection = await DovecotConnection.open(this.#config.socket, this.#config.timeout, this.#log);
    } catch (err) {
      throw new Error(`${this.#where}: ${describeError(err)}${fixFor(err, this.#config)}`);
    }
    connection.close(new Error('probe done'));
    const { version, mechanisms, serverPid } = connection.handshake;
    const offered = mechanisms.filter((m) => !m.flags.includes('private')).map((m) => m.name);
    if (!offered.includes('PLAIN')) {
      throw new Error(`${this.#where} offers no PLAIN mechanism (offers ${offered.join(' ') || 'none'}): add plain to auth_mechanisms in Dovecot's configuration`);
    }
    return `${this.#where}: protocol ${version.major}.${version.minor}${serverPid ? `, auth process ${serverPid}` : ''}, mechanisms ${offered.join(' ')}`;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const pending = this.#connection;
    this.#connection = undefined;
    const connection = await pending?.catch(() => undefined);
    connection?.close(new Error('the dovecot source was closed'));
  }

  /** The shared connection, opened on first use; sign-ins that arrive during the handshake wait for it. */
  #connect(): Promise<DovecotConnection> {
    if (this.#closed) return Promise.reject(new Error('the dovecot source was closed'));
    if (this.#connection) return this.#connection;
    const opening = DovecotConnection.open(this.#config.socket, this.#config.timeout, this.#log).then(async (connection) => {
      if (!connection.handshake.mechanisms.some((m) => m.name === 'PLAIN')) {
        connection.close();
        throw new Error('Dovecot offers no PLAIN mechanism: add plain to auth_mechanisms');
      }
      this.#log.debug({ version: connection.handshake.version, serverPid: connection.handshake.serverPid }, 'dovecot: connected');
      connection.onClose((err) => {
        if (this.#connection === opening) this.#connection = undefined;
        if (!this.#closed) this.#log.debug({ err: err.message }, 'dovecot: connection ended; the next sign-in reconnects');
      });
      return connection;
    });
    this.#connection = opening;
    // A failed attempt is not kept: the next sign-in tries again.
    opening.catch(() => {
      if (this.#connection === opening) this.#connection = undefined;
    });
    return opening;
  }

  #report(req: AuthRequest, outcome: AuthOutcome, ms: number): void {
    const fields = { user: req.username, session: req.sessionId, ms };
    if (outcome.ok) this.#log.debug({ ...fields, as: outcome.user.username }, 'dovecot: signed in');
    else if (outcome.reason === 'unavailable') this.#log.warn({ ...fields, detail: outcome.detail }, 'dovecot: unavailable');
    else this.#log.debug({ ...fields, reason: outcome.reason, detail: outcome.detail }, 'dovecot: refused');
  }
}

function describeError(err: unknown): string {
  if (err instanceof DovecotProtocolError) return `protocol error: ${err.message}`;
  const e = err as NodeJS.ErrnoException;
  return e.code && !e.message.includes(e.code) ? `${e.code}: ${e.message}` : String(e.message ?? err);
}

/** What the operator can do about a failed probe, by the socket error. */
function fixFor(err: unknown, config: DovecotConfig): string {
  const code = (err as NodeJS.ErrnoException).code;
  const unix = config.socket.kind === 'unix';
  switch (code) {
    case 'ENOENT':
      return ' (is Dovecot running, with service auth { unix_listener auth-client } at this path?)';
    case 'EACCES':
      return ' (give smtpgate\'s user access: service auth { unix_listener auth-client { mode, user, group } })';
    case 'ECONNREFUSED':
      return unix
        ? ' (the socket exists but nobody listens: is Dovecot running?)'
        : ` (nothing listens there: add service auth { inet_listener { port = ${config.socket.kind === 'inet' ? config.socket.port : ''} } } to Dovecot)`;
    default:
      if (err instanceof DovecotProtocolError) return ' (is this Dovecot\'s auth-client socket, not auth-userdb or another service?)';
      return '';
  }
}
