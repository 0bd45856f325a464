/**
 * Redis goes away mid-session. Whatever limits.onStoreFailure says, no limit check may take a
 * second; the outage is logged once and shown by smtpgate_limiter_store_up; and limiting goes
 * back to Redis when it returns.
 *
 * Each test runs its own redis-server on a free loopback port, kills it (SIGKILL, or SIGSTOP
 * for a server that hangs without closing the connection) and restarts it on the same port.
 */
import { afterEach, expect, test } from 'vitest';
import type { Refusal } from '../../../src/reply.js';
import type { ClientFacts } from '../../../src/limits/limits.js';
import { describeWith } from '../../helpers/programs.js';
import { failedLogin, limitsHarness, startRedisServer, succeededLogin, type LimitsHarness, type RedisProcess } from '../../helpers/redis.js';

/** A bound, not a speed test: the DESIGN promise is that no SMTP command stalls ≥ 1 s on Redis. */
const STALL_LIMIT_MS = 1000;

describeWith(['redis-server'], 'limits when Redis goes away', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  async function redis(port?: number): Promise<RedisProcess> {
    const r = await startRedisServer(port ? { port } : {});
    cleanup.push(() => r.kill());
    return r;
  }

  async function gate(port: number, mode: 'memory' | 'allow' | 'deny'): Promise<LimitsHarness> {
    const h = limitsHarness(`
store: { kind: redis, url: "redis://127.0.0.1:${port}", keyPrefix: outage }
onStoreFailure: ${mode}
connectionRate: 100/1m
messagesPerUser: 3/1h
auth: { failuresPerUserIp: 2/15m }
`);
    cleanup.push(() => h.close());
    expect(await h.limits.start(2000)).toBe(true);
    return h;
  }

  let n = 0;
  const alice = (): ClientFacts => ({ session: `o${++n}`, ip: '192.0.2.1', listener: 'submission', user: 'alice' });

  /** Every call while Redis is away goes through this: it must answer within the bound. */
  async function timed<T>(what: string, p: T | Promise<T>): Promise<T> {
    const started = performance.now();
    const r = await p;
    const ms = performance.now() - started;
    expect(ms, `${what} took ${ms.toFixed(0)}ms while Redis was away`).toBeLessThan(STALL_LIMIT_MS);
    return r;
  }

  /** A burst of every kind of check, each timed. */
  async function checksWhileDown(h: LimitsHarness) {
    const mails: (Refusal | undefined)[] = [];
    for (let i = 0; i < 6; i++) mails.push(await timed('MAIL', h.limits.mailFrom({ ...alice(), sender: 'alice@example.com' })));
    const connect = await timed('connect', h.limits.connectionOpened({ ...alice(), user: undefined }));
    const auth = (await timed('AUTH check', h.limits.authAllowed({ ...alice(), username: 'alice' }))).refusal;
    await timed('AUTH failure', failedLogin(h.limits, { ...alice(), username: 'bob' }));
    const authOk = await timed('AUTH success', succeededLogin(h.limits, { ...alice(), username: 'alice' }));
    const rcpt = await timed('RCPT', h.limits.rcptTo({ ...alice(), recipientsSoFar: 0 }));
    return { mails, connect, auth, authOk, rcpt };
  }

  async function mailUntilRefused(h: LimitsHarness): Promise<number> {
    let allowed = 0;
    while (allowed < 10 && (await h.limits.mailFrom({ ...alice(), sender: 'alice@example.com' })) === undefined) allowed++;
    return allowed;
  }

  async function outageLifecycle(mode: 'memory' | 'allow' | 'deny', expectDown: (c: Awaited<ReturnType<typeof checksWhileDown>>) => void) {
    const server = await redis();
    const h = await gate(server.port, mode);
    expect(await h.limits.mailFrom({ ...alice(), sender: 'alice@example.com' })).toBeUndefined();
    expect(await h.limits.mailFrom({ ...alice(), sender: 'alice@example.com' })).toBeUndefined();

    await server.kill();
    const first = await checksWhileDown(h);
    const second = await checksWhileDown(h);
    expectDown(first);
    expect(h.logged(/limiter store unavailable/), 'the outage is logged once, not per message').toHaveLength(1);
    expect(h.logged(/limiter store unavailable/)[0]).toMatchObject({ level: 'warn', onStoreFailure: mode });
    expect(await h.metric('smtpgate_limiter_store_up')).toBe(0);
    expect(await h.metric('smtpgate_limiter_decisions_total', { limiter: 'messages_user', result: 'store_error' })).toBeGreaterThanOrEqual(12);

    // Redis returns (empty: it ran without persistence) on the same port.
    await redis(server.port);
    expect(await h.limits.start(5000)).toBe(true);
    await h.waitForLog(/limiter store reachable again/);
    expect(await h.metric('smtpgate_limiter_store_up')).toBe(1);
    // Counting is in Redis again: a second instance sees the first one's count.
    const other = await gate(server.port, mode);
    expect(await mailUntilRefused(h)).toBe(3);
    expect(await other.limits.mailFrom({ ...alice(), sender: 'alice@example.com' })).toMatchObject({ code: 451, enhanced: '4.7.1' });
    expect(h.logged(/limiter store unavailable/)).toHaveLength(1);
    return { first, second };
  }

  test('onStoreFailure: memory — each instance counts in its insurance memory, within the bound', async () => {
    const { second } = await outageLifecycle('memory', (c) => {
      // The insurance memory starts from zero: its counts are not the Redis counts.
      expect(c.mails.slice(0, 3)).toEqual([undefined, undefined, undefined]);
      expect(c.mails.slice(3).map((r) => r && `${r.code} ${r.enhanced}`)).toEqual(['451 4.7.1', '451 4.7.1', '451 4.7.1']);
      expect(c.connect).toBeUndefined();
      expect(c.auth).toBeUndefined();
      expect(c.rcpt).toBeUndefined();
    });
    expect(second.mails.every((r) => r?.code === 451)).toBe(true);
  });

  test('onStoreFailure: allow — limits are not enforced while Redis is away', async () => {
    await outageLifecycle('allow', (c) => {
      expect(c.mails).toEqual(Array(6).fill(undefined));
      expect([c.connect, c.auth, c.authOk, c.rcpt]).toEqual([undefined, undefined, undefined, undefined]);
    });
  });

  test('onStoreFailure: deny — every check answers 4.3.0 at once', async () => {
    await outageLifecycle('deny', (c) => {
      for (const r of c.mails) expect(r).toMatchObject({ code: 451, enhanced: '4.3.0', reason: 'limiter_unavailable' });
      expect(c.connect).toMatchObject({ code: 421, enhanced: '4.3.0', reason: 'limiter_unavailable' });
      expect(c.auth).toMatchObject({ code: 454, enhanced: '4.3.0', reason: 'limiter_unavailable' });
      expect(c.authOk).toMatchObject({ code: 454, enhanced: '4.3.0' });
      expect(c.rcpt).toMatchObject({ code: 451, enhanced: '4.3.0' });
      expect(c.mails[0]!.text).toMatch(/try again in 60 seconds/);
    });
  });

  test('a Redis that hangs (connection open, no answers) costs one command timeout, then the fallback answers at once', async () => {
    const server = await redis();
    const h = await gate(server.port, 'memory');
    process.kill(server.child.pid!, 'SIGSTOP');
    cleanup.push(async () => {
      if (server.child.exitCode === null) process.kill(server.child.pid!, 'SIGCONT');
    });
    const times: number[] = [];
    for (let i = 0; i < 8; i++) {
      const started = performance.now();
      await timed('MAIL with Redis hung', h.limits.mailFrom({ ...alice(), sender: 'alice@example.com' }));
      times.push(performance.now() - started);
    }
    // The first waits for commandTimeout (300 ms); after it the store is known to be away.
    expect(times[0]).toBeGreaterThan(250);
    expect(Math.max(...times.slice(1))).toBeLessThan(100);
    expect(h.logged(/limiter store unavailable/)).toHaveLength(1);
    expect(h.logged(/limiter store unavailable/)[0]!.detail).toMatch(/timed out|no answer/i);

    process.kill(server.child.pid!, 'SIGCONT');
    await h.waitForLog(/limiter store reachable again/);
    expect(h.limits.storeUp).toBe(true);
  });

  test('a suspension this instance has seen in Redis is still enforced while Redis is away (memory mode)', async () => {
    const server = await redis();
    const h = limitsHarness(`
store: { kind: redis, url: "redis://127.0.0.1:${server.port}", keyPrefix: mirror }
messagesPerUser: 1/1h
brake: { quotaHits: 1, window: 1h }
`);
    cleanup.push(() => h.close());
    expect(await h.limits.start(2000)).toBe(true);
    const mallory = () => ({ session: `m${++n}`, ip: '192.0.2.1', listener: 'submission', user: 'mallory', sender: 'm@example.com' });
    await h.limits.mailFrom(mallory());
    expect(await h.limits.mailFrom(mallory())).toMatchObject({ code: 550, reason: 'suspended' });
    await server.kill();
    expect(await timed('AUTH', succeededLogin(h.limits, { ...mallory(), username: 'mallory' }))).toMatchObject({ code: 535, enhanced: '5.7.8' });
    expect(await timed('MAIL', h.limits.mailFrom(mallory()))).toMatchObject({ code: 550, reason: 'suspended' });
  });

  test('a store that is down at start does not stop smtpgate, and is used once it comes up', async () => {
    const port = (await redis()).port;
    const [first] = cleanup.splice(-1);
    await first!(); // nothing listens on `port` now
    const h = limitsHarness(`store: { kind: redis, url: "redis://127.0.0.1:${port}", keyPrefix: late }\nmessagesPerUser: 1/1h`);
    cleanup.push(() => h.close());
    expect(await timed('start', h.limits.start(300))).toBe(false);
    expect(await timed('MAIL', h.limits.mailFrom({ ...alice(), sender: 'a@example.com' }))).toBeUndefined();
    await h.waitForLog(/limiter store unavailable/);
    await redis(port);
    expect(await h.limits.start(5000)).toBe(true);
    expect(await h.limits.mailFrom({ ...alice(), sender: 'a@example.com' })).toBeUndefined();
    expect(await h.limits.mailFrom({ ...alice(), sender: 'a@example.com' })).toMatchObject({ code: 451 });
  });
});
