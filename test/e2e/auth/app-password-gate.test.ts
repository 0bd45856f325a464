/**
 * App passwords through the real proxy (auth.credentials), with the users file as the account
 * source: a device signs in with its own secret (235), and is refused (535, counted toward the
 * lockout like a wrong password) when the secret is revoked, expired, used from another network
 * or listener, or its account is gone. Users who must use app passwords have their own password
 * refused with a 535 that says so, without it being checked. Every later log line of a session
 * names the credential; the metric counts sign-ins by credential kind.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { startRecordingBackend } from '../../helpers/backends.js';
import { ALICE, metricValue, startGate, type Gate, type GateUser, type StartGateOptions } from '../../helpers/gate.js';
import { envelope, eventually, readyForAuth, stopGate } from '../../helpers/sessions.js';
import { formatCredentialLine, generateSecret, hashSecret } from '../../../src/auth/credentials-file.js';

const BOB: GateUser = { name: 'bob', password: 'bob password 12345' };
const PRINTER: GateUser = { name: 'printer@corp.example', password: 'printer directory password' };

interface Made {
  readonly user: string;
  readonly label: string;
  readonly secret: string;
  readonly line: string;
}

/** A credential as `smtpgate credential add` writes it (the CLI has its own tests). */
function credential(user: string, label: string, opts: { networks?: string[]; listeners?: string[]; expires?: Date } = {}): Made {
  const secret = generateSecret();
  const line = formatCredentialLine({ user, label, hash: hashSecret(secret), created: new Date(), ...opts });
  return { user, label, secret, line };
}

async function gateWith(made: readonly Made[], opts: { auth?: Record<string, unknown>; attributes?: string; limits?: Record<string, unknown>; policy?: string; users?: GateUser[] } = {}): Promise<Gate> {
  const backend = await startRecordingBackend();
  onTestFinished(() => backend.close());
  const options: StartGateOptions = {
    backendPort: backend.port,
    users: opts.users ?? [ALICE, BOB, PRINTER],
    auth: { users: 'users', credentials: 'credentials', reloadInterval: '100ms', ...(opts.attributes ? { attributes: 'attributes.yaml' } : {}), ...opts.auth },
    config: { ...(opts.limits ? { limits: opts.limits } : {}), ...(opts.policy ? { policies: 'policies' } : {}) } as StartGateOptions['config'],
    beforeStart: async (dir) => {
      await writeFile(path.join(dir, 'credentials'), `# app passwords\n${made.map((m) => `${m.line}\n`).join('')}`, { mode: 0o640 });
      if (opts.attributes) await writeFile(path.join(dir, 'attributes.yaml'), opts.attributes);
      if (opts.policy) {
        await mkdir(path.join(dir, 'policies'));
        await writeFile(path.join(dir, 'policies', '10-rules.yaml'), opts.policy);
      }
    },
  };
  const gate = await startGate(options);
  onTestFinished(() => stopGate(gate));
  return gate;
}

async function signIn(gate: Gate, user: string, password: string, localAddress?: string): Promise<string> {
  const c = await readyForAuth(gate, localAddress ? { localAddress } : {});
  const reply = (await c.authPlain(user, password)).raw;
  c.close();
  return reply;
}

/** The failed-AUTH log line for `user`, once the gate has written it. */
async function failureLine(gate: Gate, user: string): Promise<Record<string, unknown>> {
  let line: Record<string, unknown> | undefined;
  await eventually(() => (line = gate.logs.find((l) => l.stage === 'auth' && l.user === user && typeof l.code === 'number')) !== undefined, `the refusal line for ${user}`);
  return line!;
}

describe('app passwords (auth.credentials)', () => {
  test('a device signs in with its app password; every later line of its session names the credential', async () => {
    const scanner = credential('alice', 'scanner-2nd-floor');
    const gate = await gateWith([scanner]);
    const c = await readyForAuth(gate);
    expect((await c.authPlain('alice', scanner.secret)).code).toBe(235);
    const { data } = await envelope(c, 'alice@corp.example', ['bob@corp.example']);
    expect(data?.code).toBe(354);
    expect((await c.cmd('Subject: scan\r\n\r\npage 1\r\n.')).code).toBe(250);
    await c.cmd('QUIT');
    c.close();
    await eventually(() => gate.logs.some((l) => l.msg === 'transaction' && l.outcome === 'relayed'), 'the transaction record');
    const authenticated = gate.logs.find((l) => l.msg === 'authenticated')!;
    expect(authenticated).toMatchObject({ user: 'alice', source: 'file', credential: 'scanner-2nd-floor' });
    const session = authenticated.session;
    const after = gate.logs.slice(gate.logs.indexOf(authenticated)).filter((l) => l.session === session);
    expect(after.length).toBeGreaterThan(2);
    for (const l of after) expect(l.credential, `${String(l.msg)} names the credential`).toBe('scanner-2nd-floor');
    expect(JSON.stringify(gate.logs)).not.toContain(scanner.secret);
    expect(await metricValue(gate, 'smtpgate_auth_attempts_total', { credential: 'app_password', result: 'success' })).toBe(1);
    expect(await metricValue(gate, 'smtpgate_auth_attempts_total', { credential: 'password' })).toBe(0);
  });

  test('the directory password keeps working beside app passwords, and is counted as a password', async () => {
    const gate = await gateWith([credential('alice', 'phone')]);
    expect(await signIn(gate, 'alice', ALICE.password)).toMatch(/^235 /);
    expect(await metricValue(gate, 'smtpgate_auth_attempts_total', { credential: 'password', result: 'success' })).toBe(1);
  });

  test.each([
    ['another user', (m: Made) => ['bob', m.secret], /no app password of bob matches/],
    ['a revoked-looking secret (right shape, no such credential)', () => ['alice', generateSecret()], /no app password of alice matches/],
  ])('the secret with %s is refused with 535 and never reaches the account source as a password', async (_what, attempt, detail) => {
    const m = credential('alice', 'laptop');
    const gate = await gateWith([m]);
    const [user, password] = attempt(m) as [string, string];
    expect(await signIn(gate, user, password)).toMatch(/^535 5\.7\.8 /);
    const line = await failureLine(gate, user);
    expect(line).toMatchObject({ code: 535, reason: 'auth_failed', source: 'app-password', authResult: 'bad_credentials' });
    expect(String(line.detail)).toMatch(detail);
    expect(await metricValue(gate, 'smtpgate_auth_source_seconds_count', { source: 'file' })).toBe(0);
  });

  test('a credential is refused from outside its networks and admitted from inside them (535 with the reason in the log)', async () => {
    const printer = credential('printer@corp.example', 'mfp-3', { networks: ['127.0.0.2/32', '2001:db8::/48'] });
    const gate = await gateWith([printer]);
    expect(await signIn(gate, printer.user, printer.secret, '127.0.0.1')).toMatch(/^535 5\.7\.8 /);
    const line = await failureLine(gate, printer.user);
    expect(line).toMatchObject({ credential: 'mfp-3', authResult: 'bad_credentials' });
    expect(String(line.detail)).toContain('not for client 127.0.0.1 (only 127.0.0.2/32, 2001:db8::/48)');
    expect(await signIn(gate, printer.user, printer.secret, '127.0.0.2')).toMatch(/^235 /);
  });

  test('a credential scoped to another listener is refused here', async () => {
    const m = credential('alice', 'relay-only', { listeners: ['submission'] });
    const gate = await gateWith([m]);
    expect(await signIn(gate, 'alice', m.secret)).toMatch(/^535 /);
    expect(String((await failureLine(gate, 'alice')).detail)).toContain('is not for listener smtps (only submission)');
  });

  test('an expired credential is refused', async () => {
    const m = credential('alice', 'old-phone', { expires: new Date(Date.now() - 1000) });
    const gate = await gateWith([m]);
    expect(await signIn(gate, 'alice', m.secret)).toMatch(/^535 /);
    expect(String((await failureLine(gate, 'alice')).detail)).toMatch(/app password old-phone expired at \d{4}-/);
  });

  test('a revoked credential is refused once the file is reloaded; the others keep working', async () => {
    const keep = credential('alice', 'keep');
    const revoke = credential('alice', 'revoke');
    const gate = await gateWith([keep, revoke]);
    expect(await signIn(gate, 'alice', revoke.secret)).toMatch(/^235 /);
    const file = path.join(gate.dir, 'credentials');
    await writeFile(file, (await readFile(file, 'utf8')).replace(`${revoke.line}\n`, ''));
    await eventually(() => gate.logs.some((l) => l.msg === 'users reloaded' && l.credentials === 1), 'the reload of the credentials file');
    expect(await signIn(gate, 'alice', revoke.secret)).toMatch(/^535 /);
    expect(await signIn(gate, 'alice', keep.secret)).toMatch(/^235 /);
  });

  test('a reload drops the lines of the credentials file that are broken, never keeping an old copy: the good lines keep working', async () => {
    const keep = credential('alice', 'tablet');
    const broken = credential('alice', 'phone');
    const gate = await gateWith([keep, broken]);
    expect(await signIn(gate, 'alice', broken.secret)).toMatch(/^235 /);
    // An edit that mangles the phone's line (a half-finished hand edit, a bad merge).
    await writeFile(path.join(gate.dir, 'credentials'), `${keep.line}\n${broken.line.replace('$sgap1$', '$sgap9$')}\n`);
    const failed = () => gate.logs.find((l) => l.msg === 'app passwords file has problems: those lines are ignored (their app passwords do not work) until fixed');
    await eventually(() => failed() !== undefined, 'the reload that found the problem');
    expect(JSON.stringify(failed())).toContain('not an app password hash');
    expect(await signIn(gate, 'alice', broken.secret)).toMatch(/^535 /);
    expect(await signIn(gate, 'alice', keep.secret)).toMatch(/^235 /);
    expect(await metricValue(gate, 'smtpgate_config_last_reload_successful', { component: 'credentials' })).toBe(0);
  });

  test('a revoke takes effect even while the users file is broken, and deleting the file revokes every app password', async () => {
    const revoke = credential('alice', 'revoke-me');
    const other = credential('bob', 'other');
    const gate = await gateWith([revoke, other]);
    await writeFile(path.join(gate.dir, 'users'), 'alice:not-a-bcrypt-hash\n');
    const file = path.join(gate.dir, 'credentials');
    await writeFile(file, `${other.line}\n`);
    await eventually(() => gate.logs.some((l) => l.msg === 'users reload failed; the previous users stay in force'), 'the failed users reload');
    expect(await signIn(gate, 'alice', revoke.secret)).toMatch(/^535 /);
    expect(await signIn(gate, 'bob', other.secret)).toMatch(/^235 /);
    await rm(file);
    await eventually(() => gate.logs.some((l) => l.msg === 'app passwords file unreadable: no app password works until it can be read'), 'the reload of the deleted file');
    expect(await signIn(gate, 'bob', other.secret)).toMatch(/^535 /);
  });

  test('an app password typed in capitals or with a space around it still signs in, and never reaches the users file as a password', async () => {
    const m = credential('alice', 'old-printer');
    const gate = await gateWith([m]);
    expect(await signIn(gate, 'alice', ` ${m.secret.toUpperCase()} `)).toMatch(/^235 /);
    expect(await signIn(gate, 'alice', `${generateSecret().toUpperCase()} `)).toMatch(/^535 /);
    expect(await metricValue(gate, 'smtpgate_auth_source_seconds_count', { source: 'file', result: 'bad_credentials' })).toBe(0);
  });

  test('one user\'s app password typed with another user\'s spelling reaches only its own account', async () => {
    // A case-sensitive source with two accounts whose names differ only in case.
    const m = credential('alice', 'laptop');
    const gate = await gateWith([m], { users: [ALICE, { name: 'Alice', password: 'another alice entirely' }] });
    expect(await signIn(gate, 'Alice', m.secret)).toMatch(/^235 /);
    let line: Record<string, unknown> | undefined;
    await eventually(() => (line = gate.logs.find((l) => l.msg === 'authenticated')) !== undefined, 'the sign-in line');
    expect(line).toMatchObject({ user: 'alice', credential: 'laptop' });
  });

  test('with app passwords off (no auth.credentials), a password of their shape is refused and never sent to the users file', async () => {
    const m = credential('alice', 'left-over');
    const gate = await gateWith([m], { auth: { credentials: undefined } });
    expect(await signIn(gate, 'alice', m.secret)).toMatch(/^535 /);
    expect(await metricValue(gate, 'smtpgate_auth_source_seconds_count', { source: 'file' })).toBe(0);
  });

  test('signing in with an app password does not clear the failures counted against the user\'s own password', async () => {
    const m = credential('alice', 'phone');
    const gate = await gateWith([m], { limits: { auth: { failuresPerUserIp: '3/15m' } } });
    expect(await signIn(gate, 'alice', 'guess 1')).toMatch(/^535 /);
    expect(await signIn(gate, 'alice', 'guess 2')).toMatch(/^535 /);
    expect(await signIn(gate, 'alice', m.secret)).toMatch(/^235 /);
    expect(await signIn(gate, 'alice', 'guess 3')).toMatch(/^535 /);
    expect(await signIn(gate, 'alice', ALICE.password)).toMatch(/^454 4\.7\.0 /);
  });

  test('an app password of an account that is gone from its source is refused', async () => {
    const m = credential('carol', 'ghost');
    const gate = await gateWith([m]);
    expect(await signIn(gate, 'carol', m.secret)).toMatch(/^535 /);
    const line = await failureLine(gate, 'carol');
    expect(line).toMatchObject({ credential: 'ghost', authResult: 'bad_credentials' });
    expect(String(line.detail)).toContain('no auth source knows carol');
  });

  test('wrong app passwords count toward the lockout like wrong passwords', async () => {
    const m = credential('alice', 'phone');
    const gate = await gateWith([m], { limits: { auth: { failuresPerUserIp: '3/15m' } } });
    for (let i = 0; i < 3; i++) expect(await signIn(gate, 'alice', generateSecret())).toMatch(/^535 /);
    // Locked out: even the right app password is not checked now.
    expect(await signIn(gate, 'alice', m.secret)).toMatch(/^454 4\.7\.0 /);
    expect(await metricValue(gate, 'smtpgate_auth_attempts_total', { credential: 'app_password', result: 'failure' })).toBe(3);
  });

  describe('auth.requireAppPassword', () => {
    const ATTRIBUTES = `bob:\n  groups: [printers]\nalice:\n  groups: [staff]\n`;

    test('a listed user\'s own password is refused with a 535 saying to use an app password; their app password works', async () => {
      const m = credential('printer@corp.example', 'mfp');
      const gate = await gateWith([m], { auth: { requireAppPassword: { users: ['Printer@corp.example'] } } });
      const reply = await signIn(gate, PRINTER.name, PRINTER.password);
      expect(reply).toMatch(/^535 5\.7\.8 .*must sign in with an app password/);
      const line = await failureLine(gate, PRINTER.name);
      expect(line).toMatchObject({ reason: 'app_password_required', authResult: 'app_password_required' });
      expect(String(line.detail)).toContain('the password given was not checked');
      // Not checked: a wrong password gets the very same answer.
      expect(await signIn(gate, PRINTER.name, 'not the password at all')).toBe(reply);
      expect(await signIn(gate, PRINTER.name, m.secret)).toMatch(/^235 /);
    });

    test('a group that must use app passwords: its members\' passwords are refused, others\' are not', async () => {
      const gate = await gateWith([credential('bob', 'mfp')], { attributes: ATTRIBUTES, auth: { requireAppPassword: { groups: ['Printers'] } } });
      expect(await signIn(gate, 'bob', BOB.password)).toMatch(/^535 5\.7\.8 .*app password/);
      expect(String((await failureLine(gate, 'bob')).detail)).toContain('bob is in group Printers');
      expect(await signIn(gate, 'alice', ALICE.password)).toMatch(/^235 /);
    });

    test('a wrong password of a user who must use app passwords counts toward the lockout too', async () => {
      const gate = await gateWith([], { auth: { requireAppPassword: { users: ['bob'] } }, limits: { auth: { failuresPerUserIp: '2/15m' } } });
      expect(await signIn(gate, 'bob', 'guess 1')).toMatch(/^535 /);
      expect(await signIn(gate, 'bob', 'guess 2')).toMatch(/^535 /);
      expect(await signIn(gate, 'bob', BOB.password)).toMatch(/^454 /);
    });
  });

  test('a policy rule can tell how a session signed in (authMethod)', async () => {
    const m = credential('alice', 'script');
    const policy = `rules:
  - name: scripts-send-internally-only
    stage: rcpt
    when: { authMethod: app_password, not: { recipientDomain: corp.example } }
    action: reject
    reply: "550 5.7.1 App passwords may only send inside corp.example"
`;
    const gate = await gateWith([m], { policy });
    const app = await readyForAuth(gate);
    expect((await app.authPlain('alice', m.secret)).code).toBe(235);
    const viaApp = await envelope(app, 'alice@corp.example', ['x@elsewhere.example']);
    expect(viaApp.rcpt[0]?.raw).toMatch(/^550 5\.7\.1 App passwords may only/);
    const pw = await readyForAuth(gate);
    expect((await pw.authPlain('alice', ALICE.password)).code).toBe(235);
    const viaPassword = await envelope(pw, 'alice@corp.example', ['x@elsewhere.example']);
    expect(viaPassword.rcpt[0]?.code).toBe(250);
  });
});
