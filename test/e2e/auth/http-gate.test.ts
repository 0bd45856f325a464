/**
 * `auth.backend: http` through a real gate, over implicit TLS: a real HTTPS hook (test CA,
 * bearer token) decides each AUTH. The right password gets 235, a wrong one, a disabled
 * account and an unknown user 535; the addresses and groups the hook answers with drive
 * sender binding and a `group:` policy rule (no attributes file); the brute-force lockout
 * counts with the auth cache on; a hook that is down gives 454 to a user it never answered
 * for, while a remembered sign-in still gets 235.
 *
 * Each test signs in as its own user, so one test's lockout doesn't touch another's.
 */
import { cp, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startGate, type Gate } from '../../helpers/gate.js';
import { formatCredentialLine, generateSecret, hashSecret } from '../../../src/auth/credentials-file.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { startAuthHook, type AuthHook, type HookUser } from '../../helpers/auth-hook.js';
import { issueServerCert, makeTestCa, type TestCert } from '../../helpers/pki.js';
import { envelope, eventually } from '../../helpers/sessions.js';
import { SmtpTalk, type Reply } from '../../helpers/smtp-talk.js';

const TOKEN = 'gate-hook-token-77';
const PASSWORD = 'a directory password';

const USERS: Record<string, HookUser> = {
  alice: { password: PASSWORD, addresses: ['Alice@Corp.Example', '*@sales.corp.example'], groups: ['staff'] },
  ivan: { password: PASSWORD, addresses: ['ivan@corp.example'], groups: ['interns'] },
  'Gina@Corp.Example': { password: PASSWORD, canonical: 'gina', addresses: ['gina@corp.example'] },
  bob: { password: PASSWORD },
  carol: { password: PASSWORD, disabled: true },
  dave: { password: PASSWORD },
  erin: { password: PASSWORD },
  frank: { password: PASSWORD },
};

const ROOT = path.resolve(import.meta.dirname, '../../..');

/** Implicit TLS, EHLO and AUTH PLAIN; the session and the reply to AUTH. */
async function signIn(gate: Gate, user: string, password: string): Promise<{ c: SmtpTalk; auth: Reply }> {
  const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true });
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  return { c, auth: await c.authPlain(user, password) };
}

async function authReply(gate: Gate, user: string, password: string): Promise<Reply> {
  const { c, auth } = await signIn(gate, user, password);
  c.close();
  return auth;
}

/** A gate whose only auth source is `hook`, with the cache on, the shipped policies and a lockout after 3 failures. */
async function gateFor(hook: AuthHook, ca: TestCert, backend: RecordingBackend): Promise<Gate> {
  return startGate({
    backendPort: backend.port,
    auth: {
      backend: ['http'],
      http: { url: hook.url, tokenFile: 'hook-token', ca: 'hook-ca.pem', timeout: '2s' },
      cache: { ttl: '10m', negativeTtl: '30s' },
    },
    config: { policies: 'policies', limits: { auth: { failuresPerUserIp: '3/15m', lockFor: '15m' } } },
    beforeStart: async (dir) => {
      await writeFile(path.join(dir, 'hook-token'), `${TOKEN}\n`);
      await writeFile(path.join(dir, 'hook-ca.pem'), ca.cert);
      // The shipped policies: sender binding, and interns may write only inside and to partner.example.
      await cp(path.join(ROOT, 'policies'), path.join(dir, 'policies'), { recursive: true });
    },
  });
}

let ca: TestCert;
let backend: RecordingBackend;
beforeAll(async () => {
  ca = await makeTestCa('smtpgate hook test CA');
  backend = await startRecordingBackend();
});
afterAll(async () => {
  await backend?.close();
});

describe('signing in through the hook', () => {
  let hook: AuthHook;
  let gate: Gate;
  beforeAll(async () => {
    hook = await startAuthHook({ users: USERS, token: TOKEN, tls: await issueServerCert(ca, 'localhost') });
    gate = await gateFor(hook, ca, backend);
  });
  afterAll(async () => {
    await gate?.stop();
    await hook?.stop();
  });

  test('at start the gate checks the hook once, with the probe\'s made-up user and header', async () => {
    await eventually(() => hook.requests.some((r) => r.headers['x-smtpgate-probe'] === '1'), 'the start-up probe');
    const probes = hook.requests.filter((r) => r.headers['x-smtpgate-probe'] === '1');
    expect(probes).toHaveLength(1);
    expect(JSON.parse(probes[0]!.body)).toMatchObject({ user: 'smtpgate-probe', password: '' });
    expect(probes[0]!.headers.authorization).toBe(`Bearer ${TOKEN}`);
  });

  test('the right password gets 235, and the hook was asked once, with the token and the session\'s facts', async () => {
    const before = hook.requests.length;
    expect((await authReply(gate, 'bob', PASSWORD)).raw).toMatch(/^235 /);
    const asked = hook.requests.slice(before).filter((r) => r.headers['x-smtpgate-probe'] === undefined);
    expect(asked.map((r) => JSON.parse(r.body).user)).toEqual(['bob']);
    expect(asked[0]!.headers.authorization).toBe(`Bearer ${TOKEN}`);
    expect(JSON.parse(asked[0]!.body)).toMatchObject({ mechanism: 'PLAIN', client: { address: '127.0.0.1' }, listener: 'smtps', tls: { version: expect.stringMatching(/^TLSv1\.[23]$/) } });
    await eventually(() => gate.logs.some((l) => l.msg === 'authenticated' && l.user === 'bob' && l.source === 'http'), 'the sign-in logged with source http');
  });

  test('a wrong password gets 535 5.7.8; the log says the hook denied it, and never the password', async () => {
    expect((await authReply(gate, 'bob', 'not it, sorry')).raw).toMatch(/^535 5\.7\.8 /);
    await eventually(() => gate.logs.some((l) => l.user === 'bob' && l.source === 'http' && l.authResult === 'bad_credentials'), 'the refusal logged as bad_credentials from http');
    expect(JSON.stringify(gate.logs)).not.toContain('not it, sorry');
    expect(JSON.stringify(gate.logs)).not.toContain(PASSWORD);
  });

  test('a disabled account gets 535 5.7.8, logged as disabled', async () => {
    expect((await authReply(gate, 'carol', PASSWORD)).raw).toMatch(/^535 5\.7\.8 /);
    await eventually(() => gate.logs.some((l) => l.user === 'carol' && l.authResult === 'disabled'), 'the refusal logged as disabled');
  });

  test('a user the hook does not know gets 535 5.7.8, logged as unknown_user', async () => {
    expect((await authReply(gate, 'mallory', PASSWORD)).raw).toMatch(/^535 5\.7\.8 /);
    await eventually(() => gate.logs.some((l) => l.user === 'mallory' && l.authResult === 'unknown_user'), 'the refusal logged as unknown_user');
  });

  test('the canonical login the hook answers with is the session\'s user', async () => {
    const { c, auth } = await signIn(gate, 'Gina@Corp.Example', PASSWORD);
    try {
      expect(auth.code).toBe(235);
      expect((await c.cmd('MAIL FROM:<gina@corp.example>')).code).toBe(250);
    } finally {
      c.close();
    }
    await eventually(() => gate.logs.some((l) => l.msg === 'authenticated' && l.user === 'gina'), 'the sign-in logged as gina');
  });

  test('sender binding uses the hook\'s addresses: alice may send as Alice@Corp.Example (any case) and *@sales.corp.example, not as someone else (553 5.7.1)', async () => {
    const { c, auth } = await signIn(gate, 'alice', PASSWORD);
    try {
      expect(auth.code).toBe(235);
      expect((await c.cmd('MAIL FROM:<ceo@corp.example>')).raw).toMatch(/^553 5\.7\.1 /);
      expect((await c.cmd('MAIL FROM:<alice@corp.example>')).code).toBe(250);
      expect((await c.cmd('RSET')).code).toBe(250);
      expect((await c.cmd('MAIL FROM:<orders@sales.corp.example>')).code).toBe(250);
    } finally {
      c.close();
    }
    await eventually(() => gate.logs.some((l) => l.stage === 'mail' && l.reason === 'sender_binding' && l.rule === 'sender-binding'), 'the refusal logged with the rule');
  });

  test('a group rule uses the hook\'s groups: ivan (interns) may not write outside, alice (staff) may', async () => {
    const ivan = await signIn(gate, 'ivan', PASSWORD);
    try {
      expect(ivan.auth.code).toBe(235);
      const { mail, rcpt } = await envelope(ivan.c, 'ivan@corp.example', ['someone@elsewhere.example']);
      expect(mail.code).toBe(250);
      expect(rcpt[0]!.raw).toBe('550 5.7.1 Interns may only write to corp.example and partner.example');
    } finally {
      ivan.c.close();
    }
    const alice = await signIn(gate, 'alice', PASSWORD);
    try {
      expect(alice.auth.code).toBe(235);
      const { rcpt } = await envelope(alice.c, 'alice@corp.example', ['someone@elsewhere.example']);
      expect(rcpt[0]!.code).toBe(250);
    } finally {
      alice.c.close();
    }
  });

  test('the lockout counts with the cache on: three wrong passwords, and then even the right one gets 454 4.7.0', async () => {
    expect((await authReply(gate, 'dave', PASSWORD)).code).toBe(235); // now remembered
    for (let i = 0; i < 3; i++) expect((await authReply(gate, 'dave', 'guess')).raw).toMatch(/^535 5\.7\.8 /);
    const asked = hook.requests.length;
    expect((await authReply(gate, 'dave', PASSWORD)).raw).toMatch(/^454 4\.7\.0 Too many failed logins for this user from your address; try again in \d+ seconds$/);
    // Locked out before any source is asked.
    expect(hook.requests.length).toBe(asked);
  });
});

describe('when the hook is down', () => {
  let hook: AuthHook;
  let gate: Gate;
  let tls: TestCert;
  beforeAll(async () => {
    tls = await issueServerCert(ca, 'localhost');
    hook = await startAuthHook({ users: USERS, token: TOKEN, tls });
    gate = await gateFor(hook, ca, backend);
  });
  afterAll(async () => {
    await gate?.stop();
    await hook?.stop();
  });

  test('a user it never answered for gets 454 4.7.0, a remembered one 235; once it is back, sign-ins work again', async () => {
    expect((await authReply(gate, 'erin', PASSWORD)).code).toBe(235); // remembered by the cache
    await hook.stop();

    expect((await authReply(gate, 'frank', PASSWORD)).raw).toMatch(/^454 4\.7\.0 /);
    await eventually(() => gate.logs.some((l) => l.user === 'frank' && l.source === 'http' && l.authResult === 'unavailable' && /ECONNREFUSED/.test(String(l.detail))), 'the 454 logged with the connection error');
    expect((await authReply(gate, 'erin', PASSWORD)).raw).toMatch(/^235 /);

    hook = await startAuthHook({ users: USERS, token: TOKEN, tls, port: hook.port });
    expect((await authReply(gate, 'frank', PASSWORD)).raw).toMatch(/^235 /);
  });
});

describe('app passwords with the hook as the account source', () => {
  const made = (user: string, label: string) => {
    const secret = generateSecret();
    return { secret, line: formatCredentialLine({ user, label, hash: hashSecret(secret), created: new Date() }) };
  };
  const alice = made('alice', 'tablet');
  const carol = made('carol', 'phone');

  async function gateWithCredentials(hook: AuthHook): Promise<Gate> {
    return startGate({
      backendPort: backend.port,
      auth: { backend: ['http'], http: { url: hook.url, tokenFile: 'hook-token', ca: 'hook-ca.pem', timeout: '2s' }, credentials: 'credentials' },
      beforeStart: async (dir) => {
        await writeFile(path.join(dir, 'hook-token'), `${TOKEN}\n`);
        await writeFile(path.join(dir, 'hook-ca.pem'), ca.cert);
        await writeFile(path.join(dir, 'credentials'), `${alice.line}\n${carol.line}\n`);
      },
    });
  }

  test('the hook is asked to look the account up (no password sent); its addresses bind the sender; a disabled account is refused', async () => {
    const hook = await startAuthHook({ users: USERS, token: TOKEN, tls: await issueServerCert(ca, 'localhost') });
    const gate = await gateWithCredentials(hook);
    try {
      const before = hook.requests.length;
      const { c, auth } = await signIn(gate, 'alice', alice.secret);
      expect(auth.code).toBe(235);
      expect((await c.cmd('MAIL FROM:<x@sales.corp.example>')).code).toBe(250);
      c.close();
      const asked = hook.requests.slice(before).filter((r) => r.headers['x-smtpgate-probe'] === undefined).map((r) => JSON.parse(r.body) as Record<string, unknown>);
      expect(asked).toEqual([expect.objectContaining({ lookup: true, user: 'alice' })]);
      expect(asked[0]).not.toHaveProperty('password');
      expect((await authReply(gate, 'carol', carol.secret)).raw).toMatch(/^535 5\.7\.8 /);
    } finally {
      await gate.stop();
      await hook.stop();
    }
  });

  test('requireAppPassword by group with a hook written before lookups: the group can\'t be learnt, so the password is refused, never checked and let in', async () => {
    const hook = await startAuthHook({ users: USERS, token: TOKEN, tls: await issueServerCert(ca, 'localhost'), lookups: false });
    const gate = await startGate({
      backendPort: backend.port,
      auth: { backend: ['http'], http: { url: hook.url, tokenFile: 'hook-token', ca: 'hook-ca.pem', timeout: '2s' }, credentials: 'credentials', requireAppPassword: { groups: ['interns'] } },
      beforeStart: async (dir) => {
        await writeFile(path.join(dir, 'hook-token'), `${TOKEN}\n`);
        await writeFile(path.join(dir, 'hook-ca.pem'), ca.cert);
        await writeFile(path.join(dir, 'credentials'), '');
      },
    });
    try {
      expect((await authReply(gate, 'ivan', PASSWORD)).raw).toMatch(/^535 5\.7\.8 /);
      expect(hook.requests.filter((r) => r.headers['x-smtpgate-probe'] === undefined && 'password' in JSON.parse(r.body))).toEqual([]);
    } finally {
      await gate.stop();
      await hook.stop();
    }
  });

  test('a hook written before lookups answers deny: the app password is refused (535), never let in', async () => {
    const hook = await startAuthHook({ users: USERS, token: TOKEN, tls: await issueServerCert(ca, 'localhost'), lookups: false });
    const gate = await gateWithCredentials(hook);
    try {
      expect((await authReply(gate, 'alice', alice.secret)).raw).toMatch(/^535 5\.7\.8 /);
      await eventually(() => gate.logs.some((l) => l.stage === 'auth' && l.user === 'alice' && l.authResult === 'disabled'), 'the refusal, logged as disabled');
      expect(String(gate.logs.find((l) => l.stage === 'auth' && l.user === 'alice' && l.authResult === 'disabled')!.detail)).toContain('does not support lookups');
    } finally {
      await gate.stop();
      await hook.stop();
    }
  });
});
