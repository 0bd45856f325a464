/**
 * App passwords as an operator and a device meet them, with the real binary on both sides:
 * `smtpgate credential add` against the running instance's config prints a secret, the device
 * signs in with it (235), `credential list` shows when and from where it was last used (asked of
 * the running instance, memory store), `credential revoke` removes it, and the running instance
 * refuses it (535) once it has reloaded the file.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { expect, test } from 'vitest';
import { startRecordingBackend } from '../../helpers/backends.js';
import { startChildGate } from '../../helpers/child-gate.js';
import { runCli } from '../../helpers/cli.js';
import { freePort } from '../../helpers/redis.js';
import { eventually } from '../../helpers/sessions.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

async function signIn(port: number, user: string, password: string): Promise<string> {
  const c = await SmtpTalk.connect(port, { implicitTls: true });
  try {
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO printer.test')).code).toBe(250);
    return (await c.authPlain(user, password)).raw;
  } finally {
    c.close();
  }
}

test('add → sign in → list shows the last use → revoke → refused after the reload', async () => {
  const backend = await startRecordingBackend();
  const gate = await startChildGate({
    backendPort: backend.port,
    metricsAddress: `127.0.0.1:${await freePort()}`,
    auth: { users: 'users', credentials: 'credentials', reloadInterval: '200ms' },
    beforeStart: (dir) => writeFile(path.join(dir, 'credentials'), '# app passwords\n', { mode: 0o640 }),
  });
  try {
    const config = gate.files.configFile;
    const added = await runCli(['credential', 'add', 'alice', '--label', 'printer-3rd-floor', '--networks', '127.0.0.0/8', '--expires', '365d', '--config', config]);
    expect(added.code).toBe(0);
    const secret = added.stdout.trim();
    expect(secret).toMatch(/^sgap[a-z2-7]{26}$/);

    // The instance picks the new line up within auth.reloadInterval.
    await eventually(() => gate.logs.some((l) => l.msg === 'users reloaded' && l.credentials === 1), 'the reload after the add', 10_000);
    expect(await signIn(gate.port('smtps'), 'alice', secret)).toMatch(/^235 /);

    let listed = '';
    await eventually(async () => (listed = (await runCli(['credential', 'list', 'alice', '--config', config])).stdout).includes('from 127.0.0.1'), 'the last use in the list', 20_000);
    expect(listed).toMatch(/printer-3rd-floor\s+127\.0\.0\.0\/8/);

    const revoked = await runCli(['credential', 'revoke', 'alice', 'printer-3rd-floor', '--config', config]);
    expect(revoked.code).toBe(0);
    await eventually(() => gate.logs.some((l) => l.msg === 'users reloaded' && l.credentials === 0), 'the reload after the revoke', 10_000);
    expect(await signIn(gate.port('smtps'), 'alice', secret)).toMatch(/^535 5\.7\.8 /);
    expect(gate.output()).not.toContain(secret);
  } finally {
    await gate.stop();
    await backend.close();
  }
  // Four CLI runs and two reloads of a child process: seconds each on a loaded machine.
}, 120_000);
