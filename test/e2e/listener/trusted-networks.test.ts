/**
 * `listeners[].trusted`: clients in these networks (internal apps, printers) may send without
 * AUTH; `trusted.requireTls: false` also lets them send in cleartext. Everyone else still
 * needs TLS and AUTH.
 */
import { describe, expect } from 'vitest';
import { ALICE, type Gate } from '../../helpers/gate.js';
import { gateTest } from '../../helpers/fixtures.js';
import { listener } from '../../helpers/config.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

gateTest.override('gateOptions', {
  listeners: [
    listener('trusted', { tls: 'starttls', trusted: { networks: ['127.0.0.0/8'] } }),
    listener('trusted-cleartext', { tls: 'starttls', trusted: { networks: ['127.0.0.0/8'], requireTls: false } }),
    listener('trusted-plain', { tls: 'none', requireTls: false, trusted: { networks: ['127.0.0.0/8'], requireTls: false } }),
    listener('elsewhere', { tls: 'starttls', trusted: { networks: ['10.0.0.0/8'] } }),
    listener('elsewhere-plain', { tls: 'none', requireTls: false, trusted: { networks: ['10.0.0.0/8'], requireTls: false } }),
  ],
});

async function greeted(gate: Gate, listener: string, opts: { starttls: boolean }): Promise<SmtpTalk> {
  const c = await SmtpTalk.connect(gate.port(listener));
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  if (opts.starttls) {
    expect((await c.starttls()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
  }
  return c;
}

/** MAIL, RCPT, DATA and a body; returns the reply to the final dot. */
async function send(c: SmtpTalk, subject: string): Promise<number> {
  expect((await c.cmd('MAIL FROM:<printer@corp.test>')).code).toBe(250);
  expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
  expect((await c.cmd('DATA')).code).toBe(354);
  return (await c.cmd(`Subject: ${subject}\r\n\r\nscan attached\r\n.`)).code;
}

describe('a client in the trusted networks', () => {
  gateTest('sends without AUTH after STARTTLS, and the message reaches the backend without a login', async ({ gate, backend }) => {
    const c = await greeted(gate, 'trusted', { starttls: true });
    expect(await send(c, 'trusted over TLS')).toBe(250);
    await c.cmd('QUIT');
    const got = backend.messages.at(-1)!;
    expect(got.data.toString()).toContain('Subject: trusted over TLS\r\n');
    expect(got.xclient.ADDR).toBe('127.0.0.1');
    expect(got.xclient.LOGIN).toBeUndefined();
  });

  gateTest("still needs TLS when trusted.requireTls is left to the listener's requireTls", async ({ gate }) => {
    const c = await greeted(gate, 'trusted', { starttls: false });
    expect((await c.cmd('MAIL FROM:<printer@corp.test>')).raw).toMatch(/^530 5\.7\.0 /);
    c.close();
  });

  gateTest('sends in cleartext on a STARTTLS listener with trusted.requireTls: false', async ({ gate, backend }) => {
    const c = await greeted(gate, 'trusted-cleartext', { starttls: false });
    expect(await send(c, 'trusted in cleartext')).toBe(250);
    await c.cmd('QUIT');
    expect(backend.messages.at(-1)!.data.toString()).toContain('Subject: trusted in cleartext\r\n');
  });

  gateTest('sends in cleartext on a tls: none listener with trusted.requireTls: false', async ({ gate, backend }) => {
    const c = await greeted(gate, 'trusted-plain', { starttls: false });
    expect(await send(c, 'trusted on tls none')).toBe(250);
    await c.cmd('QUIT');
    expect(backend.messages.at(-1)!.data.toString()).toContain('Subject: trusted on tls none\r\n');
  });
});

describe('a client outside the trusted networks (listener trusts only 10.0.0.0/8; client is 127.0.0.1)', () => {
  gateTest('needs AUTH after STARTTLS like everyone else', async ({ gate, backend }) => {
    const before = backend.sessions;
    const c = await greeted(gate, 'elsewhere', { starttls: true });
    expect((await c.cmd('MAIL FROM:<printer@corp.test>')).raw).toMatch(/^530 5\.7\.0 /);
    expect(backend.sessions).toBe(before);
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    expect(await send(c, 'authenticated elsewhere')).toBe(250);
    await c.cmd('QUIT');
  });

  gateTest('cannot send in cleartext on a tls: none listener: AUTH is never offered there, so MAIL is refused', async ({ gate, backend }) => {
    const before = backend.sessions;
    const c = await greeted(gate, 'elsewhere-plain', { starttls: false });
    expect((await c.cmd('MAIL FROM:<printer@corp.test>')).raw).toMatch(/^530 5\.7\.0 /);
    c.close();
    expect(backend.sessions).toBe(before);
  });
});
