/**
 * The DKIM spool on its own: it gives back exactly what it was given, in order, in memory or
 * through its file, and never overwrites a buffer the writer may still hold.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Spool, type PieceWriter } from '../../src/dkim/spool.js';

/**
 * A writer like the backend's DataWriter. 'holds': every piece is kept by reference and still
 * pending (write() says go on, pendingBytes > 0), as a socket whose kernel buffer is full but
 * below its high-water mark. 'drains': write() asks to wait, the drain comes a turn later and
 * then nothing is pending, as a socket that takes each piece after a while.
 */
class RecordingWriter implements PieceWriter {
  readonly held: Buffer[] = [];
  #pending = 0;
  /** Set false to play a backend that failed: the drain then comes at once, as DataWriter's does. */
  open = true;
  constructor(readonly mode: 'holds' | 'drains') {}

  get pendingBytes(): number {
    return this.#pending;
  }

  write(piece: Buffer): boolean {
    this.held.push(piece);
    this.#pending += piece.length;
    return this.mode === 'holds';
  }

  onDrain(cb: () => void): void {
    if (!this.open) return cb();
    setImmediate(() => {
      // The socket has copied what it held into the kernel: the bytes are taken as they are now.
      for (let i = this.held.length - 1; i >= 0 && this.#pending > 0; i--) {
        this.#pending -= this.held[i]!.length;
        this.held[i] = Buffer.from(this.held[i]!);
      }
      this.#pending = 0;
      cb();
    });
  }
}


describe('Spool', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-spool-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const cases = [
    { bytes: 10, threshold: 1024 * 1024 },
    { bytes: 300_000, threshold: 1024 * 1024 },
    { bytes: 3_000_000, threshold: 0 },
    { bytes: 3_000_000, threshold: 64 * 1024 },
    { bytes: 3_000_000, threshold: 1024 * 1024 },
  ];
  for (const mode of ['holds', 'drains'] as const) {
    for (const { bytes, threshold } of cases) {
      test(`gives back ${bytes} bytes as written (memoryThreshold ${threshold}, a writer that ${mode}), never overwriting a held piece`, async () => {
        // Random: a piece read into the wrong buffer can't happen to hold the same bytes.
        const content = randomBytes(bytes);
        const spool = new Spool({ dir, memoryThreshold: threshold });
        // The caller's buffer is reused between writes, as a socket's would be: the spool must copy.
        const scratch = Buffer.alloc(70_001);
        for (let at = 0; at < content.length; ) {
          const n = Math.min(scratch.length - (at % 7), content.length - at);
          content.copy(scratch, 0, at, at + n);
          const flowing = spool.write(scratch.subarray(0, n));
          scratch.fill(0);
          at += n;
          if (!flowing) await new Promise<void>((resolve) => spool.onDrain(resolve));
        }
        expect(spool.inMemory).toBe(bytes <= threshold);
        const out = new RecordingWriter(mode);
        await spool.replay(out);
        // Compared only now: a buffer the spool read into again while the writer held it shows here.
        expect(Buffer.concat(out.held).equals(content)).toBe(true);
        await spool.dispose();
        expect(await readdir(dir)).toEqual([]);
      });
    }
  }

  test('a writer that fails during the replay of a spooled message stops the replay: the rest of the file is not read', async () => {
    const content = randomBytes(3_000_000);
    const spool = new Spool({ dir, memoryThreshold: 0 });
    for (let at = 0; at < content.length; at += 65_536) {
      if (!spool.write(content.subarray(at, at + 65_536))) await new Promise<void>((resolve) => spool.onDrain(resolve));
    }
    const out = new RecordingWriter('drains');
    const write = out.write.bind(out);
    // The backend fails after the second piece: from then on the writer is closed.
    out.write = (piece) => {
      const flowing = write(piece);
      if (out.held.length === 2) out.open = false;
      return flowing;
    };
    await spool.replay(out);
    expect(out.held.length).toBeLessThanOrEqual(3);
    expect(Buffer.concat(out.held).length).toBeLessThan(content.length);
    await spool.dispose();
    expect(await readdir(dir)).toEqual([]);
  });
});
