/**
 * EXPERIMENT, for measurement only: what one transaction record line costs to log (issue 18),
 * through smtpgate's own logger (`openLog`, level info, json, a file), apart from the session.
 * The line is W1's record as it is in the log (one recipient, every field W1 fills).
 *
 *   npm run build && npx tsc -p bench/tsconfig.json && node bench/dist/experiments/log-line.js
 *
 * Options: `--dist DIR` (another build of src/, e.g. an older commit's, to compare),
 * `--lines N` (lines per round, default 200000), `--rounds N` (default 7; the median is shown).
 *
 * On a busy machine the µs figure wanders; instruction counts don't. Run it under callgrind
 * twice, with `--rounds 1 --lines 2000` and `--lines 22000`, and divide the difference of the
 * two totals by 20000 for instructions per line:
 *
 *   valgrind --tool=callgrind --callgrind-out-file=/tmp/ll.%p node bench/dist/experiments/log-line.js --rounds 1 --lines 22000
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

interface Logger {
  child(bindings: Record<string, unknown>): Logger;
  info(obj: object, msg: string): void;
}
type OpenLog = (opts: { level: string; format: 'json'; file: string }) => { log: Logger };

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

function option(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/** W1's record: what smtp-source's message makes the session write. */
function record(i: number): object {
  return {
    port: 55606,
    helo: 'vm',
    trusted: true,
    from: 'sender@corp.test',
    rcpt: [{ to: 'rcpt@corp.test', code: 250, enhanced: '2.1.5', by: 'backend' }],
    size: 4226,
    messageId: `<3e54.${i}.0708@vm>`,
    backend: '127.0.0.1:57605',
    reply: '250 2.0.0 Ok',
    durationMs: 170,
    outcome: 'relayed',
  };
}

async function main(): Promise<void> {
  const dist = path.resolve(option('--dist') ?? path.join(REPO_ROOT, 'dist'));
  const lines = Number(option('--lines') ?? 200_000);
  const rounds = Number(option('--rounds') ?? 7);
  const { openLog } = (await import(pathToFileURL(path.join(dist, 'logging', 'logger.js')).href)) as { openLog: OpenLog };
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-log-line-'));
  const { log } = openLog({ level: 'info', format: 'json', file: path.join(dir, 'smtpgate.log') });
  const session = log.child({ session: 'r9tfh1gs2oqi030j', listener: 'open', client: '127.0.0.1' });
  const perLine: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const before = process.cpuUsage();
    for (let i = 0; i < lines; i++) session.info(record(i), 'transaction');
    const used = process.cpuUsage(before);
    perLine.push((used.user + used.system) / lines);
  }
  perLine.sort((a, b) => a - b);
  process.stdout.write(`${dist}: ${perLine[rounds >> 1]!.toFixed(2)} µs CPU per line (median of ${rounds} × ${lines}; min ${perLine[0]!.toFixed(2)})\n`);
  await rm(dir, { recursive: true, force: true });
  // The logger's 250 ms flush timer is unref'd; exit flushes what is gathered (into the removed folder).
  process.exit(0);
}

void main();
