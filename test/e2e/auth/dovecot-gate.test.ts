/**
 * `auth.backend: dovecot` through a real smtpgate, against a real Dovecot: what the client is
 * answered (235, 535, 454), what the log tells apart, the attributes file and the policy rules
 * applied to the user Dovecot names, the auth cache carrying known users through an outage,
 * the brute-force lockout still counting with the cache on, and `smtpgate check --probe`.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { formatCredentialLine, generateSecret, hashSecret } from '../../../src/auth/credentials-file.js';
import { ALICE, IVAN, startGate, withShippedPolicies, writeGateFiles, type Gate, type GateUser } from '../../helpers/gate.js';
import { runCli } from '../../helpers/cli.js';
import type { AuthInput } from '../../helpers/config.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { startDovecot, type TestDovecot } from '../../helpers/dovecot.js';
import { describeWith } from '../../helpers/programs.js';
import { closeBackend, forThisTest, readyForAuth, stopGate } from '../../helpers/sessions.js';

const ERIN: GateUser = { name: 'erin', password: 'erin password' };

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

/** The log line of the last auth refusal for `user`. */
function authRefusal(gate: Gate, user: string): Record<string, unknown> | undefined {
  return gate.logs.findLast((l) => l.stage === 'auth' && l.user === user && typeof l.authResult === 'string');
}

function dovecotAuth(dovecot: TestDovecot, more: Partial<AuthInput> = {}): AuthInput {
  return { backend: 'dovecot', dovecot: { socket: dovecot.socketPath, timeout: '3s' }, attributes: 'attributes.yaml', ...more };
}

describeWith(['dovecot', 'doveadm'], 'AUTH through the dovecot source', () => {
  let dovecot: TestDovecot;
  let backend: RecordingBackend;
  let gate: Gate;
  beforeAll(async () => {
    dovecot = await startDovecot({ users: { alice: { password: ALICE.password, scheme: 'SHA512-CRYPT' }, ivan: { password: IVAN.password }, erin: { password: ERIN.password } }, disabled: ['erin'] });
    backend = await startRecordingBackend();
    gate = await startGate({
      backendPort: backend.port,
      users: [],
      auth: dovecotAuth(dovecot),
      config: { policies: 'policies' },
      beforeStart: withShippedPolicies(),
    });
  });
  afterAll(async () => {
    await gate?.stop();
    await backend?.close();
    await dovecot?.stop();
  });

  test('the right password is 235 with AUTH PLAIN and with AUTH LOGIN (smtpgate asks Dovecot with PLAIN either way)', async () => {
    const c = await readyForAuth(gate);
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    const l = await readyForAuth(gate);
    expect((await l.cmd('AUTH LOGIN')).code).toBe(334);
    expect((await l.cmd(b64(ALICE.name))).code).toBe(334);
    expect((await l.cmd(b64(ALICE.password))).code).toBe(235);
    expect(gate.logs.filter((x) => x.msg === 'authenticated' && x.user === 'alice' && x.source === 'dovecot')).toHaveLength(2);
  });

  test('a wrong password, an unknown user and a disabled account all get 535 5.7.8; the log tells them apart', async () => {
    const c = await readyForAuth(gate);
    expect((await c.authPlain(ALICE.name, 'not her password')).raw).toMatch(/^535 5\.7\.8 /);
    expect(authRefusal(gate, 'alice')).toMatchObject({ source: 'dovecot', authResult: 'bad_credentials' });
    expect((await c.authPlain('mallory', 'whatever')).raw).toMatch(/^535 5\.7\.8 /);
    expect(authRefusal(gate, 'mallory')).toMatchObject({ source: 'dovecot', authResult: 'bad_credentials' });
    expect((await c.authPlain(ERIN.name, ERIN.password)).raw).toMatch(/^535 5\.7\.8 /);
    expect(authRefusal(gate, 'erin')).toMatchObject({ source: 'dovecot', authResult: 'disabled', detail: expect.stringContaining('user_disabled') });
    expect(JSON.stringify(gate.logs)).not.toContain('not her password');
  });

  test('the user Dovecot names ("Ivan" → ivan) gets ivan\'s attributes: sender binding and the interns\' group rule apply', async () => {
    const c = await readyForAuth(gate);
    expect((await c.authPlain('Ivan', IVAN.password)).code).toBe(235);
    expect(gate.logs.findLast((l) => l.msg === 'authenticated')).toMatchObject({ user: 'ivan', source: 'dovecot' });
    expect((await c.cmd('MAIL FROM:<alice@corp.example>')).raw).toMatch(/^553 5\.7\.1 /);
    expect((await c.cmd('MAIL FROM:<ivan@corp.example>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<x@gmail.com>')).raw).toBe('550 5.7.1 Interns may only write to corp.example and partner.example');
    expect((await c.cmd('RCPT TO:<y@corp.example>')).code).toBe(250);
  });
});

describeWith(['dovecot', 'doveadm'], 'the dovecot source down, with the auth cache on', () => {
  test('Dovecot down: 454 4.7.0 for a user not in the cache, 235 for one who signed in before; back up: 235 again', async () => {
    const dovecot = await forThisTest(startDovecot({ users: { alice: { password: ALICE.password }, ivan: { password: IVAN.password } } }), (d) => d.stop());
    const backend = await forThisTest(startRecordingBackend(), closeBackend);
    const gate = await forThisTest(
      startGate({ backendPort: backend.port, users: [], auth: { ...dovecotAuth(dovecot), cache: { ttl: '10m', negativeTtl: '30s' } }, beforeStart: withShippedPolicies() }),
      stopGate,
    );
    expect((await (await readyForAuth(gate)).authPlain(ALICE.name, ALICE.password)).code).toBe(235);

    await dovecot.kill();
    const c = await readyForAuth(gate);
    expect((await c.authPlain(IVAN.name, IVAN.password)).raw).toMatch(/^454 4\.7\.0 /);
    expect(authRefusal(gate, 'ivan')).toMatchObject({ source: 'dovecot', authResult: 'unavailable', detail: expect.stringContaining(`dovecot auth at ${dovecot.socketPath}: `) });
    const cached = await readyForAuth(gate);
    expect((await cached.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    expect(gate.logs.findLast((l) => l.msg === 'authenticated')).toMatchObject({ user: 'alice', cached: true });
    // The entry is for the password it was given: another one is a miss, and Dovecot is down.
    expect((await (await readyForAuth(gate)).authPlain(ALICE.name, 'wrong')).raw).toMatch(/^454 4\.7\.0 /);

    await dovecot.start();
    expect((await (await readyForAuth(gate)).authPlain(IVAN.name, IVAN.password)).code).toBe(235);
  });

  test('the lockout still counts wrong passwords when the cache answers them: the third locks alice out (454 even with the right password)', async () => {
    const dovecot = await forThisTest(startDovecot({ users: { alice: { password: ALICE.password } } }), (d) => d.stop());
    const backend = await forThisTest(startRecordingBackend(), closeBackend);
    const gate = await forThisTest(
      startGate({
        backendPort: backend.port,
        users: [],
        auth: { ...dovecotAuth(dovecot), cache: { ttl: '10m', negativeTtl: '10m' } },
        config: { limits: { auth: { failuresPerUserIp: '3/15m', lockFor: '1m' } } },
        beforeStart: withShippedPolicies(),
      }),
      stopGate,
    );
    const guesser = await readyForAuth(gate);
    // The same wrong password three times: the second and third are the cache's answers.
    for (let i = 0; i < 3; i++) expect((await guesser.authPlain(ALICE.name, 'guess')).raw).toMatch(/^535 5\.7\.8 /);
    expect(gate.logs.filter((l) => l.stage === 'auth' && l.user === 'alice' && l.cached === true).length).toBeGreaterThanOrEqual(2);
    const owner = await readyForAuth(gate);
    expect((await owner.authPlain(ALICE.name, ALICE.password)).raw).toMatch(/^454 4\.7\.0 Too many failed logins/);
  });
});

describeWith(['dovecot', 'doveadm'], 'smtpgate check --probe with the dovecot source', () => {
  test("reports Dovecot's protocol and mechanisms; with Dovecot down it exits 1, naming the socket and the fix", async () => {
    const dovecot = await forThisTest(startDovecot({ users: { alice: { password: ALICE.password } } }), (d) => d.stop());
    const { configFile } = await writeGateFiles({ backendPort: 2525, users: [], auth: { backend: 'dovecot', dovecot: { socket: dovecot.socketPath } } });
    const at = dovecot.socketPath.replace(/[.]/g, '\\.');
    const up = await runCli(['check', '--config', configFile, '--probe']);
    expect(up).toMatchObject({ code: 0, stdout: expect.stringMatching(new RegExp(`^auth\\.dovecot: OK: dovecot auth at ${at}: protocol 1\\.\\d+, auth process \\d+, mechanisms PLAIN LOGIN$`, 'm')) });

    await dovecot.kill();
    const down = await runCli(['check', '--config', configFile, '--probe']);
    expect(down.code).toBe(1);
    expect(down.stdout).toMatch(new RegExp(`^auth\\.dovecot: FAILED: dovecot auth at ${at}: connect ECONNREFUSED .*\\(the socket exists but nobody listens: is Dovecot running\\?\\)$`, 'm'));
  });
});

describeWith(['dovecot', 'doveadm'], 'app passwords with Dovecot as the account source (auth.dovecot.lookupSocket)', () => {
  let dovecot: TestDovecot;
  let backend: RecordingBackend;
  let gate: Gate;
  const made = (user: string, label: string) => {
    const secret = generateSecret();
    return { secret, line: formatCredentialLine({ user, label, hash: hashSecret(secret), created: new Date() }) };
  };
  const alicePhone = made('alice', 'phone');
  const erinScanner = made('erin', 'scanner');
  beforeAll(async () => {
    dovecot = await startDovecot({ users: { alice: { password: ALICE.password }, erin: { password: ERIN.password } }, disabled: ['erin'], userdb: true });
    backend = await startRecordingBackend();
    gate = await startGate({
      backendPort: backend.port,
      users: [],
      auth: { backend: 'dovecot', dovecot: { socket: dovecot.socketPath, lookupSocket: dovecot.userdbSocketPath, timeout: '3s' }, credentials: 'credentials' },
      beforeStart: (dir) => writeFile(path.join(dir, 'credentials'), `${alicePhone.line}\n${erinScanner.line}\n`),
    });
  });
  afterAll(async () => {
    await gate?.stop();
    await backend?.close();
    await dovecot?.stop();
  });

  test('an app password signs alice in; Dovecot was asked about the account (a passdb lookup), not the secret', async () => {
    const c = await readyForAuth(gate);
    expect((await c.authPlain('alice', alicePhone.secret)).code).toBe(235);
    expect(gate.logs.findLast((l) => l.msg === 'authenticated')).toMatchObject({ user: 'alice', source: 'dovecot', credential: 'phone' });
    expect(await dovecot.log()).not.toContain(alicePhone.secret);
  });

  test('an app password of an account Dovecot refuses (deny passdb) gets 535, logged as disabled', async () => {
    const c = await readyForAuth(gate);
    expect((await c.authPlain('erin', erinScanner.secret)).raw).toMatch(/^535 5\.7\.8 /);
    expect(authRefusal(gate, 'erin')).toMatchObject({ source: 'dovecot', authResult: 'disabled', credential: 'scanner' });
  });
});
