/**
 * One client-facing listener: smtp-server wired into the session pipeline.
 *
 *   connect → tls → auth → mail → rcpt → data
 *
 * At every stage the checks run in the same order — the front door's own rules (TLS, AUTH),
 * then limits and policy, then the backend's answer — and the first "no" becomes the SMTP
 * reply. Each refusal is a `Refusal` value that produces the reply, a metric and one log line
 * with the session id.
 */
import type { TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import { SMTPServer, type SMTPServerAddress, type SMTPServerAuthentication, type SMTPServerDataStream, type SMTPServerSession } from 'smtp-server';
import type { ListenerConfig } from '../config/schema.js';
import type { Authenticator } from '../auth/authenticator.js';
import type { Logger } from '../logging/logger.js';
import type { Metrics } from '../metrics/catalogue.js';
import type { Stage } from '../stage.js';
import { codeClass, toServerError, type Refusal, type SmtpServerError } from '../reply.js';
import {
  DATA_TOO_LONG,
  INTERNAL_ERROR,
  INTERNAL_ERROR_CLOSING,
  SHUTTING_DOWN,
  STARTTLS_REQUIRED,
  AUTH_REQUIRED,
  dataTooSlow,
} from '../refusals.js';
import { Backend, Transaction, replyText, type BackendSession, type MessageSink, type BareLineEndingMode, type MessageSettings, type SmtpReply } from '../relay/backend.js';
import { headerSafe, receivedHeader } from '../relay/received-header.js';
import { MAX_AUTH_LINE_OCTETS, inTransaction, installCommandGuard, type GuardedConnection } from './command-guard.js';
import type { Limits } from '../limits/limits.js';
import { checkRecipient, checkSender } from './address-check.js';
import type { UserAttributes } from '../auth/user-attributes.js';
import { dataFacts } from '../policy/facts.js';
import { MessageScanner } from '../policy/mime.js';
import type { PolicySet } from '../policy/types.js';
import type { TlsManager } from './tls-manager.js';
import type { WriteBatcher } from '../transport/write-batcher.js';
import type { ReadBufferReclaimer } from '../transport/read-buffer-reclaimer.js';
import { CidrSet } from '../config/cidr.js';
import { ClientSession, type ClientSessionDeps } from '../session/client-session.js';
import { SmtpServerClient, peerCertificate } from './smtp-server-client.js';
import { installProxyProtocol } from './proxy-protocol.js';
import { assertSmtpServerSeams, openConnections } from './smtp-server-seams.js';

export interface ListenerTls {
  readonly manager: TlsManager;
  /** CA bundle for client certificates, when the listener asks for them. */
  readonly clientCa?: Buffer;
}

export interface ClientSettings {
  readonly timeouts: { readonly command: number; readonly commandLine: number; readonly tlsHandshake: number; readonly data: number; readonly session: number };
  readonly minCommandRate: number;
  readonly minCommandRateGrace: number;
  readonly minDataRate: number;
  readonly minDataRateGrace: number;
  readonly maxProtocolErrors: number;
}

export interface DataSettings {
  readonly bareLineEndings: BareLineEndingMode;
  readonly receivedHeader: boolean;
  readonly authenticatedUserHeader: boolean;
  readonly maxMessageBytes: number;
}

export interface ListenerDeps {
  readonly config: ListenerConfig;
  /** Rate limits, lockouts and the compromised-account brake. */
  readonly limits: Limits;
  /** Groups and allowed addresses of a user (auth.attributes). */
  readonly attributes: (user: string) => UserAttributes;
  /** The policy set in force now; a session keeps the one it started with. */
  readonly policy: () => PolicySet;
  readonly hostname: string;
  readonly tls: ListenerTls | undefined;
  readonly authenticator: Authenticator | undefined;
  /** Creates the (lazy) backend session for one client session, which logs with `log`. */
  readonly openBackend: (log: Logger) => BackendSession;
  readonly data: DataSettings;
  readonly client: ClientSettings;
  /** Holds the replies of one event-loop turn so they leave together (optional: tests may write directly). */
  readonly writes?: WriteBatcher;
  /** Collects the read buffers relayed client data leaves behind (optional: tests may leave it to V8). */
  readonly reclaimer?: ReadBufferReclaimer;
  readonly metrics: Metrics;
  readonly log: Logger;
}

/** The client's stream failed (reset mid-DATA), or it closed before the final dot. */
class ClientAbortError extends Error {}
/** Thrown into the DATA body stream when a data-stage rule refuses: no final dot is sent. */
class PolicyRefusalError extends Error {
  constructor(readonly refusal: Refusal, readonly rule: string | undefined) {
    super(refusal.text);
  }
}

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
    this.#message = { listener: config.name, bareLineEndings: deps.data.bareLineEndings, maxMessageBytes: deps.data.maxMessageBytes };
    const clientCerts = config.clientCerts;
    this.#sessionDeps = {
      listener: config.name,
      limits: deps.limits,
      attributes: deps.attributes,
      authenticator: deps.authenticator,
      clientCerts,
      timeouts: deps.client.timeouts,
      metrics: deps.metrics,
      clock: Date.now,
      hangUp: (client, r, stage, reply) => this.#kick(client.id, r, stage, reply),
    };

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
      // Each hook first records the stage the session has reached: a timeout or an internal
      // error is counted and logged at that stage.
      onConnect: (session, cb) => void this.#onConnect(session, cb).catch((err: unknown) => cb(this.#internalError(session, 'connect', err))),
      onSecure: (socket, session, cb) => this.#onSecure(socket, session, cb),
      onAuth: (auth, session, cb) => this.#onAuth(auth, session, cb),
      onMailFrom: (address, session, cb) => {
        this.#enter(session.id, 'mail');
        void this.#onMailFrom(address, session, cb).catch((err: unknown) => cb(this.#internalError(session, 'mail', err)));
      },
      onRcptTo: (address, session, cb) => {
        this.#enter(session.id, 'rcpt');
        void this.#onRcptTo(address, session, cb).catch((err: unknown) => cb(this.#internalError(session, 'rcpt', err)));
      },
      onData: (stream, session, cb) => {
        this.#enter(session.id, 'data');
        // The message is answered: the transaction is over, a later timeout is not DATA's.
        void this.#onData(stream, session, (err, message) => {
          this.#enter(session.id, 'connect');
          cb(err, message);
        });
      },
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
    if (config.proxyProtocol) {
      installProxyProtocol(this.server, config.proxyProtocol, (peer, why) => {
        this.#deps.log.warn({ listener: this.name, peer, why }, 'PROXY protocol: connection refused');
        this.#deps.metrics.refusals.inc({ listener: this.name, stage: 'connect', reason: 'proxy_protocol', code_class: 'none' });
      });
    }
    installCommandGuard(this.server, {
      onRefusal: (sessionId, r, stage) => {
        this.#count(r, stage);
        this.#sessionLog(sessionId).info({ stage, code: r.code, enhanced: r.enhanced, reason: r.reason }, `refused: ${r.text}`);
      },
      onLibraryRefusal: (sessionId, r, stage) => {
        const client = this.#sessions.get(sessionId);
        if (client) client.lastRefusal = r;
        this.#count(r, stage);
        this.#sessionLog(sessionId).info({ stage, code: r.code, enhanced: r.enhanced, reason: r.reason }, `refused: ${r.text}`);
      },
      draining: () => this.#draining,
      maxProtocolErrors: deps.client.maxProtocolErrors,
      greeting: { delayMs: config.greetingDelay, trusted: this.#trusted },
      commandPace: { deadlineMs: deps.client.timeouts.commandLine, minRate: deps.client.minCommandRate, graceMs: deps.client.minCommandRateGrace },
      writes: deps.writes,
      reclaimer: deps.reclaimer,
      onConnection: (conn) => this.#connections.set(conn.id, conn),
      admit: (conn) => this.#admit(conn),
      onStartTls: (sessionId) => this.#sessions.get(sessionId)?.startingTls(),
      takeAcceptedReply: (sessionId) => {
        const client = this.#sessions.get(sessionId);
        const reply = client?.acceptedReply;
        if (!client || !reply) return undefined;
        client.acceptedReply = undefined;
        return { code: reply.code, text: replyText(reply) };
      },
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

  // ── connect ────────────────────────────────────────────────────────────────────────────

  async #onConnect(session: SMTPServerSession, cb: (err?: Error | null) => void): Promise<void> {
    const { config, metrics, log } = this.#deps;
    const sessionLog = log.child({ session: session.id, listener: config.name });
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
  async #admit(conn: GuardedConnection): Promise<Refusal | undefined> {
    try {
      return await this.#deps.limits.connectionOpened({ session: conn.id, ip: conn.remoteAddress, listener: this.name });
    } catch (err) {
      this.#sessionLog(conn.id).error({ err }, 'internal error in the connection limits');
      return INTERNAL_ERROR_CLOSING;
    }
  }

  /** AUTH is offered only under TLS, on every listener: no credentials ever cross in cleartext. */
  #applyCommandVisibility(session: SMTPServerSession): void {
    session.disabledCommands = session.secure ? [...this.#disabledCommands] : [...this.#disabledCommands, 'AUTH'];
  }

  // ── tls ────────────────────────────────────────────────────────────────────────────────

  /** After the implicit-TLS handshake (right after onConnect) or after STARTTLS. */
  #onSecure(socket: Socket | TLSSocket, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const client = this.#sessions.get(session.id);
    if (!client) return cb();
    const clientCerts = this.#deps.config.clientCerts;
    const verdict = client.secured(this.#deps.config.tls === 'implicit' ? 'implicit' : 'starttls', clientCerts && 'getPeerCertificate' in socket ? peerCertificate(socket) : undefined);
    this.#applyCommandVisibility(session);
    cb(verdict.refusal ? toServerError(verdict.refusal) : undefined);
  }

  // ── auth ───────────────────────────────────────────────────────────────────────────────

  #onAuth(
    auth: SMTPServerAuthentication,
    session: SMTPServerSession,
    cb: (err: Error | null | undefined, response?: { user?: unknown; message?: string; responseCode?: number }) => void,
  ): void {
    const client = this.#sessions.get(session.id);
    if (!client) return cb(new Error('unknown session'));
    void client.auth(auth).then((verdict) => {
      const r = verdict.refusal;
      if (r) cb(null, { responseCode: r.code, message: `${r.enhanced} ${r.text}` });
      else cb(null, { user: client.user });
    });
  }

  // ── mail ───────────────────────────────────────────────────────────────────────────────

  async #onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): Promise<void> {
    const client = this.#sessions.get(session.id);
    if (!client) return cb(new Error('unknown session'));
    const { config } = this.#deps;
    const requireTls = client.trusted ? (config.trusted?.requireTls ?? config.requireTls) : config.requireTls;
    if (requireTls && !session.secure) {
      return cb(this.#refuse(client, 'mail', STARTTLS_REQUIRED));
    }
    if (config.requireAuth && !client.user && !client.trusted) {
      return cb(this.#refuse(client, 'mail', AUTH_REQUIRED));
    }
    const badSender = checkSender(address.address, Boolean(address.args && address.args.SMTPUTF8));
    if (badSender) return cb(this.#refuse(client, 'mail', badSender, { from: address.address }));
    const size = address.args && typeof address.args.SIZE === 'string' ? Number(address.args.SIZE) || undefined : undefined;
    client.checkpoint.startTransaction();
    client.transaction = undefined;
    const verdict = await client.checkpoint.at('mail', client, { from: address.address, declaredSize: size });
    if (verdict.refusal) return cb(this.#refuse(client, 'mail', verdict.refusal, verdict.rule === undefined ? { from: address.address } : { from: address.address, rule: verdict.rule }));
    const tx = await client.backend.mail(address, client.identity());
    if (!(tx instanceof Transaction)) return cb(this.#refuse(client, 'mail', tx, { from: address.address }));
    client.log.debug({ from: address.address }, 'mail accepted');
    client.transaction = tx;
    client.acceptedReply = tx.reply;
    cb();
  }

  // ── rcpt ───────────────────────────────────────────────────────────────────────────────

  async #onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): Promise<void> {
    const client = this.#sessions.get(session.id);
    if (!client) return cb(new Error('unknown session'));
    // From the MAIL that was accepted: smtp-server sets envelope.smtpUtf8 even for a MAIL that
    // was then refused, so that flag may be stale.
    const mailFrom = session.envelope.mailFrom;
    const smtputf8 = Boolean(mailFrom && mailFrom.args && mailFrom.args.SMTPUTF8);
    const tx = client.transaction;
    if (!tx) return cb(new Error('RCPT without a backend transaction'));
    const badRecipient = checkRecipient(address.address, smtputf8);
    if (badRecipient) return cb(this.#refuse(client, 'rcpt', badRecipient, { to: address.address }));
    const from = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const verdict = await client.checkpoint.at('rcpt', client, { from, recipient: address.address });
    if (verdict.refusal) return cb(this.#refuse(client, 'rcpt', verdict.refusal, verdict.rule === undefined ? { to: address.address } : { to: address.address, rule: verdict.rule }));
    // A recipient the backend refuses is refused to the client now, with the backend's code.
    const backendRefused = await tx.rcpt(address);
    if (backendRefused) return cb(this.#refuse(client, 'rcpt', backendRefused, { to: address.address }));
    client.acceptedReply = tx.reply;
    cb();
  }

  // ── data ───────────────────────────────────────────────────────────────────────────────

  async #onData(stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): Promise<void> {
    const client = this.#sessions.get(session.id);
    if (!client) {
      stream.resume();
      return cb(new Error('unknown session'));
    }
    const outcome = await this.#relayMessage(stream, session, client);
    if ('refusal' in outcome) {
      this.#deps.metrics.messages.inc({ listener: this.name, result: outcome.refusal.reason === 'client_aborted' ? 'aborted' : 'refused' });
      return cb(this.#refuse(client, 'data', outcome.refusal, outcome.rule ? { rule: outcome.rule } : {}));
    }
    client.messages++;
    client.bytes += outcome.bytes;
    this.#deps.metrics.messages.inc({ listener: this.name, result: 'relayed' });
    this.#deps.metrics.messageBytes.observe(outcome.bytes);
    this.#deps.metrics.recipientsPerMessage.observe(session.envelope.rcptTo.length);
    client.log.info({ bytes: outcome.bytes, recipients: session.envelope.rcptTo.length, reply: `${outcome.reply.code} ${outcome.reply.text}` }, 'message relayed');
    this.#deps.limits.messageBytes(client.limitsFacts(), outcome.bytes).catch((err: unknown) => client.log.error({ err }, 'bytes quota update failed'));
    cb(null, replyText(outcome.reply));
  }

  async #relayMessage(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    client: ClientSession,
  ): Promise<{ reply: SmtpReply; bytes: number } | { refusal: Refusal; rule?: string }> {
    // A stream that nobody reads never ends, and smtp-server waits for its end before it
    // answers: every error path lets the rest of the message flow away.
    const drain = () => stream.resume();
    // The client's message stream cut off before its end: the client has left, whatever failed
    // first (e.g. the backend session, closed by the client's leaving while its 354 was awaited).
    const clientLeft = () => stream.destroyed && !stream.readableEnded;
    const tx = client.transaction;
    if (!tx) {
      drain();
      return { refusal: INTERNAL_ERROR };
    }
    const notStarted = await tx.data(clientLeft);
    if (notStarted) {
      drain();
      return { refusal: notStarted };
    }

    // Data-stage rules look at the header block and MIME part headers; the scanner keeps only
    // those (bounded), never the body.
    const set = client.checkpoint.policy;
    const scanner = set.needs.headers || set.needs.attachments ? new MessageScanner() : undefined;
    const from = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    let sink: MessageSink | undefined;
    const watchdog = this.#dataWatchdog(session.id, () => sink?.bytesIn ?? 0);

    // The client's bytes go into the relay's message sink chunk by chunk as smtp-server hands
    // them over: the message is never held whole. The sink writes the final dot only at
    // commit, once the whole message passed every check here; anything else aborts.
    let failure: unknown;
    try {
      const refused = await new Promise<Refusal | undefined>((resolve, reject) => {
        let settled = false;
        const fail = (err: unknown): void => {
          if (settled) return;
          settled = true;
          reject(err);
        };
        const out = tx.message(fail);
        sink = out;
        const header = this.#prependedHeaders(session, client);
        if (header) out.prepend(header);

        const onData = (chunk: Buffer): void => {
          if (settled) return;
          scanner?.write(chunk);
          let flowing: boolean;
          try {
            flowing = out.write(chunk);
          } catch (err) {
            return fail(err);
          }
          if (!flowing) {
            stream.pause();
            out.onDrain(() => stream.resume());
          }
        };
        let ended = false;
        const onEnd = (): void => {
          ended = true;
          // The client's part ends at its final dot; waiting for the backend is not its fault.
          clearInterval(watchdog);
          if (settled) return;
          try {
            out.end();
          } catch (err) {
            return fail(err);
          }
          // Before the final dot: a data-stage refusal aborts the backend transaction.
          const facts = () => ({ from, ...(scanner ? dataFacts(scanner.end()) : {}), messageSize: out.bytesIn });
          client.checkpoint.at('data', client, facts).then((verdict) => {
            if (verdict.refusal) return fail(new PolicyRefusalError(verdict.refusal, verdict.rule));
            if (settled) return;
            settled = true;
            out.commit().then(resolve, reject);
          }, fail);
        };
        // smtp-server destroys the stream with this error when the client leaves mid-message
        // (it passes the error only to a stream that has an 'error' listener).
        stream.on('error', (err) => fail(new ClientAbortError(err.message)));
        stream.on('close', () => {
          if (!ended) fail(new ClientAbortError('connection closed during DATA'));
        });
        stream.on('data', onData);
        stream.once('end', onEnd);
        // The client may have left while the backend's 354 was awaited: its stream was
        // destroyed before these listeners were there to hear it.
        if (clientLeft()) fail(new ClientAbortError('connection closed during DATA'));
      });
      clearInterval(watchdog);
      if (refused) return { refusal: refused };
      return { reply: sink!.reply!, bytes: sink!.bytesIn };
    } catch (err) {
      failure = err;
    }

    clearInterval(watchdog);
    drain();
    tx.abort();
    const err = failure;
    if (err instanceof PolicyRefusalError) {
      client.log.info({ rule: err.rule }, 'data-stage policy refusal: backend transaction aborted');
      return { refusal: err.refusal, rule: err.rule };
    }
    return { refusal: tx.refusalFor(err, err instanceof ClientAbortError || clientLeft()) };
  }

  /** Headers smtpgate adds on top of the message; never built from raw client input. */
  #prependedHeaders(session: SMTPServerSession, client: ClientSession): Buffer | undefined {
    let text = '';
    if (this.#deps.data.receivedHeader) text += this.#received(session, client);
    // Static text from the policy files (validated at load: no CR/LF, no client input).
    for (const h of client.checkpoint.headers()) text += `${h.name}: ${h.value}\r\n`;
    if (this.#deps.data.authenticatedUserHeader && client.user) text += `X-Authenticated-User: ${headerSafe(client.user, 128)}\r\n`;
    return text ? Buffer.from(text, 'latin1') : undefined;
  }

  #received(session: SMTPServerSession, client: ClientSession): string {
    const rcpts = session.envelope.rcptTo;
    return receivedHeader({
      helo: session.hostNameAppearsAs || undefined,
      clientAddress: session.remoteAddress,
      byHost: this.#deps.hostname,
      protocol: 'ESMTP' + (session.secure ? 'S' : '') + (client.user ? 'A' : ''),
      sessionId: session.id,
      tls: session.tlsOptions ? { version: session.tlsOptions.version, cipher: session.tlsOptions.name } : undefined,
      recipient: rcpts.length === 1 ? rcpts[0]!.address : undefined,
      date: new Date(),
    });
  }

  // ── close ──────────────────────────────────────────────────────────────────────────────

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

  // ── shared ─────────────────────────────────────────────────────────────────────────────

  /**
   * Closes a session with a 421 (smtp-server closes after any 421). A message in DATA is then
   * aborted without the final dot by the client-abort path. `reply: false` when no reply can
   * be written (mid-handshake).
   */
  #kick(sessionId: string, r: Refusal, stage?: Stage, reply = true): void {
    const conn = this.#connections.get(sessionId);
    const client = this.#sessions.get(sessionId);
    if (!conn) return;
    if (client) client.refuse(stage ?? client.stage, r);
    if (reply) conn.send(r.code, `${r.enhanced} ${r.text}`, false);
    else conn.close();
  }

  /**
   * During DATA: the whole phase has a deadline, and after a grace period the client must keep up
   * `minDataRate` bytes per second (Postfix's smtpd_min_data_rate), so a slow drip can't hold a
   * session and a backend connection forever.
   */
  #dataWatchdog(sessionId: string, bytes: () => number): NodeJS.Timeout {
    const { data: deadline } = this.#deps.client.timeouts;
    const { minDataRate: minRate, minDataRateGrace: grace } = this.#deps.client;
    const start = Date.now();
    const timer = setInterval(() => {
      const elapsed = Date.now() - start;
      if (elapsed > deadline) {
        clearInterval(timer);
        this.#kick(sessionId, DATA_TOO_LONG, 'data');
      } else if (minRate > 0 && elapsed > grace && (bytes() * 1000) / elapsed < minRate) {
        clearInterval(timer);
        this.#kick(sessionId, dataTooSlow(minRate), 'data');
      }
    }, 1000);
    timer.unref();
    return timer;
  }

  /** A bug surfaced in a hook: log it and answer 451 4.3.0, so the client retries later. */
  #internalError(session: SMTPServerSession, stage: Stage, err: unknown): SmtpServerError {
    const client = this.#sessions.get(session.id);
    if (client) return toServerError(client.internalError(stage, err).refusal ?? INTERNAL_ERROR);
    this.#deps.log.error({ session: session.id, err }, 'internal error in a session hook');
    return toServerError(INTERNAL_ERROR);
  }

  /**
   * The session's logger; before onConnect (a connection refused by the connection limits, an
   * early talker) one that still names the session, the listener and the client.
   */
  #sessionLog(sessionId: string): Logger {
    const client = this.#sessions.get(sessionId);
    if (client) return client.log;
    const conn = this.#connections.get(sessionId);
    return this.#deps.log.child({ session: sessionId, listener: this.name, ...(conn ? { client: conn.remoteAddress, port: conn.remotePort } : {}) });
  }

  /** Records the stage a session has reached, for the refusals made there without a stage of their own. */
  #enter(sessionId: string, stage: Stage): void {
    const client = this.#sessions.get(sessionId);
    if (client) client.stage = stage;
  }

  #refuse(client: ClientSession, stage: Stage, r: Refusal, extra?: Record<string, unknown>): SmtpServerError {
    client.refuse(stage, r, extra);
    return toServerError(r);
  }

  #count(r: Refusal, stage: Stage): void {
    this.#deps.metrics.refusals.inc({ listener: this.name, stage, reason: r.reason, code_class: codeClass(r.code) });
  }
}
