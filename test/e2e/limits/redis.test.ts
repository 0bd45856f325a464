/**
 * Limits shared through Redis: several smtpgate instances (here two `Limits` in one process,
 * each with its own ioredis connection) count in the same keys, so a quota of N is N in total,
 * and a lockout or suspension made on one instance holds on all of them.
 *
 * Uses the shared Redis on 127.0.0.1:6379 under a key prefix unique to this run.
 */
import { afterAll, afterEach, beforeAll, expect, test } from 'vitest';
import { Redis } from 'ioredis';
import type { ClientFacts, SuspensionEvent } from '../../../src/limits/limits.js';
import { describeWith } from '../../helpers/programs.js';
import { dropPrefix, failedLogin, limitsHarness, SHARED_REDIS_URL, succeededLogin, uniquePrefix, type LimitsHarness } from '../../helpers/redis.js';

describeWith(['redis-server'], 'limits shared through Redis', () => {
  const prefix = uniquePrefix('shared');
  const open: LimitsHarness[] = [];

  beforeAll(async () => {
    const r = new Redis(SHARED_REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 1000, retryStrategy: () => null });
    try {
      await r.connect();
      await r.ping();
    } catch (err) {
      throw new Error(`these tests need Redis at ${SHARED_REDIS_URL} (.ci/run starts one): ${(err as Error).message}`);
    } finally {
      r.disconnect();
    }
  });

  afterEach(async () => {
    await Promise.all(open.splice(0).map((h) => h.close()));
  });

  afterAll(async () => {
    await dropPrefix(SHARED_REDIS_URL, prefix);
  });

  /** One smtpgate instance's limits; `tag` keeps each test's keys apart. */
  async function instance(tag: string, yaml: string, opts: { now?: () => number } = {}): Promise<LimitsHarness> {
    const h = limitsHarness(`store: { kind: redis, url: "${SHARED_REDIS_URL}", keyPrefix: "${prefix}-${tag}" }\nconnectionRate: off\n${yaml}`, opts);
    open.push(h);
    expect(await h.limits.start(2000)).toBe(true);
    return h;
  }

  let n = 0;
  const facts = (ip: string, extra: Partial<ClientFacts> = {}): ClientFacts => ({ session: `r${++n}`, ip, listener: 'submission', ...extra });

  test('two instances admit exactly N messages in total for a per-user limit of N', async () => {
    const a = await instance('quota', 'messagesPerUser: 25/1h');
    const b = await instance('quota', 'messagesPerUser: 25/1h');
    expect(await a.metric('smtpgate_limiter_store_up')).toBe(1);
    // 40 attempts on each instance, all in flight at once.
    const attempts = [a, b].flatMap((h) => Array.from({ length: 40 }, () => h.limits.mailFrom({ ...facts('192.0.2.1', { user: 'alice' }), sender: 'alice@example.com' })));
    const results = await Promise.all(attempts);
    expect(results.filter((r) => r === undefined)).toHaveLength(25);
    expect(results.filter((r) => r?.code === 451 && r.enhanced === '4.7.1')).toHaveLength(55);
    expect(await a.metric('smtpgate_limiter_decisions_total', { limiter: 'messages_user', result: 'store_error' })).toBe(0);
  });

  test('an AUTH lockout made through one instance holds on the other', async () => {
    const a = await instance('lock', 'auth: { failuresPerUserIp: 3/15m, lockFor: 5m }');
    const b = await instance('lock', 'auth: { failuresPerUserIp: 3/15m, lockFor: 5m }');
    const who = { ...facts('198.51.100.4'), username: 'alice' };
    await failedLogin(a.limits, who);
    await failedLogin(b.limits, who);
    expect(await failedLogin(a.limits, who)).toMatchObject({ lockedOut: true });
    const r = (await b.limits.authAllowed({ ...who, session: 'other' })).refusal;
    expect(r).toMatchObject({ code: 454, enhanced: '4.7.0', reason: 'locked_out' });
    expect(r!.text).toMatch(/try again in (29\d|300) seconds/);
    // Exactly one instance saw the count reach the limit: one lockout, one log line.
    expect((await a.metric('smtpgate_auth_lockouts_total', { scope: 'user_ip' })) + (await b.metric('smtpgate_auth_lockouts_total', { scope: 'user_ip' }))).toBe(1);
  });

  test('a suspension made on one instance holds on both until clear(USER)', async () => {
    const yaml = 'messagesPerUser: 1/1h\nbrake: { quotaHits: 1, window: 1h }';
    const a = await instance('brake', yaml);
    const b = await instance('brake', yaml);
    const mail = (h: LimitsHarness) => h.limits.mailFrom({ ...facts('192.0.2.1', { user: 'mallory' }), sender: 'm@example.com' });
    expect(await mail(a)).toBeUndefined();
    expect(await mail(a)).toMatchObject({ code: 550, enhanced: '5.7.1', reason: 'suspended' });
    expect(await succeededLogin(b.limits, { ...facts('203.0.113.1'), username: 'Mallory' })).toMatchObject({ code: 535, enhanced: '5.7.8', reason: 'suspended' });
    expect(await mail(b)).toMatchObject({ code: 550, reason: 'suspended' });
    expect((await b.limits.listState()).suspendedUsers.map((s) => s.user)).toEqual(['mallory']);

    const cleared = await b.limits.clear('mallory');
    expect(cleared.removed).toEqual(expect.arrayContaining([{ limiter: 'suspension', key: 'mallory' }]));
    expect(await succeededLogin(a.limits, { ...facts('203.0.113.1'), username: 'mallory' })).toBeUndefined();
    expect(await mail(a)).toBeUndefined();
    expect((await a.limits.listState()).suspendedUsers).toEqual([]);
  });

  test('a brake that trips again on another instance during the suspension leaves it as it is: one start, counted and announced once', async () => {
    const yaml = 'messagesPerUser: 1/1h\nbytesPerUser: 100/1h\nbrake: { quotaHits: 1, window: 1h }';
    const a = await instance('retrip', yaml);
    // B's clock is ten minutes on: a suspension written again there would start later.
    const b = await instance('retrip', yaml, { now: () => Date.now() + 600_000 });
    const heard: SuspensionEvent[] = [];
    for (const h of [a, b]) h.limits.onSuspended((e) => heard.push(e));
    const inDataOnB = facts('192.0.2.1', { user: 'mallory' }); // a session on B whose message is under way
    const mail = (h: LimitsHarness) => h.limits.mailFrom({ ...facts('192.0.2.1', { user: 'mallory' }), sender: 'm@example.com' });
    expect(await mail(a)).toBeUndefined();
    expect(await mail(a)).toMatchObject({ code: 550, reason: 'suspended' }); // the hit that suspends
    const [before] = (await a.limits.listState()).suspendedUsers;

    await b.limits.messageBytes(inDataOnB, 150); // its message is relayed: the byte quota runs out, the brake trips again
    expect((await b.limits.listState()).suspendedUsers.map((s) => [s.user, s.since])).toEqual([['mallory', before!.since]]);
    expect(await a.metric('smtpgate_account_suspensions_total')).toBe(1);
    expect(await b.metric('smtpgate_account_suspensions_total')).toBe(0);
    expect(heard).toHaveLength(1);
    expect(b.logged(/account suspended/)).toHaveLength(0);
    expect(b.logged(/quota ran out while the account is suspended/)).toEqual([
      expect.objectContaining({ level: 'info', session: inDataOnB.session, client: '192.0.2.1', user: 'mallory', limiter: 'bytes_user', msg: `quota ran out while the account is suspended (since ${before!.since})` }),
    ]);
  });

  test('listState reads lockouts and top senders from Redis; clear IP removes them there', async () => {
    const a = await instance('admin', 'auth: { failuresPerIp: 2/15m }\nmessagesPerUser: 100/1h');
    const b = await instance('admin', 'auth: { failuresPerIp: 2/15m }\nmessagesPerUser: 100/1h');
    const v6 = { ...facts('2001:db8:5:6::1'), username: 'x' };
    await failedLogin(a.limits, v6);
    await failedLogin(b.limits, { ...v6, session: 'b', ip: '2001:db8:5:6::2' });
    for (let i = 0; i < 3; i++) await a.limits.mailFrom({ ...facts('192.0.2.1', { user: 'bob' }), sender: 'bob@example.com' });
    await b.limits.mailFrom({ ...facts('192.0.2.1', { user: 'carol' }), sender: 'carol@example.com' });

    const s = await b.limits.listState();
    expect(s.store).toEqual({ kind: 'redis', up: true });
    expect(s.lockedIps.map((l) => l.ip)).toEqual(['2001:db8:5:6::/64']);
    expect(s.topSenders.map((t) => [t.user, t.messages])).toEqual([
      ['bob', 3],
      ['carol', 1],
    ]);
    await a.limits.clear('2001:db8:5:6::77');
    expect((await b.limits.listState()).lockedIps).toEqual([]);
    expect((await b.limits.authAllowed({ ...v6, session: 'again' })).refusal).toBeUndefined();
  });
});
