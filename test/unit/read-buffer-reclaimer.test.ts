/**
 * The read-buffer reclaimer: a young-generation collection after every 8 MiB read from clients,
 * because V8 would otherwise keep up to 32 MB of relayed socket buffers around
 * (src/transport/read-buffer-reclaimer.ts).
 */
import { describe, expect, test } from 'vitest';
import { collectorFromV8, ReadBufferReclaimer, RECLAIM_EVERY_BYTES } from '../../src/transport/read-buffer-reclaimer.js';

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
  test('collects once per `everyBytes` read, however the reads are cut', () => {
    let collections = 0;
    const r = new ReadBufferReclaimer(() => collections++, 100);
    r.read(60);
    expect(collections).toBe(0);
    r.read(60);
    expect(collections).toBe(1);
    // The count starts again after a collection: 99 more bytes are not enough.
    r.read(99);
    expect(collections).toBe(1);
    r.read(1);
    expect(collections).toBe(2);
    expect(r.collections).toBe(2);
  });

  test('one read bigger than the threshold is one collection, not several', () => {
    let collections = 0;
    const r = new ReadBufferReclaimer(() => collections++, 100);
    r.read(1000);
    expect(collections).toBe(1);
  });

  test('the default is 8 MiB, a quarter of the 32 MB V8 waits for on its own', () => {
    let collections = 0;
    const r = new ReadBufferReclaimer(() => collections++);
    for (let read = 0; read < 128; read++) r.read(64 * 1024);
    expect(RECLAIM_EVERY_BYTES).toBe(8 * 1024 * 1024);
    expect(collections).toBe(1);
  });

  test('a threshold that is not positive is a programming error', () => {
    expect(() => new ReadBufferReclaimer(() => undefined, 0)).toThrow(/positive/);
  });
});

describe('collectorFromV8', () => {
  test("frees dropped read buffers that V8's own scheduling leaves in memory", async () => {
    const collect = collectorFromV8();
    expect(collect, 'this Node offers no gc() through --expose-gc').toBeTypeOf('function');
    // 12.5 MiB of dropped 64 KiB buffers: below V8's 32 MB backstop, and with hardly any
    // JavaScript allocated, so nothing makes V8 collect them by itself.
    dropReadBuffers(200);
    const leftByV8 = await arrayBufferBytesAfter(5);
    expect(leftByV8).toBeGreaterThan(6 * 1024 * 1024);
    collect!();
    // The backing stores are freed by a concurrent sweeper: wait for it, within a bound.
    let left = await arrayBufferBytesAfter(1);
    for (let turns = 0; left > 2 * 1024 * 1024 && turns < 1000; turns++) left = await arrayBufferBytesAfter(1);
    expect(left).toBeLessThan(2 * 1024 * 1024);
  });
});
