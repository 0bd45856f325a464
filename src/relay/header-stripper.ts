/**
 * Removes chosen header fields (data.stripHeaders, e.g. X-Originating-IP) from the message's
 * top-level header block on its way to the backend, as Postfix admins do with header_checks
 * IGNORE: headers that leak internal topology don't reach the stored copy.
 *
 * It sits after the body encoder (message-sink.ts), so it reads the bytes exactly as the
 * backend will: CRLF-only, dot-stuffed, no line over 1000 octets. It only ever removes whole
 * lines, from their first octet through their LF, so what it passes on stays canonical and
 * stuffed, and no CRLF.CRLF can appear that the encoder did not write.
 *
 * The header block ends where the backend's does: at the empty line, or at the first line that
 * is neither a header field nor a continuation (Postfix's cleanup starts the body there too).
 * Nothing after that is looked at, so attached message/rfc822 parts and the body go through
 * untouched, chunk for chunk. A removed field takes its folded continuation lines with it
 * (RFC 5322 §2.2.3). Memory: the start of a line is held back only while it may still turn out
 * to be a removed field's, so at most one line (1000 octets, the encoder's limit).
 */

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const HTAB = 0x09;
const COLON = 0x3a;

/** RFC 5322 §3.6.8 ftext: printable US-ASCII except the colon. */
function isFieldNameOctet(b: number): boolean {
  return b >= 33 && b <= 126 && b !== COLON;
}

/**
 * lineStart: the next octet starts a line of the header block.
 * name: in a field name. gap: between a name and its colon (RFC 5322 §4.5.8 allows white
 * space there in obsolete syntax, and backends still read such a line as that field).
 * line: the rest of a field line or continuation, kept or dropped as `#dropping` says.
 * body: the header block is over; everything passes.
 */
type State = 'lineStart' | 'name' | 'gap' | 'line' | 'body';

export class HeaderStripper {
  /** The configured names, lower case. */
  readonly #names: ReadonlySet<string>;
  readonly #longest: number;
  #state: State = 'lineStart';
  /**
   * The field being read is removed. Before the client's first field it is false: a message
   * that starts with a continuation line keeps it (to the backend it continues smtpgate's own
   * last header, if smtpgate wrote one).
   */
  #dropping = false;
  /** The current line's octets held back while it may be a removed field's (subarrays, no copy). */
  #held: Buffer[] = [];
  #holding = false;
  /** The current line's field name so far, lower case, while held. */
  #name = '';

  constructor(names: readonly string[]) {
    this.#names = new Set(names.map((n) => n.toLowerCase()));
    this.#longest = Math.max(0, ...names.map((n) => n.length));
  }

  /**
   * The encoder's pieces to send on, in order, without the removed lines; possibly none while
   * a line is held. Once the header block is over, `pieces` comes back as itself.
   */
  filter(pieces: Buffer[]): Buffer[] {
    if (this.#state === 'body') return pieces;
    const out: Buffer[] = [];
    for (const piece of pieces) {
      let pos = 0;
      while (pos < piece.length) pos = this.#step(piece, pos, out);
    }
    return out;
  }

  /** What is still held at the end of the message (only a line without its CRLF can be). */
  end(): Buffer[] {
    const out: Buffer[] = [];
    this.#release(out);
    this.#state = 'body';
    return out;
  }

  /** Handles `chunk` from `pos` in the current state, as far as the state lasts; returns where it stopped. */
  #step(chunk: Buffer, pos: number, out: Buffer[]): number {
    switch (this.#state) {
      case 'body':
        out.push(chunk.subarray(pos));
        return chunk.length;
      case 'line': {
        const lf = chunk.indexOf(LF, pos);
        const end = lf === -1 ? chunk.length : lf + 1;
        if (!this.#dropping) out.push(chunk.subarray(pos, end));
        if (lf !== -1) this.#state = 'lineStart';
        return end;
      }
      case 'lineStart':
        this.#startLine(chunk[pos]!);
        return pos;
      case 'name': {
        let i = pos;
        while (i < chunk.length && isFieldNameOctet(chunk[i]!)) i++;
        if (this.#holding) this.#name += chunk.toString('latin1', pos, i).toLowerCase();
        this.#take(chunk.subarray(pos, i), out);
        // Longer than every configured name: this line stays, so it need not be held.
        if (this.#holding && this.#name.length > this.#longest) this.#release(out);
        if (i < chunk.length) this.#afterName(chunk[i]!, out);
        return i;
      }
      case 'gap': {
        let i = pos;
        while (i < chunk.length && (chunk[i] === SP || chunk[i] === HTAB)) i++;
        this.#take(chunk.subarray(pos, i), out);
        if (i < chunk.length) this.#afterName(chunk[i]!, out);
        return i;
      }
    }
  }

  /** The first octet of a line decides what the line can be. */
  #startLine(first: number): void {
    if (first === SP || first === HTAB) {
      // A continuation line: it goes where its field goes.
      this.#state = 'line';
    } else if (isFieldNameOctet(first)) {
      this.#state = 'name';
      this.#name = '';
      this.#holding = this.#names.size > 0;
    } else {
      // The empty line (its CR), or a line no header field starts with: the body begins.
      this.#state = 'body';
    }
  }

  /** The octet after a field name (or after the white space that follows it). */
  #afterName(octet: number, out: Buffer[]): void {
    if (octet === COLON) {
      this.#dropping = this.#holding && this.#names.has(this.#name);
      if (this.#dropping) {
        this.#held = [];
        this.#holding = false;
      } else {
        this.#release(out);
      }
      this.#state = 'line';
    } else if (octet === SP || octet === HTAB) {
      this.#state = 'gap';
    } else {
      // A name without a colon (or its CR): not a header field, so the body begins here.
      this.#release(out);
      this.#state = 'body';
    }
  }

  /** Holds `piece` while the line may be removed; passes it on otherwise. */
  #take(piece: Buffer, out: Buffer[]): void {
    if (piece.length === 0) return;
    if (this.#holding) this.#held.push(piece);
    else out.push(piece);
  }

  /** The held start of the line stays in the message after all. */
  #release(out: Buffer[]): void {
    out.push(...this.#held);
    this.#held = [];
    this.#holding = false;
  }
}
