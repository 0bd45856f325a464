/**
 * `auth.backend: [file, ldap, …]`: the sources tried in order, for one answer.
 *
 * Which answer is final:
 * - a source that signs the user in ends the chain (success);
 * - a source that knows the user and refuses (wrong password, disabled account) ends the chain:
 *   a user's password is checked by the first source that has them, never by a later one;
 * - a source that doesn't know the user (`unknown_user`) passes to the next;
 * - a source that can't answer (`unavailable`: down, timed out) passes to the next too, and if
 *   no later source signs the user in or refuses them, the client gets 454 4.7.0 (try again
 *   later), not 535: the source that was down may well have known them. (Dovecot's passdb
 *   chain answers the same way.)
 *
 * The chain also times each source (smtpgate_auth_source_seconds), counts its errors, and
 * keeps each source's health for /readyz and smtpgate_auth_source_up: a source is down from an
 * `unavailable` answer until its next definite answer, or until a background check (its
 * `probe()`, every few seconds while it is down) reaches it again.
 */
import type { Logger } from '../logging/logger.js';
import type { AuthContext, AuthOutcome, AuthRequest, Authenticator, LookupRequest } from './authenticator.js';
import type { AuthMetrics } from '../metrics/auth-metrics.js';

/** How often a source that is down is checked again, while it is down. */
export const RECHECK_INTERVAL_MS = 5_000;

interface Health {
  up: boolean;
  /** Why it is down: the last error's detail. */
  detail?: string;
  recheck?: NodeJS.Timeout;
}

export interface ChainDeps {
  readonly metrics: Pick<AuthMetrics, 'sourceSeconds' | 'sourceErrors' | 'sourceUp'>;
  readonly log: Logger;
  readonly recheckIntervalMs?: number;
}

export class AuthChain implements Authenticator {
  readonly kind = 'chain';
  readonly sources: readonly Authenticator[];
  readonly #health = new Map<Authenticator, Health>();
  readonly #deps: ChainDeps;
  #closed = false;

  constructor(sources: readonly Authenticator[], deps: ChainDeps) {
    if (sources.length === 0) throw new Error('an auth chain needs at least one source');
    this.sources = sources;
    this.#deps = deps;
    for (const s of sources) this.#health.set(s, { up: true });
  }

  authenticate(req: AuthRequest, ctx: AuthContext): Promise<AuthOutcome> {
    return this.#first(req.sessionId, (source) => source.authenticate(req, ctx));
  }

  /**
   * The user's account, by the same rule: the first source that knows the user decides. A
   * source that can't look users up (passthrough) counts as not knowing them.
   */
  lookup(req: LookupRequest): Promise<AuthOutcome> {
    return this.#first(req.sessionId, (source) =>
      source.lookup ? source.lookup(req) : Promise.resolve({ ok: false, reason: 'unknown_user', detail: `${source.kind} cannot look a user up without their password` }),
    );
  }

  async #first(sessionId: string, ask: (source: Authenticator) => Promise<AuthOutcome>): Promise<AuthOutcome> {
    let unavailable: AuthOutcome | undefined;
    let unknown: AuthOutcome | undefined;
    for (const source of this.sources) {
      const outcome = await this.#ask(source, sessionId, ask);
      if (outcome.ok || outcome.reason === 'bad_credentials' || outcome.reason === 'disabled') return outcome;
      if (outcome.reason === 'unavailable') unavailable ??= outcome;
      else if (outcome.detail) unknown ??= outcome;
    }
    return unavailable ?? unknown ?? { ok: false, reason: 'unknown_user' };
  }

  /**
   * The sources that are down now, each with why ("ldap: ldaps://dc1:636: connect ETIMEDOUT").
   * /readyz reports them when no source is up, since then nobody can sign in.
   */
  down(): { source: string; detail: string }[] {
    return this.sources.filter((s) => !this.#health.get(s)!.up).map((s) => ({ source: s.kind, detail: this.#health.get(s)!.detail ?? 'unreachable' }));
  }

  /** Checks each source that can be checked once, in the background (at start). */
  checkAll(): void {
    for (const s of this.sources) if (s.probe) void this.#recheck(s);
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const h of this.#health.values()) clearTimeout(h.recheck);
    await Promise.allSettled(this.sources.map((s) => s.close?.()));
  }

  async #ask(source: Authenticator, sessionId: string, ask: (source: Authenticator) => Promise<AuthOutcome>): Promise<AuthOutcome> {
    const { metrics, log } = this.#deps;
    const started = performance.now();
    let outcome: AuthOutcome;
    try {
      outcome = await ask(source);
    } catch (err) {
      // A source's contract is to answer `unavailable`; a throw is a bug, logged in full.
      log.error({ err, source: source.kind, session: sessionId }, 'auth source failed');
      outcome = { ok: false, reason: 'unavailable', detail: (err as Error).message };
    }
    metrics.sourceSeconds.observe({ source: source.kind, result: outcome.ok ? 'success' : outcome.reason }, (performance.now() - started) / 1000);
    if (!outcome.ok && outcome.reason === 'unavailable') {
      metrics.sourceErrors.inc({ source: source.kind });
      this.#markDown(source, outcome.detail);
    } else {
      this.#markUp(source);
    }
    return outcome.source ? outcome : { ...outcome, source: source.kind };
  }

  #markDown(source: Authenticator, detail: string | undefined): void {
    const h = this.#health.get(source)!;
    h.detail = detail ?? 'unreachable';
    if (!h.up) return;
    h.up = false;
    this.#deps.metrics.sourceUp.set({ source: source.kind }, 0);
    this.#deps.log.warn({ source: source.kind, detail: h.detail }, 'auth source down');
    this.#scheduleRecheck(source);
  }

  #markUp(source: Authenticator): void {
    const h = this.#health.get(source)!;
    clearTimeout(h.recheck);
    h.recheck = undefined;
    if (h.up) return;
    h.up = true;
    h.detail = undefined;
    this.#deps.metrics.sourceUp.set({ source: source.kind }, 1);
    this.#deps.log.info({ source: source.kind }, 'auth source up again');
  }

  #scheduleRecheck(source: Authenticator): void {
    const h = this.#health.get(source)!;
    if (!source.probe || this.#closed || h.recheck) return;
    h.recheck = setTimeout(() => {
      h.recheck = undefined;
      void this.#recheck(source);
    }, this.#deps.recheckIntervalMs ?? RECHECK_INTERVAL_MS);
    h.recheck.unref();
  }

  async #recheck(source: Authenticator): Promise<void> {
    try {
      await source.probe!();
      if (!this.#closed) this.#markUp(source);
    } catch (err) {
      if (this.#closed) return;
      const h = this.#health.get(source)!;
      if (h.up) this.#markDown(source, (err as Error).message);
      else {
        h.detail = (err as Error).message;
        this.#scheduleRecheck(source);
      }
    }
  }
}
