/**
 * The identity smtpgate forwards, checked against a real Postfix smtpd for the whole class of
 * values a client controls: its EHLO name and its login (and, through the PROXY protocol or the
 * socket, the address form). Postfix's command tokenizer treats '"', '<' and '\' as quoting, so
 * an unencoded one swallows the rest of the XCLIENT line: ADDR and LOGIN are then never read,
 * and the backend judges smtpgate's own address with no login. What Postfix logs is what its
 * operators and its restrictions see, so that is what is checked:
 *
 * - the "client=" line names the client's address and login, or no login at all when the
 *   login can't be represented (never another one, never a mangled one);
 * - the HELO Postfix records (cleanup's "helo=<...>" in a header_checks WARN line) is what it
 *   records when a client says that EHLO to it directly: the test does both and compares.
 */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { BackendPool } from '../../../src/relay/backend-pool.js';
import { BackendSession, type ClientIdentity } from '../../../src/relay/backend-session.js';
import { prngFor } from '../../helpers/flaky-backend.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';
import { startPostfix, type Postfix } from '../../helpers/postfix.js';
import { describeWith } from '../../helpers/programs.js';

const SEED = Number(process.env.SMTPGATE_SEED ?? 1414);

/** Characters that matter to Postfix's tokenizer, to xtext, to its censoring, or to its length limit. */
const HOSTILE = ['"', '<', '>', '\\', '+', '=', '[', ']', ':', '(', ')', ';', '@', ',', '%', '\t', '\x7f', '\x01', 'ü', '日', '😀', ' '];
const PLAIN = 'abcdefghijklmnopqrstuvwxyz0123456789.-_';

function generated(seed: number, index: number, maxLength: number): string {
  const rnd = prngFor(seed, index);
  const length = 1 + Math.floor(rnd() * maxLength);
  // A first letter: an EHLO with nothing but spaces is no EHLO at all.
  let s = 'h';
  for (let i = 1; i < length; i++) {
    const pool = rnd() < 0.4 ? HOSTILE : [...PLAIN];
    s += pool[Math.floor(rnd() * pool.length)];
  }
  return s;
}

const HELOS = [
  'client.test',
  'a"b.test',
  '"',
  'x<y.test',
  '<',
  'a\\b.test',
  '\\',
  'a>b.test',
  'a+b=c.test',
  '[127.0.0.1]',
  '[IPv6:2001:db8::1]',
  'a(b)c;d@e,f%g',
  'jürgen.test',
  '日本.test',
  '😀',
  'tab\there',
  'del\x7f',
  'space here',
  'x'.repeat(255),
  'x'.repeat(256),
  '+'.repeat(90),
  'ü'.repeat(60),
  ...Array.from({ length: 24 }, (_, i) => generated(SEED, i, 120)),
];

const LOGINS = [
  'alice',
  'a"b',
  'a<b',
  'a\\b',
  'a b',
  'a+b=c',
  'jürgen',
  'alice@corp.test',
  '"',
  'tab\there',
  'x'.repeat(255),
  'x'.repeat(256),
  '+'.repeat(90),
  ...Array.from({ length: 24 }, (_, i) => generated(SEED + 1, i, 80)),
];

/** Octets of `value` once xtext-encoded, with the tokenizer's quoting characters encoded too. */
function encodedLength(value: string): number {
  let n = 0;
  for (const byte of Buffer.from(value, 'utf8')) n += byte >= 0x21 && byte <= 0x7e && !'+="<>\\'.includes(String.fromCharCode(byte)) ? 1 : 3;
  return n;
}

/** A login survives when Postfix can hold it unchanged: printable, and within 255 octets once encoded. */
function loginArrives(login: string): boolean {
  return !/[\x00-\x1f\x7f]/.test(login) && encodedLength(login) <= 255;
}

/** Long pairs: the attributes no longer fit on one XCLIENT line and are split over two. */
const LONG_PAIRS: ReadonlyArray<readonly [string, string]> = [
  ['h'.repeat(200) + '.test', 'l'.repeat(250)],
  ['h'.repeat(250), 'l'.repeat(200)],
  ['ü'.repeat(40), '"'.repeat(80)],
];

const TIMEOUTS = { connectMs: 5_000, greetingMs: 5_000, commandMs: 5_000, dataIdleMs: 5_000, finalReplyMs: 10_000 };

describeWith(['postfix'], 'identity sent to a real Postfix smtpd', () => {
  let postfix: Postfix;
  let pool: BackendPool;
  /** A second Postfix that takes XFORWARD (smtpd_authorized_xforward_hosts) from smtpgate. */
  let xforwardPostfix: Postfix;
  let xforwardPool: BackendPool;
  const poolFor = (p: Postfix) => new BackendPool([{ name: 'postfix', options: { host: '127.0.0.1', port: p.port, tls: 'none', heloName: 'gate.test', timeouts: TIMEOUTS } }], 'failover', 30_000);
  beforeAll(async () => {
    // cleanup logs every Received: header with the HELO the session recorded ("helo=<...>").
    const headerChecks = { mainCf: 'header_checks = regexp:$CONFIG/header_checks', files: { header_checks: '/^Received:/ WARN\n' } };
    [postfix, xforwardPostfix] = await Promise.all([
      startPostfix(headerChecks),
      startPostfix({ ...headerChecks, mainCf: `${headerChecks.mainCf}\nsmtpd_authorized_xforward_hosts = 127.0.0.0/8` }),
    ]);
    pool = poolFor(postfix);
    xforwardPool = poolFor(xforwardPostfix);
  });
  afterAll(async () => {
    await Promise.all([postfix?.stop(), xforwardPostfix?.stop()]);
  });

  /** One message through a backend session; returns what Postfix logged for it, or what went wrong. */
  async function relay(identity: ClientIdentity, mode: 'xclient' | 'xforward' = 'xclient'): Promise<{ client: string; helo: string } | { error: string }> {
    const session = new BackendSession(mode === 'xclient' ? pool : xforwardPool, { identity: mode }, { onConnected: () => undefined, onError: () => undefined });
    try {
      const mail = await session.mail('MAIL FROM:<alice@corp.test>', identity);
      if (mail.code !== 250) return { error: `MAIL: ${mail.code} ${mail.text}` };
      const rcpt = await session.rcpt('RCPT TO:<bob@corp.test>');
      if (rcpt.code !== 250) return { error: `RCPT: ${rcpt.code} ${rcpt.text}` };
      const data = await session.startData();
      if (data.code !== 354) return { error: `DATA: ${data.code} ${data.text}` };
      const writer = session.beginData(() => undefined);
      writer.write(Buffer.from('Subject: identity\r\n\r\nhello\r\n'));
      const final = await session.finishData(writer);
      const id = /queued as ([0-9A-Za-z]+)/.exec(final.text)?.[1];
      if (!id) return { error: `final reply: ${final.code} ${final.text}` };
      const server = mode === 'xclient' ? postfix : xforwardPostfix;
      const client = await server.logLine(new RegExp(`: ${id}: client=`), `the client= line of ${id}`);
      const received = await server.logLine(new RegExp(`: ${id}: warning: header Received:`), `the Received: header of ${id}`);
      return { client: client.slice(client.indexOf('client=')), helo: /helo=<(.*)>$/.exec(received)?.[1] ?? '(none)' };
    } catch (err) {
      return { error: String(err) };
    } finally {
      await session.close();
    }
  }

  /** The HELO Postfix records for a client that says `EHLO helo` to it directly. */
  async function heloSaidDirectly(helo: string): Promise<string> {
    const c = await SmtpTalk.connect(postfix.port);
    try {
      await c.read();
      for (const line of [`EHLO ${helo}`, 'MAIL FROM:<alice@corp.test>', 'RCPT TO:<bob@corp.test>', 'DATA']) {
        const reply = await c.cmd(line);
        if (reply.code >= 400) return `(${line.split(' ')[0]} refused: ${reply.raw})`;
      }
      const final = await c.cmd('Subject: direct\r\n\r\nhello\r\n.');
      const id = /queued as ([0-9A-Za-z]+)/.exec(final.raw)?.[1];
      if (!id) return `(final reply: ${final.raw})`;
      const received = await postfix.logLine(new RegExp(`: ${id}: warning: header Received:`), `the Received: header of ${id}`);
      return /helo=<(.*)>$/.exec(received)?.[1] ?? '(none)';
    } finally {
      c.close();
    }
  }

  test('Postfix always sees the real client address and login, and records the HELO exactly as from a client that says it directly, for every hostile EHLO name and login', async () => {
    const wrong: unknown[] = [];
    const count = Math.max(HELOS.length, LOGINS.length);
    const cases = [...Array.from({ length: count }, (_, i) => [HELOS[i % HELOS.length]!, LOGINS[i % LOGINS.length]!] as const), ...LONG_PAIRS];
    for (const [i, [helo, login]] of cases.entries()) {
      const got = await relay({ addr: '127.0.0.2', port: 40000 + i, proto: 'ESMTP', helo, login });
      const client = `client=unknown[127.0.0.2]${loginArrives(login) ? `, sasl_method=XCLIENT, sasl_username=${login}` : ''}`;
      const direct = await heloSaidDirectly(helo);
      if ('error' in got || got.client !== client || got.helo !== direct) wrong.push({ helo, login, expected: { client, helo: direct }, got });
    }
    expect(wrong).toEqual([]);
  }, 120_000);

  test('XFORWARD: Postfix always records the real client address (orig_client), and the HELO as from a client that says it directly, for every hostile EHLO name', async () => {
    const wrong: unknown[] = [];
    // smtp-server hands smtpgate the EHLO name up to the first white space: a client's never has any.
    for (const [i, helo] of HELOS.filter((h) => !/\s/.test(h)).entries()) {
      const got = await relay({ addr: '127.0.0.2', port: 40000 + i, proto: 'ESMTP', helo }, 'xforward');
      const client = 'client=localhost[127.0.0.1], orig_client=unknown[127.0.0.2]';
      // Over 255 octets encoded, the HELO goes as [UNAVAILABLE] (Postfix refuses the whole command otherwise).
      const direct = encodedLength(helo) <= 255 ? await heloSaidDirectly(helo) : undefined;
      if ('error' in got || got.client !== client || (direct !== undefined && got.helo !== direct)) wrong.push({ helo, expected: { client, helo: direct }, got });
    }
    expect(wrong).toEqual([]);
  }, 120_000);

  test('an IPv4 client seen through an IPv6 socket (::ffff:a.b.c.d) reaches Postfix as its IPv4 address', async () => {
    const got = await relay({ addr: '::ffff:127.0.0.3', port: 40000, proto: 'ESMTP', helo: 'client.test', login: 'alice' });
    expect(got).toEqual({ client: 'client=unknown[127.0.0.3], sasl_method=XCLIENT, sasl_username=alice', helo: 'client.test' });
  });
});
