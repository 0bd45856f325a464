/**
 * On stdout, log lines are written in batches (createLogger). None may be lost: not when the
 * process exits, not when it dies of an uncaught exception, and not while it idles.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LineBatch, stdoutIsFile } from '../../src/logging/logger.js';

const LOGGER = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dist/logging/logger.js')).href;

/** Runs `body` in a fresh node with `log` = createLogger(info, json); resolves with its stdout lines once `until` matches or it exits. */
function run(body: string, until?: (lines: string[]) => boolean): Promise<{ lines: string[]; code: number | null; ms: number }> {
  const script = `import { createLogger } from ${JSON.stringify(LOGGER)};\nconst log = createLogger({ level: 'info', format: 'json' });\n${body}`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
  const started = Date.now();
  let out = '';
  return new Promise((resolve) => {
    const lines = () => out.split('\n').filter((l) => l !== '').map((l) => (JSON.parse(l) as { msg: string }).msg);
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      if (until?.(lines())) {
        resolve({ lines: lines(), code: null, ms: Date.now() - started });
        child.kill();
      }
    });
    child.on('exit', (code) => resolve({ lines: lines(), code, ms: Date.now() - started }));
  });
}

describe('createLogger on stdout', () => {
  it('writes every line before a normal exit', async () => {
    const r = await run(`for (let i = 0; i < 3; i++) log.info('line ' + i);\nprocess.exit(0);`);
    expect(r.lines).toEqual(['line 0', 'line 1', 'line 2']);
  });

  it('writes the lines logged before an uncaught exception', async () => {
    const r = await run(`log.info('before the crash');\nsetImmediate(() => { throw new Error('boom'); });`);
    expect(r.code).not.toBe(0);
    expect(r.lines).toEqual(['before the crash']);
  });

  it('still exits after a crash when nobody reads its stdout any more (EPIPE)', async () => {
    // A journald restart or a dead `| logger`: the exit flush must not retry for ever, or the
    // crashed process would never exit and never be restarted.
    const script = `import { createLogger } from ${JSON.stringify(LOGGER)};\nconst log = createLogger({ level: 'info', format: 'json' });\nlog.info('one');\nsetTimeout(() => { log.info('two'); throw new Error('boom'); }, 100);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
    child.stdout.destroy();
    const exited = new Promise<'exited'>((resolve) => child.on('exit', () => resolve('exited')));
    const outcome = await Promise.race([exited, new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 5000))]);
    child.kill('SIGKILL');
    expect(outcome).toBe('exited');
  });

  it('writes a burst of many batches whole and in order, multi-byte characters intact', async () => {
    // Batches are cut by characters; a line with characters of 2 and 3 bytes in UTF-8 must not
    // be split or mangled at a batch's edge.
    const r = await run(`for (let i = 0; i < 500; i++) log.info('line ' + i + ' é✉ ' + 'x'.repeat(i % 97));\nprocess.exit(0);`);
    expect(r.lines).toEqual(Array.from({ length: 500 }, (_, i) => `line ${i} é✉ ${'x'.repeat(i % 97)}`));
  });

  it('writes a lone line within a second while the process keeps running', async () => {
    const r = await run(`log.info('idle line');\nsetInterval(() => {}, 1000);`, (lines) => lines.includes('idle line'));
    expect(r.lines).toEqual(['idle line']);
    expect(r.ms).toBeLessThan(5000);
  });
});

describe('LineBatch: how lines are gathered into writes', () => {
  /** Every write a batch makes, as text. */
  function batchOf(maxBytes: number) {
    const writes: string[] = [];
    const batch = new LineBatch({ write: (b: Buffer) => writes.push(b.toString('utf8')) > 0, reopen: () => {} }, maxBytes);
    return { batch, writes };
  }
  const line = fc.string({ unit: fc.constantFrom('a', 'é', '✉', '😀', ' '), maxLength: 300 }).map((t) => `${t}\n`);

  it('writes whole lines, in order, each write within the size unless one line alone is longer, and as full as it can be', () => {
    fc.assert(
      fc.property(fc.array(line, { maxLength: 200 }), fc.constantFrom(64, 512, 4096), (lines, max) => {
        const { batch, writes } = batchOf(max);
        for (const l of lines) batch.write(l);
        batch.flush();
        expect(writes.join('')).toBe(lines.join(''));
        for (const w of writes) {
          expect(w.endsWith('\n')).toBe(true);
          // Over the size only as a single line: bytes, not characters (é is 2, ✉ 3, 😀 4).
          if (Buffer.byteLength(w) > max) expect(w.indexOf('\n')).toBe(w.length - 1);
        }
        // And no batch is written early: the next write's first line would not have fitted.
        for (let i = 0; i + 1 < writes.length; i++) {
          const next = writes[i + 1]!.slice(0, writes[i + 1]!.indexOf('\n') + 1);
          expect(Buffer.byteLength(writes[i]!) + Buffer.byteLength(next)).toBeGreaterThan(max);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('knows a regular file from a pipe or a socket on stdout (a file gets the large batches)', () => {
    expect(stdoutIsFile(() => ({ isFile: () => true }))).toBe(true);
    expect(stdoutIsFile(() => ({ isFile: () => false }))).toBe(false);
    expect(
      stdoutIsFile(() => {
        throw new Error('EBADF');
      }),
    ).toBe(false);
  });

  it('keeps lines whole when two processes write to one pipe (workers share stdout) and the reader is slow', async () => {
    // Each process writes 8,000 record-sized lines; the reader takes a pause after each read, so
    // the pipe fills and a write larger than PIPE_BUF would be split around the other's.
    const child = `import { createLogger } from ${JSON.stringify(LOGGER)};\nconst log = createLogger({ level: 'info', format: 'json' });\nconst pad = 'x'.repeat(350);\nfor (let i = 0; i < 8000; i++) log.info({ w: process.pid, i, pad }, 'transaction');`;
    const both = spawn('sh', ['-c', 'node --input-type=module -e "$CHILD" & node --input-type=module -e "$CHILD" & wait'], {
      stdio: ['ignore', 'pipe', 'ignore'],
      env: { ...process.env, CHILD: child, PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}` },
    });
    const chunks: Buffer[] = [];
    both.stdout.on('data', (d: Buffer) => {
      chunks.push(d);
      both.stdout.pause();
      setTimeout(() => both.stdout.resume(), 1);
    });
    await new Promise((resolve) => both.on('close', resolve));
    const lines = Buffer.concat(chunks).toString('utf8').split('\n').slice(0, -1);
    const broken = lines.filter((l) => {
      try {
        JSON.parse(l);
        return false;
      } catch {
        return true;
      }
    });
    expect(broken).toEqual([]);
    expect(lines).toHaveLength(16000);
  }, 60_000);
});
