/**
 * The pieces of the mail log's transaction record: the backend's queue id read from its reply
 * to the final dot (as each kind of legacy server words it), the Message-ID read from a message
 * as it streams, and how a record says a transaction ended.
 */
import { describe, expect, test } from 'vitest';
import { queueIdOf } from '../../src/relay/backend-replies.js';
import { MessageIdReader } from '../../src/session/message-id.js';
import { TransactionRecord } from '../../src/session/transaction-record.js';
import { AUTH_REQUIRED, backendRefusal } from '../../src/refusals.js';

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
