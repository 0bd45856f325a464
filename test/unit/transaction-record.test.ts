/**
 * The pieces of the mail log's transaction record: the backend's queue id read from its reply
 * to the final dot (as each kind of legacy server words it), the Message-ID read from a message
 * as it streams, and how a record says a transaction ended.
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { queueIdOf } from '../../src/relay/backend-replies.js';
import { MessageIdReader } from '../../src/session/message-id.js';
import { recordMembers, TransactionRecord, type TransactionClient } from '../../src/session/transaction-record.js';
import { AUTH_REQUIRED, backendRefusal } from '../../src/refusals.js';
import type { Refusal } from '../../src/reply.js';

describe('queueIdOf: the backend\'s queue id from its final reply text', () => {
  test.each([
    ['Postfix', '2.0.0 Ok: queued as 4dQ2x71zKz3Yxm', '4dQ2x71zKz3Yxm'],
    ['Postfix, old style id', '2.0.0 Ok: queued as 3B1A5C2D4E', '3B1A5C2D4E'],
    ['Exim', 'OK id=1qZ3ab-0001xy-AB', '1qZ3ab-0001xy-AB'],
    ['Sendmail', '2.0.0 4B7AbCdE012345 Message accepted for delivery', '4B7AbCdE012345'],
    ['Exchange', '2.6.0 <abc@host> [InternalId=1234567, Hostname=EX1.corp.example] Queued mail for delivery', '1234567'],
    ['qmail', 'ok 1701940000 qp 12345', '12345'],
    ['nothing', '2.0.0 Ok', undefined],
    ['an id with characters that would not belong in a log', 'Ok: queued as ab\u001b[31mcd', 'ab'],
  ])('%s', (_what, text, id) => {
    expect(queueIdOf(text)).toBe(id);
  });
});

describe('MessageIdReader', () => {
  const read = (chunks: string[]) => {
    const r = new MessageIdReader();
    for (const c of chunks) r.write(Buffer.from(c, 'latin1'));
    return r.value();
  };

  test('finds the header in any case, in a header block split across chunks, and unfolds it', () => {
    expect(read(['Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody'])).toBe('<a@b>');
    expect(read(['Subject: x\r\nmessage-id:', ' <a@b>\r\n', '\r\nbody'])).toBe('<a@b>');
    expect(read(['Message-Id:\r\n <folded@b>\r\n\r\n'])).toBe('<folded@b>');
  });

  test('a Message-ID in the body, or in an attached message, is not the message\'s', () => {
    expect(read(['Subject: x\r\n\r\nMessage-ID: <in-body@b>\r\n'])).toBeUndefined();
    // The header block's end split across chunks, another blank line further on.
    expect(read(['Subject: x\r\n\r', '\nMessage-ID: <in-body@b>\r\n\r\nmore'])).toBeUndefined();
    expect(read(['Message-ID: <a@b>\r\n\r', '\nbody\r\n\r\nMessage-ID: <in-body@b>\r\n'])).toBe('<a@b>');
    expect(read(['\r\nMessage-ID: <no-headers@b>\r\n'])).toBeUndefined();
  });

  test('is bounded: a header block over 64 KiB is not read past, and the value is printable and cut', () => {
    expect(read(['X-Big: ' + 'a'.repeat(70 * 1024) + '\r\nMessage-ID: <late@b>\r\n\r\n'])).toBeUndefined();
    expect(read([`Message-ID: <${'x'.repeat(300)}\u00ff@b>\r\n\r\n`])).toHaveLength(256);
    expect(read(['Message-ID: <a\u0007b@c>\r\n\r\n'])).toBe('<a?b@c>');
  });
});

describe('MessageIdReader, however the message is cut into chunks', () => {
  /** The reader's definition, on the whole message at once: the first Message-ID of the header block (its first 64 KiB). */
  function reference(message: string): string | undefined {
    if (message.startsWith('\r\n')) return undefined;
    const end = message.indexOf('\r\n\r\n');
    const head = (end >= 0 ? message.slice(0, end + 2) : message).slice(0, 64 * 1024);
    const m = /(?:^|\r\n)message-id[ \t]*:[ \t]*((?:[^\r]|\r\n[ \t])*)/i.exec(head);
    const id = m?.[1]!.replace(/\r\n[ \t]/g, ' ').replace(/[^\x20-\x7e]/g, '?').trim().slice(0, 256);
    return id || undefined;
  }
  const piece = fc.oneof(
    fc.constantFrom('Message-ID: <a@b>', 'message-id:<x.y@z>', 'MESSAGE-ID :  <sp@ce>  ', 'Message-Id:\r\n <folded@b>', 'Message-ID: <\u00ff\u0007@b>', 'Subject: hi', 'X: \r', '\n', ' cont'),
    fc.string({ unit: fc.constantFrom('a', ' ', ':', '\t', '<', '@', '\u00e9'), maxLength: 12 }),
  );
  const message = fc
    .tuple(fc.array(piece, { maxLength: 6 }), fc.boolean(), fc.constantFrom('', 'body\r\nMessage-ID: <in-body@b>\r\n', '\r\n'))
    .map(([lines, leadingBlank, body]) => `${leadingBlank ? '\r\n' : ''}${lines.join('\r\n')}\r\n\r\n${body}`);

  test('finds what the definition finds on the whole message', () => {
    fc.assert(
      fc.property(message, fc.array(fc.nat(), { maxLength: 5 }), (text, cuts) => {
        const bytes = Buffer.from(text, 'latin1');
        const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        const r = new MessageIdReader();
        let from = 0;
        for (const to of [...at, bytes.length]) {
          r.write(bytes.subarray(from, to));
          from = to;
        }
        expect(r.value()).toBe(reference(text));
      }),
      { numRuns: 3000 },
    );
  });
});

describe('TransactionRecord.finish', () => {
  const client = { port: 5000, helo: 'laptop', tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' }, auth: { method: 'password' as const, user: 'alice' }, trusted: false };

  test('relayed: the recipients, the message and the backend\'s reply and queue id', () => {
    const r = new TransactionRecord('alice@corp.example', client, 1000);
    r.recipientAccepted('bob@corp.example', { code: 250, enhanced: '2.1.5' });
    r.recipientRefused('gone@corp.example', backendRefusal({ code: 550, enhanced: '5.1.1', text: 'User unknown', lines: [] } as never), undefined);
    r.message(1234, '<m@x>', '10.0.0.5:25');
    expect(r.finish({ relayed: { reply: '250 2.0.0 Ok: queued as Q1', queueId: 'Q1' } }, 1085)).toEqual({
      port: 5000,
      helo: 'laptop',
      tls: client.tls,
      auth: client.auth,
      from: 'alice@corp.example',
      rcpt: [
        { to: 'bob@corp.example', code: 250, enhanced: '2.1.5', by: 'backend' },
        { to: 'gone@corp.example', code: 550, enhanced: '5.1.1', by: 'backend', reason: 'backend_refused' },
      ],
      size: 1234,
      messageId: '<m@x>',
      backend: '10.0.0.5:25',
      queueId: 'Q1',
      reply: '250 2.0.0 Ok: queued as Q1',
      durationMs: 85,
      outcome: 'relayed',
    });
  });

  test('refused at a stage, with the refusal and the rule', () => {
    const r = new TransactionRecord('x@y', { ...client, auth: undefined, tls: undefined }, 0);
    expect(r.finish({ refused: AUTH_REQUIRED, stage: 'mail' }, 2)).toMatchObject({ outcome: 'refused', stage: 'mail', code: 530, enhanced: '5.7.0', reason: 'auth_required', reply: '530 5.7.0 Authentication required' });
  });

  test('abandoned: aborted where it was, or refused at rcpt when every recipient was refused', () => {
    const none = new TransactionRecord('x@y', client, 0);
    expect(none.finish({ abandoned: true }, 1)).toMatchObject({ outcome: 'aborted', stage: 'mail', rcpt: [] });
    const some = new TransactionRecord('x@y', client, 0);
    some.recipientAccepted('a@b', { code: 250 });
    expect(some.finish({ abandoned: true }, 1)).toMatchObject({ outcome: 'aborted', stage: 'rcpt' });
    const refused = new TransactionRecord('x@y', client, 0);
    refused.recipientRefused('a@b', { code: 550, enhanced: '5.7.1', text: 'no', reason: 'policy' }, 'r1');
    expect(refused.finish({ abandoned: true }, 1)).toMatchObject({ outcome: 'refused', stage: 'rcpt', code: 550, enhanced: '5.7.1', reason: 'policy', rule: 'r1' });
  });

  test('a backend that fails is backend_failure; a client that leaves mid-DATA is aborted', () => {
    const r = new TransactionRecord('x@y', client, 0);
    expect(r.finish({ refused: { code: 451, enhanced: '4.4.1', text: 'backend unreachable', reason: 'backend_unavailable' }, stage: 'data' }, 1)).toMatchObject({ outcome: 'backend_failure', stage: 'data' });
    const a = new TransactionRecord('x@y', client, 0);
    expect(a.finish({ refused: { code: 421, enhanced: '4.4.2', text: 'gone', reason: 'client_aborted' }, stage: 'data' }, 1)).toMatchObject({ outcome: 'aborted', stage: 'data' });
  });
});

/** Strings as a record may hold them, the ones JSON escapes and lone surrogates among them. */
const text = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 30 }),
  fc.string({ unit: fc.constantFrom('a', '"', '\\', '\n', '\r', '\u0000', '\u001f', '\u007f', '\u2028', 'é', '😀', '\ud800', '\udfff'), maxLength: 20 }),
);
const maybe = <T>(arb: fc.Arbitrary<T>) => fc.option(arb, { nil: undefined });
const refusal = fc.record({
  code: fc.integer({ min: 400, max: 599 }),
  enhanced: text,
  text,
  // Any text too: the record writes whatever reason it is given.
  reason: fc.oneof(text, fc.constantFrom('client_aborted', 'backend_unavailable', 'backend_timeout', 'backend_failed', 'backend_refused', 'policy')) as fc.Arbitrary<Refusal['reason']>,
});
const client: fc.Arbitrary<TransactionClient> = fc.record({
  port: fc.integer({ min: 0, max: 65535 }),
  helo: maybe(text),
  tls: maybe(fc.oneof(fc.record({ version: text, cipher: text }), fc.record({ version: text, cipher: text, sni: text }))),
  auth: maybe(
    fc.oneof(
      fc.record({ method: fc.constantFrom('password', 'app-password', 'backend', 'external') as fc.Arbitrary<'password'>, user: text }),
      fc.record({ method: fc.constantFrom('password', 'app-password') as fc.Arbitrary<'password'>, user: text, credential: text }),
    ),
  ),
  trusted: fc.boolean(),
});
const recipient = fc.oneof(
  fc.record({ accepted: fc.constant(true), to: text, code: fc.integer({ min: 200, max: 599 }), enhanced: maybe(text) }),
  fc.record({ accepted: fc.constant(false), to: text, refusal, rule: maybe(text) }),
);
const ending = fc.oneof(
  fc.record({ relayed: fc.record({ reply: text, queueId: maybe(text) }) }),
  fc.record({ refused: refusal, stage: fc.constantFrom('connect', 'helo', 'auth', 'mail', 'rcpt', 'data') as fc.Arbitrary<'mail'>, rule: maybe(text) }),
  fc.constant({ abandoned: true as const }),
);
const transaction = fc.record({
  client,
  from: text,
  rcpt: fc.array(recipient, { maxLength: 4 }),
  message: maybe(fc.record({ size: fc.nat(), messageId: maybe(text), backend: text })),
  dkim: maybe(fc.record({ domain: text, selectors: fc.array(text, { minLength: 1, maxLength: 3 }) })),
  ending,
  startedAt: fc.nat(),
  took: fc.nat({ max: 3_600_000 }),
});

describe('recordMembers: the record\'s line as JSON.stringify writes it', () => {
  test('for every ending, any client, any recipients and any text in them', () => {
    fc.assert(
      fc.property(transaction, (t) => {
        const r = new TransactionRecord(t.from, t.client, t.startedAt);
        for (const x of t.rcpt) {
          if (x.accepted) r.recipientAccepted(x.to, { code: x.code, enhanced: x.enhanced });
          else r.recipientRefused(x.to, x.refusal, x.rule);
        }
        if (t.message) r.message(t.message.size, t.message.messageId, t.message.backend);
        if (t.dkim) r.signed(t.dkim.domain, t.dkim.selectors);
        const line = r.finish(t.ending as Parameters<TransactionRecord['finish']>[0], t.startedAt + t.took);
        expect(`{${recordMembers(line)}}`).toBe(JSON.stringify(line));
      }),
      { numRuns: 2000 },
    );
  });

  test('W1\'s record: the fields in the order README "Mail log" shows them', () => {
    const r = new TransactionRecord('sender@corp.test', { port: 55606, helo: 'vm', tls: undefined, auth: undefined, trusted: true }, 1000);
    r.recipientAccepted('rcpt@corp.test', { code: 250, enhanced: '2.1.5' });
    r.message(4226, '<3e54.0001.0708@vm>', '127.0.0.1:57605');
    const json = `{${recordMembers(r.finish({ relayed: { reply: '250 2.0.0 Ok: queued as Q1', queueId: 'Q1' } }, 1170))}}`;
    expect(Object.keys(JSON.parse(json))).toEqual(['port', 'helo', 'trusted', 'from', 'rcpt', 'size', 'messageId', 'backend', 'queueId', 'reply', 'durationMs', 'outcome']);
    expect(json).toBe(JSON.stringify(JSON.parse(json)));
  });
});
