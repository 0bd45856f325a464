/**
 * One client connection's session: its state, its deadlines and its stages.
 *
 *   connect → secured → auth → (mail → rcpt → data)* → close
 *
 * Each stage method knows its own stage, asks the session's checkpoint (limits, then policy)
 * and answers a verdict; a refusal is counted (`smtpgate_refusals_total{stage}`) and logged with
 * the session id here, before it is answered, so the listener only turns the verdict into
 * smtp-server's reply. The session sees the client through `ClientConnection` (plain values,
 * no smtp-server types), so unit tests drive it with a fake connection, stage by stage.
 */
import type { Readable } from 'node:stream';
import type { AuthFailureReason, Authenticator } from '../auth/authenticator.js';
import { appPasswordIn } from '../auth/credentials-file.js';
import type { UserAttributes } from '../auth/user-attributes.js';
import type { ListenerConfig } from '../config/schema.js';
import type { ClientFacts, Limits } from '../limits/limits.js';
import type { Logger } from '../logging/logger.js';
import { howSent, type Metrics } from '../metrics/catalogue.js';
import type { SigningOutcome } from '../dkim/outcome.js';
import { buildUserFacts, dataFacts } from '../policy/facts.js';
import { userOwnsAddress } from '../policy/conditions.js';
import { MessageScanner } from '../policy/mime.js';
import { clientKind } from '../policy/client-kind.js';
import { headerSafe, receivedHeader, type ReceivedHeaderMode } from '../relay/received-header.js';
import type { AuthMethod, PolicySet } from '../policy/types.js';
import { Transaction, replyText, type Backend, type ClientIdentity, type MessageSink, type SmtpReply, type SigningRequest } from '../relay/backend.js';
import { queueIdOf } from '../relay/backend-replies.js';
import { checkRecipient, checkSender } from './address-check.js';
import { codeClass, type Refusal } from '../reply.js';
import {
  AUTH_APP_PASSWORD_REQUIRED,
  AUTH_CREDENTIALS_INVALID,
  AUTH_DATA_INVALID,
  AUTH_IN_TRANSACTION,
  AUTH_MECHANISM_UNKNOWN,
  AUTH_TEMPORARY_FAILURE,
  AUTH_WITHOUT_TLS,
  DATA_TOO_LONG,
  INTERNAL_ERROR,
  SESSION_TIME_LIMIT,
  STARTTLS_REQUIRED,
  AUTH_REQUIRED,
  MESSAGE_STARTS_WITH_CONTINUATION,
  TLS_HANDSHAKE_TIMEOUT,
  clientCertificateRefused,
  dataTooSlow,
} from '../refusals.js';
import type { Stage } from '../stage.js';
import { Checkpoint, OK, type Refused, type SnapshotSource, type Verdict } from './checkpoint.js';
import { MessageIdReader } from './message-id.js';
import { infoLine } from '../logging/json-line.js';
import { recordMembers, TransactionRecord, type TransactionClient } from './transaction-record.js';
import { backendIdentity, limitsView, type SessionSnapshot } from './snapshot.js';
import { printable } from '../logging/printable.js';

/** What the session reads of the client's connection, as the protocol library has it now. */
export interface ClientConnection {
  readonly id: string;
  /** The client's address and port (after PROXY protocol). */
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** TLS is in place. */
  secure(): boolean;
  /** The TLS version ("TLSv1.3") and cipher of the handshake, once there was one. */
  tlsVersion(): string | undefined;
  tlsCipher(): string | undefined;
  /** The server name the client asked for in its TLS handshake (SNI), if any. */
  tlsServername(): string | undefined;
  /** The EHLO/HELO name, once given. */
  helo(): string | undefined;
  greeting(): 'HELO' | 'EHLO' | undefined;
  /** A MAIL was accepted and the transaction is not over. */
  inTransaction(): boolean;
  /** Recipients accepted in the transaction so far. */
  recipients(): readonly string[];
  recipientCount(): number;
}

/** The client certificate of the TLS handshake, as plain values. */
export interface PeerCertificate {
  /** SHA-256 fingerprint; empty when the client sent none. */
  readonly fingerprint256: string;
  readonly subjectCN: string | undefined;
  /** It chains to the listener's client CA. */
  readonly authorized: boolean;
  readonly authorizationError: string;
}

/** An AUTH exchange's outcome from smtp-server's SASL code (RFC 4954). */
export interface AuthCredentials {
  readonly method: string;
  readonly username?: string;
  readonly password?: string | null;
  readonly authzid?: string | null;
}

/** What every session of one listener shares. */
export interface ClientSessionDeps {
  readonly listener: string;
  readonly limits: Pick<Limits, 'plan' | 'mailFrom' | 'rcptTo' | 'recipientCap' | 'policyLimit' | 'authAllowed' | 'authFailed' | 'authSucceeded' | 'authAbandoned' | 'messageBytes'>;
  /** smtpgate's own name, for the Received: header. */
  readonly hostname: string;
  /** The headers smtpgate adds to every message. */
  readonly data: { readonly receivedHeader: ReceivedHeaderMode; readonly authenticatedUserHeader: boolean; readonly bareLineEndings: 'reject' | 'normalize' };
  /**
   * DATA's deadline, and the rate a client must keep up after the grace period (Postfix's
   * smtpd_min_data_rate; 0: none).
   */
  readonly dataPace: { readonly deadline: number; readonly minRate: number; readonly grace: number };
  /** Groups and allowed addresses of a user (auth.attributes). */
  readonly attributes: (user: string) => UserAttributes;
  readonly authenticator: Authenticator | undefined;
  readonly clientCerts: ListenerConfig['clientCerts'];
  readonly timeouts: { readonly session: number; readonly tlsHandshake: number };
  /** MAIL needs TLS first (listener requireTls; trusted networks may have their own setting). */
  readonly requireTls: { readonly untrusted: boolean; readonly trusted: boolean };
  /** MAIL needs AUTH first, except from trusted networks. */
  readonly requireAuth: boolean;
  readonly metrics: Pick<Metrics, 'refusals' | 'connectionsOpened' | 'connectionsClosed' | 'connectionsActive' | 'tlsHandshakes' | 'authAttempts' | 'policy' | 'messages' | 'messageBytes' | 'recipientsPerMessage'>;
  /** Milliseconds since the epoch. */
  readonly clock: () => number;
  /**
   * Ends the session at a deadline with `refusal`, counted and logged at `stage`: written as a
   * reply, or, mid-handshake (`reply: false`), by closing the connection.
   */
  readonly hangUp: (session: ClientSession, refusal: Refusal, stage: Stage, reply: boolean) => void;
}

/** What one session is given when its connection is accepted. */
export interface ClientSessionStart {
  readonly connection: ClientConnection;
  readonly log: Logger;
  readonly backend: Backend;
  /** The policy set in force now: a reload never changes the rules mid-session. */
  readonly policy: PolicySet;
  /** The client is in the listener's trusted networks. */
  readonly trusted: boolean;
}

/** DATA's answer: the backend's final reply, or the refusal. */
export type DataVerdict = { readonly ok: true; readonly reply: SmtpReply; readonly refusal?: undefined } | Refused;

/** An envelope address with its ESMTP parameters, as the relay takes it. */
export type EnvelopeAddress = Parameters<Backend['mail']>[0];

/** The client's stream failed (reset mid-DATA), or it closed before the final dot. */
class ClientAbortError extends Error {}
/** Thrown into the DATA body stream when a data-stage rule refuses: no final dot is sent. */
class PolicyRefusalError extends Error {
  constructor(readonly refusal: Refusal, readonly rule: string | undefined) {
    super(refusal.text);
  }
}

const AUTH_IDENTITY_FORBIDDEN = /[\r\n\0]/;

export class ClientSession implements SnapshotSource {
  readonly id: string;
  readonly log: Logger;
  readonly backend: Backend;
  readonly checkpoint: Checkpoint;
  readonly trusted: boolean;
  readonly #deps: ClientSessionDeps;
  readonly #connection: ClientConnection;
  readonly #openedAt: number;
  /**
   * The last stage the session entered (back to `connect` once a message is answered): the
   * stage a session-wide refusal (the session cap, an internal error) is counted and logged at.
   */
  stage: Stage = 'connect';
  /** The authenticated user (password or client certificate), and how they were established. */
  user: string | undefined;
  /** What the auth source knows of the user (a directory's addresses and groups), if anything. */
  #directoryAttributes: UserAttributes | undefined;
  authMethod: AuthMethod | undefined;
  /** The label of the app password the client signed in with (never the secret). */
  credential: string | undefined;
  tlsVersion: string | undefined;
  /** The mail log's record of the transaction under way (from MAIL until it ends). */
  #record: TransactionRecord | undefined;
  /** The MAIL accepted last, and its backend transaction. */
  sender: EnvelopeAddress | undefined;
  transaction: Transaction | undefined;
  /** The backend accepted the MAIL or RCPT being answered: its reply is the client's. */
  acceptedReply: SmtpReply | undefined;
  messages = 0;
  bytes = 0;
  lastRefusal: Refusal | undefined;
  /** The session cap: the whole session ends at this deadline (timeouts.session). */
  #sessionDeadline: NodeJS.Timeout | undefined;
  /** From STARTTLS until the handshake is done (timeouts.tlsHandshake). */
  #tlsDeadline: NodeJS.Timeout | undefined;

  constructor(deps: ClientSessionDeps, start: ClientSessionStart) {
    this.#deps = deps;
    this.#connection = start.connection;
    this.id = start.connection.id;
    this.log = start.log;
    this.backend = start.backend;
    this.trusted = start.trusted;
    this.#openedAt = deps.clock();
    this.checkpoint = new Checkpoint({ limits: deps.limits, metrics: deps.metrics.policy, policy: start.policy, log: start.log });
  }

  // ── connect ────────────────────────────────────────────────────────────────────────────

  /**
   * The client was greeted. The connection limits were decided when the connection was
   * accepted: a connection over them never gets here.
   */
  async connect(): Promise<Verdict> {
    const { metrics, listener } = this.#deps;
    metrics.connectionsOpened.inc({ listener });
    metrics.connectionsActive.inc({ listener });
    this.log.info({ port: this.#connection.remotePort, trusted: this.trusted }, 'connect');
    this.#sessionDeadline = setTimeout(() => this.#deadline(SESSION_TIME_LIMIT, undefined, true), this.#deps.timeouts.session);
    this.#sessionDeadline.unref();
    const verdict = await this.checkpoint.at('connect', this);
    return verdict.refusal ? this.refuse('connect', verdict.refusal, { rule: verdict.rule }, verdict.rule) : OK;
  }

  // ── tls ────────────────────────────────────────────────────────────────────────────────

  /** STARTTLS was answered 220: the handshake has its own deadline. */
  startingTls(): void {
    this.#tlsDeadline = setTimeout(() => this.#deadline(TLS_HANDSHAKE_TIMEOUT, 'tls', false), this.#deps.timeouts.tlsHandshake);
    this.#tlsDeadline.unref();
  }

  /**
   * After the implicit-TLS handshake (right after connect) or after STARTTLS. `certificate` is
   * given when the listener asks for client certificates.
   */
  secured(kind: 'starttls' | 'implicit', certificate: PeerCertificate | undefined): Verdict {
    const version = this.#connection.tlsVersion() ?? 'unknown';
    this.tlsVersion = version;
    this.#deps.metrics.tlsHandshakes.inc({ listener: this.#deps.listener, kind, version });
    this.log.debug({ tls: version, cipher: this.#connection.tlsCipher(), kind }, 'tls established');
    clearTimeout(this.#tlsDeadline);
    this.#tlsDeadline = undefined;
    // RFC 3207 §4.2: nothing learned before the handshake is trusted after it.
    this.user = undefined;
    this.#directoryAttributes = undefined;
    this.authMethod = undefined;
    this.credential = undefined;
    const clientCerts = this.#deps.clientCerts;
    if (clientCerts && certificate) {
      const refused = this.#clientCertificate(certificate, clientCerts);
      if (refused) return this.refuse('tls', refused);
    }
    return OK;
  }

  /** Maps a verified client certificate to a user; refuses when one is required and missing. */
  #clientCertificate(cert: PeerCertificate, opts: NonNullable<ListenerConfig['clientCerts']>): Refusal | undefined {
    const present = Boolean(cert.fingerprint256);
    if (!present || !cert.authorized) {
      if (opts.required) {
        const why = present ? `client certificate not trusted (${cert.authorizationError})` : 'a client certificate is required';
        return clientCertificateRefused(why);
      }
      return undefined;
    }
    const cn = cert.subjectCN;
    const match = opts.users.find((m) => (m.fingerprint && m.fingerprint.toUpperCase() === cert.fingerprint256.toUpperCase()) || (m.subjectCN && m.subjectCN === cn));
    this.log.info({ fingerprint: cert.fingerprint256, subjectCN: cn, user: match?.user }, 'client certificate verified');
    if (match) {
      this.user = match.user;
      this.authMethod = 'certificate';
      this.#deps.metrics.authAttempts.inc({ listener: this.#deps.listener, mechanism: 'certificate', credential: 'certificate', result: 'success' });
    }
    return undefined;
  }

  // ── auth ───────────────────────────────────────────────────────────────────────────────

  async auth(credentials: AuthCredentials): Promise<Verdict> {
    this.stage = 'auth';
    const { limits, authenticator, metrics, listener } = this.#deps;
    const method = credentials.method;
    const mechanism = method === 'PLAIN' || method === 'LOGIN' ? method : 'other';
    // Which kind of secret the client offered: an app password has a shape of its own.
    const credential: AuthMethod = appPasswordIn(credentials.password ?? '') !== undefined ? 'app_password' : 'password';
    const fail = (r: Refusal, result: 'failure' | 'refused' | 'error', rule?: string, why?: AuthFailureLog): Verdict => {
      metrics.authAttempts.inc({ listener, mechanism, credential, result });
      return this.refuse('auth', r, { user: printable(credentials.username), ...(rule ? { rule } : {}), ...why }, rule);
    };
    if (this.#connection.inTransaction()) return fail(AUTH_IN_TRANSACTION, 'refused');
    // The command guard already refuses AUTH without TLS; this is the backstop for any path
    // smtp-server might add, because AUTH in cleartext is never acceptable.
    if (!this.#connection.secure()) return fail(AUTH_WITHOUT_TLS, 'refused');
    const username = credentials.username ?? '';
    const password = credentials.password ?? '';
    if (mechanism === 'other' || !authenticator) return fail(AUTH_MECHANISM_UNKNOWN, 'refused');
    if (!username || AUTH_IDENTITY_FORBIDDEN.test(username) || AUTH_IDENTITY_FORBIDDEN.test(password) || AUTH_IDENTITY_FORBIDDEN.test(credentials.authzid ?? '')) {
      return fail(AUTH_DATA_INVALID, 'refused');
    }
    const authFacts = { ...this.limitsFacts(), username };
    // Brute-force lockout is checked before the password is, so a locked-out guesser learns
    // nothing, not even from timing; the attempt takes its place in the failure counts now, so
    // parallel guesses can't all be verified before the first failure is counted.
    // An app password can't be guessed, so its attempts need not hold their places while they
    // are checked: a device's own parallel sign-ins are not refused as if they were failures.
    const { refusal: locked, reservation } = await limits.authAllowed(authFacts, { reserve: credential !== 'app_password' });
    if (locked) return fail(locked, 'refused');
    const badCredentials = async (why?: AuthFailureLog): Promise<Verdict> => {
      // A lockout this failure starts is logged once, by the limits ("AUTH lockout: …", with the
      // session, address, user, scope and duration); this attempt's own line is the refusal.
      await limits.authFailed(authFacts, reservation);
      return fail(why?.authResult === 'app_password_required' ? AUTH_APP_PASSWORD_REQUIRED : AUTH_CREDENTIALS_INVALID, 'failure', undefined, why);
    };
    // RFC 4616: an authorization identity other than the authentication identity would mean
    // acting as someone else; smtpgate has no such delegation.
    if (credentials.authzid && credentials.authzid !== username) return badCredentials();
    let outcome;
    try {
      outcome = await authenticator.authenticate(
        { username, password, mechanism, sessionId: this.id, remoteAddress: this.#connection.remoteAddress, listener, tls: this.#tlsFacts() },
        { backend: this.backend, identity: this.identity() },
      );
    } catch (err) {
      this.log.error({ err }, 'auth backend failed');
      await limits.authAbandoned(reservation);
      return fail(AUTH_TEMPORARY_FAILURE, 'error');
    }
    if (!outcome.ok) {
      // Which source said what, and why: the client hears only 535 or 454.
      // `authResult`, not `reason`: the line's `reason` is the refusal's (auth_failed), as in the metric.
      const why: AuthFailureLog = {
        source: outcome.source,
        authResult: outcome.reason,
        ...(outcome.credential ? { credential: outcome.credential } : {}),
        ...(outcome.detail ? { detail: outcome.detail } : {}),
        ...(outcome.cached ? { cached: true } : {}),
      };
      if (outcome.reason !== 'unavailable') return badCredentials(why);
      await limits.authAbandoned(reservation);
      return fail(AUTH_TEMPORARY_FAILURE, 'error', undefined, why);
    }
    const source = outcome.source;
    // A suspended account (compromised-account brake) is told so only once the password is right.
    // With passthrough auth the backend connection is now logged in as this user: if smtpgate
    // refuses the login after all, that connection must not carry this session's mail.
    const refuseLogin = (r: Refusal, rule?: string): Verdict => {
      if (source === 'backend') this.backend.abort();
      return fail(r, 'refused', rule);
    };
    const name = outcome.user.username;
    const directory = outcome.user.attributes;
    const suspended = await limits.authSucceeded({ ...authFacts, username: name }, reservation, { keepFailures: outcome.credential !== undefined });
    if (suspended) return refuseLogin(suspended);
    const signedInWith: AuthMethod = outcome.credential ? 'app_password' : 'password';
    const verdict = await this.checkpoint.at('auth', this, () => ({
      authenticated: true,
      authMethod: signedInWith,
      user: buildUserFacts(name, withDirectory(this.#deps.attributes(name), directory)),
    }));
    if (verdict.refusal) return refuseLogin(verdict.refusal, verdict.rule);
    // A connection a MAIL opened before this AUTH (RSET, or a finished message, in between)
    // speaks for the client as it was: not signed in. Passthrough signed in on it just now.
    if (source !== 'backend') this.backend.releaseIdentity();
    this.user = name;
    this.#directoryAttributes = directory;
    this.authMethod = signedInWith;
    this.credential = outcome.credential;
    // Every later line of the session names the app password it signed in with.
    if (outcome.credential) this.log.setBindings({ credential: outcome.credential });
    metrics.authAttempts.inc({ listener, mechanism, credential: signedInWith, result: 'success' });
    this.log.info({ user: name, mechanism, source, ...(outcome.cached ? { cached: true } : {}) }, 'authenticated');
    return OK;
  }

  // ── mail ───────────────────────────────────────────────────────────────────────────────

  /**
   * MAIL FROM: the front door's own rules (STARTTLS, AUTH required), the address syntax, the
   * checkpoint, then the backend's own answer: a transaction, whose reply is the client's.
   */
  async mail(address: EnvelopeAddress): Promise<Verdict> {
    // A transaction still open ends here: the client reset it (RSET, EHLO) or began another.
    this.#endRecord({ abandoned: true });
    // Built only when its line will be written: at warn a busy gate would pay for records
    // (the client's fields, each RCPT, the Message-ID scan) that no one reads.
    this.#record = this.log.isLevelEnabled('info') ? new TransactionRecord(address.address, this.#transactionClient(), this.#deps.clock()) : undefined;
    const verdict = await this.#mail(address);
    if (verdict.refusal) this.#endRecord({ refused: verdict.refusal, stage: 'mail', rule: verdict.rule });
    return verdict;
  }

  async #mail(address: EnvelopeAddress): Promise<Verdict> {
    this.stage = 'mail';
    const { requireTls, requireAuth } = this.#deps;
    if ((this.trusted ? requireTls.trusted : requireTls.untrusted) && !this.#connection.secure()) return this.refuse('mail', STARTTLS_REQUIRED);
    if (requireAuth && !this.user && !this.trusted) return this.refuse('mail', AUTH_REQUIRED);
    const from = address.address;
    const badSender = checkSender(from, Boolean(address.args && address.args.SMTPUTF8));
    if (badSender) return this.refuse('mail', badSender, { from });
    const size = address.args && typeof address.args.SIZE === 'string' ? Number(address.args.SIZE) || undefined : undefined;
    this.checkpoint.startTransaction();
    this.transaction = undefined;
    const verdict = await this.checkpoint.at('mail', this, { from, declaredSize: size });
    if (verdict.refusal) return this.refuse('mail', verdict.refusal, verdict.rule === undefined ? { from } : { from, rule: verdict.rule }, verdict.rule);
    const tx = await this.backend.mail(address, this.identity());
    if (!(tx instanceof Transaction)) return this.refuse('mail', tx, { from });
    this.log.debug({ from }, 'mail accepted');
    this.sender = address;
    this.transaction = tx;
    this.acceptedReply = tx.reply;
    return OK;
  }

  /** RSET, EHLO or HELO: the transaction under way, if any, ends here (its record is written). */
  transactionReset(): void {
    this.#endRecord({ abandoned: true });
  }

  // ── rcpt ───────────────────────────────────────────────────────────────────────────────

  /** RCPT TO, in the transaction of the MAIL accepted last (`transaction` is set). */
  async rcpt(address: EnvelopeAddress, tx: Transaction): Promise<Verdict> {
    const verdict = await this.#rcpt(address, tx);
    if (verdict.refusal) this.#record?.recipientRefused(address.address, verdict.refusal, verdict.rule);
    else this.#record?.recipientAccepted(address.address, tx.reply);
    return verdict;
  }

  async #rcpt(address: EnvelopeAddress, tx: Transaction): Promise<Verdict> {
    this.stage = 'rcpt';
    const to = address.address;
    // From the MAIL that was accepted: smtp-server sets envelope.smtpUtf8 even for a MAIL that
    // was then refused, so that flag may be stale.
    const sender = this.sender;
    const badRecipient = checkRecipient(to, Boolean(sender && sender.args && sender.args.SMTPUTF8));
    if (badRecipient) return this.refuse('rcpt', badRecipient, { to });
    const verdict = await this.checkpoint.at('rcpt', this, { from: sender ? sender.address : '', recipient: to });
    if (verdict.refusal) return this.refuse('rcpt', verdict.refusal, verdict.rule === undefined ? { to } : { to, rule: verdict.rule }, verdict.rule);
    // A recipient the backend refuses is refused to the client now, with the backend's code.
    const backendRefused = await tx.rcpt(address);
    if (backendRefused) return this.refuse('rcpt', backendRefused, { to });
    this.acceptedReply = tx.reply;
    return OK;
  }

  // ── data ───────────────────────────────────────────────────────────────────────────────

  /**
   * DATA: the client's message goes through the data-stage checks into the backend
   * transaction's message sink; the backend's final reply is the client's.
   */
  async data(stream: Readable): Promise<DataVerdict> {
    this.stage = 'data';
    const { metrics, listener } = this.#deps;
    const how = howSent({ user: this.user, trusted: this.trusted, secure: this.#connection.secure() });
    const outcome = await this.#relayMessage(stream);
    let verdict: DataVerdict;
    if ('refusal' in outcome) {
      metrics.messages.inc({ listener, result: outcome.refusal.reason === 'client_aborted' ? 'aborted' : 'refused', ...how });
      verdict = this.refuse('data', outcome.refusal, outcome.rule ? { rule: outcome.rule } : {}, outcome.rule);
      this.#endRecord({ refused: outcome.refusal, stage: 'data', rule: outcome.rule });
    } else {
      this.messages++;
      this.bytes += outcome.bytes;
      const recipients = this.#connection.recipientCount();
      metrics.messages.inc({ listener, result: 'relayed', ...how });
      metrics.messageBytes.observe(outcome.bytes);
      metrics.recipientsPerMessage.observe(recipients);
      if (this.#record) {
        const reply = replyText(outcome.reply);
        this.#endRecord({ relayed: { reply: `${outcome.reply.code} ${reply}`, queueId: queueIdOf(reply) } });
      }
      this.#deps.limits.messageBytes(this.limitsFacts(), outcome.bytes).catch((err: unknown) => this.log.error({ err }, 'bytes quota update failed'));
      verdict = { ok: true, reply: outcome.reply };
    }
    // The message is answered: the transaction is over, a later timeout is not DATA's.
    this.stage = 'connect';
    return verdict;
  }

  async #relayMessage(stream: Readable): Promise<{ reply: SmtpReply; bytes: number } | { refusal: Refusal; rule?: string }> {
    // A stream that nobody reads never ends, and smtp-server waits for its end before it
    // answers: every error path lets the rest of the message flow away.
    const drain = () => stream.resume();
    // The client's message stream cut off before its end: the client has left, whatever failed
    // first (e.g. the backend session, closed by the client's leaving while its 354 was awaited).
    const clientLeft = () => stream.destroyed && !stream.readableEnded;
    const tx = this.transaction;
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
    const set = this.checkpoint.policy;
    const scanner = set.scans[clientKind(this.trusted, this.user !== undefined)] ? new MessageScanner() : undefined;
    const from = this.sender ? this.sender.address : '';
    const messageId = this.#record ? new MessageIdReader() : undefined;
    let sink: MessageSink | undefined;
    const watchdog = this.#dataWatchdog(() => sink?.bytesIn ?? 0);

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
        const out = tx.message(fail, this.#signingRequest());
        sink = out;
        const header = this.#prependedHeaders();
        if (header) out.prepend(header);
        // A first line that is a continuation is no header field (RFC 5322 §2.2), and behind
        // any header put above it (smtpgate's, a DKIM-Signature:, the backend's own Received:)
        // it would extend that one: refused whatever smtpgate prepends.
        let firstByteSeen = false;

        const onData = (chunk: Buffer): void => {
          if (settled) return;
          if (!firstByteSeen && chunk.length > 0) {
            firstByteSeen = true;
            if (startsWithContinuation(chunk, this.#deps.data.bareLineEndings === 'normalize')) return fail(new PolicyRefusalError(MESSAGE_STARTS_WITH_CONTINUATION, undefined));
          }
          scanner?.write(chunk);
          messageId?.write(chunk);
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
          if (messageId) this.#record?.message(out.bytesIn, messageId.value(), this.backend.targetName);
          if (settled) return;
          try {
            out.end();
          } catch (err) {
            return fail(err);
          }
          // Before the final dot: a data-stage refusal aborts the backend transaction.
          // Laid over the scan's facts with Object.assign, not a spread: see Checkpoint.at.
          const facts = () => Object.assign(scanner ? dataFacts(scanner.end()) : {}, { from, messageSize: out.bytesIn });
          const decided = (verdict: Verdict): void => {
            if (verdict.refusal) return fail(new PolicyRefusalError(verdict.refusal, verdict.rule));
            if (settled) return;
            settled = true;
            out.commit().then(resolve, reject);
          };
          const verdict = this.checkpoint.at('data', this, facts);
          if (verdict instanceof Promise) verdict.then(decided, fail);
          else decided(verdict);
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
      if (err.rule !== undefined) this.log.info({ rule: err.rule }, 'data-stage policy refusal: backend transaction aborted');
      return { refusal: err.refusal, rule: err.rule };
    }
    return { refusal: tx.refusalFor(err, err instanceof ClientAbortError || clientLeft()) };
  }

  /**
   * How DKIM signing of the message went: the transaction record's `dkim` when signed, else a
   * line saying why not (debug for a sender that doesn't qualify: that is every inbound message).
   */
  #signed(o: SigningOutcome): void {
    if (o.signed) return this.#record?.signed(o.domain, o.selectors);
    const level = o.reason === 'sign_failed' ? 'error' : o.reason === 'not_eligible' ? 'debug' : 'info';
    this.log[level]({ dkim: { result: o.reason, detail: o.detail } }, 'DKIM: message not signed');
  }

  /** Headers smtpgate adds on top of the message; never built from raw client input. */
  #prependedHeaders(): Buffer | undefined {
    let text = '';
    const received = this.#deps.data.receivedHeader;
    if (received !== 'off') text += this.#received(received);
    // Static text from the policy files (validated at load: no CR/LF, no client input).
    for (const h of this.checkpoint.headers()) text += `${h.name}: ${h.value}\r\n`;
    if (this.#deps.data.authenticatedUserHeader && this.user) text += `X-Authenticated-User: ${headerSafe(this.user, 128)}\r\n`;
    return text ? Buffer.from(text, 'latin1') : undefined;
  }

  #received(mode: 'full' | 'private'): string {
    const c = this.#connection;
    const version = c.tlsVersion();
    return receivedHeader({
      helo: c.helo(),
      clientAddress: c.remoteAddress,
      byHost: this.#deps.hostname,
      protocol: 'ESMTP' + (c.secure() ? 'S' : '') + (this.user ? 'A' : ''),
      sessionId: this.id,
      tls: version !== undefined ? { version, cipher: c.tlsCipher() ?? '' } : undefined,
      recipient: c.recipientCount() === 1 ? c.recipients()[0] : undefined,
      date: new Date(this.#deps.clock()),
    }, mode);
  }

  /**
   * During DATA: the whole phase has a deadline, and after a grace period the client must keep up
   * `minDataRate` bytes per second (Postfix's smtpd_min_data_rate), so a slow drip can't hold a
   * session and a backend connection forever.
   */
  #dataWatchdog(bytes: () => number): NodeJS.Timeout {
    const { deadline, minRate, grace } = this.#deps.dataPace;
    const clock = this.#deps.clock;
    const start = clock();
    const timer = setInterval(() => {
      const elapsed = clock() - start;
      if (elapsed > deadline) {
        clearInterval(timer);
        this.#deps.hangUp(this, DATA_TOO_LONG, 'data', true);
      } else if (minRate > 0 && elapsed > grace && (bytes() * 1000) / elapsed < minRate) {
        clearInterval(timer);
        this.#deps.hangUp(this, dataTooSlow(minRate), 'data', true);
      }
    }, 1000);
    timer.unref();
    return timer;
  }

  /** The backend's reply to the MAIL or RCPT being answered, once: the client gets it as is. */
  takeAcceptedReply(): { code: number; text: string } | undefined {
    const reply = this.acceptedReply;
    if (!reply) return undefined;
    this.acceptedReply = undefined;
    return { code: reply.code, text: replyText(reply) };
  }

  // ── close ──────────────────────────────────────────────────────────────────────────────

  /** The connection is gone: deadlines end, the backend session closes, one summary line. */
  close(): void {
    this.#endRecord({ abandoned: true });
    clearTimeout(this.#sessionDeadline);
    clearTimeout(this.#tlsDeadline);
    const { metrics, listener } = this.#deps;
    metrics.connectionsClosed.inc({ listener });
    metrics.connectionsActive.dec({ listener });
    void this.backend.close();
    this.log.info(
      {
        tls: this.tlsVersion ?? 'none',
        user: this.user,
        messages: this.messages,
        bytes: this.bytes,
        durationMs: this.#deps.clock() - this.#openedAt,
        lastRefusal: this.lastRefusal ? `${this.lastRefusal.code} ${this.lastRefusal.enhanced}` : undefined,
        reason: this.lastRefusal?.reason,
      },
      'session closed',
    );
  }

  // ── what the session knows ─────────────────────────────────────────────────────────────

  /** What smtpgate knows about the session now (snapshot.ts), for the checkpoint and the backend. */
  snapshot(): SessionSnapshot {
    const c = this.#connection;
    const user = this.user;
    return {
      id: this.id,
      listener: this.#deps.listener,
      ip: c.remoteAddress,
      port: c.remotePort,
      tls: c.secure() ? c.tlsVersion() : undefined,
      trusted: this.trusted,
      helo: c.helo(),
      greeting: c.greeting(),
      user,
      authMethod: this.authMethod,
      attributes: user ? this.#attributes(user) : undefined,
      recipients: c.recipients(),
      now: new Date(this.#deps.clock()),
    };
  }

  /** The client's TLS version and cipher, for auth sources that pass them on (the HTTP hook). */
  #tlsFacts(): { version: string; cipher: string } | undefined {
    const version = this.#connection.tlsVersion();
    return version ? { version, cipher: this.#connection.tlsCipher() ?? '' } : undefined;
  }

  /** What the limits count the client as (asked at every MAIL, RCPT and message: no whole snapshot). */
  limitsFacts(): ClientFacts {
    const user = this.user;
    return limitsView({ id: this.id, listener: this.#deps.listener, ip: this.#connection.remoteAddress, user, attributes: user ? this.#attributes(user) : undefined });
  }

  /** The user's groups and addresses: the attributes file's, with what a directory said at AUTH. */
  /** Who sends, for DKIM signing: a signed-in user signs only for their own From: addresses. */
  #signingRequest(): SigningRequest {
    const user = this.user;
    const sender = howSent({ user, trusted: this.trusted, secure: false }).auth;
    const onOutcome = (o: SigningOutcome) => this.#signed(o);
    if (user === undefined) return { sender, onOutcome };
    const facts = buildUserFacts(user, this.#attributes(user));
    return { sender, onOutcome, owns: (address) => userOwnsAddress(facts, address) };
  }

  #attributes(user: string): UserAttributes {
    return withDirectory(this.#deps.attributes(user), this.#directoryAttributes);
  }

  recipientCount(): number {
    return this.#connection.recipientCount();
  }

  /** The client as the backend is told about it (XCLIENT/XFORWARD; at every MAIL: no whole snapshot). */
  identity(): ClientIdentity {
    const c = this.#connection;
    const user = this.user;
    const identity = backendIdentity({ ip: c.remoteAddress, port: c.remotePort, helo: c.helo(), greeting: c.greeting(), user });
    return user === undefined ? identity : { ...identity, groups: () => this.#attributes(user).groups };
  }

  // ── refusals ───────────────────────────────────────────────────────────────────────────

  /** Counts and logs a refusal made at `stage`; returns it as the verdict. */
  /** Writes the open transaction's record, if there is one, as ending this way. */
  #endRecord(end: Parameters<TransactionRecord['finish']>[0]): void {
    const record = this.#record;
    if (!record) return;
    this.#record = undefined;
    // One line per message: written by recordMembers, not pino's per-key serialiser (json-line.ts).
    infoLine(this.log, record.finish(end, this.#deps.clock()), 'transaction', recordMembers);
  }

  /** The client as the transaction record names it. */
  #transactionClient(): TransactionClient {
    const c = this.#connection;
    const version = c.secure() ? c.tlsVersion() : undefined;
    const sni = version ? c.tlsServername() : undefined;
    const user = this.user;
    return {
      port: c.remotePort,
      helo: printable(c.helo()),
      tls: version ? (sni ? { version, cipher: c.tlsCipher() ?? '', sni: printable(sni)! } : { version, cipher: c.tlsCipher() ?? '' }) : undefined,
      auth: user && this.authMethod ? (this.credential ? { method: this.authMethod, user, credential: this.credential } : { method: this.authMethod, user }) : undefined,
      trusted: this.trusted,
    };
  }

  refuse(stage: Stage, r: Refusal, extra?: Record<string, unknown>, rule?: string): Refused {
    this.lastRefusal = r;
    this.#count(stage, r);
    this.log.info(extra ? { stage, code: r.code, enhanced: r.enhanced, reason: r.reason, ...extra } : { stage, code: r.code, enhanced: r.enhanced, reason: r.reason }, `refused: ${r.text}`);
    return rule === undefined ? { refusal: r } : { refusal: r, rule };
  }

  /** smtpgate_refusals_total, by stage and reason (bounded labels: never the client or the user). */
  #count(stage: Stage, r: Refusal): void {
    this.#deps.metrics.refusals.inc({ listener: this.#deps.listener, stage, reason: r.reason, code_class: codeClass(r.code) });
  }

  /** A bug surfaced in a stage: log it and answer 451 4.3.0, so the client retries later. */
  internalError(stage: Stage, err: unknown): Refused {
    this.log.error({ session: this.id, err }, 'internal error in a session hook');
    return this.refuse(stage, INTERNAL_ERROR);
  }

  /** A deadline passed: `stage` undefined is the stage the session is in when it does. */
  #deadline(r: Refusal, stage: Stage | undefined, reply: boolean): void {
    this.#deps.hangUp(this, r, stage ?? this.stage, reply);
  }
}

/**
 * Whether a message's first bytes make its first line a continuation line: a space or tab; and
 * with `normalize` (data.bareLineEndings) a NUL, bare LF or bare CR too, since each becomes a
 * space on the way to the backend. (With `reject` those are refused as smuggling anyway.)
 */
function startsWithContinuation(chunk: Buffer, normalize: boolean): boolean {
  const b = chunk[0];
  if (b === 0x20 || b === 0x09) return true;
  if (!normalize) return false;
  return b === 0x00 || b === 0x0a || (b === 0x0d && chunk.length > 1 && chunk[1] !== 0x0a);
}

/** What the log says of a failed sign-in: the source, its reason, and why it couldn't decide. */
type AuthFailureLog = { source?: string; authResult: AuthFailureReason; credential?: string; detail?: string; cached?: true };

/**
 * A user's attributes: the attributes file's, plus what the auth source (a directory) knows.
 * The file can add addresses and groups to a directory user; it can't take any away.
 */
function withDirectory(file: UserAttributes, directory: UserAttributes | undefined): UserAttributes {
  if (!directory) return file;
  if (file.addresses.length === 0 && file.groups.length === 0) return directory;
  return { addresses: [...new Set([...directory.addresses, ...file.addresses])], groups: [...new Set([...directory.groups, ...file.groups])] };
}

