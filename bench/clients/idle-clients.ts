/**
 * W6's load generator: opens `count` sessions that then sit idle, run as its own process
 * (started under prlimit for the file descriptors): `node idle-clients.js '<json options>'`.
 *
 * Each session reads the greeting and says EHLO; with `tls` it also does STARTTLS, the
 * handshake and EHLO again. At most `concurrency` sessions are being opened at once. When all
 * are open it prints one JSON line { open, failed, seconds, errors } and keeps them open until
 * its stdin closes (the bench has measured the proxy's memory by then), then exits.
 */
import { SmtpDialogue } from './smtp-dialogue.js';

interface Options {
  port: number;
  count: number;
  concurrency: number;
  tls: boolean;
  timeoutMs: number;
  /** Exit on our own after this long, whatever happens. */
  maxLifetimeMs: number;
}

const opts = JSON.parse(process.argv[2] ?? '{}') as Options;
const open: SmtpDialogue[] = [];

async function openOne(): Promise<void> {
  const d = await SmtpDialogue.connect(opts.port, opts.timeoutMs);
  try {
    await d.command('EHLO idle.bench.test', 250);
    if (opts.tls) {
      await d.startTls();
      await d.command('EHLO idle.bench.test', 250);
    }
  } catch (err) {
    d.close();
    throw err;
  }
  // Idle from here on: no timeout of ours may close it while the bench measures.
  d.disableTimeout();
  open.push(d);
}

async function main(): Promise<void> {
  const lifetime = setTimeout(() => process.exit(3), opts.maxLifetimeMs);
  lifetime.unref();
  let next = 0;
  const errors: string[] = [];
  const started = process.hrtime.bigint();
  async function worker(): Promise<void> {
    while (next < opts.count) {
      next++;
      try {
        await openOne();
      } catch (err) {
        if (errors.length < 2000) errors.push((err as Error).message);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(opts.concurrency, opts.count) }, worker));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  process.stdout.write(JSON.stringify({ open: open.length, failed: errors.length, seconds, errors: [...new Set(errors)].slice(0, 5) }) + '\n');
  process.stdin.resume();
  process.stdin.once('end', () => {
    for (const d of open) d.close();
    process.exit(0);
  });
}

void main();
