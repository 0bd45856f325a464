/**
 * Exact counts through the real proxy: a per-user message quota of N relays exactly N
 * messages, a recipients-per-message cap refuses the recipient past it, a connection rate
 * refuses the connection past it at the greeting. Nothing a limit refused reaches the backend.
 */
import { expect, test } from 'vitest';
import { metricValue, startGate, type Gate } from '../../helpers/gate.js';
import type { LimitsInput } from '../../helpers/config.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { authenticatedSession, closeBackend, envelope, forThisTest, stopGate } from '../../helpers/sessions.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

async function gateWithLimits(limits: LimitsInput): Promise<{ gate: Gate; backend: RecordingBackend }> {
  const backend = await forThisTest(startRecordingBackend(), closeBackend);
  const gate = await forThisTest(startGate({ backendPort: backend.port, config: { limits } }), stopGate);
  return { gate, backend };
}

const body = (n: number) => `From: alice@corp.test\r\nSubject: message ${n}\r\n\r\nbody ${n}\r\n.`;

test('messagesPerUser 3/1h: messages 1-3 are relayed, the 4th MAIL gets 451 4.7.1 naming the limit and the time to retry, and the backend has 3 messages', async () => {
  const { gate, backend } = await gateWithLimits({ messagesPerUser: '3/1h' });
  const c = await authenticatedSession(gate);
  for (let n = 1; n <= 3; n++) {
    const { mail, rcpt, data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect([mail.code, rcpt[0]!.code, data?.code]).toEqual([250, 250, 354]);
    expect((await c.cmd(body(n))).code).toBe(250);
  }
  const fourth = await c.cmd('MAIL FROM:<alice@corp.test>');
  expect(fourth.raw).toMatch(/^451 4\.7\.1 Message limit for your account reached \(3 per 1h\); try again in \d+ seconds$/);
  const retry = Number(/try again in (\d+) seconds/.exec(fourth.raw)![1]);
  expect(retry).toBeGreaterThan(3500);
  expect(retry).toBeLessThanOrEqual(3600);
  // A fresh session is no way around it.
  const again = await authenticatedSession(gate);
  expect((await again.cmd('MAIL FROM:<alice@corp.test>')).raw).toMatch(/^451 4\.7\.1 /);
  expect(backend.messages.map((m) => m.data.toString('latin1').match(/Subject: (.*)\r\n/)![1])).toEqual(['message 1', 'message 2', 'message 3']);
  expect(await metricValue(gate, 'smtpgate_refusals_total', { stage: 'mail', reason: 'rate_limited', code_class: '4xx' })).toBe(2);
  expect(await metricValue(gate, 'smtpgate_limiter_decisions_total', { limiter: 'messages_user', result: 'limited' })).toBe(2);
  await c.cmd('QUIT');
});

test('recipientsPerMessage 2: the 3rd RCPT gets 452 4.5.3, and the message reaches exactly the first two', async () => {
  const { gate, backend } = await gateWithLimits({ recipientsPerMessage: 2 });
  const c = await authenticatedSession(gate);
  const { mail, rcpt, data } = await envelope(c, 'alice@corp.test', ['a@corp.test', 'b@corp.test', 'c@corp.test', 'd@corp.test']);
  expect(mail.code).toBe(250);
  expect(rcpt.map((r) => r.raw)).toEqual([
    expect.stringMatching(/^250 /),
    expect.stringMatching(/^250 /),
    '452 4.5.3 Too many recipients for one message (limit 2); send the rest in another message',
    '452 4.5.3 Too many recipients for one message (limit 2); send the rest in another message',
  ]);
  expect(data?.code).toBe(354);
  expect((await c.cmd(body(1))).code).toBe(250);
  expect(backend.messages).toHaveLength(1);
  expect(backend.messages[0]!.to).toEqual(['a@corp.test', 'b@corp.test']);
  // The cap is per message: the next transaction may have two again.
  expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
  expect((await c.cmd('RCPT TO:<c@corp.test>')).code).toBe(250);
  expect((await c.cmd('RCPT TO:<d@corp.test>')).code).toBe(250);
  await c.cmd('QUIT');
});

test('connectionRate 3/1m: the 4th connection from the address gets 421 4.7.0 instead of the greeting and is closed; nothing reaches the backend', async () => {
  const { gate, backend } = await gateWithLimits({ connectionRate: '3/1m' });
  const port = gate.port('submission');
  const admitted: SmtpTalk[] = [];
  for (let i = 0; i < 3; i++) {
    const c = await SmtpTalk.connect(port);
    admitted.push(c);
    expect((await c.read()).code).toBe(220);
  }
  const fourth = await SmtpTalk.connect(port);
  const greeting = await fourth.read();
  expect(greeting.raw).toMatch(/^421 4\.7\.0 Too many connections from your address \(limit 3 per 1m\); try again in \d+ seconds$/);
  await fourth.closed;
  // Closing the first three gives no new connection: it is a rate, not a concurrency limit.
  for (const c of admitted) {
    expect((await c.cmd('QUIT')).code).toBe(221);
    await c.closed;
  }
  const fifth = await SmtpTalk.connect(port);
  expect((await fifth.read()).raw).toMatch(/^421 4\.7\.0 /);
  await fifth.closed;
  expect(backend.sessions).toBe(0);
  expect(backend.messages).toHaveLength(0);
  expect(await metricValue(gate, 'smtpgate_refusals_total', { stage: 'connect', reason: 'rate_limited', code_class: '4xx' })).toBe(2);
});
