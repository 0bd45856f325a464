/**
 * SMTP smuggling through the whole proxy. The backend here is deliberately vulnerable: it ends
 * DATA on `<LF>.<LF>`, `<CR>.<CR>` and the other sloppy terminators old servers accepted, so a
 * bare CR or LF that leaked through smtpgate would show up as a second, smuggled message. Every
 * vector of test/fixtures/smuggling-vectors.txt is sent, in one write after the 354, through
 * a gate in each `data.bareLineEndings` mode.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import net from 'node:net';
import { metricValue, startGate, type Gate } from '../../helpers/gate.js';
import type { ConfigInput } from '../../helpers/config.js';
import { hasBareCrOrLf, startRawBackend, type RawBackend } from '../../helpers/raw-backend.js';
import { authenticatedSession, envelope } from '../../helpers/sessions.js';
import { smugglingCases } from '../../helpers/smuggling-vectors.js';

const CASES = smugglingCases();

function isSmuggled(m: { from: string; data: Buffer }): boolean {
  return m.from === 'spoof@corp.test' || /^Subject: smuggled\r?$/m.test(m.data.toString('latin1').split(/\r?\n\r?\n/)[0] ?? '');
}

test('hasBareCrOrLf finds a CR or LF outside a CRLF pair, and only that', () => {
  expect(hasBareCrOrLf(Buffer.from('a\r\nb\r\n'))).toBe(false);
  expect(hasBareCrOrLf(Buffer.from(''))).toBe(false);
  for (const bad of ['a\nb', 'a\rb', '\n', '\r', 'a\r\n\r', 'a\r\r\n', 'a\n\r\n', '\na']) expect(hasBareCrOrLf(Buffer.from(bad)), JSON.stringify(bad)).toBe(true);
});

test('control: fed the payloads directly, the lenient backend is smuggled a second message (so a leak through smtpgate would show)', async () => {
  const backend = await startRawBackend({ endOfData: 'lenient' });
  try {
    const fooled = new Set<string>();
    for (const { vector, payload } of CASES) {
      const before = backend.messages.length;
      const socket = net.connect(backend.port, '127.0.0.1');
      socket.resume(); // read the replies, or the backend's FIN is never seen
      await new Promise((r) => socket.once('connect', r));
      socket.write(Buffer.concat([Buffer.from('EHLO attacker.test\r\nMAIL FROM:<alice@corp.test>\r\nRCPT TO:<bob@corp.test>\r\nDATA\r\n'), payload, Buffer.from('QUIT\r\n')]));
      await new Promise((r) => socket.once('close', r));
      if (backend.messages.slice(before).some(isSmuggled)) fooled.add(vector.toString('latin1'));
    }
    // The classic ones, per SEC Consult: each ends DATA early on this backend.
    for (const v of ['\n.\n', '\n.\r\n', '\r.\r', '\r.\r\n', '\r.\n']) expect(fooled, JSON.stringify(v)).toContain(v);
  } finally {
    await backend.close();
  }
});

describe.each([
  { mode: 'reject', config: {} },
  { mode: 'normalize', config: { data: { bareLineEndings: 'normalize' } } },
] satisfies { mode: string; config: Partial<ConfigInput> }[])('data.bareLineEndings: $mode', ({ mode, config }) => {
  let backend: RawBackend;
  let gate: Gate;
  beforeAll(async () => {
    backend = await startRawBackend({ endOfData: 'lenient' });
    gate = await startGate({ backendPort: backend.port, config });
  });
  afterAll(async () => {
    await gate?.stop();
    await backend?.close();
  });

  test.each(CASES)('$name', async ({ payload }) => {
    const before = backend.messages.length;
    const connIndex = backend.connections.length;
    const c = await authenticatedSession(gate);
    const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    c.write(payload);
    const final = await c.read();
    await c.cmd('QUIT').catch(() => undefined);
    const conn = await backend.connection(connIndex);
    await conn.closed;

    const accepted = backend.messages.slice(before);
    if (mode === 'reject') {
      expect(final.raw).toMatch(/^550 5\.5\.2 Message refused: (bare CR|bare LF|NUL byte) in message/);
      expect(accepted).toHaveLength(0);
      expect(conn.sawEndOfData).toBe(false);
    } else {
      expect(final.code).toBe(250);
      expect(accepted).toHaveLength(1);
      expect(accepted[0]!.from).toBe('alice@corp.test');
      expect(accepted.some(isSmuggled)).toBe(false);
    }
    // What matters most: not one bare CR or LF ever reaches the backend, whatever the mode.
    expect(hasBareCrOrLf(conn.bytes)).toBe(false);
  });

  test('is counted', async () => {
    if (mode === 'reject') {
      expect(await metricValue(gate, 'smtpgate_smuggling_rejections_total')).toBe(CASES.length);
      expect(await metricValue(gate, 'smtpgate_refusals_total', { stage: 'data', reason: 'smuggling', code_class: '5xx' })).toBe(CASES.length);
      // Each refusal drops its backend connection on purpose: an attacker can't make the
      // backend look broken on the dashboard.
      expect(await metricValue(gate, 'smtpgate_backend_errors_total')).toBe(0);
    } else {
      expect(await metricValue(gate, 'smtpgate_smuggling_normalized_total')).toBeGreaterThanOrEqual(CASES.length);
      expect(await metricValue(gate, 'smtpgate_messages_total', { result: 'relayed' })).toBe(CASES.length);
    }
  });
});
