/**
 * How smtpgate's processes are set up beyond the config: the V8 young generation every
 * process that serves mail should have, and how the cluster primary spreads connections over
 * its workers. Pure decisions over the command line and the environment; the primary applies
 * them (primary.ts), `smtpgate run` reports them, deploy/ sets the same flag for one process.
 *
 * An operator's own choice always wins: a `--max-semi-space-size` on node's command line or in
 * NODE_OPTIONS, and NODE_CLUSTER_SCHED_POLICY (node's own variable), are left as they are.
 */

/**
 * Megabytes per V8 semi-space. Node's default (16 MB on 64-bit Node 20) fills with the garbage of
 * about 120 connections (129 KB of heap each) and is scavenged that often; 64 measured −5 to −9% CPU and
 * +8–12% msg/s in W2, and idle memory per plain connection 9.7 → 18.8 KB (docs/benchmarks.md).
 * It is a ceiling the young generation grows to under load, not memory reserved at start.
 */
export const SEMI_SPACE_MB = 64;
export const SEMI_SPACE_FLAG = `--max-semi-space-size=${SEMI_SPACE_MB}`;

/**
 * V8 takes the flag with dashes or underscores, with `=N` or as a separate argument. It is
 * read once, when the heap is set up: `v8.setFlagsFromString` later changes nothing (measured
 * on Node 20: new space stayed at its default size and scavenged as often), so it can only be
 * given to a process at its start.
 */
const SEMI_SPACE_OPTION = /(?:^|\s)--max[-_]semi[-_]space[-_]size(?:[=\s]|$)/;

/** Where the process's semi-space setting comes from. */
export type SemiSpaceSource = 'command line' | 'NODE_OPTIONS' | 'node default';

export function semiSpaceSource(execArgv: readonly string[], nodeOptions: string | undefined): SemiSpaceSource {
  if (SEMI_SPACE_OPTION.test(execArgv.join(' '))) return 'command line';
  if (nodeOptions && SEMI_SPACE_OPTION.test(nodeOptions)) return 'NODE_OPTIONS';
  return 'node default';
}

/** For the "ready" log lines: where this process's young generation size comes from. */
export function describeSemiSpace(source: SemiSpaceSource): string {
  return source === 'node default' ? `node's default (no ${SEMI_SPACE_FLAG}: see docs/deployment.md)` : `set (${source})`;
}

/**
 * The node arguments of a cluster worker: the primary's own (node's default for workers),
 * plus smtpgate's semi-space unless the operator set one. NODE_OPTIONS reaches the workers
 * through their environment, and the primary's command line through these arguments.
 */
export function workerExecArgv(execArgv: readonly string[], nodeOptions: string | undefined): string[] {
  return semiSpaceSource(execArgv, nodeOptions) === 'node default' ? [...execArgv, SEMI_SPACE_FLAG] : [...execArgv];
}

/**
 * How the workers get their connections. `none`: every worker accepts on the one listening
 * socket the primary opened and shares, and the kernel picks which; `rr` (node's default on
 * Linux): the primary accepts each connection and passes it to the next worker over IPC, which
 * cost +22% CPU per connection in W2-2proc (median of 4 A/B rounds; issue 20 measured +35%).
 * smtpgate uses `none` unless NODE_CLUSTER_SCHED_POLICY says otherwise (node has already
 * applied that variable when the cluster module loaded).
 */
export interface SchedulingChoice {
  readonly policy: 'none' | 'rr';
  readonly source: 'smtpgate default' | 'NODE_CLUSTER_SCHED_POLICY';
}

export function schedulingPolicy(env: Readonly<Record<string, string | undefined>>): SchedulingChoice {
  const set = env.NODE_CLUSTER_SCHED_POLICY;
  if (set === 'none' || set === 'rr') return { policy: set, source: 'NODE_CLUSTER_SCHED_POLICY' };
  return { policy: 'none', source: 'smtpgate default' };
}
