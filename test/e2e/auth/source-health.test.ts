/**
 * An auth source's health, as an operator watches it: smtpgate_auth_source_up{source} goes to 0
 * at the first sign-in the source can't answer, and /readyz turns 503 naming it when no source
 * of auth.backend answers (nobody could sign in); with another source still up, /readyz stays
 * ready and only the metric tells. A source that is down is checked again in the background
 * (every 5 s), so it comes back up without waiting for a sign-in. The HTTP hook stands for any
 * source here: the chain treats them all alike (auth/chain.ts).
 */
import { afterEach, beforeAll, afterAll, expect, test } from 'vitest';
import { ALICE, metricValue, startGate, type Gate } from '../../helpers/gate.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { startAuthHook, type AuthHook } from '../../helpers/auth-hook.js';
import { eventually } from '../../helpers/sessions.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

const PASSWORD = 'a directory password';

let backend: RecordingBackend;
let gate: Gate | undefined;
let hook: AuthHook | undefined;
beforeAll(async () => {
  backend = await startRecordingBackend();
});
afterAll(async () => {
  await backend?.close();
});
afterEach(async () => {
  await gate?.stop();
  await hook?.stop();
  gate = hook = undefined;
});

async function authCode(user: string, password: string): Promise<number> {
  const c = await SmtpTalk.connect(gate!.port('smtps'), { implicitTls: true });
  try {
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    return (await c.authPlain(user, password)).code;
  } finally {
    c.close();
  }
}

async function readyz(): Promise<{ status: number; reasons: string[] }> {
  const res = await fetch(`http://127.0.0.1:${gate!.metricsPort}/readyz`);
  return { status: res.status, reasons: ((await res.json()) as { reasons: string[] }).reasons };
}

const up = () => metricValue(gate!, 'smtpgate_auth_source_up', { source: 'http' });

test('the only source down: smtpgate_auth_source_up 0 and /readyz 503 naming it; back up by itself once it answers again', async () => {
  hook = await startAuthHook({ users: { bob: { password: PASSWORD } } });
  const port = hook.port;
  gate = await startGate({ backendPort: backend.port, auth: { backend: ['http'], http: { url: hook.url, timeout: '2s' } } });
  await eventually(async () => (await readyz()).status === 200, '/readyz to be ready once the start-up check reached the hook');
  expect(await up()).toBe(1);

  await hook.stop();
  expect(await authCode('bob', PASSWORD)).toBe(454);
  expect(await up()).toBe(0);
  const down = await readyz();
  expect(down.status).toBe(503);
  expect(down.reasons).toEqual([expect.stringMatching(new RegExp(`^no auth source answers: http \\(.*:${port}.*ECONNREFUSED.*\\)$`))]);
  expect(gate.logs.filter((l) => l.msg === 'auth source down' && l.source === 'http')).toHaveLength(1);

  // No sign-in comes: the background check finds the hook again.
  hook = await startAuthHook({ users: { bob: { password: PASSWORD } }, port });
  await eventually(async () => (await up()) === 1, 'the background check to find the hook again', 15_000);
  expect((await readyz()).status).toBe(200);
  expect(gate.logs.filter((l) => l.msg === 'auth source up again' && l.source === 'http')).toHaveLength(1);
  expect(await authCode('bob', PASSWORD)).toBe(235);
});

test('one source of two down: /readyz stays ready (the users file still signs people in); the metric and the log tell', async () => {
  hook = await startAuthHook({ users: { bob: { password: PASSWORD } } });
  gate = await startGate({ backendPort: backend.port, auth: { backend: ['file', 'http'], users: 'users', http: { url: hook.url, timeout: '2s' } } });
  const asked = hook.requests;
  await hook.stop();
  // alice is in the users file: the file decides, the hook isn't asked. (Its metric may be 0
  // already: the start-up check can find the hook gone, which is right too.)
  expect(await authCode(ALICE.name, ALICE.password)).toBe(235);
  expect(asked.filter((r) => (JSON.parse(r.body) as { user?: string }).user === 'alice')).toEqual([]);
  // bob isn't: the hook is asked, and can't answer.
  expect(await authCode('bob', PASSWORD)).toBe(454);
  expect(await up()).toBe(0);
  expect(await metricValue(gate, 'smtpgate_auth_source_up', { source: 'file' })).toBe(1);
  expect(await readyz()).toEqual({ status: 200, reasons: [] });
});
