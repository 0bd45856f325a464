/**
 * The counters behind every limit, and what happens when the store behind them fails.
 *
 * A `StoreBackend` makes rate-limiter-flexible limiters for one kind of store: memory
 * (`RateLimiterMemory`, this process) and redis (`RateLimiterRedis`, shared by every instance
 * and every cluster worker). It also lists and removes stored entries for `smtpgate limits list|clear`.
 *
 * `LimiterStore` runs each operation on the backend's limiter and sorts the outcome the way
 * rate-limiter-flexible reports it: a resolved `RateLimiterRes` is "allowed"; a rejected
 * `RateLimiterRes` is "over the limit"; a rejected `Error` is "the store failed". On a store
 * failure it answers per `limits.onStoreFailure`:
 *
 * - memory: the same operation on an insurance `RateLimiterMemory` (one per limiter). This is
 *   rate-limiter-flexible's `insuranceLimiter`, invoked here rather than inside the library so
 *   that the failure is seen, counted and logged. Its counts are not merged back.
 * - allow: every check passes (fail open).
 * - deny: the caller gets `unavailable` and refuses with 4.3.0 (fail closed).
 *
 * Every store operation races a deadline, so no SMTP command waits on a store that hangs.
 *
 * A limit's size and window are not part of its keys: there is one library limiter per limit
 * name, the window goes with each operation (rate-limiter-flexible's `customDuration`) and
 * the verdict "over the limit" is made here from the count. So a reload that changes a
 * limit's number keeps everyone's counts and lockouts (tightening a limit during an attack
 * must not release the attackers), and instances in a rolling reload count in the same keys.
 * A new window applies to counters started after the change; a running counter (and a
 * lockout) keeps the expiry it was given.
 */
import { RateLimiterMemory, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import type { StoreFailureMode } from './config.js';
import type { LimiterName } from './replies.js';

export interface LimiterSpec {
  readonly name: LimiterName;
  readonly points: number;
  /** Window length; 0 means entries never expire (suspensions). */
  readonly windowMs: number;
}

/** One counter as the store holds it: the key says whose it is, not which limit it is counted against. */
export interface StoredCount {
  readonly name: LimiterName;
  /** The limit key: "192.0.2.1", "alice", "alice|192.0.2.1". */
  readonly key: string;
  readonly value: number;
  /** Milliseconds until the entry expires; -1 when it never does. */
  readonly msBeforeNext: number;
}

/** One stored counter with the limit it is counted against now, as the admin listing sees it. */
export interface StoredEntry extends StoredCount {
  readonly points: number;
  readonly windowMs: number;
}

export type StoreKind = 'memory' | 'redis' | 'cluster';

export interface StoreBackend {
  readonly kind: StoreKind;
  /**
   * Makes the limiter for one limit name; LimiterStore calls it once per keyPrefix and caches
   * it. It never refuses by itself (LimiterStore compares the count with the limit) and takes
   * its window from each operation.
   */
  createLimiter(keyPrefix: string): RateLimiterAbstract;
  /**
   * Sets a counter's expiry to `ms` from now without touching its value, in one store
   * operation, so counts made at the same moment are kept. False when the counter is gone.
   */
  expire(limiter: RateLimiterAbstract, key: string, ms: number): Promise<boolean>;
  /**
   * Takes `points` off a live counter, in one store operation, and never creates one: a counter
   * gone since the points were counted (its window ended, an admin cleared it) stays gone, where
   * the library's reward() would start it below zero and so grant that many extra points.
   */
  giveBack(limiter: RateLimiterAbstract, key: string, points: number): Promise<void>;
  /** False while the store is known to be unreachable: operations go straight to the fallback. */
  readonly usable: boolean;
  /** A store operation failed: the backend stops being `usable` until it has checked itself. */
  reportFailure(err: Error): void;
  /** Called on every change between reachable (true) and unreachable (false). */
  onHealthChange(listener: (up: boolean, detail: string) => void): void;
  /** Resolves true once the store is reachable, false after `timeoutMs`. */
  ready(timeoutMs: number): Promise<boolean>;
  /** All live entries whose limiter name is `name`, under `keyPrefix`. */
  entries(keyPrefix: string, name: LimiterName): Promise<StoredCount[]>;
  /** Removes entries (as returned by `entries`); resolves with how many existed. */
  remove(keyPrefix: string, entries: readonly Pick<StoredCount, 'name' | 'key'>[]): Promise<number>;
  /**
   * The store's birth certificate: an id smtpgate places once and never lets expire. Resolves
   * with the id the store holds, placing `candidate` first if it holds none. A different id
   * than last time means the store lost its data (a Redis restarted without persistence, a
   * FLUSHALL) and someone marked it again.
   */
  marker(keyPrefix: string, candidate: string): Promise<string>;
  /**
   * A small record kept beside the counters and shared like them (the last use of each app
   * password): `field` of the table `table` set to `value`, never expiring. A table stays small
   * (one field per credential), so it is read whole.
   */
  setNote(keyPrefix: string, table: string, field: string, value: string): Promise<void>;
  notes(keyPrefix: string, table: string): Promise<Map<string, string>>;
  /** Removes fields of a table; resolves with how many existed. */
  removeNotes(keyPrefix: string, table: string, fields: readonly string[]): Promise<number>;
  close(): Promise<void>;
}

/**
 * "<base>:<name>:c": the limit's name only, never its size or window, so a reload that changes
 * a limit keeps the counts. The "c" marks this key layout: counters written by earlier builds
 * ("<base>:<name>:<points>-<seconds>:<key>") are neither read nor listed, and expire by
 * themselves. Suspensions are the exception: they may never expire, and their one fixed shape
 * gave them one key all along, so they keep it ("<base>:suspension:1-0") and an upgrade lifts none.
 */
export function limiterKeyPrefix(base: string, name: LimiterName): string {
  return name === 'suspension' ? `${base}:suspension:1-0` : `${base}:${name}:c`;
}

/** The reverse: the limit key in "<base>:<name>:c:<key>" (the key may contain ":"). */
export function parseStoredKey(base: string, name: LimiterName, storedKey: string): string | undefined {
  const head = `${limiterKeyPrefix(base, name)}:`;
  return storedKey.startsWith(head) ? storedKey.slice(head.length) : undefined;
}

/** The library limiter's own limit: never reached, the verdict is LimiterStore's (see above). */
export const NO_LIBRARY_LIMIT = Number.MAX_SAFE_INTEGER;

/** rate-limiter-flexible takes the window per operation in whole seconds; 0 means no expiry. */
function windowOption(spec: LimiterSpec): { customDuration: number } {
  return { customDuration: Math.round(spec.windowMs / 1000) };
}

/** In-process counters: exact for one process, forgotten at restart. Also the insurance store. */
export class MemoryBackend implements StoreBackend {
  readonly kind = 'memory' as const;
  readonly usable = true;
  readonly #limiters = new Map<string, RateLimiterMemory>();
  readonly #notes = new Map<string, Map<string, string>>();

  createLimiter(keyPrefix: string): RateLimiterMemory {
    let limiter = this.#limiters.get(keyPrefix);
    if (!limiter) this.#limiters.set(keyPrefix, (limiter = new RateLimiterMemory({ points: NO_LIBRARY_LIMIT, duration: 0, keyPrefix })));
    return limiter;
  }

  async expire(limiter: RateLimiterAbstract, key: string, ms: number): Promise<boolean> {
    return expireInMemory(limiter as RateLimiterMemory, key, ms);
  }

  async giveBack(limiter: RateLimiterAbstract, key: string, points: number): Promise<void> {
    giveBackInMemory(limiter as RateLimiterMemory, key, points);
  }

  reportFailure(err: Error): void {
    // The memory store has no outage to fall back from: a failure here is a bug.
    throw err;
  }

  onHealthChange(): void {
    /* always up */
  }

  async ready(): Promise<boolean> {
    return true;
  }

  async entries(keyPrefix: string, name: LimiterName): Promise<StoredCount[]> {
    const limiter = this.#limiters.get(limiterKeyPrefix(keyPrefix, name));
    if (!limiter) return [];
    const now = Date.now();
    const out: StoredCount[] = [];
    for (const rec of limiter.dump().storage) {
      if (rec.expiresAt !== null && rec.expiresAt <= now) continue;
      out.push({ name, key: String(rec.key), value: rec.value, msBeforeNext: rec.expiresAt === null ? -1 : rec.expiresAt - now });
    }
    return out;
  }

  async remove(keyPrefix: string, entries: readonly Pick<StoredCount, 'name' | 'key'>[]): Promise<number> {
    let removed = 0;
    for (const e of entries) {
      const found = this.#limiters.get(limiterKeyPrefix(keyPrefix, e.name));
      if (found && (await found.delete(e.key))) removed++;
    }
    return removed;
  }

  async marker(): Promise<string> {
    // This process's memory can't lose its data behind smtpgate's back.
    return 'memory';
  }

  async setNote(keyPrefix: string, table: string, field: string, value: string): Promise<void> {
    const key = `${keyPrefix}:${table}`;
    let t = this.#notes.get(key);
    if (!t) this.#notes.set(key, (t = new Map()));
    t.set(field, value);
  }

  async notes(keyPrefix: string, table: string): Promise<Map<string, string>> {
    return new Map(this.#notes.get(`${keyPrefix}:${table}`));
  }

  async removeNotes(keyPrefix: string, table: string, fields: readonly string[]): Promise<number> {
    const t = this.#notes.get(`${keyPrefix}:${table}`);
    return fields.filter((f) => t?.delete(f)).length;
  }

  async close(): Promise<void> {
    this.#limiters.clear();
    this.#notes.clear();
  }
}

/**
 * The memory store's `expire`. rate-limiter-flexible has no "change the expiry, keep the
 * value" operation, and its public get-then-set would leave an await between the read and the
 * write where another session's count could land and be overwritten. Its MemoryStorage reads
 * and writes synchronously, so doing both in one synchronous step here is atomic. This is a
 * seam into the library's private `_memoryStorage`; test/unit/limits-store.test.ts pins it.
 */
function expireInMemory(limiter: RateLimiterMemory, key: string, ms: number): boolean {
  const storage = (limiter as unknown as { _memoryStorage: MemoryStorageSeam })._memoryStorage;
  const rlKey = limiter.getKey(key);
  const current = storage.get(rlKey);
  if (!current) return false;
  storage.set(rlKey, current.consumedPoints, Math.ceil(ms / 1000));
  return true;
}

/** The memory store's `giveBack`: read and write in one synchronous step, as in expireInMemory. */
function giveBackInMemory(limiter: RateLimiterMemory, key: string, points: number): void {
  const storage = (limiter as unknown as { _memoryStorage: MemoryStorageSeam })._memoryStorage;
  const record = storage._storage.get(limiter.getKey(key));
  // An expired record may linger until its timer runs: it is gone all the same.
  if (!record || (record.expiresAt !== null && record.expiresAt <= Date.now())) return;
  record.value -= points;
}

interface MemoryStorageSeam {
  get(rlKey: string): RateLimiterRes | null;
  set(rlKey: string, value: number, durationSec: number): RateLimiterRes;
  /** The records themselves: `value`, and `expiresAt` in epoch ms (null: no expiry). */
  readonly _storage: Map<string, { value: number; readonly expiresAt: number | null }>;
}

/** Where an answer came from: the shared store, the insurance memory, or nowhere (fail open). */
export type AnswerSource = 'store' | 'insurance' | 'none';

export type CountResult =
  | { readonly kind: 'allowed' | 'limited'; readonly consumed: number; readonly msBeforeNext: number; readonly source: AnswerSource }
  | { readonly kind: 'unavailable' };

export type PeekResult =
  | { readonly kind: 'found'; readonly value: number; readonly msBeforeNext: number; readonly source: AnswerSource }
  | { readonly kind: 'none'; readonly source: AnswerSource }
  | { readonly kind: 'unavailable' };

export class StoreUnavailableError extends Error {
  constructor(detail: string) {
    super(`limiter store unavailable: ${detail}`);
  }
}

class DeadlineError extends Error {}

export interface LimiterStoreOptions {
  readonly backend: StoreBackend;
  readonly onFailure: StoreFailureMode;
  /** First segment of every key: "smtpgate". */
  readonly keyPrefix: string;
  /** Upper bound for one store operation before the fallback answers. */
  readonly opTimeoutMs?: number;
}

export class LimiterStore {
  readonly keyPrefix: string;
  readonly onFailure: StoreFailureMode;
  readonly #backend: StoreBackend;
  /** Only with onFailure: memory and a store that can fail. */
  readonly #insurance: MemoryBackend | undefined;
  /** One library limiter per limit name (see the top of this file). */
  readonly #limiters = new Map<LimiterName, RateLimiterAbstract>();
  readonly #opTimeoutMs: number;

  constructor(opts: LimiterStoreOptions) {
    this.#backend = opts.backend;
    this.keyPrefix = opts.keyPrefix;
    this.onFailure = opts.onFailure;
    this.#opTimeoutMs = opts.opTimeoutMs ?? 500;
    this.#insurance = opts.onFailure === 'memory' && opts.backend.kind !== 'memory' ? new MemoryBackend() : undefined;
  }

  get kind(): StoreKind {
    return this.#backend.kind;
  }

  /** True while answers come from the shared store. */
  get up(): boolean {
    return this.#backend.usable;
  }

  onHealthChange(listener: (up: boolean, detail: string) => void): void {
    this.#backend.onHealthChange(listener);
  }

  ready(timeoutMs: number): Promise<boolean> {
    return this.#backend.ready(timeoutMs);
  }

  /** Counts `points` and says whether the total is still within `spec.points`. */
  async consume(spec: LimiterSpec, key: string, points = 1): Promise<CountResult> {
    return this.#count(spec, (l) => l.penalty(key, points, windowOption(spec)));
  }

  /** Counts `points` where the caller decides from the total (bytes, brake hits); the same count as consume. */
  async penalty(spec: LimiterSpec, key: string, points: number): Promise<CountResult> {
    return this.consume(spec, key, points);
  }

  /**
   * Gives points back (a refused MAIL must not use up the quotas that did allow it), to the
   * store that counted them: a count made in the insurance memory is not taken off Redis.
   */
  async reward(spec: LimiterSpec, key: string, points: number, source: AnswerSource): Promise<void> {
    if (source === 'store') await this.#primary(spec, (l) => this.#backend.giveBack(l, key, points));
    else if (source === 'insurance' && this.#insurance) await this.#insurance.giveBack(this.#insuranceLimiter(spec), key, points);
  }

  /**
   * Gives a counter `durationMs` to live from now, keeping its value (a lockout starts this
   * way: failures counted at the same moment are not overwritten), in the store that counted it.
   */
  async expire(spec: LimiterSpec, key: string, durationMs: number, source: AnswerSource): Promise<void> {
    if (source === 'store') await this.#primary(spec, (l) => this.#backend.expire(l, key, durationMs));
    else if (source === 'insurance' && this.#insurance) await this.#insurance.expire(this.#insuranceLimiter(spec), key, durationMs);
  }

  /**
   * Reads a counter. With `mirror`, what the shared store says is copied into the insurance
   * memory, so a suspension seen once is still enforced by this instance during an outage.
   */
  async get(spec: LimiterSpec, key: string, opts: { mirror?: boolean } = {}): Promise<PeekResult> {
    const tried = await this.#primary(spec, (l) => l.get(key));
    if (tried.ok) {
      const res = tried.value;
      if (opts.mirror && this.#insurance) {
        const ins = this.#insuranceLimiter(spec);
        if (res) await ins.set(key, res.consumedPoints, res.msBeforeNext > 0 ? Math.ceil(res.msBeforeNext / 1000) : 0);
        else await ins.delete(key);
      }
      return res ? { kind: 'found', value: res.consumedPoints, msBeforeNext: res.msBeforeNext, source: 'store' } : { kind: 'none', source: 'store' };
    }
    switch (this.onFailure) {
      case 'memory': {
        const res = await this.#insuranceLimiter(spec).get(key);
        return res ? { kind: 'found', value: res.consumedPoints, msBeforeNext: res.msBeforeNext, source: 'insurance' } : { kind: 'none', source: 'insurance' };
      }
      case 'allow':
        return { kind: 'none', source: 'none' };
      case 'deny':
        return { kind: 'unavailable' };
    }
  }

  /** Sets a counter to `value` for `durationMs` (0: no expiry). With `mirror`, the insurance memory gets it too. */
  async set(spec: LimiterSpec, key: string, value: number, durationMs: number, opts: { mirror?: boolean } = {}): Promise<boolean> {
    const secs = Math.ceil(durationMs / 1000);
    const tried = await this.#primary(spec, (l) => l.set(key, value, secs));
    if (this.#insurance && (opts.mirror || !tried.ok)) await this.#insuranceLimiter(spec).set(key, value, secs);
    return tried.ok;
  }

  async delete(spec: LimiterSpec, key: string): Promise<boolean> {
    const tried = await this.#primary(spec, (l) => l.delete(key));
    // The insurance copy goes too, so a cleared lockout isn't resurrected by the next outage.
    if (this.#insurance) await this.#insuranceLimiter(spec).delete(key);
    return tried.ok ? tried.value : false;
  }

  /** Entries of one limiter in the shared store. Admin use: throws StoreUnavailableError rather than guessing. */
  async entries(name: LimiterName): Promise<StoredCount[]> {
    if (!this.#backend.usable) throw new StoreUnavailableError('the store is not reachable');
    try {
      return await this.#backend.entries(this.keyPrefix, name);
    } catch (err) {
      if (err instanceof Error && this.#backend.kind !== 'memory') {
        this.#backend.reportFailure(err);
        throw new StoreUnavailableError(err.message);
      }
      throw err;
    }
  }

  /** Removes entries from the shared store and from the insurance memory. */
  async remove(entries: readonly Pick<StoredCount, 'name' | 'key'>[]): Promise<number> {
    if (this.#insurance) await this.#insurance.remove(this.keyPrefix, entries);
    if (!this.#backend.usable) throw new StoreUnavailableError('the store is not reachable');
    return this.#backend.remove(this.keyPrefix, entries);
  }

  /** The store's marker id, placing `candidate` if it has none (see StoreBackend.marker). Throws StoreUnavailableError. */
  async marker(candidate: string): Promise<string> {
    return this.#admin(() => this.#backend.marker(this.keyPrefix, candidate));
  }

  /**
   * Sets a note (see StoreBackend.setNote). Best effort: a store that fails or hangs loses the
   * note, reported as false; nothing waits longer than the store's deadline.
   */
  async setNote(table: string, field: string, value: string): Promise<boolean> {
    if (!this.#backend.usable) return false;
    try {
      await this.#deadline(this.#backend.setNote(this.keyPrefix, table, field, value));
      return true;
    } catch (err) {
      if (err instanceof Error && this.#backend.kind !== 'memory') this.#backend.reportFailure(err);
      return false;
    }
  }

  /** A table's notes. Admin use: throws StoreUnavailableError rather than guessing. */
  async notes(table: string): Promise<Map<string, string>> {
    return this.#admin(() => this.#backend.notes(this.keyPrefix, table));
  }

  async removeNotes(table: string, fields: readonly string[]): Promise<number> {
    return this.#admin(() => this.#backend.removeNotes(this.keyPrefix, table, fields));
  }

  async #admin<T>(op: () => Promise<T>): Promise<T> {
    if (!this.#backend.usable) throw new StoreUnavailableError('the store is not reachable');
    try {
      return await this.#deadline(op());
    } catch (err) {
      if (err instanceof Error && this.#backend.kind !== 'memory') {
        this.#backend.reportFailure(err);
        throw new StoreUnavailableError(err.message);
      }
      throw err;
    }
  }

  /** Entries only this process's insurance memory holds (counted while the store was away). */
  async insuranceEntries(name: LimiterName): Promise<StoredCount[]> {
    return this.#insurance ? this.#insurance.entries(this.keyPrefix, name) : [];
  }

  async close(): Promise<void> {
    await this.#backend.close();
    if (this.#insurance) await this.#insurance.close();
  }

  #limiter(spec: LimiterSpec): RateLimiterAbstract {
    let l = this.#limiters.get(spec.name);
    if (!l) this.#limiters.set(spec.name, (l = this.#backend.createLimiter(limiterKeyPrefix(this.keyPrefix, spec.name))));
    return l;
  }

  #insuranceLimiter(spec: LimiterSpec): RateLimiterMemory {
    return this.#insurance!.createLimiter(limiterKeyPrefix(this.keyPrefix, spec.name));
  }

  /** A counting operation on the store, or on the fallback when the store fails; the verdict is made here. */
  async #count(spec: LimiterSpec, op: (l: RateLimiterAbstract) => Promise<RateLimiterRes>): Promise<CountResult> {
    const tried = await this.#primary(spec, op);
    if (tried.ok) return counted(tried.value, spec, 'store');
    if (tried.over) return counted(tried.over, spec, 'store');
    switch (this.onFailure) {
      case 'memory':
        return counted(await op(this.#insuranceLimiter(spec)), spec, 'insurance');
      case 'allow':
        return { kind: 'allowed', consumed: 0, msBeforeNext: 0, source: 'none' };
      case 'deny':
        return { kind: 'unavailable' };
    }
  }

  /**
   * Runs one operation on the shared store. rate-limiter-flexible rejects with a
   * `RateLimiterRes` when over the limit and with an `Error` when the store failed: the two
   * must never be confused, or a Redis outage would read as "everyone is over the limit".
   */
  async #primary<T>(
    spec: LimiterSpec,
    op: (l: RateLimiterAbstract) => Promise<T>,
  ): Promise<{ ok: true; value: T } | { ok: false; over: RateLimiterRes } | { ok: false; over: undefined }> {
    if (!this.#backend.usable) return { ok: false, over: undefined };
    try {
      return { ok: true, value: await this.#deadline(op(this.#limiter(spec))) };
    } catch (e) {
      if (e instanceof Error) {
        this.#backend.reportFailure(e);
        return { ok: false, over: undefined };
      }
      if (e instanceof RateLimiterRes) return { ok: false, over: e };
      throw e;
    }
  }

  #deadline<T>(p: Promise<T>): Promise<T> {
    if (this.#backend.kind === 'memory') return p;
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DeadlineError(`no answer from the limiter store within ${this.#opTimeoutMs}ms`)), this.#opTimeoutMs);
      timer.unref();
    });
    return Promise.race([p, limit]).finally(() => clearTimeout(timer));
  }
}

function counted(res: RateLimiterRes, spec: LimiterSpec, source: AnswerSource): CountResult {
  return { kind: res.consumedPoints > spec.points ? 'limited' : 'allowed', consumed: res.consumedPoints, msBeforeNext: res.msBeforeNext, source };
}
