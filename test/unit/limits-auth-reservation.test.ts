/**
 * AUTH attempts take their place in the failure counts before the password is verified, so
 * parallel guesses can't all be verified (issue 14 item 1), and a limit's counts survive a
 * reload that changes it (item 8). Each behaviour runs on the memory store and on Redis (two
 * `Limits` on one Redis stand for two instances).
 *
 * `login` plays the listener's part: reserve, verify with a counting authenticator whose
 * verifications all wait on one gate (so every attempt is in flight at once), then report.
 */
import { afterAll, afterEach, describe, expect, test } from 'vitest';
import { parse as parseYaml } from 'yaml';
import type { Refusal } from '../../src/reply.js';
import type { AuthFacts, Limits } from '../../src/limits/limits.js';
import { limitsConfigSchema } from '../../src/limits/config.js';
import { describeWith } from '../helpers/programs.js';
import { Redis } from 'ioredis';
import { dropPrefix, limitsHarness, SHARED_REDIS_URL, succeededLogin, uniquePrefix, type LimitsHarness } from '../helpers/redis.js';

/** A password check that counts its calls; `open()` lets every waiting one finish. */
class CountingAuthenticator {
  verifications = 0;
  #waiting: (() => void)[] = [];
  #open = false;

  async verify(password: string): Promise<boolean> {
    this.verifications++;
    if (!this.#open) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    return password === 'right';
  }

  /** Resolves once `n` verifications are waiting. */
  async whenWaiting(n: number): Promise<void> {
    while (this.#waiting.length < n) await new Promise((r) => setImmediate(r));
  }

  open(): void {
    this.#open = true;
    for (const w of this.#waiting.splice(0)) w();
  }
}

type Outcome = { reply: 235 | 535 } | { reply: 'refused'; refusal: Refusal };

/** One AUTH as the listener runs it. */
async function login(limits: Limits, facts: AuthFacts, password: string, auth: CountingAuthenticator, opts: { reserve?: boolean } = {}): Promise<Outcome> {
  const attempt = await limits.authAllowed(facts, opts);
  if (attempt.refusal) return { reply: 'refused', refusal: attempt.refusal };
  if (await auth.verify(password)) {
    const refused = await limits.authSucceeded(facts, attempt.reservation);
    return refused ? { reply: 'refused', refusal: refused } : { reply: 235 };
  }
  await limits.authFailed(facts, attempt.reservation);
  return { reply: 535 };
}

let sessions = 0;
const from = (ip: string, username: string): AuthFacts => ({ session: `s${++sessions}`, ip, listener: 'submission', username });

function tally(outcomes: Outcome[]) {
  return {
    ok: outcomes.filter((o) => o.reply === 235).length,
    wrong: outcomes.filter((o) => o.reply === 535).length,
    lockedOut: outcomes.filter((o) => o.reply === 'refused' && o.refusal.code === 454 && o.refusal.enhanced === '4.7.0' && o.refusal.reason === 'locked_out').length,
  };
}

const QUIET = 'connectionRate: off\nconcurrentPerIp: off\nconcurrentPerListener: off\n';

/**
 * The same behaviours on each store. `instances(yaml, n)` gives n Limits that share one store;
 * `reload(h, yaml)` reconfigures one with a new `limits:` section on the same store.
 */
function behaviours(instances: (yaml: string, n: number) => Promise<LimitsHarness[]>, reload: (h: LimitsHarness, yaml: string) => void): void {
  test('20 parallel wrong passwords for one user from one address are 3 verifications and 3 × 535 for failuresPerUserIp 3; the other 17 get 454 4.7.0', async () => {
    const hs = await instances(`${QUIET}auth: { failuresPerUserIp: 3/15m, failuresPerIp: 100/15m, lockFor: 10m }`, 2);
    const auth = new CountingAuthenticator();
    const running = Array.from({ length: 20 }, (_, i) => login(hs[i % hs.length]!.limits, from('192.0.2.1', 'alice'), `wrong-${i}`, auth));
    await auth.whenWaiting(3);
    auth.open();
    expect(tally(await Promise.all(running))).toEqual({ ok: 0, wrong: 3, lockedOut: 17 });
    expect(auth.verifications).toBe(3);
    // The count is exactly the 3 failures (refused attempts gave their places back), and the right password is locked out too.
    const state = await hs[0]!.limits.listState();
    expect(state.lockedUsers).toEqual([{ user: 'alice', ip: '192.0.2.1', failures: 3, retryAfterSeconds: expect.any(Number) }]);
    expect(state.lockedUsers[0]!.retryAfterSeconds).toBeGreaterThan(590);
    expect((await login(hs[0]!.limits, from('192.0.2.1', 'alice'), 'right', auth)).reply).toBe('refused');
    let lockouts = 0;
    for (const h of hs) lockouts += await h.metric('smtpgate_auth_lockouts_total', { scope: 'user_ip' });
    expect(lockouts).toBe(1);
  });

  test('20 parallel wrong passwords from one address, each for another user, are 5 verifications for failuresPerIp 5', async () => {
    const hs = await instances(`${QUIET}auth: { failuresPerUserIp: 3/15m, failuresPerIp: 5/15m }`, 2);
    const auth = new CountingAuthenticator();
    const running = Array.from({ length: 20 }, (_, i) => login(hs[i % hs.length]!.limits, from('192.0.2.2', `user${i}`), 'wrong', auth));
    await auth.whenWaiting(5);
    auth.open();
    expect(tally(await Promise.all(running))).toEqual({ ok: 0, wrong: 5, lockedOut: 15 });
    expect(auth.verifications).toBe(5);
    expect((await hs.at(-1)!.limits.listState()).lockedIps).toEqual([{ ip: '192.0.2.2', failures: 5, retryAfterSeconds: expect.any(Number) }]);
  });

  test('a correct password in flight gives its place back: with 3 places, 1 right and 2 wrong leave room for exactly 1 more attempt', async () => {
    const hs = await instances(`${QUIET}auth: { failuresPerUserIp: off, failuresPerIp: 3/15m }`, 1);
    const limits = hs[0]!.limits;
    const auth = new CountingAuthenticator();
    const running = [login(limits, from('192.0.2.3', 'alice'), 'right', auth), login(limits, from('192.0.2.3', 'bob'), 'wrong', auth), login(limits, from('192.0.2.3', 'carol'), 'wrong', auth)];
    await auth.whenWaiting(3);
    // All three places are taken while the three are verified: a fourth is refused, and takes nothing.
    expect(await login(limits, from('192.0.2.3', 'dave'), 'wrong', auth)).toMatchObject({ reply: 'refused', refusal: { code: 454 } });
    auth.open();
    expect(tally(await Promise.all(running))).toEqual({ ok: 1, wrong: 2, lockedOut: 0 });
    expect((await limits.listState()).failureCounts).toEqual([{ ip: '192.0.2.3', failures: 2, limit: 3, windowEndsInSeconds: expect.any(Number) }]);
    expect((await login(limits, from('192.0.2.3', 'erin'), 'wrong', auth)).reply).toBe(535);
    expect(await login(limits, from('192.0.2.3', 'alice'), 'right', auth)).toMatchObject({ reply: 'refused', refusal: { code: 454 } });
    expect(auth.verifications).toBe(4);
  });

  test('a password that could not be checked gives its places back', async () => {
    const hs = await instances(`${QUIET}auth: { failuresPerUserIp: 2/15m, failuresPerIp: 2/15m }`, 1);
    const limits = hs[0]!.limits;
    for (let i = 0; i < 5; i++) {
      const attempt = await limits.authAllowed(from('192.0.2.4', 'alice'));
      expect(attempt.refusal).toBeUndefined();
      await limits.authAbandoned(attempt.reservation!);
    }
    expect((await limits.listState()).failureCounts).toEqual([]);
  });

  test('starting a lockout keeps the failures counted at the same moment: 40 attempts racing the lockout of one address leave exactly the limit counted, locked for lockFor', async () => {
    const hs = await instances(`${QUIET}auth: { failuresPerUserIp: off, failuresPerIp: 4/15m, lockFor: 10m }`, 2);
    const auth = new CountingAuthenticator();
    auth.open();
    // Failures finish (and the 4th starts the lockout) while the other attempts take and give back places.
    const outcomes = await Promise.all(Array.from({ length: 40 }, (_, i) => login(hs[i % hs.length]!.limits, from('192.0.2.5', `u${i}`), 'wrong', auth)));
    expect(tally(outcomes).wrong).toBe(4);
    const [locked] = (await hs[0]!.limits.listState()).lockedIps;
    expect(locked).toMatchObject({ ip: '192.0.2.5', failures: 4 });
    expect(locked!.retryAfterSeconds).toBeGreaterThan(590);
    expect(locked!.retryAfterSeconds).toBeLessThanOrEqual(600);
  });

  test('tightening failuresPerIp from 10 to 3 during an attack keeps the 5 failures counted: the address is locked out at once', async () => {
    const hs = await instances(`${QUIET}auth: { failuresPerUserIp: off, failuresPerIp: 10/15m }`, 1);
    const limits = hs[0]!.limits;
    const auth = new CountingAuthenticator();
    auth.open();
    for (let i = 0; i < 5; i++) expect((await login(limits, from('192.0.2.6', `u${i}`), 'wrong', auth)).reply).toBe(535);
    reload(hs[0]!, `${QUIET}auth: { failuresPerUserIp: off, failuresPerIp: 3/15m }`);
    expect(await login(limits, from('192.0.2.6', 'u9'), 'wrong', auth)).toMatchObject({ reply: 'refused', refusal: { code: 454, enhanced: '4.7.0', reason: 'locked_out' } });
    expect((await limits.listState()).lockedIps).toEqual([{ ip: '192.0.2.6', failures: 5, retryAfterSeconds: expect.any(Number) }]);
  });

  test('an active lockout outlasts a reload that changes the limit and its window: it keeps its end; new counters get the new window', async () => {
    const hs = await instances(`${QUIET}auth: { failuresPerUserIp: off, failuresPerIp: 3/15m, lockFor: 10m }`, 1);
    const limits = hs[0]!.limits;
    const auth = new CountingAuthenticator();
    auth.open();
    for (let i = 0; i < 3; i++) await login(limits, from('192.0.2.7', `u${i}`), 'wrong', auth);
    reload(hs[0]!, `${QUIET}auth: { failuresPerUserIp: off, failuresPerIp: 2/1h, lockFor: 10m }`);
    const refused = await login(limits, from('192.0.2.7', 'u9'), 'wrong', auth);
    expect(refused).toMatchObject({ reply: 'refused', refusal: { code: 454 } });
    const wait = Number(/try again in (\d+) seconds/.exec((refused as { refusal: Refusal }).refusal.text)![1]);
    expect(wait).toBeGreaterThan(590);
    expect(wait).toBeLessThanOrEqual(600);
    // A client seen first after the reload is counted in the new 1h window.
    await login(limits, from('192.0.2.8', 'u1'), 'wrong', auth);
    const [count] = (await limits.listState()).failureCounts;
    expect(count).toMatchObject({ ip: '192.0.2.8', failures: 1, limit: 2 });
    expect(count!.windowEndsInSeconds).toBeGreaterThan(3590);
  });

  describe('an attempt that reserves nothing (an app password: it cannot be guessed)', () => {
    const unreserved = { reserve: false };

    test('20 parallel right sign-ins of one device from one address all get 235, with failuresPerUserIp 3', async () => {
      const hs = await instances(`${QUIET}auth: { failuresPerUserIp: 3/15m, failuresPerIp: 5/15m, lockFor: 10m }`, 2);
      const auth = new CountingAuthenticator();
      const running = Array.from({ length: 20 }, (_, i) => login(hs[i % hs.length]!.limits, from('192.0.2.30', 'printer'), 'right', auth, unreserved));
      await auth.whenWaiting(20);
      auth.open();
      expect(tally(await Promise.all(running))).toEqual({ ok: 20, wrong: 0, lockedOut: 0 });
    });

    test('its failures are counted when they happen and lock out like any other: 3 wrong, then 454 4.7.0 for the next attempt of either kind', async () => {
      const [h] = await instances(`${QUIET}auth: { failuresPerUserIp: 3/15m, failuresPerIp: 100/15m, lockFor: 10m }`, 1);
      const auth = new CountingAuthenticator();
      auth.open();
      for (let i = 0; i < 3; i++) expect(await login(h!.limits, from('192.0.2.31', 'alice'), `wrong-${i}`, auth, unreserved)).toEqual({ reply: 535 });
      expect(tally([await login(h!.limits, from('192.0.2.31', 'alice'), 'right', auth, unreserved)]).lockedOut).toBe(1);
      expect(tally([await login(h!.limits, from('192.0.2.31', 'alice'), 'right', auth)]).lockedOut).toBe(1);
      expect(auth.verifications).toBe(3);
    });

    test('failures of both kinds add up in one count', async () => {
      const [h] = await instances(`${QUIET}auth: { failuresPerUserIp: 3/15m, failuresPerIp: 100/15m, lockFor: 10m }`, 1);
      const auth = new CountingAuthenticator();
      auth.open();
      expect(await login(h!.limits, from('192.0.2.32', 'alice'), 'wrong-a', auth)).toEqual({ reply: 535 });
      expect(await login(h!.limits, from('192.0.2.32', 'alice'), 'wrong-b', auth, unreserved)).toEqual({ reply: 535 });
      expect(await login(h!.limits, from('192.0.2.32', 'alice'), 'wrong-c', auth)).toEqual({ reply: 535 });
      expect(tally([await login(h!.limits, from('192.0.2.32', 'alice'), 'right', auth, unreserved)]).lockedOut).toBe(1);
    });
  });

  test('raising messagesPerUser on reload keeps the messages already counted', async () => {
    const hs = await instances(`${QUIET}messagesPerUser: 2/1h`, 1);
    const limits = hs[0]!.limits;
    const mail = () => limits.mailFrom({ session: `m${++sessions}`, ip: '192.0.2.9', listener: 'submission', user: 'alice', sender: 'alice@example.com' });
    expect(await mail()).toBeUndefined();
    expect(await mail()).toBeUndefined();
    reload(hs[0]!, `${QUIET}messagesPerUser: 3/1h`);
    expect(await mail()).toBeUndefined();
    expect(await mail()).toMatchObject({ code: 451, enhanced: '4.7.1' });
  });
}

describe('memory store', () => {
  let open: LimitsHarness[] = [];
  afterEach(async () => {
    await Promise.all(open.map((h) => h.close()));
    open = [];
  });
  // One process has one memory store: "instances" here are one Limits.
  behaviours(
    async (yaml) => {
      const h = limitsHarness(yaml);
      open.push(h);
      return [h];
    },
    (h, yaml) => h.limits.reconfigure(limitsConfigSchema.parse(parseYaml(yaml))),
  );
});

describeWith(['redis-server'], 'Redis store (instances sharing one Redis)', () => {
  const prefix = uniquePrefix('auth-reserve');
  let open: LimitsHarness[] = [];
  let tests = 0;
  afterEach(async () => {
    await Promise.all(open.map((h) => h.close()));
    open = [];
  });
  afterAll(() => dropPrefix(SHARED_REDIS_URL, prefix));
  const store = () => `store: { kind: redis, url: "${SHARED_REDIS_URL}", keyPrefix: "${prefix}-${tests}" }\n`;
  behaviours(
    async (yaml, n) => {
      tests++;
      const hs = Array.from({ length: n }, () => limitsHarness(`${store()}${yaml}`));
      open.push(...hs);
      for (const h of hs) expect(await h.limits.start(2000)).toBe(true);
      return hs;
    },
    (h, yaml) => h.limits.reconfigure(limitsConfigSchema.parse(parseYaml(`${store()}${yaml}`))),
  );

  test('a suspension stored by an earlier build (key "<prefix>:suspension:1-0:<user>") stays in force after the key layout changed', async () => {
    tests++;
    const r = new Redis(SHARED_REDIS_URL);
    try {
      await r.set(`${prefix}-${tests}:suspension:1-0:mallory`, String(Math.floor(Date.now() / 1000)));
    } finally {
      r.disconnect();
    }
    const h = limitsHarness(`${store()}${QUIET}`);
    open.push(h);
    expect(await h.limits.start(2000)).toBe(true);
    expect(await succeededLogin(h.limits, from('192.0.2.10', 'Mallory'))).toMatchObject({ code: 535, enhanced: '5.7.8', reason: 'suspended' });
    expect((await h.limits.listState()).suspendedUsers.map((u) => u.user)).toEqual(['mallory']);
  });
});
