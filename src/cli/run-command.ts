/**
 * `smtpgate run`: one process, or with `workers` > 1 a cluster primary and its workers. The
 * signal handling is the same either way: SIGHUP reloads, SIGTERM drains, SIGINT stops.
 */
import cluster from 'node:cluster';
import { App, openLogOutput, type BoundAddresses } from '../app.js';
import type { Config } from '../config/schema.js';
import { resolveWorkers } from '../config/schema.js';
import type { RuntimeMaterial } from '../app.js';
import { forwardSignal, runPrimary, type WorkerMessage } from '../cluster/primary.js';
import { answerPrimary } from '../cluster/worker-reports.js';
import { describeSemiSpace, semiSpaceSource, SEMI_SPACE_FLAG } from '../cluster/process-options.js';

export interface RunOptions {
  readonly configFile: string;
  readonly onReady?: (config: Config, bound: BoundAddresses) => void;
}

export async function run(config: Config, material: RuntimeMaterial, opts: RunOptions): Promise<void> {
  const workers = resolveWorkers(config.workers);
  if (workers > 1 && cluster.isPrimary) return runClusterPrimary(config, workers, material);
  const inCluster = cluster.isWorker;

  // A worker's lines carry its pid, the one the primary's "worker died" line names.
  const logOutput = openLogOutput(config.log, material);
  const log = inCluster ? logOutput.log.child({ pid: process.pid }) : logOutput.log;
  const app = new App(config, material, { configFile: opts.configFile, admin: !inCluster, log, logOutput });
  const bound = await app.start().catch((err: Error) => {
    app.log.fatal({ err }, 'failed to start');
    process.exit(1);
  });
  if (inCluster) {
    // The primary serves /metrics and /readyz for all workers; this worker reports its own.
    answerPrimary(app, process, app.log);
    process.send?.({ type: 'smtpgate:ready' } satisfies WorkerMessage);
  } else {
    opts.onReady?.(config, bound);
  }
  app.log.info(
    {
      metrics: inCluster ? 'served by the primary' : `${config.metrics.address.host}:${bound.metrics}`,
      // A worker's logger already carries its pid (the child above): once per line is enough.
      ...(inCluster ? {} : { pid: process.pid }),
      semiSpace: describeSemiSpace(semiSpaceSource(process.execArgv, process.env.NODE_OPTIONS)),
    },
    'smtpgate ready',
  );

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    app.log.info({ signal }, 'stopping');
    app.stop({ drain: signal === 'SIGTERM' }).then(
      () => process.exit(0),
      (err: Error) => {
        app.log.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGHUP', () => {
    app.log.info('SIGHUP: reloading the config, users, attributes, policies and certificates');
    void app.reload();
  });
  // logrotate's postrotate. Handled always: without a handler, node opens its inspector on
  // 127.0.0.1:9229 at SIGUSR1.
  process.on('SIGUSR1', () => app.reopenLog());
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('unhandledRejection', (err) => app.log.error({ err }, 'unhandled rejection (bug): the session it belonged to may hang'));
}

async function runClusterPrimary(config: Config, workers: number, material: RuntimeMaterial): Promise<void> {
  const logOutput = openLogOutput(config.log, material);
  const log = logOutput.log.child({ role: 'primary' });
  const primary = await runPrimary(config, workers, log, material.adminToken);
  log.info(
    {
      workers,
      metrics: `${config.metrics.address.host}:${primary.metricsPort}`,
      pid: process.pid,
      scheduling: `${primary.scheduling.policy} (${primary.scheduling.source})`,
      workerSemiSpace: primary.workerSemiSpace === 'node default' ? `${SEMI_SPACE_FLAG} (added by smtpgate)` : describeSemiSpace(primary.workerSemiSpace),
    },
    'smtpgate primary ready',
  );
  let stopping = false;
  const stop = (signal: 'SIGTERM' | 'SIGINT') => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping the workers');
    primary.stop(signal).then(
      () => logOutput.end(1000).then(() => process.exit(0)),
      () => process.exit(1),
    );
  };
  process.on('SIGHUP', () => forwardSignal('SIGHUP', log));
  // The cluster module passes no signal on: each worker has its own file descriptor to reopen.
  process.on('SIGUSR1', () => {
    logOutput.reopen();
    forwardSignal('SIGUSR1', log);
  });
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
