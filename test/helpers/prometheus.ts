/**
 * A real Prometheus (Debian package `prometheus`) for the operations tests: a temp config that
 * scrapes the given targets every second and loads the given rule files, on a free loopback
 * port, with its own temp storage. Queries go through the HTTP API like Grafana's do.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { findProgram } from './programs.js';
import { deadPort } from './sessions.js';

export interface PromResult {
  readonly metric: Record<string, string>;
  readonly value: [number, string];
}

export interface ApiAnswer<T> {
  readonly status: 'success' | 'error';
  readonly data: T;
  readonly errorType?: string;
  readonly error?: string;
}

export interface Prometheus {
  readonly port: number;
  /** Everything Prometheus wrote to stderr (its log), for failure messages. */
  readonly log: () => string;
  /** An instant query, as Grafana's stat and table panels send it; now, or `at` (Unix seconds). */
  query(expr: string, at?: number): Promise<ApiAnswer<{ resultType: string; result: PromResult[] }>>;
  /** GET on the API, e.g. api('rules'), api('alerts'), api('targets'). */
  api<T>(what: string): Promise<ApiAnswer<T>>;
  stop(): Promise<void>;
}

export interface PrometheusOptions {
  readonly job: string;
  /** host:port of each target. */
  readonly targets: readonly string[];
  readonly ruleFiles?: readonly string[];
}

export async function startPrometheus(opts: PrometheusOptions): Promise<Prometheus> {
  const binary = findProgram('prometheus');
  if (!binary) throw new Error('prometheus is not installed (apt-get install prometheus)');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-prometheus-'));
  const config = path.join(dir, 'prometheus.yml');
  await writeFile(
    config,
    JSON.stringify({
      global: { scrape_interval: '1s', scrape_timeout: '900ms', evaluation_interval: '1s' },
      rule_files: opts.ruleFiles ?? [],
      scrape_configs: [{ job_name: opts.job, static_configs: [{ targets: opts.targets }] }],
    }),
  );
  const port = await deadPort();
  const child = spawn(
    binary,
    [`--config.file=${config}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--web.enable-lifecycle', '--log.level=info'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  // Ready when it says so in its log; fails at once if it exits first, or after 30 s.
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`prometheus not ready after 30 s:\n${stderr}`)), 30_000);
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (stderr.includes('Server is ready to receive web requests')) {
        clearTimeout(timer);
        resolve();
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`prometheus exited (${code}) before it was ready:\n${stderr}`));
    });
  });
  const base = `http://127.0.0.1:${port}/api/v1`;
  const answer = async <T>(res: Response): Promise<ApiAnswer<T>> => {
    const body = (await res.json()) as ApiAnswer<T>;
    return body;
  };
  return {
    port,
    log: () => stderr,
    query: async (expr, at) =>
      answer(
        await fetch(`${base}/query`, {
          method: 'POST',
          body: new URLSearchParams({ query: expr, ...(at === undefined ? {} : { time: String(at) }) }),
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
        }),
      ),
    api: async <T>(what: string) => answer<T>(await fetch(`${base}/${what}`)),
    stop: async () => {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(killer);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * `promtool check metrics`: lints an exposition (names, _total on non-counters, units, help),
 * read from stdin. Resolves with promtool's exit code and everything it printed.
 */
export function promtoolCheckMetrics(exposition: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = execFile(findProgram('promtool')!, ['check', 'metrics'], (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, output: stdout + stderr }),
    );
    child.stdin!.end(exposition);
  });
}
