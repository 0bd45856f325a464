/**
 * OAuth2 tokens for the backend sign-in (src/relay/upstream-tokens.ts), against a token
 * endpoint on loopback (test/helpers/token-endpoint.ts): each grant's request, one token per
 * mailbox reused until it is due, renewal before expiry, one request for concurrent sessions,
 * and no retry loop after a failure. Only Date is faked (to move past expiry and backoff):
 * the sockets are real.
 */
import http from 'node:http';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { UpstreamAuthError, UpstreamTokens, parseServiceAccountKey, type TokenSettings } from '../../src/relay/upstream-tokens.js';
import type { TokenResult } from '../../src/metrics/catalogue.js';
import { startTokenEndpoint, type TestTokenEndpoint } from '../helpers/token-endpoint.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const c of cleanups.splice(0).reverse()) await c();
});

const MS_SCOPE = 'https://outlook.office365.com/.default';

async function endpoint(opts: Parameters<typeof startTokenEndpoint>[0] = {}): Promise<TestTokenEndpoint> {
  const e = await startTokenEndpoint({ clientId: 'app-id', clientSecret: 's3cret', scope: MS_SCOPE, ...opts });
  cleanups.push(() => e.close());
  return e;
}

function tokens(settings: Partial<TokenSettings> & Pick<TokenSettings, 'grant' | 'tokenUrl'>): { tokens: UpstreamTokens; results: Array<[TokenResult, string]> } {
  const results: Array<[TokenResult, string]> = [];
  const t = new UpstreamTokens({ timeoutMs: 2000, renewBeforeMs: 300_000, ...settings }, { onResult: (r, mailbox) => results.push([r, mailbox]) });
  cleanups.push(() => t.close());
  return { tokens: t, results };
}

const clientCredentials = (e: TestTokenEndpoint): TokenSettings => ({ grant: 'client_credentials', tokenUrl: e.url, clientId: 'app-id', clientSecret: 's3cret', scope: MS_SCOPE, timeoutMs: 2000, renewBeforeMs: 300_000 });

describe('client credentials (Microsoft identity platform)', () => {
  test('asks the token URL with grant_type, client id, secret and scope; the token is reused until due', async () => {
    const e = await endpoint();
    const { tokens: t, results } = tokens(clientCredentials(e));
    const first = await t.token('scanner@example.com');
    expect(e.check(first, 'scanner@example.com')).toBe('ok');
    expect(await t.token('scanner@example.com')).toBe(first);
    expect(e.requests.map((r) => r.form)).toEqual([{ grant_type: 'client_credentials', client_id: 'app-id', client_secret: 's3cret', scope: MS_SCOPE }]);
    expect(results).toEqual([['issued', 'scanner@example.com']]);
  });

  test('concurrent sessions wait for one request', async () => {
    const e = await endpoint();
    const { tokens: t } = tokens(clientCredentials(e));
    const got = await Promise.all(Array.from({ length: 8 }, () => t.token('scanner@example.com')));
    expect(new Set(got).size).toBe(1);
    expect(e.requests).toHaveLength(1);
  });

  test('each mailbox has its own cache entry', async () => {
    const e = await endpoint();
    const { tokens: t } = tokens(clientCredentials(e));
    await t.token('scanner@example.com');
    await t.token('erp@example.com');
    await t.token('scanner@example.com');
    expect(e.requests).toHaveLength(2);
  });

  test('renews once less than a fifth of the lifetime (at most renewBefore) is left, before the token runs out', async () => {
    const e = await endpoint({ expiresIn: 3600 });
    const { tokens: t } = tokens(clientCredentials(e));
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2026-12-01T12:00:00Z'));
    const first = await t.token('scanner@example.com');
    // 3600 s lifetime: renewBefore (300 s) is the smaller margin.
    vi.setSystemTime(new Date('2026-12-01T12:54:59Z'));
    expect(await t.token('scanner@example.com')).toBe(first);
    vi.setSystemTime(new Date('2026-12-01T12:55:01Z'));
    const second = await t.token('scanner@example.com');
    expect(second).not.toBe(first);
    expect(e.check(first, 'scanner@example.com')).toBe('ok');
    expect(e.requests).toHaveLength(2);
  });

  test('a failed renewal while the old token is still valid: the old one serves, the failure is counted, and no request is made before the backoff', async () => {
    let fail = false;
    const e = await endpoint({ expiresIn: 100, answer: () => (fail ? { status: 503, body: 'busy' } : undefined) });
    const { tokens: t, results } = tokens(clientCredentials(e));
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2026-12-01T12:00:00Z'));
    const first = await t.token('scanner@example.com');
    fail = true;
    vi.setSystemTime(new Date('2026-12-01T12:01:25Z'));
    expect(await t.token('scanner@example.com')).toBe(first);
    expect(await t.token('scanner@example.com')).toBe(first);
    expect(e.requests).toHaveLength(2);
    expect(results.map(([r]) => r)).toEqual(['issued', 'failed']);
  });

  test('a refused secret: UpstreamAuthError with the endpoint\'s error; the next session within the backoff is refused without a request; after it, one request', async () => {
    const e = await endpoint({ clientSecret: 'another' });
    const { tokens: t, results } = tokens(clientCredentials(e));
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2026-12-01T12:00:00Z'));
    const err = await t.token('scanner@example.com').catch((x: unknown) => x);
    expect(err).toBeInstanceOf(UpstreamAuthError);
    expect(err).toMatchObject({ kind: 'token', mailbox: 'scanner@example.com' });
    expect((err as Error).message).toContain('invalid_client: AADSTS7000215');
    await expect(t.token('scanner@example.com')).rejects.toMatchObject({ kind: 'backoff' });
    expect(e.requests).toHaveLength(1);
    vi.setSystemTime(new Date('2026-12-01T12:00:05Z'));
    await expect(t.token('scanner@example.com')).rejects.toMatchObject({ kind: 'token' });
    expect(e.requests).toHaveLength(2);
    // Second failure in a row: 10 s.
    vi.setSystemTime(new Date('2026-12-01T12:00:14Z'));
    await expect(t.token('scanner@example.com')).rejects.toMatchObject({ kind: 'backoff' });
    expect(results.map(([r]) => r)).toEqual(['failed', 'backoff', 'failed', 'backoff']);
  });

  test('a token the backend refused is dropped: the next session gets a new one; refused again right after, later sessions wait out a backoff', async () => {
    const e = await endpoint();
    const { tokens: t, results } = tokens(clientCredentials(e));
    const reply = { code: 535, enhanced: '5.7.3', lines: ['5.7.3 Authentication unsuccessful'], text: 'Authentication unsuccessful' };
    const first = await t.token('scanner@example.com');
    t.rejected('scanner@example.com', reply);
    const second = await t.token('scanner@example.com');
    expect(second).not.toBe(first);
    t.rejected('scanner@example.com', reply);
    await expect(t.token('scanner@example.com')).rejects.toMatchObject({ kind: 'backoff' });
    expect(e.requests).toHaveLength(2);
    expect(results.map(([r]) => r)).toEqual(['issued', 'rejected', 'issued', 'rejected', 'backoff']);
  });

  test('a redirect is not followed: only the configured URL is contacted', async () => {
    let elsewhere = 0;
    const other = http.createServer((_req, res) => {
      elsewhere++;
      res.end('{"access_token":"stolen","expires_in":3600}');
    });
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', () => resolve()));
    cleanups.push(() => new Promise((resolve) => other.close(() => resolve())));
    const port = (other.address() as { port: number }).port;
    const e = await endpoint({ answer: () => ({ status: 302, headers: { location: `http://127.0.0.1:${port}/token` }, body: '' }) });
    const { tokens: t } = tokens(clientCredentials(e));
    await expect(t.token('scanner@example.com')).rejects.toThrow(/redirected to http:\/\/127\.0\.0\.1:\d+\/token \(HTTP 302\); redirects are not followed/);
    expect(elsewhere).toBe(0);
  });

  test('an endpoint that is down: the error names the URL', async () => {
    const e = await endpoint();
    await e.close();
    const { tokens: t } = tokens(clientCredentials(e));
    await expect(t.token('scanner@example.com')).rejects.toThrow(new RegExp(`no OAuth2 token for scanner@example.com: ${e.url.replace(/[.?/]/g, '\\$&')}: .*ECONNREFUSED`));
  });
});

describe('refresh token (a user\'s consent)', () => {
  test('sends the mailbox\'s refresh token with the client id; invalid_grant after revocation', async () => {
    const e = await endpoint({ clientSecret: undefined, refreshTokens: { 'rt-scanner': 'scanner@example.com' } });
    const { tokens: t } = tokens({ grant: 'refresh_token', tokenUrl: e.url, clientId: 'app-id', refreshTokens: new Map([['scanner@example.com', 'rt-scanner']]) });
    const token = await t.token('scanner@example.com');
    expect(e.check(token, 'scanner@example.com')).toBe('ok');
    expect(e.requests[0]!.form).toMatchObject({ grant_type: 'refresh_token', client_id: 'app-id', refresh_token: 'rt-scanner' });
    e.revoke('rt-scanner');
    t.rejected('scanner@example.com', { code: 535, lines: [], text: 'revoked' });
    await expect(t.token('scanner@example.com')).rejects.toThrow('invalid_grant: Token has been expired or revoked.');
  });
});

describe('service account (Google, domain-wide delegation)', () => {
  test('a JWT signed with the key, its sub the mailbox and scope https://mail.google.com/: one token per mailbox', async () => {
    const e = await endpoint({ scope: 'https://mail.google.com/' });
    const { tokens: t } = tokens({ grant: 'service_account', tokenUrl: e.url, serviceAccount: parseServiceAccountKey(e.serviceAccountKey), scope: 'https://mail.google.com/' });
    const scanner = await t.token('scanner@example.com');
    const erp = await t.token('erp@example.com');
    expect(e.check(scanner, 'scanner@example.com')).toBe('ok');
    expect(e.check(erp, 'erp@example.com')).toBe('ok');
    expect(e.check(scanner, 'erp@example.com')).toBe('wrong_user');
    expect(e.requests.map((r) => r.claims?.sub)).toEqual(['scanner@example.com', 'erp@example.com']);
    expect(e.requests[0]!.claims).toMatchObject({ iss: e.serviceAccountEmail, aud: e.url, scope: 'https://mail.google.com/' });
  });

  test('a key file that is not a service account key is refused with what to download', () => {
    expect(() => parseServiceAccountKey('-----BEGIN PRIVATE KEY-----')).toThrow(/JSON key file/);
    expect(() => parseServiceAccountKey('{"client_email":"a@b","private_key":"nope"}')).toThrow(/private_key is not a usable private key/);
  });
});
