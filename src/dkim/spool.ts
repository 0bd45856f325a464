/**
 * Holds one message while its DKIM body hash is computed: in memory up to a threshold (in whole
 * stages, see STAGE_BYTES), the rest in a file in the spool folder. The file is created 0600
 * with O_EXCL and unlinked the moment it is open, so it has no name while the message is held:
 * however the transaction ends (the final reply, the client gone mid-DATA, a backend refusal,
 * even a crash), nothing is left on disk once the descriptor is closed, and dispose() closes it.
 */
import { randomBytes } from 'node:crypto';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';

/** Bytes queued for the file before write() asks the caller to wait. */
const FILE_QUEUE_BYTES = 1024 * 1024;
/**
 * The spool copies what it is given into buffers of this size (stages) and reads the file back
 * into them too. A stage written to the file is reused, so a held message costs a few stages
 * however large it is, and the caller's buffers (the client's socket reads) die young as they
 * do when a message streams: held by reference while the file write waits, they outlived the
 * young generation's collections and piled up until a full one (W4-dkim: 40 MB RSS growth).
 */
const STAGE_BYTES = 256 * 1024;
/** Stages kept for reuse: as many as the file queue holds, and the one being filled. */
const FREE_STAGES = FILE_QUEUE_BYTES / STAGE_BYTES + 1;

/** Where a held message goes: the backend's DataWriter. */
export interface PieceWriter {
  /** Takes a piece; false: wait for onDrain before the next. */
  write(piece: Buffer): boolean;
  /** Calls back once everything written has left, or the writer has failed and writes nothing more. */
  onDrain(cb: () => void): void;
  /** Bytes written that have not left yet (0: no piece written so far is referenced any more). */
  readonly pendingBytes: number;
  /** False once the writer has failed: it writes nothing more, so the rest need not be read. */
  readonly open: boolean;
}

export interface SpoolSettings {
  readonly dir: string;
  readonly memoryThreshold: number;
}

/** The spool file could not be written or read (disk full, folder gone): the message is refused with 451. */
export class SpoolError extends Error {}

export class Spool {
  readonly #settings: SpoolSettings;
  /** Full stages held in memory, the message's beginning while it fits memoryThreshold. */
  #memory: Buffer[] = [];
  #memoryBytes = 0;
  /** The stage being filled, and how much of it is. */
  #stage: Buffer | undefined;
  #staged = 0;
  #file: Promise<FileHandle> | undefined;
  #fileBytes = 0;
  /** Stages waiting for the file, and the write loop running, if any. */
  #queue: Buffer[] = [];
  #queuedBytes = 0;
  #flushing: Promise<void> | undefined;
  /** Stages written to the file, to fill again. */
  #free: Buffer[] = [];
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
    return this.#memoryBytes + this.#fileBytes + this.#queuedBytes + this.#staged;
  }

  /**
   * Holds a copy of a piece (the piece is the caller's again at once); false: wait for onDrain
   * before the next. Throws SpoolError once the file failed.
   */
  write(piece: Buffer): boolean {
    if (this.#error) throw this.#error;
    for (let at = 0; at < piece.length; ) {
      const stage = (this.#stage ??= this.#newStage());
      const n = piece.copy(stage, this.#staged, at);
      this.#staged += n;
      at += n;
      if (this.#staged === stage.length) this.#seal();
    }
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
    if (this.#staged > 0) pieces.push(this.#stage!.subarray(0, this.#staged));
    // Handed over with the bytes: not ours to fill again.
    this.#memory = [];
    this.#memoryBytes = 0;
    this.#stage = undefined;
    this.#staged = 0;
    return pieces;
  }

  /**
   * Writes everything held to `out` in order, waiting for its drain whenever write() says so.
   * The file is read back into two stages, each filled again once the writer holds none of its
   * bytes. Throws SpoolError when the file can't be read back.
   */
  async replay(out: PieceWriter): Promise<void> {
    const wait = () => new Promise<void>((resolve) => out.onDrain(resolve));
    if (!this.#file) {
      for (const piece of this.takeMemory()) if (!out.write(piece)) await wait();
      return;
    }
    for (const piece of this.#memory) if (!out.write(piece)) await wait();
    this.#memory = [];
    // The last, partly filled stage goes to the file like the others.
    if (this.#staged > 0) this.#seal(true);
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
    const buffers = [this.#newStage(), this.#newStage()];
    let current = 0;
    let at = 0;
    let reading = read(buffers[0]!, 0);
    while (at < total) {
      const n = await reading;
      // The backend failed (the writer woke the wait below): reading the rest is wasted work.
      if (!out.open) return;
      at += n;
      const flowing = out.write(buffers[current]!.subarray(0, n));
      // Usually the socket takes a piece at once (pendingBytes 0) or asks to wait for its
      // drain; a piece it still holds without asking is not ours to overwrite.
      if (flowing && out.pendingBytes > 0) buffers[current] = Buffer.allocUnsafeSlow(STAGE_BYTES);
      current ^= 1;
      // None of the other buffer's bytes is held any more (taken at once, drained below, or
      // the buffer was replaced): the next read fills it while this piece drains.
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
    this.#stage = undefined;
    this.#staged = 0;
    this.#free = [];
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
        for (const stage of batch) if (this.#free.length < FREE_STAGES) this.#free.push(Buffer.from(stage.buffer, stage.byteOffset, STAGE_BYTES));
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

  #newStage(): Buffer {
    return this.#free.pop() ?? Buffer.allocUnsafeSlow(STAGE_BYTES);
  }

  /**
   * The stage being filled is full (or, with `last`, the message ended): it stays in memory
   * while the message fits memoryThreshold, else it is queued for the file.
   */
  #seal(last = false): void {
    const stage = this.#stage!.subarray(0, this.#staged);
    this.#stage = undefined;
    this.#staged = 0;
    if (!last && this.#file === undefined && this.#memoryBytes + stage.length <= this.#settings.memoryThreshold) {
      this.#memory.push(stage);
      this.#memoryBytes += stage.length;
      return;
    }
    this.#file ??= this.#openFile();
    this.#queue.push(stage);
    this.#queuedBytes += stage.length;
    this.#flushing ??= this.#flush();
  }

  #wakeDrainWaiters(): void {
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const cb of waiters) cb();
  }
}
