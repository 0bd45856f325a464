/**
 * Unknown users and wrong passwords must look the same from outside, or AUTH becomes a user
 * enumeration oracle. Wall-clock comparisons are flaky, so this pins down the cause instead:
 * a bcrypt verification runs for an unknown user too, against a hash of a real user's cost.
 * `verify` is wrapped in a spy (the real function still runs) for the in-process gate.
 */
import { beforeEach, expect, vi } from 'vitest';
import * as bcrypt from '@node-rs/bcrypt';
import { ALICE, type Gate } from '../../helpers/gate.js';
import { gateTest } from '../../helpers/fixtures.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

vi.mock('@node-rs/bcrypt', async (importOriginal) => {
  const real = await importOriginal<typeof import('@node-rs/bcrypt')>();
  return { ...real, verify: vi.fn((password: string | Buffer, hash: string | Buffer) => real.verify(password, hash)) };
});

const verify = vi.mocked(bcrypt.verify);

// A block body: a function returned from beforeEach would be run as its teardown.
beforeEach(() => {
  verify.mockClear();
});

async function authPlain(gate: Gate, user: string, password: string): Promise<number> {
  const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true });
  await c.read();
  await c.cmd('EHLO client.test');
  const reply = await c.authPlain(user, password);
  c.close();
  return reply.code;
}

/** The bcrypt cost of a "$2b$04$…" hash. */
const cost = (hash: string) => hash.slice(4, 6);

gateTest('a wrong password for a known user runs one bcrypt verification against that user', async ({ gate }) => {
  expect(await authPlain(gate, ALICE.name, 'wrong password')).toBe(535);
  expect(verify).toHaveBeenCalledTimes(1);
  expect(verify.mock.calls[0]![0]).toBe('wrong password');
});

gateTest('an unknown user also runs one bcrypt verification, against a dummy hash of the same cost', async ({ gate }) => {
  expect(await authPlain(gate, ALICE.name, 'wrong password')).toBe(535);
  const known = verify.mock.calls[0]![1] as string;
  verify.mockClear();

  expect(await authPlain(gate, 'mallory', 'wrong password')).toBe(535);
  expect(verify).toHaveBeenCalledTimes(1);
  const [password, hash] = verify.mock.calls[0]! as [string, string];
  expect(password).toBe('wrong password');
  expect(hash).not.toBe(known);
  expect(cost(hash)).toBe(cost(known));
  // The verification itself ran to completion (a rejected promise would be a shortcut).
  await expect(verify.mock.results[0]!.value).resolves.toBe(false);
});
