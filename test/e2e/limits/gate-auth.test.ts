/**
 * The AUTH brute-force lockout through the real proxy, over sockets: wrong passwords lock a
 * user out from that address (454 4.7.0, even with the right password, on a fresh
 * connection), insisting gets 421 and a closed connection, and the lockout ends by itself.
 * With the memory store, `smtpgate limits list|clear` reach the running instance through its
 * admin address.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect, test } from 'vitest';
import { ALICE, metricValue, startGate, type Gate } from '../../helpers/gate.js';
import { startRecordingBackend } from '../../helpers/backends.js';
import { closeBackend, eventually, forThisTest, readyForAuth, stopGate } from '../../helpers/sessions.js';
import { freePort } from '../../helpers/redis.js';
import { SmtpTalk, type Reply } from '../../helpers/smtp-talk.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../../..');
const CLI = path.join(ROOT, 'dist/cli/main.js');

async function gateWithLockout(opts: { lockFor: string; metricsAddress?: string }): Promise<Gate> {
  const backend = await forThisTest(startRecordingBackend(), closeBackend);
  return forThisTest(
    startGate({
      backendPort: backend.port,
      ...(opts.metricsAddress ? { metricsAddress: opts.metricsAddress } : {}),
      config: { limits: { auth: { failuresPerUserIp: '3/15m', lockFor: opts.lockFor, refusalsBeforeDisconnect: 2 } } },
    }),
    stopGate,
  );
}

function retrySecondsIn(reply: Reply): number {
  const m = /try again in (\d+) seconds/.exec(reply.raw);
  if (!m) throw new Error(`no retry time in ${JSON.stringify(reply.raw)}`);
  return Number(m[1]);
}

test('three wrong passwords lock the user out from that address: 454 4.7.0 with the retry time even for the right password, 421 after refusalsBeforeDisconnect more tries, 235 once the lockout has expired', async () => {
  const gate = await gateWithLockout({ lockFor: '2s' });
  const lockoutsBefore = await metricValue(gate, 'smtpgate_auth_lockouts_total', { scope: 'user_ip' });

  const guesser = await readyForAuth(gate);
  for (let i = 0; i < 3; i++) expect((await guesser.authPlain(ALICE.name, `wrong-${i}`)).raw).toMatch(/^535 5\.7\.8 /);
  guesser.close();

  // A fresh connection with the right password: still locked out, told when to come back.
  const owner = await readyForAuth(gate);
  const first = await owner.authPlain(ALICE.name, ALICE.password);
  expect(first.raw).toMatch(/^454 4\.7\.0 Too many failed logins for this user from your address; try again in \d+ seconds$/);
  expect(retrySecondsIn(first)).toBeGreaterThanOrEqual(1);
  expect(retrySecondsIn(first)).toBeLessThanOrEqual(2);
  // refusalsBeforeDisconnect: 2 → the 2nd refusal is still a 454, the 3rd closes the connection.
  expect((await owner.authPlain(ALICE.name, ALICE.password)).raw).toMatch(/^454 4\.7\.0 /);
  const last = await owner.authPlain(ALICE.name, ALICE.password);
  expect(last.raw).toMatch(/^421 4\.7\.0 Too many login attempts during a lockout; closing connection, try again in \d+ seconds$/);
  await owner.closed;

  expect(await metricValue(gate, 'smtpgate_auth_lockouts_total', { scope: 'user_ip' })).toBe(lockoutsBefore + 1);
  // One lockout, one line (the limits'); each refused AUTH has its own "refused:" line besides.
  const lines = gate.logs.filter((l) => /lockout/i.test(String(l.msg)) && !String(l.msg).startsWith('refused: '));
  expect(lines, 'the lockout log line').toEqual([
    expect.objectContaining({ msg: 'AUTH lockout: too many failed logins for this user from this address', client: '127.0.0.1', user: 'alice', scope: 'user_ip', failures: 3, level: 'warn' }),
  ]);

  // lockFor: 2s. Bounded poll, one fresh connection each time, until the right password is admitted.
  const lockedAt = Date.now();
  let admitted: Reply | undefined;
  while (!admitted) {
    const c = await readyForAuth(gate);
    const r = await c.authPlain(ALICE.name, ALICE.password);
    c.close();
    if (r.code === 235) admitted = r;
    else expect(r.raw).toMatch(/^454 4\.7\.0 /);
    if (!admitted) {
      expect(Date.now() - lockedAt, 'the lockout should end after lockFor (2s)').toBeLessThan(5_000);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  expect(admitted.raw).toMatch(/^235 /);
});

test('with the memory store, `smtpgate limits list` and `limits clear` reach the running instance through its admin address (/limits on the metrics port)', async () => {
  const metricsPort = await freePort();
  // A lockout long enough to outlast a few CLI start-ups.
  const gate = await gateWithLockout({ lockFor: '15m', metricsAddress: `127.0.0.1:${metricsPort}` });
  const configFile = path.join(gate.dir, 'smtpgate.yaml');

  const guesser = await readyForAuth(gate);
  for (let i = 0; i < 3; i++) expect((await guesser.authPlain(ALICE.name, `wrong-${i}`)).code).toBe(535);
  guesser.close();

  const listed = await run(process.execPath, [CLI, 'limits', 'list', '--config', configFile]);
  expect(listed.stdout).toMatch(/\(store: memory, up\)/);
  expect(listed.stdout).toMatch(/locked-out users:\n {2}alice from 127\.0\.0\.1 {2}3 failures {2}\d+s left/);

  const locked = await readyForAuth(gate);
  expect((await locked.authPlain(ALICE.name, ALICE.password)).code).toBe(454);
  locked.close();

  const cleared = await run(process.execPath, [CLI, 'limits', 'clear', 'alice', '--json', '--config', configFile]);
  expect(JSON.parse(cleared.stdout)).toMatchObject({ target: 'alice', kind: 'user', removed: expect.arrayContaining([{ limiter: 'auth_user_ip', key: 'alice|127.0.0.1' }]) });
  const admitted = await readyForAuth(gate);
  expect((await admitted.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
  await eventually(() => gate.logs.some((l) => l.msg === 'limits cleared by an admin' && l.target === 'alice'), 'the clear is logged');
});

test('clients that hang up while their AUTH is being checked leave no limiter state behind', async () => {
  const backend = await forThisTest(startRecordingBackend(), closeBackend);
  const gate = await forThisTest(startGate({ backendPort: backend.port }), stopGate);
  for (let i = 0; i < 10; i++) {
    const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true });
    await c.read();
    await c.cmd('EHLO client.test');
    c.write(`AUTH PLAIN ${Buffer.from('\0alice\0wrong').toString('base64')}\r\n`);
    c.close();
  }
  await eventually(() => gate.app.limits.openSessions === 0, 'every session to be released');
  // bcrypt finishes after the close: give the last checks time to come back, then look again.
  await new Promise((r) => setTimeout(r, 300));
  expect(gate.app.limits.openSessions).toBe(0);
});
