/**
 * Suspensions outlive the loss of Redis (issue 14, item 9).
 *
 * A suspension is a record in the shared store without an expiry (or with `brake.suspendFor`),
 * and an admin expects it to hold until cleared or expired. Counters and lockouts can start
 * over when Redis restarts empty (a Kubernetes emptyDir, no persistence); a suspended, likely
 * compromised account must not. So every instance keeps a copy of the suspensions it knows:
 *
 * - at each sync (every `intervalMs`, and each time the store comes back) it reads the store's
 *   marker (an id placed by the first smtpgate to find none) and the suspensions. While the
 *   marker is the one this instance saw last time, the store is the truth: the copy becomes what
 *   the store holds, so an admin's `limits clear` and expiries apply.
 * - when the marker is gone or another one (a process that met the emptied store first marked it
 *   again: a new pod, `smtpgate limits list`), the store lost its data: the copy is written back
 *   (with what is left of each expiry), and the loss is logged, counted
 *   (`smtpgate_limiter_store_resets_total`, `smtpgate_suspensions_restored_total`) and alerted on.
 * - a suspension this instance decided while the store was away is written when it returns.
 *
 * With the memory store there is nothing to lose behind smtpgate's back; the keeper only
 * counts the suspensions there (`smtpgate_suspended_accounts`, for the alert).
 *
 * What is not covered: Redis losing its data while every instance restarts too (no copy
 * survives); and an admin clear made less than one sync before Redis loses its data (another
 * instance may still hold the old copy). Both are documented in docs/deployment.md.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from '../logging/logger.js';
import type { LimiterSpec, LimiterStore } from './limiter-store.js';
import type { LimitMetrics } from './metrics.js';

/** The suspension record: value = when it started (Unix seconds); windowMs 0 = no expiry of its own. */
export const SUSPENSION: LimiterSpec = { name: 'suspension', points: 1, windowMs: 0 };

interface Held {
  /** Unix seconds. */
  readonly since: number;
  /** Epoch ms; null while it lasts until cleared. */
  readonly expiresAt: number | null;
}

export interface SuspensionKeeperDeps {
  readonly store: LimiterStore;
  readonly metrics: LimitMetrics;
  readonly log: Logger;
  readonly now?: () => number;
  /** How often the copy is compared with the store (30 s). */
  readonly intervalMs?: number;
}

export class SuspensionKeeper {
  readonly #store: LimiterStore;
  readonly #metrics: LimitMetrics;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #intervalMs: number;
  #held = new Map<string, Held>();
  /** Decided while the store was away: written at the next sync. */
  readonly #unwritten = new Map<string, Held>();
  /** The store's marker id when this instance last compared: another id now means lost data. */
  #marker: string | undefined;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #again = false;

  constructor(deps: SuspensionKeeperDeps) {
    this.#store = deps.store;
    this.#metrics = deps.metrics;
    this.#log = deps.log;
    this.#now = deps.now ?? Date.now;
    this.#intervalMs = deps.intervalMs ?? 30_000;
    // A Redis that restarted is seen first as a reconnect: compare at once.
    this.#store.onHealthChange((up) => {
      if (up) void this.sync();
    });
  }

  /** First sync now, then one every interval. */
  start(): Promise<void> {
    if (!this.#timer) {
      this.#timer = setInterval(() => void this.sync(), this.#intervalMs);
      this.#timer.unref();
    }
    return this.sync();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** A suspension this instance just decided; `written` is whether the store took it. */
  remember(user: string, since: number, durationMs: number | null, written: boolean): void {
    const held = { since, expiresAt: durationMs === null || durationMs === 0 ? null : this.#now() + durationMs };
    this.#held.set(user, held);
    if (!written) this.#unwritten.set(user, held);
    this.#metrics.suspendedAccounts.set(this.#held.size);
  }

  /** Cleared by an admin through this instance. */
  forget(users: Iterable<string>): void {
    for (const u of users) {
      this.#held.delete(u);
      this.#unwritten.delete(u);
    }
    this.#metrics.suspendedAccounts.set(this.#held.size);
  }

  /** Compares the copy with the store; one at a time (a call during a sync runs once more after it). Never rejects. */
  sync(): Promise<void> {
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    this.#running = (async () => {
      do {
        this.#again = false;
        await this.#syncOnce();
      } while (this.#again);
    })().finally(() => (this.#running = undefined));
    return this.#running;
  }

  async #syncOnce(): Promise<void> {
    if (!this.#store.up) return;
    try {
      const marker = await this.#store.marker(`${randomUUID()} ${new Date(this.#now()).toISOString()}`);
      // A store that isn't the one this instance last saw lost its data (whoever marked it again).
      const lost = this.#marker !== undefined && marker !== this.#marker;
      const now = this.#now();
      const live = (h: Held) => h.expiresAt === null || h.expiresAt > now;
      let stored = await this.#store.entries('suspension');
      const inStore = new Set(stored.map((e) => e.key));
      // What this instance decided while the store was away, and (after a loss) everything it knew.
      const toWrite = new Map([...this.#unwritten].filter(([u, h]) => live(h) && !inStore.has(u)));
      if (lost) for (const [u, h] of this.#held) if (live(h) && !inStore.has(u)) toWrite.set(u, h);
      for (const [user, h] of toWrite) {
        const written = await this.#store.set(SUSPENSION, user, h.since, h.expiresAt === null ? 0 : h.expiresAt - now);
        if (!written) return; // the store went away again; the next sync retries, still knowing the old marker
      }
      this.#marker = marker;
      this.#unwritten.clear();
      if (toWrite.size > 0) stored = await this.#store.entries('suspension');
      this.#held = new Map(stored.map((e) => [e.key, { since: e.value, expiresAt: e.msBeforeNext < 0 ? null : now + e.msBeforeNext }]));
      this.#metrics.suspendedAccounts.set(this.#held.size);
      const users = [...toWrite.keys()];
      if (lost) {
        this.#metrics.storeResets.inc();
        this.#metrics.suspensionsRestored.inc(users.length);
        this.#log.error(
          { restoredSuspensions: users.length, users: users.slice(0, 50) },
          `limiter store lost its data (Redis restarted empty or was flushed): rate counts and lockouts start over; ${users.length} suspension(s) restored from this instance's copy`,
        );
      } else if (users.length > 0) {
        this.#log.info({ users: users.slice(0, 50) }, `${users.length} suspension(s) decided while the store was away written to it`);
      }
    } catch (err) {
      // The store failed mid-sync (already reported to the backend): the next sync retries.
      this.#log.debug({ err: (err as Error).message }, 'suspension sync interrupted');
    }
  }
}
