/**
 * Periodic health checks of each configured backend: connect, greeting, EHLO, QUIT. The result
 * feeds `smtpgate_backend_up{backend}`, /readyz ("a backend answered recently") and the pool,
 * so a dead backend is skipped before a client's MAIL has to find out.
 *
 * Each check also reads the EHLO for the identity command `backend.identity` names (XCLIENT or
 * XFORWARD). A backend that doesn't advertise it (not offered, or smtpgate not authorized:
 * Postfix offers XCLIENT only to smtpd_authorized_xclient_hosts) gets mail with no identity,
 * and judges smtpgate's address instead of the client's: that must not pass unnoticed.
 */
import { BackendConnection, BackendError, type BackendClientOptions } from './smtp-client.js';
import type { BackendPool } from './backend-pool.js';
import type { BackendTarget } from './backend-session.js';

export interface BackendHealthEvents {
  /** The backend came up or went down (called on the first check and on every change). */
  onResult(target: BackendTarget, up: boolean, detail: string): void;
  /** The backend's EHLO started or stopped advertising the identity command (first check included). */
  onIdentity?(target: BackendTarget, advertised: boolean): void;
}

type Connect = (opts: BackendClientOptions) => Promise<BackendConnection>;

export interface BackendHealthOptions {
  /** The EHLO keyword the backend must advertise (from backend.identity); none: not checked. */
  readonly identityCommand?: 'XCLIENT' | 'XFORWARD';
  readonly connect?: Connect;
}

export class BackendHealth {
  readonly #pool: BackendPool;
  readonly #events: BackendHealthEvents;
  readonly #connect: Connect;
  readonly #lastUp = new Map<BackendTarget, number>();
  readonly #state = new Map<BackendTarget, boolean>();
  /** Whether the last successful check saw the identity command advertised. */
  readonly #identity = new Map<BackendTarget, boolean>();
  readonly #identityCommand: 'XCLIENT' | 'XFORWARD' | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(pool: BackendPool, events: BackendHealthEvents, opts: BackendHealthOptions = {}) {
    this.#pool = pool;
    this.#events = events;
    this.#connect = opts.connect ?? ((o) => BackendConnection.connect(o));
    this.#identityCommand = opts.identityCommand;
  }

  /** The EHLO keyword each check looks for, if any. */
  get identityCommand(): 'XCLIENT' | 'XFORWARD' | undefined {
    return this.#identityCommand;
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

  /**
   * The backends that are up but whose last check didn't see the identity command advertised,
   * by name (empty when no identity command is configured). A backend that is down is left to
   * the "answered recently" check.
   */
  withoutIdentity(): string[] {
    return this.#pool.targets.filter((t) => this.#state.get(t) === true && this.#identity.get(t) === false).map((t) => t.name);
  }

  async #check(target: BackendTarget): Promise<void> {
    let up = false;
    let detail = 'ok';
    try {
      const conn = await this.#connect(target.options);
      // The capabilities of the last EHLO (after STARTTLS, when the backend leg uses it).
      const advertised = this.#identityCommand === undefined ? undefined : conn.hasCapability(this.#identityCommand);
      await conn.quit();
      up = true;
      if (advertised !== undefined && this.#identity.get(target) !== advertised) {
        this.#identity.set(target, advertised);
        this.#events.onIdentity?.(target, advertised);
      }
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
