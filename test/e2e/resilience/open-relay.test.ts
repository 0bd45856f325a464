/**
 * smtpgate is never an open relay (README, "Policy rules": "Even with no policy folder, relay
 * protection is on"). The listener has the shape of a port-25 MX: STARTTLS offered but not
 * required, no AUTH required, no trusted networks. An unauthenticated client tries every
 * classic trick to get a message for an outside domain accepted — percent hack, bang path,
 * source route, quoted local part, double @, address literal, case, trailing dots, spoofed
 * internal sender, XCLIENT — in cleartext and after STARTTLS. Each RCPT is refused with a 5xx,
 * or, if accepted, what the backend was asked to deliver to is an address whose final domain
 * is internal, with no sender-specified routing left in it (the same test as Postfix's
 * reject_unauth_destination). Then nmap's smtp-open-relay script gets its own 16 tries.
 */
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, test } from 'vitest';
import { startGate, type Gate } from '../../helpers/gate.js';
import { listener, type LimitsInput } from '../../helpers/config.js';
import { startRawBackend, type RawBackend } from '../../helpers/raw-backend.js';
import { describeWith } from '../../helpers/programs.js';
import { closeBackend, forThisTest, stopGate } from '../../helpers/sessions.js';
import { SmtpTalk, type Reply } from '../../helpers/smtp-talk.js';

const run = promisify(execFile);

/** A port-25 style listener: smtpgate's defaults except that TLS and AUTH are optional. */
const MX_LISTENER = listener('mx', { tls: 'starttls', requireTls: false, requireAuth: false });
const INTERNAL = 'corp.example';
// Connection-rate limits are not the subject; each attempt below uses a fresh connection.
const LIMITS: LimitsInput = { connectionRate: 'off' };

async function mxGate(withPolicies: boolean): Promise<{ gate: Gate; backend: RawBackend }> {
  const backend = await forThisTest(startRawBackend(), closeBackend);
  const gate = await forThisTest(
    startGate({
      backendPort: backend.port,
      listeners: [MX_LISTENER],
      logLevel: 'info',
      config: { limits: LIMITS, ...(withPolicies ? { policies: 'policies' } : {}) },
      beforeStart: async (dir) => {
        if (!withPolicies) return;
        await mkdir(path.join(dir, 'policies'));
        await writeFile(path.join(dir, 'policies', '00-settings.yaml'), `internalDomains: [${INTERNAL}]\n`);
      },
    }),
    stopGate,
  );
  return { gate, backend };
}

/**
 * Recipients that try to leave the organisation, and spellings of internal ones a backend might
 * read differently. Each must be refused, or delivered inside.
 */
const TRICKS = [
  '<victim@corp.example.>',
  '<victim@CORP.example.>',
  '<victim@outside.test>',
  '<VICTIM@OUTSIDE.TEST>',
  '<Victim@Outside.Test>',
  '<victim@outside.test.>',
  '<victim@outside.test..>',
  '<victim%outside.test@corp.example>',
  '<victim%outside.test@CORP.EXAMPLE>',
  '<victim%outside.test@corp.example.>',
  '<victim%outside.test%corp.example@corp.example>',
  '<@corp.example:victim@outside.test>',
  '<@corp.example,@corp.example:victim@outside.test>',
  '<@outside.test:victim@corp.example>',
  '<outside.test!victim@corp.example>',
  '<outside.test!victim>',
  '<"victim@outside.test"@corp.example>',
  '<"victim%outside.test"@corp.example>',
  '<"victim@outside.test">',
  '<victim@outside.test@corp.example>',
  '<victim@corp.example@outside.test>',
  '<victim@[203.0.113.5]>',
  '<victim%outside.test@[203.0.113.5]>',
  '<victim@[127.0.0.1]>',
  '<victim@[IPv6:2001:db8::5]>',
  '<victim@corp.example.outside.test>',
  '<victim@outside.test.corp.example>',
  '<victim@corp-example.test>',
  '<victim@corp.example%outside.test>',
  '<victim@outside.test> NOTIFY=NEVER',
  '<victim@outside.test> ORCPT=rfc822;victim@corp.example',
  ' <victim@outside.test>',
  'victim@outside.test',
  '<victim@outside.test',
  '<<victim@outside.test>>',
  '<victim@outside.test>, <victim@corp.example>',
  '<victim@corp.example> <victim@outside.test>',
];
/** Internal recipients, with the same tricks of case and dots: these may be accepted. */
const INTERNAL_RCPTS = ['<victim@corp.example>', '<victim@CORP.EXAMPLE>', '<Victim@Corp.Example>', '<postmaster>', '<postmaster@corp.example>'];

/**
 * True when `address` (as the backend got it) can only be delivered inside: its final domain is
 * internal and nothing in it routes elsewhere.
 */
function deliversInside(address: string): boolean {
  if (address.toLowerCase() === 'postmaster') return true;
  if (address.startsWith('@') || address.includes('"')) return false;
  const at = address.lastIndexOf('@');
  if (at <= 0) return false;
  const local = address.slice(0, at);
  const domain = address.slice(at + 1).toLowerCase().replace(/\.$/, '');
  return !/[%!@:,[\]]/.test(local) && domain === INTERNAL;
}

interface Attempt {
  readonly rcpt: string;
  readonly reply: Reply;
}

/** One fresh session: EHLO (and STARTTLS), a sender, one RCPT line; QUIT. */
async function attempt(gate: Gate, rcpt: string, opts: { tls: boolean; from: string; helo: string }): Promise<Attempt> {
  const c = await SmtpTalk.connect(gate.port('mx'));
  try {
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd(`EHLO ${opts.helo}`)).code).toBe(250);
    if (opts.tls) {
      expect((await c.starttls()).code).toBe(220);
      expect((await c.cmd(`EHLO ${opts.helo}`)).code).toBe(250);
    }
    const mail = await c.cmd(`MAIL FROM:${opts.from}`);
    expect(mail.code, mail.raw).toBe(250);
    const reply = await c.cmd(`RCPT TO:${rcpt}`);
    await c.cmd('QUIT').catch(() => undefined);
    return { rcpt, reply };
  } finally {
    c.close();
  }
}

/** Every RCPT line the backend has received, once the gate has closed its connections. */
async function backendRcpts(backend: RawBackend): Promise<string[]> {
  await Promise.all(backend.connections.map((k) => k.closed));
  return backend.connections.flatMap((k) => k.commands.filter((l) => /^RCPT /i.test(l)));
}

/** Runs `fn` over `items`, `width` at a time (each attempt waits out the 100 ms greeting delay). */
async function inBatches<T, R>(items: T[], width: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += width) out.push(...(await Promise.all(items.slice(i, i + width).map(fn))));
  return out;
}

const relayedAddress = (line: string) => /<([^>]*)>/.exec(line)?.[1] ?? line;

for (const withPolicies of [false, true]) {
  describe(withPolicies ? `with a policy folder that says internalDomains: [${INTERNAL}]` : 'with no policy folder (relay protection built in)', () => {
    const variants = [
      { tls: false, from: '<spammer@outside.test>', helo: 'spammer.test' },
      { tls: false, from: '<ceo@corp.example>', helo: 'corp.example' },
      { tls: false, from: '<>', helo: 'localhost' },
      { tls: true, from: '<ceo@corp.example>', helo: '[127.0.0.1]' },
    ];
    test('no recipient outside the internal domains gets through, whatever its spelling, sender, HELO or TLS', { timeout: 120_000 }, async () => {
      const { gate, backend } = await mxGate(withPolicies);
      const cases = variants.flatMap((v) => TRICKS.map((rcpt) => ({ v, rcpt })));
      const attempts = await inBatches(cases, 16, async ({ v, rcpt }) => ({ v, ...(await attempt(gate, rcpt, v)) }));
      const problems: string[] = [];
      for (const { v, rcpt, reply } of attempts) {
        // 250 is fine only when the final address is internal (a source route "@a:" is ignored,
        // RFC 5321 appendix C); what the backend was really asked to deliver to is checked
        // below, for all of them at once.
        const final = (/<([^<>]*)>/.exec(rcpt)?.[1] ?? '').replace(/^@[^:]*:/, '');
        if (reply.code === 250 && deliversInside(final)) continue;
        if (reply.code < 500) problems.push(`RCPT TO:${rcpt} (MAIL FROM:${v.from}, ${v.tls ? 'STARTTLS' : 'cleartext'}) → ${JSON.stringify(reply.raw)}: expected a permanent refusal (5xx)`);
      }
      expect(attempts).toHaveLength(variants.length * TRICKS.length);
      expect(problems).toEqual([]);
      // Nothing that leaves the organisation ever reached the backend.
      const leaked = (await backendRcpts(backend)).filter((l) => !deliversInside(relayedAddress(l)));
      expect(leaked).toEqual([]);
      const denied = gate.logs.filter((l) => l.reason === 'relay_denied').length;
      expect(denied, 'refusals logged as relay_denied').toBeGreaterThan(0);
    });

    test(withPolicies ? 'internal recipients are accepted and reach the backend as internal addresses' : 'without internal domains every recipient with a domain is refused 554 5.7.1', async () => {
      const { gate, backend } = await mxGate(withPolicies);
      for (const rcpt of INTERNAL_RCPTS) {
        const a = await attempt(gate, rcpt, { tls: false, from: '<someone@outside.test>', helo: 'sender.test' });
        // RFC 5321 §4.1.1.3: the domainless postmaster is always a local recipient.
        if (withPolicies || rcpt === '<postmaster>') expect(a.reply.code, `${rcpt}: ${a.reply.raw}`).toBe(250);
        else expect(a.reply.raw, rcpt).toMatch(/^554 5\.7\.1 /);
      }
      const rcpts = await backendRcpts(backend);
      expect(rcpts.length).toBe(withPolicies ? INTERNAL_RCPTS.length : 1);
      expect(rcpts.filter((l) => !deliversInside(relayedAddress(l)))).toEqual([]);
    });
  });
}

test('XCLIENT from a client does not make it trusted: smtpgate refuses the command and relay protection still applies', async () => {
  const { gate, backend } = await mxGate(true);
  const c = await SmtpTalk.connect(gate.port('mx'));
  try {
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO spoofer.test')).code).toBe(250);
    expect((await c.cmd('XCLIENT ADDR=127.0.0.1 LOGIN=alice')).code).toBeGreaterThanOrEqual(500);
    expect((await c.cmd('XFORWARD ADDR=127.0.0.1')).code).toBeGreaterThanOrEqual(500);
    expect((await c.cmd('MAIL FROM:<alice@corp.example>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<victim@outside.test>')).raw).toMatch(/^554 5\.7\.1 /);
    await c.cmd('QUIT');
  } finally {
    c.close();
  }
  expect((await backendRcpts(backend)).filter((l) => /outside\.test/.test(l))).toEqual([]);
});

describeWith(['nmap'], 'nmap --script smtp-open-relay', () => {
  test('finds no open relay, with or without internal domains', { timeout: 180_000 }, async () => {
    const targets = [await mxGate(false), await mxGate(true)];
    // Both scans at once (most of the time is -sV's probes waiting); -Pn -n: no ping, no DNS.
    const outputs = await Promise.all(
      targets.map(async ({ gate }) => (await run('nmap', ['-Pn', '-n', '--script', 'smtp-open-relay', '-sV', '-p', String(gate.port('mx')), '127.0.0.1'], { timeout: 170_000 })).stdout),
    );
    for (const [i, { gate, backend }] of targets.entries()) {
      const stdout = outputs[i]!;
      const port = gate.port('mx');
      console.log(`nmap (${i ? `internalDomains: [${INTERNAL}]` : 'no policy folder'}):\n${stdout}`);
      // The script ran against our port and reached a verdict.
      expect(stdout).toMatch(new RegExp(`^${port}/tcp\\s+open`, 'm'));
      expect(stdout).toMatch(/smtp-open-relay:/);
      expect(stdout).not.toMatch(/Server is an open relay/);
      expect(stdout).toMatch(/Server doesn't seem to be an open relay, all tests failed/);
      // Nothing of nmap's reached the backend as a recipient outside, and relay protection said no.
      const rcpts = (await backendRcpts(backend)).map(relayedAddress);
      expect(rcpts.filter((a) => !deliversInside(a))).toEqual([]);
      expect(gate.logs.filter((l) => l.reason === 'relay_denied').length, 'nmap’s tries refused as relay_denied').toBeGreaterThan(0);
    }
  });
});
