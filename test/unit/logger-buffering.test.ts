/**
 * On stdout, log lines are written in batches (createLogger). None may be lost: not when the
 * process exits, not when it dies of an uncaught exception, and not while it idles.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';

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
