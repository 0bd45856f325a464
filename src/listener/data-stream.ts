/**
 * smtp-server's DATA parser, SMTPStream's `_feedDataStream` method (3.21.6), rewritten to scan
 * with `Buffer.indexOf` and to hand the message on as subarrays of the socket's reads.
 *
 * The original walks every byte in a JavaScript loop and `Buffer.concat`s every read onto the
 * previous read's last 4 bytes: one copy of every message byte, and garbage that V8 collects
 * late (docs/benchmarks.md, "W4"). This version keeps those few bytes as state and copies only
 * them. Everything else is exactly as the original does it: the same bytes reach the data
 * stream, the same escape dots are dropped, DATA ends at the same place, and the same bytes go
 * back to command parsing. test/unit/data-stream.test.ts runs both on the same input and
 * compares them.
 *
 * smtpgate's smuggling guard relies on this: DATA ends only at CRLF "." CRLF. LF "." LF,
 * CR "." CR and the other SEC Consult variants stay message content, which the guard then
 * refuses or normalizes.
 *
 * `installFastDataParser` replaces the method on one parser instance, through the
 * `_feedDataStream` seam (smtp-server-seams.ts), which also gives it the parser's DATA-mode
 * state. smtp-server creates a new parser after STARTTLS, so that one must be installed too.
 */
import { replaceDataFeed, type CommandParser, type DataModeState } from './smtp-server-seams.js';

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
/** A line that starts with a dot. The dot may be an escape or the start of the terminator. */
const LINE_DOT = Buffer.from('\n.', 'latin1');
/** How many unsent input bytes the original keeps between reads (its `_lastBytes`). */
const KEPT = 4;
const EMPTY = Buffer.alloc(0);

type Done = (err?: Error | null) => void;

/** Whether the parser is running `continue()`, where the original's timing matters (see `escaped`). */
interface Timing {
  inContinue: boolean;
}

/**
 * Puts `feedDataStream` in place of the parser's own DATA parser (the `_feedDataStream` seam),
 * and wraps `parser.continue()` to know when it runs. Do this before the first DATA, e.g. when
 * the connection is created.
 */
export function installFastDataParser(parser: CommandParser): void {
  const timing: Timing = { inContinue: false };
  const resume = parser.continue.bind(parser);
  parser.continue = () => {
    const outer = timing.inContinue;
    timing.inContinue = true;
    try {
      resume();
    } finally {
      timing.inContinue = outer;
    }
  };
  replaceDataFeed(parser, (state, chunk, done) => feedDataStream(state, chunk, done, timing));
}

/**
 * Processes one read in data mode. It follows smtp-server's `_feedDataStream` step for step,
 * but on the input as it would be if the original had glued `_lastBytes` onto the read:
 *
 *   input = kept ++ chunk        (never built: `at(i)` reads byte i of it)
 *
 * `kept` is at most 4 bytes, so only the first few positions need `at()`. From there on, lines
 * that start with a dot are found in `chunk` with `indexOf("\n.")`.
 *
 * The original's rules, with positions in `input`:
 *
 * 1. Start of DATA (`_atDataStart`: no byte of the message has been consumed yet, so `input`
 *    begins at the first byte after the DATA line):
 *    - `input` starts with "." CR LF: the message is empty. DATA ends, and the rest goes back
 *      to command parsing.
 *    - `input` starts with "..": the first dot is an escape and is dropped.
 * 2. A dot at position p >= 2 of the current segment that follows an LF (a bare LF too):
 *    - CR LF "." CR LF around it (bytes p-2 to p+2): the terminator. The bytes before the dot,
 *      including the CRLF that ends the last line, are the end of the message. Everything after
 *      the terminator goes back to command parsing.
 *    - otherwise, if the next byte is a dot too, this dot is an escape. The bytes before it are
 *      sent, and a new segment starts at the next dot. The original does this by feeding itself
 *      the rest after a setImmediate. Here the loop just continues (but see `escaped`).
 *    A dot is only decided once the two bytes after it have arrived.
 * 3. At the end of a read, the last 4 bytes of the current segment (all of it if it is shorter)
 *    are kept for the next read; the rest is sent.
 *
 * Quirks of the original kept as they are (the differential test pins them down):
 * - A bare LF also starts a line for escape dots: "a" LF ".." becomes "a" LF ".".
 * - Position 1 of the message is never checked. A message that starts with LF ".." keeps both
 *   dots.
 * - A segment's first two positions are never checked either. After an escape dot they can't
 *   match anyway, because the byte before them is a dot.
 * - The byte counts (`dataBytes`, and `byteLength`/`sizeExceeded` on the stream) grow as bytes
 *   are sent. Rule 3 holds back the same bytes as the original, so the counts are the same after
 *   every read. `_lastBytes` holds the same bytes too, so the two parsers can even be swapped
 *   in the middle of a message.
 * - If every command handler answers synchronously, a second message that ends inside
 *   `continue()` stalls the session (see `escaped`).
 */
function feedDataStream(state: DataModeState, chunk: Buffer, done: Done, timing: Timing): void {
  const stream = state.stream;
  const kept = state.takeKept() || EMPTY;
  const k = kept.length;
  const len = k + chunk.length;
  const at = (i: number): number => (i < k ? kept[i] : chunk[i - k])!;

  // `segment` is where the bytes not yet sent start. The escape dots are between segments.
  let segment = 0;
  // Rule 2 dropped an escape dot in this read (rule 1 does not count). The original then goes
  // on only after a setImmediate: it re-feeds itself the rest of the read. One caller depends
  // on that timing. SMTPStream.continue() runs the bytes after a terminator, and the reads
  // queued behind them, and only then clears its callback. If a second message among those
  // bytes ends synchronously, its callback is lost and the session stalls. So inside
  // continue(), after an escape dot, the end of the message and the end of the read wait for
  // a setImmediate here too. The same inputs then stall or go through as in the original (see
  // the test's "quirk"). Elsewhere the setImmediate would only cost time.
  let escaped = false;
  const deferred = (): boolean => escaped && timing.inContinue;
  /**
   * Done with this read: the next one is taken once the data stream has room (backpressure, on
   * every path: a read of escape-dot lines writes many small pieces, and the stream may not be
   * read at all while the relay waits for the backend's 354), and on a later turn of the event
   * loop where the original takes it. A stream that the application destroys never drains; it
   * only closes.
   */
  const readDone = (): void => {
    if (stream.writable && stream.writableNeedDrain && !stream.destroyed) {
      const onDrain = () => {
        stream.removeListener('drain', onDrain);
        stream.removeListener('close', onDrain);
        done();
      };
      stream.once('drain', onDrain);
      stream.once('close', onDrain);
      return;
    }
    if (deferred()) setImmediate(done);
    else done();
  };

  /** input[from..to) as at most two subarrays, the part in `kept` first. */
  const pieces = (from: number, to: number): Buffer[] => {
    const out: Buffer[] = [];
    if (from < k) out.push(kept.subarray(from, Math.min(to, k)));
    if (to > k) out.push(chunk.subarray(Math.max(from, k) - k, to - k));
    return out;
  };
  /** input[from..], the bytes that go back to command parsing. */
  const rest = (from: number): Buffer => (from >= k ? chunk.subarray(from - k) : Buffer.concat([kept.subarray(from), chunk]));
  /** Counts and sends input[from..to). The count comes first, as in the original. */
  const send = (from: number, to: number): void => {
    state.count(to - from);
    if (!stream.writable) return;
    for (const piece of pieces(from, to)) stream.write(piece);
  };
  /** Sends input[from..to) as the end of the message, and ends data mode at the terminator. */
  const finish = (from: number, to: number, restFrom: number): void => {
    if (deferred()) {
      escaped = false;
      setImmediate(() => finish(from, to, restFrom));
      return;
    }
    let last: Buffer | false = false;
    if (to > from) {
      state.count(to - from);
      const parts = pieces(from, to);
      last = parts.pop()!;
      if (stream.writable) for (const piece of parts) stream.write(piece);
    }
    state.end(last, rest(restFrom), done);
  };

  // Rule 1. While nothing has been consumed, `kept` holds the whole message so far (at most 4
  // bytes). These checks therefore see the start of the message however the reads were split.
  if (state.atStart) {
    if (len >= 3 && at(0) === DOT && at(1) === CR && at(2) === LF) {
      state.end(false, rest(3), done);
      return;
    }
    if (len >= 2 && at(0) === DOT && at(1) === DOT) {
      segment = 1;
      state.leaveStart();
    }
  }

  // Rule 2. A dot can be decided once the two bytes after it are here.
  const lastDecidable = len - 3;
  /** The first dot at a position >= from that follows an LF and can be decided now, or -1. */
  const nextLineDot = (from: number): number => {
    // Positions whose LF is in `kept`, one by one.
    for (; from < k + 1; from++) {
      if (from > lastDecidable) return -1;
      if (at(from) === DOT && at(from - 1) === LF) return from;
    }
    // From here on the LF is in `chunk`. (`at()` still reads the byte before it, p-2.)
    const lf = chunk.indexOf(LINE_DOT, from - 1 - k);
    if (lf < 0) return -1;
    const dot = lf + 1 + k;
    return dot <= lastDecidable ? dot : -1;
  };

  let from = segment + 2;
  for (let dot = nextLineDot(from); dot >= 0; dot = nextLineDot(from)) {
    if (at(dot - 2) === CR && at(dot + 1) === CR && at(dot + 2) === LF) {
      finish(segment, dot, dot + 3);
      return;
    }
    if (at(dot + 1) === DOT) {
      send(segment, dot);
      escaped = true;
      segment = dot + 1;
      from = segment + 2;
    } else {
      from = dot + 1;
    }
  }

  // Rule 3.
  const keep = Math.min(KEPT, len - segment);
  const sendTo = len - keep;
  if (keep > 0) {
    // A copy, so that 4 bytes don't keep the socket's whole read alive. The copy is never
    // changed, so next time it can be sent as it is.
    const next = Buffer.allocUnsafe(keep);
    for (let i = 0; i < keep; i++) next[i] = at(sendTo + i);
    state.keep(next);
  }
  if (sendTo <= segment) {
    readDone();
    return;
  }
  send(segment, sendTo);
  readDone();
}
