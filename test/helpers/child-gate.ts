/**
 * smtpgate as a separate process (`node dist/cli/main.js run --config …`), for tests where the
 * process itself is the subject: that it survives what clients do to it, and how much memory
 * it holds. The config goes through writeGateFiles like an in-process gate's; its JSON log
 * lines are read from stdout to learn the bound ports. Needs `npm run build` first.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { writeGateFiles, type GateFiles, type StartGateOptions } from './gate.js';
import { findProgram } from './programs.js';

export const CLI = path.resolve(import.meta.dirname, '../../dist/cli/main.js');

export interface ChildGate {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly files: GateFiles;
  port(listener: string): number;
  readonly metricsPort: number;
  /** Everything written to stdout and stderr so far. */
  output(): string;
  /** Parsed JSON log lines so far (stdout). */
  readonly logs: Record<string, unknown>[];
  /** True while the process has not exited. */
  readonly alive: boolean;
  /** SIGINT (immediate stop), SIGKILL after 10 s; resolves when the process is gone. */
  stop(): Promise<void>;
}

/** The "Max open files" limits (soft and hard) of a process (Linux). */
export function openFilesLimits(pid: number | 'self' = 'self'): { soft: number; hard: number } {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
  if (!m) throw new Error(`no "Max open files" in /proc/${pid}/limits`);
  const n = (v: string) => (v === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(v));
  return { soft: n(m[1]!), hard: n(m[2]!) };
}

/** VmRSS of a process, in bytes (Linux). */
export function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/**
 * A command line for `node …` that may open at least `nofile` files: as it is when this process
 * already may, otherwise through `prlimit` (which sets the limit and execs, so the pid stays the
 * node process's). Raising the soft limit up to the hard one needs no privilege; beyond it,
 * prlimit raises both and needs CAP_SYS_RESOURCE (root in most CI containers).
 */
export function withOpenFiles(nofile: number | undefined, argv: string[]): { cmd: string; args: string[] } {
  const { soft, hard } = openFilesLimits();
  if (nofile === undefined || soft >= nofile) return { cmd: process.execPath, args: argv };
  const prlimit = findProgram('prlimit');
  if (!prlimit) throw new Error(`this process may open ${soft} files, ${nofile} are needed, and prlimit (util-linux) is missing`);
  const limit = hard >= nofile ? `${nofile}:` : `${nofile}:${nofile}`;
  return { cmd: prlimit, args: [`--nofile=${limit}`, '--', process.execPath, ...argv] };
}

export async function startChildGate(opts: StartGateOptions & { nofile?: number }): Promise<ChildGate> {
  const files = await writeGateFiles({ logLevel: 'info', ...opts, logFormat: 'json' });
  await opts.beforeStart?.(files.dir);
  const { cmd, args } = withOpenFiles(opts.nofile, [CLI, 'run', '--config', files.configFile]);
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let pending = '';
  const logs: Record<string, unknown>[] = [];
  const ports: Record<string, number> = {};
  let metricsPort = 0;
  const workers = typeof opts.config?.workers === 'number' && opts.config.workers > 1 ? opts.config.workers : 0;
  let workersReady = 0;
  let onLine: (() => void) | undefined;
  child.stdout!.on('data', (chunk: Buffer) => {
    const text = chunk.toString();
    out += text;
    pending += text;
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      let parsed: Record<string, unknown>;
      try {
        parsed = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      logs.push(parsed);
      if (parsed.msg === 'listening' && typeof parsed.listener === 'string') ports[parsed.listener] = Number(String(parsed.address).split(':').pop());
      // With `workers`, the primary serves /metrics and each worker says it is ready.
      if (parsed.msg === 'smtpgate ready' && !workers) metricsPort = Number(String(parsed.metrics).split(':').pop());
      if (parsed.msg === 'smtpgate primary ready') metricsPort = Number(String(parsed.metrics).split(':').pop());
      if (parsed.msg === 'smtpgate ready' && workers) workersReady++;
      onLine?.();
    }
  });
  child.stderr!.on('data', (chunk: Buffer) => (out += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`smtpgate did not get ready within 20 s:\n${out}`)), 20_000);
    onLine = () => {
      if (metricsPort && workersReady >= workers) {
        clearTimeout(timer);
        onLine = undefined;
        resolve();
      }
    };
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`smtpgate exited with ${child.exitCode} before it was ready:\n${out}`));
    });
  });

  return {
    child,
    pid: child.pid!,
    files,
    logs,
    metricsPort,
    port(name: string) {
      const p = ports[name];
      if (p === undefined) throw new Error(`no listener ${name} in the child's log`);
      return p;
    },
    output: () => out,
    get alive() {
      return child.exitCode === null && child.signalCode === null;
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGINT');
      const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(killer);
    },
  };
}

/** Sum of one metric's samples (optionally filtered by labels) from a /metrics endpoint. */
export async function scrapeMetric(port: number, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}
