/**
 * One measured run: one workload through one peer, with a fresh sink and a fresh instance of
 * the peer, torn down afterwards whatever happens.
 *
 * A run only counts when the sink received every message (smtp-source doesn't fail on a
 * refused message, it just goes on), or every W5 session completed, or every W6 connection
 * opened. Otherwise it is recorded as failed with the reason.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { startSink, runSource, SENDER, RECIPIENT } from './lib/postfix-tools.js';
import { spawnChild, RssSampler, settledRssKb, procCpuSeconds, idleCpuSeconds, treeCpuSeconds, sleep } from './lib/processes.js';
import { startBenchDirectory, type BenchDirectory } from './lib/bench-directory.js';
import type { BenchAppPasswords } from './lib/bench-app-passwords.js';
import type { Peer, RunningPeer, TlsFiles } from './peers/peer.js';
import type { Workload } from './workloads.js';
import { SmtpDialogue } from './clients/smtp-dialogue.js';

const CLIENTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'clients');

export interface RunEnv {
  readonly workDir: string;
  readonly tls: TlsFiles;
  readonly usersFiles: { readonly default: string; readonly cost4: string };
  /** The users in both users files; a tls-auth workload signs in as the first `users` of them. */
  readonly users: readonly { readonly name: string; readonly password: string }[];
  /** The same users' app passwords and their file, for the workloads that sign in with them (W5-app). */
  readonly appPasswords: BenchAppPasswords;
  readonly profileDir?: string;
  readonly smtpgateNodeArgs?: readonly string[];
  readonly smtpgateEnv?: Readonly<Record<string, string>>;
}

export interface RunResult {
  readonly workload: string;
  readonly peer: string;
  readonly rep: number;
  readonly ok: boolean;
  /** The workload's metric (msg/s, ms, MB/s, sessions/s, KB per connection). */
  readonly value?: number;
  /** Other figures: elapsed seconds, peer CPU seconds, RSS growth, counts. */
  readonly extra: Record<string, number>;
  readonly error?: string;
}

export async function measure(w: Workload, peer: Peer, rep: number, env: RunEnv): Promise<RunResult> {
  const base = { workload: w.id, peer: peer.id, rep };
  const began = Date.now();
  const dir = await mkdtemp(path.join(env.workDir, `${w.id}-${peer.id.replace('+', '-')}-r${rep}-`));
  const sink = await startSink({ maxConnections: w.kind === 'idle' ? w.count + 500 : 2000 });
  let running: RunningPeer | undefined;
  let directory: BenchDirectory | undefined;
  try {
    // W5-ldap: a fresh directory per run too, like the sink.
    if (w.kind === 'tls-auth' && w.authSource === 'ldap') directory = await startBenchDirectory(env.users.slice(0, w.users), env.tls, SENDER, dir);
    running = await peer.start({
      dir,
      sinkPort: sink.port,
      sinkPid: sink.child.pid,
      tls: env.tls,
      usersFile: w.kind === 'tls-auth' && w.bcryptCost === 4 ? env.usersFiles.cost4 : env.usersFiles.default,
      authCache: w.kind === 'tls-auth' && w.authCache,
      credentialsFile: w.kind === 'tls-auth' && w.appPasswords ? env.appPasswords.file : undefined,
      ldap: directory,
      logLevel: w.logLevel,
      dkim: w.dkim ? await benchDkimKey(dir) : undefined,
      profileDir: env.profileDir,
      nodeArgs: env.smtpgateNodeArgs,
      env: env.smtpgateEnv,
      processes: w.processes,
    });
    const outcome = await (w.kind === 'source'
      ? sourceRun(w, running, sink)
      : w.kind === 'tls-auth'
        ? tlsAuthRun(w, running, sink, env, dir, directory)
        : w.kind === 'idle'
          ? idleRun(w, running, dir)
          : greetingRun(w, running));
    // Start to measured end, teardown excluded: what the run costs the bench's time budget.
    return { ...base, ...outcome, extra: { ...outcome.extra, wallSeconds: (Date.now() - began) / 1000 } };
  } catch (err) {
    return { ...base, ok: false, extra: {}, error: `${(err as Error).message} (files: ${dir})` };
  } finally {
    await running?.stop().catch(() => undefined);
    await directory?.stop().catch(() => undefined);
    await sink.stop();
  }
}

type Outcome = Omit<RunResult, 'workload' | 'peer' | 'rep'>;
type Sink = Awaited<ReturnType<typeof startSink>>;

async function sourceRun(w: Extract<Workload, { kind: 'source' }>, peer: RunningPeer, sink: Sink): Promise<Outcome> {
  // Before every timed smtp-source run: JIT, pools and caches warm, for every peer alike.
  const warm = await runSource(w.warmUp, peer.port, 60_000);
  const warmed = await sink.waitForMessages(w.warmUp.messages);
  if (warmed !== w.warmUp.messages) return { ok: false, extra: {}, error: `warm-up: sink got ${warmed} of ${w.warmUp.messages} messages; ${warm.stderr.slice(0, 300)}` };
  const sampler = w.measure === 'mbPerSec' ? new RssSampler(peer.pid) : undefined;
  await sampler?.start();
  // The whole tree: a cluster primary and its workers, nginx's master and its workers.
  const cpuBefore = await treeCpuSeconds(peer.pid);
  const run = await runSource(w.load, peer.port, 10 * 60_000);
  const cpu = (await treeCpuSeconds(peer.pid)) - cpuBefore;
  const rss = await sampler?.stop();
  const expected = w.warmUp.messages + w.load.messages;
  const got = await sink.waitForMessages(expected);
  const extra: Record<string, number> = { seconds: run.seconds, peerCpuSeconds: cpu, messages: w.load.messages };
  if (rss) extra.rssGrowthMb = (rss.peakKb - rss.baselineKb) / 1024;
  const split = w.processes && w.processes > 1 && !w.load.reuse ? await connectionSplit(peer, expected) : undefined;
  if (split) Object.assign(extra, split);
  if (got !== expected || run.exitCode !== 0) {
    const problem = got !== expected ? `sink got ${got - w.warmUp.messages} of ${w.load.messages} messages` : `smtp-source exited ${run.exitCode}`;
    return { ok: false, extra, error: `${problem}; ${run.stderr.split('\n').slice(0, 3).join(' | ')}` };
  }
  const { load } = w;
  const value =
    w.measure === 'msgPerSec'
      ? load.messages / run.seconds
      : w.measure === 'msPerMessagePerSession'
        ? (run.seconds * 1000 * load.sessions) / load.messages
        : (load.messages * load.length) / 1e6 / run.seconds;
  return { ok: true, value, extra };
}

/**
 * How evenly the processes shared the connections (warm-up and timed run: one per message
 * here): the busiest one's share, 0.5 being even with two. Waits for the log to hold them all.
 */
async function connectionSplit(peer: RunningPeer, connections: number): Promise<Record<string, number> | undefined> {
  if (!peer.connectionsPerProcess) return undefined;
  const deadline = Date.now() + 5000;
  for (;;) {
    const counts = [...(await peer.connectionsPerProcess()).values()];
    const total = counts.reduce((a, b) => a + b, 0);
    if (total >= connections || Date.now() > deadline) {
      return total ? { busiestProcessShare: Math.max(...counts) / total, processesSeen: counts.length } : undefined;
    }
    await sleep(100);
  }
}

async function tlsAuthRun(w: Extract<Workload, { kind: 'tls-auth' }>, peer: RunningPeer, sink: Sink, env: RunEnv, dir: string, directory?: BenchDirectory): Promise<Outcome> {
  if (!peer.startTlsPort) return { ok: false, extra: {}, error: 'the peer has no STARTTLS listener' };
  const all = w.appPasswords ? env.appPasswords.users : env.users;
  const users = all.slice(0, w.users);
  if (users.length < w.users) return { ok: false, extra: {}, error: `the users file has ${all.length} users, the workload wants ${w.users}` };
  const options = {
    port: peer.startTlsPort,
    sessions: w.sessions,
    concurrency: w.concurrency,
    users,
    from: SENDER,
    to: RECIPIENT,
    bytes: w.bytes,
    timeoutMs: 120_000,
  };
  // With the cache on: each user signs in once, one after the other, so the timed run sees
  // the cache's steady state rather than its first bcrypt verifications (or directory binds).
  let warm = { ok: 0, seconds: 0 };
  if (w.authCache) {
    const r = await loadGenerator({ ...options, sessions: users.length, concurrency: 1 }, path.join(dir, 'warm-up.log'));
    if (r.failed > 0 || r.ok !== users.length) return { ok: false, extra: {}, error: `warm-up: ${r.ok} of ${users.length} sessions completed; ${r.errors.join(' | ')}` };
    warm = r;
  }
  // The peer's start-up work done (smtpgate's dummy bcrypt hash), so that it is neither timed nor counted.
  const cpuBefore = await idleCpuSeconds(peer.pid);
  const slapdCpuBefore = directory ? await procCpuSeconds(directory.pid) : 0;
  const r = await loadGenerator(options, path.join(dir, 'load-generator.log'));
  const cpu = (await procCpuSeconds(peer.pid)) - cpuBefore;
  const slapdCpu = directory ? (await procCpuSeconds(directory.pid)) - slapdCpuBefore : 0;
  const got = (await sink.waitForMessages(warm.ok + r.ok, 2000)) - warm.ok;
  const extra = {
    seconds: r.seconds,
    peerCpuSeconds: cpu,
    sessions: r.ok,
    ...(w.authCache ? { warmUpSeconds: warm.seconds } : {}),
    ...(directory ? { slapdCpuSeconds: slapdCpu } : {}),
  };
  if (r.failed > 0 || r.ok !== w.sessions || got !== r.ok) {
    return { ok: false, extra, error: `${r.ok} of ${w.sessions} sessions completed (sink got ${got}); ${r.errors.join(' | ')}` };
  }
  return { ok: true, value: r.ok / r.seconds, extra };
}

/** Runs bench/clients/tls-auth-load.js once and reads its one-line result. */
async function loadGenerator(options: object, logFile: string): Promise<{ ok: number; failed: number; seconds: number; errors: string[] }> {
  const child = spawnChild('tls-auth-load', process.execPath, [path.join(CLIENTS, 'tls-auth-load.js'), JSON.stringify(options)], { pipe: true, logFile });
  try {
    return JSON.parse(await firstLine(child.process.stdout!, 10 * 60_000)) as { ok: number; failed: number; seconds: number; errors: string[] };
  } finally {
    await child.stop(1000);
  }
}

async function idleRun(w: Extract<Workload, { kind: 'idle' }>, peer: RunningPeer, dir: string): Promise<Outcome> {
  const port = w.tls ? peer.startTlsPort : peer.port;
  if (!port) return { ok: false, extra: {}, error: 'the peer has no STARTTLS listener' };
  const before = await settledRssKb(peer.pid);
  const options = { port, count: w.count, concurrency: 200, tls: w.tls, timeoutMs: 60_000, maxLifetimeMs: 10 * 60_000 };
  const child = spawnChild('idle-clients', process.execPath, [path.join(CLIENTS, 'idle-clients.js'), JSON.stringify(options)], {
    pipe: true,
    stdin: true,
    logFile: path.join(dir, 'load-generator.log'),
  });
  try {
    const r = JSON.parse(await firstLine(child.process.stdout!, 5 * 60_000)) as { open: number; failed: number; seconds: number; errors: string[] };
    // Let the last handshakes' garbage settle before sampling, as a long-idle server would.
    const after = await settledRssKb(peer.pid, 7, 300);
    const extra = { openSeconds: r.seconds, connections: r.open, rssBeforeMb: before / 1024, rssAfterMb: after / 1024 };
    if (r.open !== w.count) return { ok: false, extra, error: `${r.open} of ${w.count} connections opened; ${r.errors.join(' | ')}` };
    return { ok: true, value: (after - before) / w.count, extra };
  } finally {
    child.process.stdin?.end();
    await child.stop(5000);
  }
}

/**
 * Connect → first byte of the 220 greeting, one connection at a time (then QUIT): the fixed
 * delay a client waits before it may speak, which bounds new-connection throughput at
 * sessions ÷ delay.
 */
async function greetingRun(w: Extract<Workload, { kind: 'greeting' }>, peer: RunningPeer): Promise<Outcome> {
  const times: number[] = [];
  for (let i = 0; i < w.connections; i++) {
    const started = process.hrtime.bigint();
    const d = await SmtpDialogue.connect(peer.port, 10_000);
    times.push(Number(process.hrtime.bigint() - started) / 1e6);
    await d.command('QUIT', 221).catch(() => undefined);
    d.close();
  }
  times.sort((a, b) => a - b);
  return { ok: true, value: times[Math.floor(times.length / 2)]!, extra: { minMs: times[0]!, maxMs: times[times.length - 1]! } };
}

/** The first line a child prints on stdout, or an error when it prints none in time. */
function firstLine(stream: NodeJS.ReadableStream, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: stream });
    const timer = setTimeout(() => {
      rl.close();
      reject(new Error(`no result within ${timeoutMs} ms`));
    }, timeoutMs);
    rl.once('line', (line) => {
      clearTimeout(timer);
      // Settle first: close() emits 'close' at once.
      resolve(line);
      rl.close();
    });
    rl.once('close', () => {
      clearTimeout(timer);
      reject(new Error('the load generator ended without a result'));
    });
  });
}

/** A DKIM key for the sender's domain (W4-dkim), written into the run's folder. */
async function benchDkimKey(dir: string): Promise<{ domain: string; keyFile: string }> {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  const keyFile = path.join(dir, 'dkim.key');
  await writeFile(keyFile, privateKey, { mode: 0o600 });
  return { domain: SENDER.slice(SENDER.indexOf('@') + 1), keyFile };
}
