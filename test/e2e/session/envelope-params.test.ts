/**
 * MAIL and RCPT parameters and path lengths, through the real gate to a real backend (Postfix's
 * smtp-sink, which records the MAIL and RCPT arguments exactly as they reached it).
 *
 * - RFC 5321 §4.1.1.11: a parameter the server does not recognise or implement gets 555; RFC
 *   8689 §4.2 forbids accepting REQUIRETLS and then dropping it. smtpgate advertises SIZE,
 *   8BITMIME, SMTPUTF8 and AUTH; everything else (DSN's RET/ENVID/NOTIFY/ORCPT, REQUIRETLS,
 *   unknown ones) is neither advertised nor accepted.
 * - RFC 5321 §4.5.3.1: every server MUST accept a 64-octet local part and a path of 256 octets
 *   including "<" and ">", and command lines lengthened by the parameters it advertises.
 */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { metricValue, startGate, type Gate } from '../../helpers/gate.js';
import { listener, openListener } from '../../helpers/config.js';
import { describeWith } from '../../helpers/programs.js';
import { startSmtpSink, type SmtpSink } from '../../helpers/smtp-sink.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';
import { domainOfLength } from '../../helpers/addresses.js';
import { startRawBackend } from '../../helpers/raw-backend.js';

/** The mailbox lengths RFC 5321 §4.5.3.1 makes every server accept, and one past the path limit. */
const MAX_LOCAL = `${'l'.repeat(64)}@${domainOfLength(254 - 65)}`;
const MAX_DOMAIN = `x@${domainOfLength(252)}`;
const TOO_LONG = `${'l'.repeat(64)}@${domainOfLength(255 - 65)}`;

describeWith(['smtp-sink'], 'envelope parameters and path lengths (issue 14, item 4)', () => {
  let sink: SmtpSink;
  let gate: Gate;
  beforeAll(async () => {
    sink = await startSmtpSink();
    gate = await startGate({
      backend: { address: `127.0.0.1:${sink.port}`, identity: 'none' },
      listeners: [openListener(), listener('smtps', { tls: 'implicit', requireAuth: false, trusted: { networks: ['127.0.0.0/8'] } })],
    });
  });
  afterAll(async () => {
    await gate?.stop();
    await sink?.stop();
  });

  async function open(listener = 'open'): Promise<SmtpTalk> {
    const c = await SmtpTalk.connect(gate.port(listener), listener === 'smtps' ? { implicitTls: true, tls: { rejectUnauthorized: false } } : {});
    expect((await c.read()).code).toBe(220);
    return c;
  }

  /** One transaction: every reply, the final dot's included when MAIL and RCPT passed. */
  async function transaction(c: SmtpTalk, mail: string, rcpt: string): Promise<{ mail: string; rcpt?: string; dot?: string }> {
    const m = await c.cmd(mail);
    if (m.code !== 250) return { mail: m.raw };
    const r = await c.cmd(rcpt);
    if (r.code !== 250) {
      await c.cmd('RSET');
      return { mail: m.raw, rcpt: r.raw };
    }
    expect((await c.cmd('DATA')).code).toBe(354);
    return { mail: m.raw, rcpt: r.raw, dot: (await c.cmd('Subject: lengths\r\n\r\nhello\r\n.')).raw };
  }

  test('EHLO advertises neither DSN nor REQUIRETLS, in cleartext or under TLS', async () => {
    for (const listener of ['open', 'smtps']) {
      const c = await open(listener);
      const ehlo = await c.cmd('EHLO client.test');
      expect(ehlo.code).toBe(250);
      const keywords = ehlo.lines.slice(1).map((l) => l.split(' ')[0]);
      expect(keywords, listener).toEqual(expect.arrayContaining(['PIPELINING', '8BITMIME', 'SMTPUTF8', 'SIZE']));
      expect(keywords, listener).not.toContain('DSN');
      expect(keywords, listener).not.toContain('REQUIRETLS');
      await c.cmd('QUIT');
    }
  });

  const MAIL_PARAMS = ['RET=FULL', 'ret=hdrs', 'ENVID=abc123', 'REQUIRETLS', 'MT-PRIORITY=3', 'HOLDFOR=60', 'FOO', 'X-UNKNOWN=1'];
  const RCPT_PARAMS = ['NOTIFY=SUCCESS,FAILURE', 'notify=never', 'ORCPT=rfc822;bob@corp.test', 'FOO=bar'];

  test.each(['open', 'smtps'])('on %s, every MAIL and RCPT parameter smtpgate does not advertise gets 555 5.5.4, is counted and logged, and nothing is relayed', async (listener) => {
    const before = (await sink.transactions()).length;
    // (smtp-sink opens its capture file at MAIL; transactions() counts those that got a message.)
    const counted = await metricValue(gate, 'smtpgate_refusals_total', { reason: 'param_unsupported', stage: 'mail' });
    const c = await open(listener);
    await c.cmd('EHLO client.test');
    for (const p of MAIL_PARAMS) {
      expect((await c.cmd(`MAIL FROM:<app@corp.test> ${p}`)).raw, p).toMatch(/^555 5\.5\.4 /);
    }
    expect(await metricValue(gate, 'smtpgate_refusals_total', { reason: 'param_unsupported', stage: 'mail' })).toBe(counted + MAIL_PARAMS.length);
    const line = gate.logs.findLast((l) => l.reason === 'param_unsupported' && l.stage === 'mail');
    expect(line).toMatchObject({ code: 555, enhanced: '5.5.4', session: expect.any(String) });
    expect((await c.cmd('MAIL FROM:<app@corp.test>')).code).toBe(250);
    for (const p of RCPT_PARAMS) {
      expect((await c.cmd(`RCPT TO:<bob@corp.test> ${p}`)).raw, p).toMatch(/^555 5\.5\.4 /);
    }
    expect(gate.logs.findLast((l) => l.reason === 'param_unsupported' && l.stage === 'rcpt')).toMatchObject({ code: 555, session: expect.any(String) });
    // No recipient was accepted, so there is no message to send.
    expect((await c.cmd('DATA')).code).toBe(503);
    await c.cmd('QUIT');
    expect(await sink.transactions()).toHaveLength(before);
  });

  test('the parameters smtpgate advertises are accepted: SIZE, BODY, and AUTH (RFC 4954 §5)', async () => {
    const c = await open();
    await c.cmd('EHLO client.test');
    const r = await transaction(c, 'MAIL FROM:<app@corp.test> SIZE=100 BODY=8BITMIME AUTH=<>', 'RCPT TO:<bob@corp.test>');
    expect(r.dot).toMatch(/^250 /);
    const last = (await sink.transactions()).at(-1)!;
    expect(last.mailArgs.split(' ')[0]).toBe('<app@corp.test>');
    expect(last.mailArgs).toContain('BODY=8BITMIME');
    await c.cmd('QUIT');
  });

  test.each([
    ['a 64-octet local part in a 256-octet path', MAX_LOCAL],
    ['the longest domain a 256-octet path leaves room for (252 octets)', MAX_DOMAIN],
    ['an IDN domain (an A-label, decoded by smtp-server and re-encoded for the backend) in a 256-octet path', `xy@xn--bcher-kva.${domainOfLength(251 - 'xn--bcher-kva.'.length)}`],
  ])('%s is accepted in MAIL and RCPT and reaches the backend intact', async (_what, address) => {
    expect(`<${address}>`).toHaveLength(256);
    const c = await open();
    await c.cmd('EHLO client.test');
    const r = await transaction(c, `MAIL FROM:<${address}>`, `RCPT TO:<${address}>`);
    expect(r).toEqual({ mail: expect.stringMatching(/^250 /), rcpt: expect.stringMatching(/^250 /), dot: expect.stringMatching(/^250 /) });
    const last = (await sink.transactions()).at(-1)!;
    expect(last.mailArgs).toBe(`<${address}>`);
    expect(last.rcptArgs).toEqual([`<${address}>`]);
    await c.cmd('QUIT');
  });

  test('the longest path with every advertised parameter (a MAIL line over 512 octets, RFC 1870/6152/4954) is accepted and relayed intact', async () => {
    const c = await open();
    await c.cmd('EHLO client.test');
    const mail = `MAIL FROM:<${MAX_LOCAL}> SIZE=99999 BODY=8BITMIME AUTH=<${MAX_DOMAIN}>`;
    expect(mail.length + 2).toBeGreaterThan(512);
    const r = await transaction(c, mail, `RCPT TO:<${MAX_DOMAIN}>`);
    expect(r.dot).toMatch(/^250 /);
    const last = (await sink.transactions()).at(-1)!;
    expect(last.mailArgs.split(' ')[0]).toBe(`<${MAX_LOCAL}>`);
    expect(last.rcptArgs).toEqual([`<${MAX_DOMAIN}>`]);
    await c.cmd('QUIT');
  });

  test('a path one octet over 256 is refused in MAIL and RCPT, and a RCPT line over 512 octets gets 500 5.5.2', async () => {
    expect(`<${TOO_LONG}>`).toHaveLength(257);
    const c = await open();
    await c.cmd('EHLO client.test');
    expect((await c.cmd(`MAIL FROM:<${TOO_LONG}>`)).raw).toMatch(/^501 5\.1\.7 /);
    expect((await c.cmd('MAIL FROM:<app@corp.test>')).code).toBe(250);
    expect((await c.cmd(`RCPT TO:<${TOO_LONG}>`)).raw).toMatch(/^501 5\.1\.3 /);
    expect((await c.cmd(`RCPT TO:<${MAX_LOCAL}> ${'x'.repeat(300)}`)).raw).toMatch(/^500 5\.5\.2 Line too long/);
    await c.cmd('QUIT');
  });
});

test('an IDN domain in its ASCII form needs no SMTPUTF8 and reaches the backend in that form', async () => {
  // A raw backend, to see the exact bytes: smtp-server would decode the domain again.
  const raw = await startRawBackend({});
  const g = await startGate({ backendPort: raw.port, listeners: [openListener()] });
  try {
    const c = await SmtpTalk.connect(g.port('open'));
    await c.read();
    await c.cmd('EHLO client.test');
    expect((await c.cmd('MAIL FROM:<app@xn--bcher-kva.example>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<bob@xn--bcher-kva.example>')).code).toBe(250);
    const wire = raw.connections[0]!.commands.join('\n');
    expect(wire).toContain('MAIL FROM:<app@xn--bcher-kva.example>');
    expect(wire).toContain('RCPT TO:<bob@xn--bcher-kva.example>');
    c.close();
  } finally {
    await g.stop();
    await raw.close();
  }
});
