/**
 * Periodic health checks of each configured backend: connect, greeting, EHLO, QUIT. The result
 * feeds `smtpgate_backend_up{backend}`, /readyz ("a backend answered recently") and the pool,
 * so a dead backend is skipped before a client's MAIL has to find out.
 */
import { BackendConnection, BackendError, type BackendClientOptions } from './smtp-client.js';
import type { BackendPool } from './backend-pool.js';
import type { BackendTarget } from './backend-session.js';

export interface BackendHealthEvents {
  onResult(target: BackendTarget, up: boolean, detail: string): void;
}

type Connect = (opts: BackendClientOptions) => Promise<BackendConnection>;

export class BackendHealth {
  readonly #pool: BackendPool;
  readonly #events: BackendHealthEvents;
  readonly #connect: Connect;
  readonly #lastUp = new Map<BackendTarget, number>();
  readonly #state = new Map<BackendTarget, boolean>();
  #timer: NodeJS.Timeout | undefined;

  constructor(pool: BackendPool, events: BackendHealthEvents, connect: Connect = (o) => BackendConnection.connect(o)) {
    this.#pool = pool;
    this.#events = events;
    this.#connect = connect;
  }

  /** Checks every backend now, then every `intervalMs`. */
  async start(intervalMs: number): Promise<void> {
    await this.checkAll();
    this.#timer = setInterval(() => void this.checkAll(), intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  async checkAll(): Promise<void> {
    await Promise.all(this.#pool.targets.map((t) => this.#check(t)));
  }

  /** True when some backend answered a health check within `withinMs`. */
  anyUpWithin(withinMs: number, now = Date.now()): boolean {
    for (const at of this.#lastUp.values()) if (now - at <= withinMs) return true;
    return false;
  }

  async #check(target: BackendTarget): Promise<void> {
    let up = false;
    let detail = 'ok';
    try {
      const conn = await this.#connect(target.options);
      await conn.quit();
      up = true;
    } catch (err) {
      detail = err instanceof BackendError ? `${err.kind}: ${err.message}` : String(err);
    }
    if (up) {
      this.#lastUp.set(target, Date.now());
      this.#pool.markUp(target);
    } else {
      this.#pool.markDown(target);
    }
    if (this.#state.get(target) !== up) this.#events.onResult(target, up, detail);
    this.#state.set(target, up);
  }
}
