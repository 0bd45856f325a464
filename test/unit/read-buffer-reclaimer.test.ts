/**
 * The read-buffer reclaimer: a young-generation collection after every 8 MiB read from clients
 * (at most every 20 ms), because V8 would otherwise keep up to 32 MB of relayed socket buffers
 * around (src/transport/read-buffer-reclaimer.ts).
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { describe, expect, test } from 'vitest';
import { collectorFromV8, ReadBufferReclaimer, RECLAIM_EVERY_BYTES, RECLAIM_MIN_INTERVAL_MS } from '../../src/transport/read-buffer-reclaimer.js';

/** Like the socket reads Node makes: 64 KiB buffers of their own (outside Buffer's pool), dropped at once. */
function dropReadBuffers(count: number): void {
  for (let i = 0; i < count; i++) Buffer.allocUnsafeSlow(64 * 1024).fill(i);
}

/** Gives V8's concurrent array-buffer sweeper `turns` event-loop turns; returns the bytes still held. */
async function arrayBufferBytesAfter(turns: number): Promise<number> {
  for (let i = 0; i < turns; i++) await new Promise((resolve) => setImmediate(resolve));
  return process.memoryUsage().arrayBuffers;
}

describe('ReadBufferReclaimer', () => {
  /** A reclaimer with a 100-byte threshold and a clock the test moves. */
  function reclaimer(opts: { minIntervalMs?: number; collect?: () => void } = {}) {
    const seen = { collections: 0, counted: 0, failures: [] as unknown[] };
    let clock = 1000;
    const r = new ReadBufferReclaimer(opts.collect ?? (() => seen.collections++), {
      everyBytes: 100,
      minIntervalMs: opts.minIntervalMs ?? 0,
      now: () => clock,
      onCollect: () => seen.counted++,
      onFailure: (err) => seen.failures.push(err),
    });
    return { r, seen, advance: (ms: number) => (clock += ms) };
  }

  test('collects once per `everyBytes` read, however the reads are cut', () => {
    const { r, seen } = reclaimer();
    r.read(60);
    expect(seen.collections).toBe(0);
    r.read(60);
    expect(seen.collections).toBe(1);
    // The count starts again after a collection: 99 more bytes are not enough.
    r.read(99);
    expect(seen.collections).toBe(1);
    r.read(1);
    expect(seen.collections).toBe(2);
    expect(seen.counted).toBe(2);
  });

  test('one read bigger than the threshold is one collection, not several', () => {
    const { r, seen } = reclaimer();
    r.read(1000);
    expect(seen.collections).toBe(1);
  });

  test('collections are at least minIntervalMs apart; what was read meanwhile carries over', () => {
    const { r, seen, advance } = reclaimer({ minIntervalMs: 20 });
    r.read(100);
    expect(seen.collections).toBe(1);
    advance(5);
    r.read(500);
    expect(seen.collections).toBe(1);
    advance(14);
    r.read(1);
    expect(seen.collections).toBe(1);
    // 20 ms after the first: the bytes held over are enough on their own.
    advance(1);
    r.read(1);
    expect(seen.collections).toBe(2);
  });

  test('a collection that throws is reported once, and the reclaimer stops collecting: read() never throws', () => {
    let calls = 0;
    const { r, seen } = reclaimer({
      collect: () => {
        calls++;
        throw new Error('no such collection');
      },
    });
    expect(() => r.read(100)).not.toThrow();
    expect(() => r.read(1000)).not.toThrow();
    expect(calls).toBe(1);
    expect(seen.failures).toHaveLength(1);
    expect(seen.counted).toBe(0);
  });

  test('the defaults: 8 MiB, a quarter of the 32 MB V8 waits for on its own, at most every 20 ms', () => {
    let collections = 0;
    const r = new ReadBufferReclaimer(() => collections++);
    for (let read = 0; read < 128; read++) r.read(64 * 1024);
    expect(RECLAIM_EVERY_BYTES).toBe(8 * 1024 * 1024);
    expect(RECLAIM_MIN_INTERVAL_MS).toBe(20);
    expect(collections).toBe(1);
  });

  test('a threshold that is not positive is a programming error', () => {
    expect(() => new ReadBufferReclaimer(() => undefined, { everyBytes: 0 })).toThrow(/positive/);
  });
});

describe('collectorFromV8', () => {
  /** A full collection, so that no incremental marking is under way when the test starts. */
  function fullCollection(): void {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    v8.setFlagsFromString('--no-expose-gc');
    gc();
  }

  test('is taken once, and leaves no `gc` global in contexts created afterwards', () => {
    const collect = collectorFromV8();
    expect(collect, 'this Node offers no gc() through --expose-gc').toBeTypeOf('function');
    expect(collectorFromV8()).toBe(collect);
    expect(vm.runInNewContext('typeof gc')).toBe('undefined');
  });

  test("frees dropped read buffers that V8's own scheduling leaves in memory", async () => {
    const collect = collectorFromV8()!;
    fullCollection();
    // 12.5 MiB of dropped 64 KiB buffers: below V8's 32 MB backstop, and with hardly any
    // JavaScript allocated, so nothing makes V8 collect them by itself in a few turns.
    dropReadBuffers(200);
    const leftByV8 = await arrayBufferBytesAfter(5);
    expect(leftByV8).toBeGreaterThan(6 * 1024 * 1024);
    collect();
    // The backing stores are freed by a concurrent sweeper thread, which a loaded machine (the
    // suite's other worker) can starve for a while: give it up to ~1 s of 10 ms waits. That
    // allocates next to nothing, so V8 won't scavenge by itself in the meantime, and it is far
    // below the ~8 s its timer-driven memory reducer waits: only collect() frees them this soon.
    const sweeperTurn = () => new Promise((resolve) => setTimeout(resolve, 10)).then(() => process.memoryUsage().arrayBuffers);
    let left = await arrayBufferBytesAfter(1);
    for (let turns = 0; left > 2 * 1024 * 1024 && turns < 100; turns++) left = await sweeperTurn();
    expect(left).toBeLessThan(2 * 1024 * 1024);
  });
});
