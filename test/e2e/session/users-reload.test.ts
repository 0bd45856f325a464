/**
 * The users and attributes files are re-read when they change; a broken file keeps the old
 * users in force.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { hashSync } from '@node-rs/bcrypt';
import { expect } from 'vitest';
import { ALICE, metricValue, type Gate } from '../../helpers/gate.js';
import { gateTest } from '../../helpers/fixtures.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

gateTest.override('gateOptions', {
  auth: { users: 'users', attributes: 'attributes.yaml', reloadInterval: '100ms' },
  beforeStart: async (dir: string) => writeFile(path.join(dir, 'attributes.yaml'), 'alice:\n  addresses: [alice@corp.test]\n  groups: [staff]\n'),
});

async function login(gate: Gate, user: string, password: string): Promise<number> {
  const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true });
  await c.read();
  await c.cmd('EHLO client.test');
  const code = (await c.authPlain(user, password)).code;
  c.close();
  return code;
}

async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

gateTest('attributes are loaded at start and available for policy', ({ gate }) => {
  expect(gate.app.userAttributes('alice')).toEqual({ addresses: ['alice@corp.test'], groups: ['staff'] });
  expect(gate.app.userAttributes('nobody')).toEqual({ addresses: [], groups: [] });
});

gateTest('a changed users file is picked up without a restart', async ({ gate }) => {
  expect(await login(gate, 'bob', 'bobs password')).toBe(535);
  await writeFile(path.join(gate.dir, 'users'), `alice:${hashSync(ALICE.password, 4)}\nbob:${hashSync('bobs password', 4)}\n`);
  await until(async () => (await login(gate, 'bob', 'bobs password')) === 235, 'bob to be able to log in');
  expect(await login(gate, ALICE.name, ALICE.password)).toBe(235);
});

gateTest('a broken users file keeps the old users, is logged and counted', async ({ gate }) => {
  const failures = await metricValue(gate, 'smtpgate_reloads_total', { component: 'users', result: 'failure' });
  await writeFile(path.join(gate.dir, 'users'), 'alice:not-a-bcrypt-hash\n');
  await until(async () => (await metricValue(gate, 'smtpgate_reloads_total', { component: 'users', result: 'failure' })) > failures, 'the failed reload to be counted');
  expect(await login(gate, ALICE.name, ALICE.password)).toBe(235);
  // The line is written right after the count, through the logger's stream: wait for it too.
  await until(async () => gate.logs.some((l) => l.msg === 'users reload failed; the previous users stay in force' && String(l.problems).includes('users:1')), 'the failed reload to be logged');
});

gateTest('a broken attributes file keeps the old attributes', async ({ gate }) => {
  await writeFile(path.join(gate.dir, 'attributes.yaml'), 'alice:\n  addresses: [not an address]\n');
  expect(await gate.app.reloadUsers()).toBe(false);
  expect(gate.app.userAttributes('alice').groups).toEqual(['staff']);
});
