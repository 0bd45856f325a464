/**
 * Holds one message while its DKIM body hash is computed: in memory up to a threshold, the rest
 * in a file in the spool folder. The file is created 0600 with O_EXCL and unlinked the moment
 * it is open, so it has no name while the message is held: however the transaction ends (the
 * final reply, the client gone mid-DATA, a backend refusal, even a crash), nothing is left on
 * disk once the descriptor is closed, and dispose() closes it.
 */
import { randomBytes } from 'node:crypto';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';

/** Bytes queued for the file before write() asks the caller to wait. */
const FILE_QUEUE_BYTES = 1024 * 1024;
/** Bytes read back from the file per piece (two such buffers per replay, reused). */
const READ_BYTES = 256 * 1024;

export interface SpoolSettings {
  readonly dir: string;
  readonly memoryThreshold: number;
}

/** The spool file could not be written or read (disk full, folder gone): the message is refused with 451. */
export class SpoolError extends Error {}

export class Spool {
  readonly #settings: SpoolSettings;
  #memory: Buffer[] = [];
  #memoryBytes = 0;
  #file: Promise<FileHandle> | undefined;
  #fileBytes = 0;
  /** Bytes waiting for the file, and the write loop running, if any. */
  #queue: Buffer[] = [];
  #queuedBytes = 0;
  #flushing: Promise<void> | undefined;
  #drainWaiters: (() => void)[] = [];
  #error: SpoolError | undefined;
  #disposed = false;

  constructor(settings: SpoolSettings) {
    this.#settings = settings;
  }

  /** Whether the message so far is all in memory (no file was needed). */
  get inMemory(): boolean {
    return this.#file === undefined;
  }

  get bytes(): number {
    return this.#memoryBytes + this.#fileBytes + this.#queuedBytes;
  }

  /** Holds a piece; false: wait for onDrain before the next. Throws SpoolError once the file failed. */
  write(piece: Buffer): boolean {
    if (this.#error) throw this.#error;
    if (this.#file === undefined && this.#memoryBytes + piece.length <= this.#settings.memoryThreshold) {
      this.#memory.push(piece);
      this.#memoryBytes += piece.length;
      return true;
    }
    this.#file ??= this.#openFile();
    this.#queue.push(piece);
    this.#queuedBytes += piece.length;
    this.#flushing ??= this.#flush();
    return this.#queuedBytes < FILE_QUEUE_BYTES;
  }

  /** Runs `cb` once the file has caught up (at once when nothing is queued). */
  onDrain(cb: () => void): void {
    if (this.#queuedBytes < FILE_QUEUE_BYTES || this.#error) cb();
    else this.#drainWaiters.push(cb);
  }

  /** Hands over what is held in memory and forgets it (only while `inMemory`). */
  takeMemory(): Buffer[] {
    if (!this.inMemory) throw new Error('the spool holds a file; replay() it');
    const pieces = this.#memory;
    this.#memory = [];
    this.#memoryBytes = 0;
    return pieces;
  }

  /**
   * Writes everything held to `out` in order, waiting for `drain` whenever it returns false.
   * `drain` must call back once everything written has left (or the writer has failed and
   * writes nothing more): the file is read back into two buffers, each reused once its bytes
   * are gone, so a 50 MB message leaves no 50 MB of read buffers for the garbage collector.
   * Throws SpoolError when the file can't be read back.
   */
  async replay(write: (piece: Buffer) => boolean, drain: (cb: () => void) => void): Promise<void> {
    const wait = () => new Promise<void>((resolve) => drain(resolve));
    for (const piece of this.#memory) if (!write(piece)) await wait();
    this.#memory = [];
    if (!this.#file) return;
    await this.#flushing;
    if (this.#error) throw this.#error;
    const handle = await this.#file;
    const total = this.#fileBytes;
    const read = async (into: Buffer, at: number): Promise<number> => {
      let n: number;
      try {
        ({ bytesRead: n } = await handle.read(into, 0, Math.min(into.length, total - at), at));
      } catch (err) {
        throw new SpoolError(`cannot read the DKIM spool file back: ${(err as Error).message}`);
      }
      if (n === 0) throw new SpoolError('the DKIM spool file is shorter than what was written to it');
      return n;
    };
    const buffers = [Buffer.allocUnsafeSlow(READ_BYTES), Buffer.allocUnsafeSlow(READ_BYTES)];
    let current = 0;
    let at = 0;
    let reading = read(buffers[0]!, 0);
    while (at < total) {
      const n = await reading;
      at += n;
      const flowing = write(buffers[current]!.subarray(0, n));
      // Written and still queued behind the writer's buffer: not ours to overwrite.
      if (flowing) buffers[current] = Buffer.allocUnsafeSlow(READ_BYTES);
      current ^= 1;
      // The other buffer's bytes are gone (drained below, or it was replaced): the next read
      // fills it while this piece drains.
      if (at < total) reading = read(buffers[current]!, at);
      if (!flowing) {
        // A read that fails meanwhile is thrown by the await at the top of the loop.
        reading.catch(() => undefined);
        await wait();
      }
    }
  }

  /** Forgets the message and closes the file; safe to call more than once, and mid-write. */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#memory = [];
    this.#queue = [];
    this.#queuedBytes = 0;
    this.#wakeDrainWaiters();
    if (!this.#file) return;
    await this.#flushing;
    const handle = await this.#file.catch(() => undefined);
    await handle?.close().catch(() => undefined);
  }

  async #openFile(): Promise<FileHandle> {
    const file = path.join(this.#settings.dir, `smtpgate-dkim-${process.pid}-${randomBytes(8).toString('hex')}`);
    const handle = await open(file, 'wx+', 0o600);
    // No name from here on: the descriptor is the only way to the bytes.
    await unlink(file).catch(() => undefined);
    return handle;
  }

  async #flush(): Promise<void> {
    try {
      const handle = await this.#file!;
      while (this.#queue.length > 0 && !this.#disposed) {
        const batch = this.#queue;
        const bytes = this.#queuedBytes;
        this.#queue = [];
        let written = 0;
        while (written < bytes) {
          const { bytesWritten } = await handle.writev(written === 0 ? batch : [Buffer.concat(batch).subarray(written)], this.#fileBytes + written);
          written += bytesWritten;
        }
        this.#fileBytes += bytes;
        this.#queuedBytes -= bytes;
        if (this.#queuedBytes < FILE_QUEUE_BYTES) this.#wakeDrainWaiters();
      }
    } catch (err) {
      this.#error = new SpoolError(`cannot hold the message in the DKIM spool folder ${this.#settings.dir}: ${(err as Error).message}`);
      this.#queue = [];
      this.#queuedBytes = 0;
      this.#wakeDrainWaiters();
    } finally {
      this.#flushing = undefined;
    }
  }

  #wakeDrainWaiters(): void {
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const cb of waiters) cb();
  }
}
