/**
 * Every refusal is counted and logged with the stage the session was in when it was made: a
 * DATA phase cut off by its deadline, its minimum rate or the session cap is a refusal at
 * `data`, not at `connect` (issue 15); a STARTTLS handshake that never ends is one at `tls`.
 * The stage is the `stage` label of smtpgate_refusals_total and the `stage` field of the
 * "refused: …" log line, which also carries the session id.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { OPEN_LISTENER_YAML, metricValue, startGate, type Gate, type StartGateOptions } from '../../helpers/gate.js';
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

async function setup(opts: Omit<StartGateOptions, 'backendPort'>): Promise<Gate> {
  backend = await startRecordingBackend();
  gate = await startGate({ backendPort: backend.port, listenersYaml: OPEN_LISTENER_YAML + '  - name: submission\n    address: 127.0.0.1:0\n    tls: starttls\n', ...opts });
  return gate;
}

/** A session on the open listener that has just had its 354. */
async function inData(g: Gate): Promise<SmtpTalk> {
  const c = await SmtpTalk.connect(g.port('open'));
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  expect((await c.cmd('MAIL FROM:<app@corp.test>')).code).toBe(250);
  expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
  expect((await c.cmd('DATA')).code).toBe(354);
  return c;
}

/** The refusal's metric sample is at `stage` only, and its log line names that stage and the session. */
async function expectRefusedAt(g: Gate, stage: string, reason: string, text: string): Promise<void> {
  expect(await metricValue(g, 'smtpgate_refusals_total', { stage, reason })).toBe(1);
  expect(await metricValue(g, 'smtpgate_refusals_total', { reason })).toBe(1);
  const line = g.logs.find((l) => l.msg === `refused: ${text}`);
  expect(line, `log line "refused: ${text}"`).toMatchObject({ stage, reason, session: expect.any(String) });
}

describe('a refusal during DATA is counted and logged at stage data', () => {
  test('the DATA deadline (client.timeouts.data): 421 4.4.2 at stage data', async () => {
    const g = await setup({ extraYaml: 'client:\n  timeouts:\n    data: 1s\n  minDataRate: 0\n' });
    const c = await inData(g);
    c.write('Subject: slow\r\n\r\nstarted but never finished\r\n');
    expect((await c.read()).raw).toBe('421 4.4.2 DATA took too long, closing');
    await c.closed;
    await expectRefusedAt(g, 'data', 'timeout', 'DATA took too long, closing');
    expect(backend!.messages).toHaveLength(0);
  });

  test('a DATA drip below client.minDataRate: 421 4.4.2 at stage data', async () => {
    const g = await setup({ extraYaml: 'client:\n  minDataRate: 100000\n  minDataRateGrace: 1s\n' });
    const c = await inData(g);
    c.write('Subject: drip\r\n\r\nslow');
    expect((await c.read()).raw).toBe('421 4.4.2 Data rate below 100000 bytes/s, closing');
    await c.closed;
    await expectRefusedAt(g, 'data', 'timeout', 'Data rate below 100000 bytes/s, closing');
    expect(backend!.messages).toHaveLength(0);
  });

  test('the session cap (client.timeouts.session) reached in the middle of DATA: 421 4.4.2 at stage data', async () => {
    const g = await setup({ extraYaml: 'client:\n  timeouts:\n    session: 1s\n    data: 30s\n  minDataRate: 0\n' });
    const c = await inData(g);
    c.write('Subject: long\r\n\r\nstill writing\r\n');
    expect((await c.read()).raw).toBe('421 4.4.2 Session time limit reached, closing');
    await c.closed;
    await expectRefusedAt(g, 'data', 'timeout', 'Session time limit reached, closing');
  });

  test('a message over limits.maxMessageBytes: 552 5.3.4 at stage data', async () => {
    const g = await setup({ extraYaml: 'limits:\n  maxMessageBytes: 10KB\n' });
    const c = await inData(g);
    c.write(`Subject: big\r\n\r\n${'x'.repeat(100)}\r\n`.repeat(200));
    expect((await c.cmd('.')).raw).toBe('552 5.3.4 Message exceeds the maximum size of 10000 bytes');
    await expectRefusedAt(g, 'data', 'message_too_big', 'Message exceeds the maximum size of 10000 bytes');
    c.close();
  });

  test('a data-stage policy rule: its reply at stage data, with the rule', async () => {
    const g = await setup({
      extraYaml: 'policies: policies',
      beforeStart: async (dir) => {
        await mkdir(path.join(dir, 'policies'));
        await writeFile(
          path.join(dir, 'policies', '10-data.yaml'),
          'rules:\n  - name: no-secrets\n    stage: data\n    when:\n      header:\n        Subject: "secret"\n    action: reject\n    reply: "550 5.7.1 No secrets by mail"\n',
        );
      },
    });
    const c = await inData(g);
    expect((await c.cmd('Subject: secret plans\r\n\r\nx\r\n.')).raw).toBe('550 5.7.1 No secrets by mail');
    expect(await metricValue(g, 'smtpgate_refusals_total', { stage: 'data', reason: 'policy' })).toBe(1);
    expect(g.logs.find((l) => l.msg === 'refused: No secrets by mail')).toMatchObject({ stage: 'data', rule: 'no-secrets', session: expect.any(String) });
    c.close();
  });
});

describe('a refusal outside DATA keeps its own stage', () => {
  test('a STARTTLS handshake that never finishes is counted and logged at stage tls', async () => {
    const g = await setup({ extraYaml: 'client:\n  timeouts:\n    tlsHandshake: 1s\n' });
    const c = await SmtpTalk.connect(g.port('submission'));
    await c.read();
    await c.cmd('EHLO client.test');
    expect((await c.cmd('STARTTLS')).code).toBe(220);
    // No ClientHello follows: no reply can be written mid-handshake, the connection is closed.
    await c.closed;
    await expectRefusedAt(g, 'tls', 'timeout', 'TLS handshake timed out');
  });

  test('the session cap reached between transactions, after a relayed message, is not counted at data', async () => {
    const g = await setup({ extraYaml: 'client:\n  timeouts:\n    session: 1s\n' });
    const c = await inData(g);
    expect((await c.cmd('Subject: quick\r\n\r\nhello\r\n.')).code).toBe(250);
    expect((await c.read()).raw).toBe('421 4.4.2 Session time limit reached, closing');
    await c.closed;
    expect(await metricValue(g, 'smtpgate_refusals_total', { stage: 'data', reason: 'timeout' })).toBe(0);
    expect(await metricValue(g, 'smtpgate_refusals_total', { reason: 'timeout' })).toBe(1);
  });
});
