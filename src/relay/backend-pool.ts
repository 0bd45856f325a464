/**
 * Which backend to try, and in what order. A backend that refused the connection or timed out
 * is marked down for a while and skipped; when every backend is down they are all tried
 * anyway, since a guess beats a certain refusal.
 *
 * Failing over only ever happens while opening a session, before any command of the client's
 * transaction has been sent, so a message can never reach two backends.
 */
import type { BackendClientOptions } from './smtp-client.js';

/** One configured backend. Defined here, not in backend-session.ts, which imports the pool. */
export interface BackendTarget {
  /** Label for logs and metrics: "host:port" from the config. */
  readonly name: string;
  readonly options: BackendClientOptions;
}

export type Strategy = 'failover' | 'round-robin';

export class BackendPool {
  readonly targets: readonly BackendTarget[];
  readonly #strategy: Strategy;
  readonly #markDownMs: number;
  readonly #now: () => number;
  readonly #downUntil = new Map<BackendTarget, number>();
  #next = 0;

  constructor(targets: readonly BackendTarget[], strategy: Strategy, markDownMs: number, now: () => number = Date.now) {
    if (targets.length === 0) throw new Error('a backend pool needs at least one backend');
    this.targets = targets;
    this.#strategy = strategy;
    this.#markDownMs = markDownMs;
    this.#now = now;
  }

  /** The backends to try for one new session, best first. */
  candidates(): BackendTarget[] {
    let ordered = [...this.targets];
    if (this.#strategy === 'round-robin') {
      const start = this.#next++ % ordered.length;
      ordered = [...ordered.slice(start), ...ordered.slice(0, start)];
    }
    const up = ordered.filter((t) => this.isUp(t));
    const down = ordered.filter((t) => !this.isUp(t));
    return [...up, ...down];
  }

  isUp(target: BackendTarget): boolean {
    const until = this.#downUntil.get(target);
    if (until === undefined) return true;
    if (until <= this.#now()) {
      this.#downUntil.delete(target);
      return true;
    }
    return false;
  }

  markDown(target: BackendTarget): void {
    this.#downUntil.set(target, this.#now() + this.#markDownMs);
  }

  markUp(target: BackendTarget): void {
    this.#downUntil.delete(target);
  }
}
