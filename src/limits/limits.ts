/**
 * The limits the listener asks at each stage of a session:
 *
 *   connect  connectionOpened   per-listener and per-address open connections, new connections per address
 *   auth     authAllowed        reserves the attempt per address and per user+address, or refuses (lockout)
 *            authFailed         the reservation stays as the failure; the one that fills the count starts a lockout
 *            authSucceeded      gives the reservation back; suspended accounts are refused here; clears the user+address count
 *            authAbandoned      gives the reservation back (the password could not be checked)
 *   mail     mailFrom           suspension; messages per user, per sender, per address; bytes per user
 *   rcpt     rcptTo             recipients per message; recipients per user
 *   data     messageBytes       counts the bytes of a relayed message
 *   close    connectionClosed   gives back the connection slots
 *
 * Each check returns a `Refusal` (the SMTP reply, metric reason and log text in one value) or
 * undefined. Which limit applies to whom is decided by pure functions (quotas.ts, keys.ts,
 * replies.ts); the counting is done by the LimiterStore (memory or Redis).
 *
 * The compromised-account brake: every time a per-user quota (messages, recipients, bytes)
 * runs out in its window, the user gets a "quota hit". At `brake.quotaHits` hits within
 * `brake.window` the account is suspended: a record in the store (so every instance sees
 * it) that lasts until an admin clears it, or `brake.suspendFor`. A brake that trips again
 * during a suspension (a session open since before it) leaves the suspension as it is.
 */
import type { Registry } from 'prom-client';
import type { Refusal } from '../reply.js';
import type { Logger } from '../logging/logger.js';
import type { LimitsConfig } from './config.js';
import { ipKeyOf, parseIp, senderKey, userIpKey, userKey, type ParsedIp } from './keys.js';
import type { AnswerSource, CountResult, LimiterSpec, LimiterStore, StoredCount, StoredEntry } from './limiter-store.js';
import { createLimitMetrics, type DecisionResult, type LimitMetrics } from './metrics.js';
import { QuotaResolver, type Quotas } from './quotas.js';
import { limitsPlan, type LimitsPlan } from './plan.js';
import type { Rate } from './rate.js';
import { retrySeconds } from './rate.js';
import {
  concurrentIpRefusal,
  concurrentListenerRefusal,
  connectionRateRefusal,
  limiterUnavailableRefusal,
  lockedOutDisconnect,
  lockedOutRefusal,
  quotaRefusal,
  suspendedAuthRefusal,
  suspendedMailRefusal,
  tooManyRecipientsRefusal,
  type LimiterName,
  type LockoutScope,
  type QuotaLimiter,
} from './replies.js';
import { ConcurrencyCounter } from './concurrency.js';
import { planClear, STATE_LIMITERS, summarizeState, type ClearResult, type LimitsAdmin, type LimitsState, type StateEntries } from './admin.js';
import { createLimiterStore } from './store-factory.js';
import { SUSPENSION, SuspensionKeeper } from './suspensions.js';

/** What the listener knows about the client at any stage. */
export interface ClientFacts {
  /** smtp-server's session id: ties a session's connect, AUTH tries and close together. */
  readonly session: string;
  readonly ip: string;
  /** The listener's name from the config. */
  readonly listener: string;
  /** The authenticated user, once AUTH succeeded. */
  readonly user?: string;
  readonly groups?: readonly string[];
  /** The user's addresses (attributes file, directory): where a suspension notice to the user goes. */
  readonly addresses?: readonly string[];
}

/** An account this instance has just suspended: what a notice about it says. */
export interface SuspensionEvent {
  /** The login as the client gave it (the store keys it as userKey(user)). */
  readonly user: string;
  readonly addresses: readonly string[];
  readonly session: string;
  readonly ip: string;
  readonly listener: string;
  /** The quota whose hit made the count. */
  readonly limiter: QuotaLimiter;
  readonly quotaHits: number;
  readonly windowMs: number;
  /** Unix seconds. */
  readonly since: number;
  /** null: until an admin clears it. */
  readonly suspendForMs: number | null;
}

/**
 * Who sends a suspension's one notice: `claimed` goes to exactly one caller per suspension, over
 * every instance and worker sharing the store; `taken` when another has it; `lifted` when the
 * store holds no suspension (cleared or expired first); `unavailable` while the shared store
 * can't answer (a claim in an instance's own insurance memory would not be shared).
 */
export type NoticeClaim = 'claimed' | 'taken' | 'lifted' | 'unavailable';

export interface AuthFacts extends ClientFacts {
  /** The username being tried (AUTH PLAIN/LOGIN authentication identity). */
  readonly username: string;
}

export interface MailFacts extends ClientFacts {
  /** The envelope sender; "" for the null sender. */
  readonly sender: string;
  /** The SIZE= the client declared, if any: checked against the bytes quota up front. */
  readonly size?: number;
}

export interface RcptFacts extends ClientFacts {
  /** Recipients already accepted in this transaction. */
  readonly recipientsSoFar: number;
}

/**
 * One AUTH attempt's places in the failure counts, taken before the password is verified and
 * handed back to authFailed, authSucceeded or authAbandoned.
 */
export interface AuthReservation {
  readonly held: readonly HeldAttempt[];
  /** An attempt that took no place up front (`reserve: false`): a failure is counted when it happens. */
  readonly deferred?: readonly AuthCounter[];
}

interface AuthCounter {
  readonly scope: LockoutScope;
  readonly spec: LimiterSpec;
  readonly key: string;
}

interface HeldAttempt extends AuthCounter {
  /** The count with this attempt in it: the attempt that takes the last place starts the lockout if it fails. */
  readonly consumed: number;
  readonly source: AnswerSource;
}

export type AuthAttempt = { readonly refusal: Refusal; readonly reservation?: undefined } | { readonly refusal?: undefined; readonly reservation: AuthReservation };

export interface AuthFailure {
  /** The client (or this user from this client) is now locked out. */
  readonly lockedOut: boolean;
  readonly scope?: LockoutScope;
  readonly retryAfterSeconds?: number;
}

interface SessionLimits {
  readonly ipKey: string;
  readonly ip: ParsedIp | undefined;
  /** Connection slots this session holds, released at close. */
  readonly held: { counter: ConcurrencyCounter; key: string }[];
  /** AUTH attempts answered 454 during a lockout, for the 421 that ends them. */
  lockedRefusals: number;
  /** The quotas last resolved for this session, and for whom: MAIL, RCPT and the byte count ask again for the same. */
  quotas?: { readonly resolver: QuotaResolver; readonly user: string | undefined; readonly groups: readonly string[] | undefined; readonly quotas: Quotas };
}

export interface LimitsDeps {
  readonly config: LimitsConfig;
  readonly store: LimiterStore;
  readonly metrics: LimitMetrics;
  readonly log: Logger;
  /** Clock for suspension timestamps (rate windows use the store's own clock). */
  readonly now?: () => number;
  /** Keeps suspensions through a loss of the shared store, and counts them. */
  readonly suspensions?: SuspensionKeeper;
}

/** Distinct policy-rule amounts whose specs are kept (far more than any policy folder holds). */
const MAX_POLICY_RATES = 256;

export class Limits implements LimitsAdmin {
  #config: LimitsConfig;
  #resolver: QuotaResolver;
  /** What the config can make the limits do, worked out once per config (plan.ts). */
  #plan: LimitsPlan;
  readonly #store: LimiterStore;
  readonly #metrics: LimitMetrics;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #suspensions: SuspensionKeeper | undefined;
  readonly #sessions = new Map<string, SessionLimits>();
  readonly #perIp = new ConcurrencyCounter();
  readonly #perListener = new ConcurrencyCounter();
  /**
   * Specs of the limits at their configured rates, made once per rate object: a config's rates
   * live as long as the config, and the store finds a limiter by its spec object without
   * building its key.
   */
  readonly #specs = new WeakMap<Rate, Partial<Record<LimiterName, LimiterSpec>>>();
  /** The same for policy rules' limits, by amount and window: the rates in the policy files. */
  readonly #policySpecs = new Map<number, Map<number, LimiterSpec>>();
  #wasDown = false;
  readonly #suspendedListeners: ((e: SuspensionEvent) => void)[] = [];

  /** Small shared records kept beside the counters (the last use of each app password). */
  get notes(): Pick<LimiterStore, 'kind' | 'setNote' | 'notes' | 'removeNotes'> {
    return this.#store;
  }

  constructor(deps: LimitsDeps) {
    this.#config = deps.config;
    this.#resolver = new QuotaResolver(deps.config);
    this.#plan = limitsPlan(deps.config);
    this.#store = deps.store;
    this.#metrics = deps.metrics;
    this.#log = deps.log;
    this.#now = deps.now ?? Date.now;
    this.#suspensions = deps.suspensions;
    this.#metrics.storeUp.set(this.#store.up ? 1 : 0);
    const where = this.#storeLabel();
    // One line per change of state, never one per message: an outage is logged once, and so is its end.
    this.#store.onHealthChange((up, detail) => {
      this.#metrics.storeUp.set(up ? 1 : 0);
      if (up && !this.#wasDown) this.#log.info({ store: where }, 'limiter store connected');
      else if (up) this.#log.info({ store: where, detail }, 'limiter store reachable again: limits are shared again');
      else
        this.#log.warn(
          { store: where, detail, onStoreFailure: this.config.onStoreFailure },
          `limiter store unavailable: ${FAILURE_TEXT[this.config.onStoreFailure]} until it returns`,
        );
      this.#wasDown ||= !up;
    });
  }

  /**
   * Waits (bounded) until the store answers, so the first sessions see shared counts. Resolves
   * false on timeout; smtpgate runs anyway, with limits.onStoreFailure in force until it does.
   */
  async start(timeoutMs = 2000): Promise<boolean> {
    const up = await this.#store.ready(timeoutMs);
    this.#metrics.storeUp.set(this.#store.up ? 1 : 0);
    // Not awaited: the first comparison lists every suspension (a SCAN), which needn't hold up the start.
    void this.#suspensions?.start();
    return up;
  }

  get config(): LimitsConfig {
    return this.#config;
  }

  /**
   * Config reload: new quotas, overrides, lockout and brake settings take effect for the next
   * check; open connections, counts and the store stay. A different store, keyPrefix or
   * onStoreFailure needs a restart, so that is refused (the old config stays in force).
   */
  reconfigure(next: LimitsConfig): void {
    const was = this.#config;
    if (JSON.stringify(was.store) !== JSON.stringify(next.store) || was.onStoreFailure !== next.onStoreFailure) {
      throw new RangeError('limits.store and limits.onStoreFailure cannot change on reload; restart smtpgate to change them');
    }
    this.#config = next;
    this.#resolver = new QuotaResolver(next);
    this.#plan = limitsPlan(next);
  }

  /** What the limits in force can do at each stage (see plan.ts): the checkpoint skips what they can't. */
  get plan(): LimitsPlan {
    return this.#plan;
  }

  get storeUp(): boolean {
    return this.#store.up;
  }

  /** Sessions holding connection slots now (tests, readiness). */
  get openSessions(): number {
    return this.#sessions.size;
  }

  async close(): Promise<void> {
    this.#suspensions?.stop();
    await this.#store.close();
  }

  // ── connect ────────────────────────────────────────────────────────────────────────────

  /**
   * A connection was accepted. Synchronous unless a store must count it (connectionRate): the
   * connection counters are in this process's memory, and with no connection limit for the
   * client there is nothing to wait for, so the listener greets without a round through a promise.
   */
  connectionOpened(f: ClientFacts): Refusal | undefined | Promise<Refusal | undefined> {
    const s = this.#session(f);
    // Only a connection's opening registers its session; connectionClosed removes it.
    this.#sessions.set(f.session, s);
    if (!this.#plan.connect) return undefined;
    // At connect the client is known by its address only.
    const quotas = this.#quotasFor(s, undefined, undefined);
    const perListener = this.config.concurrentPerListener;
    // Slots are taken before anything is awaited, so a burst can't slip past the count.
    if (perListener !== null) {
      if (!this.#perListener.tryAcquire(f.listener, perListener)) {
        this.#decide('concurrent_listener', 'limited');
        return concurrentListenerRefusal(perListener);
      }
      s.held.push({ counter: this.#perListener, key: f.listener });
      this.#decide('concurrent_listener', 'allowed');
    }
    if (quotas.concurrentPerIp !== null) {
      if (!this.#perIp.tryAcquire(s.ipKey, quotas.concurrentPerIp)) {
        this.#release(s);
        this.#decide('concurrent_ip', 'limited');
        return concurrentIpRefusal(quotas.concurrentPerIp);
      }
      s.held.push({ counter: this.#perIp, key: s.ipKey });
      this.#decide('concurrent_ip', 'allowed');
    }
    return quotas.connectionRate ? this.#connectionRate(s, quotas.connectionRate) : undefined;
  }

  async #connectionRate(s: SessionLimits, rate: Rate): Promise<Refusal | undefined> {
    const r = await this.#store.consume(this.#spec('connection_rate', rate), s.ipKey);
    this.#decideCount('connection_rate', r);
    if (r.kind === 'unavailable' || r.kind === 'limited') {
      this.#release(s);
      return r.kind === 'unavailable' ? limiterUnavailableRefusal('connect') : connectionRateRefusal(rate, r.msBeforeNext);
    }
    return undefined;
  }

  /** Idempotent; call it from onClose whether or not the connection was admitted. */
  connectionClosed(f: Pick<ClientFacts, 'session'>): void {
    const s = this.#sessions.get(f.session);
    if (!s) return;
    this.#release(s);
    this.#sessions.delete(f.session);
  }

  // ── auth ───────────────────────────────────────────────────────────────────────────────

  /**
   * Before the password is verified: takes this attempt's place in the failure counts per
   * address and per user+address, or refuses when either count is full (a lockout, or as many
   * attempts still being verified as the limit allows). Reserving first is what bounds the
   * password verifications: an attacker's parallel attempts, on one instance or many, each take
   * a place, so at most the limit's number are verified per window, never all of those in flight.
   *
   * With `reserve: false` the attempt only checks that no count is full, and a failure is
   * counted when it happens (authFailed). For a secret that can't be guessed (an app password:
   * 130 random bits, never checked anywhere else) parallel attempts gain an attacker nothing,
   * while reserving would refuse a device's own parallel sign-ins beyond the limit.
   */
  async authAllowed(f: AuthFacts, opts: { reserve?: boolean } = {}): Promise<AuthAttempt> {
    const s = this.#session(f);
    const wanted = this.#authCounters(s, f.username);
    if (opts.reserve === false) return this.#authChecked(f, s, wanted);
    const counts = await Promise.all(wanted.map((w) => this.#store.consume(w.spec, w.key)));
    wanted.forEach((w, i) => this.#decideCount(w.spec.name, counts[i]!));
    const held: HeldAttempt[] = [];
    const full: { scope: LockoutScope; msBeforeNext: number }[] = [];
    let unavailable = false;
    wanted.forEach((w, i) => {
      const r = counts[i]!;
      if (r.kind === 'unavailable') unavailable = true;
      else held.push({ ...w, consumed: r.consumed, source: r.source });
      if (r.kind === 'limited') full.push({ scope: w.scope, msBeforeNext: r.msBeforeNext });
    });
    if (!unavailable && full.length === 0) return { reservation: { held } };
    // Refused: every place this attempt took is given back, so a refusal never counts as a failure.
    await this.#giveBack(held);
    if (unavailable) return { refusal: limiterUnavailableRefusal('auth') };
    return { refusal: this.#lockedOut(f, s, full) };
  }

  /** The failure counts an attempt of `username` from this session's client goes into. */
  #authCounters(s: SessionLimits, username: string): AuthCounter[] {
    const { failuresPerIp, failuresPerUserIp } = this.config.auth;
    return [
      ...(failuresPerIp ? [{ scope: 'ip' as const, spec: this.#spec('auth_ip', failuresPerIp), key: s.ipKey }] : []),
      ...(failuresPerUserIp ? [{ scope: 'user_ip' as const, spec: this.#spec('auth_user_ip', failuresPerUserIp), key: userIpKey(userKey(username), s.ipKey) }] : []),
    ];
  }

  /** `reserve: false`: refused only while a count is full; nothing is taken. */
  async #authChecked(f: AuthFacts, s: SessionLimits, wanted: readonly AuthCounter[]): Promise<AuthAttempt> {
    const peeks = await Promise.all(wanted.map((w) => this.#store.get(w.spec, w.key)));
    if (peeks.some((p) => p.kind === 'unavailable')) return { refusal: limiterUnavailableRefusal('auth') };
    const full = wanted.flatMap((w, i) => {
      const p = peeks[i]!;
      return p.kind === 'found' && p.value >= w.spec.points ? [{ scope: w.scope, msBeforeNext: p.msBeforeNext }] : [];
    });
    return full.length ? { refusal: this.#lockedOut(f, s, full) } : { reservation: { held: [], deferred: wanted } };
  }

  #lockedOut(f: AuthFacts, s: SessionLimits, full: { scope: LockoutScope; msBeforeNext: number }[]): Refusal {
    const lock = full.sort((a, b) => b.msBeforeNext - a.msBeforeNext)[0]!;
    s.lockedRefusals++;
    this.#log.debug({ session: f.session, client: f.ip, user: f.username, scope: lock.scope, attempt: s.lockedRefusals }, 'AUTH refused: locked out');
    if (s.lockedRefusals > this.config.auth.refusalsBeforeDisconnect) return lockedOutDisconnect(lock.msBeforeNext);
    return lockedOutRefusal(lock.scope, lock.msBeforeNext);
  }

  /**
   * After a wrong password: the reservation stays in the counts as the failure. The failure
   * holding the count's last place starts the lockout: its counter is given lockFor to live,
   * in one store operation that leaves the count itself alone. (Only a right password giving
   * its place back in between lets a later attempt hold that place again; it then renews the
   * lockout.)
   */
  async authFailed(f: AuthFacts, reservation: AuthReservation): Promise<AuthFailure> {
    const s = this.#session(f);
    const { lockFor } = this.config.auth;
    const held = reservation.deferred ? await this.#countFailure(reservation.deferred) : reservation.held;
    const locks = await Promise.all(
      held.map(async (h) => {
        if (h.source === 'none' || h.consumed !== h.spec.points) return undefined;
        await this.#store.expire(h.spec, h.key, lockFor, h.source);
        this.#metrics.lockouts.inc({ scope: h.scope });
        this.#log.warn(
          { session: f.session, client: f.ip, network: s.ipKey, user: f.username, scope: h.scope, failures: h.spec.points, lockSeconds: lockFor / 1000 },
          h.scope === 'ip' ? 'AUTH lockout: too many failed logins from this address' : 'AUTH lockout: too many failed logins for this user from this address',
        );
        return h.scope;
      }),
    );
    const scope = locks.find((l) => l === 'user_ip') ?? locks.find((l) => l === 'ip');
    return scope ? { lockedOut: true, scope, retryAfterSeconds: retrySeconds(lockFor) } : { lockedOut: false };
  }

  /** A failure of an attempt that reserved nothing, counted now. */
  async #countFailure(counters: readonly AuthCounter[]): Promise<HeldAttempt[]> {
    const counts = await Promise.all(counters.map((c) => this.#store.consume(c.spec, c.key)));
    counters.forEach((c, i) => this.#decideCount(c.spec.name, counts[i]!));
    return counters.flatMap((c, i) => {
      const r = counts[i]!;
      // The failure that fills the count starts the lockout, as with a reservation.
      return r.kind === 'unavailable' ? [] : [{ ...c, consumed: Math.min(r.consumed, c.spec.points), source: r.source }];
    });
  }

  /** The password could not be checked (the authenticator failed): the attempt gives its places back. */
  async authAbandoned(reservation: AuthReservation): Promise<void> {
    await this.#giveBack(reservation.held);
  }

  /**
   * After a correct password. A suspended account is refused here (535 5.7.8), so the reason
   * is only told to someone who knew the password. Otherwise the user+address failure count
   * is cleared (the per-address count stays: it guards against spraying many users), unless
   * `keepFailures`: a sign-in with an app password says nothing about guesses at the user's own
   * password, so whoever holds a device's app password can't reset their count with it.
   */
  async authSucceeded(f: AuthFacts, reservation: AuthReservation, opts: { keepFailures?: boolean } = {}): Promise<Refusal | undefined> {
    const s = this.#session(f);
    const user = userKey(f.username);
    // The right password is no failure: the places it took go back.
    const [suspended] = await Promise.all([this.#suspension(user), this.#giveBack(reservation.held)]);
    if (suspended === 'unavailable') return limiterUnavailableRefusal('auth');
    if (suspended) {
      this.#log.info({ session: f.session, client: f.ip, user: f.username }, 'AUTH refused: account suspended');
      return suspendedAuthRefusal();
    }
    s.lockedRefusals = 0;
    const rate = this.config.auth.failuresPerUserIp;
    if (rate && !opts.keepFailures) await this.#store.delete(this.#spec('auth_user_ip', rate), userIpKey(user, s.ipKey));
    return undefined;
  }

  // ── mail ───────────────────────────────────────────────────────────────────────────────

  /** Counts one message against each configured quota; a refused MAIL gives back what it took. */
  async mailFrom(f: MailFacts): Promise<Refusal | undefined> {
    const s = this.#session(f);
    const user = f.user !== undefined ? userKey(f.user) : undefined;
    const quotas = this.#quotasFor(s, f.user, f.groups);
    const sender = quotas.messagesPerSender ? senderKey(f.sender) : undefined;
    const perUser = user !== undefined ? quotas.messagesPerUser : null;
    const bytesRate = user !== undefined ? quotas.bytesPerUser : null;
    // Without a user there is no suspension to look up: with no sender or address quota either, nothing is counted.
    if (user === undefined && sender === undefined && !quotas.messagesPerIp) return undefined;
    if (user !== undefined && !perUser && sender === undefined && !quotas.messagesPerIp && !bytesRate) {
      const suspended = await this.#suspension(user);
      if (suspended === 'unavailable') return limiterUnavailableRefusal('mail');
      return suspended ? suspendedMailRefusal() : undefined;
    }
    const counters: { limiter: QuotaLimiter; rate: Rate; key: string }[] = [];
    if (user !== undefined && perUser) counters.push({ limiter: 'messages_user', rate: perUser, key: user });
    if (sender !== undefined && quotas.messagesPerSender) counters.push({ limiter: 'messages_sender', rate: quotas.messagesPerSender, key: sender });
    if (quotas.messagesPerIp) counters.push({ limiter: 'messages_ip', rate: quotas.messagesPerIp, key: s.ipKey });

    const [suspended, bytes, ...counts] = await Promise.all([
      user !== undefined ? this.#suspension(user) : false,
      bytesRate ? this.#store.get(this.#spec('bytes_user', bytesRate), user!) : undefined,
      ...counters.map((c) => this.#store.consume(this.#spec(c.limiter, c.rate), c.key)),
    ]);
    counters.forEach((c, i) => this.#decideCount(c.limiter, counts[i]!));
    const giveBack = () =>
      Promise.all(
        counters.map((c, i) => {
          const r = counts[i]!;
          return r.kind === 'allowed' ? this.#store.reward(this.#spec(c.limiter, c.rate), c.key, 1, r.source) : undefined;
        }),
      );

    if (suspended === 'unavailable' || bytes?.kind === 'unavailable' || counts.some((r) => r.kind === 'unavailable')) {
      await giveBack();
      return limiterUnavailableRefusal('mail');
    }
    if (suspended) {
      await giveBack();
      return suspendedMailRefusal();
    }

    const over: { limiter: QuotaLimiter; rate: Rate; msBeforeNext: number }[] = [];
    let hit: QuotaLimiter | undefined;
    counters.forEach((c, i) => {
      const r = counts[i] as Exclude<CountResult, { kind: 'unavailable' }>;
      if (r.kind !== 'limited') return;
      over.push({ limiter: c.limiter, rate: c.rate, msBeforeNext: r.msBeforeNext });
      // The first refusal in a window is the quota hit; the retries after it are not.
      if (c.limiter === 'messages_user' && r.consumed === c.rate.amount + 1) hit = 'messages_user';
    });
    if (bytesRate && bytes?.kind === 'found') {
      const used = bytes.value;
      const full = used >= bytesRate.amount || (f.size !== undefined && used + f.size > bytesRate.amount);
      this.#decide('bytes_user', full ? 'limited' : 'allowed', bytes.source);
      if (full) over.push({ limiter: 'bytes_user', rate: bytesRate, msBeforeNext: bytes.msBeforeNext });
    } else if (bytesRate) {
      this.#decide('bytes_user', 'allowed', bytes?.kind === 'none' ? bytes.source : 'store');
    }
    if (over.length === 0) return undefined;

    // Store round trips run side by side where they can: a slow Redis costs each wave once.
    const [, suspendedNow] = await Promise.all([giveBack(), hit && user !== undefined ? this.#quotaHit(user, f, hit) : false]);
    if (suspendedNow) return suspendedMailRefusal();
    const worst = over.sort((a, b) => b.msBeforeNext - a.msBeforeNext)[0]!;
    this.#log.debug({ session: f.session, client: f.ip, user: f.user, limiter: worst.limiter }, 'MAIL refused: quota reached');
    return quotaRefusal(worst.limiter, worst.rate, worst.msBeforeNext);
  }

  /**
   * A policy rule's own limit (`action: limit`, e.g. 50/1h per user): one point under the
   * rule's bucket. Returns the time to wait when over; 'unavailable' when the store is away
   * and onStoreFailure is deny.
   */
  async policyLimit(req: { bucket: string; amount: number; windowMs: number }): Promise<{ limited: false } | { limited: true; msBeforeNext: number } | 'unavailable'> {
    const r = await this.#store.consume(this.#policySpec(req.amount, req.windowMs), req.bucket);
    this.#decideCount('policy', r);
    if (r.kind === 'unavailable') return 'unavailable';
    return r.kind === 'limited' ? { limited: true, msBeforeNext: r.msBeforeNext } : { limited: false };
  }

  // ── rcpt ───────────────────────────────────────────────────────────────────────────────

  async rcptTo(f: RcptFacts): Promise<Refusal | undefined> {
    const s = this.#session(f);
    const quotas = this.#quotasFor(s, f.user, f.groups);
    const capped = this.#recipientCap(quotas, f);
    if (capped) return capped;
    if (f.user === undefined) return undefined;
    const user = userKey(f.user);
    const rate = quotas.recipientsPerUser;
    if (!rate) {
      const suspended = await this.#suspension(user);
      if (suspended === 'unavailable') return limiterUnavailableRefusal('rcpt');
      return suspended ? suspendedMailRefusal() : undefined;
    }
    const sp = this.#spec('recipients_user', rate);
    const [suspended, r] = await Promise.all([this.#suspension(user), this.#store.consume(sp, user)]);
    this.#decideCount('recipients_user', r);
    const giveBack = async () => {
      if (r.kind === 'allowed') await this.#store.reward(sp, user, 1, r.source);
    };
    if (suspended === 'unavailable' || r.kind === 'unavailable') {
      await giveBack();
      return limiterUnavailableRefusal('rcpt');
    }
    if (suspended) {
      await giveBack();
      return suspendedMailRefusal();
    }
    if (r.kind !== 'limited') return undefined;
    if (r.consumed === rate.amount + 1 && (await this.#quotaHit(user, f, 'recipients_user'))) return suspendedMailRefusal();
    this.#log.debug({ session: f.session, client: f.ip, user: f.user, limiter: 'recipients_user' }, 'RCPT refused: quota reached');
    return quotaRefusal('recipients_user', rate, r.msBeforeNext);
  }

  /**
   * RCPT's one check that counts nothing in the store: recipients per message. All of rcptTo
   * for a client without a user; synchronous, so the checkpoint's fast path asks it directly
   * when the plan says no other limit can apply to such a client.
   */
  recipientCap(f: RcptFacts): Refusal | undefined {
    return this.#recipientCap(this.#quotasFor(this.#session(f), f.user, f.groups), f);
  }

  #recipientCap(quotas: Quotas, f: RcptFacts): Refusal | undefined {
    const perMessage = quotas.recipientsPerMessage;
    if (perMessage === null) return undefined;
    // RFC 5321 §4.5.3.1.10: 452 tells the client to send the rest in a later transaction.
    const full = f.recipientsSoFar >= perMessage;
    this.#decide('recipients_message', full ? 'limited' : 'allowed');
    return full ? tooManyRecipientsRefusal(perMessage) : undefined;
  }

  // ── data ───────────────────────────────────────────────────────────────────────────────

  /** After the backend accepted a message: counts its bytes. The message that uses up the quota is a quota hit. */
  async messageBytes(f: ClientFacts, bytes: number): Promise<void> {
    if (f.user === undefined || bytes <= 0) return;
    const s = this.#session(f);
    const rate = this.#quotasFor(s, f.user, f.groups).bytesPerUser;
    if (!rate) return;
    const user = userKey(f.user);
    const r = await this.#store.penalty(this.#spec('bytes_user', rate), user, Math.round(bytes));
    if (r.kind === 'unavailable' || r.source === 'none') return;
    if (r.consumed >= rate.amount && r.consumed - bytes < rate.amount) await this.#quotaHit(user, f, 'bytes_user');
  }

  // ── admin ──────────────────────────────────────────────────────────────────────────────

  /** Locked-out addresses and users, suspended users and the top senders, from the store. */
  async listState(opts: { top?: number } = {}): Promise<LimitsState> {
    const lists = await Promise.all(STATE_LIMITERS.map((name) => this.#store.entries(name)));
    return this.#summarize(lists.flat(), opts.top ?? 10);
  }

  /** The report over stored counts, each against the limit it is counted against now (a reload may have changed it). */
  #summarize(counts: readonly StoredCount[], top: number): LimitsState {
    const entries = Object.fromEntries(STATE_LIMITERS.map((name) => [name, [] as StoredEntry[]])) as Record<(typeof STATE_LIMITERS)[number], StoredEntry[]>;
    for (const c of counts) {
      if (!(STATE_LIMITERS as readonly string[]).includes(c.name)) continue;
      const rate = this.#currentRate(c);
      // A limit switched off since: listed with its count, never as locked or full.
      entries[c.name as (typeof STATE_LIMITERS)[number]].push({ ...c, points: rate?.amount ?? Number.MAX_SAFE_INTEGER, windowMs: rate?.windowMs ?? 0 });
    }
    return summarizeState(entries as StateEntries, { now: this.#now(), top, store: { kind: this.#store.kind, up: this.#store.up } });
  }

  #currentRate(c: StoredCount): Rate | null {
    const cfg = this.config;
    switch (c.name) {
      case 'auth_ip':
        return cfg.auth.failuresPerIp;
      case 'auth_user_ip':
        return cfg.auth.failuresPerUserIp;
      case 'messages_user':
        return this.#resolver.resolve({ user: c.key }).messagesPerUser;
      case 'brake':
        return cfg.brake.quotaHits === null ? null : { amount: cfg.brake.quotaHits, windowMs: cfg.brake.window };
      case 'suspension':
        return { amount: 1, windowMs: 0 };
      default:
        return null;
    }
  }

  /**
   * Clears everything the store holds about an address (lockouts, connection and message
   * counts) or a user (suspension, brake count, lockouts from any address, quotas).
   * Throws RangeError for an empty target and StoreUnavailableError while Redis is away.
   */
  async clear(target: string): Promise<ClearResult> {
    const plan = planClear(target, this.config.ipv6Prefix);
    if (!plan) throw new RangeError('expected an IP address or a user name');
    const doomed: StoredCount[] = [];
    for (const [name, match] of Object.entries(plan.match) as [LimiterName, (k: string) => boolean][]) {
      const [shared, local] = await Promise.all([this.#store.entries(name), this.#store.insuranceEntries(name)]);
      for (const e of [...shared, ...local]) if (match(e.key)) doomed.push(e);
    }
    await this.#store.remove(doomed);
    this.#suspensions?.forget(doomed.filter((e) => e.name === 'suspension').map((e) => e.key));
    const cleared = dedupe(doomed);
    const removed = cleared.map((e) => ({ limiter: e.name, key: e.key }));
    this.#log.info({ target, kind: plan.kind, key: plan.key, removed: removed.length }, 'limits cleared by an admin');
    // What was cleared, in the same report `limits list` prints (every entry, not a top few).
    return { target, kind: plan.kind, key: plan.key, removed, cleared: this.#summarize(cleared, cleared.length) };
  }

  // ── suspension notices ─────────────────────────────────────────────────────────────────

  /**
   * Called, never awaited, when a quota hit on this instance suspends an account: only the
   * instance (or worker) whose hit filled the brake count hears of it, once.
   */
  onSuspended(listener: (e: SuspensionEvent) => void): void {
    this.#suspendedListeners.push(listener);
  }

  /**
   * Claims the notice of `user`'s suspension as it stands in the store (see NoticeClaim): one
   * atomic count under the user, which lives as long as the suspension and which `limits clear`
   * removes with it. So a brake that trips again during the suspension, a second instance, a
   * restart or a Redis that lost its data and got the suspension written back never give a
   * second notice; the next suspension, after a clear or an expiry, gets its own.
   */
  async claimSuspensionNotice(user: string): Promise<NoticeClaim> {
    const key = userKey(user);
    if (!this.#store.up) return 'unavailable';
    const held = await this.#store.get(SUSPENSION, key);
    if (held.kind === 'unavailable' || held.source !== 'store') return 'unavailable';
    if (held.kind === 'none') return 'lifted';
    // Whole seconds, as the store keeps expiries; 0: no expiry, as the suspension.
    const windowMs = held.msBeforeNext > 0 ? Math.ceil(held.msBeforeNext / 1000) * 1000 : 0;
    const r = await this.#store.consume({ name: 'suspension_notice', points: 1, windowMs }, key);
    if (r.kind === 'unavailable' || r.source !== 'store') return 'unavailable';
    return r.consumed === 1 ? 'claimed' : 'taken';
  }

  // ── internals ──────────────────────────────────────────────────────────────────────────

  /**
   * The session's state, or a throwaway one: a hook that finishes after the client left (AUTH
   * waiting on bcrypt, a message's byte count) must not bring a closed session back, or the
   * map would grow with every client that hangs up mid-command.
   */
  #session(f: Pick<ClientFacts, 'session' | 'ip'>): SessionLimits {
    const known = this.#sessions.get(f.session);
    if (known) return known;
    const ip = parseIp(f.ip);
    return { ipKey: ipKeyOf(f.ip, ip, this.config.ipv6Prefix), ip, held: [], lockedRefusals: 0 };
  }

  #release(s: SessionLimits): void {
    for (const h of s.held) h.counter.release(h.key);
    s.held.length = 0;
  }

  #spec(name: LimiterName, rate: Rate): LimiterSpec {
    let byName = this.#specs.get(rate);
    if (!byName) this.#specs.set(rate, (byName = {}));
    return (byName[name] ??= { name, points: rate.amount, windowMs: rate.windowMs });
  }

  #policySpec(amount: number, windowMs: number): LimiterSpec {
    let byWindow = this.#policySpecs.get(amount);
    if (!byWindow) {
      // Policy reloads may bring new rates; a bound keeps the map from growing with each.
      if (this.#policySpecs.size >= MAX_POLICY_RATES) this.#policySpecs.clear();
      this.#policySpecs.set(amount, (byWindow = new Map()));
    }
    let sp = byWindow.get(windowMs);
    if (!sp) byWindow.set(windowMs, (sp = { name: 'policy', points: amount, windowMs }));
    return sp;
  }

  /**
   * The quotas for this session's client as `user` (with `groups`): resolveQuotas, asked once
   * per session and config rather than at every stage. The address is the session's own.
   */
  #quotasFor(s: SessionLimits, user: string | undefined, groups: readonly string[] | undefined): Quotas {
    const resolver = this.#resolver;
    const who = { user, groups, ip: s.ip };
    if (!resolver.mayOverride(who)) return resolver.defaults;
    const last = s.quotas;
    if (last && last.resolver === resolver && last.user === user && sameList(last.groups, groups)) return last.quotas;
    const quotas = resolver.resolve(who);
    s.quotas = { resolver, user, groups, quotas };
    return quotas;
  }

  async #giveBack(held: readonly HeldAttempt[]): Promise<void> {
    await Promise.all(held.map((h) => this.#store.reward(h.spec, h.key, 1, h.source)));
  }

  /** false, the suspension record (truthy), or 'unavailable' under onStoreFailure: deny. */
  async #suspension(user: string): Promise<false | 'unavailable' | { since: number; msBeforeNext: number }> {
    const r = await this.#store.get(SUSPENSION, user, { mirror: true });
    if (r.kind === 'unavailable') {
      this.#metrics.decide('suspension', 'store_error');
      return 'unavailable';
    }
    this.#decide('suspension', r.kind === 'found' ? 'limited' : 'allowed', r.source);
    return r.kind === 'found' ? { since: r.value, msBeforeNext: r.msBeforeNext } : false;
  }

  /**
   * A per-user quota ran out. Returns true when the account is suspended now: by this hit, or
   * already (the caller refuses either way).
   */
  async #quotaHit(user: string, f: ClientFacts, limiter: QuotaLimiter): Promise<boolean> {
    this.#metrics.quotaExhaustions.inc({ limiter });
    const { quotaHits, window, suspendFor } = this.config.brake;
    this.#log.warn({ session: f.session, client: f.ip, user: f.user, limiter }, 'quota exhausted for this window');
    if (quotaHits === null) return false;
    const brake: LimiterSpec = { name: 'brake', points: quotaHits, windowMs: window };
    const r = await this.#store.penalty(brake, user, 1);
    this.#decideCount('brake', r);
    if (r.kind === 'unavailable' || r.source === 'none' || r.consumed !== quotaHits) return false;
    // Sessions open at the suspension can trip the brake again: that must not restart the
    // suspension (a new start time, a later expiry), count it twice or send a second notice.
    const [held] = await Promise.all([this.#store.get(SUSPENSION, user, { mirror: true }), this.#store.delete(brake, user)]);
    if (held.kind === 'found') {
      this.#log.info(
        { session: f.session, client: f.ip, user: f.user, limiter },
        `quota ran out while the account is suspended (since ${new Date(held.value * 1000).toISOString()})`,
      );
      return true;
    }
    // Not suspended, or the store can't say: suspend.
    const since = Math.floor(this.#now() / 1000);
    const written = await this.#store.set(SUSPENSION, user, since, suspendFor ?? 0, { mirror: true });
    this.#suspensions?.remember(user, since, suspendFor, written);
    this.#metrics.suspensions.inc();
    this.#log.warn(
      { session: f.session, client: f.ip, user: f.user, quotaHits, window: window / 1000, suspendForSeconds: suspendFor === null ? null : suspendFor / 1000 },
      `account suspended: ${quotaHits} quota hits within ${window / 1000}s; ${suspendFor === null ? 'until an admin clears it' : `for ${suspendFor / 1000}s`}`,
    );
    if (this.#suspendedListeners.length > 0 && f.user !== undefined) {
      const event: SuspensionEvent = { user: f.user, addresses: f.addresses ?? [], session: f.session, ip: f.ip, listener: f.listener, limiter, quotaHits, windowMs: window, since, suspendForMs: suspendFor };
      for (const l of this.#suspendedListeners) l(event);
    }
    return true;
  }

  #decide(limiter: LimiterName, result: 'allowed' | 'limited', source: 'store' | 'insurance' | 'none' = 'store'): void {
    this.#metrics.decide(limiter, (source === 'store' ? result : 'store_error') satisfies DecisionResult);
  }

  #decideCount(limiter: LimiterName, r: CountResult): void {
    if (r.kind === 'unavailable') this.#metrics.decide(limiter, 'store_error');
    else this.#decide(limiter, r.kind, r.source);
  }

  #storeLabel(): string {
    const s = this.config.store;
    if (s.kind === 'memory') return 'memory';
    if (s.url) return redactUrl(s.url);
    if (s.sentinels) return `sentinel ${s.name} via ${s.sentinels.map((n) => `${n.host}:${n.port}`).join(',')}`;
    return `cluster ${s.cluster!.map((n) => `${n.host}:${n.port}`).join(',')}`;
  }
}

const FAILURE_TEXT = {
  memory: 'each instance counts in its own memory (insurance limiter)',
  allow: 'limits are NOT enforced (onStoreFailure: allow)',
  deny: 'mail is refused with 4.3.0 (onStoreFailure: deny)',
} as const;

function redactUrl(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//***@');
}

function sameList(a: readonly string[] | undefined, b: readonly string[] | undefined): boolean {
  if (a === b) return true;
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** One entry per limiter and key: the shared store's copy (listed first) wins over the insurance memory's. */
function dedupe(xs: readonly StoredCount[]): StoredCount[] {
  const seen = new Set<string>();
  return xs.filter((x) => {
    const id = `${x.name}\0${x.key}`;
    if (seen.has(id)) return false;
    seen.add(id);
    return true;
  });
}

export interface CreateLimitsOptions {
  readonly config: LimitsConfig;
  readonly log: Logger;
  /** The app's registry; the metrics are registered on it. */
  readonly registry?: Registry;
  /** Already-created metrics (when the catalogue made them). */
  readonly metrics?: LimitMetrics;
  readonly now?: () => number;
  /** How often suspensions are compared with the store (30 s; tests shorten it). */
  readonly suspensionSyncMs?: number;
}

/** Builds the store `config.store` names and the Limits over it. Call `start()` before listening. */
export function createLimits(opts: CreateLimitsOptions): Limits {
  const metrics = opts.metrics ?? (opts.registry ? createLimitMetrics(opts.registry) : undefined);
  if (!metrics) throw new Error('createLimits needs registry or metrics');
  const store = createLimiterStore(opts.config);
  // Every store: a memory store never loses its data behind smtpgate's back, but its suspensions are counted too.
  const suspensions = new SuspensionKeeper({ store, metrics, log: opts.log, ...(opts.now ? { now: opts.now } : {}), ...(opts.suspensionSyncMs ? { intervalMs: opts.suspensionSyncMs } : {}) });
  return new Limits({ config: opts.config, store, metrics, log: opts.log, ...(opts.now ? { now: opts.now } : {}), suspensions });
}

export type { Quotas };
