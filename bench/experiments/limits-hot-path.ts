/**
 * EXPERIMENT, for measurement only: how many sessions per second one core pushes through the
 * limits module (src/limits/limits.ts) alone, with no sockets and no SMTP. A session is what the
 * listener asks for one message on a fresh connection (W2); a message is the middle part only,
 * on a connection held open (W1, W3: smtp-source -d):
 *
 *   session: connectionOpened → [message: mailFrom → rcptTo → messageBytes] → connectionClosed
 *
 * It builds `Limits` the way src/app.ts does (`createLimits`, memory store, the config parsed
 * by the real schema in limits/config.ts) from a compiled build of src/:
 *
 *   npm run build && npx tsc -p bench/tsconfig.json && node bench/dist/experiments/limits-hot-path.js
 *
 * Options: `--dist DIR` (another build of src/, e.g. an older commit's, to compare),
 * `--ms N` (time per measurement, default 300), `--rounds N` (default 7; the median is shown),
 * `--check N` (no timing: run exactly N sessions per case and print the decision metrics, so
 * two builds can be compared for "same decisions").
 *
 * Configs:
 * - plain: the bench's plain smtpgate (bench/peers/smtpgate-policy.ts PLAIN_LIMITS_YAML): every
 *   default (no message quotas, recipientsPerMessage 100, no overrides), connection limits lifted.
 * - quotas: the bench's "with policy" limits (every per-IP, per-user, per-sender rate on, far
 *   above the load) plus two overrides: one for the bench user, one for a network nobody
 *   connects from.
 *
 * Clients: trusted (127.0.0.1, no AUTH: what smtp-source is in W1-W4) and authenticated (the
 * W5 user `bench`, group `staff`).
 */
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Writable } from 'node:stream';
import { Registry } from 'prom-client';
import { parse as parseYaml } from 'yaml';
import { PLAIN_LIMITS_YAML, POLICY_LIMITS_YAML } from '../peers/smtpgate-policy.js';

// The module is loaded from a build at run time, so only the shapes used here are declared.
interface Facts {
  readonly session: string;
  readonly ip: string;
  readonly listener: string;
  readonly user?: string;
  readonly groups?: readonly string[];
}
type Refusal = { readonly code: number; readonly text: string } | undefined;
interface Limits {
  connectionOpened(f: Facts): Promise<Refusal>;
  mailFrom(f: Facts & { sender: string; size?: number }): Promise<Refusal>;
  rcptTo(f: Facts & { recipientsSoFar: number }): Promise<Refusal>;
  messageBytes(f: Facts, bytes: number): Promise<void>;
  connectionClosed(f: { session: string }): void;
  close(): Promise<void>;
}
interface Module {
  readonly createLimits: (opts: { config: unknown; log: unknown; registry: Registry }) => Limits;
  readonly parseConfig: (raw: unknown) => unknown;
  readonly createLogger: (opts: { level: string; format: 'json'; destination: Writable }) => unknown;
}

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

function option(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
}

async function loadModule(dist: string): Promise<Module> {
  const load = async (file: string) => import(pathToFileURL(path.join(dist, file)).href) as Promise<Record<string, unknown>>;
  const [limits, config, logger] = await Promise.all([load('limits/limits.js'), load('limits/config.js'), load('logging/logger.js')]);
  const schema = config.limitsConfigSchema as { parse(raw: unknown): unknown };
  return {
    createLimits: limits.createLimits as Module['createLimits'],
    parseConfig: (raw) => schema.parse(raw),
    createLogger: logger.createLogger as Module['createLogger'],
  };
}

const QUOTAS_YAML = `${POLICY_LIMITS_YAML}  overrides:
    - name: bench-user
      users: [bench]
      messagesPerUser: 20000000/1h
    - name: elsewhere
      cidrs: [198.51.100.0/24]
      messagesPerIp: 5/1h
`;

function limitsSection(yaml: string): unknown {
  return (parseYaml(yaml) as { limits: unknown }).limits;
}

/** What the listener's `#facts` gives for each client (a new object per call, as there). */
const CLIENTS: Record<string, Omit<Facts, 'session'>> = {
  trusted: { ip: '127.0.0.1', listener: 'open' },
  authenticated: { ip: '127.0.0.1', listener: 'submission', user: 'bench', groups: ['staff'] },
};
const SENDER: Record<string, string> = { trusted: 'foo@source.test', authenticated: 'sender@corp.test' };

let refused = 0;
let sessionIds = 0;

/** What one round runs: a fresh connection per message (W2), or a message on an open connection (W1, W3: smtp-source -d). */
type Run = (limits: Limits, client: string, id: string) => Promise<void>;

async function message(limits: Limits, client: string, id: string): Promise<void> {
  const base = CLIENTS[client]!;
  if (await limits.mailFrom({ session: id, ...base, sender: SENDER[client]!, size: 4096 })) refused++;
  if (await limits.rcptTo({ session: id, ...base, recipientsSoFar: 0 })) refused++;
  await limits.messageBytes({ session: id, ...base }, 4096);
}

async function session(limits: Limits, client: string): Promise<void> {
  const id = `bench${++sessionIds}`;
  if (await limits.connectionOpened({ session: id, ...CLIENTS[client]! })) refused++;
  await message(limits, client, id);
  limits.connectionClosed({ session: id });
}

const RUNS: Record<'session' | 'message', Run> = {
  session: (limits, client) => session(limits, client),
  message,
};

/**
 * Runs per CPU second (this process's user + system time), for about `ms` ms of wall time.
 * CPU time rather than wall time: the bench machine is shared, and a neighbour's load
 * stretches the wall clock far more than this process's own CPU time.
 */
async function runsPerCpuSecond(limits: Limits, client: string, run: Run, id: string, ms: number): Promise<number> {
  let n = 0;
  const batch = 200;
  const cpu = process.cpuUsage();
  const until = process.hrtime.bigint() + BigInt(ms) * 1_000_000n;
  while (process.hrtime.bigint() < until) {
    for (let i = 0; i < batch; i++) await run(limits, client, id);
    n += batch;
  }
  const used = process.cpuUsage(cpu);
  return (n * 1e6) / (used.user + used.system);
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const dist = path.resolve(option('--dist') ?? path.join(REPO_ROOT, 'dist'));
  const ms = Number(option('--ms') ?? 300);
  const rounds = Number(option('--rounds') ?? 7);
  const check = option('--check') === undefined ? undefined : Number(option('--check'));
  const mod = await loadModule(dist);
  let logLines = 0;
  const sink = new Writable({
    write(_chunk, _enc, cb) {
      logLines++;
      cb();
    },
  });

  if (check === undefined) {
    console.log(`limits: ${dist}; ${rounds} rounds of ${ms} ms, median, per CPU second`);
    console.log('session: open, MAIL, RCPT, bytes, close; message: MAIL, RCPT, bytes on an open connection');
    console.log(`${'config'.padEnd(10)}${'client'.padEnd(16)}${'sessions/cpu-s'.padStart(16)}${'µs'.padStart(8)}${'messages/cpu-s'.padStart(16)}${'µs'.padStart(8)}`);
  }
  for (const [name, yaml] of [
    ['plain', PLAIN_LIMITS_YAML],
    ['quotas', QUOTAS_YAML],
  ] as const) {
    for (const client of Object.keys(CLIENTS)) {
      const registry = new Registry();
      const log = mod.createLogger({ level: 'info', format: 'json', destination: sink });
      const limits = mod.createLimits({ config: mod.parseConfig(limitsSection(yaml)), log, registry });
      if (check !== undefined) {
        for (let i = 0; i < check; i++) await session(limits, client);
        console.log(`${name.padEnd(10)}${client}: ${check} sessions`);
        const series = (await registry.getMetricsAsJSON()).filter((m) => m.name.startsWith('smtpgate_'));
        for (const m of series) for (const v of m.values) if (v.value > 0) console.log(`    ${m.name}${JSON.stringify(v.labels)} ${v.value}`);
        await limits.close();
        continue;
      }
      // The connection the "message" runs use, held open throughout.
      const open = `bench-open-${name}-${client}`;
      if (await limits.connectionOpened({ session: open, ...CLIENTS[client]! })) refused++;
      const cells: string[] = [];
      for (const run of Object.values(RUNS)) {
        // Warm up before timing, so the JIT has settled.
        await runsPerCpuSecond(limits, client, run, open, 200);
        const runs: number[] = [];
        for (let r = 0; r < rounds; r++) runs.push(await runsPerCpuSecond(limits, client, run, open, ms));
        const ops = median(runs);
        cells.push(`${Math.round(ops).toLocaleString('en-US').padStart(16)}${(1e6 / ops).toFixed(2).padStart(8)}`);
      }
      console.log(`${name.padEnd(10)}${client.padEnd(16)}${cells.join('')}`);
      limits.connectionClosed({ session: open });
      await limits.close();
    }
  }
  if (refused > 0) throw new Error(`${refused} checks refused: the bench configs must allow everything`);
  if (logLines > 0) console.log(`(${logLines} log lines written at level info)`);
}

await main();
