/**
 * WriteBatcher: writes made to a held socket during one event-loop turn leave together at its
 * end, in order; release() lets them go at once; end() still flushes.
 */
import { Writable } from 'node:stream';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { WriteBatcher } from '../../src/transport/write-batcher.js';

/** A Writable that records each underlying write (one per syscall on a real socket). */
function recorder(): { stream: Writable; calls: string[][] } {
  const calls: string[][] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      calls.push([chunk.toString()]);
      done();
    },
    writev(chunks, done) {
      calls.push(chunks.map((c) => (c.chunk as Buffer).toString()));
      done();
    },
  });
  return { stream, calls };
}

describe('WriteBatcher', () => {
  it('holds the writes of one turn and lets them go together, in order, at its end', async () => {
    const batcher = new WriteBatcher();
    const { stream, calls } = recorder();
    batcher.hold(stream);
    stream.write('250 one\r\n');
    batcher.hold(stream);
    stream.write('250 two\r\n');
    expect(calls).toEqual([]);
    await nextTurn();
    expect(calls).toEqual([['250 one\r\n', '250 two\r\n']]);
  });

  it('flushes every held stream, each once, and holds again in the next turn', async () => {
    const batcher = new WriteBatcher();
    const a = recorder();
    const b = recorder();
    batcher.hold(a.stream);
    a.stream.write('a1');
    batcher.hold(b.stream);
    b.stream.write('b1');
    await nextTurn();
    expect([a.calls, b.calls]).toEqual([[['a1']], [['b1']]]);
    batcher.hold(a.stream);
    a.stream.write('a2');
    expect(a.calls).toEqual([['a1']]);
    await nextTurn();
    expect(a.calls).toEqual([['a1'], ['a2']]);
  });

  it('release() lets a held stream go at once', () => {
    const batcher = new WriteBatcher();
    const { stream, calls } = recorder();
    batcher.hold(stream);
    stream.write('250 ehlo\r\n');
    batcher.release(stream);
    expect(calls).toEqual([['250 ehlo\r\n']]);
    stream.write('220 go ahead\r\n');
    expect(calls).toEqual([['250 ehlo\r\n'], ['220 go ahead\r\n']]);
  });

  it('end() in the same turn still sends what was held, and the flush after it is harmless', async () => {
    const batcher = new WriteBatcher();
    const { stream, calls } = recorder();
    batcher.hold(stream);
    stream.write('421 bye\r\n');
    stream.end();
    await nextTurn();
    expect(calls.flat()).toEqual(['421 bye\r\n']);
    expect(stream.writableFinished).toBe(true);
  });

  it('does not hold a destroyed or ended stream', () => {
    const batcher = new WriteBatcher();
    const ended = recorder();
    ended.stream.end();
    batcher.hold(ended.stream);
    expect(ended.stream.writableCorked).toBe(0);
    const destroyed = recorder();
    destroyed.stream.destroy();
    batcher.hold(destroyed.stream);
    expect(destroyed.stream.writableCorked).toBe(0);
  });
});
