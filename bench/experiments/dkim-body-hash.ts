/**
 * EXPERIMENT, for measurement only (docs/benchmarks.md, "W4-dkim"): the DKIM relaxed body hash
 * of a 50 MB body, nodemailer's RelaxedBody (its byte loop, `updateHash`, without the stream)
 * against smtpgate's RelaxedBodyHash (src/dkim/relaxed-body-hash.ts), with plain SHA-256 of the
 * same bytes as the floor. Bodies fed in 64 KiB pieces, three kinds of line:
 * - x78: smtp-source's body (78 × "X" per line);
 * - b64: a base64 attachment (76-character lines);
 * - text: prose with a trailing space on one line in two, a double space and an empty line.
 * It runs the compiled hash in `dist/`:
 *
 *   npm run build && npx tsc -p bench/tsconfig.json && node bench/dist/experiments/dkim-body-hash.js
 *
 * Prints CPU milliseconds per body (process.cpuUsage, user + system), median of 5 rounds after
 * a warm-up, and checks that both give the same hash.
 */
import { createHash } from 'node:crypto';
import RelaxedBody from 'nodemailer/lib/dkim/relaxed-body';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

interface BodyHash {
  update(piece: Buffer): void;
  digest(): string;
}
const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'dist');
const { RelaxedBodyHash } = (await import(pathToFileURL(path.join(DIST, 'dkim', 'relaxed-body-hash.js')).href)) as { RelaxedBodyHash: new (algorithm: string) => BodyHash };

const MB = 50_000_000;
const PIECE = 64 * 1024;

function body(line: string): Buffer {
  // Whole lines only: the variants differ in nothing but the canonicalisation.
  return Buffer.from(line.repeat(Math.floor(MB / line.length)), 'latin1');
}

const BODIES: Record<string, Buffer> = {
  x78: body('X'.repeat(78) + '\r\n'),
  b64: body('QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n'),
  text: body('The quick brown fox jumps over the lazy dog, again and again. \r\nAnd then  the end.\r\n\r\n'),
};

function cpuMs(fn: () => string): { ms: number; hash: string } {
  const start = process.cpuUsage();
  const hash = fn();
  const used = process.cpuUsage(start);
  return { ms: (used.user + used.system) / 1000, hash };
}

function pieces(b: Buffer, each: (p: Buffer) => void): void {
  for (let at = 0; at < b.length; at += PIECE) each(b.subarray(at, at + PIECE));
}

const VARIANTS: Record<string, (b: Buffer) => string> = {
  nodemailer: (b) => {
    const r = new RelaxedBody({ hashAlgo: 'sha256' });
    pieces(b, (p) => r.updateHash(p));
    r.updateHash(Buffer.alloc(0), true);
    return r.bodyHash.digest('base64');
  },
  smtpgate: (b) => {
    const h = new RelaxedBodyHash('sha256');
    pieces(b, (p) => h.update(p));
    return h.digest();
  },
  'sha256 only': (b) => {
    const h = createHash('sha256');
    pieces(b, (p) => h.update(p));
    return h.digest('base64');
  },
};

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

for (const [name, b] of Object.entries(BODIES)) {
  const row: string[] = [];
  const hashes: Record<string, string> = {};
  for (const [variant, fn] of Object.entries(VARIANTS)) {
    fn(b);
    const ms: number[] = [];
    for (let r = 0; r < 5; r++) {
      const res = cpuMs(() => fn(b));
      ms.push(res.ms);
      hashes[variant] = res.hash;
    }
    row.push(`${variant} ${median(ms).toFixed(0)} ms (${Math.min(...ms).toFixed(0)}–${Math.max(...ms).toFixed(0)})`);
  }
  const same = hashes.nodemailer === hashes.smtpgate ? 'same hash' : 'HASHES DIFFER';
  console.log(`${name.padEnd(5)} ${row.join('   ')}   ${same}`);
}
