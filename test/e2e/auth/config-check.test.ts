/**
 * `smtpgate check` on the auth section, as an operator meets it: a config that would put
 * passwords on the wire in cleartext, or a list of sources that can't work as written, never
 * starts, and each problem names the file, the line, the field and the fix; a config that works
 * but has a trap is started with a warning that says what happens.
 */
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { makeTestCert, type TestCert } from '../../helpers/pki.js';
import { runCli } from '../../helpers/cli.js';

let cert: TestCert;
beforeAll(async () => {
  cert = await makeTestCert();
});

/** A config with this auth section (YAML, indented two spaces under auth:), its files beside it. */
async function configWith(auth: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-auth-check-'));
  await writeFile(path.join(dir, 'bindpw'), 'service secret\n');
  await writeFile(path.join(dir, 'users'), '');
  await writeFile(path.join(dir, 'credentials'), '# app passwords\n');
  await writeFile(path.join(dir, 'broken-credentials'), '# app passwords\nalice:phone:not-a-hash\n');
  await mkdir(path.join(dir, 'policies'));
  await writeFile(path.join(dir, 'policies', 'staff.yaml'), 'rules:\n  - { name: staff-only, stage: mail, when: { group: staff }, action: accept }\n');
  await writeFile(path.join(dir, 'users.yaml'), 'alice:\n  groups: [sales]\n');
  const file = path.join(dir, 'smtpgate.yaml');
  await writeFile(
    file,
    `listeners:\n  - name: submission\n    address: 127.0.0.1:0\ntls:\n  cert: ${cert.certFile}\n  key: ${cert.keyFile}\nbackend:\n  address: 127.0.0.1:2525\nauth:\n${auth}`,
  );
  return file;
}

/** `smtpgate check` on a config with this auth section. */
async function check(auth: string): Promise<{ code: number; out: string; file: string }> {
  const file = await configWith(auth);
  const r = await runCli(['check', '--config', file]);
  return { code: r.code, out: r.stdout + r.stderr, file };
}

const LDAP = `  ldap:\n    bindDn: cn=smtpgate,dc=example\n    bindPasswordFile: bindpw\n    userBase: dc=example\n`;

describe('refused, with the line and the fix', () => {
  test.each([
    ['ldap:// without StartTLS', `  backend: ldap\n${LDAP}    url: ldap://dc1.corp.example\n`, 15, /auth\.ldap\.url: ldap:\/\/dc1\.corp\.example would send passwords in cleartext: use ldaps:\/\/, or set startTls: true/],
    ['an http:// hook off this machine', `  backend: http\n  http:\n    url: http://auth.corp.example/smtp\n`, 12, /auth\.http\.url: http:\/\/auth\.corp\.example\/smtp would send passwords in cleartext: use https:\/\//],
    ['passthrough before another source', `  backend: [backend, file]\n  users: users\n`, 10, /auth\.backend\[0\]: backend \(passthrough\) must be the last source/],
    ['the cache with passthrough', `  backend: backend\n  cache: { ttl: 10m }\n`, 11, /auth\.cache: auth\.cache cannot be used with backend \(passthrough\)/],
    ['a source section auth.backend does not name', `  backend: file\n  users: users\n${LDAP}    url: ldaps://dc1.corp.example\n`, 13, /auth\.ldap: auth\.ldap is set but auth\.backend does not name ldap/],
    ['a source named without its section', `  backend: [file, dovecot]\n  users: users\n`, 10, /auth\.dovecot: auth\.backend names dovecot, so an auth\.dovecot section is required/],
    ['requireAppPassword without a credentials file', `  backend: file\n  users: users\n  requireAppPassword: { users: [alice] }\n`, 12, /auth\.requireAppPassword: requireAppPassword needs auth\.credentials/],
    ['app passwords with passthrough only', `  backend: backend\n  credentials: credentials\n`, 11, /auth\.credentials: app passwords need a source that can look a user up without their password/],
    ['app passwords with an LDAP direct bind and no service account', `  backend: ldap\n  credentials: credentials\n  ldap:\n    url: ldaps://dc1.corp.example\n    userDnTemplate: "uid={user},ou=people,dc=example"\n`, 13, /auth\.ldap\.bindDn: .*needs a service account.*set bindDn and bindPasswordFile.*\(auth\.credentials needs it\)/],
    ['app passwords with Dovecot but no lookup socket', `  backend: dovecot\n  credentials: credentials\n  dovecot:\n    socket: /run/dovecot/auth-client\n`, 13, /auth\.dovecot\.lookupSocket: a lookup without the user's password needs lookupSocket.*\(auth\.credentials needs it\)/],
    ['a credentials file with a broken line', `  backend: file\n  users: users\n  credentials: broken-credentials\n`, 0, /broken-credentials:2: alice\/phone: the hash is not an app password hash/],
    ['a userFilter that is no LDAP filter', `  backend: ldap\n${LDAP}    url: ldaps://dc1.corp.example\n    userFilter: "(uid={user}"\n`, 16, /auth\.ldap\.userFilter: /],
  ])('%s', async (_what, auth, line, message) => {
    const r = await check(auth);
    expect(r.code).toBe(1);
    if (line) expect(r.out).toMatch(new RegExp(`${r.file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:${line}: `));
    expect(r.out).toMatch(message);
  });
});

describe('started, with a warning that says what happens', () => {
  test('a source listed after dovecot is asked only while Dovecot is down', async () => {
    const r = await check(`  backend: [dovecot, http]\n  dovecot: { socket: /run/dovecot/auth-client }\n  http: { url: https://auth.corp.example/smtp }\n`);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/warning: auth\.backend lists http after dovecot, .*http will be asked only while Dovecot is down\. Put dovecot last/);
  });

  test('Dovecot on another machine: passwords cross the network in cleartext', async () => {
    const r = await check(`  backend: dovecot\n  dovecot: { socket: "10.0.0.7:12345" }\n`);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/warning: auth\.dovecot\.socket 10\.0\.0\.7:12345 is another machine: .*cleartext/);
  });

  test('verifyCertificate: false', async () => {
    const r = await check(`  backend: ldap\n${LDAP}    url: ldaps://dc1.corp.example\n    verifyCertificate: false\n`);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/warning: auth\.ldap\.verifyCertificate is false: the directory's certificate is not checked/);
  });

  test('the same sources in a working order: no warning', async () => {
    const r = await check(`  backend: [file, ldap]\n  users: users\n${LDAP}    url: [ldaps://dc1.corp.example, ldaps://dc2.corp.example]\n  cache: { ttl: 10m, negativeTtl: 30s }\n`);
    expect(r.out).not.toMatch(/warning: auth\.(backend|ldap|dovecot|http)/);
    expect(r.code).toBe(0);
  });
});

describe('policy check --config: groups a directory supplies are not "unknown"', () => {
  test('with the attributes file alone, a group nobody is in is a finding', async () => {
    const file = await configWith(`  backend: file\n  users: users\n  attributes: users.yaml\npolicies: policies\n`);
    const r = await runCli(['policy', 'check', '--config', file]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/no user is in group "staff"/);
  });

  test('with a directory in auth.backend, the group may come from it: not checked, and the output says why', async () => {
    const file = await configWith(`  backend: [file, ldap]\n  users: users\n  attributes: users.yaml\n${LDAP}    url: ldaps://dc1.corp.example\npolicies: policies\n`);
    const r = await runCli(['policy', 'check', '--config', file]);
    expect(r.stdout).not.toMatch(/no user is in group/);
    expect(r.stdout).toMatch(/\(groups not checked: an auth source of the config \(a directory\) supplies groups\)/);
    expect(r.code).toBe(0);
  });
});
