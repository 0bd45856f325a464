/**
 * `AuthCache` (src/auth/cache.ts) as a specification: what it remembers and for how long,
 * what makes two sign-ins the same entry, its LRU bound, clearing, its metrics, and that what it
 * stores can't give the password back.
 *
 * Time: lru-cache reads the clock from the `performance` object it found when it was loaded
 * (`performance.now()`) and debounces that read for 1 ms with a `setTimeout`. vitest's fake
 * timers replace `globalThis.performance` with a new object, which lru-cache never looks at,
 * so the test clock stubs `now` on the real object and fakes `setTimeout` for the debounce.
 * The first test pins that seam down on a bare LRUCache, so a change in lru-cache shows there.
 */
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, test, vi } from 'vitest';
import type { AuthContext, AuthOutcome, AuthRequest, Authenticator } from '../../src/auth/authenticator.js';
import { AuthCache } from '../../src/auth/cache.js';
import type { AuthCacheConfig } from '../../src/config/auth-section.js';
import { createAuthMetrics } from '../../src/metrics/auth-metrics.js';

/** The cache hands the context to its inner source untouched; this one never looks at it. */
const CTX = {} as AuthContext;

function req(username: string, password: string, listener = 'submission'): AuthRequest {
  return { username, password, mechanism: 'PLAIN', sessionId: 's1', remoteAddress: '192.0.2.7', listener, tls: undefined };
}

/** The source behind the cache: a few users, and a switch that makes it unreachable. */
class Directory implements Authenticator {
  readonly kind = 'ldap';
  calls = 0;
  down = false;
  closed = false;
  readonly users = new Map<string, string>([
    ['alice', 'alice-pw'],
    ['bob', 'bob-pw'],
    ['carol', 'carol-pw'],
    ['dave', 'dave-pw'],
  ]);

  async authenticate(r: AuthRequest): Promise<AuthOutcome> {
    this.calls++;
    if (this.down) return { ok: false, reason: 'unavailable', source: 'ldap', detail: 'ldaps://dc1:636: connect ETIMEDOUT' };
    const password = this.users.get(r.username);
    if (password === undefined) return { ok: false, reason: 'unknown_user', source: 'ldap' };
    return password === r.password ? { ok: true, user: { username: r.username }, source: 'ldap' } : { ok: false, reason: 'bad_credentials', source: 'ldap' };
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

const MINUTE = 60_000;
const CONFIG: AuthCacheConfig = { ttl: 10 * MINUTE, negativeTtl: 30_000, size: 100 };

function cacheOf(config: Partial<AuthCacheConfig> = {}) {
  const registry = new Registry();
  const inner = new Directory();
  const cache = new AuthCache(inner, { ...CONFIG, ...config }, { metrics: createAuthMetrics(registry) });
  /** Asks the cache and says whether the source behind it was asked (a miss) or not (a hit). */
  const signIn = async (r: AuthRequest): Promise<AuthOutcome & { fromSource: boolean }> => {
    const before = inner.calls;
    const outcome = await cache.authenticate(r, CTX);
    return { ...outcome, fromSource: inner.calls > before };
  };
  return { cache, inner, registry, signIn };
}

/** See the top of the file: moves performance.now() and fires lru-cache's 1 ms debounce. */
function testClock() {
  let now = 1_000_000; // not 0: lru-cache takes a start time of 0 as "no TTL"
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
  vi.spyOn(performance, 'now').mockImplementation(() => now);
  return {
    advance(ms: number) {
      now += ms;
      vi.advanceTimersByTime(ms);
    },
  };
}

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

async function sample(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const values = (await registry.getSingleMetric(name)!.get()).values;
  return values.find((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))?.value;
}

test('the test clock moves lru-cache: an entry with a 1 s TTL is there at 1 s and gone at 1 s + 1 ms (the seam the TTL tests rely on)', () => {
  const clock = testClock();
  const lru = new LRUCache<string, string>({ max: 10 });
  lru.set('k', 'v', { ttl: 1_000 });
  clock.advance(1_000);
  expect(lru.get('k')).toBe('v');
  clock.advance(1);
  expect(lru.get('k')).toBeUndefined();
});

describe('what is remembered', () => {
  test('a successful sign-in is answered from the cache the second time, marked cached, with the source that answered first', async () => {
    const { signIn } = cacheOf();
    const first = await signIn(req('alice', 'alice-pw'));
    expect(first).toEqual({ ok: true, user: { username: 'alice' }, source: 'ldap', fromSource: true });
    const second = await signIn(req('alice', 'alice-pw'));
    expect(second).toEqual({ ok: true, user: { username: 'alice' }, source: 'ldap', cached: true, fromSource: false });
  });

  test.each([
    ['a wrong password', 'alice', 'wrong', 'bad_credentials'],
    ['an unknown user', 'mallory', 'anything', 'unknown_user'],
  ])('a refusal (%s) is remembered too, and marked cached', async (_what, user, password, reason) => {
    const { signIn } = cacheOf();
    expect(await signIn(req(user, password))).toMatchObject({ ok: false, reason, fromSource: true });
    expect(await signIn(req(user, password))).toEqual({ ok: false, reason, source: 'ldap', cached: true, fromSource: false });
  });

  test('an unavailable answer is never remembered: the next sign-in asks the source again, and its success is then remembered', async () => {
    const { cache, inner, signIn } = cacheOf();
    inner.down = true;
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ ok: false, reason: 'unavailable', fromSource: true });
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ ok: false, reason: 'unavailable', fromSource: true });
    expect(cache.size).toBe(0);
    inner.down = false;
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ ok: true, fromSource: true });
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ ok: true, fromSource: false });
  });

  test('a remembered sign-in keeps working while the source is down', async () => {
    const { inner, signIn } = cacheOf();
    await signIn(req('alice', 'alice-pw'));
    inner.down = true;
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ ok: true, cached: true, fromSource: false });
  });

  test('ttl 0 remembers no success; negativeTtl 0 remembers no refusal', async () => {
    const noSuccess = cacheOf({ ttl: 0 });
    await noSuccess.signIn(req('alice', 'alice-pw'));
    expect(await noSuccess.signIn(req('alice', 'alice-pw'))).toMatchObject({ ok: true, fromSource: true });
    await noSuccess.signIn(req('alice', 'wrong'));
    expect(await noSuccess.signIn(req('alice', 'wrong'))).toMatchObject({ ok: false, fromSource: false });

    const noRefusal = cacheOf({ negativeTtl: 0 });
    await noRefusal.signIn(req('alice', 'wrong'));
    expect(await noRefusal.signIn(req('alice', 'wrong'))).toMatchObject({ ok: false, fromSource: true });
    expect(noRefusal.cache.size).toBe(0);
  });
});

describe('a burst of the same sign-in', () => {
  test('sign-ins arriving while the same one is checked wait for that answer: one check for the burst, each caller gets it', async () => {
    const { cache, inner } = cacheOf();
    const burst = await Promise.all(Array.from({ length: 10 }, () => cache.authenticate(req('alice', 'alice-pw'), CTX)));
    expect(inner.calls).toBe(1);
    expect(burst.every((o) => o.ok)).toBe(true);
    // A wrong password in the same burst is another sign-in: checked on its own.
    const mixed = await Promise.all([cache.authenticate(req('bob', 'bob-pw'), CTX), cache.authenticate(req('bob', 'wrong'), CTX), cache.authenticate(req('bob', 'bob-pw'), CTX)]);
    expect(mixed.map((o) => o.ok)).toEqual([true, false, true]);
    expect(inner.calls).toBe(3);
  });

  test('an unavailable answer is shared by the burst that waited for it, and the next sign-in asks again', async () => {
    const { cache, inner } = cacheOf();
    inner.down = true;
    const burst = await Promise.all(Array.from({ length: 5 }, () => cache.authenticate(req('alice', 'alice-pw'), CTX)));
    expect(burst.map((o) => (o.ok ? 'ok' : o.reason))).toEqual(Array(5).fill('unavailable'));
    expect(inner.calls).toBe(1);
    inner.down = false;
    expect((await cache.authenticate(req('alice', 'alice-pw'), CTX)).ok).toBe(true);
    expect(inner.calls).toBe(2);
  });
});

describe('how long', () => {
  test('a success is remembered for ttl, then the source is asked again', async () => {
    const clock = testClock();
    const { signIn } = cacheOf();
    await signIn(req('alice', 'alice-pw'));
    clock.advance(10 * MINUTE);
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ fromSource: false });
    clock.advance(1);
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ ok: true, fromSource: true });
  });

  test('a refusal is remembered for negativeTtl only, not for ttl', async () => {
    const clock = testClock();
    const { inner, signIn } = cacheOf();
    await signIn(req('alice', 'new-pw'));
    clock.advance(30_000);
    expect(await signIn(req('alice', 'new-pw'))).toMatchObject({ ok: false, fromSource: false });
    // Meanwhile the password was changed in the directory: once the refusal is forgotten, it works.
    inner.users.set('alice', 'new-pw');
    clock.advance(1);
    expect(await signIn(req('alice', 'new-pw'))).toMatchObject({ ok: true, fromSource: true });
  });

  test('a hit does not extend an entry: it is asked again ttl after it was stored, however often it was used', async () => {
    const clock = testClock();
    const { signIn } = cacheOf();
    await signIn(req('alice', 'alice-pw'));
    for (let i = 0; i < 10; i++) {
      clock.advance(MINUTE);
      expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ fromSource: false });
    }
    clock.advance(1);
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ fromSource: true });
  });
});

describe('what makes two sign-ins the same entry', () => {
  test('a different password is a different entry: a remembered refusal of a mistyped password does not refuse the right one', async () => {
    const { signIn } = cacheOf();
    expect(await signIn(req('alice', 'alice-pq'))).toMatchObject({ ok: false, reason: 'bad_credentials' });
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ ok: true, fromSource: true });
    // …and a remembered success does not sign in a wrong password.
    expect(await signIn(req('alice', 'alice-px'))).toMatchObject({ ok: false, reason: 'bad_credentials', fromSource: true });
  });

  test("the same password for two users is two entries: one user's remembered success is not the other's", async () => {
    const { inner, signIn } = cacheOf();
    inner.users.set('bob', 'shared-pw');
    inner.users.set('carol', 'shared-pw');
    expect(await signIn(req('bob', 'shared-pw'))).toMatchObject({ ok: true, user: { username: 'bob' } });
    expect(await signIn(req('carol', 'shared-pw'))).toMatchObject({ ok: true, user: { username: 'carol' }, fromSource: true });
    expect(await signIn(req('bob', 'shared-pw'))).toMatchObject({ user: { username: 'bob' }, fromSource: false });
  });

  test('the listener is part of the entry: a sign-in remembered on one listener is checked again on another', async () => {
    const { signIn } = cacheOf();
    await signIn(req('alice', 'alice-pw', 'submission'));
    expect(await signIn(req('alice', 'alice-pw', 'smtps'))).toMatchObject({ ok: true, fromSource: true });
    expect(await signIn(req('alice', 'alice-pw', 'submission'))).toMatchObject({ fromSource: false });
  });

  test('the login is matched exactly: another spelling of it is another entry', async () => {
    const { signIn } = cacheOf();
    await signIn(req('alice', 'alice-pw'));
    expect(await signIn(req('Alice', 'alice-pw'))).toMatchObject({ ok: false, reason: 'unknown_user', fromSource: true });
  });
});

describe('size and clearing', () => {
  test('at most `size` entries: with size 3, a fourth sign-in drops the least recently used one', async () => {
    const { cache, signIn } = cacheOf({ size: 3 });
    await signIn(req('alice', 'alice-pw'));
    await signIn(req('bob', 'bob-pw'));
    await signIn(req('carol', 'carol-pw'));
    // alice is used again, so bob is now the least recently used.
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ fromSource: false });
    await signIn(req('dave', 'dave-pw'));
    expect(cache.size).toBe(3);
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ fromSource: false });
    expect(await signIn(req('dave', 'dave-pw'))).toMatchObject({ fromSource: false });
    expect(await signIn(req('bob', 'bob-pw'))).toMatchObject({ fromSource: true });
  });

  test('clear() forgets everything and says how many entries went', async () => {
    const { cache, signIn } = cacheOf();
    await signIn(req('alice', 'alice-pw'));
    await signIn(req('bob', 'wrong'));
    expect(cache.clear()).toBe(2);
    expect(cache.size).toBe(0);
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ fromSource: true });
  });

  test("clear(user) forgets that user's entries on every listener and with every password, and nobody else's", async () => {
    const { cache, signIn } = cacheOf();
    await signIn(req('alice', 'alice-pw', 'submission'));
    await signIn(req('alice', 'alice-pw', 'smtps'));
    await signIn(req('alice', 'wrong'));
    await signIn(req('bob', 'bob-pw'));
    // A user whose login starts like alice's is not alice.
    await signIn(req('alice2', 'x'));
    expect(cache.clear('alice')).toBe(3);
    expect(cache.size).toBe(2);
    expect(await signIn(req('alice', 'alice-pw'))).toMatchObject({ fromSource: true });
    expect(await signIn(req('bob', 'bob-pw'))).toMatchObject({ fromSource: false });
    expect(cache.clear('nobody')).toBe(0);
  });

  test('close() forgets everything and closes the source behind it', async () => {
    const { cache, inner, signIn } = cacheOf();
    await signIn(req('alice', 'alice-pw'));
    await cache.close();
    expect(cache.size).toBe(0);
    expect(inner.closed).toBe(true);
  });
});

describe('what is stored cannot give the password back', () => {
  /** Every key and value the cache hands to lru-cache, seen through LRUCache's public set(). */
  function recordStores(): { key: string; value: unknown }[] {
    const stored: { key: string; value: unknown }[] = [];
    const set = LRUCache.prototype.set;
    vi.spyOn(LRUCache.prototype, 'set').mockImplementation(function (this: LRUCache<string, object>, key, value, options) {
      stored.push({ key: key as string, value });
      return set.call(this, key, value, options);
    });
    return stored;
  }

  test('the key is listener, login and a 256-bit MAC; neither it nor the value holds the password, nor a plain SHA-256 of it', async () => {
    const stored = recordStores();
    const { signIn } = cacheOf();
    const password = 'alice-pw';
    await signIn(req('alice', password));
    await signIn(req('alice', 'wrong'));
    expect(stored).toHaveLength(2);
    const digests = (input: string) => {
      const d = createHash('sha256').update(input).digest();
      return [d.toString('hex'), d.toString('base64'), d.toString('base64url')];
    };
    for (const { key, value } of stored) {
      const [listener, login, mac, ...rest] = key.split('\0');
      expect([listener, login, rest]).toEqual(['submission', 'alice', []]);
      expect(Buffer.from(mac!, 'base64')).toHaveLength(32);
      const text = key + JSON.stringify(value);
      for (const secret of ['alice-pw', 'wrong', ...digests('alice-pw'), ...digests('wrong'), ...digests('alice\0alice-pw'), ...digests('alice\0wrong')]) {
        expect(text).not.toContain(secret);
      }
    }
  });

  test('the MAC is keyed per cache: two caches store the same sign-in under different keys, and the same one under the same key', async () => {
    const stored = recordStores();
    const one = cacheOf();
    const two = cacheOf();
    await one.signIn(req('alice', 'alice-pw'));
    await two.signIn(req('alice', 'alice-pw'));
    one.cache.clear();
    await one.signIn(req('alice', 'alice-pw'));
    const keys = stored.map((s) => s.key);
    expect(keys[0]).not.toBe(keys[1]);
    expect(keys[2]).toBe(keys[0]);
  });
});

describe('metrics', () => {
  test('hits by outcome, misses, and the entries held, which follow sets, evictions and clears', async () => {
    const { cache, registry, signIn } = cacheOf({ size: 2 });
    const hits = (outcome: string) => sample(registry, 'smtpgate_auth_cache_hits_total', { outcome });
    const misses = () => sample(registry, 'smtpgate_auth_cache_misses_total');
    const entries = () => sample(registry, 'smtpgate_auth_cache_entries');

    await signIn(req('alice', 'alice-pw'));
    await signIn(req('alice', 'alice-pw'));
    await signIn(req('alice', 'alice-pw'));
    await signIn(req('bob', 'wrong'));
    await signIn(req('bob', 'wrong'));
    expect(await hits('success')).toBe(2);
    expect(await hits('failure')).toBe(1);
    expect(await misses()).toBe(2);
    expect(await entries()).toBe(2);

    await signIn(req('carol', 'carol-pw')); // evicts alice's (size 2)
    expect(await entries()).toBe(2);
    cache.clear('bob');
    expect(await entries()).toBe(1);
    cache.clear();
    expect(await entries()).toBe(0);
  });

  test('an unavailable answer is a miss and adds no entry', async () => {
    const { inner, registry, signIn } = cacheOf();
    inner.down = true;
    await signIn(req('alice', 'alice-pw'));
    expect(await sample(registry, 'smtpgate_auth_cache_misses_total')).toBe(1);
    expect(await sample(registry, 'smtpgate_auth_cache_entries')).toBe(0);
  });
});
