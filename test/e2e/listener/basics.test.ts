/**
 * The front door, as a client sees it: TLS before AUTH, AUTH before MAIL, and the backend's
 * answer as the client's answer.
 */
import { describe, expect } from 'vitest';
import { ALICE, metricValue, type Gate } from '../../helpers/gate.js';
import { gateTest } from '../../helpers/fixtures.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

gateTest.override('backendOptions', { refuseRcpt: { 'nobody@corp.test': '550 5.1.1 <nobody@corp.test>: Recipient address rejected' } });

async function greeted(gate: Gate, listener: string, implicitTls = false): Promise<SmtpTalk> {
  const c = await SmtpTalk.connect(gate.port(listener), { implicitTls });
  expect((await c.read()).code).toBe(220);
  return c;
}

describe('before TLS on a STARTTLS listener', () => {
  gateTest('EHLO offers STARTTLS but not AUTH', async ({ gate }) => {
    const c = await greeted(gate, 'submission');
    const ehlo = await c.cmd('EHLO client.test');
    expect(ehlo.code).toBe(250);
    expect(ehlo.lines).toContain('STARTTLS');
    expect(ehlo.lines.some((l) => l.startsWith('AUTH'))).toBe(false);
    c.close();
  });

  gateTest('refuses AUTH with 538 5.7.11 before any credential is exchanged', async ({ gate }) => {
    const c = await greeted(gate, 'submission');
    await c.cmd('EHLO client.test');
    const auth = await c.cmd('AUTH LOGIN');
    expect(auth.raw).toMatch(/^538 5\.7\.11 /);
    c.close();
  });

  gateTest('refuses MAIL with 530 5.7.0 and counts the refusal', async ({ gate }) => {
    const before = await metricValue(gate, 'smtpgate_refusals_total', { stage: 'mail', reason: 'tls_required' });
    const c = await greeted(gate, 'submission');
    await c.cmd('EHLO client.test');
    const mail = await c.cmd('MAIL FROM:<alice@corp.test>');
    expect(mail.raw).toMatch(/^530 5\.7\.0 /);
    expect(await metricValue(gate, 'smtpgate_refusals_total', { stage: 'mail', reason: 'tls_required' })).toBe(before + 1);
    c.close();
  });
});

describe('on a tls: none listener', () => {
  gateTest('AUTH is never offered and gets 538 5.7.11: credentials never cross in cleartext', async ({ gate }) => {
    const c = await greeted(gate, 'plain');
    const ehlo = await c.cmd('EHLO client.test');
    expect(ehlo.lines.some((l) => l.startsWith('AUTH') || l === 'STARTTLS')).toBe(false);
    expect((await c.authPlain(ALICE.name, ALICE.password)).raw).toMatch(/^538 5\.7\.11 /);
    c.close();
  });
});

describe('after STARTTLS', () => {
  gateTest('EHLO offers AUTH PLAIN LOGIN and a wrong password gets 535 5.7.8', async ({ gate }) => {
    const c = await greeted(gate, 'submission');
    await c.cmd('EHLO client.test');
    expect((await c.starttls()).code).toBe(220);
    const ehlo = await c.cmd('EHLO client.test');
    expect(ehlo.lines).toContain('AUTH PLAIN LOGIN');
    expect((await c.authPlain(ALICE.name, 'wrong')).raw).toMatch(/^535 5\.7\.8 /);
    expect((await c.authPlain('mallory', 'wrong')).raw).toMatch(/^535 5\.7\.8 /);
    c.close();
  });

  gateTest('MAIL before AUTH gets 530 5.7.0', async ({ gate }) => {
    const c = await greeted(gate, 'submission');
    await c.cmd('EHLO client.test');
    await c.starttls();
    await c.cmd('EHLO client.test');
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).raw).toMatch(/^530 5\.7\.0 /);
    c.close();
  });

  gateTest('a refused recipient is refused to the client with the backend code; the others get the message', async ({ gate, backend }) => {
    const c = await greeted(gate, 'submission');
    await c.cmd('EHLO client.test');
    await c.starttls();
    await c.cmd('EHLO client.test');
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
    const refused = await c.cmd('RCPT TO:<nobody@corp.test>');
    expect(refused.raw).toBe('550 5.1.1 <nobody@corp.test>: Recipient address rejected');
    expect((await c.cmd('RCPT TO:<carol@corp.test>')).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    const count = backend.messages.length;
    const final = await c.cmd('Subject: hi\r\n\r\nhello\r\n.');
    expect(final.code).toBe(250);
    expect(final.raw).toContain(`queued as Q${count + 1}`);
    const got = backend.messages.at(-1)!;
    expect(got.to).toEqual(['bob@corp.test', 'carol@corp.test']);
    expect(got.from).toBe('alice@corp.test');
    expect(got.data.toString()).toMatch(/^Received: from client\.test \(unknown \[127\.0\.0\.1\]\)\r\n\tby gate\.test \(smtpgate\) with ESMTPSA id /);
    expect(got.data.toString().endsWith('Subject: hi\r\n\r\nhello\r\n')).toBe(true);
    // XCLIENT told the backend who the client really is.
    expect(got.xclient.ADDR).toBe('127.0.0.1');
    expect(got.xclient.LOGIN).toBe('alice');
    expect(got.xclient.HELO).toBe('client.test');
    await c.cmd('QUIT');
  });
});

describe('implicit TLS', () => {
  gateTest('AUTH is offered at once and a message goes through', async ({ gate, backend }) => {
    const c = await greeted(gate, 'smtps', true);
    const ehlo = await c.cmd('EHLO client.test');
    expect(ehlo.lines).toContain('AUTH PLAIN LOGIN');
    expect(ehlo.lines).not.toContain('STARTTLS');
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    expect((await c.cmd('Subject: implicit\r\n\r\nx\r\n.')).code).toBe(250);
    expect(backend.messages.at(-1)!.data.toString()).toContain('Subject: implicit\r\n');
    c.close();
  });
});

gateTest('every refusal is logged with the session id', async ({ gate }) => {
  const c = await greeted(gate, 'submission');
  await c.cmd('EHLO client.test');
  await c.cmd('MAIL FROM:<alice@corp.test>');
  c.close();
  await c.closed;
  const line = gate.logs.find((l) => l.msg === 'refused: Must issue a STARTTLS command first');
  expect(line).toBeDefined();
  expect(line!.session).toMatch(/^[a-z0-9]+$/);
  expect(line!.code).toBe(530);
});
