/**
 * The privacy options for the headers smtpgate writes (issue 18, item 4), end to end over real
 * sockets into a recording backend: data.receivedHeader: private names smtpgate's hop only, and
 * data.stripHeaders takes the chosen fields out of the client's top-level header block, leaving
 * every other octet as the client sent it.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startGate, type Gate } from '../../helpers/gate.js';
import { startRecordingBackend, type RecordedMessage } from '../../helpers/backends.js';
import { startPostfix, type Postfix } from '../../helpers/postfix.js';
import { describeWith } from '../../helpers/programs.js';
import { authenticatedSession, closeBackend, envelope, forThisTest, stopGate } from '../../helpers/sessions.js';
import type { SmtpTalk } from '../../helpers/smtp-talk.js';
import type { DataInput } from '../../helpers/config.js';
import { LEAKY_HEADERS, LEAKY_MESSAGE, LEAKY_MESSAGE_STRIPPED } from '../../helpers/leaky-message.js';

/** The client's end is bound to this address, so it can't be confused with smtpgate's own 127.0.0.1. */
const CLIENT_ADDRESS = '127.0.0.2';

/** A gate with `data` in front of a recording backend, both for this test only. */
async function gateWith(data: DataInput) {
  const backend = await forThisTest(startRecordingBackend(), closeBackend);
  const gate = await forThisTest(startGate({ backendPort: backend.port, config: { data } }), stopGate);
  return { backend, gate };
}

/** Sends `message` (CRLF lines, without the final dot) from alice to bob; returns what the backend stored. */
async function relay(c: SmtpTalk, backend: { messages: RecordedMessage[] }, message: string): Promise<RecordedMessage> {
  const before = backend.messages.length;
  const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
  expect(data?.code).toBe(354);
  c.write(message);
  expect((await c.cmd('.')).code).toBe(250);
  expect(backend.messages).toHaveLength(before + 1);
  return backend.messages.at(-1)!;
}

/**
 * What smtpgate prepended (`prepended` headers: its Received: first, the others one line each),
 * and the client's message as the backend got it.
 */
function split(stored: RecordedMessage, prepended: number): { own: string; client: string } {
  const lines = stored.data.toString('latin1').split(/(?<=\r\n)/);
  // smtpgate's Received: header is the first field and its continuation lines.
  let end = 1;
  while (end < lines.length && /^\t/.test(lines[end]!)) end++;
  for (let i = 1; i < prepended; i++) end++;
  return { own: lines.slice(0, end).join(''), client: lines.slice(end).join('') };
}

describe('data.receivedHeader: private', () => {
  test("the backend gets a Received: header without the client's address or EHLO name; full (the default) names both", async () => {
    const hidden = await gateWith({ receivedHeader: 'private' });
    const full = await gateWith({});
    const headers: Record<string, string> = {};
    for (const [mode, { gate, backend }] of Object.entries({ private: hidden, full })) {
      const c = await authenticatedSession(gate, { localAddress: CLIENT_ADDRESS });
      headers[mode] = split(await relay(c, backend, 'Subject: where from\r\n\r\nhello\r\n'), 1).own;
      await c.cmd('QUIT');
    }
    expect(headers.private).toMatch(/^Received: from client\.invalid \(address hidden\)\r\n\tby gate\.test \(smtpgate\) with ESMTPSA id \S+\r\n\t\(using TLSv1\.3 with cipher \S+\)\r\n\tfor <bob@corp\.test>; \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n$/);
    expect(headers.private).not.toContain(CLIENT_ADDRESS);
    expect(headers.private).not.toContain('client.test');
    // Full names the client: the two checks above can fail.
    expect(headers.full).toMatch(new RegExp(`^Received: from client\\.test \\(unknown \\[${CLIENT_ADDRESS.replaceAll('.', '\\.')}\\]\\)\r\n\tby gate\\.test \\(smtpgate\\) with ESMTPSA`));
  });

  test('the backend is still told who the client is, by XCLIENT: only the stored header hides it', async () => {
    const { gate, backend } = await gateWith({ receivedHeader: 'private' });
    const c = await authenticatedSession(gate, { localAddress: CLIENT_ADDRESS });
    const stored = await relay(c, backend, 'Subject: who\r\n\r\nx\r\n');
    await c.cmd('QUIT');
    expect(stored.xclient).toMatchObject({ ADDR: CLIENT_ADDRESS, HELO: 'client.test', LOGIN: 'alice' });
    expect(stored.data.toString('latin1')).not.toContain(CLIENT_ADDRESS);
  });
});

describe('data.stripHeaders', () => {
  const STRIP = LEAKY_HEADERS;
  /** With a body line that starts with a dot: the client stuffs it, smtpgate unstuffs and stuffs it again. */
  const dotted = (m: string) => m.replace('attached body', '.attached body');
  const MESSAGE = dotted(LEAKY_MESSAGE);
  const EXPECTED = dotted(LEAKY_MESSAGE_STRIPPED);
  const stuffed = (m: string) => m.replace('\r\n.attached', '\r\n..attached');

  /** The client's message as the backend stored it: with the dot-stuffing undone, as the client wrote it. */
  const clientPart = (stored: RecordedMessage) => split(stored, 1).client;

  test('the chosen fields are gone (folded, any case, repeated); every other header, the body and an attached message are byte for byte as sent', async () => {
    const { gate, backend } = await gateWith({ stripHeaders: STRIP });
    const c = await authenticatedSession(gate);
    const stored = await relay(c, backend, stuffed(MESSAGE));
    await c.cmd('QUIT');
    expect(clientPart(stored)).toBe(EXPECTED);
    expect(EXPECTED).not.toBe(MESSAGE);
    expect(EXPECTED).toContain('\r\nX-Originating-IP-Extra: kept, only starts like a stripped name\r\n');
  });

  test("smtpgate's own headers are never stripped, even when named; the client's Received: lines are", async () => {
    const { gate, backend } = await gateWith({ stripHeaders: ['Received', 'X-Authenticated-User'], authenticatedUserHeader: true });
    const c = await authenticatedSession(gate);
    const message = 'Received: from app-07.corp.internal (app-07 [10.0.0.7])\r\n\tby relay.corp.internal; Mon, 6 Jan 2025 09:00:00 +0000\r\nX-Authenticated-User: mallory\r\nSubject: via an internal relay\r\n\r\nbody\r\n';
    const stored = await relay(c, backend, message);
    await c.cmd('QUIT');
    const { own, client } = split(stored, 2);
    expect(own).toMatch(/^Received: from client\.test \(unknown \[127\.0\.0\.1\]\)\r\n\tby gate\.test \(smtpgate\)[\s\S]*\r\nX-Authenticated-User: alice\r\n$/);
    expect(client).toBe('Subject: via an internal relay\r\n\r\nbody\r\n');
  });

  test('a message that is only headers (no empty line) loses the chosen fields, its last line included', async () => {
    const { gate, backend } = await gateWith({ stripHeaders: STRIP });
    const c = await authenticatedSession(gate);
    const stored = await relay(c, backend, 'Subject: headers only\r\nX-Originating-IP: [10.1.2.3]\r\nTo: bob@corp.test\r\nX-Originating-IP: [10.1.2.4]\r\n');
    await c.cmd('QUIT');
    expect(clientPart(stored)).toBe('Subject: headers only\r\nTo: bob@corp.test\r\n');
  });

  test('the header block in one-octet TLS records, after MAIL, RCPT and DATA pipelined in one write, gives the same message', async () => {
    const { gate, backend } = await gateWith({ stripHeaders: STRIP });
    const c = await authenticatedSession(gate);
    const socket = c.tlsSocket!;
    const written = (data: string) => new Promise<void>((resolve, reject) => socket.write(data, 'latin1', (err) => (err ? reject(err) : resolve())));
    await written('MAIL FROM:<alice@corp.test>\r\nRCPT TO:<bob@corp.test>\r\nDATA\r\n');
    expect([(await c.read()).code, (await c.read()).code, (await c.read()).code]).toEqual([250, 250, 354]);
    const message = stuffed(MESSAGE);
    const headerEnd = message.indexOf('\r\n\r\n') + 4;
    // Each write is its own TLS record, and each record reaches smtp-server as its own chunk.
    for (const octet of message.slice(0, headerEnd)) await written(octet);
    await written(message.slice(headerEnd));
    expect((await c.cmd('.')).code).toBe(250);
    await c.cmd('QUIT');
    expect(clientPart(backend.messages.at(-1)!)).toBe(EXPECTED);
  });

  test('a bare LF inside a stripped field still refuses the message (SMTP smuggling guard), and nothing is delivered', async () => {
    const { gate, backend } = await gateWith({ stripHeaders: STRIP });
    const c = await authenticatedSession(gate);
    const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    c.write('Subject: smuggler\r\nX-Originating-IP: [10.1.2.3]\n.\nMAIL FROM:<ceo@corp.test>\r\n\r\nbody\r\n');
    expect((await c.cmd('.')).code).toBe(550);
    await c.cmd('QUIT');
    expect(backend.messages).toHaveLength(0);
  });
});

describeWith(['postfix'], 'in front of a real Postfix, whose header_checks log every Received: and X-Originating-IP: it stores', () => {
  let postfix: Postfix;
  /** By identity mode: how the backend is told who the client is. */
  const gates: Partial<Record<'xclient' | 'xforward', Gate>> = {};
  beforeAll(async () => {
    postfix = await startPostfix({
      mainCf: 'header_checks = regexp:$CONFIG/header_checks\nsmtpd_authorized_xforward_hosts = 127.0.0.0/8',
      files: { header_checks: '/^Received:/ WARN\n/^X-Originating-IP:/ WARN\n' },
    });
    for (const identity of ['xclient', 'xforward'] as const) {
      gates[identity] = await startGate({
        backend: { address: `127.0.0.1:${postfix.port}`, identity },
        config: { data: { receivedHeader: 'private', stripHeaders: ['X-Originating-IP'] } },
      });
    }
  });
  afterAll(async () => {
    for (const gate of Object.values(gates)) await gate.stop();
    await postfix?.stop();
  });

  /** Relays one message from 127.0.0.2; returns what Postfix logged of it, once it was delivered (discarded). */
  async function postfixLogOf(gate: Gate): Promise<string[]> {
    const c = await authenticatedSession(gate, { localAddress: CLIENT_ADDRESS });
    const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    const final = await c.cmd('Subject: hi\r\nX-Originating-IP: [10.1.2.3]\r\n\r\nhello\r\n.');
    await c.cmd('QUIT');
    const id = /queued as ([0-9A-Za-z]+)/.exec(final.raw)?.[1];
    expect(id, final.raw).toBeDefined();
    // cleanup logs its header warnings before the queue manager hands the message on.
    await postfix.logLine(new RegExp(`postfix/discard\\[\\d+\\]: ${id}: to=<bob@corp\\.test>`), `the discard of ${id}`);
    return postfix.log().split('\n').filter((l) => l.includes(`: ${id}: `));
  }

  const warnings = (log: string[]) => log.filter((l) => l.includes(': warning: header ')).map((l) => l.slice(l.indexOf('warning: header ') + 16));

  test("Postfix stores smtpgate's private Received: and no X-Originating-IP; with XCLIENT, its own Received: names the client", async () => {
    const headers = warnings(await postfixLogOf(gates.xclient!));
    expect(headers.filter((h) => h.startsWith('X-Originating-IP'))).toEqual([]);
    expect(headers.some((h) => h.startsWith('Received: from client.invalid (address hidden)??by gate.test (smtpgate) with ESMTPSA'))).toBe(true);
    // What XCLIENT is for: Postfix treats the client as if it had connected itself, Received: line
    // included. Hide it there with the backend's own header_checks, or use identity: xforward.
    expect(headers.some((h) => h.startsWith(`Received: from client.test (unknown [${CLIENT_ADDRESS}])??by legacy.test (Postfix)`))).toBe(true);
  });

  test("with XFORWARD, Postfix's own Received: names smtpgate and the client is only in Postfix's log", async () => {
    const log = await postfixLogOf(gates.xforward!);
    const headers = warnings(log);
    expect(headers.some((h) => h.startsWith('Received: from client.invalid (address hidden)'))).toBe(true);
    expect(headers.some((h) => /^Received: from gate\.test \(\S+ \[127\.0\.0\.1\]\)\?\?by legacy\.test \(Postfix\)/.test(h))).toBe(true);
    // Postfix appends the client it logs to each warning; the stored header text is before it.
    const stored = headers.map((h) => h.replace(/ from \S+\[[^\]]*\]; from=<.*$/, ''));
    expect(stored.join('\n')).not.toContain(CLIENT_ADDRESS);
    expect(log.some((l) => l.includes(`client=localhost[127.0.0.1], orig_client=unknown[${CLIENT_ADDRESS}]`))).toBe(true);
  });
});

describe('the headers smtpgate prepends can not be extended by the client', () => {
  test.each([
    ['a space', ' admin@corp.test'],
    ['a tab', '\tadmin@corp.test'],
  ])('a message whose first line starts with %s (it would continue smtpgate\'s last header) is refused with 550 5.6.0, and nothing reaches the backend', async (_what, first) => {
    const { gate, backend } = await gateWith({ authenticatedUserHeader: true });
    const c = await authenticatedSession(gate);
    const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    c.write(`${first}\r\nSubject: x\r\n\r\nbody\r\n`);
    expect((await c.cmd('.')).raw).toMatch(/^550 5\.6\.0 /);
    expect(backend.messages).toHaveLength(0);
    // The session goes on: a well-formed message after it is relayed with alice's header intact.
    const stored = await relay(c, backend, 'Subject: y\r\n\r\nbody\r\n');
    expect(stored.data.toString('latin1')).toContain('\r\nX-Authenticated-User: alice\r\nSubject: y\r\n');
  });

  test('it is refused when smtpgate prepends nothing too: the backend\'s own Received:, or a DKIM-Signature:, would be extended instead', async () => {
    const { gate, backend } = await gateWith({ receivedHeader: 'off', authenticatedUserHeader: false });
    const c = await authenticatedSession(gate);
    const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    c.write(' From: ceo@corp.test\r\nSubject: x\r\n\r\nbody\r\n');
    expect((await c.cmd('.')).raw).toMatch(/^550 5\.6\.0 /);
    expect(backend.messages).toHaveLength(0);
  });
});
