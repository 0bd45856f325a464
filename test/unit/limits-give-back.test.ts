/**
 * A place given back (an AUTH attempt that turned out right or could not be checked, a message
 * or recipient refused after it was counted) comes off the counter it was counted in, and off
 * nothing else. If that counter is gone by then (its window ended while a slow passthrough
 * backend verified the password, or an admin's `limits clear` removed it), giving back must
 * not start a new counter below zero: each such place would be one more attempt in the next
 * window. An attacker with his own account and `failuresPerIp` places in flight at a window's
 * end doubles his guesses against other users from that address. Memory store and Redis.
 */
import { afterAll, afterEach, describe, expect, test, vi } from 'vitest';
import type { AuthFacts } from '../../src/limits/limits.js';
import { describeWith } from '../helpers/programs.js';
import { dropPrefix, limitsHarness, SHARED_REDIS_URL, uniquePrefix, type LimitsHarness } from '../helpers/redis.js';

const LIMITS = 'connectionRate: off\nconcurrentPerIp: off\nconcurrentPerListener: off\nauth: { failuresPerUserIp: off, failuresPerIp: 2/60s, lockFor: 10m }\n';
let sessions = 0;
const from = (username: string): AuthFacts => ({ session: `g${++sessions}`, ip: '192.0.2.9', listener: 'submission', username });

/** Wrong passwords from the address until one is refused: how many were let through to be verified. */
async function guessesAllowed(h: LimitsHarness): Promise<number> {
  let wrong = 0;
  for (let i = 0; i < 6; i++) {
    const f = from(`victim${i}`);
    const r = await h.limits.authAllowed(f);
    if (r.refusal) break;
    await h.limits.authFailed(f, r.reservation!);
    wrong++;
  }
  return wrong;
}

/** Two attempts hold their places while `meanwhile` removes the counter; then one succeeds and one is abandoned. */
async function placesOutliveTheirCounter(h: LimitsHarness, meanwhile: () => Promise<unknown>): Promise<void> {
  const mine = from('mallory');
  const a = await h.limits.authAllowed(mine);
  const b = await h.limits.authAllowed(from('mallory'));
  expect(a.refusal ?? b.refusal).toBeUndefined();
  await meanwhile();
  expect(await h.limits.authSucceeded(mine, a.reservation!)).toBeUndefined();
  await h.limits.authAbandoned(b.reservation!);
}

function behaviours(open: () => Promise<LimitsHarness>): void {
  test('an admin clear while attempts are in flight: the address still gets exactly failuresPerIp guesses', async () => {
    const h = await open();
    await placesOutliveTheirCounter(h, () => h.limits.clear('192.0.2.9'));
    expect(await guessesAllowed(h)).toBe(2);
    expect((await h.limits.listState()).lockedIps).toMatchObject([{ ip: '192.0.2.9', failures: 2 }]);
  });

  test('a place given back to a live counter still comes off it', async () => {
    const h = await open();
    await placesOutliveTheirCounter(h, async () => undefined);
    expect(await guessesAllowed(h)).toBe(2);
  });
}

describe('memory store', () => {
  let open: LimitsHarness[] = [];
  afterEach(async () => {
    vi.useRealTimers();
    await Promise.all(open.map((h) => h.close()));
    open = [];
  });
  const make = async () => {
    const h = limitsHarness(LIMITS);
    open.push(h);
    return h;
  };
  behaviours(make);

  test('the window ends while attempts are in flight: the next window gets exactly failuresPerIp guesses', async () => {
    // Only Date is faked: the memory store compares expiry times with Date.now().
    vi.useFakeTimers({ toFake: ['Date'] });
    const h = await make();
    await placesOutliveTheirCounter(h, async () => vi.setSystemTime(Date.now() + 61_000));
    expect(await guessesAllowed(h)).toBe(2);
  });
});

describeWith(['redis-server'], 'Redis store', () => {
  const prefix = uniquePrefix('give-back');
  let open: LimitsHarness[] = [];
  let n = 0;
  afterEach(async () => {
    await Promise.all(open.map((h) => h.close()));
    open = [];
  });
  afterAll(() => dropPrefix(SHARED_REDIS_URL, prefix));
  behaviours(async () => {
    const h = limitsHarness(`store: { kind: redis, url: "${SHARED_REDIS_URL}", keyPrefix: "${prefix}-${++n}" }\n${LIMITS}`);
    open.push(h);
    expect(await h.limits.start(2000)).toBe(true);
    return h;
  });
});
