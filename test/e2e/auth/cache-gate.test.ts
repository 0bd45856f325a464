/**
 * The auth cache through a real gate (`auth.cache`), over STARTTLS: a repeated sign-in is
 * answered without a bcrypt verification, the brute-force lockout still counts and still
 * refuses with the cache on, and a users-file reload makes a remembered sign-in stop working.
 *
 * One gate for the file; each test signs in as its own user, so one test's lockout or
 * reload doesn't touch another's.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { hashSync } from '@node-rs/bcrypt';
import { expect } from 'vitest';
import { ALICE, metricValue, type Gate, type GateUser } from '../../helpers/gate.js';
import { gateTest } from '../../helpers/fixtures.js';
import { eventually } from '../../helpers/sessions.js';
import { SmtpTalk, type Reply } from '../../helpers/smtp-talk.js';

const BOB: GateUser = { name: 'bob', password: 'bobs password' };
const CAROL: GateUser = { name: 'carol', password: 'carols password' };
const DAVE: GateUser = { name: 'dave', password: 'daves password' };
const USERS = [ALICE, BOB, CAROL, DAVE];

gateTest.override('gateOptions', {
  users: USERS,
  auth: { backend: ['file'], users: 'users', cache: { ttl: '10m', negativeTtl: '30s' }, reloadInterval: '100ms' },
  config: { limits: { auth: { failuresPerUserIp: '3/15m', lockFor: '15m' } } },
});

/** STARTTLS on the submission listener, EHLO again, AUTH PLAIN; the reply to AUTH. */
async function signIn(gate: Gate, user: string, password: string): Promise<Reply> {
  const c = await SmtpTalk.connect(gate.port('submission'));
  try {
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    expect((await c.starttls()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    return await c.authPlain(user, password);
  } finally {
    c.close();
  }
}

const cacheHits = (gate: Gate, outcome: 'success' | 'failure') => metricValue(gate, 'smtpgate_auth_cache_hits_total', { outcome });
/** How many times the users file was asked (a bcrypt verification each). */
const fileAsked = (gate: Gate) => metricValue(gate, 'smtpgate_auth_source_seconds_count', { source: 'file' });

gateTest('a second sign-in with the same password is answered from the cache: a hit is counted, the users file is not asked, the log says cached', async ({ gate }) => {
  expect((await signIn(gate, ALICE.name, ALICE.password)).code).toBe(235);
  const hits = await cacheHits(gate, 'success');
  const asked = await fileAsked(gate);

  expect((await signIn(gate, ALICE.name, ALICE.password)).code).toBe(235);
  expect(await cacheHits(gate, 'success')).toBe(hits + 1);
  expect(await fileAsked(gate)).toBe(asked);
  await eventually(() => gate.logs.some((l) => l.msg === 'authenticated' && l.user === 'alice' && l.cached === true && l.source === 'file'), 'the cached sign-in to be logged');
});

gateTest('the lockout counts with the cache on: remembered refusals count as failures, and once locked out even the remembered right password gets the lockout reply', async ({ gate }) => {
  expect((await signIn(gate, BOB.name, BOB.password)).code).toBe(235); // now remembered
  const failureHits = await cacheHits(gate, 'failure');
  // The same wrong password three times: the file refuses it once, the cache twice.
  for (let i = 0; i < 3; i++) expect((await signIn(gate, BOB.name, 'guess')).raw).toMatch(/^535 5\.7\.8 /);
  expect(await cacheHits(gate, 'failure')).toBe(failureHits + 2);

  const successHits = await cacheHits(gate, 'success');
  const locked = await signIn(gate, BOB.name, BOB.password);
  expect(locked.raw).toMatch(/^454 4\.7\.0 Too many failed logins for this user from your address; try again in \d+ seconds$/);
  // The lockout is checked before the cache is asked.
  expect(await cacheHits(gate, 'success')).toBe(successHits);
});

gateTest('a users-file reload makes remembered sign-ins stop working: a removed user is refused, a changed password is refused and the new one accepted', async ({ gate }) => {
  expect((await signIn(gate, CAROL.name, CAROL.password)).code).toBe(235);
  expect((await signIn(gate, DAVE.name, DAVE.password)).code).toBe(235);
  expect((await signIn(gate, DAVE.name, DAVE.password)).code).toBe(235); // from the cache
  const reloads = await metricValue(gate, 'smtpgate_reloads_total', { component: 'users', result: 'success' });

  // carol removed, dave's password changed.
  const kept = USERS.filter((u) => u !== CAROL && u !== DAVE);
  const newDavePassword = 'daves new password';
  await writeFile(path.join(gate.dir, 'users'), [...kept.map((u) => `${u.name}:${hashSync(u.password, 4)}\n`), `dave:${hashSync(newDavePassword, 4)}\n`].join(''));
  await eventually(async () => (await metricValue(gate, 'smtpgate_reloads_total', { component: 'users', result: 'success' })) > reloads, 'the users file to be reloaded');
  expect(gate.logs.find((l) => l.msg === 'users reloaded')).toMatchObject({ authCacheCleared: expect.any(Number) });

  expect((await signIn(gate, CAROL.name, CAROL.password)).raw).toMatch(/^535 5\.7\.8 /);
  expect((await signIn(gate, DAVE.name, DAVE.password)).raw).toMatch(/^535 5\.7\.8 /);
  expect((await signIn(gate, DAVE.name, newDavePassword)).code).toBe(235);
});

gateTest('auth.backend [file] with the cache: an unknown user gets 535, and so does the remembered refusal; the log tells them apart', async ({ gate }) => {
  const failureHits = await cacheHits(gate, 'failure');
  expect((await signIn(gate, 'mallory', 'anything')).raw).toMatch(/^535 5\.7\.8 /);
  expect((await signIn(gate, 'mallory', 'anything')).raw).toMatch(/^535 5\.7\.8 /);
  expect(await cacheHits(gate, 'failure')).toBe(failureHits + 1);
  const refusals = () => gate.logs.filter((l) => l.msg === 'refused: Authentication credentials invalid' && l.user === 'mallory');
  await eventually(() => refusals().length === 2, 'both refusals to be logged');
  // No source knew mallory, so none is named (auth/chain.ts).
  expect(refusals()).toEqual([
    expect.objectContaining({ code: 535, reason: 'auth_failed', authResult: 'unknown_user' }),
    expect.objectContaining({ code: 535, reason: 'auth_failed', authResult: 'unknown_user', cached: true }),
  ]);
  expect(refusals()[0]).not.toHaveProperty('cached');
});
