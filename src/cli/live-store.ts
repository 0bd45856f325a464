/**
 * The live limiter store, as a CLI command reaches it: with a Redis store, Redis itself (every
 * instance shares it); with the memory store, the running instance through its admin address
 * (the metrics address), since the state is inside that process.
 */
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { createLimits } from '../limits/limits.js';
import type { Config } from '../config/schema.js';
import { adminEndpoint } from './admin-endpoint.js';

/** How long a command waits for Redis before it says the store can't be reached. */
const STORE_WAIT_MS = 3000;

/** Runs `local` against Redis directly, or `remote` against the running instance's admin address. */
export async function withStore<T>(config: Config, remote: (base: string, token?: string) => Promise<T>, local: (limits: ReturnType<typeof createLimits>) => Promise<T>): Promise<T> {
  if (config.limits.store.kind === 'memory') {
    const { base, token } = await adminEndpoint(config);
    return remote(base, token);
  }
  const limits = createLimits({ config: config.limits, log: pino({ level: 'silent' }), registry: new Registry() });
  try {
    if (!(await limits.start(STORE_WAIT_MS))) throw new Error(`the limiter store (${config.limits.store.kind}) can't be reached`);
    return await local(limits);
  } finally {
    await limits.close();
  }
}
