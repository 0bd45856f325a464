/**
 * Suspensions outlive a Redis that loses its data (issue 14, item 9): a Redis without
 * persistence (the Kubernetes one runs on an emptyDir) restarts empty; counters and lockouts may
 * start over, a suspended account must stay suspended until cleared or expired. Real
 * redis-server processes on a free loopback port, killed and started again empty.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, afterEach, describe, expect, test } from 'vitest';
import { describeWith, findProgram } from '../../helpers/programs.js';
import { limitsHarness, slowLink, succeededLogin, startRedisServer, until, type LimitsHarness, type RedisProcess, type SlowLink } from '../../helpers/redis.js';

const SYNC_MS = 200;

describeWith(['redis-server'], 'suspensions through a loss of Redis data', () => {
  let redis: RedisProcess | undefined;
  const harnesses: LimitsHarness[] = [];
  const clients: Redis[] = [];
  const links: SlowLink[] = [];

  afterEach(async () => {
    await Promise.all(harnesses.splice(0).map((h) => h.close()));
    await Promise.all(links.splice(0).map((l) => l.close()));
    for (const c of clients.splice(0)) c.disconnect();
    await redis?.kill();
    redis = undefined;
  });
  afterAll(async () => redis?.kill());

  function instance(extra = '', port = redis!.port): LimitsHarness {
    const h = limitsHarness(
      `
store:
  kind: redis
  url: redis://127.0.0.1:${port}
  keyPrefix: susp
messagesPerUser: 1/1h
brake:
  quotaHits: 1
${extra}
`,
      { suspensionSyncMs: SYNC_MS },
    );
    harnesses.push(h);
    return h;
  }

  function direct(): Redis {
    const c = new Redis(redis!.port, '127.0.0.1', { maxRetriesPerRequest: 1 });
    c.on('error', () => {});
    clients.push(c);
    return c;
  }

  const mail = (h: LimitsHarness, user: string) => h.limits.mailFrom({ session: `s-${user}`, ip: '192.0.2.1', listener: 'submission', user, sender: `${user}@example.com` });
  const login = (h: LimitsHarness, user: string) => succeededLogin(h.limits, { session: `a-${user}`, ip: '192.0.2.9', listener: 'submission', username: user });

  /** Two messages: the second runs out the 1/1h quota, which (quotaHits: 1) suspends the account. */
  async function suspend(h: LimitsHarness, user: string): Promise<void> {
    expect(await mail(h, user)).toBeUndefined();
    expect(await mail(h, user)).toMatchObject({ code: 550, enhanced: '5.7.1', reason: 'suspended' });
  }

  /** Kills Redis and starts an empty one on the same port, as a pod on an emptyDir restarts. */
  async function loseRedis(): Promise<void> {
    const port = redis!.port;
    await redis!.kill();
    redis = await startRedisServer({ port });
  }

  test('a suspension decided by one instance is restored by another after Redis restarts empty, and still refuses AUTH with 535 5.7.8', async () => {
    redis = await startRedisServer();
    const a = instance();
    const b = instance();
    expect(await a.limits.start(3000)).toBe(true);
    expect(await b.limits.start(3000)).toBe(true);

    await suspend(a, 'alice');
    const since = await direct().get('susp:suspension:1-0:alice');
    expect(since).not.toBeNull();
    // b learns of it at its next comparison with the store.
    await until('instance b to know the suspension', async () => (await b.metric('smtpgate_suspended_accounts')) === 1, 5000);
    // The instance that decided it goes away (a pod replaced): only b's copy is left.
    await a.close();
    harnesses.splice(harnesses.indexOf(a), 1);

    await loseRedis();
    const line = await b.waitForLog(/limiter store lost its data/, 10_000);
    expect(line).toMatchObject({ level: 'error', restoredSuspensions: 1, users: ['alice'] });

    expect(await direct().get('susp:suspension:1-0:alice')).toBe(since);
    expect(await direct().pttl('susp:suspension:1-0:alice')).toBe(-1);
    expect(await login(b, 'alice')).toMatchObject({ code: 535, enhanced: '5.7.8', reason: 'suspended' });
    expect(await mail(b, 'alice')).toMatchObject({ code: 550, enhanced: '5.7.1', reason: 'suspended' });
    // Other users' counts did start over: that is what losing Redis means.
    expect(await mail(b, 'bob')).toBeUndefined();
    expect(await b.metric('smtpgate_limiter_store_resets_total')).toBe(1);
    expect(await b.metric('smtpgate_suspensions_restored_total')).toBe(1);
    expect(await b.metric('smtpgate_suspended_accounts')).toBe(1);
  });

  test('a restored suspension keeps what was left of suspendFor, and one an admin cleared stays cleared', async () => {
    redis = await startRedisServer();
    const h = instance('  suspendFor: 1h');
    expect(await h.limits.start(3000)).toBe(true);
    await suspend(h, 'alice');
    await suspend(h, 'carol');
    expect((await h.limits.clear('carol')).removed).toContainEqual({ limiter: 'suspension', key: 'carol' });

    await loseRedis();
    expect(await h.waitForLog(/limiter store lost its data/, 10_000)).toMatchObject({ restoredSuspensions: 1, users: ['alice'] });

    const ttl = await direct().pttl('susp:suspension:1-0:alice');
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(3600_000);
    expect(await direct().exists('susp:suspension:1-0:carol')).toBe(0);
    expect(await login(h, 'alice')).toMatchObject({ code: 535, enhanced: '5.7.8' });
    expect(await login(h, 'carol')).toBeUndefined();
  });

  test('a suspension decided while Redis does not answer is written to it when it answers again', async () => {
    redis = await startRedisServer();
    const h = instance();
    expect(await h.limits.start(3000)).toBe(true);
    // Redis hangs (SIGSTOP): the connection stays open, nothing answers, the insurance memory counts.
    redis.child.kill('SIGSTOP');
    try {
      await suspend(h, 'alice');
    } finally {
      redis.child.kill('SIGCONT');
    }
    await h.waitForLog(/suspension\(s\) decided while the store was away written to it/, 10_000);
    expect(await direct().exists('susp:suspension:1-0:alice')).toBe(1);
    expect(h.logged(/lost its data/)).toEqual([]);
  });

  test('an instance that starts on the emptied Redis first does not make the others forget their suspensions', async () => {
    redis = await startRedisServer();
    // Instance a reaches Redis through a link the test can cut.
    const link = await slowLink(redis.port, 0);
    links.push(link);
    const a = instance('', link.port);
    expect(await a.limits.start(3000)).toBe(true);
    await suspend(a, 'alice');

    link.cut();
    await a.waitForLog(/limiter store unavailable/);
    await loseRedis();
    // A new instance (a pod scaled up, `smtpgate limits list`) meets the empty Redis first.
    const fresh = instance();
    expect(await fresh.limits.start(3000)).toBe(true);
    await until('the new instance to mark the store', async () => (await direct().exists('susp:marker')) === 1, 5000);
    expect(await login(fresh, 'alice')).toBeUndefined();

    link.reopen();
    expect(await a.waitForLog(/limiter store lost its data/, 10_000)).toMatchObject({ restoredSuspensions: 1, users: ['alice'] });
    expect(await login(fresh, 'alice')).toMatchObject({ code: 535, enhanced: '5.7.8' });
  });

  test('a store found without its marker at start is not reported as a loss', async () => {
    redis = await startRedisServer();
    const h = instance();
    expect(await h.limits.start(3000)).toBe(true);
    await until('the marker to be placed', async () => (await direct().exists('susp:marker')) === 1, 5000);
    expect(h.logged(/lost its data/)).toEqual([]);
    expect(await h.metric('smtpgate_limiter_store_resets_total')).toBe(0);
  });
});

describe('smtpgate_suspended_accounts', () => {
  test('counts the suspended accounts with the memory store too, and drops one an admin cleared', async () => {
    const h = limitsHarness(`
messagesPerUser: 1/1h
brake:
  quotaHits: 1
`);
    try {
      expect(await h.limits.start()).toBe(true);
      for (const user of ['alice', 'bob']) {
        await h.limits.mailFrom({ session: `s-${user}`, ip: '192.0.2.1', listener: 'submission', user, sender: `${user}@example.com` });
        expect(await h.limits.mailFrom({ session: `s-${user}`, ip: '192.0.2.1', listener: 'submission', user, sender: `${user}@example.com` })).toMatchObject({ reason: 'suspended' });
      }
      expect(await h.metric('smtpgate_suspended_accounts')).toBe(2);
      await h.limits.clear('alice');
      expect(await h.metric('smtpgate_suspended_accounts')).toBe(1);
    } finally {
      await h.close();
    }
  });
});

describeWith(['promtool'], 'the suspension alerts', () => {
  // Fires while any account is suspended (per instance), and once per loss of Redis data.
  test('SmtpgateAccountSuspended and SmtpgateLimiterStoreLostData pass promtool test rules', () => {
    const fixture = path.join(import.meta.dirname, '../../fixtures/prometheus/suspension-alerts.test.yml');
    const out = execFileSync(findProgram('promtool')!, ['test', 'rules', fixture], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(out).toMatch(/SUCCESS/);
  });
});
