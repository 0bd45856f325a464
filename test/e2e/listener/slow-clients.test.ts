/**
 * Slow and silent clients are cut off, each with a 421 where a reply is possible, and counted:
 * idle between commands, a STARTTLS handshake that never finishes, a DATA drip below the
 * minimum rate, and a session that outlives its cap.
 */
import { afterEach, expect, test } from 'vitest';
import { metricValue, startGate, type Gate } from '../../helpers/gate.js';
import { listener, openListener, type ConfigInput } from '../../helpers/config.js';

type ClientInput = NonNullable<ConfigInput['client']>;
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

let backend: RecordingBackend | undefined;
let gate: Gate | undefined;
afterEach(async () => {
  await gate?.stop();
  await backend?.close();
  gate = undefined;
  backend = undefined;
});

async function setup(client: ClientInput): Promise<Gate> {
  backend = await startRecordingBackend();
  gate = await startGate({ backendPort: backend.port, listeners: [openListener(), listener('submission', { tls: 'starttls' })], config: { client } });
  return gate;
}

const timeouts = (g: Gate) => metricValue(g, 'smtpgate_refusals_total', { reason: 'timeout' });

test('a client idle longer than client.timeouts.command gets 421 and is counted', async () => {
  const g = await setup({ timeouts: { command: '1s' } });
  const c = await SmtpTalk.connect(g.port('open'));
  await c.read();
  await c.cmd('EHLO client.test');
  expect((await c.read()).raw).toMatch(/^421 4\.4\.2 .*Timeout/i);
  await c.closed;
  expect(await timeouts(g)).toBe(1);
});

test('a STARTTLS handshake that never finishes is cut off after client.timeouts.tlsHandshake', async () => {
  const g = await setup({ timeouts: { tlsHandshake: '1s' } });
  const c = await SmtpTalk.connect(g.port('submission'));
  await c.read();
  await c.cmd('EHLO client.test');
  expect((await c.cmd('STARTTLS')).code).toBe(220);
  // No ClientHello follows: the server can't write a reply mid-handshake, it closes.
  await c.closed;
  expect(await timeouts(g)).toBe(1);
});

test('a DATA drip below client.minDataRate gets 421 and nothing is delivered', async () => {
  const g = await setup({ minDataRate: 100000, minDataRateGrace: '1s' });
  const c = await SmtpTalk.connect(g.port('open'));
  await c.read();
  await c.cmd('EHLO client.test');
  await c.cmd('MAIL FROM:<app@corp.test>');
  await c.cmd('RCPT TO:<bob@corp.test>');
  expect((await c.cmd('DATA')).code).toBe(354);
  c.write('Subject: drip\r\n\r\nslow');
  expect((await c.read()).raw).toMatch(/^421 4\.4\.2 Data rate below 100000 bytes\/s/);
  await c.closed;
  expect(backend!.messages).toHaveLength(0);
  expect(await timeouts(g)).toBe(1);
});

test('a session longer than client.timeouts.session gets 421, however busy', async () => {
  const g = await setup({ timeouts: { session: '1s' } });
  const c = await SmtpTalk.connect(g.port('open'));
  await c.read();
  await c.cmd('EHLO client.test');
  let last;
  // Busy all the time (a NOOP every 100 ms), still cut off by the cap.
  for (let i = 0; i < 40; i++) {
    last = await c.cmd('NOOP').catch(() => undefined);
    if (!last || last.code !== 250) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(last?.raw).toMatch(/^421 4\.4\.2 Session time limit/);
  await c.closed;
});

/** Writes `text` one byte at a time, `gapMs` apart, until all of it is sent or the connection closes. */
async function trickle(c: SmtpTalk, text: string, gapMs: number): Promise<void> {
  let closed = false;
  void c.closed.then(() => (closed = true));
  for (const ch of text) {
    if (closed) return;
    c.write(ch);
    await new Promise((r) => setTimeout(r, gapMs));
  }
}

/** A whole transaction by a well-behaved client on the same gate. */
async function wellBehaved(g: Gate): Promise<string> {
  const c = await SmtpTalk.connect(g.port('open'));
  await c.read();
  await c.cmd('EHLO fast.test');
  await c.cmd('MAIL FROM:<app@corp.test>');
  await c.cmd('RCPT TO:<bob@corp.test>');
  await c.cmd('DATA');
  const reply = await c.cmd('Subject: quick\r\n\r\nhello\r\n.');
  await c.cmd('QUIT');
  return reply.raw;
}

test('a command line trickled in a byte at a time is cut off at client.timeouts.commandLine with 421 4.4.2, counted at its stage and logged; a normal client on the same gate is unaffected', async () => {
  const g = await setup({ timeouts: { commandLine: '1s' }, minCommandRate: 0 });
  const c = await SmtpTalk.connect(g.port('open'));
  await c.read();
  await c.cmd('EHLO slow.test');
  // Each byte resets the idle timer (timeouts.command, 5 minutes): only the line's deadline ends it.
  const dripping = trickle(c, `MAIL FROM:<${'a'.repeat(200)}@corp.test>\r\n`, 20);
  expect(await wellBehaved(g)).toMatch(/^250 /);
  expect((await c.read()).raw).toBe('421 4.4.2 Command line not completed within 1s, closing');
  await c.closed;
  await dripping;
  expect(await metricValue(g, 'smtpgate_refusals_total', { reason: 'timeout', stage: 'mail' })).toBe(1);
  expect(g.logs.find((l) => l.msg === 'refused: Command line not completed within 1s, closing')).toMatchObject({ stage: 'mail', code: 421, session: expect.any(String) });
  expect(backend!.messages).toHaveLength(1);
});

test('a command line arriving below client.minCommandRate after the grace is cut off with 421 4.4.2; a line split into two quick segments is not', async () => {
  const g = await setup({ minCommandRate: 50, minCommandRateGrace: '1s' });
  const c = await SmtpTalk.connect(g.port('open'));
  await c.read();
  await c.cmd('EHLO slow.test');
  const dripping = trickle(c, `NOOP ${'x'.repeat(400)}\r\n`, 50);
  const split = await SmtpTalk.connect(g.port('open'));
  await split.read();
  split.write('EHLO spl');
  await new Promise((r) => setTimeout(r, 100));
  expect((await split.cmd('it.test')).code).toBe(250);
  expect((await split.cmd('NOOP')).code).toBe(250);
  expect((await c.read()).raw).toBe('421 4.4.2 Command line arriving slower than 50 bytes/s, closing');
  await c.closed;
  await dripping;
  expect(await timeouts(g)).toBe(1);
  await split.cmd('QUIT');
});
