/**
 * `workers: N`: a cluster primary forks N workers sharing the listeners, restarts one that
 * dies, and serves /metrics aggregated across them and /readyz aggregated from theirs. Limits
 * need Redis there.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readdir, readFile, readlink } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, test, vi } from 'vitest';
import { writeGateFiles } from '../../helpers/gate.js';
import { openListener, type BackendInput, type LimitsInput } from '../../helpers/config.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';
import { describeWith } from '../../helpers/programs.js';
import { deadPort, eventually } from '../../helpers/sessions.js';
import { parseExposition } from '../../helpers/exposition.js';
import { promtoolCheckMetrics } from '../../helpers/prometheus.js';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const CLI = path.join(ROOT, 'dist/cli/main.js');

type LogLine = Record<string, unknown>;

interface Cluster {
  readonly smtpPort: number;
  /** A second open listener that takes PROXY protocol headers from 127.0.0.1 (a balancer). */
  readonly proxyPort: number;
  readonly metricsPort: number;
  readonly logs: LogLine[];
  waitForLog(match: (l: LogLine) => boolean, count?: number): Promise<void>;
  /** SIGTERM and the exit code. */
  stop(): Promise<number | null>;
}

/** `smtpgate run` with `workers: 2` and a Redis store, once the primary and both workers are ready. */
async function startCluster(opts: { backend: BackendInput; storeUrl?: string; limits?: LimitsInput; env?: Record<string, string> }): Promise<Cluster> {
  const smtpPort = await deadPort();
  const proxyPort = await deadPort();
  const metricsPort = await deadPort();
  const { configFile } = await writeGateFiles({
    backend: opts.backend,
    listeners: [
      openListener({ address: `127.0.0.1:${smtpPort}` }),
      // The clients the balancer names (203.0.113.0/24) may relay, as 127.0.0.0/8 may on the other.
      openListener({ name: 'balanced', address: `127.0.0.1:${proxyPort}`, proxyProtocol: { trusted: ['127.0.0.1/32'] }, trusted: { networks: ['203.0.113.0/24'] } }),
    ],
    metricsAddress: `127.0.0.1:${metricsPort}`,
    logLevel: 'info',
    config: {
      workers: 2,
      limits: {
        ...opts.limits,
        store: { kind: 'redis', url: opts.storeUrl ?? 'redis://127.0.0.1:6379', commandTimeout: '200ms', keyPrefix: `cluster-test-${randomUUID().slice(0, 8)}` },
      },
    },
  });
  // Without the caller's own NODE_OPTIONS or NODE_CLUSTER_SCHED_POLICY: smtpgate's defaults unless `env` sets them.
  const { NODE_OPTIONS: _o, NODE_CLUSTER_SCHED_POLICY: _p, ...inherited } = process.env;
  const child: ChildProcess = spawn(process.execPath, [CLI, 'run', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...inherited, ...opts.env } });
  const logs: LogLine[] = [];
  const waiters: Array<() => void> = [];
  let buf = '';
  const onData = (c: Buffer) => {
    buf += c.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        logs.push(JSON.parse(line) as LogLine);
      } catch {
        logs.push({ msg: line });
      }
      for (const w of waiters.splice(0)) w();
    }
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const waitForLog = (match: (l: LogLine) => boolean, count = 1) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for a log line; last: ${JSON.stringify(logs.slice(-5))}`)), 15_000);
      const check = () => {
        if (logs.filter(match).length >= count) {
          clearTimeout(timer);
          resolve();
        } else {
          waiters.push(check);
        }
      };
      check();
    });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    return exited;
  };
  try {
    await waitForLog((l) => l.msg === 'smtpgate primary ready');
    await waitForLog((l) => l.msg === 'worker ready', 2);
  } catch (err) {
    await stop();
    throw err;
  }
  return { smtpPort, proxyPort, metricsPort, logs, waitForLog, stop };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether a process holds the socket listening on 127.0.0.1:port. With the kernel balancing
 * (SCHED_NONE) every worker accepts on it itself; with round robin only the primary holds it
 * and passes each accepted connection on.
 */
async function holdsListeningSocket(pid: number, port: number): Promise<boolean> {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const listening = (await readFile('/proc/net/tcp', 'utf8'))
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .find((f) => f[1] === `0100007F:${hexPort}` && f[3] === '0A');
  if (!listening) throw new Error(`nothing listens on 127.0.0.1:${port}`);
  const inode = listening[9];
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')) === `socket:[${inode}]`) return true;
  }
  return false;
}

/** The node arguments a process was started with (before the script). */
async function nodeArgs(pid: number): Promise<string[]> {
  const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
  return argv.slice(1, argv.findIndex((a) => a.endsWith('main.js')));
}

/** One message on its own connection; the reply to the final dot. */
async function sendOne(port: number, subject: string, proxyHeader?: string): Promise<number> {
  const c = await SmtpTalk.connect(port, proxyHeader ? { preamble: Buffer.from(proxyHeader, 'latin1') } : {});
  await c.read();
  await c.cmd('EHLO client.test');
  await c.cmd('MAIL FROM:<app@corp.test>');
  await c.cmd('RCPT TO:<bob@corp.test>');
  await c.cmd('DATA');
  const code = (await c.cmd(`Subject: ${subject}\r\n\r\nx\r\n.`)).code;
  await c.cmd('QUIT');
  return code;
}

async function readyz(c: Cluster): Promise<{ status: number; reasons: string[] }> {
  const res = await fetch(`http://127.0.0.1:${c.metricsPort}/readyz`);
  return { status: res.status, reasons: ((await res.json()) as { reasons: string[] }).reasons };
}

describeWith(['redis-server', 'promtool'], 'two workers behind one primary', () => {
  let backend: RecordingBackend;
  let cluster: Cluster;

  beforeAll(async () => {
    backend = await startRecordingBackend();
    cluster = await startCluster({ backend: { address: `127.0.0.1:${backend.port}`, healthCheckInterval: '1s' } });
  });

  afterAll(async () => {
    await cluster?.stop();
    await backend?.close();
  });

  const send = (subject: string) => sendOne(cluster.smtpPort, subject);

  /** One scrape of the primary: its status, and the summed counters a dashboard would read. */
  async function scrape(): Promise<{ status: number; relayed: number; opened: number }> {
    const res = await fetch(`http://127.0.0.1:${cluster.metricsPort}/metrics`);
    if (res.status !== 200) return { status: res.status, relayed: NaN, opened: NaN };
    const { samples } = parseExposition(await res.text());
    const sum = (name: string, labels: Record<string, string> = {}) =>
      samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + Number(s.value), 0);
    return { status: 200, relayed: sum('smtpgate_messages_total', { result: 'relayed' }), opened: sum('smtpgate_connections_opened_total') };
  }

  const workerPids = () => new Set(cluster.logs.filter((l) => l.msg === 'smtpgate ready').map((l) => l.pid as number));

  // Round robin made the primary accept every connection and pass it on (+22% CPU per connection in W2-2proc).
  test('the workers accept on the shared listening socket themselves (kernel balancing), with smtpgate\'s semi-space', async () => {
    const primary = cluster.logs.find((l) => l.msg === 'smtpgate primary ready')!;
    expect(primary).toMatchObject({ scheduling: 'none (smtpgate default)', workerSemiSpace: '--max-semi-space-size=64 (added by smtpgate)' });
    const started = cluster.logs.filter((l) => l.msg === 'worker started').map((l) => l.pid as number);
    expect(started).toHaveLength(2);
    for (const pid of started) {
      expect(await holdsListeningSocket(pid, cluster.smtpPort)).toBe(true);
      expect(await nodeArgs(pid)).toContain('--max-semi-space-size=64');
    }
    for (const l of cluster.logs.filter((x) => x.msg === 'smtpgate ready')) expect(l.semiSpace).toBe('set (command line)');
  });

  test('both workers serve mail and /metrics on the primary adds them up', async () => {
    for (let i = 0; i < 6; i++) expect(await send(`m${i}`)).toBe(250);
    expect(backend.messages).toHaveLength(6);
    expect(await scrape()).toEqual({ status: 200, relayed: 6, opened: 6 });
    const text = await (await fetch(`http://127.0.0.1:${cluster.metricsPort}/metrics`)).text();
    expect(await promtoolCheckMetrics(text)).toEqual({ code: 0, output: '' });
    // The workers' logs arrive in batches (at the latest every 250 ms): wait for the records.
    await eventually(() => cluster.logs.filter((l) => l.msg === 'transaction' && l.outcome === 'relayed').length === 6, 'the six transaction records');
    expect((await readyz(cluster)).status).toBe(200);
  });

  // Prometheus reads a counter that goes down as a restart and counts everything again.
  test('a worker killed with SIGKILL: every scrape answers 200, and the summed counters never go down', async () => {
    const relayedBy = cluster.logs.find((l) => l.msg === 'transaction' && l.outcome === 'relayed')!.pid as number;
    expect(workerPids()).toContain(relayedBy);
    const seen: Array<{ status: number; relayed: number; opened: number }> = [];
    process.kill(relayedBy, 'SIGKILL');
    await cluster.waitForLog((l) => l.msg === 'worker died; starting a new one');
    seen.push(await scrape());
    // The replacement is forked but not ready: it can't answer yet, the scrape must not wait for it.
    await cluster.waitForLog((l) => l.msg === 'worker started', 3);
    seen.push(await scrape());
    await cluster.waitForLog((l) => l.msg === 'worker ready', 3);
    seen.push(await scrape());
    expect(seen).toEqual([
      { status: 200, relayed: 6, opened: 6 },
      { status: 200, relayed: 6, opened: 6 },
      { status: 200, relayed: 6, opened: 6 },
    ]);
    expect(await send('after restart')).toBe(250);
    expect(await scrape()).toEqual({ status: 200, relayed: 7, opened: 7 });
    expect((await readyz(cluster)).status).toBe(200);
  });

  test('a second worker death keeps the counts of both dead workers', async () => {
    const live = [...workerPids()].filter(isAlive);
    expect(live).toHaveLength(2);
    for (const pid of live) process.kill(pid, 'SIGKILL');
    expect((await scrape()).status).toBe(200);
    await cluster.waitForLog((l) => l.msg === 'worker ready', 5);
    expect(await scrape()).toEqual({ status: 200, relayed: 7, opened: 7 });
  });

  test('a worker that stops answering (SIGSTOP): /metrics answers with its last numbers, /readyz names the silent worker', async () => {
    // A replacement's own "smtpgate ready" line reaches the log after the primary's "worker
    // ready" (each process's lines are written in batches): wait for a live worker's.
    const pid = await vi.waitFor(
      () => {
        const live = [...workerPids()].find(isAlive);
        if (live === undefined) throw new Error('no live worker has logged "smtpgate ready" yet');
        return live;
      },
      { timeout: 10_000 },
    );
    process.kill(pid, 'SIGSTOP');
    try {
      expect(await scrape()).toEqual({ status: 200, relayed: 7, opened: 7 });
      const r = await readyz(cluster);
      expect(r.status).toBe(503);
      expect(r.reasons).toEqual([expect.stringMatching(new RegExp(`^worker \\d+ \\(pid ${pid}\\) did not answer within \\d+ ms$`))]);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await eventually(async () => (await readyz(cluster)).status === 200, 'the worker answering again', 10_000);
    expect(await scrape()).toEqual({ status: 200, relayed: 7, opened: 7 });
  });

  test('behind a balancer: the worker reads the PROXY header itself, and the backend sees the client it names', async () => {
    const before = backend.messages.length;
    for (let i = 0; i < 4; i++) expect(await sendOne(cluster.proxyPort, `proxied ${i}`, `PROXY TCP4 203.0.113.${i + 1} 127.0.0.1 4242 25\r\n`)).toBe(250);
    expect(backend.messages.slice(before).map((m) => m.xclient.ADDR)).toEqual(['203.0.113.1', '203.0.113.2', '203.0.113.3', '203.0.113.4']);
  });

  test('SIGHUP reaches every worker, each reloads, and mail still flows on both listeners', async () => {
    const primary = cluster.logs.find((l) => l.msg === 'smtpgate primary ready')!.pid as number;
    const reloaded = cluster.logs.filter((l) => l.msg === 'users reloaded').length;
    process.kill(primary, 'SIGHUP');
    await cluster.waitForLog((l) => l.msg === 'users reloaded', reloaded + 2);
    expect(await send('after reload')).toBe(250);
    expect(await sendOne(cluster.proxyPort, 'after reload, proxied', 'PROXY TCP4 203.0.113.9 127.0.0.1 4242 25\r\n')).toBe(250);
    expect(backend.messages.at(-1)!.xclient.ADDR).toBe('203.0.113.9');
  });

  test('SIGTERM drains the workers and the primary exits 0', async () => {
    expect(await cluster.stop()).toBe(0);
  });
});

describeWith(['redis-server'], 'the primary\'s /readyz reflects its workers\' backends and limiter store', () => {
  let cluster: Cluster;
  afterAll(async () => {
    await cluster?.stop();
  });

  // Every client would get 451/454 from these workers: a load balancer must not send them any.
  test('503 naming each worker\'s reasons while no backend answers and the store is down with onStoreFailure: deny', async () => {
    cluster = await startCluster({
      backend: { address: `127.0.0.1:${await deadPort()}`, healthCheckInterval: '1s' },
      storeUrl: `redis://127.0.0.1:${await deadPort()}`,
      limits: { onStoreFailure: 'deny' },
    });
    const r = await readyz(cluster);
    expect(r.status).toBe(503);
    for (const reason of ['no backend answered a recent health check', 'limiter store unreachable and limits.onStoreFailure is deny']) {
      expect(r.reasons.filter((x) => x.endsWith(reason)), reason).toHaveLength(2);
    }
  });
});

describeWith(['redis-server'], 'an operator\'s NODE_CLUSTER_SCHED_POLICY and NODE_OPTIONS win over smtpgate\'s defaults', () => {
  let backend: RecordingBackend;
  let cluster: Cluster;
  afterAll(async () => {
    await cluster?.stop();
    await backend?.close();
  });

  test('round robin: only the primary holds the listening socket; the workers keep NODE_OPTIONS\' semi-space; mail flows', async () => {
    backend = await startRecordingBackend();
    cluster = await startCluster({
      backend: { address: `127.0.0.1:${backend.port}` },
      env: { NODE_CLUSTER_SCHED_POLICY: 'rr', NODE_OPTIONS: '--max-semi-space-size=8' },
    });
    const primary = cluster.logs.find((l) => l.msg === 'smtpgate primary ready')!;
    expect(primary).toMatchObject({ scheduling: 'rr (NODE_CLUSTER_SCHED_POLICY)', workerSemiSpace: 'set (NODE_OPTIONS)' });
    expect(await holdsListeningSocket(primary.pid as number, cluster.smtpPort)).toBe(true);
    for (const pid of cluster.logs.filter((l) => l.msg === 'worker started').map((l) => l.pid as number)) {
      expect(await holdsListeningSocket(pid, cluster.smtpPort)).toBe(false);
      expect((await nodeArgs(pid)).join(' ')).not.toContain('semi-space');
      expect((await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0')).toContain('NODE_OPTIONS=--max-semi-space-size=8');
    }
    expect(await sendOne(cluster.smtpPort, 'rr')).toBe(250);
    expect(backend.messages).toHaveLength(1);
  });
});

test('workers > 1 with the memory store is refused by smtpgate check', async () => {
  const { configFile } = await writeGateFiles({ backendPort: 2525, config: { workers: 2 } });
  const res = await promisify(execFile)(process.execPath, [CLI, 'check', '--config', configFile]).then(
    () => ({ code: 0, stderr: '' }),
    (e: { code: number; stderr: string }) => e,
  );
  expect(res.code).toBe(1);
  expect(res.stderr).toContain('workers: 2 workers need limits.store.kind: redis');
});
