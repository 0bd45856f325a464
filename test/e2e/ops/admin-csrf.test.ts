/**
 * The admin routes (/limits, /limits/clear) answer programs (`smtpgate limits`, curl), never a
 * browser: a page on another origin must not lift a lockout through the admin's browser (CSRF),
 * nor read the state after pointing its own name at 127.0.0.1 (DNS rebinding). Real HTTP
 * requests shaped as a browser sends them.
 */
import { describe, expect, test } from 'vitest';
import type { Gate } from '../../helpers/gate.js';
import { ADMIN_TOKEN, adminGatesForFile } from '../../helpers/admin-gates.js';
import { fetchLimitsState, requestLimitsClear } from '../../../src/limits/admin.js';

const gates = adminGatesForFile();

const base = (g: Gate) => `http://127.0.0.1:${g.metricsPort}`;
const BODY = JSON.stringify({ target: '192.0.2.7' });

/** The content types a cross-site form or fetch may send without a CORS preflight, and none at all. */
const SIMPLE_REQUEST_TYPES = ['text/plain', 'text/plain;charset=UTF-8', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', undefined];

describe('POST /limits/clear needs a JSON body', () => {
  test.each(SIMPLE_REQUEST_TYPES)('refuses content type %s with 415', async (type) => {
    const res = await fetch(`${base(gates.open)}/limits/clear`, { method: 'POST', headers: type ? { 'content-type': type } : {}, body: type === undefined ? undefined : BODY });
    expect(res.status).toBe(415);
    expect(((await res.json()) as { error: string }).error).toContain('application/json');
  });

  test('accepts application/json, with or without a charset', async () => {
    for (const type of ['application/json', 'Application/JSON; charset=utf-8']) {
      const res = await fetch(`${base(gates.open)}/limits/clear`, { method: 'POST', headers: { 'content-type': type }, body: BODY });
      expect(res.status, type).toBe(200);
      expect(await res.json()).toMatchObject({ target: '192.0.2.7', kind: 'ip' });
    }
  });
});

describe('a request from a browser is refused with 403', () => {
  const BROWSER: Record<string, Record<string, string>> = {
    'a foreign Origin': { origin: 'https://evil.example' },
    'Origin: null (sandboxed frame, file: page)': { origin: 'null' },
    'an Origin naming the admin address itself (DNS rebinding makes any name "same origin")': { origin: 'http://127.0.0.1:9464' },
    'Sec-Fetch-Site: cross-site': { 'sec-fetch-site': 'cross-site' },
    'Sec-Fetch-Site: same-origin (a rebound name: same origin, other site)': { 'sec-fetch-site': 'same-origin' },
  };

  test.each(Object.keys(BROWSER))('POST /limits/clear with %s', async (name) => {
    const res = await fetch(`${base(gates.open)}/limits/clear`, { method: 'POST', headers: { 'content-type': 'application/json', ...BROWSER[name] }, body: BODY });
    expect(res.status).toBe(403);
    expect(((await res.json()) as { error: string }).error).toMatch(/browser/);
  });

  test.each(Object.keys(BROWSER))('GET /limits with %s', async (name) => {
    expect((await fetch(`${base(gates.open)}/limits`, { headers: BROWSER[name] })).status).toBe(403);
  });

  test('each refusal is logged with the client, the path and the browser marks', async () => {
    const before = gates.open.logs.length;
    await fetch(`${base(gates.open)}/limits/clear`, { method: 'POST', headers: { 'content-type': 'application/json', origin: 'https://evil.example' }, body: BODY });
    await fetch(`${base(gates.open)}/limits/clear`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: BODY });
    const lines = gates.open.logs.slice(before).filter((l) => l.msg === 'admin request refused');
    expect(lines).toEqual([
      expect.objectContaining({ level: 'warn', status: 403, path: '/limits/clear', client: '127.0.0.1', origin: 'https://evil.example' }),
      expect.objectContaining({ level: 'warn', status: 415, path: '/limits/clear', client: '127.0.0.1', contentType: 'text/plain' }),
    ]);
  });

  test('even with the right token', async () => {
    const res = await fetch(`${base(gates.withToken)}/limits`, { headers: { origin: 'https://evil.example', authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(res.status).toBe(403);
  });

  test('the probes and /metrics are not admin routes: they answer as before', async () => {
    expect((await fetch(`${base(gates.open)}/metrics`, { headers: { origin: 'https://evil.example' } })).status).toBe(200);
    expect((await fetch(`${base(gates.open)}/healthz`, { headers: { 'sec-fetch-site': 'cross-site' } })).status).toBe(200);
  });
});

describe('the CLI client still gets through', () => {
  test('fetchLimitsState and requestLimitsClear, with and without a token', async () => {
    expect(await fetchLimitsState(base(gates.open))).toHaveProperty('lockedIps');
    expect(await requestLimitsClear(base(gates.open), 'bob')).toMatchObject({ kind: 'user' });
    expect(await fetchLimitsState(base(gates.withToken), { token: ADMIN_TOKEN })).toHaveProperty('lockedIps');
    expect(await requestLimitsClear(base(gates.withToken), 'bob', { token: ADMIN_TOKEN })).toMatchObject({ kind: 'user' });
  });
});
