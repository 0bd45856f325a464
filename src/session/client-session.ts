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
import type { Authenticator } from '../auth/authenticator.js';
import type { UserAttributes } from '../auth/user-attributes.js';
import type { ListenerConfig } from '../config/schema.js';
import type { Limits } from '../limits/limits.js';
import type { Logger } from '../logging/logger.js';
import type { Metrics } from '../metrics/catalogue.js';
import { buildUserFacts } from '../policy/facts.js';
import type { PolicySet } from '../policy/types.js';
import type { Backend, SmtpReply, Transaction } from '../relay/backend.js';
import { codeClass, type Refusal } from '../reply.js';
import {
  AUTH_CREDENTIALS_INVALID,
  AUTH_DATA_INVALID,
  AUTH_IN_TRANSACTION,
  AUTH_MECHANISM_UNKNOWN,
  AUTH_TEMPORARY_FAILURE,
  AUTH_WITHOUT_TLS,
  INTERNAL_ERROR,
  SESSION_TIME_LIMIT,
  TLS_HANDSHAKE_TIMEOUT,
  clientCertificateRefused,
} from '../refusals.js';
import type { Stage } from '../stage.js';
import { Checkpoint, OK, type SnapshotSource, type Verdict } from './checkpoint.js';
import { backendIdentity, limitsView, type SessionSnapshot } from './snapshot.js';
import type { ClientFacts } from '../limits/limits.js';
import type { ClientIdentity } from '../relay/backend.js';

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
  /** The EHLO/HELO name, once given. */
  helo(): string | undefined;
  greeting(): 'HELO' | 'EHLO' | undefined;
  /** A MAIL was accepted and the transaction is not over. */
  inTransaction(): boolean;
  /** Recipients accepted in the transaction so far. */
  recipients(): readonly string[];
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
  readonly limits: Pick<Limits, 'mailFrom' | 'rcptTo' | 'policyLimit' | 'authAllowed' | 'authFailed' | 'authSucceeded' | 'authAbandoned'>;
  /** Groups and allowed addresses of a user (auth.attributes). */
  readonly attributes: (user: string) => UserAttributes;
  readonly authenticator: Authenticator | undefined;
  readonly clientCerts: ListenerConfig['clientCerts'];
  readonly timeouts: { readonly session: number; readonly tlsHandshake: number };
  readonly metrics: Pick<Metrics, 'refusals' | 'connectionsOpened' | 'connectionsClosed' | 'connectionsActive' | 'tlsHandshakes' | 'authAttempts' | 'policy'>;
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
  authMethod: 'password' | 'certificate' | undefined;
  tlsVersion: string | undefined;
  /** The backend transaction of the MAIL accepted last. */
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
    this.log.info({ client: this.#connection.remoteAddress, port: this.#connection.remotePort, trusted: this.trusted }, 'connect');
    this.#sessionDeadline = setTimeout(() => this.#deadline(SESSION_TIME_LIMIT, undefined, true), this.#deps.timeouts.session);
    this.#sessionDeadline.unref();
    return this.#verdict('connect', await this.checkpoint.at('connect', this));
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
    this.authMethod = undefined;
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
      this.#deps.metrics.authAttempts.inc({ listener: this.#deps.listener, mechanism: 'certificate', result: 'success' });
    }
    return undefined;
  }

  // ── auth ───────────────────────────────────────────────────────────────────────────────

  async auth(credentials: AuthCredentials): Promise<Verdict> {
    this.stage = 'auth';
    const { limits, authenticator, metrics, listener } = this.#deps;
    const method = credentials.method;
    const mechanism = method === 'PLAIN' || method === 'LOGIN' ? method : 'other';
    const fail = (r: Refusal, result: 'failure' | 'refused' | 'error', rule?: string): Verdict => {
      metrics.authAttempts.inc({ listener, mechanism, result });
      return this.refuse('auth', r, { user: printable(credentials.username), ...(rule ? { rule } : {}) }, rule);
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
    const { refusal: locked, reservation } = await limits.authAllowed(authFacts);
    if (locked) return fail(locked, 'refused');
    const badCredentials = async (): Promise<Verdict> => {
      const failure = await limits.authFailed(authFacts, reservation);
      if (failure.lockedOut) {
        this.log.warn({ client: this.#connection.remoteAddress, user: printable(username), scope: failure.scope, retryAfterSeconds: failure.retryAfterSeconds }, 'auth lockout');
      }
      return fail(AUTH_CREDENTIALS_INVALID, 'failure');
    };
    // RFC 4616: an authorization identity other than the authentication identity would mean
    // acting as someone else; smtpgate has no such delegation.
    if (credentials.authzid && credentials.authzid !== username) return badCredentials();
    let outcome;
    try {
      outcome = await authenticator.authenticate(
        { username, password, mechanism, sessionId: this.id, remoteAddress: this.#connection.remoteAddress },
        { backend: this.backend, identity: this.identity() },
      );
    } catch (err) {
      this.log.error({ err }, 'auth backend failed');
      await limits.authAbandoned(reservation);
      return fail(AUTH_TEMPORARY_FAILURE, 'error');
    }
    if (!outcome.ok) {
      if (outcome.reason !== 'unavailable') return badCredentials();
      await limits.authAbandoned(reservation);
      return fail(AUTH_TEMPORARY_FAILURE, 'error');
    }
    // A suspended account (compromised-account brake) is told so only once the password is right.
    // With passthrough auth the backend connection is now logged in as this user: if smtpgate
    // refuses the login after all, that connection must not carry this session's mail.
    const refuseLogin = (r: Refusal, rule?: string): Verdict => {
      if (authenticator.kind === 'backend') this.backend.abort();
      return fail(r, 'refused', rule);
    };
    const name = outcome.user.username;
    const suspended = await limits.authSucceeded({ ...authFacts, username: name }, reservation);
    if (suspended) return refuseLogin(suspended);
    const verdict = await this.checkpoint.at('auth', this, () => ({ authenticated: true, user: buildUserFacts(name, this.#deps.attributes(name)) }));
    if (verdict.refusal) return refuseLogin(verdict.refusal, verdict.rule);
    this.user = name;
    this.authMethod = 'password';
    metrics.authAttempts.inc({ listener, mechanism, result: 'success' });
    this.log.info({ user: name, mechanism }, 'authenticated');
    return OK;
  }

  // ── close ──────────────────────────────────────────────────────────────────────────────

  /** The connection is gone: deadlines end, the backend session closes, one summary line. */
  close(): void {
    clearTimeout(this.#sessionDeadline);
    clearTimeout(this.#tlsDeadline);
    const { metrics, listener } = this.#deps;
    metrics.connectionsClosed.inc({ listener });
    metrics.connectionsActive.dec({ listener });
    void this.backend.close();
    this.log.info(
      {
        client: this.#connection.remoteAddress,
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
      attributes: user ? this.#deps.attributes(user) : undefined,
      recipients: c.recipients(),
      now: new Date(this.#deps.clock()),
    };
  }

  /** What the limits count the client as. */
  limitsFacts(): ClientFacts {
    return limitsView(this.snapshot());
  }

  /** The client as the backend is told about it (XCLIENT/XFORWARD). */
  identity(): ClientIdentity {
    return backendIdentity(this.snapshot());
  }

  // ── refusals ───────────────────────────────────────────────────────────────────────────

  /** Counts and logs a refusal made at `stage`; returns it as the verdict. */
  refuse(stage: Stage, r: Refusal, extra?: Record<string, unknown>, rule?: string): Verdict {
    this.lastRefusal = r;
    this.count(stage, r);
    this.log.info(extra ? { stage, code: r.code, enhanced: r.enhanced, reason: r.reason, ...extra } : { stage, code: r.code, enhanced: r.enhanced, reason: r.reason }, `refused: ${r.text}`);
    return rule === undefined ? { refusal: r } : { refusal: r, rule };
  }

  /** Counts a refusal without logging it (the caller logs its own line). */
  count(stage: Stage, r: Refusal): void {
    this.#deps.metrics.refusals.inc({ listener: this.#deps.listener, stage, reason: r.reason, code_class: codeClass(r.code) });
  }

  /** A bug surfaced in a stage: log it and answer 451 4.3.0, so the client retries later. */
  internalError(stage: Stage, err: unknown): Verdict {
    this.log.error({ session: this.id, err }, 'internal error in a session hook');
    return this.refuse(stage, INTERNAL_ERROR);
  }

  /** A deadline passed: `stage` undefined is the stage the session is in when it does. */
  #deadline(r: Refusal, stage: Stage | undefined, reply: boolean): void {
    this.#deps.hangUp(this, r, stage ?? this.stage, reply);
  }

  #verdict(stage: Stage, v: Verdict): Verdict {
    return v.refusal ? this.refuse(stage, v.refusal, { rule: v.rule }, v.rule) : OK;
  }
}

/** A client-given name for a log line: printable ASCII, bounded. */
function printable(value: string | undefined): string | undefined {
  return value === undefined ? undefined : value.replace(/[^\x20-\x7e]/g, '?').slice(0, 128);
}
