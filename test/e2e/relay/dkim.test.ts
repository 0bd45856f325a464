/**
 * DKIM signing through the real `smtpgate run` binary (README "DKIM signing"): the key comes
 * from `smtpgate dkim keygen`, the record it prints is what the verifier (dkimpy, Debian's
 * python3-dkim) is served, and every signature is checked on the message the backend stored.
 */
import { copyFile, mkdir, readdir, writeFile } from 'node:fs/promises';
import { readdirSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, test, vi } from 'vitest';
import { startChildGate, scrapeMetric, type ChildGate } from '../../helpers/child-gate.js';
import { listener, openListener } from '../../helpers/config.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { startFlakyBackend } from '../../helpers/flaky-backend.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';
import { runCli } from '../../helpers/cli.js';
import { describeWith } from '../../helpers/programs.js';
import { ALICE } from '../../helpers/gate.js';
import { parseZoneLine, verifyDkim } from '../../helpers/dkim-verifier.js';

const MiB = 1024 * 1024;

/** The message as a client writes it after DATA: dot-stuffed, ending in CRLF.CRLF. */
function wire(message: string | Buffer): Buffer {
  const text = Buffer.isBuffer(message) ? message.toString('latin1') : Buffer.from(message, 'utf8').toString('latin1');
  return Buffer.from(text.replace(/^\./gm, '..') + '.\r\n', 'latin1');
}

function message(from: string, subject: string, body = 'Hello.\r\n'): string {
  return `From: ${from}\r\nTo: <bob@example.net>\r\nSubject: ${subject}\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <${subject.replace(/\W/g, '')}@corp.test>\r\n\r\n${body}`;
}

/** Opens a session on `port`, as far as the 354. */
async function startData(port: number, opts: { auth?: boolean } = {}): Promise<SmtpTalk> {
  const c = await SmtpTalk.connect(port);
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  if (opts.auth) {
    expect((await c.starttls()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
  }
  expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
  expect((await c.cmd('RCPT TO:<bob@example.net>')).code).toBe(250);
  expect((await c.cmd('DATA')).code).toBe(354);
  return c;
}

async function send(port: number, msg: string | Buffer, opts: { auth?: boolean } = {}): Promise<number> {
  const c = await startData(port, opts);
  await c.writeAll(wire(msg));
  const reply = await c.read();
  await c.cmd('QUIT');
  return reply.code;
}

/** The stored message without smtpgate's Received: field (first) and any DKIM-Signature fields. */
function withoutAddedFields(stored: Buffer): Buffer {
  const text = stored.toString('latin1');
  const rest = text.replace(/^Received: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*/, '').replace(/^DKIM-Signature: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*/, '');
  return Buffer.from(rest, 'latin1');
}

/** Descriptors of the process open on files in `dir` (an unlinked file shows as "… (deleted)"). */
function openIn(pid: number, dir: string): string[] {
  const out: string[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (target.startsWith(dir + path.sep)) out.push(target);
    } catch {
      /* closed meanwhile */
    }
  }
  return out;
}

/** `lines` numbered 76-character lines; every 7th starts with "." (dot-stuffed on the wire). */
function body(bytes: number): Buffer {
  const lines: string[] = [];
  let n = 0;
  for (let size = 0; size < bytes; n++) {
    const line = ((n % 7 === 0 ? '.' : '') + String(n).padStart(9, '0') + ' the quick brown fox jumps over the lazy dog 0123456789').slice(0, 76) + '\r\n';
    lines.push(line);
    size += line.length;
  }
  return Buffer.from(lines.join(''), 'latin1');
}

describeWith(['dkimverify'], 'DKIM signing through `smtpgate run`', () => {
  let backend: RecordingBackend;
  let refusing: RecordingBackend;
  let gate: ChildGate;
  let refusingGate: ChildGate;
  let spoolDir = '';
  let refusingSpool = '';
  const records: Record<string, string> = {};

  /** Paths are relative to the gate's folder, where keygen writes the key. */
  const dkim = { spoolDir: 'spool', memoryThreshold: '64KiB', domains: [{ domain: 'corp.test', selector: 'sel1', key: 'corp.key' }] };

  /** Writes the key with `smtpgate dkim keygen` and learns its record from what it prints. */
  async function keygen(dir: string): Promise<void> {
    await mkdir(path.join(dir, 'spool'));
    const r = await runCli(['dkim', 'keygen', 'corp.test', 'sel1', '--out', path.join(dir, 'corp.key')], undefined, 60_000);
    expect(r.code, r.stderr).toBe(0);
    const record = parseZoneLine(r.stdout.trim());
    expect(record.name).toBe('sel1._domainkey.corp.test');
    records[record.name] = record.value;
  }

  beforeAll(async () => {
    backend = await startRecordingBackend();
    refusing = await startRecordingBackend({ finalReply: '554 5.7.1 Not today' });
    let dir = '';
    gate = await startChildGate({
      backendPort: backend.port,
      listeners: [openListener(), listener('submission', { tls: 'starttls' }), listener('inbound', { tls: 'none', requireTls: false, requireAuth: false })],
      // The inbound listener takes mail for example.net without AUTH (relay protection).
      // alice owns alice@corp.test: a signed-in user is signed for only their own From: addresses.
      auth: { users: 'users', attributes: 'attributes.yaml' },
      config: { limits: { maxMessageBytes: '80MB' }, policies: 'policies', dkim },
      beforeStart: async (d) => {
        dir = d;
        await writeFile(path.join(d, 'attributes.yaml'), 'alice:\n  addresses: [alice@corp.test]\n');
        await keygen(d);
        await mkdir(path.join(d, 'policies'));
        await writeFile(path.join(d, 'policies', '00-settings.yaml'), 'internalDomains: [example.net]\n');
      },
    });
    spoolDir = path.join(dir, 'spool');
    refusingGate = await startChildGate({
      backendPort: refusing.port,
      listeners: [openListener()],
      config: { dkim },
      beforeStart: async (d) => {
        refusingSpool = path.join(d, 'spool');
        await mkdir(refusingSpool);
        await copyFile(path.join(dir, 'corp.key'), path.join(d, 'corp.key'));
      },
    });
  }, 120_000);

  afterAll(async () => {
    await gate?.stop();
    await refusingGate?.stop();
    await backend?.close();
    await refusing?.close();
  });

  test('signs mail from a trusted network for a listed From: domain; the signature verifies', async () => {
    const before = backend.messages.length;
    const msg = message('Alice <alice@corp.test>', 'trusted');
    expect(await send(gate.port('open'), msg)).toBe(250);
    const stored = backend.messages[before]!.data;
    const results = await verifyDkim(stored, records);
    expect(results).toHaveLength(1);
    expect(results[0]!.ok, results[0]!.signature).toBe(true);
    expect(results[0]!.signature).toMatch(/d=corp\.test;.*s=sel1;/s);
    expect(results[0]!.signature).toContain('c=relaxed/relaxed');
    expect(withoutAddedFields(stored).toString('utf8')).toBe(msg);
    // The log reaches the test in batches (at the latest every 250 ms): wait for the record.
    await vi.waitFor(() => expect(gate.logs.some((l) => l.msg === 'transaction' && (l.dkim as { domain?: string } | undefined)?.domain === 'corp.test')).toBe(true));
    expect(await scrapeMetric(gate.metricsPort, 'smtpgate_dkim_signatures_total', { result: 'signed' })).toBeGreaterThanOrEqual(1);
  });

  test('signs mail of a signed-in user', async () => {
    const before = backend.messages.length;
    expect(await send(gate.port('submission'), message('alice@corp.test', 'signed in'), { auth: true })).toBe(250);
    const results = await verifyDkim(backend.messages[before]!.data, records);
    expect(results.map((r) => r.ok)).toEqual([true]);
  });

  test('never signs a signed-in user\'s message whose From: is not theirs, though its domain has a key', async () => {
    const before = backend.messages.length;
    const msg = message('CEO <ceo@corp.test>', 'spoofed');
    expect(await send(gate.port('submission'), msg, { auth: true })).toBe(250);
    const stored = backend.messages[before]!.data;
    expect(stored.toString('latin1')).not.toContain('DKIM-Signature');
    expect(withoutAddedFields(stored).toString('utf8')).toBe(msg);
    expect(await scrapeMetric(gate.metricsPort, 'smtpgate_dkim_signatures_total', { result: 'from_not_owned' })).toBeGreaterThanOrEqual(1);
  });

  test('a message with 8-bit and folded headers and an 8-bit body verifies', async () => {
    const before = backend.messages.length;
    const msg = [
      'From: "Jörg Müller (Vertrieb)"\r\n  <joerg@corp.test>',
      'To: "Bob" <bob@example.net>,\r\n\t"Carol Ünal" <carol@example.net>',
      'Subject: Grüße aus dem Büro,\r\n   über  mehrere\r\n\tZeilen   gefaltet',
      'Date: Thu, 1 Jan 2026 00:00:00 +0000',
      'Message-ID: <8bit@corp.test>',
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: 8bit',
      '',
      'Schöne Grüße   mit  Leerzeichen   \r\n.ein Punkt am Zeilenanfang\r\n\r\n\r\n',
    ].join('\r\n');
    expect(await send(gate.port('open'), msg)).toBe(250);
    const stored = backend.messages[before]!.data;
    expect((await verifyDkim(stored, records)).map((r) => r.ok)).toEqual([true]);
    expect(withoutAddedFields(stored).toString('utf8')).toBe(msg);
  });

  test('a message that is all header block (no blank line, no body) is signed and verifies', async () => {
    const before = backend.messages.length;
    const msg = 'From: alice@corp.test\r\nTo: <bob@example.net>\r\nSubject: headers only\r\nMessage-ID: <headersonly@corp.test>\r\n';
    expect(await send(gate.port('open'), msg)).toBe(250);
    const stored = backend.messages[before]!.data;
    expect((await verifyDkim(stored, records)).map((r) => r.ok)).toEqual([true]);
    expect(withoutAddedFields(stored).toString('utf8')).toBe(msg);
  });

  test('does not sign a From: domain that has no key; the message is relayed as sent', async () => {
    const before = backend.messages.length;
    const msg = message('someone@elsewhere.test', 'unlisted');
    expect(await send(gate.port('open'), msg)).toBe(250);
    const stored = backend.messages[before]!.data;
    expect(stored.toString('latin1')).not.toContain('DKIM-Signature');
    expect(withoutAddedFields(stored).toString('utf8')).toBe(msg);
    expect(await scrapeMetric(gate.metricsPort, 'smtpgate_dkim_signatures_total', { result: 'domain_not_listed' })).toBeGreaterThanOrEqual(1);
  });

  test('never signs for a sender who neither signed in nor is in a trusted network', async () => {
    const before = backend.messages.length;
    expect(await send(gate.port('inbound'), message('alice@corp.test', 'outsider'))).toBe(250);
    expect(backend.messages[before]!.data.toString('latin1')).not.toContain('DKIM-Signature');
    expect(await scrapeMetric(gate.metricsPort, 'smtpgate_dkim_signatures_total', { result: 'not_eligible' })).toBeGreaterThanOrEqual(1);
  });

  test('a message with two From: fields is not signed', async () => {
    const before = backend.messages.length;
    expect(await send(gate.port('open'), `From: a@corp.test\r\n${message('b@corp.test', 'two from')}`)).toBe(250);
    expect(backend.messages[before]!.data.toString('latin1')).not.toContain('DKIM-Signature');
    expect(await scrapeMetric(gate.metricsPort, 'smtpgate_dkim_signatures_total', { result: 'several_from' })).toBeGreaterThanOrEqual(1);
  });

  test('a 50 MB message is held in the spool, a file with no name on disk, and verifies', { timeout: 300_000 }, async () => {
    const before = backend.messages.length;
    const content = Buffer.concat([Buffer.from(message('alice@corp.test', 'large', ''), 'latin1'), body(50_000_000)]);
    const c = await startData(gate.port('open'));
    let spooled = 0;
    let namedOnDisk = 0;
    const data = wire(content);
    for (let at = 0; at < data.length; at += 1 * MiB) {
      await c.writeAll(data.subarray(at, Math.min(data.length, at + MiB)));
      if (at === 10 * MiB) {
        // The part beyond memoryThreshold is in a file the gate holds open, already unlinked.
        await vi.waitFor(() => expect(openIn(gate.pid, spoolDir).length).toBeGreaterThan(0));
        spooled = openIn(gate.pid, spoolDir).filter((t) => t.endsWith('(deleted)')).length;
        namedOnDisk = (await readdir(spoolDir)).length;
      }
    }
    expect((await c.read()).code).toBe(250);
    await c.cmd('QUIT');
    expect(spooled).toBe(1);
    expect(namedOnDisk).toBe(0);
    const stored = backend.messages[before]!.data;
    expect((await verifyDkim(stored, records)).map((r) => r.ok)).toEqual([true]);
    expect(withoutAddedFields(stored).equals(content)).toBe(true);
    await vi.waitFor(() => expect(openIn(gate.pid, spoolDir)).toEqual([]));
    // Memory is the bench's to measure (W4-dkim, RSS growth): here V8's late freeing of dead
    // Buffers blurs it (40 to 78 MiB seen for 50 to 100 MB), and the spool file is the proof.
  });

  test('the spool file is closed when the client vanishes mid-DATA, and nothing is delivered', async () => {
    const before = backend.messages.length;
    const c = await startData(gate.port('open'));
    await c.writeAll(wire(Buffer.concat([Buffer.from(message('alice@corp.test', 'vanishing', ''), 'latin1'), body(2 * MiB)])).subarray(0, MiB));
    await vi.waitFor(() => expect(openIn(gate.pid, spoolDir).length).toBe(1));
    c.close();
    await vi.waitFor(() => expect(openIn(gate.pid, spoolDir)).toEqual([]));
    expect(await readdir(spoolDir)).toEqual([]);
    expect(backend.messages.length).toBe(before);
  });

  test('the spool file is closed when the backend refuses the signed message, and the client gets the refusal', async () => {
    const c = await startData(refusingGate.port('open'));
    await c.writeAll(wire(Buffer.concat([Buffer.from(message('alice@corp.test', 'refused', ''), 'latin1'), body(MiB)])));
    const reply = await c.read();
    expect(reply.code).toBe(554);
    await c.cmd('QUIT');
    await vi.waitFor(() => expect(openIn(refusingGate.pid, refusingSpool)).toEqual([]));
    expect(await readdir(refusingSpool)).toEqual([]);
    expect(refusing.messages).toHaveLength(0);
  });

  test('a backend that stops reading while the signed message goes out: after backend.timeouts.dataIdle the client gets 451 4.4.2 and the spool file is closed', async () => {
    const stalled = await startFlakyBackend(() => ({ fault: 'stall-read' }));
    let stalledSpool = '';
    const stalledGate = await startChildGate({
      backend: { address: `127.0.0.1:${stalled.port}`, timeouts: { dataIdle: '1s' } },
      listeners: [openListener()],
      config: { dkim },
      beforeStart: async (d) => {
        stalledSpool = path.join(d, 'spool');
        await mkdir(stalledSpool);
        await copyFile(path.join(gate.files.dir, 'corp.key'), path.join(d, 'corp.key'));
      },
    });
    try {
      const c = await startData(stalledGate.port('open'));
      // More than the loopback socket buffers hold: the replay from the spool file backs up.
      await c.writeAll(wire(Buffer.concat([Buffer.from(message('alice@corp.test', 'stalled', ''), 'latin1'), body(16 * MiB)])));
      expect((await c.read()).raw).toBe('451 4.4.2 Connection to the mail server failed, try again later');
      await vi.waitFor(() => expect(openIn(stalledGate.pid, stalledSpool)).toEqual([]));
      expect(stalled.accepted).toHaveLength(0);
      // The backend got no signed message: nothing is counted as signed.
      expect(await scrapeMetric(stalledGate.metricsPort, 'smtpgate_dkim_signatures_total', { result: 'signed' })).toBe(0);
    } finally {
      await stalledGate.stop();
      await stalled.close();
    }
  });
});
