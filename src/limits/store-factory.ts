/**
 * Builds the limiter store `limits.store` asks for. The one place that knows the kinds:
 *
 * - memory: `MemoryBackend` (this process only; the default).
 * - redis: `RedisBackend` over one server, Sentinel or Cluster (what `workers` > 1 requires).
 */
import type { LimitsConfig } from './config.js';
import { LimiterStore, MemoryBackend, type StoreBackend } from './limiter-store.js';
import { createRedisClient, RedisBackend } from './redis-store.js';

export function createBackend(cfg: LimitsConfig['store']): StoreBackend {
  switch (cfg.kind) {
    case 'memory':
      return new MemoryBackend();
    case 'redis':
      return new RedisBackend(createRedisClient(cfg));
  }
}

export function createLimiterStore(cfg: LimitsConfig, backend: StoreBackend = createBackend(cfg.store)): LimiterStore {
  return new LimiterStore({
    backend,
    onFailure: cfg.onStoreFailure,
    keyPrefix: cfg.store.keyPrefix,
    // The command timeout plus a margin: ioredis normally answers first; this catches the rest.
    opTimeoutMs: cfg.store.commandTimeout + 150,
  });
}
