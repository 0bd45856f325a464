/**
 * How the primary learns its workers' metrics and readiness: it asks each ready worker over the
 * cluster IPC channel and waits a bounded time. A worker that doesn't answer in time (busy, or
 * killed a moment ago and not yet reaped) never fails the request: for metrics its last answer
 * stands in, for readiness it counts as not ready. A worker still starting isn't asked at all.
 *
 * Why not prom-client's AggregatorRegistry.clusterMetrics(): it asks every connected worker,
 * including one just forked that can't answer yet and one just killed, waits up to 5 s for all
 * of them and then fails the whole scrape; and it adds up live workers only, so a dead
 * worker's counts vanish and Prometheus sees a counter reset (see retained-counts.ts).
 */
import type { Worker } from 'node:cluster';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { Readiness } from '../metrics/http-server.js';
import type { Logger } from '../logging/logger.js';
import { addCumulative, type MetricsJson } from './retained-counts.js';
import type { CacheClearAnswer } from '../auth/admin.js';

type What = 'metrics' | 'readiness' | 'authCacheClear';
interface ReportRequest {
  type: 'smtpgate:report-request';
  id: number;
  what: What;
  /** authCacheClear: only this user's entries. */
  user?: string;
}
interface Report {
  type: 'smtpgate:report';
  id: number;
  metrics?: MetricsJson;
  readiness?: Readiness;
  authCache?: CacheClearAnswer;
}

const isRequest = (m: unknown): m is ReportRequest => (m as ReportRequest | undefined)?.type === 'smtpgate:report-request';
const isReport = (m: unknown): m is Report => (m as Report | undefined)?.type === 'smtpgate:report';

/** One asked worker's readiness; undefined when it didn't answer in time. */
export interface WorkerReadiness {
  readonly worker: number;
  readonly pid: number | undefined;
  readonly readiness: Readiness | undefined;
}

/** The primary's side. */
export class WorkerReports {
  /** Ready workers and their last metrics report. */
  readonly #live = new Map<number, { worker: Worker; metrics: MetricsJson }>();
  /** Counters and histograms of the workers that have exited. */
  #retained: MetricsJson = [];
  readonly #waiting = new Map<number, (worker: number, report: Report) => void>();
  #nextId = 0;
  /** How long each kind of request waits for the workers' answers. */
  readonly #timeoutMs: Readonly<Record<What, number>>;

  constructor(timeouts: { metricsMs: number; readinessMs: number }) {
    this.#timeoutMs = { metrics: timeouts.metricsMs, readiness: timeouts.readinessMs, authCacheClear: timeouts.metricsMs };
  }

  /** Workers that said they are ready and haven't exited. */
  get size(): number {
    return this.#live.size;
  }

  /** A worker said it is ready: it is asked from now on. */
  add(worker: Worker): void {
    this.#live.set(worker.id, { worker, metrics: [] });
  }

  /** A worker exited: its counters and histograms stay in the totals, its gauges go. */
  remove(workerId: number): void {
    const gone = this.#live.get(workerId);
    if (!gone) return;
    this.#live.delete(workerId);
    this.#retained = addCumulative(this.#retained, gone.metrics);
  }

  /** Every message a worker sends goes through here; reports are picked out. */
  receive(worker: Worker, message: unknown): void {
    if (isReport(message)) this.#waiting.get(message.id)?.(worker.id, message);
  }

  /** The exposition text: live workers' fresh (or last) reports plus what dead workers counted. */
  async metrics(): Promise<string> {
    for (const [id, report] of await this.#ask('metrics')) {
      const live = this.#live.get(id);
      if (live && report.metrics) live.metrics = report.metrics;
    }
    return AggregatorRegistry.aggregate([this.#retained, ...[...this.#live.values()].map((l) => l.metrics)]).metrics();
  }

  /** Each ready worker's own readiness (backend, limiter store, draining). */
  async readiness(): Promise<WorkerReadiness[]> {
    const asked = [...this.#live.values()].map((l) => l.worker);
    const answers = await this.#ask('readiness');
    return asked.map((w) => ({ worker: w.id, pid: w.process.pid, readiness: answers.get(w.id)?.readiness }));
  }

  /**
   * Empties every ready worker's auth cache (or one user's entries) and adds up what went. A
   * worker that doesn't answer in time fails the request: the operator must not be told the
   * cache is clear while a worker still holds entries.
   */
  async clearAuthCache(user: string | undefined): Promise<CacheClearAnswer> {
    const asked = this.#live.size;
    const answers = [...(await this.#ask('authCacheClear', user)).values()].map((r) => r.authCache);
    if (answers.length < asked || answers.some((a) => a === undefined)) throw new Error(`only ${answers.length} of ${asked} workers answered; try again`);
    if (answers.some((a) => a && 'cacheOff' in a)) return { cacheOff: true };
    const cleared = answers.reduce((n, a) => n + (a && 'cleared' in a ? a.cleared : 0), 0);
    return user === undefined ? { cleared } : { cleared, user };
  }

  #ask(what: What, user?: string): Promise<Map<number, Report>> {
    const id = this.#nextId++;
    const asked = new Set([...this.#live.values()].map((l) => l.worker).filter((w) => w.isConnected()));
    const answers = new Map<number, Report>();
    return new Promise((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        this.#waiting.delete(id);
        resolve(answers);
      };
      const timer = setTimeout(finish, this.#timeoutMs[what]);
      this.#waiting.set(id, (worker, report) => {
        answers.set(worker, report);
        if (answers.size >= asked.size) finish();
      });
      const request: ReportRequest = { type: 'smtpgate:report-request', id, what, ...(user === undefined ? {} : { user }) };
      // A worker dying under us fails the send; it then simply doesn't answer.
      for (const w of asked) w.send(request, () => undefined);
      if (asked.size === 0) finish();
    });
  }
}

/** What a worker reports about itself. */
export interface ReportingApp {
  readonly metrics: { readonly registry: Registry };
  readiness(): Readiness;
  clearAuthCache(user?: string): CacheClearAnswer;
}

/** The worker's side: answers the primary's requests on `channel` (the worker's `process`). */
export function answerPrimary(app: ReportingApp, channel: NodeJS.Process, log: Logger): void {
  channel.on('message', (m: unknown) => {
    if (!isRequest(m)) return;
    const report: Promise<Omit<Report, 'type' | 'id'>> =
      m.what === 'metrics'
        ? app.metrics.registry.getMetricsAsJSON().then((metrics) => ({ metrics }))
        : m.what === 'readiness'
          ? Promise.resolve({ readiness: app.readiness() })
          : Promise.resolve({ authCache: app.clearAuthCache(m.user) });
    report.then(
      // The primary gone means this worker is about to exit too: nothing to do about a failed send.
      (r) => channel.send?.({ type: 'smtpgate:report', id: m.id, ...r } satisfies Report, undefined, undefined, () => undefined),
      (err: Error) => log.error({ err }, `could not report ${m.what} to the primary`),
    );
  });
}
