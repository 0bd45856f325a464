/**
 * Command-stream rules smtpgate enforces before smtp-server dispatches a command.
 */
import { describe, expect, test } from 'vitest';
import { MAX_MAIL_OCTETS, checkCommand, hasBareLf } from '../../../src/listener/command-guard.js';
import { gateTest } from '../../helpers/fixtures.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

describe('checkCommand (pure)', () => {
  test('AUTH without TLS is refused with 538 5.7.11, whatever the mechanism or case', () => {
    for (const line of ['AUTH PLAIN AGEAYg==', 'auth login', '  Auth CRAM-MD5']) {
      expect(checkCommand(line, { secure: false, continuation: false })).toMatchObject({ code: 538, enhanced: '5.7.11', reason: 'tls_required' });
    }
    expect(checkCommand('AUTH PLAIN AGEAYg==', { secure: true, continuation: false })).toBeUndefined();
  });
  test('an AUTH LOGIN continuation line is not a command, but must be strict base64 or "*"', () => {
    expect(checkCommand('QVVUSA==', { secure: false, continuation: true })).toBeUndefined();
    expect(checkCommand('*', { secure: true, continuation: true })).toBeUndefined();
    expect(checkCommand('ali', { secure: true, continuation: true })).toMatchObject({ code: 501, enhanced: '5.5.2' });
    expect(checkCommand('YWxp!Y2U=', { secure: true, continuation: true })).toMatchObject({ code: 501, enhanced: '5.5.2' });
  });
  test('an AUTH initial response must be strict base64 (Node would skip the junk)', () => {
    expect(checkCommand('AUTH PLAIN AGFsaWNlAHNlY3JldA==', { secure: true, continuation: false })).toBeUndefined();
    expect(checkCommand('AUTH PLAIN =', { secure: true, continuation: false })).toBeUndefined();
    expect(checkCommand('AUTH PLAIN AGFsaWNl.AHNlY3JldA==', { secure: true, continuation: false })).toMatchObject({ code: 501 });
    expect(checkCommand('AUTH PLAIN AGFsaWNlAHNlY3JldA', { secure: true, continuation: false })).toMatchObject({ code: 501 });
    expect(checkCommand('AUTH LOGIN', { secure: true, continuation: false })).toBeUndefined();
  });
  test('BDAT gets 502 5.5.1', () => {
    expect(checkCommand('BDAT 100 LAST', { secure: true, continuation: false })).toMatchObject({ code: 502, enhanced: '5.5.1' });
  });
});

describe('MAIL and RCPT parameters (pure; RFC 5321 §4.1.1.11)', () => {
  const check = (line: string) => checkCommand(line, { secure: true, continuation: false });

  test('every parameter outside SIZE, BODY, SMTPUTF8 and AUTH on MAIL gets 555 5.5.4 naming it; RCPT accepts none', () => {
    for (const [line, named] of [
      ['MAIL FROM:<a@b.test> RET=FULL', 'RET'],
      ['mail from: <a@b.test> SIZE=10 envid=x', 'ENVID'],
      ['MAIL FROM:<> REQUIRETLS', 'REQUIRETLS'],
      ['MAIL FROM:<a@b.test> BODY=8BITMIME MT-PRIORITY=3', 'MT-PRIORITY'],
      ['RCPT TO:<a@b.test> NOTIFY=NEVER', 'NOTIFY'],
      ['rcpt to:<a@b.test> orcpt=rfc822;a@b.test', 'ORCPT'],
      ['RCPT TO:<a@b.test> SIZE=10', 'SIZE'],
    ]) {
      expect(check(line!), line).toMatchObject({ code: 555, enhanced: '5.5.4', reason: 'param_unsupported', text: expect.stringContaining(` ${named} `) });
    }
  });

  test('the advertised ones pass, in any case; a keyword that is not one is refused without echoing it', () => {
    for (const line of ['MAIL FROM:<a@b.test>', 'MAIL FROM:<a@b.test> SIZE=1 body=8bitmime SMTPUTF8 AUTH=<>', 'MAIL FROM: <> auth=a+2Bb@c.test', 'RCPT TO:<a@b.test>', 'RCPT TO:<postmaster>']) {
      expect(check(line), line).toBeUndefined();
    }
    const odd = check('MAIL FROM:<a@b.test> <script>=1');
    expect(odd).toMatchObject({ code: 555, enhanced: '5.5.4' });
    expect(odd!.text).not.toContain('script');
  });

  test('a MAIL line may be as long as its advertised parameters allow (1064 octets with CRLF); other lines keep 512', () => {
    const mail = (len: number) => 'MAIL FROM:<a@b.test> AUTH=' + 'x'.repeat(len - 'MAIL FROM:<a@b.test> AUTH='.length);
    expect(MAX_MAIL_OCTETS + 2).toBe(512 + 26 + 16 + 10 + 500);
    expect(check(mail(MAX_MAIL_OCTETS))).toBeUndefined();
    expect(check(mail(MAX_MAIL_OCTETS + 1))).toMatchObject({ code: 500, enhanced: '5.5.2' });
    expect(check('RCPT TO:<a@b.test> ' + 'x'.repeat(600))).toMatchObject({ code: 500, enhanced: '5.5.2' });
  });
});

describe('hasBareLf (pure)', () => {
  test('finds an LF without CR, including one split from its CR across reads', () => {
    expect(hasBareLf(Buffer.from('EHLO x\r\n'), -1)).toBe(false);
    expect(hasBareLf(Buffer.from('EHLO x\n'), -1)).toBe(true);
    expect(hasBareLf(Buffer.from('\nNOOP\r\n'), 0x0d)).toBe(false);
    expect(hasBareLf(Buffer.from('\nNOOP\r\n'), 0x78)).toBe(true);
    expect(hasBareLf(Buffer.from('a\r\nb\r\nc\n'), -1)).toBe(true);
  });
});

describe('over a real connection', () => {
  gateTest('a command line ending in a bare LF gets 521 5.5.2 and the connection is closed', async ({ gate }) => {
    const c = await SmtpTalk.connect(gate.port('plain'));
    await c.read();
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    c.write('NOOP\n');
    expect((await c.read()).raw).toMatch(/^521 5\.5\.2 Bare LF received/);
    await c.closed;
  });

  gateTest('a CRLF split across two TCP segments is not a bare LF', async ({ gate }) => {
    const c = await SmtpTalk.connect(gate.port('plain'));
    await c.read();
    c.write('EHLO client.test\r');
    // Not a readiness wait: a pause so the two halves arrive as separate reads.
    await new Promise((r) => setTimeout(r, 50));
    c.write('\n');
    expect((await c.read()).code).toBe(250);
    expect((await c.cmd('NOOP')).code).toBe(250);
    c.close();
  });

  gateTest('BDAT gets 502 5.5.1 and the session goes on', async ({ gate }) => {
    const c = await SmtpTalk.connect(gate.port('plain'));
    await c.read();
    await c.cmd('EHLO client.test');
    expect((await c.cmd('BDAT 10 LAST')).raw).toMatch(/^502 5\.5\.1 /);
    expect((await c.cmd('NOOP')).code).toBe(250);
    c.close();
  });
});
