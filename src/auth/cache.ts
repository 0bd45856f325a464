/**
 * `auth.cache`: remembers sign-ins for a while, so that a printer or an app that signs in for
 * every message doesn't cost a bcrypt verification or a directory round trip each time, and so
 * that people who signed in recently keep working while the directory is down.
 *
 * What is remembered (Dovecot's auth_cache convention):
 * - a success for `ttl`, a refusal (wrong password, unknown user, disabled) for `negativeTtl`;
 *   an `unavailable` answer never;
 * - under a key made of the listener, the login and a keyed hash of the password: HMAC-SHA-256
 *   of the login and password, with a random key made when the process starts and never
 *   written anywhere. The password is
 *   never stored, nor a plain hash of it that could be looked up or cracked offline from a
 *   memory dump without the key (the lesson of CVE-2007-6598). A different password is a
 *   different key: a remembered refusal of a mistyped password doesn't refuse the right one.
 * - at most `size` entries, the least recently used dropped first.
 *
 * The same sign-in arriving while it is being checked waits for that check's answer instead of
 * asking the source again, so a burst costs one bcrypt verification or directory round trip.
 *
 * The cache sits behind the brute-force lockout: the session checks the lockout before it asks
 * here, and a remembered refusal is counted as a failure like any other. It is emptied on every
 * reload (SIGHUP, a changed config or users file) and by `smtpgate auth cache clear`.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { AuthCacheConfig } from '../config/auth-section.js';
import type { AuthContext, AuthOutcome, AuthRequest, Authenticator, LookupRequest } from './authenticator.js';
import type { AuthMetrics } from '../metrics/auth-metrics.js';

type Remembered = AuthOutcome & { readonly cached: true };

export interface CacheDeps {
  readonly metrics: Pick<AuthMetrics, 'cacheHits' | 'cacheMisses' | 'cacheEntries'>;
}

export class AuthCache implements Authenticator {
  readonly kind = 'cache';
  readonly inner: Authenticator;
  readonly #config: AuthCacheConfig;
  readonly #metrics: CacheDeps['metrics'];
  /** Made per process and per cache: nothing outside this object can recompute a key. */
  readonly #hmacKey = randomBytes(32);
  readonly #entries: LRUCache<string, Remembered>;
  /** Sign-ins being checked now, by key: the same sign-in arriving meanwhile waits for that answer. */
  readonly #inFlight = new Map<string, Promise<AuthOutcome>>();

  constructor(inner: Authenticator, config: AuthCacheConfig, deps: CacheDeps) {
    this.inner = inner;
    this.#config = config;
    this.#metrics = deps.metrics;
    this.#entries = new LRUCache<string, Remembered>({
      max: config.size,
      // Each entry's own TTL (ttl or negativeTtl); expired ones are dropped when looked at.
      ttlAutopurge: false,
      dispose: () => this.#metrics.cacheEntries.set(this.#entries.size),
    });
  }

  authenticate(req: AuthRequest, ctx: AuthContext): Promise<AuthOutcome> {
    return this.#remembered(this.#keyOf(req), () => this.inner.authenticate(req, ctx));
  }

  /**
   * An account lookup (for an app password) is remembered like a sign-in, under its own key
   * with no password in it: an app password's own checks (secret, network, expiry) are made
   * before, every time, and never cached.
   */
  lookup(req: LookupRequest): Promise<AuthOutcome> {
    const inner = this.inner;
    if (!inner.lookup) return Promise.resolve({ ok: false, reason: 'unknown_user' });
    return this.#remembered(`${req.listener}\0${req.username}\0lookup`, () => inner.lookup!(req));
  }

  async #remembered(key: string, ask: () => Promise<AuthOutcome>): Promise<AuthOutcome> {
    const hit = this.#entries.get(key);
    if (hit) {
      this.#metrics.cacheHits.inc({ outcome: hit.ok ? 'success' : 'failure' });
      return hit;
    }
    this.#metrics.cacheMisses.inc();
    // A burst of the same sign-in (a pool opening its connections) costs one check, not one each.
    const pending = this.#inFlight.get(key);
    if (pending) return pending;
    const asked = this.#ask(key, ask);
    this.#inFlight.set(key, asked);
    try {
      return await asked;
    } finally {
      this.#inFlight.delete(key);
    }
  }

  async #ask(key: string, ask: () => Promise<AuthOutcome>): Promise<AuthOutcome> {
    const outcome = await ask();
    const ttl = outcome.ok ? this.#config.ttl : outcome.reason === 'unavailable' ? 0 : this.#config.negativeTtl;
    if (ttl > 0) {
      this.#entries.set(key, { ...outcome, cached: true }, { ttl });
      this.#metrics.cacheEntries.set(this.#entries.size);
    }
    return outcome;
  }

  /**
   * Forgets every remembered sign-in, or only `user`'s (every password and listener), and
   * says how many entries went.
   */
  clear(user?: string): number {
    const before = this.#entries.size;
    if (user === undefined) this.#entries.clear();
    else for (const key of [...this.#entries.keys()]) if (key.split('\0')[1] === user) this.#entries.delete(key);
    this.#metrics.cacheEntries.set(this.#entries.size);
    return before - this.#entries.size;
  }

  get size(): number {
    return this.#entries.size;
  }

  close(): Promise<void> {
    this.#entries.clear();
    return this.inner.close?.() ?? Promise.resolve();
  }

  /** listener \0 login \0 HMAC(password): the login stays readable so that clear(user) works. */
  #keyOf(req: AuthRequest): string {
    // The login is in the MAC too: two users with one password don't share a MAC.
    const mac = createHmac('sha256', this.#hmacKey).update(`${req.username}\0${req.password}`, 'utf8').digest('base64');
    return `${req.listener}\0${req.username}\0${mac}`;
  }
}
