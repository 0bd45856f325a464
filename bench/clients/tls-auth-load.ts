/**
 * W5's load generator, run as its own process so its TLS work doesn't share an event loop
 * with the bench: `node tls-auth-load.js '<json options>'`.
 *
 * `concurrency` clients each run whole sessions until `sessions` have been started:
 * connect → EHLO → STARTTLS → EHLO → AUTH PLAIN → MAIL → RCPT → DATA (one message) → QUIT.
 * Session n signs in as `users[n % users.length]`.
 * Prints one JSON line: { ok, failed, seconds, errors }.
 */
import { SmtpDialogue, messageText } from './smtp-dialogue.js';

interface Options {
  port: number;
  sessions: number;
  concurrency: number;
  users: { name: string; password: string }[];
  from: string;
  to: string;
  bytes: number;
  timeoutMs: number;
}

const opts = JSON.parse(process.argv[2] ?? '{}') as Options;

async function session(n: number): Promise<void> {
  const d = await SmtpDialogue.connect(opts.port, opts.timeoutMs);
  try {
    await d.command('EHLO load.bench.test', 250);
    await d.startTls();
    await d.command('EHLO load.bench.test', 250);
    const user = opts.users[n % opts.users.length]!;
    const plain = Buffer.from(`\0${user.name}\0${user.password}`).toString('base64');
    await d.command(`AUTH PLAIN ${plain}`, 235);
    await d.command(`MAIL FROM:<${opts.from}>`, 250);
    await d.command(`RCPT TO:<${opts.to}>`, 250);
    await d.command('DATA', 354);
    d.write(messageText({ from: opts.from, to: opts.to, bytes: opts.bytes, id: `w5-${process.pid}-${n}` }));
    await d.command('.', 250);
    await d.command('QUIT', 221);
  } finally {
    d.close();
  }
}

async function main(): Promise<void> {
  let next = 0;
  let ok = 0;
  const errors: string[] = [];
  const started = process.hrtime.bigint();
  async function worker(): Promise<void> {
    while (next < opts.sessions) {
      const n = next++;
      try {
        await session(n);
        ok++;
      } catch (err) {
        if (errors.length < 2000) errors.push((err as Error).message);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(opts.concurrency, opts.sessions) }, worker));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const distinct = [...new Set(errors)].slice(0, 5);
  process.stdout.write(JSON.stringify({ ok, failed: errors.length, seconds, errors: distinct }) + '\n');
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stdout.write(JSON.stringify({ ok: 0, failed: opts.sessions, seconds: 0, errors: [String(err)] }) + '\n');
    process.exit(1);
  },
);
