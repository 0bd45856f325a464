/**
 * Holds the socket writes made during one turn of the event loop and lets them go together at
 * its end (`setImmediate`): a socket written to several times in the turn makes one syscall,
 * and the sockets of many sessions are flushed back to back.
 *
 * Why it pays: on loopback and in VMs, most of a small write's cost is waking the peer (its
 * TCP receive path runs inside our write, then an IPI to the CPU it sleeps on). Written one by
 * one, interleaved with the JavaScript that produces them, every write finds its peer asleep
 * again; written in a burst, the first wakes it and the rest find it awake. The benchmark
 * (docs/benchmarks.md) measured 10–15% less CPU per message and 10–20% more throughput.
 * The delay is bounded by the current turn: no timer, nothing like Nagle's 40 ms.
 *
 * One instance per App (built in the composition root), shared by the listeners and the
 * backend connections.
 */
import type { Writable } from 'node:stream';

export class WriteBatcher {
  readonly #held = new Set<Writable>();
  #scheduled = false;

  /** Corks `socket` until the end of this turn, unless it is held already. Call before writing. */
  hold(socket: Writable): void {
    if (this.#held.has(socket) || socket.destroyed || socket.writableEnded) return;
    socket.cork();
    this.#held.add(socket);
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.#flush);
    }
  }

  /**
   * Lets what `socket` holds go now: before anything that takes the socket over (a STARTTLS
   * upgrade wraps it, so bytes still corked would be lost or sent inside TLS).
   */
  release(socket: Writable): void {
    if (!this.#held.delete(socket)) return;
    socket.uncork();
  }

  readonly #flush = (): void => {
    this.#scheduled = false;
    // end() already uncorked a socket that was closed meanwhile; uncork() is then a no-op.
    for (const socket of this.#held) socket.uncork();
    this.#held.clear();
  };
}
