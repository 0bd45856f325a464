/**
 * LimiterStore's `expire`, which starts an AUTH lockout: the counter gets its new expiry and
 * keeps its value, whatever is counted at the same moment. The memory store does it through a
 * seam into rate-limiter-flexible's private MemoryStorage: these tests pin that seam against
 * what the library's public get() reports, so a library upgrade that moves it fails here.
 */
import { afterAll, afterEach, describe, expect, test, vi } from 'vitest';
import { LimiterStore, MemoryBackend, type LimiterSpec, type StoreBackend } from '../../src/limits/limiter-store.js';
import { createRedisClient, RedisBackend } from '../../src/limits/redis-store.js';
import { limitsConfigSchema } from '../../src/limits/config.js';
import { describeWith } from '../helpers/programs.js';
import { dropPrefix, SHARED_REDIS_URL, uniquePrefix } from '../helpers/redis.js';

const SPEC: LimiterSpec = { name: 'auth_ip', points: 3, windowMs: 900_000 };

function storeOn(backend: StoreBackend, keyPrefix: string): LimiterStore {
  return new LimiterStore({ backend, onFailure: 'deny', keyPrefix });
}

function behaviours(make: () => Promise<LimiterStore>): void {
  let store: LimiterStore | undefined;
  afterEach(async () => {
    await store?.close();
    store = undefined;
  });

  test('expire gives a counter its new lifetime and keeps its value', async () => {
    store = await make();
    for (let i = 0; i < 5; i++) await store.consume(SPEC, '192.0.2.1');
    await store.expire(SPEC, '192.0.2.1', 120_000, 'store');
    const r = await store.get(SPEC, '192.0.2.1');
    expect(r).toMatchObject({ kind: 'found', value: 5 });
    expect(r.kind === 'found' && r.msBeforeNext).toBeGreaterThan(115_000);
    expect(r.kind === 'found' && r.msBeforeNext).toBeLessThanOrEqual(120_000);
  });

  test('counts made at the same moment as expire are all kept', async () => {
    store = await make();
    const s = store;
    for (let i = 0; i < 3; i++) await s.consume(SPEC, '192.0.2.2');
    await Promise.all([
      ...Array.from({ length: 10 }, () => s.consume(SPEC, '192.0.2.2')),
      s.expire(SPEC, '192.0.2.2', 600_000, 'store'),
      ...Array.from({ length: 10 }, () => s.consume(SPEC, '192.0.2.2')),
    ]);
    expect(await s.get(SPEC, '192.0.2.2')).toMatchObject({ kind: 'found', value: 23 });
  });

  test('expire of a counter that is not there creates nothing', async () => {
    store = await make();
    await store.expire(SPEC, '192.0.2.3', 600_000, 'store');
    expect(await store.get(SPEC, '192.0.2.3')).toMatchObject({ kind: 'none' });
  });

  test('a count is within the limit up to spec.points and over it after, whatever limit the same key was counted against before', async () => {
    store = await make();
    const r = [];
    for (let i = 0; i < 4; i++) r.push((await store.consume(SPEC, '192.0.2.4')).kind);
    expect(r).toEqual(['allowed', 'allowed', 'allowed', 'limited']);
    expect((await store.consume({ ...SPEC, points: 10 }, '192.0.2.4')).kind).toBe('allowed');
    expect((await store.consume({ ...SPEC, points: 2 }, '192.0.2.4')).kind).toBe('limited');
  });
}

describe('memory store', () => {
  afterEach(() => vi.useRealTimers());
  behaviours(async () => storeOn(new MemoryBackend(), 'mem'));

  test('the memory counter goes when its new lifetime ends, not at its old one', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'setTimeout', 'clearTimeout'] });
    const store = storeOn(new MemoryBackend(), 'mem');
    await store.consume(SPEC, '192.0.2.5');
    await store.expire(SPEC, '192.0.2.5', 1_800_000, 'store');
    vi.advanceTimersByTime(900_000 + 1_000);
    expect(await store.get(SPEC, '192.0.2.5')).toMatchObject({ kind: 'found', value: 1 });
    vi.advanceTimersByTime(900_000);
    expect(await store.get(SPEC, '192.0.2.5')).toMatchObject({ kind: 'none' });
    await store.close();
  });
});

describeWith(['redis-server'], 'Redis store', () => {
  const prefix = uniquePrefix('store-expire');
  let n = 0;
  afterAll(() => dropPrefix(SHARED_REDIS_URL, prefix));
  behaviours(async () => {
    const config = limitsConfigSchema.parse({ store: { kind: 'redis', url: SHARED_REDIS_URL, keyPrefix: `${prefix}-${++n}` } });
    const backend = new RedisBackend(createRedisClient(config.store));
    expect(await backend.ready(2000)).toBe(true);
    return storeOn(backend, `${prefix}-${n}`);
  });
});
