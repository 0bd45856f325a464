/**
 * backend.auth mechanism XOAUTH2, with the real binary (`smtpgate run`, dist/): the devices
 * behind smtpgate sign in with a password (or not at all), and smtpgate signs in to the
 * upstream with an OAuth2 token, as Microsoft 365 and Google require. The token endpoint is a
 * loopback server started here (test/helpers/token-endpoint.ts), and the backend checks every
 * bearer token it is shown against it (expired, revoked, or another mailbox's: refused with
 * Google's 334 error challenge, then 535).
 *
 * Needs `npm run build` first.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { scrapeMetric, startChildGate, type ChildGate } from '../../helpers/child-gate.js';
import { listener, openListener, type BackendInput } from '../../helpers/config.js';
import { ALICE, type GateUser } from '../../helpers/gate.js';
import { eventually } from '../../helpers/sessions.js';
import { SmtpTalk, type Reply } from '../../helpers/smtp-talk.js';
import { startTokenEndpoint, type TestTokenEndpoint, type TokenEndpointOptions } from '../../helpers/token-endpoint.js';

const ERPBOT: GateUser = { name: 'erpbot', password: 'erp system password 1' };
const MS_SCOPE = 'https://outlook.office365.com/.default';

interface Rig {
  readonly tokens: TestTokenEndpoint;
  readonly backend: RecordingBackend;
  readonly gate: ChildGate;
}

/** A token endpoint, a backend that checks bearer tokens against it, and smtpgate between. */
async function rig(endpoint: TokenEndpointOptions, auth: (url: string) => BackendInput['auth'], files: Record<string, (t: TestTokenEndpoint) => string>): Promise<Rig> {
  const tokens = await startTokenEndpoint(endpoint);
  onTestFinished(() => tokens.close());
  const backend = await startRecordingBackend({ xoauth2: { check: (token, user) => tokens.check(token, user) } });
  onTestFinished(() => backend.close());
  const gate = await startChildGate({
    backend: { address: `127.0.0.1:${backend.port}`, auth: auth(tokens.url) },
    listeners: [listener('smtps', { tls: 'implicit' }), openListener({ name: 'printers' })],
    auth: { users: 'users', attributes: 'attributes.yaml' },
    users: [ALICE, ERPBOT],
    // The renewal test sends back to back for ~20 s: on a quiet machine that is more than the
    // default 60 connections a minute from one address, and the 61st would get 421 at the greeting.
    config: { limits: { connectionRate: 'off' } },
    beforeStart: async (dir) => {
      await writeFile(path.join(dir, 'attributes.yaml'), 'alice:\n  addresses: [alice@corp.test]\nerpbot:\n  addresses: [erp@corp.test]\n  groups: [erp]\n');
      for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text(tokens));
    },
  });
  onTestFinished(() => gate.stop());
  return { tokens, backend, gate };
}

/** One session, one message: the reply to MAIL, and to the final dot when MAIL was accepted. */
async function send(gate: ChildGate, from: string, opts: { user?: GateUser; listener?: 'smtps' | 'printers' } = {}): Promise<{ mail: Reply; final?: Reply }> {
  const where = opts.listener ?? 'smtps';
  const c = await SmtpTalk.connect(gate.port(where), { implicitTls: where === 'smtps' });
  try {
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    if (opts.user) expect((await c.authPlain(opts.user.name, opts.user.password)).code).toBe(235);
    const mail = await c.cmd(`MAIL FROM:<${from}>`);
    if (mail.code !== 250) return { mail };
    expect((await c.cmd('RCPT TO:<bob@example.org>')).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    const final = await c.cmd(`Subject: scan\r\n\r\nfrom ${from}\r\n.`);
    await c.cmd('QUIT');
    return { mail, final };
  } finally {
    c.close();
  }
}

/** The first log line that matches, once written: the log is flushed every 250 ms. */
async function logged(gate: ChildGate, match: (line: Record<string, unknown>) => boolean, what: string): Promise<Record<string, unknown>> {
  await eventually(() => gate.logs.some(match), what);
  return gate.logs.find(match)!;
}

const clientCredentials = (url: string): BackendInput['auth'] => ({
  mechanism: 'XOAUTH2',
  user: 'relay@example.com',
  oauth2: { grant: 'client_credentials', tokenUrl: url, clientId: 'app-id', clientSecretFile: 'oauth-client-secret', scope: MS_SCOPE },
});
const SECRET = { 'oauth-client-secret': () => 'abc~client-secret\n' };

describe('XOAUTH2 to the backend (smtpgate run)', () => {
  test('relays with a client-credentials token: the backend sees AUTH XOAUTH2 as backend.auth.user with a valid bearer, and one token serves every session', async () => {
    const { tokens, backend, gate } = await rig({ clientId: 'app-id', clientSecret: 'abc~client-secret', scope: MS_SCOPE }, clientCredentials, SECRET);
    for (let i = 0; i < 3; i++) expect((await send(gate, 'alice@corp.test', { user: ALICE })).final?.code).toBe(250);
    expect(backend.messages.map((m) => m.authUser)).toEqual(['relay@example.com', 'relay@example.com', 'relay@example.com']);
    expect(backend.xoauth2Attempts.map((a) => a.result)).toEqual(['ok', 'ok', 'ok']);
    expect(tokens.requests.map((r) => r.form)).toEqual([{ grant_type: 'client_credentials', client_id: 'app-id', client_secret: 'abc~client-secret', scope: MS_SCOPE }]);
    expect(await scrapeMetric(gate.metricsPort, 'smtpgate_backend_oauth_token_total', { result: 'issued' })).toBe(1);
    await logged(gate, (l) => l.msg === 'OAuth2 token for the backend obtained' && l.mailbox === 'relay@example.com', 'the token logged');
    // The secret never reaches the log.
    expect(gate.output()).not.toContain('abc~client-secret');
  });

  test('a token about to expire is renewed before it runs out: messages sent back to back across three token lifetimes all relay', async () => {
    // 8 s tokens: renewed with a fifth of the lifetime (1.6 s) left; the backend refuses an expired one.
    const { tokens, backend, gate } = await rig({ clientId: 'app-id', clientSecret: 'abc~client-secret', scope: MS_SCOPE, expiresIn: 8 }, clientCredentials, SECRET);
    const finals: number[] = [];
    const deadline = Date.now() + 60_000;
    while (tokens.issued.length < 3 && Date.now() < deadline) finals.push((await send(gate, 'alice@corp.test', { user: ALICE })).final?.code ?? 0);
    expect(tokens.issued.length).toBeGreaterThanOrEqual(3);
    expect(finals.filter((c) => c !== 250)).toEqual([]);
    expect(backend.xoauth2Attempts.filter((a) => a.result !== 'ok')).toEqual([]);
    expect(backend.messages).toHaveLength(finals.length);
    // Each renewal happened before its predecessor ran out.
    for (let i = 1; i < tokens.issued.length; i++) expect(tokens.issued[i]!.expiresAt - 8000).toBeLessThan(tokens.issued[i - 1]!.expiresAt);
  });

  test('a revoked grant: 454 4.7.0 to the client, counted and logged with the session; a refused renewal (invalid_grant) is not retried before the backoff', async () => {
    const refreshToken = (url: string): BackendInput['auth'] => ({
      mechanism: 'XOAUTH2',
      user: 'relay@example.com',
      oauth2: { grant: 'refresh_token', tokenUrl: url, clientId: 'app-id', refreshTokenFile: 'refresh-token' },
    });
    const { tokens, backend, gate } = await rig({ clientId: 'app-id', refreshTokens: { '1//refresh-relay': 'relay@example.com' } }, refreshToken, { 'refresh-token': () => '1//refresh-relay\n' });
    expect((await send(gate, 'alice@corp.test', { user: ALICE })).final?.code).toBe(250);
    expect(tokens.requests[0]!.form).toMatchObject({ grant_type: 'refresh_token', client_id: 'app-id', refresh_token: '1//refresh-relay' });

    // The user withdraws consent: the refresh token and the access tokens it gave stop working.
    tokens.revoke('1//refresh-relay');
    const refused = await send(gate, 'alice@corp.test', { user: ALICE });
    expect(refused.mail.raw).toBe('454 4.7.0 Temporary authentication failure at the mail server, try again later');
    expect(backend.xoauth2Attempts.map((a) => a.result)).toEqual(['ok', 'revoked']);
    await eventually(async () => (await scrapeMetric(gate.metricsPort, 'smtpgate_backend_oauth_token_total', { result: 'rejected' })) === 1, 'the rejected token counted');
    const rejected = await logged(gate, (l) => l.msg === 'OAuth2 token refused by the backend', 'the refused token logged');
    expect(rejected).toMatchObject({ mailbox: 'relay@example.com', result: 'rejected' });
    expect(String(rejected.error)).toMatch(/^535 .*"status":"401"/);
    await logged(gate, (l) => l.msg === 'refused: Temporary authentication failure at the mail server, try again later' && l.reason === 'backend_auth' && l.code === 454 && typeof l.session === 'string', 'the refusal logged with its session');

    // The next session asks for a new token: invalid_grant, 454, and no backend connection opened.
    const sessionsBefore = backend.sessions;
    expect((await send(gate, 'alice@corp.test', { user: ALICE })).mail.code).toBe(454);
    expect(tokens.requests).toHaveLength(2);
    expect(await logged(gate, (l) => l.msg === 'OAuth2 token for the backend: the token endpoint failed', 'the failed renewal logged')).toMatchObject({ error: 'invalid_grant: Token has been expired or revoked.' });
    // And the ones after it don't: no request before the backoff has passed.
    for (let i = 0; i < 3; i++) expect((await send(gate, 'alice@corp.test', { user: ALICE })).mail.code).toBe(454);
    expect(tokens.requests).toHaveLength(2);
    expect(backend.sessions).toBe(sessionsBefore);
    await eventually(async () => (await scrapeMetric(gate.metricsPort, 'smtpgate_backend_oauth_token_total', { result: 'backoff' })) === 3, 'the sessions refused without asking counted');
    expect(await scrapeMetric(gate.metricsPort, 'smtpgate_backend_oauth_token_total', { result: 'failed' })).toBe(1);
    expect(await scrapeMetric(gate.metricsPort, 'smtpgate_messages_total', { result: 'relayed' })).toBe(1);
  });

  test('the mailbox is chosen per listener and per group: the printers send as the scanner mailbox, the ERP group as its own, everyone else as backend.auth.user', async () => {
    const serviceAccount = (url: string): BackendInput['auth'] => ({
      mechanism: 'XOAUTH2',
      user: 'relay@example.com',
      oauth2: { grant: 'service_account', tokenUrl: url, keyFile: 'service-account.json' },
      mailboxes: [
        { listener: 'printers', user: 'scanner@example.com' },
        { group: 'erp', user: 'erp@example.com' },
      ],
    });
    const { tokens, backend, gate } = await rig({ scope: 'https://mail.google.com/' }, serviceAccount, { 'service-account.json': (t) => t.serviceAccountKey });
    expect((await send(gate, 'printer@corp.test', { listener: 'printers' })).final?.code).toBe(250);
    expect((await send(gate, 'erp@corp.test', { user: ERPBOT })).final?.code).toBe(250);
    expect((await send(gate, 'alice@corp.test', { user: ALICE })).final?.code).toBe(250);
    expect((await send(gate, 'printer@corp.test', { listener: 'printers' })).final?.code).toBe(250);
    expect(backend.messages.map((m) => [m.from, m.authUser])).toEqual([
      ['printer@corp.test', 'scanner@example.com'],
      ['erp@corp.test', 'erp@example.com'],
      ['alice@corp.test', 'relay@example.com'],
      ['printer@corp.test', 'scanner@example.com'],
    ]);
    // One token per mailbox, each a JWT whose sub is the mailbox (domain-wide delegation).
    expect(tokens.requests.map((r) => r.claims?.sub)).toEqual(['scanner@example.com', 'erp@example.com', 'relay@example.com']);
    expect(backend.xoauth2Attempts.every((a) => a.result === 'ok')).toBe(true);
  });
});
