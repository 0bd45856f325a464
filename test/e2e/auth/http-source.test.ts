/**
 * The HTTP auth hook source against a real HTTPS hook on loopback (test/helpers/auth-hook.ts),
 * its certificate signed by a test CA: what each answer becomes, that every way the hook can
 * fail is "unavailable" and never "allow", the timeout, connection reuse, where the
 * password travels (the body only), and lookups (no password; a "deny" fails closed).
 */
import { Writable } from 'node:stream';
import { createLogger } from '../../../src/logging/logger.js';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import type { AuthRequest, LookupRequest } from '../../../src/auth/authenticator.js';
import { HttpAuthenticator, MAX_ANSWER_BYTES, PROBE_USER } from '../../../src/auth/http-source.js';
import type { HttpAuthConfig } from '../../../src/config/auth-section.js';
import type { Logger } from '../../../src/logging/logger.js';
import { startAuthHook, type AuthHook, type HookUser } from '../../helpers/auth-hook.js';
import { issueServerCert, makeTestCa, type TestCert } from '../../helpers/pki.js';

const PASSWORD = 'Tr0ub4dor&3 s3cret';
const TOKEN = 'hook-token-5f2a';

const USERS: Record<string, HookUser> = {
  alice: { password: PASSWORD, canonical: 'Alice', addresses: ['Alice@Corp.Example', '*@sales.corp.example'], groups: ['staff', 'sales'] },
  bob: { password: PASSWORD },
  carol: { password: PASSWORD, disabled: true },
};

function request(username: string, password = PASSWORD): AuthRequest {
  return {
    username,
    password,
    mechanism: 'PLAIN',
    sessionId: 'sess-42',
    remoteAddress: '192.0.2.10',
    listener: 'submission',
    tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' },
  };
}

function lookupRequest(username: string): LookupRequest {
  return { username, sessionId: 'sess-43', remoteAddress: '192.0.2.11', listener: 'submission' };
}

/** The source's log lines, to check what it says and that the password is never in them. */
function logSink(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      cb();
    },
  });
  return { log: createLogger({ level: 'debug', format: 'json', destination: sink }), lines };
}

let ca: TestCert;
let otherCa: TestCert;
let hook: AuthHook;
const sources: HttpAuthenticator[] = [];

function source(opts: { url?: string; token?: string; ca?: TestCert | null; timeout?: number } = {}) {
  const { log, lines } = logSink();
  const config: HttpAuthConfig = { url: opts.url ?? hook.url, timeout: opts.timeout ?? 5_000 };
  const caPem = opts.ca === null ? undefined : Buffer.from((opts.ca ?? ca).cert);
  const s = new HttpAuthenticator(config, { log, token: 'token' in opts ? opts.token : TOKEN, ca: caPem });
  sources.push(s);
  return { s, lines, auth: (username: string, password?: string) => s.authenticate(request(username, password)), lookUp: (username: string) => s.lookup(lookupRequest(username)) };
}

beforeAll(async () => {
  ca = await makeTestCa('smtpgate hook test CA');
  otherCa = await makeTestCa('some other CA');
  hook = await startAuthHook({ users: USERS, token: TOKEN, tls: await issueServerCert(ca, 'localhost') });
});

afterEach(async () => {
  hook.reply = undefined;
  await Promise.all(sources.splice(0).map((s) => s.close()));
});

afterAll(async () => {
  await hook?.stop();
});

describe('what the hook answers', () => {
  test('allow gives the canonical login, lower-cased addresses and the groups', async () => {
    const { auth } = source();
    expect(await auth('alice')).toEqual({
      ok: true,
      user: { username: 'Alice', attributes: { addresses: ['alice@corp.example', '*@sales.corp.example'], groups: ['staff', 'sales'] } },
    });
  });

  test('allow without addresses or groups keeps the login as typed and carries no attributes', async () => {
    const { auth } = source();
    expect(await auth('bob')).toEqual({ ok: true, user: { username: 'bob' } });
  });

  test('allow with only groups gives no addresses', async () => {
    hook.reply = () => ({ body: '{"result":"allow","groups":["ops"]}' });
    const { auth } = source();
    expect(await auth('bob')).toEqual({ ok: true, user: { username: 'bob', attributes: { addresses: [], groups: ['ops'] } } });
  });

  test('deny is bad_credentials, with the hook\'s reason in the detail', async () => {
    const { auth } = source();
    const out = await auth('alice', 'not-it-9');
    expect(out).toMatchObject({ ok: false, reason: 'bad_credentials' });
    expect(!out.ok && out.detail).toBe(`${hook.url} said deny: wrong password`);
  });

  test('unknown is unknown_user, so the next source in a chain is asked', async () => {
    const { auth } = source();
    expect(await auth('mallory')).toMatchObject({ ok: false, reason: 'unknown_user' });
  });

  test('disabled is disabled', async () => {
    const { auth } = source();
    expect(await auth('carol')).toMatchObject({ ok: false, reason: 'disabled', detail: `${hook.url} said disabled: account locked` });
  });

  test('tempfail is unavailable, logged as a warning', async () => {
    hook.reply = () => ({ body: '{"result":"tempfail","reason":"directory down"}' });
    const { auth, lines } = source();
    expect(await auth('alice')).toMatchObject({ ok: false, reason: 'unavailable', detail: `${hook.url} said tempfail: directory down` });
    expect(lines.some((l) => /"level":"warn"/.test(l) && l.includes('directory down'))).toBe(true);
  });

  test('unknown keys in the answer are ignored', async () => {
    hook.reply = () => ({ body: '{"result":"allow","quota":5,"ttl":"1h"}' });
    const { auth } = source();
    expect(await auth('bob')).toEqual({ ok: true, user: { username: 'bob' } });
  });
});

/** The hook's last request, checked for what every request is (a JSON POST to the configured path with the token), and its body. */
function lastRequestBody(): Record<string, unknown> {
  const seen = hook.requests.at(-1)!;
  expect(seen.method).toBe('POST');
  expect(seen.url).toBe('/smtp-auth');
  expect(seen.headers['content-type']).toBe('application/json');
  expect(seen.headers.authorization).toBe(`Bearer ${TOKEN}`);
  return JSON.parse(seen.body) as Record<string, unknown>;
}

describe('the request', () => {
  test('is a POST of the documented JSON to the configured path, with the bearer token', async () => {
    const { auth } = source();
    await auth('alice');
    expect(lastRequestBody()).toEqual({
      user: 'alice',
      password: PASSWORD,
      mechanism: 'PLAIN',
      client: { address: '192.0.2.10', session: 'sess-42' },
      listener: 'submission',
      tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' },
    });
  });

  test('keeps the query of the URL', async () => {
    hook.reply = (r) => (r.url === '/smtp-auth?realm=corp' ? { body: '{"result":"unknown"}' } : { status: 404 });
    const { auth } = source({ url: `${hook.url}?realm=corp` });
    expect(await auth('alice')).toMatchObject({ ok: false, reason: 'unknown_user' });
  });

  test('the password is in the body only: never in the URL, a header or the log', async () => {
    // A careless hook that quotes the password back in its reason.
    hook.reply = (r) => ({ body: JSON.stringify({ result: 'deny', reason: `bad password ${JSON.parse(r.body).password}` }) });
    const { auth, lines } = source();
    const out = await auth('alice');
    const seen = hook.requests.at(-1)!;
    expect(seen.body).toContain(JSON.stringify(PASSWORD));
    expect(seen.rawHead).not.toContain(PASSWORD);
    expect(seen.rawHead).not.toContain(encodeURIComponent(PASSWORD));
    expect(seen.rawHead).not.toContain(Buffer.from(PASSWORD).toString('base64'));
    expect(!out.ok && out.detail).toBe(`${hook.url} said deny: bad password [password]`);
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.join('\n')).not.toContain(PASSWORD);
  });

  test('sends no Authorization header when no token is set, and the hook\'s 401 says so', async () => {
    const { auth } = source({ token: undefined });
    const out = await auth('alice');
    expect(hook.requests.at(-1)!.headers.authorization).toBeUndefined();
    expect(out).toMatchObject({ ok: false, reason: 'unavailable', detail: `${hook.url} wants a token (HTTP 401) and none is set` });
  });

  test('a token the hook refuses (401) is unavailable, and the detail says the token was refused', async () => {
    const { auth, lines } = source({ token: 'not-the-token\n' });
    const out = await auth('alice');
    expect(hook.requests.at(-1)!.headers.authorization).toBe('Bearer not-the-token');
    expect(out).toMatchObject({ ok: false, reason: 'unavailable', detail: `${hook.url} refused smtpgate's token (HTTP 401)` });
    expect(lines.some((l) => /"level":"warn"/.test(l) && l.includes("refused smtpgate's token"))).toBe(true);
  });

  test('403 from the hook is a refused token too', async () => {
    hook.reply = () => ({ status: 403, body: '{}' });
    const { auth } = source();
    expect(await auth('alice')).toMatchObject({ ok: false, reason: 'unavailable', detail: `${hook.url} refused smtpgate's token (HTTP 403)` });
  });
});

describe('a hook that fails is unavailable, never allow', () => {
  test('HTTP 500', async () => {
    hook.reply = () => ({ status: 500, body: '{"result":"allow"}' });
    const { auth } = source();
    expect(await auth('alice')).toMatchObject({ ok: false, reason: 'unavailable', detail: `${hook.url} answered HTTP 500` });
  });

  test('a redirect is not followed', async () => {
    hook.reply = (r) => (r.url === '/smtp-auth' ? { status: 302, headers: { location: '/elsewhere' }, body: '' } : { body: '{"result":"allow"}' });
    const { auth } = source();
    const before = hook.requests.length;
    expect(await auth('alice')).toMatchObject({
      ok: false,
      reason: 'unavailable',
      detail: `${hook.url} redirected to /elsewhere (HTTP 302); redirects are not followed`,
    });
    expect(hook.requests.length).toBe(before + 1);
  });

  test('a body that is not JSON', async () => {
    hook.reply = () => ({ body: '{"result": allow}' });
    const { auth } = source();
    const out = await auth('alice');
    expect(out).toMatchObject({ ok: false, reason: 'unavailable' });
    expect(!out.ok && out.detail).toMatch(/answered with a body that is not JSON/);
  });

  test('JSON under another Content-Type', async () => {
    hook.reply = () => ({ headers: { 'content-type': 'text/plain' }, body: '{"result":"allow"}' });
    const { auth } = source();
    expect(await auth('alice')).toMatchObject({ ok: false, reason: 'unavailable', detail: `${hook.url} answered with Content-Type "text/plain", not application/json` });
  });

  test.each([
    ['no result', '{"user":"alice"}', /result/],
    ['a result it does not know', '{"result":"maybe"}', /result/],
    ['a result of the wrong type', '{"result":true}', /result/],
    ['addresses as a string', '{"result":"allow","addresses":"alice@corp.example"}', /addresses/],
    ['an address that is not one', '{"result":"allow","addresses":["alice"]}', /addresses\.0/],
    ['a group that is a number', '{"result":"allow","groups":["staff",7]}', /groups\.1/],
    ['a user of the wrong type', '{"result":"allow","user":5}', /user/],
    ['an empty user', '{"result":"allow","user":""}', /user/],
    ['a user with a line break', '{"result":"allow","user":"alice\\r\\nX-Injected: 1"}', /user/],
    ['null for a field', '{"result":"allow","groups":null}', /groups/],
    ['an array', '[{"result":"allow"}]', /the answer/],
  ])('a malformed answer: %s', async (_name, body, names) => {
    hook.reply = () => ({ body });
    const { auth } = source();
    const out = await auth('alice');
    expect(out).toMatchObject({ ok: false, reason: 'unavailable' });
    expect(!out.ok && out.detail).toMatch(/answered with a malformed answer/);
    expect(!out.ok && out.detail).toMatch(names);
  });

  test('an answer over 64 KiB, with a Content-Length or chunked', async () => {
    const big = JSON.stringify({ result: 'allow', padding: 'x'.repeat(MAX_ANSWER_BYTES) });
    const { auth } = source();
    hook.reply = () => ({ body: big });
    expect(await auth('alice')).toMatchObject({ ok: false, reason: 'unavailable', detail: `${hook.url} answered with a body over ${MAX_ANSWER_BYTES} bytes` });
    hook.reply = () => ({ headers: { 'transfer-encoding': 'chunked' }, body: big });
    expect(await auth('alice')).toMatchObject({ ok: false, reason: 'unavailable', detail: `${hook.url} answered with a body over ${MAX_ANSWER_BYTES} bytes` });
  });

  test('a hook that does not answer is unavailable when the timeout runs out', async () => {
    hook.reply = () => 'hang';
    const { auth } = source({ timeout: 300 });
    const started = performance.now();
    const out = await auth('alice');
    const took = performance.now() - started;
    expect(out).toMatchObject({ ok: false, reason: 'unavailable', detail: `${hook.url}: no complete answer within 300 ms` });
    expect(took).toBeGreaterThanOrEqual(290);
  });

  test('a certificate from another CA is unavailable, and the detail says TLS', async () => {
    const { auth } = source({ ca: otherCa });
    const out = await auth('alice');
    expect(out).toMatchObject({ ok: false, reason: 'unavailable' });
    expect(!out.ok && out.detail).toMatch(new RegExp(`^${hook.url.replace(/[.?]/g, '\\$&')}: TLS: .*(certificate|UNABLE_TO_VERIFY)`, 'i'));
  });

  test('without auth.http.ca the system CAs do not know the test CA', async () => {
    const { auth } = source({ ca: null });
    expect(await auth('alice')).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringMatching(/: TLS: /) });
  });

  test('a hook that is not running is unavailable, naming the connection error', async () => {
    const gone = await startAuthHook();
    await gone.stop();
    const { auth } = source({ url: gone.url });
    expect(await auth('alice')).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringMatching(/ECONNREFUSED/) });
  });
});

/**
 * undici hands a kept-alive socket to the next request only after a full turn of the event
 * loop (it waits for a server that closes despite keep-alive). Two AUTHs from SMTP clients are
 * always further apart than that (each is read from a socket), so a test that asks in a tight
 * loop waits that one turn between sign-ins, as the clients' reads would.
 */
const nextSignIn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('connections', () => {
  test('sequential sign-ins share one kept-alive TLS connection', async () => {
    const { auth } = source();
    const first = hook.connectionCount;
    for (const user of ['alice', 'bob', 'carol', 'mallory', 'alice']) {
      await auth(user);
      await nextSignIn();
    }
    expect(hook.connectionCount - first).toBe(1);
    expect(new Set(hook.requests.slice(-5).map((r) => r.connection)).size).toBe(1);
  });

  test('the constructor connects to nothing; close() closes the connection', async () => {
    const { s, auth } = source();
    const first = hook.connectionCount;
    await Promise.resolve();
    expect(hook.connectionCount).toBe(first);
    await auth('alice');
    expect(hook.connectionCount).toBe(first + 1);
    await s.close();
    await hook.allClosed();
  });

  test('a hook that restarts is reached again by the next sign-in', async () => {
    const tls = await issueServerCert(ca, 'localhost');
    let restartable = await startAuthHook({ users: USERS, tls });
    const { auth } = source({ url: restartable.url, token: undefined });
    try {
      expect(await auth('bob')).toMatchObject({ ok: true });
      await restartable.stop();
      expect(await auth('bob')).toMatchObject({ ok: false, reason: 'unavailable' });
      restartable = await startAuthHook({ users: USERS, tls, port: restartable.port });
      expect(await auth('bob')).toMatchObject({ ok: true });
    } finally {
      await restartable.stop();
    }
  });

  test('http:// to localhost works', async () => {
    const plain = await startAuthHook({ users: USERS, token: TOKEN });
    try {
      expect(plain.url).toMatch(/^http:\/\/localhost:/);
      const { auth } = source({ url: plain.url });
      expect(await auth('bob')).toEqual({ ok: true, user: { username: 'bob' } });
      await nextSignIn();
      expect(await auth('bob', 'nope')).toMatchObject({ ok: false, reason: 'bad_credentials' });
      expect(plain.connectionCount).toBe(1);
    } finally {
      await plain.stop();
    }
  });
});

describe('probe', () => {
  test('asks for the made-up probe user with an empty password and reports the answer and latency', async () => {
    const { s } = source();
    const report = await s.probe();
    expect(report).toMatch(new RegExp(`^${hook.url.replace(/[.?]/g, '\\$&')} answered "unknown" for the made-up user ${PROBE_USER} in \\d+ ms \\(a well-formed answer: the hook works and took the token\\)$`));
    const seen = hook.requests.at(-1)!;
    expect(seen.headers['x-smtpgate-probe']).toBe('1');
    expect(JSON.parse(seen.body)).toMatchObject({ user: PROBE_USER, password: '', mechanism: 'PLAIN', tls: null });
  });

  test('rejects a hook that lets the probe user in', async () => {
    hook.reply = () => ({ body: '{"result":"allow"}' });
    const { s } = source();
    await expect(s.probe()).rejects.toThrow(/allowed the made-up user smtpgate-probe with an empty password/);
  });

  test('rejects a hook that cannot decide now (tempfail), with its reason', async () => {
    hook.reply = () => ({ body: '{"result":"tempfail","reason":"LDAP down"}' });
    await expect(source().s.probe()).rejects.toThrow(`auth.http: ${hook.url} answered "tempfail" (LDAP down): it cannot decide now`);
  });

  test('rejects naming the failure and the fix', async () => {
    await expect(source({ token: 'wrong' }).s.probe()).rejects.toThrow(/refused smtpgate's token \(HTTP 401\)\. Check that auth\.http\.tokenFile/);
    await expect(source({ ca: otherCa }).s.probe()).rejects.toThrow(/TLS: .*auth\.http\.ca/);
    hook.reply = () => ({ body: '{"result":"yes"}' });
    await expect(source().s.probe()).rejects.toThrow(/malformed answer .*The hook must answer HTTP 200/);
  });
});

describe('lookup (no password: an app password smtpgate checked itself)', () => {
  test('is a POST of {lookup: true, user, client, listener} with the token, and no password, mechanism or tls key', async () => {
    const { lookUp } = source();
    await lookUp('alice');
    const body = lastRequestBody();
    expect(body).toEqual({ lookup: true, user: 'alice', client: { address: '192.0.2.11', session: 'sess-43' }, listener: 'submission' });
    for (const key of ['password', 'mechanism', 'tls']) expect(body, key).not.toHaveProperty(key);
  });

  test('allow gives the canonical login, lower-cased addresses and the groups, as for a sign-in', async () => {
    const { auth, lookUp } = source();
    const found = await lookUp('alice');
    expect(found).toEqual({
      ok: true,
      user: { username: 'Alice', attributes: { addresses: ['alice@corp.example', '*@sales.corp.example'], groups: ['staff', 'sales'] } },
    });
    expect(await auth('alice')).toEqual(found);
    expect(await lookUp('bob')).toEqual({ ok: true, user: { username: 'bob' } });
  });

  test('unknown is unknown_user, disabled is disabled, tempfail is unavailable', async () => {
    const { lookUp } = source();
    expect(await lookUp('mallory')).toMatchObject({ ok: false, reason: 'unknown_user' });
    expect(await lookUp('carol')).toMatchObject({ ok: false, reason: 'disabled', detail: `${hook.url} said disabled: account locked` });
    hook.reply = () => ({ body: '{"result":"tempfail","reason":"directory down"}' });
    expect(await lookUp('alice')).toMatchObject({ ok: false, reason: 'unavailable', detail: `${hook.url} said tempfail: directory down` });
  });

  test('deny, from a hook written before lookups that checked the absent password, fails closed: disabled, with a warning that the hook probably does not support lookups', async () => {
    const old = await startAuthHook({ users: USERS, token: TOKEN, tls: await issueServerCert(ca, 'localhost'), lookups: false });
    try {
      const { lookUp, lines } = source({ url: old.url });
      const outcome = await lookUp('alice');
      expect(outcome).toEqual({
        ok: false,
        reason: 'disabled',
        detail: `${old.url} said deny: wrong password (to a lookup, which has no password: the hook probably does not support lookups; refused as disabled)`,
      });
      expect(JSON.parse(old.requests.at(-1)!.body)).toMatchObject({ lookup: true, user: 'alice' });
      const warning = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.level === 'warn');
      expect(warning).toMatchObject({ msg: 'auth hook answered deny to a lookup', user: 'alice', session: 'sess-43' });
      // What the old hook does know stays as it was.
      expect(await lookUp('mallory')).toMatchObject({ ok: false, reason: 'unknown_user' });
    } finally {
      await old.stop();
    }
  });

  test.each([
    ['a body that is not JSON', { body: '{"result": allow}' }, /answered with a body that is not JSON/],
    ['a malformed answer', { body: '{"result":"exists"}' }, /answered with a malformed answer/],
    ['HTTP 500', { status: 500, body: '{"result":"allow"}' }, /answered HTTP 500$/],
    ['a refused token', { status: 401, body: '{}' }, /refused smtpgate's token \(HTTP 401\)$/],
  ])('%s is unavailable, as for a sign-in', async (_name, reply, detail) => {
    hook.reply = () => reply;
    const { lookUp } = source();
    const outcome = await lookUp('alice');
    expect(outcome).toMatchObject({ ok: false, reason: 'unavailable' });
    expect(!outcome.ok && outcome.detail).toMatch(detail);
  });

  test('a hook that is not running is unavailable', async () => {
    const gone = await startAuthHook();
    await gone.stop();
    const { lookUp } = source({ url: gone.url });
    expect(await lookUp('alice')).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringMatching(/ECONNREFUSED/) });
  });
});
