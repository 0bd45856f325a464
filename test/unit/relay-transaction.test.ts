/**
 * The relay's transaction API (relay/backend.ts), driven directly over real sockets against
 * the scripted raw backend: MAIL gives a transaction, RCPT and DATA are passed on one by one,
 * and the message sink writes the final dot only at commit. Every refusal is the exact
 * Refusal the client would get; the e2e tests (relay*.test.ts, smuggling.test.ts) cover the
 * same paths through a whole gate.
 */
import { afterEach, describe, expect, test } from 'vitest';
import { pino } from 'pino';
import type { SMTPServerAddress } from 'smtp-server';
import { Backend, BackendError, BackendPool, BackendSession, Transaction, type BackendTarget, type ClientIdentity } from '../../src/relay/backend.js';
import { createMetrics } from '../../src/metrics/catalogue.js';
import { readBuildInfo } from '../../src/build-info.js';
import type { Refusal } from '../../src/reply.js';
import { startRawBackend, type RawBackend, type RawBackendOptions } from '../helpers/raw-backend.js';
import { deadPort } from '../helpers/sessions.js';

const IDENTITY: ClientIdentity = { addr: '127.0.0.1', port: 40000, proto: 'ESMTP', login: 'alice' };
const TIMEOUTS = { connectMs: 2000, greetingMs: 2000, commandMs: 2000, dataIdleMs: 2000, finalReplyMs: 2000 };

const open: { backend: Backend; raw?: RawBackend }[] = [];
afterEach(async () => {
  for (const o of open.splice(0)) {
    await o.backend.close();
    await o.raw?.close();
  }
});

function address(addr: string, args: Record<string, string | boolean> = {}): SMTPServerAddress {
  return { address: addr, args } as SMTPServerAddress;
}

function backendOn(port: number, maxMessageBytes = 1_000_000, identity: 'none' | 'xclient' = 'none', onError: (err: BackendError) => void = () => undefined) {
  const target: BackendTarget = { name: `127.0.0.1:${port}`, options: { host: '127.0.0.1', port, tls: 'none', heloName: 'gate.test', timeouts: TIMEOUTS } };
  const session = new BackendSession(new BackendPool([target], 'failover', 1000), { identity }, { onConnected: () => undefined, onError: (_t, err) => onError(err) });
  const metrics = createMetrics(readBuildInfo());
  const backend = new Backend(session, pino({ level: 'silent' }), { listener: 'submission', bareLineEndings: 'reject', maxMessageBytes, stripHeaders: [] }, metrics);
  return { backend, metrics };
}

async function withRaw(opts: RawBackendOptions = {}, maxMessageBytes?: number) {
  const raw = await startRawBackend(opts);
  const { backend, metrics } = backendOn(raw.port, maxMessageBytes);
  open.push({ backend, raw });
  return { raw, backend, metrics };
}

async function transaction(backend: Backend): Promise<Transaction> {
  const tx = await backend.mail(address('alice@example.com'), IDENTITY);
  if (!(tx instanceof Transaction)) throw new Error(`MAIL refused: ${tx.code} ${tx.text}`);
  return tx;
}

function refusalOf(r: Refusal | undefined): Pick<Refusal, 'code' | 'enhanced' | 'reason'> | undefined {
  return r && { code: r.code, enhanced: r.enhanced, reason: r.reason };
}

describe('relay transaction', () => {
  test('a backend refusing the client’s own EHLO name after XCLIENT refuses MAIL with its own reply, not as a backend failure', async () => {
    const rejected = '501 5.5.2 <bad_helo>: Helo command rejected: Invalid name';
    const raw = await startRawBackend({ ehlo: ['raw.test', 'XCLIENT NAME ADDR PORT PROTO HELO LOGIN'], xclient: '220 2.0.0 raw.test ESMTP', ehloRefused: { name: 'bad_helo', reply: rejected } });
    const errors: BackendError[] = [];
    const { backend } = backendOn(raw.port, undefined, 'xclient', (err) => errors.push(err));
    open.push({ backend, raw });
    for (const helo of ['bad_helo', 'bad_helo']) {
      const mail = await backend.mail(address('alice@example.com'), { ...IDENTITY, helo });
      expect(mail).not.toBeInstanceOf(Transaction);
      expect(mail).toMatchObject({ code: 501, enhanced: '5.5.2', text: '<bad_helo>: Helo command rejected: Invalid name' });
    }
    expect(errors, 'no backend error is counted').toEqual([]);
    expect(raw.connections[0]!.commands.some((c) => c.startsWith('XCLIENT '))).toBe(true);
    expect(raw.connections[0]!.commands).toContain('EHLO bad_helo');
    // The same backend takes a client whose name it accepts.
    expect(await backend.mail(address('alice@example.com'), { ...IDENTITY, helo: 'good.example' })).toBeInstanceOf(Transaction);
  });

  test('relays MAIL, each RCPT and the message, and answers with the backend’s own replies', async () => {
    const { raw, backend } = await withRaw({ final: '250 2.0.0 Ok: queued as Q1' });
    const tx = await transaction(backend);
    expect(tx.reply.code).toBe(250);
    expect(await tx.rcpt(address('bob@example.net'))).toBeUndefined();
    expect(await tx.rcpt(address('carol@example.net'))).toBeUndefined();
    expect(await tx.data(() => false)).toBeUndefined();
    const sink = tx.message(() => undefined);
    sink.prepend(Buffer.from('X-Added: yes\r\n'));
    sink.write(Buffer.from('Subject: hi\r\n\r\n.leading dot\r\n'));
    sink.end();
    expect(await sink.commit()).toBeUndefined();
    expect(sink.reply).toMatchObject({ code: 250, enhanced: '2.0.0' });
    expect(raw.messages).toHaveLength(1);
    expect(raw.messages[0]!.to).toEqual(['bob@example.net', 'carol@example.net']);
    expect(raw.messages[0]!.data.toString('latin1')).toBe('X-Added: yes\r\nSubject: hi\r\n\r\n..leading dot\r\n');
    expect(raw.connections[0]!.commands.filter((c) => /^(MAIL|RCPT)/.test(c))).toEqual(['MAIL FROM:<alice@example.com>', 'RCPT TO:<bob@example.net>', 'RCPT TO:<carol@example.net>']);
  });

  test('mirrors a refused MAIL, RCPT, DATA or message with the backend’s code, enhanced code and text', async () => {
    for (const [opts, step] of [
      [{ mail: '553 5.7.1 Sender refused' }, 'mail'],
      [{ rcpt: '550 5.1.1 No such user' }, 'rcpt'],
      [{ data: '554 5.5.1 No valid recipients' }, 'data'],
      [{ final: '552 5.2.2 Mailbox full' }, 'commit'],
    ] as const) {
      const { raw, backend } = await withRaw(opts);
      const mail = await backend.mail(address('alice@example.com'), IDENTITY);
      let refused: Refusal | undefined;
      if (!(mail instanceof Transaction)) refused = mail;
      else if (!(refused = await mail.rcpt(address('bob@example.net'))) && !(refused = await mail.data(() => false))) {
        const sink = mail.message(() => undefined);
        sink.write(Buffer.from('Subject: x\r\n\r\nbody\r\n'));
        sink.end();
        refused = await sink.commit();
      }
      const line = (opts as Record<string, string>)[step === 'commit' ? 'final' : step]!;
      const [code, enhanced, ...text] = line.split(' ');
      expect({ step, ...refused }).toEqual({ step, code: Number(code), enhanced, text: text.join(' '), reason: 'backend_refused' });
      expect(raw.messages).toHaveLength(0);
    }
  });

  test('refuses BODY=8BITMIME and SMTPUTF8 a backend did not advertise, without sending MAIL', async () => {
    const { raw, backend } = await withRaw({ ehlo: ['250-raw.test', '250 PIPELINING'] });
    const body = await backend.mail(address('alice@example.com', { BODY: '8BITMIME' }), IDENTITY);
    expect(refusalOf(body as Refusal)).toEqual({ code: 555, enhanced: '5.6.3', reason: 'param_unsupported' });
    const utf8 = await backend.mail(address('alice@example.com', { SMTPUTF8: true }), IDENTITY);
    expect(refusalOf(utf8 as Refusal)).toEqual({ code: 553, enhanced: '5.6.7', reason: 'param_unsupported' });
    expect(raw.connections[0]!.commands.some((c) => c.startsWith('MAIL'))).toBe(false);
  });

  test('a backend that cannot be reached is a 451 4.4.1 at MAIL, never a 250', async () => {
    const { backend } = backendOn(await deadPort());
    open.push({ backend });
    const tx = await backend.mail(address('alice@example.com'), IDENTITY);
    expect(tx).not.toBeInstanceOf(Transaction);
    expect(refusalOf(tx as Refusal)).toEqual({ code: 451, enhanced: '4.4.1', reason: 'backend_unavailable' });
  });

  test.each([
    ['a bare LF', 'Subject: x\r\n\r\nline\nsmuggled\r\n', { code: 550, enhanced: '5.5.2', reason: 'smuggling' }],
    ['a bare CR', 'Subject: x\r\n\r\nline\rsmuggled\r\n', { code: 550, enhanced: '5.5.2', reason: 'smuggling' }],
    ['a NUL', 'Subject: x\r\n\r\nline\0\r\n', { code: 550, enhanced: '5.5.2', reason: 'smuggling' }],
    ['a line over 1000 octets', `Subject: x\r\n\r\n${'a'.repeat(1200)}\r\n`, { code: 550, enhanced: '5.5.2', reason: 'syntax' }],
    ['more than maxMessageBytes', `Subject: x\r\n\r\n${'a'.repeat(200)}\r\n`, { code: 552, enhanced: '5.3.4', reason: 'message_too_big' }],
  ])('a message with %s is refused and aborted without the final dot: nothing delivered', async (_what, message, expected) => {
    const { raw, backend, metrics } = await withRaw({}, 100);
    const tx = await transaction(backend);
    expect(await tx.rcpt(address('bob@example.net'))).toBeUndefined();
    expect(await tx.data(() => false)).toBeUndefined();
    const sink = tx.message(() => undefined);
    let thrown: unknown;
    try {
      sink.write(Buffer.from(message, 'latin1'));
      sink.end();
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(Error);
    tx.abort();
    expect(refusalOf(tx.refusalFor(thrown, false))).toEqual(expected);
    await raw.connections[0]!.closed;
    expect(raw.connections[0]!.sawEndOfData).toBe(false);
    expect(raw.messages).toHaveLength(0);
    const smuggling = (await metrics.smugglingRejections.get()).values.reduce((n, v) => n + v.value, 0);
    expect(smuggling).toBe(expected.reason === 'smuggling' ? 1 : 0);
  });

  test('a client that left is told apart from a backend that failed', async () => {
    const { backend } = await withRaw();
    const tx = await transaction(backend);
    expect(refusalOf(tx.refusalFor(new Error('connection closed during DATA'), true))).toEqual({ code: 421, enhanced: '4.4.2', reason: 'client_aborted' });
    expect(refusalOf(tx.refusalFor(new BackendError('timeout', 'no final reply'), false))).toEqual({ code: 451, enhanced: '4.4.2', reason: 'backend_timeout' });
    expect(refusalOf(tx.refusalFor(new BackendError('closed', 'dropped'), false))).toEqual({ code: 451, enhanced: '4.4.2', reason: 'backend_failed' });
    // The client session ended while a command still waited (on the limits store, say): that
    // is smtpgate's own doing, counted as the client's leaving, not as a backend failure.
    await backend.close();
    expect(refusalOf(await tx.rcpt(address('bob@example.net')))).toEqual({ code: 421, enhanced: '4.4.2', reason: 'client_aborted' });
  });

  test('a backend dying mid-message is reported to the sink’s failure callback and is a 451, never a 250', async () => {
    const { raw, backend } = await withRaw({ dropAfterDataBytes: 10 });
    const tx = await transaction(backend);
    expect(await tx.rcpt(address('bob@example.net'))).toBeUndefined();
    expect(await tx.data(() => false)).toBeUndefined();
    const failed = new Promise<unknown>((resolve) => {
      const sink = tx.message(resolve);
      sink.write(Buffer.from(`Subject: x\r\n\r\n${'a'.repeat(500)}\r\n`));
    });
    const err = await failed;
    tx.abort();
    expect(refusalOf(tx.refusalFor(err, false))?.code).toBe(451);
    expect(raw.messages).toHaveLength(0);
  });
});
