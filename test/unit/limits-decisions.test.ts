/**
 * Every limit at exactly its configured count: N allowed, N+1 refused with the right code,
 * enhanced code and a text that names the limit and when to retry. Memory store; windows are
 * moved with a fake clock (rate-limiter-flexible's memory limiter runs on Date.now/setTimeout).
 */
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import type { Refusal } from '../../src/reply.js';
import type { ClientFacts, SuspensionEvent } from '../../src/limits/limits.js';
import { resolveQuotas } from '../../src/limits/quotas.js';
import { limitsConfigSchema } from '../../src/limits/config.js';
import { parseIp } from '../../src/limits/keys.js';
import { parse as parseYaml } from 'yaml';
import { failedLogin, limitsHarness, succeededLogin, type LimitsHarness } from '../helpers/redis.js';

let h: LimitsHarness | undefined;
let sessions = 0;

function setup(yaml: string): LimitsHarness {
  h = limitsHarness(yaml);
  return h;
}

afterEach(async () => {
  await h?.close();
  h = undefined;
  vi.useRealTimers();
});

function client(ip: string, extra: Partial<ClientFacts> = {}): ClientFacts {
  return { session: `s${++sessions}`, ip, listener: 'submission', ...extra };
}

/** Asserts a refusal's code, enhanced code and reason, and returns its text. */
function refused(r: Refusal | undefined, code: number, enhanced: string, reason: string): string {
  expect(r, 'expected a refusal').toBeDefined();
  expect({ code: r!.code, enhanced: r!.enhanced, reason: r!.reason }).toEqual({ code, enhanced, reason });
  return r!.text;
}

function retryIn(text: string): number {
  const m = /try again in (\d+) seconds/.exec(text);
  if (!m) throw new Error(`no retry time in ${JSON.stringify(text)}`);
  return Number(m[1]);
}

const QUIET = 'connectionRate: off\nconcurrentPerIp: off\nconcurrentPerListener: off\n';

describe('connections', () => {
  test('new connections per address: N allowed, N+1 gets 421 4.7.0 naming the limit and the wait', async () => {
    const { limits } = setup('connectionRate: 3/1m\nconcurrentPerIp: off');
    for (let i = 0; i < 3; i++) {
      const c = client('192.0.2.1');
      expect(await limits.connectionOpened(c)).toBeUndefined();
      limits.connectionClosed(c);
    }
    const text = refused(await limits.connectionOpened(client('192.0.2.1')), 421, '4.7.0', 'rate_limited');
    expect(text).toMatch(/Too many connections from your address \(limit 3 per 1m\)/);
    expect(retryIn(text)).toBeGreaterThan(0);
    expect(retryIn(text)).toBeLessThanOrEqual(60);
    expect(await limits.connectionOpened(client('192.0.2.2'))).toBeUndefined();
  });

  test('open connections per address: N open allowed, N+1 refused, a slot frees at close', async () => {
    const { limits } = setup('connectionRate: off\nconcurrentPerIp: 2');
    const a = client('192.0.2.1');
    const b = client('192.0.2.1');
    expect(await limits.connectionOpened(a)).toBeUndefined();
    expect(await limits.connectionOpened(b)).toBeUndefined();
    const c = client('192.0.2.1');
    const text = refused(await limits.connectionOpened(c), 421, '4.7.0', 'too_many_connections');
    expect(text).toMatch(/open connections from your address \(limit 2\); try again in 30 seconds/);
    limits.connectionClosed(c); // a refused session's close gives back nothing it didn't hold
    limits.connectionClosed(a);
    limits.connectionClosed(a); // idempotent
    expect(await limits.connectionOpened(client('192.0.2.1'))).toBeUndefined();
    expect(await limits.connectionOpened(client('192.0.2.1'))).toBeDefined();
  });

  test('open connections per listener count every client', async () => {
    const { limits } = setup('connectionRate: off\nconcurrentPerIp: off\nconcurrentPerListener: 3');
    for (let i = 1; i <= 3; i++) expect(await limits.connectionOpened(client(`192.0.2.${i}`))).toBeUndefined();
    refused(await limits.connectionOpened(client('192.0.2.9')), 421, '4.7.0', 'too_many_connections');
    expect(await limits.connectionOpened(client('192.0.2.9', { listener: 'smtps' }))).toBeUndefined();
  });

  test('IPv6 clients in one /64 share the per-address limits', async () => {
    const { limits } = setup('connectionRate: off\nconcurrentPerIp: 2');
    expect(await limits.connectionOpened(client('2001:db8:1:2::1'))).toBeUndefined();
    expect(await limits.connectionOpened(client('2001:db8:1:2:ffff::99'))).toBeUndefined();
    refused(await limits.connectionOpened(client('2001:db8:1:2:dead:beef::1')), 421, '4.7.0', 'too_many_connections');
    expect(await limits.connectionOpened(client('2001:db8:1:3::1'))).toBeUndefined();
  });

  test('a burst of simultaneous connections cannot slip past the concurrency count', async () => {
    const { limits } = setup('connectionRate: 100/1m\nconcurrentPerIp: 5');
    const results = await Promise.all(Array.from({ length: 20 }, () => limits.connectionOpened(client('192.0.2.1'))));
    expect(results.filter((r) => r === undefined)).toHaveLength(5);
  });
});

describe('AUTH lockout', () => {
  const AUTH = `${QUIET}auth: { failuresPerUserIp: 3/15m, failuresPerIp: 5/15m, lockFor: 10m, refusalsBeforeDisconnect: 2 }`;

  test('N failures for one user from one address lock that user there: 454 4.7.0 with the wait', async () => {
    const { limits, logged, metric } = setup(AUTH);
    const c = { ...client('192.0.2.1'), username: 'Alice' };
    for (let i = 1; i <= 3; i++) {
      expect(await failedLogin(limits, c)).toEqual(i < 3 ? { lockedOut: false } : { lockedOut: true, scope: 'user_ip', retryAfterSeconds: 600 });
    }
    const text = refused((await limits.authAllowed(c)).refusal, 454, '4.7.0', 'locked_out');
    expect(text).toMatch(/Too many failed logins for this user from your address; try again in \d+ seconds/);
    expect(retryIn(text)).toBeGreaterThan(590);
    expect(retryIn(text)).toBeLessThanOrEqual(600);
    // Another user from that address, and the same user elsewhere, are not locked.
    expect((await limits.authAllowed({ ...c, username: 'bob' })).refusal).toBeUndefined();
    expect((await limits.authAllowed({ ...client('192.0.2.2'), username: 'alice' })).refusal).toBeUndefined();
    expect(await metric('smtpgate_auth_lockouts_total', { scope: 'user_ip' })).toBe(1);
    const [line] = logged(/AUTH lockout/);
    expect(line).toMatchObject({ client: '192.0.2.1', user: 'Alice', scope: 'user_ip', failures: 3, lockSeconds: 600 });
    expect(logged(/AUTH lockout/)).toHaveLength(1);
  });

  test('the lockout holds for lockFor, then lifts', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'setTimeout', 'clearTimeout'] });
    const { limits } = setup(AUTH);
    const c = { ...client('192.0.2.1'), username: 'alice' };
    for (let i = 0; i < 3; i++) await failedLogin(limits, c);
    vi.advanceTimersByTime(599_000);
    expect((await limits.authAllowed(c)).refusal).toBeDefined();
    vi.advanceTimersByTime(2_000);
    expect((await limits.authAllowed(c)).refusal).toBeUndefined();
  });

  test('after refusalsBeforeDisconnect answers of 454, the next AUTH gets 421 4.7.0 (the connection closes)', async () => {
    const { limits } = setup(AUTH);
    const c = { ...client('192.0.2.1'), username: 'alice' };
    // The per-connection count lives with the connection, which connectionOpened registers.
    expect(await limits.connectionOpened(c)).toBeUndefined();
    for (let i = 0; i < 3; i++) await failedLogin(limits, c);
    refused((await limits.authAllowed(c)).refusal, 454, '4.7.0', 'locked_out');
    refused((await limits.authAllowed(c)).refusal, 454, '4.7.0', 'locked_out');
    const text = refused((await limits.authAllowed(c)).refusal, 421, '4.7.0', 'locked_out');
    expect(text).toMatch(/closing connection, try again in \d+ seconds/);
    // A new connection starts its own count.
    expect(await limits.connectionOpened({ ...c, session: 'fresh' })).toBeUndefined();
    refused((await limits.authAllowed({ ...c, session: 'fresh' })).refusal, 454, '4.7.0', 'locked_out');
  });

  test('a hook that finishes after the connection closed leaves no session state behind', async () => {
    const { limits } = setup(AUTH);
    const c = { ...client('192.0.2.9'), username: 'alice' };
    expect(await limits.connectionOpened(c)).toBeUndefined();
    limits.connectionClosed(c);
    await failedLogin(limits, c);
    await succeededLogin(limits, c);
    await limits.messageBytes(c, 100);
    expect(limits.openSessions).toBe(0);
  });

  test('N failures from one address, any usernames, lock the address for everyone', async () => {
    const { limits, metric, logged } = setup(AUTH);
    const ip = client('192.0.2.7');
    for (let i = 1; i <= 5; i++) {
      const r = await failedLogin(limits, { ...ip, username: `user${i}` });
      expect(r).toMatchObject({ lockedOut: i === 5 });
    }
    const text = refused((await limits.authAllowed({ ...ip, username: 'someone-else' })).refusal, 454, '4.7.0', 'locked_out');
    expect(text).toMatch(/Too many failed logins from your address; try again in \d+ seconds/);
    expect(await metric('smtpgate_auth_lockouts_total', { scope: 'ip' })).toBe(1);
    expect(logged(/AUTH lockout: too many failed logins from this address/)[0]).toMatchObject({ client: '192.0.2.7', scope: 'ip' });
  });

  test('a successful login clears the user+address count, not the address count', async () => {
    const { limits } = setup(AUTH);
    const c = { ...client('192.0.2.1'), username: 'alice' };
    await failedLogin(limits, c);
    await failedLogin(limits, c);
    expect(await succeededLogin(limits, c)).toBeUndefined();
    await failedLogin(limits, c);
    expect(await failedLogin(limits, c)).toMatchObject({ lockedOut: false });
    // 4 failures from this address so far: the 5th (any user) locks it.
    expect(await failedLogin(limits, { ...c, username: 'bob' })).toMatchObject({ lockedOut: true });
  });

  test('usernames are case-insensitive and IPv6 clients are counted per /64', async () => {
    const { limits } = setup(AUTH);
    await failedLogin(limits, { ...client('2001:db8::1'), username: 'Alice' });
    await failedLogin(limits, { ...client('2001:db8::2'), username: 'ALICE' });
    await failedLogin(limits, { ...client('2001:db8::3'), username: 'alice' });
    refused((await limits.authAllowed({ ...client('2001:db8::ffff'), username: 'alice' })).refusal, 454, '4.7.0', 'locked_out');
  });
});

describe('messages, recipients and bytes', () => {
  test('messages per user: N allowed, N+1 gets 451 4.7.1 naming the limit and the wait', async () => {
    const { limits } = setup(`${QUIET}messagesPerUser: 3/1h`);
    const c = { ...client('192.0.2.1', { user: 'alice' }), sender: 'alice@example.com' };
    for (let i = 0; i < 3; i++) expect(await limits.mailFrom(c)).toBeUndefined();
    const text = refused(await limits.mailFrom(c), 451, '4.7.1', 'rate_limited');
    expect(text).toMatch(/^Message limit for your account reached \(3 per 1h\); try again in \d+ seconds$/);
    expect(retryIn(text)).toBeLessThanOrEqual(3600);
    expect(retryIn(text)).toBeGreaterThan(3590);
    expect(await limits.mailFrom({ ...c, user: 'bob' })).toBeUndefined();
  });

  test('messages per sender address, whoever sends them', async () => {
    const { limits } = setup(`${QUIET}messagesPerSender: 2/1h`);
    const mail = (user: string, sender: string) => limits.mailFrom({ ...client('192.0.2.1', { user }), sender });
    expect(await mail('alice', 'Boss@Example.com')).toBeUndefined();
    expect(await mail('bob', 'boss@example.com')).toBeUndefined();
    expect(refused(await mail('carol', 'BOSS@example.com'), 451, '4.7.1', 'rate_limited')).toMatch(/sender address reached \(2 per 1h\)/);
    // The null sender (bounces) has no sender quota.
    for (let i = 0; i < 5; i++) expect(await mail('alice', '')).toBeUndefined();
  });

  test('messages per client address, authenticated or not', async () => {
    const { limits } = setup(`${QUIET}messagesPerIp: 2/10m`);
    expect(await limits.mailFrom({ ...client('192.0.2.1'), sender: 'a@example.com' })).toBeUndefined();
    expect(await limits.mailFrom({ ...client('192.0.2.1', { user: 'x' }), sender: 'b@example.com' })).toBeUndefined();
    const text = refused(await limits.mailFrom({ ...client('192.0.2.1'), sender: 'c@example.com' }), 451, '4.7.1', 'rate_limited');
    expect(text).toMatch(/your address reached \(2 per 10m\)/);
  });

  test('a MAIL refused by one quota does not use up the others', async () => {
    const { limits } = setup(`${QUIET}messagesPerUser: 4/1h\nmessagesPerIp: 2/1h`);
    const from = (ip: string) => limits.mailFrom({ ...client(ip, { user: 'alice' }), sender: 'alice@example.com' });
    expect(await from('192.0.2.1')).toBeUndefined();
    expect(await from('192.0.2.1')).toBeUndefined();
    expect(await from('192.0.2.1')).toBeDefined(); // the address quota
    expect(await from('192.0.2.1')).toBeDefined();
    expect(await from('192.0.2.2')).toBeUndefined();
    expect(await from('192.0.2.2')).toBeUndefined();
    // 4 went out; the refused ones were given back to the user's quota.
    expect(refused(await from('192.0.2.3'), 451, '4.7.1', 'rate_limited')).toMatch(/your account/);
  });

  test('recipients per message: N accepted, the N+1st gets 452 4.5.3', async () => {
    const { limits } = setup(QUIET);
    const c = client('192.0.2.1', { user: 'alice' });
    expect(await limits.rcptTo({ ...c, recipientsSoFar: 99 })).toBeUndefined();
    const text = refused(await limits.rcptTo({ ...c, recipientsSoFar: 100 }), 452, '4.5.3', 'too_many_recipients');
    expect(text).toBe('Too many recipients for one message (limit 100); send the rest in another message');
  });

  test('recipients per user per window: N allowed, N+1 gets 451 4.7.1', async () => {
    const { limits } = setup(`${QUIET}recipientsPerUser: 3/1h`);
    const c = { ...client('192.0.2.1', { user: 'alice' }), recipientsSoFar: 0 };
    for (let i = 0; i < 3; i++) expect(await limits.rcptTo(c)).toBeUndefined();
    expect(refused(await limits.rcptTo(c), 451, '4.7.1', 'rate_limited')).toMatch(/^Recipient limit for your account reached \(3 per 1h\); try again in \d+ seconds$/);
  });

  test('bytes per user: counted after relay, checked at MAIL (also against the declared SIZE)', async () => {
    const { limits } = setup(`${QUIET}bytesPerUser: 1000/1h`);
    const c = client('192.0.2.1', { user: 'alice' });
    const mail = (size?: number) => limits.mailFrom({ ...c, sender: 'alice@example.com', ...(size !== undefined ? { size } : {}) });
    expect(await mail()).toBeUndefined();
    await limits.messageBytes(c, 600);
    expect(await mail(400)).toBeUndefined();
    refused(await mail(401), 451, '4.7.1', 'rate_limited');
    await limits.messageBytes(c, 400);
    expect(refused(await mail(), 451, '4.7.1', 'rate_limited')).toMatch(/^Sending volume limit for your account reached \(1kB per 1h\); try again in \d+ seconds$/);
  });

  test('a window that ends lets the quota start over', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'setTimeout', 'clearTimeout'] });
    const { limits } = setup(`${QUIET}messagesPerUser: 2/1m`);
    const c = { ...client('192.0.2.1', { user: 'alice' }), sender: 'a@example.com' };
    await limits.mailFrom(c);
    await limits.mailFrom(c);
    expect(await limits.mailFrom(c)).toBeDefined();
    vi.advanceTimersByTime(60_001);
    expect(await limits.mailFrom(c)).toBeUndefined();
  });
});

describe('overrides', () => {
  const OVERRIDES = `${QUIET}messagesPerUser: 2/1h
overrides:
  - name: payroll
    users: [Payroll@Example.com]
    messagesPerUser: 5/1h
  - name: bulk
    groups: [bulk]
    messagesPerUser: 4/1h
  - name: office
    cidrs: [198.51.100.0/24, "2001:db8:aa::/48"]
    messagesPerUser: 3/1h
    concurrentPerIp: 1
`;

  async function allowedMessages(facts: ClientFacts): Promise<number> {
    let n = 0;
    while (n < 20 && (await h!.limits.mailFrom({ ...facts, sender: 'x@example.com' })) === undefined) n++;
    return n;
  }

  test('a listed user, a group member and a client inside a CIDR each get their own quota; others keep the default', async () => {
    setup(OVERRIDES);
    expect(await allowedMessages(client('192.0.2.1', { user: 'payroll@example.com' }))).toBe(5);
    expect(await allowedMessages(client('192.0.2.1', { user: 'newsletter', groups: ['bulk'] }))).toBe(4);
    expect(await allowedMessages(client('198.51.100.20', { user: 'carol' }))).toBe(3);
    expect(await allowedMessages(client('2001:db8:aa:1::5', { user: 'dave' }))).toBe(3);
    expect(await allowedMessages(client('192.0.2.1', { user: 'erin' }))).toBe(2);
  });

  test('per key, the first matching override wins', () => {
    const config = limitsConfigSchema.parse(parseYaml(OVERRIDES));
    const r = resolveQuotas(config, { user: 'payroll@example.com', groups: ['bulk'], ip: parseIp('198.51.100.1') });
    expect(r.quotas.messagesPerUser).toEqual({ amount: 5, windowMs: 3_600_000 });
    expect(r.quotas.concurrentPerIp).toBe(1);
    expect(r.applied).toEqual(['payroll', 'office']);
  });

  test('a CIDR override changes connection limits; "off" lifts a limit for whoever matches', async () => {
    const { limits } = setup(`connectionRate: off\nconcurrentPerIp: 1\noverrides:\n  - cidrs: [203.0.113.0/24]\n    concurrentPerIp: off\n`);
    for (let i = 0; i < 5; i++) expect(await limits.connectionOpened(client('203.0.113.9'))).toBeUndefined();
    expect(await limits.connectionOpened(client('192.0.2.1'))).toBeUndefined();
    expect(await limits.connectionOpened(client('192.0.2.1'))).toBeDefined();
  });
});

describe('compromised-account brake', () => {
  const BRAKE = `${QUIET}messagesPerUser: 2/1m\nrecipientsPerUser: 3/1m\nbrake: { quotaHits: 2, window: 1h }`;
  const alice = (extra: Partial<ClientFacts> = {}) => client('192.0.2.1', { user: 'alice', ...extra });

  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['Date', 'setTimeout', 'clearTimeout'] });
  });

  test('K quota hits within the window suspend the account until an admin clears it', async () => {
    const { limits, metric, logged } = setup(BRAKE);
    const mail = () => limits.mailFrom({ ...alice(), sender: 'alice@example.com' });
    await mail();
    await mail();
    refused(await mail(), 451, '4.7.1', 'rate_limited'); // hit 1
    refused(await mail(), 451, '4.7.1', 'rate_limited'); // a retry in the same window is not a new hit
    expect(await metric('smtpgate_quota_exhaustions_total', { limiter: 'messages_user' })).toBe(1);
    vi.advanceTimersByTime(61_000);
    await mail();
    await mail();
    const text = refused(await mail(), 550, '5.7.1', 'suspended'); // hit 2: suspended
    expect(text).toMatch(/suspended.*contact your administrator/);
    expect(await metric('smtpgate_account_suspensions_total')).toBe(1);
    expect(logged(/account suspended/)[0]).toMatchObject({ user: 'alice', client: '192.0.2.1', quotaHits: 2 });

    // While suspended: AUTH with the right password gets 535 5.7.8; nothing is relayed.
    vi.advanceTimersByTime(24 * 3_600_000);
    expect(refused(await succeededLogin(limits, { ...alice(), username: 'Alice' }), 535, '5.7.8', 'suspended')).toMatch(/contact your administrator/);
    refused(await mail(), 550, '5.7.1', 'suspended');
    refused(await limits.rcptTo({ ...alice(), recipientsSoFar: 0 }), 550, '5.7.1', 'suspended');
    expect((await limits.listState()).suspendedUsers.map((s) => s.user)).toEqual(['alice']);

    const cleared = await limits.clear('ALICE');
    expect(cleared.kind).toBe('user');
    expect(cleared.removed).toContainEqual({ limiter: 'suspension', key: 'alice' });
    expect(await succeededLogin(limits, { ...alice(), username: 'alice' })).toBeUndefined();
    expect(await mail()).toBeUndefined();
  });

  test('recipient and byte quotas count as hits too', async () => {
    const { limits } = setup(`${QUIET}recipientsPerUser: 2/1m\nbytesPerUser: 100/1m\nbrake: { quotaHits: 2, window: 1h }`);
    const rcpt = () => limits.rcptTo({ ...alice(), recipientsSoFar: 0 });
    await rcpt();
    await rcpt();
    refused(await rcpt(), 451, '4.7.1', 'rate_limited'); // hit 1
    await limits.messageBytes(alice(), 150); // uses up the byte quota: hit 2
    refused(await limits.mailFrom({ ...alice(), sender: 'a@example.com' }), 550, '5.7.1', 'suspended');
  });

  test('hits spread wider than the brake window do not suspend', async () => {
    const { limits } = setup(`${QUIET}messagesPerUser: 1/1m\nbrake: { quotaHits: 2, window: 10m }`);
    const mail = () => limits.mailFrom({ ...alice(), sender: 'a@example.com' });
    await mail();
    refused(await mail(), 451, '4.7.1', 'rate_limited');
    vi.advanceTimersByTime(11 * 60_000);
    await mail();
    refused(await mail(), 451, '4.7.1', 'rate_limited');
  });

  test('with suspendFor, a suspension lifts by itself', async () => {
    const { limits } = setup(`${QUIET}messagesPerUser: 1/1m\nbrake: { quotaHits: 1, window: 1h, suspendFor: 2h }`);
    const mail = () => limits.mailFrom({ ...alice(), sender: 'a@example.com' });
    await mail();
    refused(await mail(), 550, '5.7.1', 'suspended');
    expect((await limits.listState()).suspendedUsers[0]!.until).not.toBeNull();
    vi.advanceTimersByTime(2 * 3_600_000 + 1000);
    expect(await mail()).toBeUndefined();
  });

  test('a brake that trips again during the suspension leaves it as it is: same start, same expiry, counted and announced once', async () => {
    const { limits, metric, logged } = setup(`${QUIET}messagesPerUser: 1/1m\nbytesPerUser: 100/1m\nbrake: { quotaHits: 1, window: 1h, suspendFor: 2h }`);
    const heard: SuspensionEvent[] = [];
    limits.onSuspended((e) => heard.push(e));
    const inData = alice(); // a session whose message is under way when the account is suspended
    const mail = () => limits.mailFrom({ ...alice(), sender: 'a@example.com' });
    await mail();
    refused(await mail(), 550, '5.7.1', 'suspended'); // the hit that suspends
    const [before] = (await limits.listState()).suspendedUsers;

    vi.advanceTimersByTime(10 * 60_000);
    await limits.messageBytes(inData, 150); // its message is relayed: the byte quota runs out, the brake trips again
    expect((await limits.listState()).suspendedUsers).toEqual([before]);
    expect(await metric('smtpgate_account_suspensions_total')).toBe(1);
    expect(heard).toHaveLength(1);
    expect(logged(/account suspended/)).toHaveLength(1);
    expect(logged(/quota ran out while the account is suspended/)).toEqual([
      expect.objectContaining({ level: 'info', session: inData.session, client: '192.0.2.1', user: 'alice', limiter: 'bytes_user', msg: `quota ran out while the account is suspended (since ${before!.since})` }),
    ]);

    // It lifts 2h after it began, not 2h after the second trip.
    vi.advanceTimersByTime(110 * 60_000 + 1000);
    expect(await mail()).toBeUndefined();
  });

  test('the reason for a suspension is only told after a correct password', async () => {
    const { limits } = setup(`${QUIET}messagesPerUser: 1/1m\nbrake: { quotaHits: 1, window: 1h }`);
    await limits.mailFrom({ ...alice(), sender: 'a@example.com' });
    await limits.mailFrom({ ...alice(), sender: 'a@example.com' });
    expect((await limits.authAllowed({ ...alice(), username: 'alice' })).refusal).toBeUndefined();
  });
});

describe('config reload', () => {
  test('new quotas apply at the next check, counts and open connections stay; a new store is refused', async () => {
    const { limits } = setup(`connectionRate: off\nconcurrentPerIp: 1\nmessagesPerUser: 2/1h`);
    const c = { ...client('192.0.2.1', { user: 'alice' }), sender: 'a@example.com' };
    expect(await limits.connectionOpened(c)).toBeUndefined();
    await limits.mailFrom(c);
    await limits.mailFrom(c);
    expect(await limits.mailFrom(c)).toBeDefined();
    limits.reconfigure(limitsConfigSchema.parse(parseYaml(`connectionRate: off\nconcurrentPerIp: 1\nmessagesPerUser: 4/1h`)));
    // The count stays (the limit is not part of the key): 2 sent and 1 refused leave 1 of the new 4.
    expect(await limits.mailFrom(c)).toBeUndefined();
    expect(await limits.mailFrom(c)).toBeDefined();
    expect(await limits.connectionOpened(client('192.0.2.1'))).toBeDefined();
    expect(() => limits.reconfigure(limitsConfigSchema.parse({ store: { kind: 'redis', url: 'redis://127.0.0.1:1' } }))).toThrow(/restart/);
    expect(limits.config.messagesPerUser).toEqual({ amount: 4, windowMs: 3_600_000 });
  });
});

describe('metrics', () => {
  test('decisions are counted by limiter and result; the memory store is always up', async () => {
    const { limits, metric } = setup('connectionRate: 1/1m\nconcurrentPerIp: off');
    await limits.connectionOpened(client('192.0.2.1'));
    await limits.connectionOpened(client('192.0.2.1'));
    expect(await metric('smtpgate_limiter_decisions_total', { limiter: 'connection_rate', result: 'allowed' })).toBe(1);
    expect(await metric('smtpgate_limiter_decisions_total', { limiter: 'connection_rate', result: 'limited' })).toBe(1);
    expect(await metric('smtpgate_limiter_store_up')).toBe(1);
  });
});
