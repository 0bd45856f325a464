/**
 * Every program the bench starts (smtp-sink, the proxies, the load generators) goes through
 * here, so that each one is ended at the end — on success, on failure, on Ctrl-C.
 *
 * Each child gets its own process group (detached) and is ended by that group's id: only what
 * the bench started is ever signalled. Children are started under `prlimit --nofile`, which
 * execs the program (same pid), so the idle-connection workload has its file descriptors.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';

/**
 * File descriptors for every child (5,000 idle clients and headroom): 65536, or the hard limit
 * when that is lower — a sandbox may not let even root raise it (prlimit then fails outright).
 */
export const NOFILE = Math.min(65536, hardNofileLimit());

function hardNofileLimit(): number {
  try {
    const m = /^Max open files\s+\S+\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m?.[1] === 'unlimited' ? 65536 : Number(m?.[1]) || 1024;
  } catch {
    return 1024;
  }
}

export interface Child {
  readonly name: string;
  readonly pid: number;
  readonly process: ChildProcess;
  /** Resolves with the exit code (or the signal name) when the program has ended. */
  readonly exited: Promise<number | string>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it has ended. */
  stop(graceMs?: number): Promise<void>;
}

export interface SpawnOptions {
  /** stdout and stderr go to this file (appended); with `pipe`, stderr only. */
  readonly logFile?: string;
  /** Keep stdout as a pipe the caller reads (and stderr, without `logFile`). */
  readonly pipe?: boolean;
  /** Keep stdin as a pipe (the idle-clients generator ends when it closes). */
  readonly stdin?: boolean;
  readonly cwd?: string;
  readonly env?: NodeJS.ProcessEnv;
}

const running = new Set<Child>();

export function spawnChild(name: string, command: string, args: readonly string[], opts: SpawnOptions = {}): Child {
  const log = opts.logFile ? openSync(opts.logFile, 'a') : undefined;
  // With `pipe` and a log file, stdout is the caller's and stderr goes to the file.
  const stdout = opts.pipe ? 'pipe' : (log ?? 'ignore');
  const stderr = log ?? (opts.pipe ? 'pipe' : 'ignore');
  const proc = spawn('prlimit', [`--nofile=${NOFILE}:${NOFILE}`, '--', command, ...args], {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    detached: true,
    stdio: [opts.stdin ? 'pipe' : 'ignore', stdout, stderr],
  });
  if (log !== undefined) closeSync(log);
  if (proc.pid === undefined) throw new Error(`${name}: could not start ${command}`);
  const pid = proc.pid;
  const exited = new Promise<number | string>((resolve) => {
    proc.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown'));
    proc.once('error', (err) => resolve(`spawn error: ${err.message}`));
  });
  let ended = false;
  void exited.then(() => {
    ended = true;
    running.delete(child);
  });
  const child: Child = {
    name,
    pid,
    process: proc,
    exited,
    async stop(graceMs = 3000) {
      if (ended) return;
      signalGroup(pid, 'SIGTERM');
      const timer = setTimeout(() => signalGroup(pid, 'SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
      // Anything the program itself left in its group (none of ours fork, but be sure).
      signalGroup(pid, 'SIGKILL');
    },
  };
  running.add(child);
  return child;
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    /* already gone */
  }
}

/** Ends every child still running (used at the end of the run and on every way out). */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((c) => c.stop(2000)));
}

let installed = false;

/** On Ctrl-C, a kill, an uncaught error or a plain exit: no child outlives the bench. */
export function installExitHandlers(): void {
  if (installed) return;
  installed = true;
  const killNow = () => {
    for (const c of running) signalGroup(c.pid, 'SIGKILL');
  };
  process.on('exit', killNow);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, stopping every child\n`);
      killNow();
      process.exit(130);
    });
  }
  process.on('uncaughtException', (err) => {
    process.stderr.write(`bench: uncaught error: ${err.stack ?? err.message}\n`);
    killNow();
    process.exit(1);
  });
}

/**
 * A free TCP port on 127.0.0.1, below Linux's ephemeral range (32768–60999): the load makes
 * tens of thousands of outgoing connections, and one of them could take an ephemeral port
 * between the check here and the moment a peer binds it.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if (taken.has(port)) continue;
    const ok = await new Promise<boolean>((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (ok) {
      taken.add(port);
      return port;
    }
  }
  throw new Error('no free port found on 127.0.0.1 in 20000-31999');
}

/** Ports handed out in this run: never handed out twice. */
const taken = new Set<number>();

/**
 * Waits until something answers on 127.0.0.1:port, or the child ends, or the deadline passes.
 * A listening socket is the only readiness signal all the peers share.
 */
export async function waitForPort(port: number, child: Child, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let gone: number | string | undefined;
  void child.exited.then((c) => (gone = c));
  while (Date.now() < deadline) {
    if (gone !== undefined) throw new Error(`${child.name} exited (${gone}) before listening on ${port}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${child.name} did not listen on 127.0.0.1:${port} within ${timeoutMs} ms`);
}

/** One field of /proc/PID/status in kB (VmRSS, VmHWM). */
export async function procStatusKb(pid: number, field: 'VmRSS' | 'VmHWM'): Promise<number> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]);
}

/** Samples VmRSS while a workload runs: the peak growth over the starting value. */
export class RssSampler {
  readonly #pid: number;
  #timer: NodeJS.Timeout | undefined;
  #baseline = 0;
  #peak = 0;
  #hwmReset = false;

  constructor(pid: number) {
    this.#pid = pid;
  }

  async start(intervalMs = 20): Promise<void> {
    // "5" resets VmHWM to the current RSS (Linux ≥ 4.0), so the kernel's own high-water mark
    // catches a peak between two samples without counting the start-up's.
    this.#hwmReset = await writeFile(`/proc/${this.#pid}/clear_refs`, '5').then(
      () => true,
      () => false,
    );
    this.#baseline = await procStatusKb(this.#pid, 'VmRSS');
    this.#peak = this.#baseline;
    this.#timer = setInterval(() => {
      procStatusKb(this.#pid, 'VmRSS').then(
        (kb) => (this.#peak = Math.max(this.#peak, kb)),
        () => undefined,
      );
    }, intervalMs);
  }

  /** Baseline and peak in kB; the peak also takes VmHWM into account when it could be reset. */
  async stop(): Promise<{ baselineKb: number; peakKb: number }> {
    clearInterval(this.#timer);
    const hwm = this.#hwmReset ? await procStatusKb(this.#pid, 'VmHWM').catch(() => 0) : 0;
    return { baselineKb: this.#baseline, peakKb: Math.max(this.#peak, hwm) };
  }
}

/** RSS in kB after things settle: the median of a few samples a short while apart. */
export async function settledRssKb(pid: number, samples = 5, gapMs = 200): Promise<number> {
  const values: number[] = [];
  for (let i = 0; i < samples; i++) {
    await new Promise((r) => setTimeout(r, gapMs));
    values.push(await procStatusKb(pid, 'VmRSS'));
  }
  values.sort((a, b) => a - b);
  return values[Math.floor(values.length / 2)]!;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * A process's CPU seconds once it has gone idle: it used at most `idleSeconds` of CPU in the
 * last `windowMs` (or `timeoutMs` passed first). A peer listens before it has finished starting:
 * smtpgate, for one, hashes a dummy password at the users file's bcrypt cost in the background
 * (so that an unknown user takes as long as a wrong password), a quarter of a core-second at
 * cost 12 that would otherwise land in the first moments of a timed run and in its CPU figure.
 */
export async function idleCpuSeconds(pid: number, windowMs = 200, idleSeconds = 0.02, timeoutMs = 10_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let before = await procCpuSeconds(pid);
  for (;;) {
    await sleep(windowMs);
    const now = await procCpuSeconds(pid);
    if (now - before <= idleSeconds || Date.now() >= deadline) return now;
    before = now;
  }
}

/** User + system CPU seconds a process has used so far (/proc/PID/stat, 100 ticks a second). */
export async function procCpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces; the fields after its ")" are plain.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * The pids of a process and everything below it (from /proc/PID/task/TID/children): a
 * cluster primary and its workers, nginx's master and its worker processes.
 */
export async function processTree(pid: number): Promise<number[]> {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    const tasks = await readdir(`/proc/${out[i]}/task`).catch(() => [] as string[]);
    for (const tid of tasks) {
      const children = await readFile(`/proc/${out[i]}/task/${tid}/children`, 'utf8').catch(() => '');
      for (const c of children.split(' ')) if (c.trim()) out.push(Number(c));
    }
  }
  return out;
}

/** User + system CPU seconds of a process and its descendants (each read from /proc; one that just ended counts 0). */
export async function treeCpuSeconds(pid: number): Promise<number> {
  const each = await Promise.all((await processTree(pid)).map((p) => procCpuSeconds(p).catch(() => 0)));
  return each.reduce((a, b) => a + b, 0);
}
