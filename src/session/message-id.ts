/**
 * The Message-ID of a message as it streams through, for the transaction record: only the
 * header block is looked at, at most its first 64 KiB, and nothing is kept once it has ended.
 */

/** Header bytes read at most: a Message-ID further down is not worth holding more for. */
const MAX_HEADER_BYTES = 64 * 1024;
/** A Message-ID longer than this is cut: it goes into a log line. */
const MAX_ID_CHARS = 256;
/** The header block's end. A Buffer: indexOf would make one from a string at every call. */
const BLANK_LINE = Buffer.from('\r\n\r\n');

/** A value that needs neither unfolding nor its unprintable characters replaced. */
const PRINTABLE = /^[\x20-\x7e]*$/;

export class MessageIdReader {
  #head = '';
  #done = false;

  write(chunk: Buffer): void {
    if (this.#done) return;
    // Only bytes up to the first blank line this chunk holds become text: the body behind it
    // (the whole rest of a small message) would be a string made and dropped for every message.
    // A header block's end split across chunks lies before that blank line, so it is still found.
    const blank = chunk.indexOf(BLANK_LINE);
    if (blank > 0 && this.#head === '' && !(chunk[0] === 0x0d && chunk[1] === 0x0a)) {
      // The whole header block in the first chunk, as for nearly every message: no joining, no
      // second search.
      this.#head = chunk.toString('latin1', 0, Math.min(blank + 2, MAX_HEADER_BYTES));
      this.#done = true;
      return;
    }
    const upTo = blank >= 0 ? blank + 4 : chunk.length;
    this.#head += chunk.toString('latin1', 0, Math.min(upTo, MAX_HEADER_BYTES - this.#head.length));
    if (this.#head.startsWith('\r\n')) {
      // No header block at all.
      this.#head = '';
      this.#done = true;
      return;
    }
    const end = this.#head.indexOf('\r\n\r\n');
    if (end >= 0) this.#head = this.#head.slice(0, end + 2);
    if (end >= 0 || this.#head.length >= MAX_HEADER_BYTES) this.#done = true;
  }

  /** The first Message-ID header's value, unfolded, in printable ASCII; undefined when there is none. */
  value(): string | undefined {
    const m = /(?:^|\r\n)message-id[ \t]*:[ \t]*((?:[^\r]|\r\n[ \t])*)/i.exec(this.#head);
    if (!m) return undefined;
    const raw = m[1]!;
    // Unfolded and made printable only when it needs to be; most IDs are one printable word.
    const id = (PRINTABLE.test(raw) ? raw : raw.replace(/\r\n[ \t]/g, ' ').replace(/[^\x20-\x7e]/g, '?')).trim().slice(0, MAX_ID_CHARS);
    return id || undefined;
  }
}
