/**
 * Re-encodes one message's DATA for the backend leg.
 *
 * smtp-server ends DATA only on CRLF.CRLF and hands us dot-unstuffed bytes, but it passes bare
 * CR, bare LF and NUL through unchanged. The backend may be an old Postfix/Exim/Exchange that
 * also ends DATA on `<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CR><LF>` and so on. That disagreement
 * between two SMTP implementations is "SMTP smuggling" (SEC Consult, December 2023): whatever
 * the backend reads after its own idea of end-of-data becomes a second, spoofed transaction.
 * In that attack the proxy is the *sending* side, so the invariant enforced here is that the
 * backend never receives a CR or LF outside a CRLF pair, nor a NUL, and that every line is
 * dot-stuffed (RFC 5321 §4.5.2) so that no CRLF.CRLF can appear before the caller's own.
 */
import { SMUGGLING_KIND_TEXT, type SmugglingKind } from '../smuggling.js';

export { SMUGGLING_KIND_TEXT, type SmugglingKind };
export type BareLineEndingMode = 'reject' | 'normalize';

const CR = 0x0d;
const LF = 0x0a;
const NUL = 0x00;
const DOT = 0x2e;
/** Fresh Buffers are made from these for every use, so no caller can alias or mutate a shared one. */
const SPACE = ' ';
const CRLF = '\r\n';

/**
 * A CR, LF or NUL outside a CRLF pair. Same policy as Postfix's smtpd_forbid_bare_newline:
 * such a message is refused rather than guessed at, because any guess that turns the byte
 * into a line ending is what makes smuggling work against a lenient backend.
 */
export class SmugglingError extends Error {
  readonly kind: SmugglingKind;
  /** Byte offset in the unstuffed input (the message as the client sent it). */
  readonly offset: number;

  constructor(kind: SmugglingKind, offset: number) {
    super(`${SMUGGLING_KIND_TEXT[kind]} at offset ${offset} of message data`);
    this.name = 'SmugglingError';
    this.kind = kind;
    this.offset = offset;
  }
}

/**
 * A text line longer than RFC 5321 §4.5.3.1.6 allows (or the configured limit). Only detected
 * here: whether to reject or fold is the caller's policy.
 */
export class LineTooLongError extends Error {
  /** Input offset of the first octet of the line that no longer fits (CRLF reserved). */
  readonly offset: number;
  readonly limit: number;

  constructor(offset: number, limit: number) {
    super(`line exceeds ${limit} octets (including CRLF) at byte ${offset} of message data`);
    this.name = 'LineTooLongError';
    this.offset = offset;
    this.limit = limit;
  }
}

export interface BodyEncoderOptions {
  mode: BareLineEndingMode;
  /** RFC 5321 §4.5.3.1.6: 1000 octets including CRLF. 0/undefined = no check. */
  maxLineOctets?: number;
}

/** Index of `byte` in `buf` at or after `from`, or `buf.length` if absent (keeps Math.min simple). */
function next(buf: Buffer, byte: number, from: number): number {
  const i = buf.indexOf(byte, from);
  return i === -1 ? buf.length : i;
}

/**
 * Re-encodes unstuffed message bytes (any chunking) into CRLF-only, dot-stuffed bytes ready
 * to be written after the backend's 354, synchronously: `encode(chunk)` returns the pieces to
 * write now and throws SmugglingError / LineTooLongError on a refused byte; `end()` returns
 * what is still owed. The relay writes the pieces straight to the backend socket. It does not
 * emit the final ".\r\n": the caller sends that only when the whole message was accepted, so
 * an error here leaves the backend transaction unterminated and nothing is delivered.
 *
 * Output pieces are subarrays of the input chunks (no copy; a clean chunk comes back as itself),
 * so memory stays proportional to the chunk size, not the message size. Callers must not
 * mutate a chunk after encoding it. After an error the encoder is spent: every later call
 * returns nothing.
 */
export class BodyEncoder {
  readonly #reject: boolean;
  /** Max content octets per line: maxLineOctets minus the CRLF; Infinity = unchecked. */
  readonly #maxContent: number;
  readonly #limit: number;

  #bytesIn = 0;
  #bytesOut = 0;
  #normalized = 0;
  /** No content octet of the current line has been seen yet (the stuffing decision is open). */
  #atLineStart = true;
  #lineLen = 0;
  /**
   * A CR that ended the previous chunk. Whether it is half of a CRLF or a bare CR depends on
   * the next byte, so neither it nor the rest of its chunk's output (`#held`) is returned yet:
   * in reject mode nothing from the chunk that holds the offending byte reaches the backend.
   * The one exception: a chunk that starts with the LF of a straddling CRLF and itself ends in
   * CR has that LF returned with its CR, because a CR may never leave on its own and holding
   * more than one chunk would let a client grow our memory with chunks that all end in CR.
   */
  #pendingCR: Buffer | null = null;
  #held: Buffer[] = [];
  #heldLen = 0;
  #failed = false;

  constructor(opts: BodyEncoderOptions) {
    // Validated at runtime because the mode comes from an operator's YAML: a typo must not
    // silently pick a weaker behaviour.
    if (opts.mode !== 'reject' && opts.mode !== 'normalize') {
      throw new TypeError(`BodyEncoder: mode must be 'reject' or 'normalize', got ${String(opts.mode)}`);
    }
    const limit = opts.maxLineOctets ?? 0;
    if (!Number.isSafeInteger(limit) || limit < 0 || limit === 1) {
      throw new RangeError(`BodyEncoder: maxLineOctets must be 0 (off) or an integer >= 2, got ${limit}`);
    }
    this.#reject = opts.mode === 'reject';
    this.#limit = limit;
    this.#maxContent = limit === 0 ? Infinity : limit - 2;
  }

  /** Unstuffed message bytes consumed so far, i.e. the message size as the client sent it. */
  get bytesIn(): number {
    return this.#bytesIn;
  }

  /** Bytes returned so far (dot-stuffed, CRLF-only). */
  get bytesOut(): number {
    return this.#bytesOut;
  }

  /** Stray CR/LF/NUL octets replaced by a space (normalize mode). */
  get normalized(): number {
    return this.#normalized;
  }

  /** The pieces to write for `buf`, in order (possibly none); throws on a refused byte. */
  encode(buf: Buffer): Buffer[] {
    if (this.#failed) return [];
    const len = buf.length;
    const base = this.#bytesIn;
    this.#bytesIn += len;
    if (len === 0) return [];

    // Output of the previous chunk that was held behind its trailing CR comes first.
    const pieces = this.#held;
    let total = this.#heldLen;
    this.#held = [];
    this.#heldLen = 0;
    let pos = 0;
    // How much of `pieces` belongs to the previous chunk (plus the CRLF that closes it).
    let carried = 0;
    let carriedLen = 0;

    if (this.#pendingCR !== null) {
      if (buf[0] === LF) {
        // CRLF split across chunks: a line ending, not a bare CR. CR and LF are always returned
        // by the same call so that a bare CR can never leave, even if this chunk fails later.
        pieces.push(this.#pendingCR, buf.subarray(0, 1));
        total += 2;
        this.#lineLen = 0;
        this.#atLineStart = true;
        pos = 1;
      } else {
        const err = this.#stray('bare_cr', base - 1);
        if (err) this.#fail(err);
        pieces.push(Buffer.from(SPACE));
        total += 1;
      }
      this.#pendingCR = null;
      carried = pieces.length;
      carriedLen = total;
    }

    // Next CR / LF / NUL at or after pos. Each is re-searched only once consumed, so the whole
    // chunk is scanned at most once per byte value: O(n) memchr work, no per-byte JS loop.
    let nextCR = next(buf, CR, pos);
    let nextLF = next(buf, LF, pos);
    let nextNUL = next(buf, NUL, pos);
    // Input bytes [emitFrom, pos) are verbatim output not yet added to `pieces`.
    let emitFrom = pos;

    for (;;) {
      if (this.#atLineStart && pos < len) {
        if (buf[pos] === DOT) {
          // RFC 5321 §4.5.2 transparency: a line that starts with "." gets another ".". Emit
          // the run up to and including the dot, then restart the run at the same dot so it
          // goes out twice: no inserted buffer needed.
          pieces.push(buf.subarray(emitFrom, pos + 1));
          total += pos + 1 - emitFrom;
          emitFrom = pos;
        }
        this.#atLineStart = false;
      }

      const special = Math.min(nextCR, nextLF, nextNUL);
      if (special > pos) {
        const err = this.#content(special - pos, base + pos);
        if (err) this.#fail(err);
      }
      if (special === len) break;

      const byte = buf[special];
      if (byte === CR) {
        if (special + 1 === len) {
          // Undecided until the next chunk (or end of input, where it is bare).
          if (special > emitFrom) {
            pieces.push(buf.subarray(emitFrom, special));
            total += special - emitFrom;
          }
          this.#pendingCR = buf.subarray(special);
          emitFrom = len;
          pos = len;
          break;
        }
        if (buf[special + 1] === LF) {
          this.#lineLen = 0;
          this.#atLineStart = true;
          pos = special + 2;
          nextCR = next(buf, CR, pos);
          nextLF = next(buf, LF, pos);
          continue;
        }
      }

      // A stray byte. Never turn a CR or LF into CRLF: that is the normalization a commercial
      // gateway shipped, and it manufactures exactly the `<CRLF>.<CRLF>` the attacker needs
      // once a following "." is no longer at the start of a line in the client's view.
      const err = this.#stray(byte === CR ? 'bare_cr' : byte === LF ? 'bare_lf' : 'nul', base + special);
      if (err) this.#fail(err);
      if (special > emitFrom) {
        pieces.push(buf.subarray(emitFrom, special));
        total += special - emitFrom;
      }
      pieces.push(Buffer.from(SPACE));
      total += 1;
      emitFrom = special + 1;
      pos = special + 1;
      if (byte === CR) nextCR = next(buf, CR, pos);
      else if (byte === LF) nextLF = next(buf, LF, pos);
      else nextNUL = next(buf, NUL, pos);
    }

    if (emitFrom < len) {
      pieces.push(buf.subarray(emitFrom));
      total += len - emitFrom;
    }
    if (this.#pendingCR !== null) {
      // This chunk now ends in an undecided CR. What the previous chunk owed is proven clean,
      // so it goes out now: held output never spans more than one chunk, however many
      // consecutive chunks end in CR (bounded memory for a hostile client).
      this.#held = carried > 0 ? pieces.slice(carried) : pieces;
      this.#heldLen = total - carriedLen;
      return this.#emit(carried > 0 ? pieces.slice(0, carried) : [], carriedLen);
    }
    return this.#emit(pieces, total);
  }

  /** What is still owed at the end of the message (before the caller's ".\r\n"); throws on a refused byte. */
  end(): Buffer[] {
    if (this.#failed) return [];
    const pieces = this.#held;
    let total = this.#heldLen;
    this.#held = [];
    this.#heldLen = 0;
    if (this.#pendingCR !== null) {
      // A CR as the very last byte has no LF after it: bare by definition.
      this.#pendingCR = null;
      const err = this.#stray('bare_cr', this.#bytesIn - 1);
      if (err) this.#fail(err);
      pieces.push(Buffer.from(SPACE));
      total += 1;
    }
    if (!this.#atLineStart) {
      // Only reachable when fed directly (smtp-server always ends with CRLF): the caller's
      // ".\r\n" must start a line of its own, or the backend would never see end-of-data.
      pieces.push(Buffer.from(CRLF));
      total += 2;
      this.#atLineStart = true;
      this.#lineLen = 0;
    }
    return this.#emit(pieces, total);
  }

  /** Accounts for a stray byte: an error in reject mode, a counted space in normalize mode. */
  #stray(kind: SmugglingKind, offset: number): Error | null {
    if (this.#reject) return new SmugglingError(kind, offset);
    this.#normalized += 1;
    this.#atLineStart = false;
    return this.#content(1, offset);
  }

  /** Adds n content octets starting at input offset `offset` to the current line. */
  #content(n: number, offset: number): Error | null {
    if (this.#lineLen + n > this.#maxContent) {
      return new LineTooLongError(offset + (this.#maxContent - this.#lineLen), this.#limit);
    }
    this.#lineLen += n;
    return null;
  }

  #emit(pieces: Buffer[], total: number): Buffer[] {
    this.#bytesOut += total;
    return pieces;
  }

  #fail(err: Error): never {
    // Drop everything not yet returned, including output held back behind a trailing CR.
    this.#failed = true;
    this.#held = [];
    this.#heldLen = 0;
    this.#pendingCR = null;
    throw err;
  }
}

/** Returns true iff buf contains no CR or LF except as CRLF pairs, and no NUL. */
export function isCanonical(buf: Buffer): boolean {
  if (buf.indexOf(NUL) !== -1) return false;
  for (let i = buf.indexOf(LF); i !== -1; i = buf.indexOf(LF, i + 1)) {
    if (i === 0 || buf[i - 1] !== CR) return false;
  }
  for (let i = buf.indexOf(CR); i !== -1; i = buf.indexOf(CR, i + 1)) {
    if (buf[i + 1] !== LF) return false;
  }
  return true;
}

/**
 * Undo dot-stuffing of canonical bytes (for tests comparing what a backend would store).
 * Removes the first "." of every line that starts with one (RFC 5321 §4.5.2, receiver side).
 * Lines are delimited by LF, which in canonical input is always the end of a CRLF. The caller
 * strips the terminating ".\r\n" first; it is not message content.
 */
export function dotUnstuff(buf: Buffer): Buffer {
  const pieces: Buffer[] = [];
  let from = 0;
  let lineStart = 0;
  while (lineStart < buf.length) {
    if (buf[lineStart] === DOT) {
      pieces.push(buf.subarray(from, lineStart));
      from = lineStart + 1;
    }
    const lf = buf.indexOf(LF, lineStart);
    if (lf === -1) break;
    lineStart = lf + 1;
  }
  pieces.push(buf.subarray(from));
  return Buffer.concat(pieces);
}
