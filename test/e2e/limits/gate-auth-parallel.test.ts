/**
 * Parallel wrong passwords against the real binary (`smtpgate run`, over sockets): each AUTH
 * takes its place in the failure counts before its password is verified, so however many
 * arrive at once, from one instance or several sharing Redis, exactly failuresPerUserIp of
 * them are verified and answered 535; the rest are told they are locked out (454 4.7.0).
 */
import { expect, onTestFinished, test } from 'vitest';
import { ALICE } from '../../helpers/gate.js';
import { startRecordingBackend } from '../../helpers/backends.js';
import { closeBackend, forThisTest } from '../../helpers/sessions.js';
import { scrapeMetric, startChildGate, type ChildGate } from '../../helpers/child-gate.js';
import type { LimitsInput } from '../../helpers/config.js';
import { describeWith } from '../../helpers/programs.js';
import { dropPrefix, SHARED_REDIS_URL, uniquePrefix } from '../../helpers/redis.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

const LIMITS: LimitsInput = {
  connectionRate: 'off',
  concurrentPerIp: 'off',
  concurrentPerListener: 'off',
  auth: { failuresPerUserIp: '3/15m', failuresPerIp: '100/15m', lockFor: '15m' },
};

async function gates(n: number, limits: LimitsInput): Promise<ChildGate[]> {
  const backend = await forThisTest(startRecordingBackend(), closeBackend);
  return Promise.all(
    Array.from({ length: n }, async () => {
      const g = await startChildGate({ backendPort: backend.port, config: { limits } });
      onTestFinished(() => g.stop());
      return g;
    }),
  );
}

/** `n` sessions spread over the gates, all greeted and past EHLO, then one AUTH each sent at the same moment. */
async function parallelAuth(gs: ChildGate[], n: number, password: (i: number) => string): Promise<string[]> {
  const sessions = await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const c = await SmtpTalk.connect(gs[i % gs.length]!.port('smtps'), { implicitTls: true });
      onTestFinished(() => c.close());
      expect((await c.read()).code).toBe(220);
      expect((await c.cmd('EHLO client.test')).code).toBe(250);
      return c;
    }),
  );
  return (await Promise.all(sessions.map((c, i) => c.authPlain(ALICE.name, password(i))))).map((r) => r.raw);
}

function tally(replies: string[]) {
  return {
    wrong: replies.filter((r) => /^535 5\.7\.8 Authentication credentials invalid$/.test(r)).length,
    lockedOut: replies.filter((r) => /^454 4\.7\.0 Too many failed logins for this user from your address; try again in \d+ seconds$/.test(r)).length,
  };
}

async function sum(gs: ChildGate[], name: string, labels: Record<string, string>): Promise<number> {
  let total = 0;
  for (const g of gs) total += await scrapeMetric(g.metricsPort, name, labels);
  return total;
}

test('24 wrong passwords for one user sent at once to one instance: exactly 3 are verified (535 5.7.8), 21 get 454 4.7.0, and the right password is locked out after', async () => {
  const gs = await gates(1, LIMITS);
  expect(tally(await parallelAuth(gs, 24, (i) => `wrong-${i}`))).toEqual({ wrong: 3, lockedOut: 21 });
  expect(await sum(gs, 'smtpgate_auth_attempts_total', { result: 'failure' })).toBe(3);
  expect(await sum(gs, 'smtpgate_auth_lockouts_total', { scope: 'user_ip' })).toBe(1);
  expect(tally(await parallelAuth(gs, 1, () => ALICE.password))).toEqual({ wrong: 0, lockedOut: 1 });
});

describeWith(['redis-server'], 'instances sharing Redis', () => {
  test('30 wrong passwords for one user sent at once, spread over three instances sharing Redis: exactly 3 are verified in all', async () => {
    const prefix = uniquePrefix('auth-parallel');
    onTestFinished(() => dropPrefix(SHARED_REDIS_URL, prefix));
    const gs = await gates(3, { ...LIMITS, store: { kind: 'redis', url: SHARED_REDIS_URL, keyPrefix: prefix } });
    expect(tally(await parallelAuth(gs, 30, (i) => `wrong-${i}`))).toEqual({ wrong: 3, lockedOut: 27 });
    expect(await sum(gs, 'smtpgate_auth_attempts_total', { result: 'failure' })).toBe(3);
    expect(await sum(gs, 'smtpgate_auth_lockouts_total', { scope: 'user_ip' })).toBe(1);
    expect(tally(await parallelAuth(gs, 3, () => ALICE.password))).toEqual({ wrong: 0, lockedOut: 3 });
  });

  test('a correct password among parallel wrong ones is admitted and gives its place back', async () => {
    const prefix = uniquePrefix('auth-parallel-ok');
    onTestFinished(() => dropPrefix(SHARED_REDIS_URL, prefix));
    const gs = await gates(2, { ...LIMITS, store: { kind: 'redis', url: SHARED_REDIS_URL, keyPrefix: prefix } });
    // 1 right and 1 wrong at once take 2 of the 3 places; the right one's goes back.
    const replies = await parallelAuth(gs, 2, (i) => (i === 0 ? ALICE.password : 'wrong'));
    expect(replies.filter((r) => r.startsWith('235 ')).length).toBe(1);
    // Whether the wrong one still counts depends on which of the two finished first (a sign-in
    // clears alice's count): one more right password, alone, clears it either way.
    expect((await parallelAuth(gs, 1, () => ALICE.password)).map((r) => r.slice(0, 4))).toEqual(['235 ']);
    // So, with every place given back, 3 more wrong passwords are verified before the lockout.
    expect(tally(await parallelAuth(gs, 6, (i) => `wrong-${i}`))).toEqual({ wrong: 3, lockedOut: 3 });
  });
});
