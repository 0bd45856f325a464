/**
 * `smtpgate auth cache clear [--user NAME]` against the real binary: it reaches the running
 * instance's auth cache through the admin address (each worker's, with `workers`), says how
 * many remembered sign-ins went, and fails loudly when there is no cache or nothing answers.
 */
import { randomUUID } from 'node:crypto';
import { expect, onTestFinished, test } from 'vitest';
import { ALICE } from '../../helpers/gate.js';
import { startRecordingBackend } from '../../helpers/backends.js';
import { closeBackend, deadPort, eventually, forThisTest } from '../../helpers/sessions.js';
import { scrapeMetric, startChildGate, type ChildGate } from '../../helpers/child-gate.js';
import { runCli } from '../../helpers/cli.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';
import { describeWith } from '../../helpers/programs.js';

const BOB = { name: 'bob', password: 'bob has another password' };

async function gate(opts: { cache?: boolean; workers?: number } = {}): Promise<ChildGate> {
  const backend = await forThisTest(startRecordingBackend(), closeBackend);
  const g = await startChildGate({
    backendPort: backend.port,
    users: [ALICE, BOB],
    metricsAddress: `127.0.0.1:${await deadPort()}`,
    auth: { users: 'users', ...(opts.cache === false ? {} : { cache: { ttl: '10m', negativeTtl: '30s' } }) },
    config: {
      limits: { connectionRate: 'off', ...(opts.workers ? { store: { kind: 'redis', url: 'redis://127.0.0.1:6379', keyPrefix: `cache-cli-${randomUUID().slice(0, 8)}` } } : {}) },
      ...(opts.workers ? { workers: opts.workers } : {}),
    },
  });
  onTestFinished(() => g.stop());
  return g;
}

/** One sign-in over implicit TLS; the reply code. */
async function signIn(g: ChildGate, user: { name: string; password: string }): Promise<number> {
  const c = await SmtpTalk.connect(g.port('smtps'), { implicitTls: true });
  try {
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    return (await c.authPlain(user.name, user.password)).code;
  } finally {
    c.close();
  }
}

const clear = (g: ChildGate, ...args: string[]) => runCli(['auth', 'cache', 'clear', '--config', g.files.configFile, ...args]);

test('clear forgets every remembered sign-in, and --user only that user\'s', async () => {
  const g = await gate();
  expect(await signIn(g, ALICE)).toBe(235);
  expect(await signIn(g, BOB)).toBe(235);
  expect(await signIn(g, { name: 'alice', password: 'a wrong one' })).toBe(535);
  expect(await scrapeMetric(g.metricsPort, 'smtpgate_auth_cache_entries')).toBe(3);

  const one = await clear(g, '--user', 'alice');
  expect(one).toMatchObject({ code: 0 });
  expect(one.stdout).toBe('auth cache cleared for alice: 2 remembered sign-ins forgotten\n');
  expect(await scrapeMetric(g.metricsPort, 'smtpgate_auth_cache_entries')).toBe(1);

  const all = await clear(g, '--json');
  expect(all.code).toBe(0);
  expect(JSON.parse(all.stdout)).toEqual({ cleared: 1 });
  expect(await scrapeMetric(g.metricsPort, 'smtpgate_auth_cache_entries')).toBe(0);
  // The instance writes its log in batches (up to 250 ms): wait for both lines.
  const cleared = () => g.logs.filter((l) => l.msg === 'auth cache cleared').map((l) => [l.user, l.cleared]);
  await eventually(() => cleared().length === 2, 'both clears to be logged');
  expect(cleared()).toEqual([
    ['alice', 2],
    [undefined, 1],
  ]);
  // The next sign-in asks the users file again.
  const misses = await scrapeMetric(g.metricsPort, 'smtpgate_auth_cache_misses_total');
  expect(await signIn(g, ALICE)).toBe(235);
  expect(await scrapeMetric(g.metricsPort, 'smtpgate_auth_cache_misses_total')).toBe(misses + 1);
});

test('without auth.cache it exits 1 and says there is nothing to clear', async () => {
  const g = await gate({ cache: false });
  const r = await clear(g);
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/auth\.cache is not set: nothing is cached/);
});

test('with an instance that is not running it exits 1 and names the address it tried', async () => {
  const g = await gate();
  await g.stop();
  const r = await clear(g);
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/could not reach the running smtpgate at http:\/\/127\.0\.0\.1:\d+ \(metrics\.address\)/);
});

describeWith(['redis-server'], 'with workers (a Redis store)', () => {
  test('with workers: 2, every worker\'s cache is emptied through the primary', async () => {
    const g = await gate({ workers: 2 });
    // Enough sign-ins that the kernel hands some to each worker.
    for (let i = 0; i < 8; i++) expect(await signIn(g, ALICE)).toBe(235);
    const held = await scrapeMetric(g.metricsPort, 'smtpgate_auth_cache_entries');
    expect(held).toBeGreaterThanOrEqual(1);
    expect(held).toBeLessThanOrEqual(2);
    const r = await clear(g, '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ cleared: held });
    expect(await scrapeMetric(g.metricsPort, 'smtpgate_auth_cache_entries')).toBe(0);
  });
});
