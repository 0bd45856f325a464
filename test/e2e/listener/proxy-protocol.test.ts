/**
 * `listeners[].proxyProtocol`: behind HAProxy or a cloud load balancer, the client's address
 * comes from a PROXY protocol header (v1 text or v2 binary) that the balancer writes before
 * any SMTP or TLS byte. Only the listed peers may send it, and they must; the address it names
 * is the one the backend learns through XCLIENT.
 */
import net from 'node:net';
import { describe, expect } from 'vitest';
import { ALICE, metricValue } from '../../helpers/gate.js';
import { gateTest } from '../../helpers/fixtures.js';
import type { RecordingBackend } from '../../helpers/backends.js';
import { listener } from '../../helpers/config.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

/** HAProxy doc/proxy-protocol.txt §2.2: signature, PROXY over TCP/IPv4, addresses and ports. */
function proxyV2(src: string, srcPort: number, dst: string, dstPort: number): Buffer {
  const signature = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
  const body = Buffer.alloc(12);
  src.split('.').forEach((o, i) => body.writeUInt8(Number(o), i));
  dst.split('.').forEach((o, i) => body.writeUInt8(Number(o), 4 + i));
  body.writeUInt16BE(srcPort, 8);
  body.writeUInt16BE(dstPort, 10);
  const fixed = Buffer.from([0x21, 0x11, 0x00, body.length]); // v2 PROXY, AF_INET + STREAM, length
  return Buffer.concat([signature, fixed, body]);
}

/** §2.2: the LOCAL command (a balancer's own health check): no addresses, use the real peer. */
function proxyV2Local(): Buffer {
  const signature = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
  return Buffer.concat([signature, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
}

/** §2.1. */
const proxyV1 = (src: string, srcPort: number, dst: string, dstPort: number) => Buffer.from(`PROXY TCP4 ${src} ${dst} ${srcPort} ${dstPort}\r\n`, 'latin1');

gateTest.override('gateOptions', {
  listeners: [
    listener('submission', { tls: 'starttls', proxyProtocol: { trusted: ['127.0.0.1/32'] } }),
    listener('smtps', { tls: 'implicit', proxyProtocol: { trusted: ['127.0.0.1/32'] } }),
    listener('impatient', { tls: 'starttls', proxyProtocol: { trusted: ['127.0.0.1/32'], timeout: '300ms' } }),
  ],
});

/** The whole dialogue after the header: (STARTTLS,) EHLO, AUTH and one message; returns what the backend got. */
async function sendThrough(backend: RecordingBackend, c: SmtpTalk, opts: { starttls: boolean }) {
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  if (opts.starttls) {
    expect((await c.starttls()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
  }
  expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
  expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
  expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
  expect((await c.cmd('DATA')).code).toBe(354);
  expect((await c.cmd('Subject: via a balancer\r\n\r\nhi\r\n.')).code).toBe(250);
  await c.cmd('QUIT');
  return backend.messages.at(-1)!;
}

/** Everything the server sends until it closes the connection (bounded by the test timeout). */
async function bytesUntilClosed(socket: net.Socket): Promise<string> {
  let received = '';
  socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
  socket.on('error', () => {});
  await new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return received;
}

async function rawConnect(port: number, localAddress?: string): Promise<net.Socket> {
  const socket = net.connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  return socket;
}

describe('a trusted balancer (127.0.0.1) names the client', () => {
  gateTest('v2 header, then STARTTLS: the backend sees ADDR=203.0.113.7 and PORT=4242', async ({ gate, backend }) => {
    const c = await SmtpTalk.connect(gate.port('submission'), { preamble: proxyV2('203.0.113.7', 4242, '192.0.2.25', 587) });
    const got = await sendThrough(backend, c, { starttls: true });
    expect(got.xclient.ADDR).toBe('203.0.113.7');
    expect(got.xclient.PORT).toBe('4242');
    expect(got.data.toString()).toMatch(/^Received: from client\.test \(unknown \[203\.0\.113\.7\]\)/);
    expect(gate.logs.some((l) => l.msg === 'connect' && l.client === '203.0.113.7')).toBe(true);
  });

  gateTest('v1 header, then STARTTLS: the backend sees ADDR=203.0.113.7', async ({ gate, backend }) => {
    const c = await SmtpTalk.connect(gate.port('submission'), { preamble: proxyV1('203.0.113.7', 4243, '192.0.2.25', 587) });
    const got = await sendThrough(backend, c, { starttls: true });
    expect(got.xclient.ADDR).toBe('203.0.113.7');
    expect(got.xclient.PORT).toBe('4243');
  });

  gateTest('v2 header before the implicit-TLS handshake: the backend sees ADDR=203.0.113.7', async ({ gate, backend }) => {
    const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true, preamble: proxyV2('203.0.113.7', 4244, '192.0.2.25', 465) });
    const got = await sendThrough(backend, c, { starttls: false });
    expect(got.xclient.ADDR).toBe('203.0.113.7');
    expect(got.xclient.PORT).toBe('4244');
  });

  gateTest("a v2 LOCAL header (the balancer's health check) keeps the real peer address", async ({ gate, backend }) => {
    const c = await SmtpTalk.connect(gate.port('submission'), { preamble: proxyV2Local() });
    const got = await sendThrough(backend, c, { starttls: true });
    expect(got.xclient.ADDR).toBe('127.0.0.1');
  });
});

describe('everyone else is disconnected before a byte of SMTP', () => {
  gateTest('a peer that is not in proxyProtocol.trusted (127.0.0.2) gets no greeting, even with a valid header', async ({ gate }) => {
    const before = await metricValue(gate, 'smtpgate_refusals_total', { stage: 'connect', reason: 'proxy_protocol' });
    const socket = await rawConnect(gate.port('submission'), '127.0.0.2');
    const received = bytesUntilClosed(socket);
    socket.write(proxyV2('203.0.113.7', 4242, '192.0.2.25', 587));
    expect(await received).toBe('');
    expect(await metricValue(gate, 'smtpgate_refusals_total', { stage: 'connect', reason: 'proxy_protocol' })).toBe(before + 1);
  });

  gateTest('a trusted peer that speaks SMTP instead of sending a header is disconnected without a greeting', async ({ gate }) => {
    const socket = await rawConnect(gate.port('submission'));
    const received = bytesUntilClosed(socket);
    socket.write('EHLO client.test\r\n');
    expect(await received).toBe('');
  });

  gateTest('a trusted peer that sends nothing is disconnected after proxyProtocol.timeout, without a greeting', async ({ gate }) => {
    const socket = await rawConnect(gate.port('impatient'));
    const started = Date.now();
    expect(await bytesUntilClosed(socket)).toBe('');
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
  });

  gateTest('a trusted peer that starts a TLS handshake instead of sending a header is disconnected', async ({ gate }) => {
    await expect(SmtpTalk.connect(gate.port('smtps'), { implicitTls: true })).rejects.toThrow();
  });
});
