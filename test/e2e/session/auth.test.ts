/**
 * AUTH as RFC 4954 (and RFC 4616 for PLAIN) describe it, seen from a client under TLS: strict
 * base64, "*" cancels, one identity per session, only PLAIN and LOGIN, no CR/LF in identities,
 * no acting as someone else. And passthrough AUTH (`auth.backend: backend`), where the legacy
 * server's own accounts decide and the authenticated backend connection carries the mail.
 *
 * AUTH before TLS (538 5.7.11) is pinned down in listener/basics.test.ts.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ALICE, metricValue, startGate, type Gate } from '../../helpers/gate.js';
import { listener } from '../../helpers/config.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

/** Implicit TLS and EHLO: a client that may try AUTH. */
async function underTls(gate: Gate): Promise<SmtpTalk> {
  const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true });
  expect((await c.read()).code).toBe(220);
  const ehlo = await c.cmd('EHLO client.test');
  expect(ehlo.lines).toContain('AUTH PLAIN LOGIN');
  return c;
}

describe('AUTH replies (RFC 4954)', () => {
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

  test('malformed base64 in the initial response gets 501 5.5.2, and the session carries on', async () => {
    const c = await underTls(gate);
    // Node's decoder would skip the "!" and decode "\0ali" + "ce": it must not get that far.
    expect((await c.cmd('AUTH PLAIN AGFs!aWNl')).raw).toMatch(/^501 5\.5\.2 /);
    expect((await c.cmd('AUTH PLAIN AGFsaWNl=')).raw).toMatch(/^501 5\.5\.2 /); // wrong padding
    expect((await c.cmd('NOOP')).code).toBe(250);
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    c.close();
  });

  test('malformed base64 as an AUTH LOGIN continuation gets 501 5.5.2 and ends the exchange', async () => {
    const c = await underTls(gate);
    expect((await c.cmd('AUTH LOGIN')).code).toBe(334);
    expect((await c.cmd('YWxp!ZQ==')).raw).toMatch(/^501 5\.5\.2 /);
    // Were the exchange still open, NOOP would be taken as the user name and answered 334.
    expect((await c.cmd('NOOP')).code).toBe(250);

    expect((await c.cmd('AUTH LOGIN')).code).toBe(334);
    expect((await c.cmd(b64(ALICE.name))).code).toBe(334);
    expect((await c.cmd('cGFzc3dvcmQ$')).raw).toMatch(/^501 5\.5\.2 /);
    expect((await c.cmd('NOOP')).code).toBe(250);
    c.close();
  });

  test('"*" cancels a PLAIN or LOGIN exchange with 501', async () => {
    const c = await underTls(gate);
    expect((await c.cmd('AUTH LOGIN')).code).toBe(334);
    expect((await c.cmd('*')).code).toBe(501);
    expect((await c.cmd('AUTH LOGIN')).code).toBe(334);
    expect((await c.cmd(b64(ALICE.name))).code).toBe(334);
    expect((await c.cmd('*')).code).toBe(501);
    expect((await c.cmd('AUTH PLAIN')).code).toBe(334);
    expect((await c.cmd('*')).code).toBe(501);
    expect((await c.cmd('NOOP')).code).toBe(250);
    // Cancelling authenticated nobody.
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).raw).toMatch(/^530 5\.7\.0 /);
    c.close();
  });

  test('a second AUTH after a successful one gets 503', async () => {
    const c = await underTls(gate);
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(503);
    expect((await c.cmd('AUTH LOGIN')).code).toBe(503);
    c.close();
  });

  test('mechanisms other than PLAIN and LOGIN (CRAM-MD5, XOAUTH2) get 504', async () => {
    const c = await underTls(gate);
    expect((await c.cmd('AUTH CRAM-MD5')).code).toBe(504);
    expect((await c.cmd(`AUTH XOAUTH2 ${b64(`user=${ALICE.name}\x01auth=Bearer token\x01\x01`)}`)).code).toBe(504);
    expect((await c.cmd('AUTH GSSAPI')).code).toBe(504);
    expect((await c.cmd('NOOP')).code).toBe(250);
    c.close();
  });

  test('wrong credentials get 535 5.7.8 with PLAIN and with LOGIN, and are counted as failures', async () => {
    const before = await metricValue(gate, 'smtpgate_auth_attempts_total', { result: 'failure' });
    const c = await underTls(gate);
    expect((await c.authPlain(ALICE.name, 'not the password')).raw).toMatch(/^535 5\.7\.8 /);
    expect((await c.cmd('AUTH LOGIN')).code).toBe(334);
    expect((await c.cmd(b64(ALICE.name))).code).toBe(334);
    expect((await c.cmd(b64('not the password'))).raw).toMatch(/^535 5\.7\.8 /);
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).raw).toMatch(/^530 5\.7\.0 /);
    expect(await metricValue(gate, 'smtpgate_auth_attempts_total', { result: 'failure' })).toBe(before + 2);
    c.close();
  });

  test('a PLAIN token whose user name contains CR or LF is refused with 501', async () => {
    const c = await underTls(gate);
    expect((await c.cmd(`AUTH PLAIN ${b64('\0ali\r\nce\0pw')}`)).code).toBe(501);
    expect((await c.cmd(`AUTH PLAIN ${b64('\0ali\nce\0pw')}`)).code).toBe(501);
    expect((await c.cmd('AUTH LOGIN')).code).toBe(334);
    expect((await c.cmd(b64('ali\r\nce'))).code).toBe(501);
    expect((await c.cmd('NOOP')).code).toBe(250);
    c.close();
  });

  // As README.md's AUTH table says: smtp-server refuses a control character in a user name or
  // authorization identity itself (501 5.5.4), before smtpgate sees the credentials; one in a
  // password reaches smtpgate, which refuses it (501 5.5.2). A NUL can't be inside a PLAIN
  // field (it separates them), but can be in a LOGIN user name.
  test.each([
    { where: 'a PLAIN user name', lines: [`AUTH PLAIN ${b64('\0ali\rce\0pw')}`], reply: '501 5.5.4 Error: invalid userdata' },
    { where: 'a PLAIN authorization identity', lines: [`AUTH PLAIN ${b64('bo\nb\0alice\0pw')}`], reply: '501 5.5.4 Error: invalid userdata' },
    { where: 'a LOGIN user name', lines: ['AUTH LOGIN', b64('ali\0ce')], reply: '501 5.5.4 Error: invalid userdata' },
    { where: 'a PLAIN password', lines: [`AUTH PLAIN ${b64('\0alice\0p\rw')}`], reply: '501 5.5.2 Invalid authentication data' },
    { where: 'a LOGIN password', lines: ['AUTH LOGIN', b64('alice'), b64('p\nw')], reply: '501 5.5.2 Invalid authentication data' },
  ])('CR, LF or NUL in $where: $reply', async ({ lines, reply }) => {
    const c = await underTls(gate);
    let last = '';
    for (const line of lines) last = (await c.cmd(line)).raw;
    expect(last).toBe(reply);
    c.close();
  });

  test('an authorization identity other than the authentication identity gets 535 (no acting as someone else)', async () => {
    const c = await underTls(gate);
    // RFC 4616: authzid NUL authcid NUL passwd. Alice's own password, asking to act as bob.
    expect((await c.cmd(`AUTH PLAIN ${b64(`bob\0${ALICE.name}\0${ALICE.password}`)}`)).raw).toMatch(/^535 5\.7\.8 /);
    // The same authzid as the authcid is no delegation at all.
    expect((await c.cmd(`AUTH PLAIN ${b64(`${ALICE.name}\0${ALICE.name}\0${ALICE.password}`)}`)).code).toBe(235);
    c.close();
  });
});

describe('passthrough AUTH (auth.backend: backend)', () => {
  // On loopback the recording backend takes AUTH in cleartext (allowInsecureAuth). A real
  // deployment points smtpgate at the legacy server with backend.tls: starttls, so the
  // forwarded password never crosses the network in the clear.
  let backend: RecordingBackend;
  let gate: Gate;
  beforeAll(async () => {
    backend = await startRecordingBackend({ auth: { user: 'bob', password: 'pw' } });
    gate = await startGate({ backendPort: backend.port, auth: { backend: 'backend' } });
  });
  afterAll(async () => {
    await gate?.stop();
    await backend?.close();
  });

  test("the backend's accounts decide: bob/pw gets 235 and the message arrives authenticated as bob", async () => {
    const sessionsBefore = backend.sessions;
    const c = await underTls(gate);
    expect((await c.authPlain('bob', 'pw')).code).toBe(235);
    expect((await c.cmd('MAIL FROM:<bob@corp.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<carol@corp.test>')).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    expect((await c.cmd('Subject: passthrough\r\n\r\nhi\r\n.')).code).toBe(250);
    await c.cmd('QUIT');
    const got = backend.messages.at(-1)!;
    expect(got.authUser).toBe('bob');
    expect(got.data.toString()).toContain('Subject: passthrough\r\n');
    // The connection that authenticated is the one that carried MAIL: one backend session.
    expect(backend.sessions - sessionsBefore).toBe(1);
  });

  test('a password the backend refuses gets 535 5.7.8, and a retry on the same connection can succeed', async () => {
    const sessionsBefore = backend.sessions;
    const c = await underTls(gate);
    expect((await c.authPlain('bob', 'wrong')).raw).toMatch(/^535 5\.7\.8 /);
    expect((await c.cmd('MAIL FROM:<bob@corp.test>')).raw).toMatch(/^530 5\.7\.0 /);
    expect((await c.cmd('AUTH LOGIN')).code).toBe(334);
    expect((await c.cmd(b64('bob'))).code).toBe(334);
    expect((await c.cmd(b64('pw'))).code).toBe(235);
    expect((await c.cmd('MAIL FROM:<bob@corp.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<carol@corp.test>')).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    expect((await c.cmd('Subject: retry\r\n\r\nhi\r\n.')).code).toBe(250);
    await c.cmd('QUIT');
    expect(backend.messages.at(-1)!.authUser).toBe('bob');
    expect(backend.sessions - sessionsBefore).toBe(1);
  });

  test("a user the users file knows but the backend doesn't gets 535: the file is not consulted", async () => {
    const c = await underTls(gate);
    expect((await c.authPlain(ALICE.name, ALICE.password)).raw).toMatch(/^535 5\.7\.8 /);
    c.close();
  });
});

describe('AUTH inside a mail transaction (RFC 4954 §4)', () => {
  let backend: RecordingBackend;
  let gate: Gate;
  beforeAll(async () => {
    backend = await startRecordingBackend();
    // Trusted, no AUTH required: MAIL is accepted before AUTH, so AUTH can arrive mid-transaction.
    gate = await startGate({
      backendPort: backend.port,
      listeners: [listener('relay', { tls: 'implicit', requireAuth: false, trusted: { networks: ['127.0.0.0/8'] } })],
    });
  });
  afterAll(async () => {
    await gate?.stop();
    await backend?.close();
  });

  test('AUTH inside a mail transaction gets 503 5.5.1 (RFC 4954 §4), so a MAIL judged unauthenticated is never relayed as the user', async () => {
    const c = await SmtpTalk.connect(gate.port('relay'), { implicitTls: true });
    await c.read();
    await c.cmd('EHLO client.test');
    expect((await c.cmd('MAIL FROM:<ceo@corp.test>')).code).toBe(250);
    expect((await c.authPlain(ALICE.name, ALICE.password)).raw).toMatch(/^503 5\.5\.1 /);
    expect((await c.cmd('RSET')).code).toBe(250);
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    c.close();
  });
});
