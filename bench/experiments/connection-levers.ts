/**
 * EXPERIMENT, for measurement only: the CPU of each per-connection piece issue 20's levers
 * replaced, old way against new, in one process (CPU time from process.cpuUsage, so a loaded
 * machine slows the run but moves the figures less than wall time would):
 *
 * - a session id: smtp-server's randomBytes(10) + BigInt per id, against a SessionIds pool;
 * - a reply deadline: setTimeout + clearTimeout per command, against refresh() of one Timeout;
 * - the close reason after QUIT: a new Error (with its stack trace) per connection, against none;
 * - EHLO capabilities: parsing the reply's lines, against a CapabilityCache hit.
 *
 *   npm run build && npx tsc -p bench/tsconfig.json && node bench/dist/experiments/connection-levers.js
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const OPS = 200_000;
const ROUNDS = 7;

/** Median CPU nanoseconds per operation over ROUNDS runs of OPS operations. */
function measure(name: string, op: () => unknown): void {
  const runs: number[] = [];
  let kept: unknown;
  for (let r = 0; r < ROUNDS; r++) {
    const start = process.cpuUsage();
    for (let i = 0; i < OPS; i++) kept = op();
    const used = process.cpuUsage(start);
    runs.push(((used.user + used.system) * 1000) / OPS);
  }
  // Read, so that the results are kept and the work can't be optimized away.
  void kept;
  runs.sort((a, b) => a - b);
  const fmt = (n: number) => n.toFixed(0).padStart(6);
  console.log(`${name.padEnd(52)} ${fmt(runs[Math.floor(ROUNDS / 2)]!)} ns (min ${fmt(runs[0]!)}, max ${fmt(runs[ROUNDS - 1]!)})`);
}

const load = async (file: string) => import(pathToFileURL(path.join(REPO_ROOT, 'dist', file)).href) as Promise<Record<string, any>>;
const [{ SessionIds }, { parseCapabilities, CapabilityCache }] = await Promise.all([load('listener/session-ids.js'), load('relay/ehlo-capabilities.js')]);

measure('session id: randomBytes(10) + BigInt (smtp-server)', () => BigInt('0x' + randomBytes(10).toString('hex')).toString(32).padStart(16, '0'));
const ids = new SessionIds();
measure('session id: SessionIds.next()', () => ids.next());

measure('reply deadline: setTimeout + clearTimeout', () => clearTimeout(setTimeout(() => {}, 30_000)));
const shared = setTimeout(() => {}, 30_000);
measure('reply deadline: refresh()', () => shared.refresh());
clearTimeout(shared);

measure('close reason after QUIT: new Error', () => new Error('backend connection closed after QUIT'));

// smtp-sink's EHLO reply.
const lines = ['sink.test', 'PIPELINING', 'SIZE 10240000', 'VRFY', 'ETRN', 'XCLIENT NAME ADDR PROTO HELO', 'ENHANCEDSTATUSCODES', '8BITMIME', 'DSN', 'SMTPUTF8'];
measure('EHLO capabilities: parseCapabilities', () => parseCapabilities([...lines]));
const cache = new CapabilityCache();
measure('EHLO capabilities: CapabilityCache hit', () => cache.parse([...lines]));
measure('EHLO capabilities: (the copy of the lines alone)', () => [...lines]);
