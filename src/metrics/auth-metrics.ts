/**
 * The auth sources' and the auth cache's metrics (src/auth/chain.ts, cache.ts); the catalogue calls `createAuthMetrics` with
 * the app's registry. Labels come from fixed sets only: `source` (AUTH_SOURCES), `result`
 * (the outcome's reason, or success), `outcome`. Never a user or an address.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { AUTH_SOURCES } from '../config/auth-section.js';

export const SOURCE_RESULTS = ['success', 'unknown_user', 'bad_credentials', 'disabled', 'unavailable'] as const;
export type SourceResult = (typeof SOURCE_RESULTS)[number];

export function createAuthMetrics(registry: Registry) {
  const registers = [registry];
  return {
    sourceSeconds: new Histogram({
      name: 'smtpgate_auth_source_seconds',
      help: 'Time an auth source took to answer one sign-in, by source (file, backend, ldap, dovecot, http) and result (success, unknown_user, bad_credentials, disabled, unavailable). Cache hits are not in it.',
      labelNames: ['source', 'result'] as const,
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    sourceErrors: new Counter({
      name: 'smtpgate_auth_source_errors_total',
      help: 'Sign-ins an auth source could not decide (unreachable, timed out, its own temporary failure), by source: the client got 454 4.7.0 unless a later source or the cache answered.',
      labelNames: ['source'] as const,
      registers,
    }),
    sourceUp: new Gauge({
      name: 'smtpgate_auth_source_up',
      // Across cluster workers: up only if every worker reaches it.
      aggregator: 'min',
      help: '1 when the auth source answered its last request or check, 0 while it is unreachable (rechecked every few seconds), by source.',
      labelNames: ['source'] as const,
      registers,
    }),
    cacheHits: new Counter({
      name: 'smtpgate_auth_cache_hits_total',
      help: 'Sign-ins answered from the auth cache, by outcome: success (a remembered sign-in) or failure (a remembered refusal, negativeTtl).',
      labelNames: ['outcome'] as const,
      registers,
    }),
    cacheMisses: new Counter({
      name: 'smtpgate_auth_cache_misses_total',
      help: 'Sign-ins the auth cache did not hold: passed on to the auth sources, or waiting for the same sign-in already being checked.',
      registers,
    }),
    cacheEntries: new Gauge({
      name: 'smtpgate_auth_cache_entries',
      aggregator: 'sum',
      help: 'Sign-ins held in the auth cache now (successes and refusals).',
      registers,
    }),
  };
}

export type AuthMetrics = ReturnType<typeof createAuthMetrics>;

/** Every label set at zero, so dashboards and rate() see the series before the first sign-in. */
export function initAuthMetrics(m: AuthMetrics, sources: readonly (typeof AUTH_SOURCES)[number][], cache: boolean): void {
  for (const source of sources) {
    m.sourceErrors.inc({ source }, 0);
    m.sourceUp.set({ source }, 1);
  }
  if (cache) {
    for (const outcome of ['success', 'failure']) m.cacheHits.inc({ outcome }, 0);
    m.cacheMisses.inc(0);
    m.cacheEntries.set(0);
  }
}
