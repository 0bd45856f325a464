/**
 * One client-facing listener: the adapter between smtp-server and the sessions. It builds the
 * SMTPServer, maps each of its callbacks onto the connection's ClientSession
 * (session/client-session.ts), whose stages decide, and maps their verdicts onto smtp-server's
 * replies; and it listens, drains and closes.
 *
 *   connect → tls → auth → mail → rcpt → data
 */
import type { TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import { SMTPServer, type SMTPServerAddress, type SMTPServerAuthentication, type SMTPServerDataStream, type SMTPServerSession } from 'smtp-server';
import type { Logger } from '../logging/logger.js';
import type { Stage } from '../stage.js';
import { codeClass, toServerError, type Refusal, type SmtpServerError } from '../reply.js';
import { INTERNAL_ERROR, INTERNAL_ERROR_CLOSING, SHUTTING_DOWN } from '../refusals.js';
import { Backend, replyText, type MessageSettings } from '../relay/backend.js';
import { MAX_AUTH_LINE_OCTETS, inTransaction, installCommandGuard, type GuardedConnection } from './command-guard.js';
import { CidrSet } from '../parsing/cidr.js';
import { ClientSession, type ClientSessionDeps } from '../session/client-session.js';
import { SmtpServerClient, peerCertificate } from './smtp-server-client.js';
import { sessionDeps, type ListenerDeps } from './listener-deps.js';
import { installProxyProtocol } from './proxy-protocol.js';
import { SessionIds, installSessionIds } from './session-ids.js';
import { assertSmtpServerSeams, openConnections } from './smtp-server-seams.js';

export class SmtpListener {
  readonly server: SMTPServer;
  readonly #deps: ListenerDeps;
  readonly #sessions = new Map<string, ClientSession>();
  readonly #sessionDeps: ClientSessionDeps;
  readonly #disabledCommands: string[];
  readonly #trusted: CidrSet | undefined;
  readonly #message: MessageSettings;
  #draining = false;
  /** smtp-server's connection objects by session id, to close a session on a timeout. */
  readonly #connections = new Map<string, GuardedConnection>();

  constructor(deps: ListenerDeps) {
    this.#deps = deps;
    const { config, tls } = deps;
    if (config.tls !== 'none' && !tls) throw new Error(`listener ${config.name}: TLS material missing`);
    // STARTTLS makes no sense without a certificate, and inside implicit TLS smtp-server
    // already answers 503.
    this.#disabledCommands = config.tls === 'none' ? ['STARTTLS'] : [];
    this.#trusted = config.trusted ? new CidrSet(config.trusted.networks) : undefined;
    this.#message = { listener: config.name, bareLineEndings: deps.data.bareLineEndings, maxMessageBytes: deps.data.maxMessageBytes, stripHeaders: deps.data.stripHeaders, dkim: deps.data.dkim };
    const clientCerts = config.clientCerts;
    this.#sessionDeps = sessionDeps(deps, (client, r, stage, reply) => this.#kick(client.id, r, stage, reply));

    this.server = new SMTPServer({
      name: deps.hostname,
      banner: 'smtpgate',
      // TCP_NODELAY: SMTP is lock-step, one short reply per command; Nagle would hold a reply
      // back until the client's delayed ACK (up to 40 ms) whenever an earlier segment is unacked.
      noDelay: true,
      secure: config.tls === 'implicit',
      ...(tls ? tls.manager.serverOptions(clientCerts ? tls.clientCa : undefined) : {}),
      ...(tls && clientCerts
        ? // Verification is decided per session in onSecure (required → refuse), so the
          // handshake itself accepts any certificate and we can answer with an SMTP reply.
          { requestCert: true, rejectUnauthorized: false, ca: tls.clientCa }
        : {}),
      disabledCommands: this.#disabledCommands,
      authMethods: ['PLAIN', 'LOGIN'],
      // smtpgate decides when AUTH is required (onMailFrom), so that the refusal carries the
      // exact code, a metric and a log line.
      authOptional: true,
      // RFC 2034/3463: every reply carries an enhanced status code (see command-guard.ts).
      hideENHANCEDSTATUSCODES: false,
      // Not advertised: smtpgate cannot promise DSN or REQUIRETLS before it has a backend
      // connection, and must not accept them only to drop them (RFC 8689 §4.2). Set here, not
      // left to the library's defaults. Their parameters get 555 5.5.4 (command-guard.ts).
      hideDSN: true,
      hideREQUIRETLS: true,
      size: deps.data.maxMessageBytes,
      // No DNS lookups on the hot path: the proxy's only traffic is to the backend.
      disableReverseLookup: true,
      // Idle time between commands; smtp-server also times implicit TLS handshakes with it.
      socketTimeout: deps.client.timeouts.command,
      // A line that never ends is cut off here (421); the guard enforces the 512-octet rule.
      maxCommandLength: MAX_AUTH_LINE_OCTETS + 2,
      logger: false,
      // A hook that throws (a bug) must still answer, or the session would hang.
      onConnect: (session, cb) => void this.#onConnect(session, cb).catch((err: unknown) => cb(this.#internalError(session, 'connect', err))),
      onSecure: (socket, session, cb) => this.#onSecure(socket, session, cb),
      onAuth: (auth, session, cb) => this.#onAuth(auth, session, cb),
      onMailFrom: (address, session, cb) => void this.#onMailFrom(address, session, cb).catch((err: unknown) => cb(this.#internalError(session, 'mail', err))),
      onRcptTo: (address, session, cb) => void this.#onRcptTo(address, session, cb).catch((err: unknown) => cb(this.#internalError(session, 'rcpt', err))),
      onData: (stream, session, cb) => void this.#onData(stream, session, cb),
      onClose: (session) => this.#onClose(session),
    });
    // smtpgate reaches into smtp-server's internals: an untested version must not start.
    assertSmtpServerSeams(this.server);
    // Without an error listener one ECONNRESET would crash the process.
    this.server.on('error', (err: NodeJS.ErrnoException) => {
      const level = err.code === 'ECONNRESET' || err.code === 'EPIPE' ? 'debug' : 'warn';
      this.#deps.log[level]({ listener: config.name, err: { code: err.code, message: err.message } }, 'client connection error');
    });
    if (tls) tls.manager.attach(this.server);
    const ids = new SessionIds();
    if (config.proxyProtocol) {
      installProxyProtocol(this.server, config.proxyProtocol, ids, (peer, why) => {
        this.#deps.log.warn({ listener: this.name, peer, why }, 'PROXY protocol: connection refused');
        this.#deps.metrics.refusals.inc({ listener: this.name, stage: 'connect', reason: 'proxy_protocol', code_class: 'none' });
      });
    } else {
      installSessionIds(this.server, ids);
    }
    installCommandGuard(this.server, {
      onRefusal: (sessionId, r, stage) => this.#guardRefusal(sessionId, r, stage, false),
      onLibraryRefusal: (sessionId, r, stage) => this.#guardRefusal(sessionId, r, stage, true),
      draining: () => this.#draining,
      maxProtocolErrors: deps.client.maxProtocolErrors,
      greeting: { delayMs: config.greetingDelay, trusted: this.#trusted },
      commandPace: { deadlineMs: deps.client.timeouts.commandLine, minRate: deps.client.minCommandRate, graceMs: deps.client.minCommandRateGrace },
      writes: deps.writes,
      reclaimer: deps.reclaimer,
      onConnection: (conn) => this.#connections.set(conn.id, conn),
      admit: (conn) => this.#admit(conn),
      onStartTls: (sessionId) => this.#sessions.get(sessionId)?.startingTls(),
      onReset: (sessionId) => this.#sessions.get(sessionId)?.transactionReset(),
      takeAcceptedReply: (sessionId) => this.#sessions.get(sessionId)?.takeAcceptedReply(),
    });
  }

  get name(): string {
    return this.#deps.config.name;
  }

  get activeSessions(): number {
    return this.#sessions.size;
  }

  async listen(): Promise<{ host: string; port: number }> {
    const { host, port } = this.#deps.config.address;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.server.off('error', onError);
        resolve();
      });
    });
    const addr = this.server.server.address();
    return { host, port: addr && typeof addr === 'object' ? addr.port : port };
  }

  /**
   * Graceful drain: stop accepting, tell idle sessions 421 4.3.2 at once, let sessions in a
   * mail transaction finish (their next command after it gets the 421), and after `timeoutMs`
   * close whatever is left with 421. A message still in DATA at the deadline is aborted
   * without the final dot, so it is never half-sent: the client retries it.
   */
  async drain(timeoutMs: number): Promise<void> {
    this.#draining = true;
    const connections = openConnections(this.server);
    const stopped = new Promise<void>((resolve) => this.server.server.close(() => resolve()));
    // smtp-server closes the connection after any 421 it sends.
    const tellToLeave = (conn: GuardedConnection) => conn.send(SHUTTING_DOWN.code, `${SHUTTING_DOWN.enhanced} ${SHUTTING_DOWN.text}`, false);
    for (const conn of connections) if (!inTransaction(conn)) tellToLeave(conn);
    const deadline = setTimeout(() => connections.forEach(tellToLeave), timeoutMs);
    await stopped;
    clearTimeout(deadline);
  }

  /** Immediate stop: like a drain with no grace period. */
  close(): Promise<void> {
    return this.drain(0);
  }

  async #onConnect(session: SMTPServerSession, cb: (err?: Error | null) => void): Promise<void> {
    const { config, metrics, log } = this.#deps;
    // Every line of the session names the client (the address behind PROXY), so a refusal or a
    // failed sign-in can be acted on from its own line (fail2ban) and grepped by address.
    // A pino child made without options (no level of its own) follows its parent's level, so a
    // reloaded log.level reaches the connections already open (config-reload.test.ts).
    const sessionLog = log.child({ session: session.id, listener: config.name, client: session.remoteAddress });
    const client = new ClientSession(this.#sessionDeps, {
      connection: new SmtpServerClient(session),
      log: sessionLog,
      backend: new Backend(this.#deps.openBackend(sessionLog), sessionLog, this.#message, metrics),
      policy: this.#deps.policy(),
      trusted: this.#trusted?.has(session.remoteAddress) ?? false,
    });
    this.#sessions.set(session.id, client);
    const verdict = await client.connect();
    if (verdict.refusal) return cb(toServerError(verdict.refusal));
    this.#applyCommandVisibility(session);
    cb();
  }

  /**
   * The connection limits (per listener, per address, new connections per address), asked the
   * moment a connection is accepted, before the greeting wait; a refusal is sent at once by the
   * command guard. The slots taken here are given back in #onClose, which smtp-server runs for
   * every connection, greeted or not.
   */
  #admit(conn: GuardedConnection): Refusal | undefined | Promise<Refusal | undefined> {
    const failed = (err: unknown): Refusal => {
      this.#sessionLog(conn.id).error({ err }, 'internal error in the connection limits');
      return INTERNAL_ERROR_CLOSING;
    };
    try {
      // Synchronous unless a store counts the connection (Limits.connectionOpened).
      const admission = this.#deps.limits.connectionOpened({ session: conn.id, ip: conn.remoteAddress, listener: this.name });
      return admission instanceof Promise ? admission.catch(failed) : admission;
    } catch (err) {
      return failed(err);
    }
  }

  /** AUTH is offered only under TLS, on every listener: no credentials ever cross in cleartext. */
  #applyCommandVisibility(session: SMTPServerSession): void {
    session.disabledCommands = session.secure ? [...this.#disabledCommands] : [...this.#disabledCommands, 'AUTH'];
  }

  /** After the implicit-TLS handshake (right after onConnect) or after STARTTLS. */
  #onSecure(socket: Socket | TLSSocket, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const client = this.#sessions.get(session.id);
    if (!client) return cb();
    const clientCerts = this.#deps.config.clientCerts;
    const verdict = client.secured(this.#deps.config.tls === 'implicit' ? 'implicit' : 'starttls', clientCerts && 'getPeerCertificate' in socket ? peerCertificate(socket) : undefined);
    this.#applyCommandVisibility(session);
    cb(verdict.refusal ? toServerError(verdict.refusal) : undefined);
  }

  #onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession, cb: (err: Error | null | undefined, response?: { user?: unknown; message?: string; responseCode?: number }) => void): void {
    const client = this.#sessions.get(session.id);
    if (!client) return cb(new Error('unknown session'));
    void client.auth(auth).then((verdict) => {
      const r = verdict.refusal;
      if (r) cb(null, { responseCode: r.code, message: `${r.enhanced} ${r.text}` });
      else cb(null, { user: client.user });
    });
  }

  async #onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): Promise<void> {
    const client = this.#sessions.get(session.id);
    if (!client) return cb(new Error('unknown session'));
    const verdict = await client.mail(address);
    cb(verdict.refusal ? toServerError(verdict.refusal) : undefined);
  }

  async #onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): Promise<void> {
    const client = this.#sessions.get(session.id);
    if (!client) return cb(new Error('unknown session'));
    const tx = client.transaction;
    if (!tx) return cb(new Error('RCPT without a backend transaction'));
    const verdict = await client.rcpt(address, tx);
    cb(verdict.refusal ? toServerError(verdict.refusal) : undefined);
  }

  async #onData(stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): Promise<void> {
    const client = this.#sessions.get(session.id);
    if (!client) {
      stream.resume();
      return cb(new Error('unknown session'));
    }
    const verdict = await client.data(stream);
    if (verdict.refusal) return cb(toServerError(verdict.refusal));
    cb(null, replyText(verdict.reply));
  }

  #onClose(session: SMTPServerSession): void {
    // First, before anything else: a client that left before onConnect ran has no session, but
    // it was counted by the connection limits when it was accepted.
    this.#connections.delete(session.id);
    this.#deps.limits.connectionClosed({ session: session.id });
    const client = this.#sessions.get(session.id);
    if (!client) return;
    this.#sessions.delete(session.id);
    client.close();
  }

  /** Ends a session with a 421 (smtp-server closes after any 421; a message in DATA is then
   *  aborted without the final dot), or with a plain close mid-handshake (`reply: false`). */
  #kick(sessionId: string, r: Refusal, stage?: Stage, reply = true): void {
    const conn = this.#connections.get(sessionId);
    const client = this.#sessions.get(sessionId);
    if (!conn) return;
    if (client) client.refuse(stage ?? client.stage, r);
    if (reply) conn.send(r.code, `${r.enhanced} ${r.text}`, false);
    else conn.close();
  }

  /** A bug surfaced in a hook: log it and answer 451 4.3.0, so the client retries later. */
  #internalError(session: SMTPServerSession, stage: Stage, err: unknown): SmtpServerError {
    const client = this.#sessions.get(session.id);
    if (client) return toServerError(client.internalError(stage, err).refusal);
    this.#deps.log.error({ session: session.id, err }, 'internal error in a session hook');
    return toServerError(INTERNAL_ERROR);
  }

  /** The session's logger; before onConnect (refused by the connection limits, an early
   *  talker) one that still names the session, the listener and the client. */
  #sessionLog(sessionId: string): Logger {
    const client = this.#sessions.get(sessionId);
    if (client) return client.log;
    const conn = this.#connections.get(sessionId);
    return this.#deps.log.child({ session: sessionId, listener: this.name, ...(conn ? { client: conn.remoteAddress, port: conn.remotePort } : {}) });
  }

  /** A refusal the command guard made, or smtp-server's own that it saw go out. */
  #guardRefusal(sessionId: string, r: Refusal, stage: Stage, library: boolean): void {
    const client = this.#sessions.get(sessionId);
    if (library && client) client.lastRefusal = r;
    this.#deps.metrics.refusals.inc({ listener: this.name, stage, reason: r.reason, code_class: codeClass(r.code) });
    this.#sessionLog(sessionId).info({ stage, code: r.code, enhanced: r.enhanced, reason: r.reason }, `refused: ${r.text}`);
  }
}
