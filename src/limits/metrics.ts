/**
 * The limits' metrics. The lead's catalogue calls `createLimitMetrics(registry)` with the app's
 * registry, so they appear on /metrics next to the rest.
 *
 * Labels come from fixed sets only: `limiter` (LIMITER_NAMES), `result`, `scope`. Never an IP,
 * user or address: those are in the log lines.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import { LIMITER_NAMES, type LimiterName } from './replies.js';
import { PendingCounts } from '../counters/pending-counts.js';

const DECISION_RESULTS = ['allowed', 'limited', 'store_error'] as const;
export type DecisionResult = (typeof DECISION_RESULTS)[number];

export function createLimitMetrics(registry: Registry) {
  const registers = [registry];
  const pending = new PendingCounts(['limiter', 'result'] as const);
  const decisions: Counter<'limiter' | 'result'> = new Counter({
    name: 'smtpgate_limiter_decisions_total',
    help: 'Limit checks by limiter and result: allowed, limited, or store_error (the shared store failed and limits.onStoreFailure answered).',
    labelNames: ['limiter', 'result'] as const,
    registers,
    collect: () => pending.flushInto(decisions),
  });
  const metrics = {
    /** Read it through the registry or `get()`; count with `decide()`. */
    decisions,
    /** Counts one limit check in `smtpgate_limiter_decisions_total` (added when it is read: see PendingCounts). */
    decide: (limiter: LimiterName, result: DecisionResult): void => pending.add(limiter, result),
    lockouts: new Counter({
      name: 'smtpgate_auth_lockouts_total',
      help: 'AUTH lockouts started, by scope: ip (a client address) or user_ip (one user from one address).',
      labelNames: ['scope'] as const,
      registers,
    }),
    quotaExhaustions: new Counter({
      name: 'smtpgate_quota_exhaustions_total',
      help: 'Times a per-user quota (messages, recipients, bytes) ran out in its window; the compromised-account brake counts these.',
      labelNames: ['limiter'] as const,
      registers,
    }),
    suspensions: new Counter({
      name: 'smtpgate_account_suspensions_total',
      help: 'Accounts suspended by the compromised-account brake.',
      registers,
    }),
    suspendedAccounts: new Gauge({
      name: 'smtpgate_suspended_accounts',
      // Every instance knows every suspension (limits.store: redis); cluster workers agree.
      aggregator: 'max',
      help: 'Accounts suspended now (by the compromised-account brake, until cleared or expired), as of the last comparison with the limiter store.',
      registers,
    }),
    storeResets: new Counter({
      name: 'smtpgate_limiter_store_resets_total',
      help: 'Times the limiter store was found to have lost its data (Redis restarted empty or was flushed): counts and lockouts started over.',
      registers,
    }),
    suspensionsRestored: new Counter({
      name: 'smtpgate_suspensions_restored_total',
      help: 'Suspensions this instance wrote back to the limiter store after the store lost them.',
      registers,
    }),
    storeUp: new Gauge({
      name: 'smtpgate_limiter_store_up',
      // Across cluster workers: degraded if any worker is.
      aggregator: 'min',
      help: '1 while the limiter store answers; 0 while limits come from limits.onStoreFailure (insurance memory, allow or deny).',
      registers,
    }),
  };
  // Series that alerts look for exist from the start, at zero.
  for (const scope of ['ip', 'user_ip']) metrics.lockouts.inc({ scope }, 0);
  metrics.suspensions.inc(0);
  metrics.storeResets.inc(0);
  metrics.suspensionsRestored.inc(0);
  metrics.suspendedAccounts.set(0);
  for (const limiter of ['messages_user', 'recipients_user', 'bytes_user']) metrics.quotaExhaustions.inc({ limiter }, 0);
  for (const limiter of LIMITER_NAMES) for (const result of DECISION_RESULTS) metrics.decisions.inc({ limiter, result }, 0);
  return metrics;
}

export type LimitMetrics = ReturnType<typeof createLimitMetrics>;
