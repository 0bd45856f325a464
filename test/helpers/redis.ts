/**
 * Real Redis for the limits tests: the shared server on 127.0.0.1:6379 (keys under a unique
 * prefix per run), or a private redis-server / sentinel on a free loopback port that a test
 * may kill and restart. Also `limitsHarness`, a `Limits` built from YAML with its log lines
 * and metrics readable by the test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import { createLogger } from '../../src/logging/logger.js';
import { Registry } from 'prom-client';
import { parse as parseYaml } from 'yaml';
import { limitsConfigSchema } from '../../src/limits/config.js';
import { createLimits, type AuthFacts, type AuthFailure, type Limits } from '../../src/limits/limits.js';
import type { Refusal } from '../../src/reply.js';

export interface LimitsHarness {
  readonly limits: Limits;
  readonly registry: Registry;
  /** Parsed JSON log lines written so far. */
  readonly logs: Record<string, unknown>[];
  /** Log lines whose msg matches. */
  logged(msg: RegExp): Record<string, unknown>[];
  /** Resolves with the first line (already written or still to come) whose msg matches. */
  waitForLog(msg: RegExp, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** The value of one metric series (0 when absent). */
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  close(): Promise<void>;
}

/** A `Limits` from a `limits:` section written as YAML (the same schema production uses). */
export function limitsHarness(yaml: string, opts: { now?: () => number; suspensionSyncMs?: number } = {}): LimitsHarness {
  const config = limitsConfigSchema.parse(parseYaml(yaml) ?? {});
  const registry = new Registry();
  const logs: Record<string, unknown>[] = [];
  const waiters = new Set<(line: Record<string, unknown>) => void>();
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const text of chunk.toString().split('\n')) {
        if (!text.trim()) continue;
        const line = JSON.parse(text) as Record<string, unknown>;
        logs.push(line);
        for (const w of waiters) w(line);
      }
      cb();
    },
  });
  const log = createLogger({ level: 'debug', format: 'json', destination: sink });
  const limits = createLimits({ config, registry, log, ...(opts.now ? { now: opts.now } : {}), ...(opts.suspensionSyncMs ? { suspensionSyncMs: opts.suspensionSyncMs } : {}) });
  return {
    limits,
    registry,
    logs,
    logged: (msg) => logs.filter((l) => msg.test(String(l.msg))),
    waitForLog: (msg, timeoutMs = 10_000) => {
      const seen = logs.find((l) => msg.test(String(l.msg)));
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(onLine);
          reject(new Error(`no log line matching ${msg} within ${timeoutMs}ms`));
        }, timeoutMs);
        const onLine = (line: Record<string, unknown>) => {
          if (!msg.test(String(line.msg))) return;
          clearTimeout(timer);
          waiters.delete(onLine);
          resolve(line);
        };
        waiters.add(onLine);
      });
    },
    metric: async (name, labels = {}) => {
      const m = registry.getSingleMetric(name);
      if (!m) throw new Error(`no metric ${name}`);
      const v = (await m.get()).values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
      return v?.value ?? 0;
    },
    close: () => limits.close(),
  };
}

/** One wrong password, as the listener reports it: the attempt's reservation becomes a failure, or the attempt is refused. */
export async function failedLogin(limits: Limits, facts: AuthFacts): Promise<AuthFailure | Refusal> {
  const attempt = await limits.authAllowed(facts);
  return attempt.refusal ?? limits.authFailed(facts, attempt.reservation);
}

/** One right password: the reservation goes back (or the attempt is refused at either end). */
export async function succeededLogin(limits: Limits, facts: AuthFacts): Promise<Refusal | undefined> {
  const attempt = await limits.authAllowed(facts);
  return attempt.refusal ?? limits.authSucceeded(facts, attempt.reservation);
}

export const SHARED_REDIS_URL = process.env.SMTPGATE_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** A key prefix no other test run uses: tests share one Redis without colliding. */
export function uniquePrefix(tag: string): string {
  return `smtpgate-test-${tag}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

/** Deletes every key starting with `prefix` on the shared Redis. */
export async function dropPrefix(url: string, prefix: string): Promise<void> {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await r.connect();
    let cursor = '0';
    do {
      const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      cursor = next;
      if (keys.length) await r.del(...keys);
    } while (cursor !== '0');
  } finally {
    r.disconnect();
  }
}

export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

export interface RedisProcess {
  readonly port: number;
  readonly child: ChildProcess;
  /** Everything the process printed so far. */
  output(): string;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
}

/** Spawns redis-server and resolves once its stdout shows `ready`. `ownDir` is removed after the kill. */
async function spawnRedis(args: string[], port: number, ready: RegExp, cwd: string | undefined, ownDir?: string): Promise<RedisProcess> {
  const child = spawn('redis-server', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      if (ready.test(out)) resolve();
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`redis-server ${args.join(' ')} exited (${code}) before it was ready:\n${out}`)));
    child.once('error', reject);
  });
  return {
    port,
    child,
    output: () => out,
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
      if (ownDir) await rm(ownDir, { recursive: true, force: true });
    },
  };
}

export interface RedisServerOptions {
  port?: number;
  /** e.g. ['--replicaof', '127.0.0.1', '6390'] */
  args?: string[];
  /** Working directory (a fresh temp dir by default). */
  dir?: string;
}

/** A private, non-persistent redis-server on loopback. */
export async function startRedisServer(opts: RedisServerOptions = {}): Promise<RedisProcess> {
  const port = opts.port ?? (await freePort());
  const ownDir = opts.dir ? undefined : await mkdtemp(path.join(os.tmpdir(), 'smtpgate-redis-'));
  const dir = opts.dir ?? ownDir!;
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...(opts.args ?? [])];
  return spawnRedis(args, port, /Ready to accept connections/, dir, ownDir);
}

/** A sentinel watching master group `name` at 127.0.0.1:masterPort; its config lives in `dir`. */
export async function startSentinel(opts: {
  dir: string;
  masterPort: number;
  name: string;
  quorum: number;
  port?: number;
  /** How long the master may be silent before it is "down" (1 s by default). */
  downAfterMs?: number;
  failoverTimeoutMs?: number;
  /** More lines for sentinel.conf, e.g. ['requirepass secret']. */
  extraConfig?: string[];
}): Promise<RedisProcess> {
  const port = opts.port ?? (await freePort());
  const conf = path.join(opts.dir, `sentinel-${port}.conf`);
  await writeFile(
    conf,
    [
      `port ${port}`,
      'bind 127.0.0.1',
      `dir ${opts.dir}`,
      `sentinel monitor ${opts.name} 127.0.0.1 ${opts.masterPort} ${opts.quorum}`,
      `sentinel down-after-milliseconds ${opts.name} ${opts.downAfterMs ?? 1000}`,
      `sentinel failover-timeout ${opts.name} ${opts.failoverTimeoutMs ?? 3000}`,
      `sentinel parallel-syncs ${opts.name} 1`,
      ...(opts.extraConfig ?? []),
      '',
    ].join('\n'),
  );
  return spawnRedis([conf, '--sentinel'], port, /\+monitor master/, opts.dir);
}

/** Polls `probe` until it returns true; fails with `what` after `timeoutMs`. For state that has no event to await. */
export async function until(what: string, probe: () => Promise<boolean> | boolean, timeoutMs = 10_000, everyMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export interface SlowLink {
  readonly port: number;
  /** Cut: every connection through the link is dropped, and new ones are refused until reopened. */
  cut(): void;
  reopen(): void;
  close(): Promise<void>;
}

/**
 * A TCP forwarder on loopback that holds every reply from `targetPort` for `delayMs` before
 * passing it on: a sentinel reached over a slow link. Order is kept (equal delays fire in order).
 * It can be cut and reopened, as a network partition would.
 */
export async function slowLink(targetPort: number, delayMs: number): Promise<SlowLink> {
  const sockets = new Set<net.Socket>();
  let isCut = false;
  const server = net.createServer((client) => {
    if (isCut) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    client.on('data', (chunk) => upstream.write(chunk));
    upstream.on('data', (chunk) => {
      setTimeout(() => {
        if (!client.destroyed) client.write(chunk);
      }, delayMs);
    });
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    // Replies still on their way are delivered before the close.
    upstream.on('error', () => setTimeout(drop, delayMs)).on('close', () => setTimeout(drop, delayMs));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    cut: () => {
      isCut = true;
      for (const s of sockets) s.destroy();
    },
    reopen: () => {
      isCut = false;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
