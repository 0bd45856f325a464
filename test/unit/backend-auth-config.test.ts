/**
 * backend.auth with mechanism XOAUTH2 (src/config/backend-auth-section.ts): a config that
 * can't get a token never starts, and each refusal names the file, the line, the field and
 * the fix. Secrets come from files only; the files are checked at start and by `smtpgate check`.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { checkIssues, configIssues } from '../helpers/config.js';
import { parseConfig } from '../../src/config/load.js';
import { chooseMailbox } from '../../src/relay/upstream-mailbox.js';
import { makeTestCert } from '../helpers/pki.js';

const FILE = '/etc/smtpgate/smtpgate.yaml';

function config(auth: string): string {
  return `listeners:
  - name: submission
    address: 0.0.0.0:587
  - name: printers
    address: 0.0.0.0:2525
    tls: none
    requireTls: false
    requireAuth: false
tls:
  cert: cert.pem
  key: key.pem
auth:
  users: users
backend:
  address: smtp.office365.com:587
  tls: starttls
  auth:
${auth.replace(/^\n/, '').replace(/^/gm, '    ')}`;
}

const MICROSOFT = `
mechanism: XOAUTH2
user: relay@example.com
oauth2:
  grant: client_credentials
  tokenUrl: https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token
  clientId: 11111111-2222-3333-4444-555555555555
  clientSecretFile: oauth-client-secret
  scope: https://outlook.office365.com/.default
mailboxes:
  - { listener: printers, user: scanner@example.com }
  - { group: erp, user: erp@example.com }`;

const issuesOf = (text: string): string[] => configIssues(text, FILE);

describe('backend.auth mechanism XOAUTH2', () => {
  test('the README\'s Microsoft 365 example is accepted, secrets resolved as paths, defaults filled in', () => {
    const auth = parseConfig(config(MICROSOFT), FILE).backend.auth!;
    expect(auth.mechanism).toBe('XOAUTH2');
    expect(auth.oauth2).toMatchObject({ grant: 'client_credentials', clientSecretFile: '/etc/smtpgate/oauth-client-secret', timeout: 10_000, renewBefore: 300_000 });
    expect(auth.mailboxes).toEqual([
      { listener: 'printers', user: 'scanner@example.com' },
      { group: 'erp', user: 'erp@example.com' },
    ]);
  });

  test('without an oauth2 section: says what to add', () => {
    expect(issuesOf(config('mechanism: XOAUTH2\nuser: relay@example.com'))).toEqual([
      `${FILE}:18: backend.auth.oauth2: mechanism XOAUTH2 needs an oauth2 section (grant, tokenUrl and the grant's credentials); see README "Sending through Microsoft 365 or Google"`,
    ]);
  });

  test('a password with XOAUTH2, or oauth2 with PLAIN, is refused with the fix', () => {
    expect(issuesOf(config(`${MICROSOFT}\npasswordFile: pw`))).toContain(`${FILE}:29: backend.auth.passwordFile: mechanism XOAUTH2 signs in with a token, not a password; remove passwordFile and configure oauth2`);
    const plain = issuesOf(config(MICROSOFT.replace('mechanism: XOAUTH2', 'mechanism: PLAIN\npasswordFile: pw')));
    expect(plain).toContain(`${FILE}:22: backend.auth.oauth2: oauth2 is for mechanism: XOAUTH2, not PLAIN; set mechanism: XOAUTH2 or remove oauth2`);
    expect(plain).toContain(`${FILE}:28: backend.auth.mailboxes: mailboxes need mechanism: XOAUTH2 (with PLAIN, smtpgate has one password for one mailbox)`);
  });

  test('each grant names the fields it needs', () => {
    expect(issuesOf(config(MICROSOFT.replace('  clientSecretFile: oauth-client-secret\n', '')))).toEqual([
      `${FILE}:21: backend.auth.oauth2.clientSecretFile: grant client_credentials needs clientSecretFile: a file holding the client secret`,
    ]);
    const refresh = issuesOf(config('mechanism: XOAUTH2\nuser: relay@example.com\noauth2:\n  grant: refresh_token\n  tokenUrl: https://oauth2.googleapis.com/token'));
    expect(refresh).toContain(`${FILE}:21: backend.auth.oauth2.clientId: grant refresh_token needs clientId: the OAuth client ID the refresh token was issued to`);
    expect(refresh).toContain(`${FILE}:21: backend.auth.oauth2.refreshTokenFile: grant refresh_token needs refreshTokenFile: a file holding the refresh token of backend.auth.user`);
    expect(issuesOf(config('mechanism: XOAUTH2\nuser: relay@example.com\noauth2:\n  grant: service_account\n  tokenUrl: https://oauth2.googleapis.com/token'))).toEqual([
      `${FILE}:21: backend.auth.oauth2.keyFile: grant service_account needs keyFile: the service account key file (JSON, with client_email and private_key)`,
    ]);
  });

  test('a refresh token holds one user\'s consent: another mailbox needs its own', () => {
    const text = config('mechanism: XOAUTH2\nuser: relay@example.com\noauth2:\n  grant: refresh_token\n  tokenUrl: https://oauth2.googleapis.com/token\n  clientId: id\n  refreshTokenFile: rt\nmailboxes:\n  - { listener: printers, user: scanner@example.com }');
    expect(issuesOf(text)).toEqual([`${FILE}:26: backend.auth.mailboxes[0].refreshTokenFile: a refresh token holds one user's consent: give mailbox scanner@example.com its own refreshTokenFile`]);
  });

  test('the token URL is https (http only to this machine): the client secret travels in the request', () => {
    expect(issuesOf(config(MICROSOFT.replace('https://login.microsoftonline.com', 'http://login.microsoftonline.com')))).toEqual([
      `${FILE}:22: backend.auth.oauth2.tokenUrl: expected an https:// URL (http:// only to this machine: the client secret travels in the request), found "http://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"`,
    ]);
    expect(() => parseConfig(config(MICROSOFT.replace('https://login.microsoftonline.com', 'http://127.0.0.1:8080')), FILE)).not.toThrow();
  });

  test('a mailbox rule for a listener that does not exist names the listeners there are', () => {
    expect(issuesOf(config(MICROSOFT.replace('listener: printers', 'listener: printer')))).toEqual([
      `${FILE}:27: backend.auth.mailboxes[0].listener: no listener is named "printer"; expected one of submission, printers`,
    ]);
  });

  test('passthrough auth (auth.backend: backend) signs in with the client\'s password: no backend.auth of smtpgate\'s own there, whatever the mechanism', () => {
    const passthrough = (text: string) => text.replace('auth:\n  users: users', 'auth:\n  backend: backend');
    expect(issuesOf(passthrough(config(MICROSOFT)))).toEqual([
      `${FILE}:18: backend.auth.mechanism: auth.backend lists backend (passthrough), which signs each session in to the backend with the client's own password: smtpgate can't also sign in there with its own backend.auth (XOAUTH2); the backend would refuse the second AUTH. Check passwords at smtpgate (file, ldap, dovecot, http), or remove backend.auth`,
    ]);
    for (const mechanism of ['PLAIN', 'LOGIN']) {
      expect(issuesOf(passthrough(config(`mechanism: ${mechanism}\nuser: relay\npasswordFile: pw`)))).toEqual([
        `${FILE}:18: backend.auth.mechanism: auth.backend lists backend (passthrough), which signs each session in to the backend with the client's own password: smtpgate can't also sign in there with its own backend.auth (${mechanism}); the backend would refuse the second AUTH. Check passwords at smtpgate (file, ldap, dovecot, http), or remove backend.auth`,
      ]);
    }
  });

  test('suspension notices can\'t sign in with a token: with XOAUTH2 they need notifications.relay', () => {
    const notices = '\nnotifications:\n  from: smtpgate@example.com\n  template: notice.txt\n';
    expect(issuesOf(config(MICROSOFT) + notices).filter((l) => l.includes('notifications.relay'))).toEqual([
      `${FILE}:30: notifications.relay: backend.auth signs in with XOAUTH2, which suspension notices can't: give notifications.relay (a relay that takes them with a password or from smtpgate's address)`,
    ]);
    expect(() => parseConfig(config(MICROSOFT) + notices + '  relay:\n    address: 10.0.0.9:25\n', FILE)).not.toThrow();
  });

  test('a user with a ^A or a line break is refused (it would add XOAUTH2 fields or end the AUTH line)', () => {
    expect(issuesOf(config(MICROSOFT.replace('user: relay@example.com', 'user: "relay@example.com\\x01auth=Bearer x"')))).toEqual([
      `${FILE}:19: backend.auth.user: must not contain CR, LF, NUL or \\x01`,
    ]);
  });
});

describe('smtpgate check: the secret files of backend.auth.oauth2', () => {
  async function setup(files: Record<string, string>): Promise<{ dir: string; file: string }> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-oauth-check-'));
    const cert = await makeTestCert('gate.test');
    await writeFile(path.join(dir, 'cert.pem'), cert.cert);
    await writeFile(path.join(dir, 'key.pem'), cert.key);
    await writeFile(path.join(dir, 'users'), 'alice:$2y$05$abcdefghijklmnopqrstuu5Zx0Nq6PzGQy4Qb0fxVt7bLqfJ0mB1e\n');
    for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text);
    const file = path.join(dir, 'smtpgate.yaml');
    await writeFile(file, config(files.auth ?? MICROSOFT).replace('address: smtp.office365.com:587', 'address: 127.0.0.1:2587\n  healthCheckInterval: 0'));
    return { dir, file };
  }

  test('a complete config with its secret file passes', async () => {
    const { file } = await setup({ 'oauth-client-secret': 'abc~secret\n' });
    expect(await checkIssues(file)).toEqual([]);
  });

  test('a missing client secret file is reported at the line that names it', async () => {
    const { dir, file } = await setup({});
    expect(await checkIssues(file)).toEqual([`${file}:25: backend.auth.oauth2.clientSecretFile: cannot read the OAuth2 client secret file ${dir}/oauth-client-secret: it does not exist`]);
  });

  test('an empty secret file, and a key file that is no service account key, say what to write', async () => {
    const empty = await setup({ 'oauth-client-secret': '\n' });
    expect((await checkIssues(empty.file))[0]).toMatch(/backend\.auth\.oauth2\.clientSecretFile: the OAuth2 client secret file is empty: write the secret on one line/);
    const google = 'mechanism: XOAUTH2\nuser: relay@example.com\noauth2:\n  grant: service_account\n  tokenUrl: https://oauth2.googleapis.com/token\n  keyFile: key.json';
    const bad = await setup({ auth: google, 'key.json': '{"client_email": "x@y"}' });
    expect((await checkIssues(bad.file))[0]).toMatch(/backend\.auth\.oauth2\.keyFile: cannot use the service account key: expected a service account key with client_email and private_key/);
  });
});

describe('which mailbox a session sends as', () => {
  const rules = [
    { listener: 'printers', user: 'scanner@example.com' },
    { group: 'erp', user: 'erp@example.com' },
    { listener: 'submission', group: 'finance', user: 'finance@example.com' },
  ];
  const who = (listener: string, groups: string[] = []) => ({ listener, groups: () => groups });

  test('the first rule that matches the listener and the user\'s groups, else backend.auth.user', () => {
    expect(chooseMailbox(rules, 'relay@example.com', who('printers'))).toBe('scanner@example.com');
    expect(chooseMailbox(rules, 'relay@example.com', who('printers', ['erp']))).toBe('scanner@example.com');
    expect(chooseMailbox(rules, 'relay@example.com', who('submission', ['erp']))).toBe('erp@example.com');
    expect(chooseMailbox(rules, 'relay@example.com', who('submission', ['finance']))).toBe('finance@example.com');
    expect(chooseMailbox(rules, 'relay@example.com', who('other', ['finance']))).toBe('relay@example.com');
    expect(chooseMailbox(rules, 'relay@example.com', who('submission'))).toBe('relay@example.com');
  });

  test('groups are not looked up when no rule names one', () => {
    let asked = 0;
    expect(chooseMailbox([{ listener: 'printers', user: 's@example.com' }], 'relay@example.com', { listener: 'submission', groups: () => (asked++, []) })).toBe('relay@example.com');
    expect(asked).toBe(0);
  });
});
