/**
 * EXPERIMENT, for measurement only: the CPU a message costs in the session core alone
 * (src/session/: ClientSession and its Checkpoint, with the real limits and policy), with no
 * sockets and no SMTP. One message on a connection held open (W1, W3: smtp-source -d) is
 *
 *   session.mail → session.rcpt → the data-stage checkpoint → the bytes quota (limitsFacts)
 *
 * against a backend that accepts everything at once. Limits are built as src/app.ts builds them
 * (memory store, the bench's limits sections); the policy is none (plain: the built-in relay
 * protection only) or the bench's 14 rules (bench/peers/smtpgate-policy.ts). The client is
 * smtp-source's: trusted, no AUTH.
 *
 *   npm run build && npx tsc -p bench/tsconfig.json && node bench/dist/experiments/session-hot-path.js
 *
 * Options: `--dist DIR` (another build of src/, e.g. an older commit's, to compare; it needs
 * session/client-session.js), `--ms N` (time per measurement, default 300), `--rounds N`
 * (default 9; the median is shown).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Registry } from 'prom-client';
import { parse as parseYaml } from 'yaml';
import { PLAIN_LIMITS_YAML, POLICY_LIMITS_YAML, writePolicyFiles } from '../peers/smtpgate-policy.js';

// The modules are loaded from a build at run time, so only the shapes used here are declared.
type Verdict = { readonly refusal?: unknown };
interface Session {
  readonly transaction: unknown;
  readonly checkpoint: { at(stage: 'data', source: Session, facts: () => object): Promise<Verdict> };
  connect(): Promise<Verdict>;
  mail(address: object): Promise<Verdict>;
  rcpt(address: object, tx: unknown): Promise<Verdict>;
  limitsFacts(): object;
}
interface Limits {
  connectionOpened(f: object): Promise<unknown>;
  messageBytes(f: object, bytes: number): Promise<void>;
  close(): Promise<void>;
}

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

function option(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
}

const SENDER = { address: 'sender@corp.test', args: false };
const RECIPIENT = { address: 'rcpt@corp.test', args: false };
let refused = 0;

async function build(dist: string, policyDir: string | undefined) {
  const load = async (file: string) => import(pathToFileURL(path.join(dist, file)).href) as Promise<Record<string, any>>;
  const [session, limitsMod, config, logger, policyLoad, catalogue, buildInfo, relay] = await Promise.all([
    load('session/client-session.js'),
    load('limits/limits.js'),
    load('limits/config.js'),
    load('logging/logger.js'),
    load('policy/load.js'),
    load('metrics/catalogue.js'),
    load('build-info.js'),
    load('relay/backend.js'),
  ]);
  const log = logger.createLogger({ level: 'info', format: 'json', destination: new Writable({ write: (_c, _e, done) => done() }) });
  const yaml = policyDir ? POLICY_LIMITS_YAML : PLAIN_LIMITS_YAML;
  const limits: Limits = limitsMod.createLimits({ config: config.limitsConfigSchema.parse((parseYaml(yaml) as { limits: unknown }).limits), log, registry: new Registry() });
  const policy = policyDir ? await policyLoad.loadPolicySet(policyDir) : policyLoad.emptyPolicySet('UTC');
  const reply = { code: 250, text: '2.0.0 Ok', lines: ['2.0.0 Ok'] };
  const wire = { rcpt: () => Promise.resolve(reply) };
  const backend = { mail: () => Promise.resolve(new relay.Transaction(backend, wire, false, reply)), close: async () => {} };
  const recipients: string[] = [];
  const connection = {
    id: 'bench1', remoteAddress: '127.0.0.1', remotePort: 40000,
    secure: () => false, tlsVersion: () => undefined, tlsCipher: () => undefined, helo: () => 'source.test', greeting: () => 'EHLO',
    inTransaction: () => true, recipients: () => recipients.map((r) => r), recipientCount: () => recipients.length,
  };
  const deps = {
    listener: 'open', limits, hostname: 'gate.bench.test', data: { receivedHeader: true, authenticatedUserHeader: true },
    dataPace: { deadline: 3_600_000, minRate: 0, grace: 0 }, attributes: () => ({ groups: [], addresses: [] }), authenticator: undefined,
    clientCerts: undefined, timeouts: { session: 3_600_000, tlsHandshake: 10_000 }, requireTls: { untrusted: false, trusted: false }, requireAuth: false,
    metrics: catalogue.createMetrics(buildInfo.readBuildInfo()), clock: Date.now, hangUp: () => {},
  };
  await limits.connectionOpened({ session: 'bench1', ip: '127.0.0.1', listener: 'open' });
  const s: Session = new session.ClientSession(deps, { connection, log: log.child({ session: 'bench1' }), backend, policy, trusted: true });
  await s.connect();
  const message = async (): Promise<void> => {
    recipients.length = 0;
    if ((await s.mail(SENDER)).refusal) refused++;
    if ((await s.rcpt(RECIPIENT, s.transaction)).refusal) refused++;
    recipients.push(RECIPIENT.address);
    if ((await s.checkpoint.at('data', s, () => ({ from: SENDER.address, messageSize: 4096 }))).refusal) refused++;
    await limits.messageBytes(s.limitsFacts(), 4096);
  };
  return { message, limits };
}

/** CPU µs per message (this process's user + system time), for about `ms` ms of wall time. */
async function cpuPerMessage(message: () => Promise<void>, ms: number): Promise<number> {
  let n = 0;
  const cpu = process.cpuUsage();
  const until = Date.now() + ms;
  while (Date.now() < until) {
    for (let i = 0; i < 200; i++) await message();
    n += 200;
  }
  const used = process.cpuUsage(cpu);
  return (used.user + used.system) / n;
}

async function main(): Promise<void> {
  const dist = path.resolve(option('--dist') ?? path.join(REPO_ROOT, 'dist'));
  const ms = Number(option('--ms') ?? 300);
  const rounds = Number(option('--rounds') ?? 9);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-session-'));
  console.log(`session core: ${dist}; ${rounds} rounds of ${ms} ms; CPU µs per message (MAIL, RCPT, DATA checks, bytes quota)`);
  try {
    for (const name of ['plain', 'policy'] as const) {
      const { message, limits } = await build(dist, name === 'policy' ? (await writePolicyFiles(dir)).policies : undefined);
      // Warm up before timing, so the JIT has settled.
      for (let i = 0; i < 3; i++) await cpuPerMessage(message, ms);
      const runs: number[] = [];
      for (let r = 0; r < rounds; r++) runs.push(await cpuPerMessage(message, ms));
      runs.sort((a, b) => a - b);
      console.log(`${name.padEnd(8)} median ${runs[Math.floor(rounds / 2)]!.toFixed(2)} µs (min ${runs[0]!.toFixed(2)}, max ${runs[rounds - 1]!.toFixed(2)})`);
      await limits.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  if (refused > 0) throw new Error(`${refused} checks refused: the bench configs must allow everything`);
  process.exit(0);
}

await main();
