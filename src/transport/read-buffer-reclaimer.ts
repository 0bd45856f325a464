/**
 * Keeps the memory that relayed client data leaves behind small, by asking V8 for a
 * young-generation collection (a scavenge) after every few megabytes read from clients.
 *
 * Why it is needed: Node allocates a new buffer (64 KiB) for every socket read. Once smtpgate
 * has relayed it, it is garbage, but V8 schedules its collections by JavaScript allocation,
 * and a proxy that passes reads on without copying allocates little JavaScript per megabyte.
 * V8's own backstop is a scavenge once the young generation holds 32 MB of such buffers
 * ("external memory pressure" in `--trace-gc`), so streaming large messages kept ~32 MB of
 * dead buffers resident at all times (the benchmark's W4: RSS growth 35–38 MB). A scavenge
 * every 8 MiB read keeps that to about a quarter (W4: 13–14 MB), at no measurable CPU cost: a
 * scavenge of a proxy's small young generation takes well under a millisecond, and it runs at
 * most once per 8 MiB of client data (docs/benchmarks.md).
 *
 * V8 has no public call for a collection; its `gc` function is made available through
 * `--expose-gc`, set at startup (`collectorFromV8`). Without it (should a Node version refuse)
 * smtpgate runs as before, with V8's own scheduling.
 *
 * One instance per App (built in the composition root), shared by the listeners.
 */
import v8 from 'node:v8';
import vm from 'node:vm';

/** How much client data is read between two collections. */
export const RECLAIM_EVERY_BYTES = 8 * 1024 * 1024;

/** Runs one young-generation collection. */
export type Collect = () => void;

type V8Gc = (options?: { type?: 'minor' | 'major'; execution?: 'sync' | 'async' }) => void;

/**
 * V8's young-generation collection, or undefined when this Node doesn't provide it. The flag
 * makes V8 install `gc` in contexts created from then on; a throwaway one hands it over.
 */
export function collectorFromV8(): Collect | undefined {
  try {
    v8.setFlagsFromString('--expose-gc');
    const gc: unknown = vm.runInNewContext('gc');
    if (typeof gc !== 'function') return undefined;
    return () => (gc as V8Gc)({ type: 'minor' });
  } catch {
    return undefined;
  }
}

export class ReadBufferReclaimer {
  readonly #collect: Collect;
  readonly #everyBytes: number;
  #pending = 0;
  #collections = 0;

  constructor(collect: Collect, everyBytes: number = RECLAIM_EVERY_BYTES) {
    if (!(everyBytes > 0)) throw new Error('ReadBufferReclaimer: everyBytes must be positive');
    this.#collect = collect;
    this.#everyBytes = everyBytes;
  }

  /** `bytes` were read from a client socket; collects once enough have been read since the last time. */
  read(bytes: number): void {
    this.#pending += bytes;
    if (this.#pending < this.#everyBytes) return;
    this.#pending = 0;
    this.#collections++;
    this.#collect();
  }

  /** Collections asked for so far. */
  get collections(): number {
    return this.#collections;
  }
}
