/**
 * A 256 MiB message through the real `smtpgate run` binary: it arrives byte for byte, and the
 * proxy streams it (DESIGN.md: "Never buffer a whole message in memory"). The gate runs as a
 * child process so that its memory can be measured apart from the test's own.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { writeGateFiles } from '../../helpers/gate.js';
import { openListener } from '../../helpers/config.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

const CLI = path.resolve(import.meta.dirname, '../../../dist/cli/main.js');
const MESSAGE_BYTES = 256 * 1024 * 1024;
/**
 * What the proxy may grow by while relaying it: far below the message's size, which a proxy
 * that buffered the message would grow by at least. Not tighter: V8 gives back the memory of
 * dead Buffers only at its next collection, and when that comes varies by version and by run
 * (a 50 MB message grew the proxy by 18 to 37 MiB on Node 24, by 20 MiB on Node 20; this one
 * by about 20 MiB on both). The message is large so that the two cases stay far apart.
 */
const MAX_RSS_GROWTH = 96 * 1024 * 1024;
const MiB = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;

/** VmRSS of a process, in bytes (Linux). */
function rss(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/**
 * The body in 64 KiB-ish blocks of numbered 76-character lines + CRLF, so that a lost,
 * repeated or reordered block changes the hash. Every 7th line starts with "." and every 1000th
 * is a lone "." (which would end the message if the dot-stuffing were lost on the way). Each
 * block comes as message content and as its dot-stuffed wire form (RFC 5321 §4.5.2).
 */
function* bodyBlocks(total: number): Generator<{ content: Buffer; wire: Buffer }> {
  const filler = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-=_+';
  let line = 0;
  let written = 0;
  while (written < total) {
    const lines: string[] = [];
    for (let i = 0; i < 840 && written < total; i++, line++) {
      let text: string;
      if (line % 1000 === 999) text = '.';
      else {
        const head = (line % 7 === 0 ? '.' : '') + String(line).padStart(9, '0') + ' ';
        text = (head + filler).slice(0, 76);
      }
      lines.push(text + '\r\n');
      written += text.length + 2;
    }
    const content = lines.join('');
    yield { content: Buffer.from(content, 'latin1'), wire: Buffer.from(content.replace(/^\./gm, '..'), 'latin1') };
  }
}

/** Resolves with the first JSON log line for which `match` holds. */
function logLine(child: ChildProcess, match: (l: Record<string, unknown>) => boolean, what: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buffered = '';
    const onData = (chunk: Buffer) => {
      buffered += chunk.toString();
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const text = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        let line: Record<string, unknown>;
        try {
          line = JSON.parse(text) as Record<string, unknown>;
        } catch {
          continue;
        }
        if (match(line)) {
          child.stdout!.off('data', onData);
          child.off('exit', onExit);
          resolve(line);
          return;
        }
      }
    };
    const onExit = (code: number | null) => reject(new Error(`smtpgate exited (${code}) before logging: ${what}`));
    child.stdout!.on('data', onData);
    child.once('exit', onExit);
  });
}

describe(`a ${MiB(MESSAGE_BYTES)} message through \`smtpgate run\``, () => {
  let backend: RecordingBackend;
  let child: ChildProcess;
  let port = 0;
  let stderr = '';

  beforeAll(async () => {
    backend = await startRecordingBackend();
    const { configFile } = await writeGateFiles({
      backendPort: backend.port,
      listeners: [openListener()],
      config: { limits: { maxMessageBytes: '300MB' } },
      logLevel: 'info',
    });
    child = spawn(process.execPath, [CLI, 'run', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const listening = logLine(child, (l) => l.msg === 'listening' && l.listener === 'open', 'listening');
    const ready = logLine(child, (l) => l.msg === 'smtpgate ready', 'smtpgate ready');
    port = Number(String((await listening).address).split(':').pop());
    await ready;
    // Keep the pipe drained from here on, or a chatty child would block on a full stdout.
    child.stdout!.resume();
  });

  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    await backend?.close();
  });

  test(`arrives byte for byte (dot-stuffing both ways), while the proxy grows by less than ${MiB(MAX_RSS_GROWTH)}`, { timeout: 300_000 }, async () => {
    const c = await SmtpTalk.connect(port);
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);

    const pid = child.pid!;
    const baseline = rss(pid);
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, rss(pid))), 20);
    const hash = createHash('sha256');
    let sent = 0;
    try {
      for (const { content, wire } of bodyBlocks(MESSAGE_BYTES)) {
        hash.update(content);
        sent += content.length;
        await c.writeAll(wire);
      }
      const final = await c.cmd('.');
      expect(final.code, final.raw).toBe(250);
    } finally {
      clearInterval(sampler);
    }
    peak = Math.max(peak, rss(pid));
    await c.cmd('QUIT');

    expect(sent).toBeGreaterThanOrEqual(MESSAGE_BYTES);
    expect(backend.messages).toHaveLength(1);
    const stored = backend.messages[0]!.data;
    // smtpgate's Received header comes first: a "Received:" line and its indented continuations.
    const header = /^Received: from client\.test [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*/.exec(stored.toString('latin1', 0, 2048));
    expect(header).not.toBeNull();
    const end = header![0].length;
    const received = stored.subarray(end);
    expect(received.length).toBe(sent);
    expect(createHash('sha256').update(received).digest('hex')).toBe(hash.digest('hex'));

    const growth = peak - baseline;
    expect(growth, `RSS grew from ${(baseline / 2 ** 20).toFixed(1)} MiB to ${(peak / 2 ** 20).toFixed(1)} MiB${stderr ? `\nstderr: ${stderr}` : ''}`).toBeLessThan(MAX_RSS_GROWTH);
  });
});
