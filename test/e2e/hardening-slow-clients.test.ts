/**
 * Slow and silent clients are cut off, each with a 421 where a reply is possible, and counted:
 * idle between commands, a STARTTLS handshake that never finishes, a DATA drip below the
 * minimum rate, and a session that outlives its cap.
 */
import { afterEach, expect, test } from 'vitest';
import { OPEN_LISTENER_YAML, metricValue, startGate, type Gate } from '../helpers/gate.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/backends.js';
import { SmtpTalk } from '../helpers/smtp-talk.js';

let backend: RecordingBackend | undefined;
let gate: Gate | undefined;
afterEach(async () => {
  await gate?.stop();
  await backend?.close();
  gate = undefined;
  backend = undefined;
});

async function setup(client: string): Promise<Gate> {
  backend = await startRecordingBackend();
  gate = await startGate({ backendPort: backend.port, listenersYaml: OPEN_LISTENER_YAML + '  - name: submission\n    address: 127.0.0.1:0\n    tls: starttls\n', extraYaml: `client:\n${client}` });
  return gate;
}

const timeouts = (g: Gate) => metricValue(g, 'smtpgate_refusals_total', { reason: 'timeout' });

test('a client idle longer than client.timeouts.command gets 421 and is counted', async () => {
  const g = await setup('  timeouts:\n    command: 1s\n');
  const c = await SmtpTalk.connect(g.port('open'));
  await c.read();
  await c.cmd('EHLO client.test');
  expect((await c.read()).raw).toMatch(/^421 4\.4\.2 .*Timeout/i);
  await c.closed;
  expect(await timeouts(g)).toBe(1);
});

test('a STARTTLS handshake that never finishes is cut off after client.timeouts.tlsHandshake', async () => {
  const g = await setup('  timeouts:\n    tlsHandshake: 1s\n');
  const c = await SmtpTalk.connect(g.port('submission'));
  await c.read();
  await c.cmd('EHLO client.test');
  expect((await c.cmd('STARTTLS')).code).toBe(220);
  // No ClientHello follows: the server can't write a reply mid-handshake, it closes.
  await c.closed;
  expect(await timeouts(g)).toBe(1);
});

test('a DATA drip below client.minDataRate gets 421 and nothing is delivered', async () => {
  const g = await setup('  minDataRate: 100000\n  minDataRateGrace: 1s\n');
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
  const g = await setup('  timeouts:\n    session: 1s\n');
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
