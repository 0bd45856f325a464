/**
 * How fast a command line must arrive. smtp-server's idle timer (client.timeouts.command) is
 * reset by every byte, so a client that trickles a line in a byte at a time would hold its
 * connection until the session cap: a few such clients per address hold their slots for an hour.
 * Like Postfix's smtpd_per_record_deadline, a line gets a deadline from its first byte to its
 * CRLF (`deadlineMs`), and once it has taken `graceMs` it must also have come in at `minRate`
 * bytes per second: each byte buys 1/minRate seconds, as smtpd_min_data_rate does for DATA.
 *
 * The message itself (DATA) is not a command line: its pace is the DATA watchdog's
 * (client.timeouts.data, client.minDataRate) in smtp-listener.ts.
 *
 * `judgeLine` is the pure decision; `CommandLineWatch` keeps one connection's line in progress.
 */
import type { Refusal } from '../reply.js';
import { commandLineOverdue, commandLineTooSlow } from '../refusals.js';
import { formatWindow } from '../limits/rate.js';

export interface CommandPace {
  /** client.timeouts.commandLine, ms. */
  readonly deadlineMs: number;
  /** client.minCommandRate, bytes per second; 0 turns the rate off. */
  readonly minRate: number;
  /** client.minCommandRateGrace, ms. */
  readonly graceMs: number;
}

export type LineVerdict = { readonly overdue: Refusal } | { readonly recheckInMs: number };

/**
 * A line with `bytes` received so far, `elapsedMs` after its first byte: over its time, or how
 * long until it could be (if no more bytes come).
 */
export function judgeLine(bytes: number, elapsedMs: number, pace: CommandPace): LineVerdict {
  const byRate = pace.minRate > 0 ? Math.max(pace.graceMs, (bytes * 1000) / pace.minRate) : Infinity;
  const allowance = Math.min(pace.deadlineMs, byRate);
  if (elapsedMs < allowance) return { recheckInMs: Math.ceil(allowance - elapsedMs) };
  if (elapsedMs >= pace.deadlineMs) {
    return { overdue: commandLineOverdue(formatWindow(pace.deadlineMs)) };
  }
  return { overdue: commandLineTooSlow(pace.minRate) };
}

/** The first bytes of a line, enough for its verb (the refusal's stage). */
const HEAD_BYTES = 16;

/**
 * The command line in progress on one connection: fed every read made in command mode, it
 * calls `onOverdue` (once) when the line in progress runs out of time.
 */
export class CommandLineWatch {
  readonly #pace: CommandPace;
  readonly #onOverdue: (r: Refusal, head: string) => void;
  readonly #now: () => number;
  /** A line has begun and not ended. */
  #inLine = false;
  /** The line's time counted before the current wait (see hold()). */
  #waitedMs = 0;
  /** When the current wait for the client began. */
  #since = 0;
  /** The parser is working on what it read (see hold()). */
  #held = false;
  #bytes = 0;
  #head = '';
  #timer: NodeJS.Timeout | undefined;

  constructor(pace: CommandPace, onOverdue: (r: Refusal, head: string) => void, now: () => number = Date.now) {
    this.#pace = pace;
    this.#onOverdue = onOverdue;
    this.#now = now;
  }

  /** A read from the client while the parser is in command mode. */
  read(chunk: Buffer): void {
    const lf = chunk.lastIndexOf(0x0a);
    if (lf >= 0) {
      // Every line up to here is complete; what follows the last LF starts a new one.
      this.stop();
      if (lf + 1 < chunk.length) this.#start(chunk.subarray(lf + 1));
    } else if (this.#inLine) {
      this.#bytes += chunk.length;
      if (this.#head.length < HEAD_BYTES) this.#head += chunk.subarray(0, HEAD_BYTES - this.#head.length).toString('latin1');
    } else if (chunk.length > 0) {
      this.#start(chunk);
    }
  }

  /**
   * The parser is answering the commands it just read, and takes no more bytes until it is
   * done (smtp-server's parser waits on each command's handler, e.g. a backend reply): that
   * time is smtpgate's, not the client's, so the line's clock stops until `release()`.
   * Without this, a pipelining client (RFC 2920) whose batch TCP split inside a line would be
   * timed while the backend answers the commands before it, and cut off mid-transaction.
   */
  hold(): void {
    if (this.#held) return;
    if (this.#inLine) this.#waitedMs += this.#now() - this.#since;
    this.#held = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** The parser waits for the client again: a line in progress is timed from here on. */
  release(): void {
    if (!this.#held) return;
    this.#held = false;
    this.#since = this.#now();
    if (this.#inLine) this.#check();
  }

  /** No command line is in progress any more: the message (DATA) began, or the connection closed. */
  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#inLine = false;
  }

  #start(piece: Buffer): void {
    this.#inLine = true;
    this.#waitedMs = 0;
    this.#since = this.#now();
    this.#bytes = piece.length;
    this.#head = piece.subarray(0, HEAD_BYTES).toString('latin1');
    if (!this.#held) this.#check();
  }

  #arm(ms: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#check(), ms);
    this.#timer.unref();
  }

  #check(): void {
    const verdict = judgeLine(this.#bytes, this.#waitedMs + this.#now() - this.#since, this.#pace);
    if ('recheckInMs' in verdict) return this.#arm(verdict.recheckInMs);
    this.stop();
    this.#onOverdue(verdict.overdue, this.#head);
  }
}
