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
 * every 8 MiB read keeps that to about a third (W4: 11–14 MB).
 *
 * What it costs: a scavenge's pause grows with the live young objects, not with the garbage:
 * well under a millisecond for an idle proxy, 2–7 ms under load (a review measured 2.2 ms on
 * average with 200 busy sessions), a pause for every session of the process. So collections
 * are also at least `minIntervalMs` apart (20 ms: at most 50 a second, whatever the clients'
 * bandwidth); reads in between carry over to the next. They replace scavenges V8 would have
 * run anyway more than they add to them: with the reclaimer the review's mixed load used less
 * CPU (4.6 s against 5.2 s) and had fewer full collections.
 *
 * V8 has no public call for a collection; its `gc` function is taken once, through
 * `--expose-gc` switched on just long enough to take it (`collectorFromV8`), and probed.
 * Should a Node version refuse, or a collection ever throw, smtpgate runs as before, with
 * V8's own scheduling. `smtpgate_read_buffer_collections_total` counts the collections.
 * Checked on Node 20, 22 and 24 (V8 11.3 to 13.6): test/unit/read-buffer-reclaimer.test.ts
 * fails on a Node that doesn't hand `gc` over or whose minor collection doesn't free the
 * buffers, and .ci/run runs it on Node 24 as well.
 *
 * One instance per App (built in the composition root), shared by the listeners.
 */
import v8 from 'node:v8';
import vm from 'node:vm';

/** How much client data is read between two collections. */
export const RECLAIM_EVERY_BYTES = 8 * 1024 * 1024;
/** The least time between two collections. */
export const RECLAIM_MIN_INTERVAL_MS = 20;

/** Runs one young-generation collection. */
export type Collect = () => void;

type V8Gc = (options?: { type?: 'minor' | 'major'; execution?: 'sync' | 'async' }) => void;

let fromV8: Collect | null | undefined;

/**
 * V8's young-generation collection, or undefined when this Node doesn't provide it. The flag
 * makes V8 install `gc` in contexts created while it is on; a throwaway context hands it over
 * and the flag goes off again, so no later context or worker gets a `gc` global. Taken once
 * per process, and run once here, so a collector that fails does so at startup.
 */
export function collectorFromV8(): Collect | undefined {
  if (fromV8 !== undefined) return fromV8 ?? undefined;
  fromV8 = null;
  try {
    v8.setFlagsFromString('--expose-gc');
    const gc: unknown = vm.runInNewContext('gc');
    if (typeof gc !== 'function') return undefined;
    const collect = () => (gc as V8Gc)({ type: 'minor' });
    collect();
    fromV8 = collect;
    return collect;
  } catch {
    return undefined;
  } finally {
    v8.setFlagsFromString('--no-expose-gc');
  }
}

export interface ReclaimerOptions {
  readonly everyBytes?: number;
  readonly minIntervalMs?: number;
  /** A collection threw: the reclaimer stops collecting (V8's own scheduling goes on). */
  readonly onFailure?: (err: unknown) => void;
  /** Each collection, e.g. to count it. */
  readonly onCollect?: () => void;
  readonly now?: () => number;
}

export class ReadBufferReclaimer {
  #collect: Collect | undefined;
  readonly #everyBytes: number;
  readonly #minIntervalMs: number;
  readonly #onFailure: (err: unknown) => void;
  readonly #onCollect: () => void;
  readonly #now: () => number;
  #pending = 0;
  #last = -Infinity;

  constructor(collect: Collect, opts: ReclaimerOptions = {}) {
    const everyBytes = opts.everyBytes ?? RECLAIM_EVERY_BYTES;
    if (!(everyBytes > 0)) throw new Error('ReadBufferReclaimer: everyBytes must be positive');
    this.#collect = collect;
    this.#everyBytes = everyBytes;
    this.#minIntervalMs = opts.minIntervalMs ?? RECLAIM_MIN_INTERVAL_MS;
    this.#onFailure = opts.onFailure ?? (() => undefined);
    this.#onCollect = opts.onCollect ?? (() => undefined);
    this.#now = opts.now ?? (() => performance.now());
  }

  /**
   * `bytes` were read from a client socket; collects once enough have been read since the
   * last collection, and enough time has passed. Never throws: it runs on a socket's read path.
   */
  read(bytes: number): void {
    this.#pending += bytes;
    if (this.#pending < this.#everyBytes || !this.#collect) return;
    const now = this.#now();
    if (now - this.#last < this.#minIntervalMs) return;
    this.#pending = 0;
    this.#last = now;
    try {
      this.#collect();
    } catch (err) {
      this.#collect = undefined;
      this.#onFailure(err);
      return;
    }
    this.#onCollect();
  }
}
