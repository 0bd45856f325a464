/**
 * `npm run bench`: smtpgate against the physical limit (smtp-source → smtp-sink), nginx's mail
 * proxy and Haraka, all in the same run on the same machine with the same backend.
 *
 *   npm run bench                      the full run (3 repetitions)
 *   npm run bench -- --quick           a smoke run: counts ÷ 10, 1 repetition
 *   npm run bench -- --reps 5 --only W1,W3 --peers smtpgate,nginx
 *   npm run bench -- --profile         also write smtpgate's V8 CPU profiles (node --cpu-prof)
 *   npm run bench -- --haraka-dir DIR  reuse an `npm install --prefix DIR Haraka`
 *   npm run bench -- --keep            keep the temp folder (configs, logs) afterwards
 *   npm run bench -- --smtpgate-node-arg=--max-semi-space-size=2   (repeatable) an experiment:
 *                                      node arguments for smtpgate, recorded in the JSON
 *   npm run bench -- --smtpgate-env MALLOC_ARENA_MAX=2   (repeatable) the same, for the environment
 *   npm run bench -- --memory-reps 3   repeat the memory workloads (W6) too; they run once by
 *                                      default, which keeps the full run under 15 minutes
 *
 * Prints one table and writes the same as JSON to bench/results/<date>[-quick].json.
 * Not part of `npm test`. Traffic stays on 127.0.0.1; every child is ended at the end.
 */
import { execFile, spawn } from 'node:child_process';
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { measure, type RunEnv, type RunResult } from './measure.js';
import { installExitHandlers, stopAll } from './lib/processes.js';
import { POSTFIX_INSTALL, postfixToolsInstalled } from './lib/postfix-tools.js';
import { writeBenchAppPasswords } from './lib/bench-app-passwords.js';
import { DirectPeer } from './peers/direct.js';
import { HarakaPeer } from './peers/haraka.js';
import { NginxPeer } from './peers/nginx.js';
import type { Peer, PeerId, TlsFiles } from './peers/peer.js';
import { REPO_ROOT, SMTPGATE_MAIN, SmtpgatePeer } from './peers/smtpgate.js';
import { renderTable, renderVerdicts, summarize, type PeerStatus } from './report.js';
import { BENCH_USERS, describeLoad, workloads, type Workload } from './workloads.js';

const run = promisify(execFile);

interface Options {
  quick: boolean;
  reps: number;
  only?: string[];
  peers?: string[];
  harakaDir?: string;
  profile: boolean;
  keep: boolean;
  /** Repetitions of the memory workloads (W6); 1 unless given. */
  memoryReps: number;
  /** Extra node arguments for smtpgate (experiments only; the report says they were used). */
  smtpgateNodeArgs: string[];
  /** Extra environment for smtpgate (experiments only, recorded too). */
  smtpgateEnv: Record<string, string>;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { quick: false, reps: 0, profile: false, keep: false, memoryReps: 1, smtpgateNodeArgs: [], smtpgateEnv: {} };
  for (let i = 0; i < argv.length; i++) {
    // "--name=value" and "--name value" both work.
    const eq = argv[i]!.indexOf('=');
    const a = eq > 0 ? argv[i]!.slice(0, eq) : argv[i]!;
    const inline = eq > 0 ? argv[i]!.slice(eq + 1) : undefined;
    const value = () => {
      if (inline !== undefined) return inline;
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--quick') o.quick = true;
    else if (a === '--reps') o.reps = Number(value());
    else if (a === '--only') o.only = value().split(',');
    else if (a === '--peers') o.peers = value().split(',');
    else if (a === '--haraka-dir') o.harakaDir = path.resolve(value());
    else if (a === '--profile') o.profile = true;
    else if (a === '--keep') o.keep = true;
    else if (a === '--memory-reps') o.memoryReps = Number(value());
    else if (a === '--smtpgate-node-arg') o.smtpgateNodeArgs.push(value());
    else if (a === '--smtpgate-env') {
      const [k, ...v] = value().split('=');
      o.smtpgateEnv[k!] = v.join('=');
    }
    else throw new Error(`unknown option ${a} (see the top of bench/run.ts)`);
  }
  if (!o.reps) o.reps = o.quick ? 1 : 3;
  if (!Number.isInteger(o.reps) || o.reps < 1 || o.reps > 20) throw new Error('--reps: expected 1-20');
  return o;
}

const say = (text: string) => process.stderr.write(text + '\n');

async function machine() {
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? 'unknown';
  const git = await run('git', ['-C', REPO_ROOT, 'describe', '--always', '--dirty']).then(
    (r) => r.stdout.trim(),
    () => 'unknown',
  );
  return {
    nproc: os.availableParallelism(),
    cpuModel: model,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    kernel: os.release(),
    smtpgateCommit: git,
    loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100),
  };
}

/**
 * A self-signed ECDSA P-256 certificate for "localhost" (what an ACME client issues by default),
 * also valid for 127.0.0.1: the W5-ldap workloads' slapd serves it at ldaps://127.0.0.1.
 */
async function makeCertificate(dir: string): Promise<TlsFiles> {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ]);
  return { cert, key };
}

/** `smtpgate user add` writes the users file, so the hash is the project's own default. */
async function addUser(file: string, name: string, password: string, cost?: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const args = [SMTPGATE_MAIN, 'user', 'add', name, '--file', file, ...(cost ? ['--cost', String(cost)] : [])];
    const p = spawn(process.execPath, args, { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (c: Buffer) => (err += c.toString()));
    p.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`smtpgate user add: ${err.trim()}`))));
    p.stdin.end(password + '\n');
  });
}

async function resultFile(quick: boolean): Promise<string> {
  const dir = path.join(REPO_ROOT, 'bench', 'results');
  await mkdir(dir, { recursive: true });
  const date = new Date().toISOString().slice(0, 10);
  for (let n = 1; ; n++) {
    const file = path.join(dir, `${date}${quick ? '-quick' : ''}${n > 1 ? `-${n}` : ''}.json`);
    try {
      await access(file);
    } catch {
      return file;
    }
  }
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  installExitHandlers();
  if (!(await postfixToolsInstalled())) {
    say(`bench: smtp-source and smtp-sink (the load generator and the backend) are not installed: ${POSTFIX_INSTALL}`);
    return 1;
  }
  const started = Date.now();
  const info = await machine();
  const workDir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-bench-'));
  say(`bench: ${opts.quick ? 'quick' : 'full'} run, ${opts.reps} repetition(s), work folder ${workDir}`);
  const profileDir = opts.profile ? path.join(REPO_ROOT, 'bench', 'results', `profiles-${new Date().toISOString().replace(/[:.]/g, '-')}`) : undefined;
  if (profileDir) await mkdir(profileDir, { recursive: true });

  const tls = await makeCertificate(workDir);
  const users = BENCH_USERS;
  const usersFiles = { default: path.join(workDir, 'users'), cost4: path.join(workDir, 'users-cost4') };
  for (const u of users) {
    await addUser(usersFiles.default, u.name, u.password);
    await addUser(usersFiles.cost4, u.name, u.password, 4);
  }
  const defaultCost = Number(/^[^:]+:\$2[aby]\$(\d\d)\$/m.exec(await readFile(usersFiles.default, 'utf8'))?.[1]);
  const appPasswords = await writeBenchAppPasswords(users, path.join(workDir, 'credentials'));
  const env: RunEnv = { workDir, tls, usersFiles, users, appPasswords, profileDir, smtpgateNodeArgs: opts.smtpgateNodeArgs, smtpgateEnv: opts.smtpgateEnv };
  const experiment = [...Object.entries(opts.smtpgateEnv).map(([k, v]) => `${k}=${v}`), ...(opts.smtpgateNodeArgs.length ? ['node', ...opts.smtpgateNodeArgs] : [])].join(' ');
  if (experiment) say(`bench: EXPERIMENT: smtpgate runs with ${experiment}`);

  const list = workloads(opts.quick).filter((w) => !opts.only || opts.only.includes(w.id));
  // A peer none of the workloads runs isn't prepared: `--only W5` needs no npm install of Haraka.
  const wanted = new Set(list.flatMap((w) => w.peers));
  const allPeers: Peer[] = [new DirectPeer(), new SmtpgatePeer(false), new SmtpgatePeer(true), new NginxPeer(), new HarakaPeer(opts.harakaDir)];
  const statuses: PeerStatus[] = [];
  const ready: Peer[] = [];
  for (const p of allPeers) {
    const skipped = opts.peers && !opts.peers.includes(p.id) ? '--peers' : !wanted.has(p.id) ? 'no selected workload runs it' : undefined;
    if (skipped) {
      statuses.push({ id: p.id, description: p.description, skipped });
      continue;
    }
    const unavailable = await p.prepare(workDir);
    if (unavailable) say(`bench: ${p.id} not available (${unavailable.reason}); install: ${unavailable.install}`);
    else ready.push(p);
    statuses.push({ id: p.id, description: p.description, unavailable });
  }

  const describe = (w: Workload) => (w.kind === 'tls-auth' ? describeLoad(w).replace('cost 12 (default)', `cost ${defaultCost} (default)`) : describeLoad(w));
  const runs: RunResult[] = [];
  for (let rep = 1; rep <= opts.reps; rep++) {
    for (const w of list) {
      if (w.memory && rep > opts.memoryReps) continue;
      const peers = ready.filter((p) => w.peers.includes(p.id));
      // A different order each rep, so no peer always runs right after the same neighbour.
      const order = peers.map((_, i) => peers[(i + rep - 1) % peers.length]!);
      for (const p of order) {
        const r = await measure(w, p, rep, env);
        runs.push(r);
        const value = r.ok ? `${r.value!.toFixed(w.metric.decimals)} ${w.metric.unit}` : `FAILED: ${r.error}`;
        const extra = Object.entries(r.extra).map(([k, v]) => `${k}=${Math.round(v * 100) / 100}`).join(' ');
        say(`[rep ${rep}/${opts.reps}] ${w.id.padEnd(8)} ${p.id.padEnd(15)} ${value}  ${extra}`);
      }
    }
  }

  const summaries = summarize(list, runs, statuses, describe);
  const table = renderTable(summaries);
  const minutes = (Date.now() - started) / 60_000;
  const out = await resultFile(opts.quick);
  await writeFile(
    out,
    JSON.stringify(
      {
        date: new Date().toISOString(),
        mode: opts.quick ? 'quick' : 'full',
        experiment: experiment || undefined,
        repetitions: opts.reps,
        memoryRepetitions: Math.min(opts.reps, opts.memoryReps),
        durationMinutes: Math.round(minutes * 10) / 10,
        machine: { ...info, loadAverageAtEnd: os.loadavg().map((l) => Math.round(l * 100) / 100) },
        bcryptDefaultCost: defaultCost,
        peers: statuses,
        workloads: list.map((w) => ({ id: w.id, title: w.title, load: describe(w), unit: w.metric.unit, better: w.metric.better })),
        summary: summaries,
        table,
        runs,
      },
      null,
      2,
    ) + '\n',
  );
  process.stdout.write(
    `\nsmtpgate benchmarks (${opts.quick ? 'quick' : 'full'} run, median of ${opts.reps} rep(s), ${minutes.toFixed(1)} min)\n` +
      `machine: ${info.nproc} × ${info.cpuModel}, node ${info.node}, smtpgate ${info.smtpgateCommit}\n\n` +
      table +
      '\n\nPeers:\n' +
      statuses.map((s) => `- ${s.id}: ${s.unavailable ? `NOT INSTALLED (${s.unavailable.reason}): ${s.unavailable.install}` : s.skipped ? `skipped (${s.skipped})` : s.description}`).join('\n') +
      '\n\nTargets:\n' +
      renderVerdicts(summaries) +
      `\n\nJSON: ${path.relative(process.cwd(), out)}\n` +
      (profileDir ? `CPU profiles: ${profileDir}\n` : ''),
  );
  const failed = runs.filter((r) => !r.ok).length;
  await stopAll();
  if (opts.keep || failed) say(`bench: ${failed} failed run(s); configs and logs kept in ${workDir}`);
  else await rm(workDir, { recursive: true, force: true });
  return 0;
}

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    say(`bench: ${(err as Error).stack ?? String(err)}`);
    await stopAll();
    process.exit(1);
  },
);
