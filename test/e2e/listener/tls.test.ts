/**
 * TLS at the front door: TLS 1.2 with AEAD suites and TLS 1.3 only, on both the STARTTLS and
 * the implicit-TLS listener; and the STARTTLS rules of RFC 3207: nothing sent in cleartext
 * after STARTTLS is ever executed, a new EHLO is needed after the handshake, no arguments,
 * no second STARTTLS.
 */
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ALICE, startGate, type Gate } from '../../helpers/gate.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { makeTestCert } from '../../helpers/pki.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

let backend: RecordingBackend;
let gate: Gate;

beforeAll(async () => {
  backend = await startRecordingBackend();
  gate = await startGate({ backendPort: backend.port });
});
afterAll(async () => {
  await gate?.stop();
  await backend?.close();
});

/**
 * OpenSSL 3 refuses to offer TLS 1.0/1.1 (and SHA-1 suites) at its default security level, so
 * a failure could be the client's own. Security level 0 makes the client offer them; the
 * control test below shows this client really completes such handshakes.
 */
const LEGACY_CLIENT = { ciphers: 'DEFAULT@SECLEVEL=0' } as const;

const PROFILES = {
  'TLS 1.0': { ...LEGACY_CLIENT, minVersion: 'TLSv1', maxVersion: 'TLSv1' },
  'TLS 1.1': { ...LEGACY_CLIENT, minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1' },
  'TLS 1.2 with the CBC suite ECDHE-ECDSA-AES128-SHA': { ...LEGACY_CLIENT, maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA@SECLEVEL=0' },
  'TLS 1.2 with the CBC suite ECDHE-ECDSA-AES256-SHA384': { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES256-SHA384' },
  'TLS 1.2 with ECDHE-ECDSA-AES128-GCM-SHA256': { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' },
  'TLS 1.2 with ECDHE-ECDSA-CHACHA20-POLY1305': { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-CHACHA20-POLY1305' },
  'TLS 1.3': { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' },
} satisfies Record<string, tls.ConnectionOptions>;
type Profile = keyof typeof PROFILES;

// The alert each refusal sends (RFC 8446 §6.2), as node's error code names it. OpenSSL 3.5
// (Node 24) renamed the "sslv3 alert" reasons "ssl/tls alert"; the alert is the same.
const PROTOCOL_VERSION = /^ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION$/;
const HANDSHAKE_FAILURE = /^ERR_SSL_(SSLV3|SSL\/TLS)_ALERT_HANDSHAKE_FAILURE$/;
const REFUSED: Array<[Profile, string, RegExp]> = [
  ['TLS 1.0', 'protocol_version', PROTOCOL_VERSION],
  ['TLS 1.1', 'protocol_version', PROTOCOL_VERSION],
  ['TLS 1.2 with the CBC suite ECDHE-ECDSA-AES128-SHA', 'handshake_failure', HANDSHAKE_FAILURE],
  ['TLS 1.2 with the CBC suite ECDHE-ECDSA-AES256-SHA384', 'handshake_failure', HANDSHAKE_FAILURE],
];
const ACCEPTED: Array<[Profile, string, string | undefined]> = [
  ['TLS 1.2 with ECDHE-ECDSA-AES128-GCM-SHA256', 'TLSv1.2', 'ECDHE-ECDSA-AES128-GCM-SHA256'],
  ['TLS 1.2 with ECDHE-ECDSA-CHACHA20-POLY1305', 'TLSv1.2', 'ECDHE-ECDSA-CHACHA20-POLY1305'],
  ['TLS 1.3', 'TLSv1.3', undefined],
];

/** A TLS session on the listener, by STARTTLS or implicitly; rejects when the handshake fails. */
async function tlsSession(kind: 'starttls' | 'implicit', options: tls.ConnectionOptions): Promise<SmtpTalk> {
  if (kind === 'implicit') {
    const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true, tls: options });
    expect((await c.read()).code).toBe(220);
    return c;
  }
  const c = await SmtpTalk.connect(gate.port('submission'));
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  expect((await c.cmd('STARTTLS')).code).toBe(220);
  try {
    await c.handshake(options);
  } catch (err) {
    c.close();
    throw err;
  }
  return c;
}

describe.each(['starttls', 'implicit'] as const)('TLS versions and suites (%s)', (kind) => {
  test.each(REFUSED)('%s: the handshake fails with the alert %s', async (profile, _name, alert) => {
    // The alert comes from the server (ssl3_read_bytes): the refusal is smtpgate's, not the client's.
    await expect(tlsSession(kind, PROFILES[profile])).rejects.toMatchObject({ code: expect.stringMatching(alert) });
  });

  test.each(ACCEPTED)('%s: the handshake succeeds and the session works', async (profile, version, cipher) => {
    const c = await tlsSession(kind, PROFILES[profile]);
    expect(c.tlsSocket!.getProtocol()).toBe(version);
    if (cipher) expect(c.tlsSocket!.getCipher().name).toBe(cipher);
    expect((await c.cmd('EHLO client.test')).lines).toContain('AUTH PLAIN LOGIN');
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    c.close();
  });
});

test('control: the legacy client profiles above complete a handshake with a server that allows them', async () => {
  const cert = await makeTestCert('localhost');
  const server = tls.createServer({ key: cert.key, cert: cert.cert, minVersion: 'TLSv1', ciphers: 'ALL@SECLEVEL=0' }, (s) => s.end());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  try {
    for (const [profile] of REFUSED) {
      const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...PROFILES[profile] });
      await new Promise<void>((resolve, reject) => {
        socket.once('secureConnect', () => resolve());
        socket.once('error', reject);
      });
      socket.destroy();
    }
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

describe('STARTTLS (RFC 3207)', () => {
  async function beforeStarttls(): Promise<SmtpTalk> {
    const c = await SmtpTalk.connect(gate.port('submission'));
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    return c;
  }

  test.each([
    ['MAIL and RCPT', 'MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@corp.test>\r\n'],
    ['AUTH with valid credentials, then MAIL', `AUTH PLAIN ${Buffer.from(`\0${ALICE.name}\0${ALICE.password}`).toString('base64')}\r\nMAIL FROM:<evil@attacker.test>\r\n`],
    ['RSET and NOOP', 'RSET\r\nNOOP\r\n'],
  ])('commands pipelined in cleartext behind STARTTLS (%s) are never executed', async (_what, injected) => {
    const sessionsBefore = backend.sessions;
    const messagesBefore = backend.messages.length;
    const c = await beforeStarttls();
    // One write: the injected lines arrive in the same TCP segment as STARTTLS.
    c.write(`STARTTLS\r\n${injected}`);
    expect((await c.read()).code).toBe(220);
    await c.handshake();
    // The first reply inside TLS is the one to our EHLO, not one to an injected command.
    const ehlo = await c.cmd('EHLO client.test');
    expect(ehlo.code).toBe(250);
    expect(ehlo.lines[0]).toMatch(/^gate\.test /);
    expect(ehlo.lines).toContain('AUTH PLAIN LOGIN');
    // No transaction was opened and nobody was authenticated: MAIL is refused for want of
    // AUTH (530), not as a nested MAIL (503).
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).raw).toMatch(/^530 5\.7\.0 /);
    expect((await c.cmd('RCPT TO:<victim@corp.test>')).code).toBe(503);
    expect((await c.cmd('NOOP')).code).toBe(250);
    c.close();
    expect(backend.sessions).toBe(sessionsBefore);
    expect(backend.messages.length).toBe(messagesBefore);
  });

  test('EHLO and STARTTLS in one packet: both replies arrive in cleartext, in order, and the handshake completes', async () => {
    // Replies of one event-loop turn are held and sent together; the 220 to STARTTLS (and the
    // EHLO reply held before it) must still leave before the socket is wrapped for TLS.
    const c = await SmtpTalk.connect(gate.port('submission'));
    expect((await c.read()).code).toBe(220);
    c.write('EHLO client.test\r\nSTARTTLS\r\n');
    const ehlo = await c.read();
    expect(ehlo.code).toBe(250);
    expect(ehlo.lines).toContain('STARTTLS');
    expect((await c.read()).code).toBe(220);
    await c.handshake();
    expect((await c.cmd('EHLO client.test')).lines).toContain('AUTH PLAIN LOGIN');
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    c.close();
  });

  test('after the handshake a new EHLO is required: MAIL and AUTH get 503 until then', async () => {
    const c = await beforeStarttls();
    expect((await c.starttls()).code).toBe(220);
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(503);
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(503);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    c.close();
  });

  test('STARTTLS with an argument gets 501 and the session stays in cleartext', async () => {
    const c = await beforeStarttls();
    expect((await c.cmd('STARTTLS now')).code).toBe(501);
    expect((await c.cmd('NOOP')).code).toBe(250);
    expect((await c.starttls()).code).toBe(220);
    c.close();
  });

  test('a second STARTTLS inside TLS gets 503', async () => {
    const c = await beforeStarttls();
    expect((await c.starttls()).code).toBe(220);
    expect((await c.cmd('STARTTLS')).code).toBe(503);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    expect((await c.cmd('STARTTLS')).code).toBe(503);
    expect((await c.cmd('NOOP')).code).toBe(250);
    c.close();
  });

  test('STARTTLS on the implicit-TLS listener gets 503, and is not advertised there', async () => {
    const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true });
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).lines).not.toContain('STARTTLS');
    expect((await c.cmd('STARTTLS')).code).toBe(503);
    expect((await c.cmd('NOOP')).code).toBe(250);
    c.close();
  });
});
