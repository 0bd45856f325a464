/**
 * Hostile input on the command channel: over-long lines, bytes that don't belong, broken
 * pipelining, routing tricks in addresses, slow clients and the error budget. Every case is a
 * real connection to a real gate.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ALICE, startGate, type Gate } from '../../helpers/gate.js';
import { listener, openListener } from '../../helpers/config.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

let backend: RecordingBackend;
let gate: Gate;

beforeAll(async () => {
  backend = await startRecordingBackend();
  gate = await startGate({
    backendPort: backend.port,
    listeners: [openListener(), listener('smtps', { tls: 'implicit' })],
    config: { client: { timeouts: { data: '2s', session: '20s' }, minDataRate: 0 } },
  });
});
afterAll(async () => {
  await gate?.stop();
  await backend?.close();
});

async function open(): Promise<SmtpTalk> {
  const c = await SmtpTalk.connect(gate.port('open'));
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  return c;
}

describe('line lengths (RFC 5321 §4.5.3.1)', () => {
  test('a command line of 512 octets passes; 513 gets 500 5.5.2', async () => {
    const c = await open();
    const noop = (len: number) => 'NOOP ' + 'x'.repeat(len - 'NOOP '.length - 2);
    expect((await c.cmd(noop(512))).code).toBe(250);
    expect((await c.cmd(noop(513))).raw).toMatch(/^500 5\.5\.2 Line too long/);
    expect((await c.cmd('NOOP')).code).toBe(250);
    c.close();
  });

  test('a line that never ends is cut off with 421 and the connection closed', async () => {
    const c = await open();
    c.write('NOOP ' + 'y'.repeat(64 * 1024));
    expect((await c.read()).code).toBe(421);
    await c.closed;
  });

  test('a DATA line over 1000 octets is refused and never reaches the backend', async () => {
    const c = await open();
    const before = backend.messages.length;
    await c.cmd('MAIL FROM:<app@corp.test>');
    await c.cmd('RCPT TO:<bob@corp.test>');
    expect((await c.cmd('DATA')).code).toBe(354);
    const reply = await c.cmd(`Subject: long\r\n\r\n${'z'.repeat(1200)}\r\n.`);
    expect(reply.raw).toMatch(/^550 5\.5\.2 .*1000 octets/);
    expect(backend.messages.length).toBe(before);
    c.close();
  });
});

describe('bytes that do not belong in a command', () => {
  test('NUL gets 500, a CR inside EHLO gets 501, 8-bit bytes outside MAIL/RCPT get 500', async () => {
    const c = await open();
    expect((await c.cmd('NOOP a\0b')).raw).toMatch(/^500 5\.5\.2 /);
    expect((await c.cmd('EHLO bad\rname')).raw).toMatch(/^501 5\.5\.2 /);
    c.write(Buffer.from('NOOP caf\xe9\r\n', 'latin1'));
    expect((await c.read()).raw).toMatch(/^500 5\.5\.2 /);
    c.close();
  });

  test('a non-ASCII address without SMTPUTF8 gets 553 5.6.7', async () => {
    const c = await open();
    expect((await c.cmd('MAIL FROM:<app@corp.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<jürgen@corp.test>')).raw).toMatch(/^553 5\.6\.7 /);
    c.close();
  });

  test('an HTTP request on the SMTP port gets 421 and a close', async () => {
    const c = await SmtpTalk.connect(gate.port('open'));
    await c.read();
    expect((await c.cmd('GET / HTTP/1.1')).code).toBe(421);
    await c.closed;
  });
});

describe('recipient routing tricks never reach a legacy backend', () => {
  test.each([
    ['percent hack', 'victim%outside.test@corp.test'],
    ['UUCP bang path', 'outside.test!victim@corp.test'],
  ])('%s is refused with 553 5.1.3', async (_name, rcpt) => {
    const c = await open();
    await c.cmd('MAIL FROM:<app@corp.test>');
    expect((await c.cmd(`RCPT TO:<${rcpt}>`)).raw).toMatch(/^553 5\.1\.3 /);
    c.close();
  });

  test.each([
    ['quoted local part with @', '<"victim@outside.test"@corp.test>'],
    ['two @', '<victim@outside.test@corp.test>'],
  ])('%s is refused with a 5xx', async (_name, rcpt) => {
    const c = await open();
    await c.cmd('MAIL FROM:<app@corp.test>');
    expect((await c.cmd(`RCPT TO:${rcpt}`)).code).toBeGreaterThanOrEqual(500);
    c.close();
  });

  test('a source route is reduced to the final mailbox, which is what the backend gets', async () => {
    const c = await open();
    await c.cmd('MAIL FROM:<app@corp.test>');
    expect((await c.cmd('RCPT TO:<@relay.test:bob@corp.test>')).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    expect((await c.cmd('Subject: routed\r\n\r\nx\r\n.')).code).toBe(250);
    expect(backend.messages.at(-1)!.to).toEqual(['bob@corp.test']);
    c.close();
  });
});

describe('pipelining (RFC 2920)', () => {
  test('replies come exactly once and in order for a pipelined group', async () => {
    const c = await open();
    c.write('MAIL FROM:<app@corp.test>\r\nRCPT TO:<a@corp.test>\r\nRCPT TO:<b@corp.test>\r\nNOOP\r\n');
    const codes = [(await c.read()).code, (await c.read()).code, (await c.read()).code, (await c.read()).code];
    expect(codes).toEqual([250, 250, 250, 250]);
    c.close();
  });

  test('a message sent right behind a refused DATA is never run as commands', async () => {
    const c = await open();
    const before = backend.messages.length;
    // No RCPT was accepted, so DATA is refused; the "message" behind it must not become a
    // second, smuggled transaction.
    c.write('MAIL FROM:<app@corp.test>\r\nDATA\r\nMAIL FROM:<spoof@corp.test>\r\nRCPT TO:<victim@corp.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n');
    expect((await c.read()).code).toBe(250);
    expect((await c.read()).code).toBe(503);
    expect((await c.read()).raw).toMatch(/^554 5\.5\.0 SMTP protocol synchronization/);
    await c.closed;
    expect(backend.messages.length).toBe(before);
  });
});

describe('error budget and slow clients', () => {
  test('after 10 protocol errors the session gets 421 and is closed', async () => {
    const c = await open();
    // Sequence errors (RCPT before MAIL): smtp-server's own limit only counts unknown verbs.
    for (let i = 0; i < 10; i++) expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(503);
    expect((await c.read()).raw).toMatch(/^421 4\.7\.0 Too many errors/);
    await c.closed;
  });

  test('a DATA phase longer than client.timeouts.data gets 421 and nothing is delivered', async () => {
    const c = await open();
    const before = backend.messages.length;
    await c.cmd('MAIL FROM:<app@corp.test>');
    await c.cmd('RCPT TO:<bob@corp.test>');
    expect((await c.cmd('DATA')).code).toBe(354);
    c.write('Subject: slow\r\n\r\nstarted but never finished\r\n');
    expect((await c.read()).raw).toMatch(/^421 4\.4\.2 DATA took too long/);
    await c.closed;
    expect(backend.messages.length).toBe(before);
  });

  test('an early talker gets 421 before the greeting', async () => {
    const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true });
    c.write('EHLO early.test\r\n');
    expect((await c.read()).code).toBe(421);
    await c.closed;
  });

  test('AUTH over implicit TLS still works after all of the above', async () => {
    const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true });
    await c.read();
    await c.cmd('EHLO client.test');
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    c.close();
  });
});
