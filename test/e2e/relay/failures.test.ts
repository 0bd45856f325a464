/**
 * When the backend fails, or the client does, mid-transaction. The rules (DESIGN.md, "The
 * session pipeline"): a client never hears 250 before the backend said 250; a backend failure
 * is a 4xx (451 4.4.x) so the client keeps the message and retries; a transaction the client
 * abandons never gets its final dot, so the backend delivers nothing.
 */
import { describe, expect, test } from 'vitest';
import { metricValue, startGate } from '../../helpers/gate.js';
import { listener, openListener, type BackendInput } from '../../helpers/config.js';
import { startRecordingBackend } from '../../helpers/backends.js';
import { startRawBackend, type RawBackendOptions } from '../../helpers/raw-backend.js';
import { authenticatedSession, deadPort, envelope, eventually, forThisTest, openSession, stopGate, closeBackend } from '../../helpers/sessions.js';

/** n bytes of ordinary message text, in 78-octet lines. */
function body(n: number): string {
  const line = 'The quick brown fox jumps over the lazy dog, again and again and again ....\r\n';
  return 'Subject: big\r\n\r\n' + line.repeat(Math.ceil(n / line.length));
}

async function rawBackendBehindGate(opts: RawBackendOptions, backendExtra: Partial<BackendInput> = {}) {
  const backend = await forThisTest(startRawBackend(opts), closeBackend);
  const gate = await forThisTest(
    startGate({
      backend: { address: `127.0.0.1:${backend.port}`, ...backendExtra },
      listeners: [openListener(), listener('smtps', { tls: 'implicit' })],
    }),
    stopGate,
  );
  return { backend, gate };
}

describe('the backend fails', () => {
  test('nothing listening: MAIL gets 451 4.4.1, no transaction starts, and the connect error is counted', async () => {
    const port = await deadPort();
    const gate = await forThisTest(startGate({ backendPort: port }), stopGate);
    const before = await metricValue(gate, 'smtpgate_backend_errors_total', { backend: `127.0.0.1:${port}`, kind: 'connect' });
    const c = await authenticatedSession(gate);
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).raw).toBe('451 4.4.1 Mail server temporarily unreachable, try again later');
    expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(503);
    expect(await metricValue(gate, 'smtpgate_backend_errors_total', { backend: `127.0.0.1:${port}`, kind: 'connect' })).toBe(before + 1);
    expect(await metricValue(gate, 'smtpgate_refusals_total', { stage: 'mail', reason: 'backend_unavailable', code_class: '4xx' })).toBe(1);
    await c.cmd('QUIT');
  });

  test.each([1, 2])('no backend of %i reachable: the "backend failure" log line names the backend last tried and the session, never "none"', async (n) => {
    const ports = await Promise.all(Array.from({ length: n }, () => deadPort()));
    const names = ports.map((p) => `127.0.0.1:${p}`);
    const gate = await forThisTest(startGate({ backend: { address: names } }), stopGate);
    const c = await authenticatedSession(gate);
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(451);
    const failures = gate.logs.filter((l) => l.msg === 'backend failure');
    expect(failures).toHaveLength(1);
    // failover: tried in order, so the last one tried is the last one listed.
    expect(failures[0]).toMatchObject({ backend: names.at(-1), kind: 'connect', session: expect.any(String) });
    await c.cmd('QUIT');
  });

  test('the backend drops the connection mid-DATA: the client gets 451 4.4.2, never 250, and the next MAIL opens a new backend connection', async () => {
    const { backend, gate } = await rawBackendBehindGate({ dropAfterDataBytes: 4096 });
    const c = await authenticatedSession(gate);
    const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    c.write(body(256 * 1024));
    const final = await c.cmd('.');
    expect(final.raw).toBe('451 4.4.2 Connection to the mail server failed, try again later');
    const first = backend.connections[0]!;
    await first.closed;
    expect(first.sawEndOfData).toBe(false);
    expect(backend.messages).toHaveLength(0);
    expect(await metricValue(gate, 'smtpgate_messages_total', { result: 'relayed' })).toBe(0);
    // This one is the backend's doing, and the dashboard's backend error count says so.
    expect(await metricValue(gate, 'smtpgate_backend_errors_total', { kind: 'closed' })).toBeGreaterThanOrEqual(1);

    // The session is not poisoned: a new transaction gets a new backend connection.
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
    expect(backend.connections).toHaveLength(2);
    await c.cmd('QUIT');
  });

  test('the backend never answers the final dot: after backend.timeouts.finalReply (1s) the client gets 451 4.4.2, not 250', async () => {
    const { backend, gate } = await rawBackendBehindGate({ final: 'silent' }, { timeouts: { finalReply: '1s' } });
    const c = await authenticatedSession(gate);
    await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    c.write('Subject: into the void\r\n\r\nhello\r\n');
    const sent = Date.now();
    const final = await c.cmd('.');
    const waited = Date.now() - sent;
    expect(final.raw).toBe('451 4.4.2 Mail server timed out, try again later');
    // The configured 1 s, not the 5 min default and not at once.
    expect(waited).toBeGreaterThanOrEqual(900);
    expect(waited).toBeLessThan(10_000);
    expect(backend.connections[0]!.sawEndOfData).toBe(true);
    expect(await metricValue(gate, 'smtpgate_backend_errors_total', { kind: 'timeout' })).toBe(1);
    await c.cmd('QUIT');
  });
});

describe('the client goes away mid-DATA', () => {
  for (const how of ['reset', 'close'] as const) {
    test(`a client that ${how === 'reset' ? 'resets the TCP connection (RST)' : 'closes the connection (FIN)'} mid-DATA: the backend never gets the final dot, its connection is closed, and the message counts as aborted`, async () => {
      const { backend, gate } = await rawBackendBehindGate({});
      const before = await metricValue(gate, 'smtpgate_messages_total', { result: 'aborted' });
      const c = await openSession(gate);
      const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
      expect(data?.code).toBe(354);
      c.write(body(64 * 1024));
      const conn = backend.connections[0]!;
      // Some of the message has reached the backend: the transaction is really in flight.
      await conn.until((k) => k.dataBytes >= 16 * 1024, 'message data reaches the backend');
      if (how === 'reset') c.reset();
      else c.close();
      await conn.closed;
      expect(conn.sawEndOfData).toBe(false);
      expect(conn.bytes.includes('\r\n.\r\n')).toBe(false);
      expect(backend.messages).toHaveLength(0);
      await eventually(async () => (await metricValue(gate, 'smtpgate_messages_total', { result: 'aborted' })) === before + 1, 'messages_total{result="aborted"} + 1');
      expect(await metricValue(gate, 'smtpgate_messages_total', { result: 'relayed' })).toBe(0);
      // smtpgate dropped the backend connection on purpose: the backend did nothing wrong.
      expect(await metricValue(gate, 'smtpgate_backend_errors_total', { kind: 'closed' })).toBe(0);
    });
  }
});

test('a client that leaves while the backend has not yet answered DATA: counted as aborted, not as a backend failure, and nothing is delivered', async () => {
  const { backend, gate } = await rawBackendBehindGate({ dataReplyDelayMs: 300 });
  const before = await metricValue(gate, 'smtpgate_messages_total', { result: 'aborted' });
  const c = await openSession(gate);
  // smtp-server answers 354 at once; smtpgate is still waiting for the backend's.
  const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
  expect(data?.code).toBe(354);
  c.reset();
  await eventually(async () => (await metricValue(gate, 'smtpgate_messages_total', { result: 'aborted' })) === before + 1, 'messages_total{result="aborted"} + 1');
  expect(await metricValue(gate, 'smtpgate_refusals_total', { reason: 'backend_failed' })).toBe(0);
  await backend.connections[0]!.closed;
  expect(backend.messages).toHaveLength(0);
  expect(await metricValue(gate, 'smtpgate_backend_errors_total', { kind: 'closed' })).toBe(0);
});

test('a client that leaves while the backend has not yet answered RCPT: counted as the client leaving, not as a backend failure', async () => {
  const { backend, gate } = await rawBackendBehindGate({ rcptReplyDelayMs: 300 });
  const c = await openSession(gate);
  expect((await c.cmd('MAIL FROM:<app@corp.test>')).code).toBe(250);
  c.write('RCPT TO:<bob@corp.test>\r\n');
  const conn = backend.connections[0]!;
  await conn.until((k) => k.commands.some((line) => line.startsWith('RCPT')), 'the RCPT reaches the backend');
  c.reset();
  // smtpgate drops its backend connection, still waiting for the RCPT reply.
  await conn.closed;
  await eventually(async () => (await metricValue(gate, 'smtpgate_refusals_total', { stage: 'rcpt', reason: 'client_aborted' })) === 1, 'refusals_total{stage="rcpt",reason="client_aborted"} 1');
  expect(await metricValue(gate, 'smtpgate_refusals_total', { reason: 'backend_failed' })).toBe(0);
  expect(await metricValue(gate, 'smtpgate_backend_errors_total')).toBe(0);
  expect(gate.logs.filter((l) => l.msg === 'backend failure')).toEqual([]);
});

describe('limits.maxMessageBytes', () => {
  test('a message over the limit gets 552 5.3.4, the backend never gets its final dot, and the session can send a small one next', async () => {
    const backend = await forThisTest(startRecordingBackend(), closeBackend);
    const gate = await forThisTest(startGate({ backendPort: backend.port, config: { limits: { maxMessageBytes: '100KB' } } }), stopGate);
    const c = await authenticatedSession(gate);
    const ehlo = await c.cmd('EHLO client.test');
    expect(ehlo.lines).toContain('SIZE 100000');

    const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    c.write(body(200 * 1024));
    expect((await c.cmd('.')).raw).toBe('552 5.3.4 Message exceeds the maximum size of 100000 bytes');
    expect(backend.messages).toHaveLength(0);
    expect(await metricValue(gate, 'smtpgate_refusals_total', { stage: 'data', reason: 'message_too_big' })).toBe(1);
    // The backend connection was dropped by smtpgate to withhold the final dot, not lost.
    expect(await metricValue(gate, 'smtpgate_backend_errors_total', { kind: 'closed' })).toBe(0);

    const next = await envelope(c, 'alice@corp.test', ['carol@corp.test']);
    expect(next.mail.code).toBe(250);
    expect(next.data?.code).toBe(354);
    expect((await c.cmd('Subject: small\r\n\r\nfits\r\n.')).code).toBe(250);
    expect(backend.messages).toHaveLength(1);
    expect(backend.messages[0]!.to).toEqual(['carol@corp.test']);
    expect(backend.messages[0]!.data.toString().endsWith('Subject: small\r\n\r\nfits\r\n')).toBe(true);
    await c.cmd('QUIT');
  });
});
