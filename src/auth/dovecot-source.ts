/**
 * `auth.backend: dovecot`: passwords are checked by Dovecot's auth service, over its
 * auth-client socket (the one Postfix's `smtpd_sasl_type = dovecot` uses), so smtpgate signs
 * users in against whatever passdb the mail server already has.
 *
 *   auth:
 *     backend: dovecot
 *     dovecot: { socket: /run/dovecot/auth-client, lookupSocket: /run/dovecot/auth-userdb, service: smtp, timeout: 5s }
 *
 * One connection is opened at the first sign-in and kept; sign-ins share it. When it ends
 * (Dovecot restarted, a protocol error) the requests on it fail as `unavailable` and the next
 * sign-in opens a new one. Whatever the client used (PLAIN or LOGIN), smtpgate holds the
 * password and asks Dovecot with PLAIN.
 *
 * Dovecot holds every failed sign-in back for `auth_failure_delay` (2 s by default) before it
 * answers, so `timeout` must be longer than that, or wrong passwords read as `unavailable`.
 *
 * Lookups without a password (`lookup`, for app passwords) can't go over auth-client, which
 * only checks passwords: they use the auth-master protocol on `lookupSocket`, with a kept
 * connection of their own. See `lookup` for what is asked.
 */
import { dovecotLookupProblem, type DovecotConfig } from '../config/auth-section.js';
import type { Logger } from '../logging/logger.js';
import type { AuthOutcome, AuthRequest, Authenticator, LookupRequest, SourceDeps } from './authenticator.js';
import { DovecotConnection, SharedConnection, describeSocket, type DovecotSocket } from './dovecot-connection.js';
import {
  AUTH_CLIENT,
  AUTH_MASTER,
  DovecotProtocolError,
  authPlainLine,
  interpretPassLookup,
  interpretReply,
  interpretUserLookup,
  masterLookupLine,
  masterLookupRefusal,
  plainCanCarry,
  type AuthReply,
  type MasterAnswer,
  type MasterHandshake,
  type ServerHandshake,
} from './dovecot-protocol.js';

/** The master socket, as lookups use it. */
interface LookupLink {
  readonly socket: DovecotSocket;
  /** "dovecot lookups at /run/dovecot/auth-userdb", the start of every lookup detail. */
  readonly where: string;
  readonly connection: SharedConnection<MasterHandshake, MasterAnswer>;
}

export class DovecotAuthenticator implements Authenticator {
  readonly kind = 'dovecot';
  readonly #config: DovecotConfig;
  readonly #log: Logger;
  /** "dovecot auth at /run/dovecot/auth-client", the start of every detail and probe message. */
  readonly #where: string;
  readonly #client: SharedConnection<ServerHandshake, AuthReply>;
  /** Undefined without auth.dovecot.lookupSocket: lookups are then unavailable. */
  readonly #lookups: LookupLink | undefined;

  constructor(config: DovecotConfig, deps: SourceDeps) {
    this.#config = config;
    this.#log = deps.log.child({ source: 'dovecot' });
    this.#where = `dovecot auth at ${describeSocket(config.socket)}`;
    this.#client = new SharedConnection(() => this.#openClient(), this.#log);
    const lookupSocket = config.lookupSocket;
    this.#lookups = lookupSocket && {
      socket: lookupSocket,
      where: `dovecot lookups at ${describeSocket(lookupSocket)}`,
      connection: new SharedConnection(() => DovecotConnection.open(lookupSocket, AUTH_MASTER, this.#config.timeout, this.#log), this.#log),
    };
  }

  async authenticate(req: AuthRequest): Promise<AuthOutcome> {
    if (!plainCanCarry(req.username, req.password)) {
      this.#log.debug({ user: req.username, session: req.sessionId }, 'dovecot: NUL in the login or password, not sent');
      return { ok: false, reason: 'bad_credentials', detail: 'a NUL in the login or password cannot be sent with PLAIN' };
    }
    const started = Date.now();
    let outcome: AuthOutcome;
    try {
      const connection = await this.#client.get();
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
        this.#remaining(started),
      );
      outcome = interpretReply(reply, req.username);
      if (reply.kind === 'CONT') this.#log.warn({ user: req.username, session: req.sessionId }, 'dovecot: CONT for a complete PLAIN sign-in; refused');
      if (!outcome.ok && outcome.detail) outcome = { ...outcome, detail: `${this.#where}: ${outcome.detail}` };
    } catch (err) {
      outcome = { ok: false, reason: 'unavailable', detail: `${this.#where}: ${describeError(err)}` };
    }
    this.#report(req, outcome, Date.now() - started, 'signed in');
    return outcome;
  }

  /**
   * Asks the passdb, as a sign-in does but without the password (PASS on the master socket):
   * found → ok, as Dovecot spells the user; found with `nologin` → disabled. The passdb says
   * NOTFOUND alike for an unknown user, a denied one (deny = yes) and an expired password,
   * so then the userdb is asked (USER): a user it knows is disabled, one it doesn't is
   * unknown_user (see interpretUserLookup for the setups that blur this). Dovecot keeps no
   * addresses or groups smtpgate could use: the attributes file supplies those.
   *
   * `timeout` covers the whole lookup, both questions and connecting included.
   */
  async lookup(req: LookupRequest): Promise<AuthOutcome> {
    const started = Date.now();
    const outcome = await this.#lookup(req, started);
    this.#report(req, outcome, Date.now() - started, 'looked up');
    return outcome;
  }

  async #lookup(req: LookupRequest, started: number): Promise<AuthOutcome> {
    const link = this.#lookups;
    if (!link) return { ok: false, reason: 'unavailable', detail: dovecotLookupProblem(this.#config) };
    const request = { login: req.username, service: this.#config.service, remoteAddress: req.remoteAddress, sessionId: req.sessionId };
    const refusal = masterLookupRefusal(request);
    if (refusal) return { ok: false, reason: 'unknown_user', detail: `${link.where}: ${refusal}` };
    try {
      const connection = await link.connection.get();
      const ask = (command: 'PASS' | 'USER') => connection.request((id) => masterLookupLine({ ...request, id, command }), this.#remaining(started));
      const passdb = interpretPassLookup(await ask('PASS'), req.username);
      const outcome = 'askUserdb' in passdb ? interpretUserLookup(await ask('USER')) : passdb;
      return !outcome.ok && outcome.detail ? { ...outcome, detail: `${link.where}: ${outcome.detail}` } : outcome;
    } catch (err) {
      return { ok: false, reason: 'unavailable', detail: `${link.where}: ${describeError(err)}` };
    }
  }

  /**
   * Opens a connection of its own (not the shared one), completes the handshake and reports
   * the protocol version and the mechanisms. Rejects when PLAIN is not among them: smtpgate
   * could then sign nobody in. With a lookupSocket, also makes one passdb lookup there, of a
   * name no one has, which tells whether Dovecot lets smtpgate make passdb lookups at all.
   */
  async probe(): Promise<string> {
    let connection: DovecotConnection<ServerHandshake, AuthReply>;
    try {
      connection = await DovecotConnection.open(this.#config.socket, AUTH_CLIENT, this.#config.timeout, this.#log);
    } catch (err) {
      throw new Error(`${this.#where}: ${describeError(err)}${fixFor(err, this.#config.socket, 'auth-client')}`);
    }
    connection.close(new Error('probe done'));
    const { version, mechanisms, serverPid } = connection.handshake;
    const offered = mechanisms.filter((m) => !m.flags.includes('private')).map((m) => m.name);
    if (!offered.includes('PLAIN')) {
      throw new Error(`${this.#where} offers no PLAIN mechanism (offers ${offered.join(' ') || 'none'}): add plain to auth_mechanisms in Dovecot's configuration`);
    }
    const auth = `${this.#where}: protocol ${version.major}.${version.minor}${serverPid ? `, auth process ${serverPid}` : ''}, mechanisms ${offered.join(' ')}`;
    return this.#lookups ? `${auth}; ${await this.#probeLookups(this.#lookups)}` : auth;
  }

  async #probeLookups(link: LookupLink): Promise<string> {
    let connection: DovecotConnection<MasterHandshake, MasterAnswer>;
    try {
      connection = await DovecotConnection.open(link.socket, AUTH_MASTER, this.#config.timeout, this.#log);
    } catch (err) {
      throw new Error(`${link.where}: ${describeError(err)}${fixFor(err, link.socket, 'auth-userdb')}`);
    }
    const login = `smtpgate-probe-${process.pid}-${Date.now()}`;
    let answer: MasterAnswer;
    try {
      answer = await connection.request((id) => masterLookupLine({ id, command: 'PASS', login, service: this.#config.service, remoteAddress: '', sessionId: 'probe' }), this.#config.timeout);
    } catch (err) {
      throw new Error(`${link.where}: ${describeError(err)}${fixFor(err, link.socket, 'auth-userdb')}`);
    } finally {
      connection.close(new Error('probe done'));
    }
    if (answer.line.kind === 'FAIL') {
      throw new Error(
        `${link.where}: a passdb lookup failed${answer.line.reason ? ` (${answer.line.reason})` : ''}: Dovecot allows passdb lookups on a mode 0666 socket only to its owner and group ` +
          `(set service auth { unix_listener auth-userdb { mode = 0660  group = <smtpgate's group> } }), and needs a passdb that can look users up without a password (not pam or checkpassword)`,
      );
    }
    const { version, serverPid } = connection.handshake;
    return `lookups at ${describeSocket(link.socket)}: protocol ${version.major}.${version.minor}${serverPid ? `, auth process ${serverPid}` : ''}, passdb lookups allowed`;
  }

  async close(): Promise<void> {
    await Promise.all([this.#client.close(), this.#lookups?.connection.close()]);
  }

  /** Opens an auth-client connection for the shared one, refusing a Dovecot without PLAIN. */
  async #openClient(): Promise<DovecotConnection<ServerHandshake, AuthReply>> {
    const connection = await DovecotConnection.open(this.#config.socket, AUTH_CLIENT, this.#config.timeout, this.#log);
    if (!connection.handshake.mechanisms.some((m) => m.name === 'PLAIN')) {
      connection.close();
      throw new Error('Dovecot offers no PLAIN mechanism: add plain to auth_mechanisms');
    }
    this.#log.debug({ version: connection.handshake.version, serverPid: connection.handshake.serverPid }, 'dovecot: connected');
    return connection;
  }

  /** What is left of the timeout for a request begun at `started`: connecting counts against it. */
  #remaining(started: number): number {
    return Math.max(1, this.#config.timeout - (Date.now() - started));
  }

  /** One log line per sign-in or lookup: never a password, and of what Dovecot sent only the user's name and its reason. */
  #report(req: AuthRequest | LookupRequest, outcome: AuthOutcome, ms: number, success: string): void {
    const fields = { user: req.username, session: req.sessionId, ms };
    if (outcome.ok) this.#log.debug({ ...fields, as: outcome.user.username }, `dovecot: ${success}`);
    else if (outcome.reason === 'unavailable') this.#log.warn({ ...fields, detail: outcome.detail }, 'dovecot: unavailable');
    else this.#log.debug({ ...fields, reason: outcome.reason, detail: outcome.detail }, 'dovecot: refused');
  }
}

function describeError(err: unknown): string {
  if (err instanceof DovecotProtocolError) return `protocol error: ${err.message}`;
  const e = err as NodeJS.ErrnoException;
  return e.code && !e.message.includes(e.code) ? `${e.code}: ${e.message}` : String(e.message ?? err);
}

/** What the operator can do about a failed probe, by the socket error; `listener` is the socket Dovecot should offer there. */
function fixFor(err: unknown, socket: DovecotSocket, listener: 'auth-client' | 'auth-userdb'): string {
  const code = (err as NodeJS.ErrnoException).code;
  const other = listener === 'auth-client' ? 'auth-userdb' : 'auth-client';
  switch (code) {
    case 'ENOENT':
      return ` (is Dovecot running, with service auth { unix_listener ${listener} } at this path?)`;
    case 'EACCES':
      return ` (give smtpgate's user access: service auth { unix_listener ${listener} { mode, user, group } })`;
    case 'ECONNREFUSED':
      // Dovecot tells an inet listener's protocol by its name; an unnamed one is auth-client.
      return socket.kind === 'unix'
        ? ' (the socket exists but nobody listens: is Dovecot running?)'
        : ` (nothing listens there: add service auth { inet_listener${listener === 'auth-client' ? '' : ` ${listener}`} { port = ${socket.port} } } to Dovecot)`;
    default:
      if (err instanceof DovecotProtocolError) return ` (is this Dovecot's ${listener} socket, not ${other} or another service?)`;
      return '';
  }
}
