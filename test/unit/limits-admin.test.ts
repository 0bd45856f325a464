/**
 * What `smtpgate limits list` and `smtpgate limits clear IP|USER` see and do: the pure report
 * and clear plan, the store queries behind them (memory store here; Redis in the e2e tests),
 * and the admin HTTP routes the CLI uses when the state lives inside the running process.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, test } from 'vitest';
import {
  fetchLimitsState,
  formatLimitsState,
  limitsAdminRoutes,
  planClear,
  requestLimitsClear,
  summarizeState,
  type StateEntries,
} from '../../src/limits/admin.js';
import type { StoredEntry } from '../../src/limits/limiter-store.js';
import { failedLogin, limitsHarness, type LimitsHarness } from '../helpers/redis.js';

function entry(name: StoredEntry['name'], key: string, value: number, points: number, msBeforeNext: number, windowMs = 900_000): StoredEntry {
  return { name, key, value, points, windowMs, msBeforeNext };
}

describe('planClear', () => {
  test('an address clears that client: its lockouts, user+address lockouts and counters', () => {
    const p = planClear('192.0.2.7', 64)!;
    expect(p).toMatchObject({ kind: 'ip', key: '192.0.2.7' });
    expect(Object.keys(p.match).sort()).toEqual(['auth_ip', 'auth_user_ip', 'connection_rate', 'messages_ip']);
    expect(p.match.auth_user_ip!('alice|192.0.2.7')).toBe(true);
    expect(p.match.auth_user_ip!('alice|192.0.2.70')).toBe(false);
  });

  test('an IPv6 address or network clears its /64', () => {
    expect(planClear('2001:db8:1:2::99', 64)!.key).toBe('2001:db8:1:2::/64');
    expect(planClear('2001:db8:1:2::/64', 64)!.key).toBe('2001:db8:1:2::/64');
  });

  test('a CIDR range clears every address and IPv6 network in it, and nothing outside', () => {
    const v4 = planClear('10.0.0.0/24', 64)!;
    expect(v4).toMatchObject({ kind: 'ip', key: '10.0.0.0/24' });
    expect(['10.0.0.0', '10.0.0.1', '10.0.0.255'].map(v4.match.auth_ip!)).toEqual([true, true, true]);
    expect(['10.0.1.0', '9.255.255.255', '2001:db8::/64', 'junk'].map(v4.match.auth_ip!)).toEqual([false, false, false, false]);
    expect(v4.match.auth_user_ip!('alice|10.0.0.7')).toBe(true);
    expect(v4.match.auth_user_ip!('alice|10.0.1.7')).toBe(false);
    expect(planClear('10.0.0.7/24', 64)!.key).toBe('10.0.0.0/24');
    // Wider than the /64 a client is counted in: every network inside; narrower: the network it lies in.
    const v6 = planClear('2001:db8::/32', 64)!;
    expect(['2001:db8::/64', '2001:db8:ffff:1::/64', '2001:db9::/64', '10.0.0.1'].map(v6.match.messages_ip!)).toEqual([true, true, false, false]);
    expect(planClear('2001:db8:1:2::/80', 64)!.match.connection_rate!('2001:db8:1:2::/64')).toBe(true);
  });

  test('anything else is a user: suspension (and the claim on its notice), brake, lockouts from any address, quotas', () => {
    const p = planClear('Alice@Example.com', 64)!;
    expect(p).toMatchObject({ kind: 'user', key: 'alice@example.com' });
    expect(Object.keys(p.match).sort()).toEqual(['auth_user_ip', 'brake', 'bytes_user', 'messages_sender', 'messages_user', 'recipients_user', 'suspension', 'suspension_notice']);
    expect(p.match.auth_user_ip!('alice@example.com|2001:db8::/64')).toBe(true);
    expect(planClear('bob', 64)!.match.messages_sender).toBeUndefined();
    expect(planClear('  ', 64)).toBeUndefined();
  });
});

describe('summarizeState', () => {
  const entries: StateEntries = {
    auth_ip: [entry('auth_ip', '192.0.2.1', 20, 20, 300_000), entry('auth_ip', '192.0.2.2', 3, 20, 800_000)],
    auth_user_ip: [entry('auth_user_ip', 'alice|192.0.2.9', 5, 5, 120_000)],
    suspension: [entry('suspension', 'mallory', 1_700_000_000, 1, -1, 0)],
    messages_user: [entry('messages_user', 'bob', 7, 100, 1_000, 3_600_000), entry('messages_user', 'carol', 70, 100, 2_000, 3_600_000), entry('messages_user', 'dan', 1, 100, 3_000, 3_600_000)],
    brake: [entry('brake', 'carol', 2, 3, 10_000)],
  };

  test('lockouts are entries at their limit; counts below it are not listed', () => {
    const s = summarizeState(entries, { now: 0, top: 2, store: { kind: 'memory', up: true } });
    expect(s.lockedIps).toEqual([{ ip: '192.0.2.1', failures: 20, retryAfterSeconds: 300 }]);
    expect(s.lockedUsers).toEqual([{ user: 'alice', ip: '192.0.2.9', failures: 5, retryAfterSeconds: 120 }]);
  });

  test('suspensions carry when they began; top senders are sorted and cut at `top`', () => {
    const s = summarizeState(entries, { now: 0, top: 2, store: { kind: 'memory', up: true } });
    expect(s.suspendedUsers).toEqual([{ user: 'mallory', since: new Date(1_700_000_000_000).toISOString(), until: null }]);
    expect(s.topSenders.map((t) => [t.user, t.messages, t.limit, t.window])).toEqual([
      ['carol', 70, 100, '1h'],
      ['bob', 7, 100, '1h'],
    ]);
    expect(s.brake).toEqual([{ user: 'carol', quotaHits: 2, suspendAt: 3 }]);
  });

  test('the terminal format has one section per question an admin asks', () => {
    const text = formatLimitsState(summarizeState(entries, { now: 0, top: 10, store: { kind: 'redis', up: false } }));
    expect(text).toMatch(/store: redis, DOWN/);
    expect(text).toMatch(/locked-out addresses:\n {2}192\.0\.2\.1 {2}20 failures {2}300s left/);
    expect(text).toMatch(/locked-out users:\n {2}alice from 192\.0\.2\.9/);
    expect(text).toMatch(/suspended users:\n {2}mallory .*until cleared/);
    expect(text).toMatch(/top senders \(current window\):\n {2}carol {2}70\/100 per 1h/);
  });
});

describe('listState and clear on the memory store', () => {
  let h: LimitsHarness | undefined;
  afterEach(async () => h?.close());

  async function lockOut(ip: string, username: string, times: number) {
    for (let i = 0; i < times; i++) await failedLogin(h!.limits, { session: `s-${ip}`, ip, listener: 'l', username });
  }

  test('lists locked-out addresses and users, and the top senders', async () => {
    h = limitsHarness('auth: { failuresPerUserIp: 2/15m, failuresPerIp: 3/15m }\nmessagesPerUser: 100/1h');
    await lockOut('192.0.2.1', 'alice', 2);
    await lockOut('192.0.2.2', 'x', 1);
    await lockOut('192.0.2.2', 'y', 1);
    await lockOut('192.0.2.2', 'z', 1);
    for (const [user, n] of [
      ['bob', 3],
      ['carol', 5],
    ] as const) {
      for (let i = 0; i < n; i++) await h.limits.mailFrom({ session: 's-mail', ip: '192.0.2.3', listener: 'l', user, sender: `${user}@example.com` });
    }
    const s = await h.limits.listState();
    expect(s.store).toEqual({ kind: 'memory', up: true });
    expect(s.lockedIps.map((l) => l.ip)).toEqual(['192.0.2.2']);
    expect(s.lockedUsers.map((l) => `${l.user}@${l.ip}`)).toEqual(['alice@192.0.2.1']);
    expect(s.topSenders.map((t) => [t.user, t.messages])).toEqual([
      ['carol', 5],
      ['bob', 3],
    ]);
  });

  test('clear IP lifts the address lockout and the user lockouts from it', async () => {
    h = limitsHarness('auth: { failuresPerUserIp: 2/15m, failuresPerIp: 3/15m }');
    await lockOut('192.0.2.2', 'alice', 2);
    await lockOut('192.0.2.2', 'bob', 1);
    const facts = { session: 't', ip: '192.0.2.2', listener: 'l', username: 'alice' };
    expect((await h.limits.authAllowed(facts)).refusal).toBeDefined();
    const r = await h.limits.clear('192.0.2.2');
    expect(r.kind).toBe('ip');
    expect(r.removed).toEqual(
      expect.arrayContaining([
        { limiter: 'auth_ip', key: '192.0.2.2' },
        { limiter: 'auth_user_ip', key: 'alice|192.0.2.2' },
      ]),
    );
    expect((await h.limits.authAllowed(facts)).refusal).toBeUndefined();
    expect(h.logged(/limits cleared by an admin/)[0]).toMatchObject({ target: '192.0.2.2', kind: 'ip' });
  });

  test('clear refuses an empty target', async () => {
    h = limitsHarness('');
    await expect(h.limits.clear(' ')).rejects.toBeInstanceOf(RangeError);
  });
});

describe('admin HTTP routes (the CLI path for the memory store)', () => {
  let h: LimitsHarness | undefined;
  let server: http.Server | undefined;
  afterEach(async () => {
    if (server) await new Promise<void>((r) => server!.close(() => r()));
    await h?.close();
  });

  async function serve(token?: string): Promise<string> {
    h = limitsHarness('auth: { failuresPerIp: 1/15m }');
    const routes = limitsAdminRoutes(h.limits, token ? { token } : {});
    server = http.createServer((req, res) => {
      if (!routes(req, res)) res.writeHead(404).end('not found\n');
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  test('GET /limits returns the state; POST /limits/clear clears; other paths fall through', async () => {
    const base = await serve();
    await failedLogin(h!.limits, { session: 's', ip: '192.0.2.5', listener: 'l', username: 'a' });
    expect((await fetchLimitsState(base)).lockedIps.map((l) => l.ip)).toEqual(['192.0.2.5']);
    const r = await requestLimitsClear(base, '192.0.2.5');
    expect(r.removed).toContainEqual({ limiter: 'auth_ip', key: '192.0.2.5' });
    expect((await fetchLimitsState(base)).lockedIps).toEqual([]);
    expect((await fetch(`${base}/metrics`)).status).toBe(404);
    expect((await fetch(`${base}/limits/clear`)).status).toBe(405);
    expect((await fetch(`${base}/limits/clear`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: 'nope' })).status).toBe(400);
  });

  test('with a token, requests without it are refused', async () => {
    const base = await serve('s3cret');
    expect((await fetch(`${base}/limits`)).status).toBe(401);
    await expect(requestLimitsClear(base, 'alice')).rejects.toThrow(/401/);
    expect((await fetchLimitsState(base, { token: 's3cret' })).store.kind).toBe('memory');
  });
});
