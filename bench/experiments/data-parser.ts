/**
 * EXPERIMENT, for measurement only (docs/benchmarks.md, "W4"): smtp-server's DATA parser
 * (`SMTPStream._feedDataStream`) against smtpgate's drop-in (src/listener/data-stream.ts), on
 * one core and without sockets. A message of realistic text goes through each parser in 64 KiB
 * reads, into a data stream whose bytes are thrown away:
 * - 76-character lines;
 * - one line in 40 starts with a dot, sent dot-stuffed.
 * "no parser" writes the same reads straight into such a stream: what the stream itself costs.
 * Each variant runs in a process of its own. It runs the compiled parser in `dist/`:
 *
 *   npm run build && npx tsc -p bench/tsconfig.json && \
 *     node --expose-gc bench/dist/experiments/data-parser.js
 *
 * Options: `--mb N` (message size, default 50), `--read KiB` (default 64), `--rounds N`
 * (default 5, after a warm-up round; the median is shown), `--dot-every N` (default 40; 0 for
 * no dot lines),
 * `--dist DIR` (another build of src/).
 *
 * For each parser it reports:
 * - MB/s, and the CPU time per message (steadier than MB/s on a busy machine);
 * - the Buffer memory it allocates (Buffer.allocUnsafe, which Buffer.concat uses);
 * - how far `process.memoryUsage()` arrayBuffers and external rose above where they were at
 *   the start of the round, at their peak.
 * With `--expose-gc` a full GC runs before every round, so each round starts from the same
 * baseline. Without it, the peaks also show garbage left over from the round before.
 */
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';

type Install = (parser: SMTPStream) => void;
type Variant = 'no parser' | 'original' | 'fast';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const gc = (globalThis as { gc?: () => void }).gc;

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i < 0 ? fallback : Number(process.argv[i + 1]);
}
function textOption(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i < 0 ? fallback : (process.argv[i + 1] ?? fallback);
}

/** The message as the client sends it (dot-stuffed, ending in CRLF "." CRLF), and its length once unstuffed. */
function makeMessage(bytes: number, dotEvery: number): { wire: Buffer; content: number } {
  const words = 'the quick brown fox jumps over lazy dogs while smtp proxies relay large messages'.split(' ');
  const lines: string[] = ['From: sender@source.test', 'To: rcpt@sink.test', 'Subject: large message', ''];
  let size = 0;
  for (let n = 0; size < bytes; n++) {
    let line = '';
    for (let w = n; line.length < 76; w += 7) line += `${words[w % words.length]} `;
    line = line.slice(0, 76);
    if (dotEvery > 0 && n % dotEvery === 0) line = `.${line.slice(1)}`;
    lines.push(line);
    size += line.length + 2;
  }
  const content = Buffer.from(`${lines.join('\r\n')}\r\n`, 'latin1');
  // Dot-stuffing (RFC 5321 §4.5.2): one more dot in front of every line that starts with one.
  const wire = Buffer.from(`${lines.map((l) => (l.startsWith('.') ? `.${l}` : l)).join('\r\n')}\r\n.\r\n`, 'latin1');
  return { wire, content: content.length };
}

/** Cuts `wire` into reads of `size` bytes, each its own Buffer, as a socket delivers them. */
function reads(wire: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < wire.length; i += size) out.push(Buffer.from(wire.subarray(i, i + size)));
  return out;
}

/** Counts the bytes of every Buffer.allocUnsafe (Buffer.concat allocates through it). */
const allocated = { bytes: 0 };
const allocUnsafe = Buffer.allocUnsafe.bind(Buffer);
Buffer.allocUnsafe = (size: number) => {
  allocated.bytes += size;
  return allocUnsafe(size);
};

interface Measurement {
  mbps: number;
  /** User + system CPU time of the process: less sensitive than MB/s to a busy machine. */
  cpuMs: number;
  allocated: number;
  arrayBuffersPeak: number;
  externalPeak: number;
  dataBytes: number;
}

async function round(variant: Variant, input: Buffer[], total: number, install: Install): Promise<Measurement> {
  gc?.();
  const base = process.memoryUsage();
  let arrayBuffersPeak = 0;
  let externalPeak = 0;
  const sample = () => {
    const m = process.memoryUsage();
    arrayBuffersPeak = Math.max(arrayBuffersPeak, m.arrayBuffers - base.arrayBuffers);
    externalPeak = Math.max(externalPeak, m.external - base.external);
  };
  allocated.bytes = 0;
  const started = process.hrtime.bigint();
  const cpu = process.cpuUsage();
  let dataBytes = 0;

  if (variant === 'no parser') {
    const sink = new PassThrough();
    sink.on('data', (c: Buffer) => (dataBytes += c.length));
    for (const [i, chunk] of input.entries()) {
      if (!sink.write(chunk)) await once(sink, 'drain');
      if (i % 16 === 0) sample();
    }
    sink.end();
    await once(sink, 'end');
  } else {
    const parser = new SMTPStream();
    if (variant === 'fast') install(parser);
    parser.oncommand = (_command, callback) => callback?.();
    // As smtp-connection does after "DATA": the parser switches to data mode, the application
    // reads the stream (here: counts and discards), and calls continue() once it has ended.
    // Until then the parser doesn't take the read that held the final dot.
    const stream = parser.startDataMode();
    stream.on('data', (c: Buffer) => (dataBytes += c.length));
    const ended = once(stream, 'end').then(() => parser.continue());
    for (const [i, chunk] of input.entries()) {
      if (!parser.write(chunk)) await once(parser, 'drain');
      if (i % 16 === 0) sample();
    }
    await ended;
  }
  sample();
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const used = process.cpuUsage(cpu);
  return { mbps: total / 1e6 / seconds, cpuMs: (used.user + used.system) / 1000, allocated: allocated.bytes, arrayBuffersPeak, externalPeak, dataBytes };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
const mb = (n: number) => (n / 1e6).toFixed(1);

/** Child: runs one variant for a warm-up round and `--rounds` more; prints them as JSON. */
async function measure(variant: Variant): Promise<void> {
  const rounds = option('--rounds', 5);
  const dist = path.resolve(textOption('--dist', path.join(REPO_ROOT, 'dist')));
  const mod = (await import(pathToFileURL(path.join(dist, 'listener', 'data-stream.js')).href)) as { installFastDataParser: Install };
  const { wire, content } = makeMessage(option('--mb', 50) * 1e6, option('--dot-every', 40));
  const input = reads(wire, option('--read', 64) * 1024);
  const out: Measurement[] = [];
  // Round 0 warms up the JIT and is not counted.
  for (let r = 0; r <= rounds; r++) {
    const m = await round(variant, input, wire.length, mod.installFastDataParser);
    const expected = variant === 'no parser' ? wire.length : content;
    if (m.dataBytes !== expected) throw new Error(`${variant}: ${m.dataBytes} bytes out, expected ${expected}`);
    if (r > 0) out.push(m);
  }
  process.stdout.write(JSON.stringify({ wire: wire.length, content, reads: input.length, out }));
}

/**
 * Parent: one child process per variant. In one process, the original's garbage (50 MB of
 * Buffers per message) is freed by V8's background threads during the next round, and that
 * CPU time and memory were charged to whichever variant came next.
 */
function main(): void {
  const variants: Variant[] = ['no parser', 'original', 'fast'];
  const script = fileURLToPath(import.meta.url);
  const results = variants.map((variant) => {
    const json = execFileSync(process.execPath, [...process.execArgv, script, ...process.argv.slice(2), '--variant', variant], { encoding: 'utf8', maxBuffer: 1 << 24 });
    return { variant, ...(JSON.parse(json) as { wire: number; content: number; reads: number; out: Measurement[] }) };
  });
  const first = results[0]!;
  console.log(`message: ${mb(first.wire)} MB on the wire, ${mb(first.content)} MB unstuffed, ${first.reads} reads of ${option('--read', 64)} KiB`);
  console.log(`gc before each round: ${gc ? 'yes' : 'no (run node with --expose-gc)'}; median of ${first.out.length} rounds, after one warm-up round`);
  console.log(['variant', 'MB/s', 'CPU ms per message (min–max)', 'allocated MB', 'arrayBuffers peak +MB', 'external peak +MB'].join('\t'));
  for (const { variant, out } of results) {
    const cpu = out.map((m) => m.cpuMs);
    console.log(
      [
        variant,
        median(out.map((m) => m.mbps)).toFixed(0),
        `${median(cpu).toFixed(0)} (${Math.min(...cpu).toFixed(0)}–${Math.max(...cpu).toFixed(0)})`,
        mb(median(out.map((m) => m.allocated))),
        mb(median(out.map((m) => m.arrayBuffersPeak))),
        mb(median(out.map((m) => m.externalPeak))),
      ].join('\t'),
    );
  }
}

const variant = textOption('--variant', '');
if (variant) await measure(variant as Variant);
else main();
