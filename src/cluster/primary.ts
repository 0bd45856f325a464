/**
 * `workers: auto | N`: one smtpgate process per core with the node cluster module. The primary
 * serves no mail: it forks the workers (each a full App that shares the listening sockets),
 * restarts one that crashes, serves /metrics aggregated across workers (prom-client's
 * AggregatorRegistry), /healthz and /readyz, and passes SIGHUP and SIGTERM on.
 *
 * Limits need a shared store here (the config check insists on Redis), so every worker counts
 * against the same numbers.
 */
import cluster, { type Worker } from 'node:cluster';
import type http from 'node:http';
import { AggregatorRegistry } from 'prom-client';
import type { Config } from '../config/schema.js';
import type { Logger } from '../logging/logger.js';
import { boundPort, startAdminServer } from '../metrics/http-server.js';

/** Messages a worker sends the primary. */
export type WorkerMessage = { type: 'smtpgate:ready' } | { type: 'smtpgate:stopping' };

export interface PrimaryHandle {
  readonly metricsPort: number;
  stop(signal: 'SIGTERM' | 'SIGINT'): Promise<void>;
}

/** A crash loop shouldn't spin the CPU: wait this long before forking a replacement. */
const RESTART_DELAY_MS = 1000;

export async function runPrimary(config: Config, workers: number, log: Logger): Promise<PrimaryHandle> {
  const aggregator = new AggregatorRegistry();
  const ready = new Set<number>();
  let stopping = false;

  const fork = (): Worker => {
    const worker = cluster.fork({ SMTPGATE_WORKER: '1' });
    worker.on('message', (m: WorkerMessage) => {
      if (m?.type === 'smtpgate:ready') {
        ready.add(worker.id);
        log.info({ worker: worker.id, pid: worker.process.pid }, 'worker ready');
      }
    });
    return worker;
  };

  cluster.on('exit', (worker, code, signal) => {
    ready.delete(worker.id);
    if (stopping) return;
    log.error({ worker: worker.id, pid: worker.process.pid, code, signal }, 'worker died; starting a new one');
    setTimeout(() => {
      if (!stopping) fork();
    }, RESTART_DELAY_MS).unref();
  });

  for (let i = 0; i < workers; i++) fork();

  const admin: http.Server = await startAdminServer({
    host: config.metrics.address.host,
    port: config.metrics.address.port,
    registry: { metrics: () => aggregator.clusterMetrics(), contentType: aggregator.contentType },
    readiness: () => {
      const reasons: string[] = [];
      if (stopping) reasons.push('shutting down');
      if (ready.size < workers) reasons.push(`${ready.size} of ${workers} workers ready`);
      return { ready: reasons.length === 0, reasons };
    },
  });

  return {
    metricsPort: boundPort(admin),
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
export function forwardReload(log: Logger): void {
  for (const w of Object.values(cluster.workers ?? {})) {
    if (w && !w.isDead()) w.process.kill('SIGHUP');
  }
  log.info('SIGHUP passed on to the workers');
}
