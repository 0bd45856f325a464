/**
 * `workers: auto | N`: one smtpgate process per core with the node cluster module. The primary
 * serves no mail: it forks the workers (each a full App that shares the listening sockets),
 * restarts one that crashes, serves /metrics added up across workers and /readyz from theirs
 * (worker-reports.ts), /healthz, and passes SIGHUP, SIGUSR1 and SIGTERM on.
 *
 * Limits need a shared store here (the config check insists on Redis), so every worker counts
 * against the same numbers.
 */
import cluster, { type Worker } from 'node:cluster';
import type http from 'node:http';
import { Registry } from 'prom-client';
import type { Config } from '../config/schema.js';
import type { Logger } from '../logging/logger.js';
import { boundPort, startAdminServer, type Readiness } from '../metrics/http-server.js';
import { WorkerReports } from './worker-reports.js';
import { authCacheAdminRoute } from '../auth/admin.js';
import { schedulingPolicy, semiSpaceSource, workerExecArgv, type SchedulingChoice, type SemiSpaceSource } from './process-options.js';

/** Messages a worker sends the primary (besides its reports). */
export type WorkerMessage = { type: 'smtpgate:ready' } | { type: 'smtpgate:stopping' };

export interface PrimaryHandle {
  readonly metricsPort: number;
  /** How the workers share the listeners, and where that choice came from. */
  readonly scheduling: SchedulingChoice;
  /** Where the workers' semi-space setting came from ('node default': smtpgate's was added). */
  readonly workerSemiSpace: SemiSpaceSource;
  stop(signal: 'SIGTERM' | 'SIGINT'): Promise<void>;
}

/** A crash loop shouldn't spin the CPU: wait this long before forking a replacement. */
const RESTART_DELAY_MS = 1000;

/**
 * How long a scrape waits for the workers' answers: well inside Prometheus's default 10 s
 * scrape timeout. A worker slower than this is represented by its last answer.
 */
const METRICS_ANSWER_MS = 3000;
/**
 * How long /readyz waits for them: inside the probe timeout of deploy/k8s (2 s). A worker
 * slower than this counts as not ready.
 */
const READINESS_ANSWER_MS = 1000;

export async function runPrimary(config: Config, workers: number, log: Logger, adminToken?: string): Promise<PrimaryHandle> {
  const reports = new WorkerReports({ metricsMs: METRICS_ANSWER_MS, readinessMs: READINESS_ANSWER_MS });
  let stopping = false;

  // Both before the first fork: node freezes the scheduling policy at setupPrimary().
  const scheduling = schedulingPolicy(process.env);
  cluster.schedulingPolicy = scheduling.policy === 'none' ? cluster.SCHED_NONE : cluster.SCHED_RR;
  const workerSemiSpace = semiSpaceSource(process.execArgv, process.env.NODE_OPTIONS);
  cluster.setupPrimary({ execArgv: workerExecArgv(process.execArgv, process.env.NODE_OPTIONS) });

  const fork = (): Worker => {
    const worker = cluster.fork({ SMTPGATE_WORKER: '1' });
    log.info({ worker: worker.id, pid: worker.process.pid }, 'worker started');
    worker.on('message', (m: WorkerMessage) => {
      reports.receive(worker, m);
      if (m?.type === 'smtpgate:ready') {
        reports.add(worker);
        log.info({ worker: worker.id, pid: worker.process.pid }, 'worker ready');
      }
    });
    return worker;
  };

  cluster.on('exit', (worker, code, signal) => {
    reports.remove(worker.id);
    if (stopping) return;
    log.error({ worker: worker.id, pid: worker.process.pid, code, signal }, 'worker died; starting a new one');
    setTimeout(() => {
      if (!stopping) fork();
    }, RESTART_DELAY_MS).unref();
  });

  for (let i = 0; i < workers; i++) fork();

  // Ready when every worker is: the kernel hands connections to all of them, so one worker
  // without a backend or limiter store would refuse its share of the clients (451/454).
  const readiness = async (): Promise<Readiness> => {
    const reasons: string[] = [];
    if (stopping) reasons.push('shutting down');
    if (reports.size < workers) reasons.push(`${reports.size} of ${workers} workers ready`);
    for (const w of await reports.readiness()) {
      const who = `worker ${w.worker} (pid ${w.pid})`;
      if (!w.readiness) reasons.push(`${who} did not answer within ${READINESS_ANSWER_MS} ms`);
      else for (const reason of w.readiness.reasons) reasons.push(`${who}: ${reason}`);
    }
    return { ready: reasons.length === 0, reasons };
  };

  const admin: http.Server = await startAdminServer({
    host: config.metrics.address.host,
    port: config.metrics.address.port,
    registry: { metrics: () => reports.metrics(), contentType: Registry.PROMETHEUS_CONTENT_TYPE },
    readiness,
    // Each worker has its own auth cache: `smtpgate auth cache clear` empties them all.
    routes: [
      authCacheAdminRoute((user) => reports.clearAuthCache(user), {
        ...(adminToken ? { token: adminToken } : {}),
        onRefused: (r, req) => log.warn({ status: r.status, path: req.url, client: req.socket.remoteAddress }, 'admin request refused'),
      }),
    ],
  });

  return {
    metricsPort: boundPort(admin),
    scheduling,
    workerSemiSpace,
    async stop(signal) {
      stopping = true;
      const alive = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead());
      const exited = alive.map((w) => new Promise<void>((resolve) => w.once('exit', () => resolve())));
      // Each worker drains on SIGTERM (or stops at once on SIGINT) and exits by itself.
      for (const w of alive) w.process.kill(signal);
      await Promise.all(exited);
      const closed = new Promise<void>((resolve) => admin.close(() => resolve()));
      admin.closeAllConnections();
      await closed;
    },
  };
}

/** Forwards SIGHUP to every worker, so each reloads its own state. */
/** SIGHUP (reload) and SIGUSR1 (reopen the log file) to every live worker. */
export function forwardSignal(signal: 'SIGHUP' | 'SIGUSR1', log: Logger): void {
  for (const w of Object.values(cluster.workers ?? {})) {
    if (w && !w.isDead()) w.process.kill(signal);
  }
  log.info(`${signal} passed on to the workers`);
}
