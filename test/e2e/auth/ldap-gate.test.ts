/**
 * Directory sign-in through the real proxy: `auth.backend: ldap` against a real slapd
 * (test/helpers/slapd.ts), seen by an SMTP client under TLS. The replies (235, 535 for a wrong
 * password, an unknown user and a disabled account alike, 454 4.7.0 while the directory is
 * down), the auth cache carrying signed-in users through an outage, sender binding and a
 * `group` rule decided from the directory's mail/proxyAddresses and memberOf, and the
 * brute-force lockout still counting with the cache on.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { startGate, writeGateFiles, type Gate, type StartGateOptions } from '../../helpers/gate.js';
import { runCli } from '../../helpers/cli.js';
import { describeWith } from '../../helpers/programs.js';
import { eventually, forThisTest, readyForAuth, stopGate } from '../../helpers/sessions.js';
import { formatCredentialLine, generateSecret, hashSecret } from '../../../src/auth/credentials-file.js';
import { PEOPLE, SERVICE_DN, SERVICE_PASSWORD, startSlapd, type Slapd } from '../../helpers/slapd.js';

const POLICY = `internalDomains: [corp.example]
rules:
  - name: sender-binding
    type: sender_binding
  - name: staff-may-not-send-to-press
    stage: rcpt
    when: { group: staff, recipient: "*@press.corp.example" }
    action: reject
    reply: "550 5.7.1 Staff talk to the press through the press office"
`;

interface LdapGateOptions {
  cache?: boolean;
  /** The app passwords file's lines (auth.credentials), and the rest of the auth section beside it. */
  credentials?: readonly string[];
  requireAppPassword?: { users?: string[]; groups?: string[] };
  limits?: NonNullable<StartGateOptions['config']>['limits'];
  /** What bindPasswordFile holds. */
  bindPassword?: string;
}

/** A gate whose only auth source is the directory, with its secrets and the policy above. */
function ldapGate(slapd: Slapd, backend: RecordingBackend, opts: LdapGateOptions = {}): Promise<Gate> {
  return startGate(ldapGateOptions(slapd, backend, opts));
}

function ldapGateOptions(slapd: Slapd, backend: RecordingBackend, { cache, limits, bindPassword = SERVICE_PASSWORD, credentials, requireAppPassword }: LdapGateOptions): StartGateOptions {
  return {
    backendPort: backend.port,
    auth: {
      backend: 'ldap',
      ldap: {
        url: slapd.ldapsUrl,
        ca: 'ldap-ca.pem',
        bindDn: SERVICE_DN,
        bindPasswordFile: 'ldap-bind-password',
        userBase: PEOPLE,
        addressAttributes: ['mail', 'proxyAddresses'],
        timeout: '2s',
      },
      ...(cache ? { cache: { ttl: '10m', negativeTtl: '30s' } } : {}),
      ...(credentials ? { credentials: 'credentials' } : {}),
      ...(requireAppPassword ? { requireAppPassword } : {}),
    },
    config: { policies: 'policies', ...(limits ? { limits } : {}) },
    beforeStart: async (dir) => {
      await writeFile(path.join(dir, 'ldap-ca.pem'), slapd.ca.cert);
      await writeFile(path.join(dir, 'ldap-bind-password'), `${bindPassword}\n`, { mode: 0o600 });
      if (credentials) await writeFile(path.join(dir, 'credentials'), credentials.map((l) => `${l}\n`).join(''));
      await mkdir(path.join(dir, 'policies'));
      await writeFile(path.join(dir, 'policies', '10-rules.yaml'), POLICY);
    },
  };
}

async function authReply(gate: Gate, user: string, password: string): Promise<string> {
  const c = await readyForAuth(gate);
  const reply = (await c.authPlain(user, password)).raw;
  c.close();
  return reply;
}

describeWith(['slapd', 'slapadd', 'ldapsearch'], 'directory sign-in through the gate (real slapd)', () => {
  let slapd: Slapd;
  let backend: RecordingBackend;
  beforeAll(async () => {
    [slapd, backend] = await Promise.all([startSlapd(), startRecordingBackend()]);
  });
  afterAll(async () => {
    await slapd?.stop();
    await backend?.close();
  });

  test('the right password gets 235; a wrong one, an unknown user and a disabled account get the same 535 5.7.8, and the log tells them apart', async () => {
    const gate = await forThisTest(ldapGate(slapd, backend), stopGate);
    expect(await authReply(gate, 'alice', 'alice-pw')).toMatch(/^235 2\.7\.0 /);
    const refusals = [await authReply(gate, 'alice', 'wrong'), await authReply(gate, 'mallory', 'whatever'), await authReply(gate, 'erin', 'erin-pw')];
    for (const r of refusals) expect(r).toMatch(/^535 5\.7\.8 /);
    expect(new Set(refusals).size, 'the client cannot tell the three apart').toBe(1);
    const logged = () => gate.logs.filter((l) => l.msg === 'refused: Authentication credentials invalid');
    await eventually(() => logged().length === 3, 'the three refusals to be logged');
    expect(logged().map((l) => [l.user, l.authResult, l.source])).toEqual([
      ['alice', 'bad_credentials', 'ldap'],
      // No source knew mallory, so none is named (auth/chain.ts).
      ['mallory', 'unknown_user', undefined],
      ['erin', 'disabled', 'ldap'],
    ]);
    expect(logged()[2]).toMatchObject({ detail: 'userAccountControl has ACCOUNTDISABLE' });
  });

  test('sender binding from mail and the SMTP proxyAddresses: alice may send as them, not as bob', async () => {
    const gate = await forThisTest(ldapGate(slapd, backend), stopGate);
    const c = await readyForAuth(gate);
    expect((await c.authPlain('alice', 'alice-pw')).code).toBe(235);
    expect((await c.cmd('MAIL FROM:<a.liddell@sales.corp.example>')).code).toBe(250);
    expect((await c.cmd('RSET')).code).toBe(250);
    expect((await c.cmd('MAIL FROM:<Alice@corp.example>')).code).toBe(250);
    expect((await c.cmd('RSET')).code).toBe(250);
    expect((await c.cmd('MAIL FROM:<bob@corp.example>')).raw).toMatch(/^553 5\.7\.1 /);
  });

  test('a group rule decided from memberOf: alice (staff) is refused at the press address, bob (no groups) is not', async () => {
    const gate = await forThisTest(ldapGate(slapd, backend), stopGate);
    for (const [user, expected] of [
      ['alice', /^550 5\.7\.1 Staff talk to the press through the press office/],
      ['bob', /^250 /],
    ] as const) {
      const c = await readyForAuth(gate);
      expect((await c.authPlain(user, `${user}-pw`)).code).toBe(235);
      expect((await c.cmd(`MAIL FROM:<${user}@corp.example>`)).code).toBe(250);
      expect((await c.cmd('RCPT TO:<desk@press.corp.example>')).raw).toMatch(expected);
      c.close();
    }
  });

  test('smtpgate check --probe binds with the service account and counts the users; a wrong bind password fails it, naming the fix', async () => {
    for (const [bindPassword, code, expected] of [
      [SERVICE_PASSWORD, 0, new RegExp(`^auth\\.ldap: OK: ${slapd.ldapsUrl}: bound as ${SERVICE_DN}; userBase ${PEOPLE} holds 8 entries matching \\(uid=\\*\\)$`, 'm')],
      ['not-the-password', 1, new RegExp(`^auth\\.ldap: FAILED: ${slapd.ldapsUrl}: the service account ${SERVICE_DN} could not bind: InvalidCredentials \\(LDAP result 49\\) \\(check auth\\.ldap\\.bindDn and the password in bindPasswordFile\\)$`, 'm')],
    ] as const) {
      const opts = ldapGateOptions(slapd, backend, { bindPassword });
      const files = await writeGateFiles(opts);
      onTestFinished(() => rm(files.dir, { recursive: true, force: true }));
      await opts.beforeStart!(files.dir);
      const result = await runCli(['check', '--config', files.configFile, '--probe']);
      expect(result.stdout, result.stderr).toMatch(expected);
      expect(result.code).toBe(code);
    }
  });

  describe('with the directory down', () => {
    /** A slapd of its own, to stop and start. */
    let down: Slapd;
    beforeAll(async () => {
      down = await startSlapd();
    });
    afterAll(async () => {
      await down?.stop();
    });

    test('an uncached user gets 454 4.7.0; with auth.cache a user who signed in before still gets 235; after the restart everyone signs in again', async () => {
      const gate = await forThisTest(ldapGate(down, backend, { cache: true }), stopGate);
      expect(await authReply(gate, 'alice', 'alice-pw')).toMatch(/^235 /);

      await down.kill();
      expect(await authReply(gate, 'alice', 'alice-pw')).toMatch(/^235 /);
      expect(await authReply(gate, 'bob', 'bob-pw')).toMatch(/^454 4\.7\.0 /);
      // The cache remembers a password, not a user: another password must ask the directory.
      expect(await authReply(gate, 'alice', 'wrong')).toMatch(/^454 4\.7\.0 /);
      const unavailable = gate.logs.filter((l) => l.authResult === 'unavailable');
      expect(unavailable.map((l) => l.user)).toEqual(['bob', 'alice']);
      expect(unavailable[0]).toMatchObject({ source: 'ldap', detail: expect.stringContaining(`${down.ldapsUrl}: connect ECONNREFUSED`) });

      await down.start();
      expect(await authReply(gate, 'bob', 'bob-pw')).toMatch(/^235 /);
    });

    test('without the cache, a signed-in user gets 454 4.7.0 too while the directory is down', async () => {
      const gate = await forThisTest(ldapGate(down, backend), stopGate);
      expect(await authReply(gate, 'alice', 'alice-pw')).toMatch(/^235 /);
      await down.kill();
      onTestFinished(() => down.start());
      expect(await authReply(gate, 'alice', 'alice-pw')).toMatch(/^454 4\.7\.0 /);
    });
  });

  test('with auth.cache on, wrong passwords still count toward the lockout: three 535s, then 454 4.7.0 even for the cached right password', async () => {
    const gate = await forThisTest(ldapGate(slapd, backend, { cache: true, limits: { auth: { failuresPerUserIp: '3/15m', lockFor: '10m' } } }), stopGate);
    expect(await authReply(gate, 'bob', 'bob-pw')).toMatch(/^235 /);
    for (let i = 0; i < 3; i++) expect(await authReply(gate, 'bob', 'same-wrong-password')).toMatch(/^535 5\.7\.8 /);
    expect(await authReply(gate, 'bob', 'bob-pw')).toMatch(/^454 4\.7\.0 /);
  });
  describe('app passwords with the directory as the account source', () => {
    const made = (user: string, label: string) => {
      const secret = generateSecret();
      return { secret, line: formatCredentialLine({ user, label, hash: hashSecret(secret), created: new Date() }) };
    };

    test('an app password signs alice in; the directory (a lookup, no bind) still gives her addresses for sender binding', async () => {
      const phone = made('alice', 'phone');
      const gate = await forThisTest(ldapGate(slapd, backend, { credentials: [phone.line] }), stopGate);
      const c = await readyForAuth(gate);
      expect((await c.authPlain('alice', phone.secret)).code).toBe(235);
      expect((await c.cmd('MAIL FROM:<a.liddell@sales.corp.example>')).code).toBe(250);
      expect((await c.cmd('RSET')).code).toBe(250);
      expect((await c.cmd('MAIL FROM:<bob@corp.example>')).raw).toMatch(/^553 5\.7\.1 /);
      await eventually(() => gate.logs.some((l) => l.msg === 'authenticated'), 'the sign-in line');
      expect(gate.logs.find((l) => l.msg === 'authenticated')).toMatchObject({ user: 'alice', source: 'ldap', credential: 'phone' });
    });

    test('an app password of a disabled directory account gets 535, and the log says the account is disabled', async () => {
      const scanner = made('erin', 'scanner');
      const gate = await forThisTest(ldapGate(slapd, backend, { credentials: [scanner.line] }), stopGate);
      expect(await authReply(gate, 'erin', scanner.secret)).toMatch(/^535 5\.7\.8 /);
      const refused = () => gate.logs.find((l) => l.msg === 'refused: Authentication credentials invalid');
      await eventually(() => refused() !== undefined, 'the refusal line');
      expect(refused()).toMatchObject({ user: 'erin', credential: 'scanner', authResult: 'disabled', source: 'ldap' });
      expect(String(refused()!.detail)).toContain('ACCOUNTDISABLE');
    });

    test('requireAppPassword by name holds for every spelling the directory takes for that login ("alice ", " ALICE")', async () => {
      const gate = await forThisTest(ldapGate(slapd, backend, { credentials: [made('alice', 'phone').line], requireAppPassword: { users: ['alice'] } }), stopGate);
      for (const login of ['alice', 'alice ', ' ALICE', 'Alice']) expect(await authReply(gate, login, 'alice-pw'), JSON.stringify(login)).toMatch(/^535 5\.7\.8 .*app password/);
      expect(await authReply(gate, 'bob', 'bob-pw')).toMatch(/^235 /);
    });

    test('requireAppPassword for the staff group (from memberOf): alice\'s directory password is refused unchecked, her app password works, bob\'s password works', async () => {
      const phone = made('alice', 'phone');
      const gate = await forThisTest(ldapGate(slapd, backend, { credentials: [phone.line], requireAppPassword: { groups: ['staff'] } }), stopGate);
      expect(await authReply(gate, 'alice', 'alice-pw')).toMatch(/^535 5\.7\.8 .*app password/);
      expect(await authReply(gate, 'alice', phone.secret)).toMatch(/^235 /);
      expect(await authReply(gate, 'bob', 'bob-pw')).toMatch(/^235 /);
    });
  });
});
