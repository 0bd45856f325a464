/**
 * What `data` rules look at: the message's header block and its MIME parts' names and types.
 *
 * - `parseHeaderBlock(buf)`: a complete header block → headers (unfolded, names lower-cased).
 * - `MessageScanner`: fed the message chunk by chunk as it streams to the backend, it keeps
 *   the top-level header block and, for every MIME part, only the part's own header block:
 *   never a body. Memory is bounded by the limits below whatever the client sends.
 *
 * Every limit that is hit is reported (`incomplete`), so a rule can refuse a message that was
 * built to be too deep or too wide to scan (`scanIncomplete: true`). A top-level header block
 * cut short is reported on its own (`headersTruncated`): sender binding refuses such a message
 * by itself, since a From: after the cut was never seen.
 */
import type { Header, MimePart } from './types.js';
import libmime from 'libmime';
import { parseHeaderValue } from 'nodemailer/lib/mime-funcs';

export interface HeaderLimits {
  /** Header fields kept; further ones are dropped and the block is marked truncated. */
  readonly maxHeaders: number;
  /** Bytes of the header block looked at. */
  readonly maxBytes: number;
}

export const DEFAULT_HEADER_LIMITS: HeaderLimits = { maxHeaders: 1000, maxBytes: 256 * 1024 };

export interface HeaderBlock {
  readonly headers: Header[];
  /** The blank line that ends the header block was seen. */
  readonly complete: boolean;
  /** Offset of the first body byte, when complete. */
  readonly bodyOffset?: number;
  /** A limit was hit: headers after it are missing. */
  readonly truncated: boolean;
}

/** Collects header fields line by line (lines without their CRLF). */
class HeaderAccumulator {
  readonly headers: Header[] = [];
  truncated = false;
  #bytes = 0;
  #current: { name: string; value: string } | undefined;
  readonly #limits: HeaderLimits;

  constructor(limits: HeaderLimits) {
    this.#limits = limits;
  }

  push(line: Buffer): void {
    if (this.truncated) return;
    this.#bytes += line.length + 2;
    if (this.#bytes > this.#limits.maxBytes) {
      this.truncated = true;
      this.#flush();
      return;
    }
    // RFC 5322 §2.2.3: a line starting with white space continues the previous field.
    if (line[0] === 0x20 || line[0] === 0x09) {
      if (this.#current) this.#current.value += line.toString('utf8');
      return;
    }
    this.#flush();
    const text = line.toString('utf8');
    const colon = text.indexOf(':');
    // Not a header field: skipped, not taken as the end of the block. A backend may still
    // read the fields after it, so they must not escape the rules.
    if (colon <= 0) return;
    // RFC 5322 §4.5 (obsolete syntax): white space before the colon.
    const name = text.slice(0, colon).replace(/[ \t]+$/, '');
    if (!/^[\x21-\x39\x3b-\x7e]+$/.test(name)) return;
    if (this.headers.length >= this.#limits.maxHeaders) {
      this.truncated = true;
      return;
    }
    this.#current = { name: name.toLowerCase(), value: text.slice(colon + 1) };
  }

  finish(): Header[] {
    this.#flush();
    return this.headers;
  }

  #flush(): void {
    if (!this.#current) return;
    const value = this.#current.value.replace(/^[ \t]+|[ \t]+$/g, '');
    this.headers.push({ name: this.#current.name, value, decoded: decodeEncodedWords(value) });
    this.#current = undefined;
  }
}

/**
 * Parses a header block: everything up to the first empty line. Folded lines are unfolded,
 * names lower-cased, values decoded as UTF-8 (RFC 6532) with `decoded` also undoing RFC 2047
 * encoded-words. Lines that are not header fields are skipped.
 */
export function parseHeaderBlock(buf: Buffer, limits: HeaderLimits = DEFAULT_HEADER_LIMITS): HeaderBlock {
  const acc = new HeaderAccumulator(limits);
  let pos = 0;
  while (pos < buf.length && !acc.truncated) {
    const lf = buf.indexOf(0x0a, pos);
    const end = lf < 0 ? buf.length : lf;
    const line = buf.subarray(pos, end > pos && buf[end - 1] === 0x0d ? end - 1 : end);
    const next = lf < 0 ? buf.length : lf + 1;
    if (line.length === 0 && lf >= 0) return { headers: acc.finish(), complete: true, bodyOffset: next, truncated: false };
    acc.push(line);
    pos = next;
  }
  return { headers: acc.finish(), complete: false, truncated: acc.truncated };
}

// ── RFC 2047 and RFC 2231: libmime and nodemailer's mime-funcs ──────────────────────────

/**
 * Decodes RFC 2047 encoded-words ("=?UTF-8?B?...?=", "=?iso-8859-1?Q?...?=") with libmime:
 * white space between adjacent words dropped (§6.2), a character split across words joined.
 * An unknown charset decodes as UTF-8, so an ASCII ".exe" still reads as ".exe".
 */
export function decodeEncodedWords(text: string): string {
  return text.includes('=?') ? libmime.decodeWords(text) : text;
}

export interface StructuredValue {
  /** The value before the parameters, lower-cased: "multipart/mixed", "attachment". */
  readonly value: string;
  /**
   * Parameters by lower-cased name, RFC 2231 continuations and charsets decoded, RFC 2047
   * words (which many mailers put in quoted parameters) decoded. Every value a receiver may
   * take is kept: a name given both plain and extended (`filename` and `filename*`), or
   * given twice, has one entry per reading.
   */
  readonly params: ReadonlyMap<string, readonly string[]>;
  /** One parameter was given more often than is looked at: the later ones were not read. */
  readonly incomplete: boolean;
}

/** Where a parameter's plain value or an RFC 2231 first section ("name*", "name*0", "name*0*") starts. */
const PARAM_START = /;[ \t]*([^\s=;*()"]+)(\*0?\*?)?[ \t]*=/g;
/** Readings of one parameter name looked at beyond the first. */
const MAX_REPEATS = 8;

type Readings = Map<string, string[]>;

function add(readings: Readings, name: string, value: string): void {
  const list = readings.get(name);
  if (!list) readings.set(name, [value]);
  else if (!list.includes(value)) list.push(value);
}

/**
 * Both libraries' readings of `text`: nodemailer's takes the plain `filename` over the
 * RFC 2231 `filename*` and libmime's the other way round, as mail readers differ on it too.
 * Both take the first of a repeated name. `only` limits what is recorded to one name.
 */
function read(text: string, readings: Readings, only?: string): string {
  const nm = parseHeaderValue(text, { stripComments: true });
  const lm = libmime.parseHeaderValue(text, { stripComments: true });
  for (const [name, v] of Object.entries(nm.params)) {
    // nodemailer hands RFC 2231 values on as encoded-words: "=?utf-8?Q?r=C3=A9sum=C3=A9.pdf?=".
    if (only === undefined || name === only) add(readings, name, decodeEncodedWords(v));
  }
  for (const [name, v] of Object.entries(lm.params)) {
    if (only !== undefined && name !== only) continue;
    // libmime has decoded RFC 2231 values already; a reader that decodes RFC 2047 words in
    // them once more sees the second form.
    if (lm.decodedParams.includes(name)) add(readings, name, v);
    add(readings, name, decodeEncodedWords(v));
  }
  return nm.value;
}

/** Parses a Content-Type or Content-Disposition value with its parameters (RFC 2045, RFC 2231). */
export function parseStructuredValue(text: string): StructuredValue {
  const readings: Readings = new Map();
  const value = read(text, readings);
  // A repeated name (twice plain, or twice an RFC 2231 start): both libraries take the first,
  // other readers the last. Each repeat is read again from where it starts, so every one is
  // seen (a quoted ";x=" found here only adds a reading, never hides one).
  const starts = new Map<string, { name: string; at: number[] }>();
  for (const m of text.matchAll(PARAM_START)) {
    const name = m[1]!.toLowerCase();
    const key = `${name}${m[2] === undefined ? '' : '*'}`;
    const entry = starts.get(key);
    if (entry) entry.at.push(m.index);
    else starts.set(key, { name, at: [m.index] });
  }
  let incomplete = false;
  for (const { name, at } of starts.values()) {
    if (at.length < 2) continue;
    if (at.length - 1 > MAX_REPEATS) incomplete = true;
    for (const i of at.slice(1, MAX_REPEATS + 1)) read(`x${text.slice(i)}`, readings, name);
  }
  return { value: value.trim().toLowerCase(), params: readings, incomplete };
}

/**
 * The name a file would get on disk: control characters removed, any folder part dropped,
 * and trailing dots and spaces trimmed (Windows ignores them, so "x.exe." is an .exe).
 */
export function normalizeFilename(name: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = name.replace(/[\x00-\x1f\x7f]/g, '');
  const base = clean.slice(Math.max(clean.lastIndexOf('/'), clean.lastIndexOf('\\')) + 1);
  return base.trim().replace(/[. ]+$/, '').slice(0, 1024);
}

// ── the streaming scanner ─────────────────────────────────────────────────────────────────

export interface ScanLimits {
  /** The message's own header block. */
  readonly header: HeaderLimits;
  /** Each MIME part's header block. */
  readonly partHeader: HeaderLimits;
  /** MIME parts recorded. */
  readonly maxParts: number;
  /** multipart and message/rfc822 nesting. */
  readonly maxDepth: number;
  /** Bytes of one line kept while it is incomplete; the rest of a longer line is skipped. */
  readonly maxLineBytes: number;
}

export const DEFAULT_SCAN_LIMITS: ScanLimits = {
  header: DEFAULT_HEADER_LIMITS,
  partHeader: { maxHeaders: 100, maxBytes: 16 * 1024 },
  maxParts: 1000,
  maxDepth: 20,
  maxLineBytes: 8 * 1024,
};

export interface ScanResult {
  /** The message's top-level header block. */
  readonly headers: readonly Header[];
  /** The top-level header block ended with its blank line. */
  readonly headersComplete: boolean;
  /**
   * The top-level header block was cut short by a scan limit (fields, bytes, or one line over
   * the line limit): fields after the cut, a From: among them, were not seen.
   */
  readonly headersTruncated: boolean;
  /** Leaf MIME parts, in message order. */
  readonly attachments: readonly MimePart[];
  /** Bytes fed in. */
  readonly size: number;
  /** A limit was hit, so some parts or headers were not seen. `problems` says which. */
  readonly incomplete: boolean;
  readonly problems: readonly string[];
}

/** RFC 2046 §5.1.1 caps a boundary at 70 characters; longer ones are accepted up to this. */
const MAX_BOUNDARY = 200;
/** Transfer encodings under which an attached message's text can be read as it streams. */
const READABLE_ENCODINGS = new Set(['', '7bit', '8bit', 'binary']);

interface PartInProgress {
  readonly depth: number;
  readonly top: boolean;
  readonly acc: HeaderAccumulator;
}

/**
 * Streaming MIME structure scanner. `write()` each chunk of the message as received (after
 * dot-unstuffing, as smtp-server's DATA stream gives it), then `end()`. Only header blocks are
 * kept; body lines are looked at for boundaries and dropped.
 *
 * Boundaries are matched by prefix ("--b" followed by anything), as lenient mail readers do:
 * a part hidden behind a boundary line with trailing junk is still seen.
 */
export class MessageScanner {
  readonly #limits: ScanLimits;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #pendingCut = false;
  #size = 0;
  #part: PartInProgress | undefined;
  /** Open multiparts, outermost first; `depth` is the depth of their child parts. */
  readonly #stack: { boundary: string; depth: number }[] = [];
  #topHeaders: Header[] = [];
  #headersComplete = false;
  #headersTruncated = false;
  readonly #parts: MimePart[] = [];
  readonly #problems = new Set<string>();
  #ended = false;

  constructor(limits: Partial<ScanLimits> = {}) {
    this.#limits = { ...DEFAULT_SCAN_LIMITS, ...limits };
    this.#part = { depth: 0, top: true, acc: new HeaderAccumulator(this.#limits.header) };
  }

  /** True once the message's own header block has ended (its blank line arrived). */
  get headersDone(): boolean {
    return this.#headersComplete;
  }

  /** The message's header block: complete once `headersDone`. */
  get headers(): readonly Header[] {
    return this.#topHeaders;
  }

  write(chunk: Buffer | string): void {
    if (this.#ended) throw new Error('MessageScanner: write after end');
    const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
    this.#size += buf.length;
    let pos = 0;
    while (pos < buf.length) {
      // Past the last boundary of a message (or in a single-part body) nothing is left to find.
      if (!this.#part && this.#stack.length === 0) return;
      const lf = buf.indexOf(0x0a, pos);
      if (lf < 0) {
        this.#keep(buf.subarray(pos));
        return;
      }
      if (this.#pendingBytes === 0 && !this.#pendingCut) {
        // The whole line is in this chunk: look at it in place, no copy.
        const cut = lf - pos > this.#limits.maxLineBytes;
        this.#finishLine(buf.subarray(pos, cut ? pos + this.#limits.maxLineBytes : lf), cut);
      } else {
        this.#keep(buf.subarray(pos, lf));
        this.#completeLine();
      }
      pos = lf + 1;
    }
  }

  end(): ScanResult {
    if (!this.#ended) {
      if (this.#pendingBytes > 0 || this.#pendingCut) this.#completeLine();
      if (this.#part) this.#endHeaders(false);
      if (this.#stack.length > 0) this.#problems.add('a multipart was not closed');
      this.#ended = true;
    }
    const incompleteProblems = [...this.#problems].filter((p) => p !== 'a multipart was not closed');
    return {
      headers: this.#topHeaders,
      headersComplete: this.#headersComplete,
      headersTruncated: this.#headersTruncated,
      attachments: this.#parts,
      size: this.#size,
      incomplete: incompleteProblems.length > 0,
      problems: [...this.#problems],
    };
  }

  /** Keeps at most maxLineBytes of the current line. */
  #keep(piece: Buffer): void {
    const room = this.#limits.maxLineBytes - this.#pendingBytes;
    if (piece.length > room) {
      if (room > 0) this.#pending.push(Buffer.from(piece.subarray(0, room)));
      this.#pendingBytes += Math.max(room, 0);
      this.#pendingCut = true;
    } else if (piece.length > 0) {
      // Copied: the caller may reuse its chunk buffer.
      this.#pending.push(Buffer.from(piece));
      this.#pendingBytes += piece.length;
    }
  }

  #completeLine(): void {
    const line = this.#pending.length === 1 ? this.#pending[0]! : Buffer.concat(this.#pending);
    const cut = this.#pendingCut;
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#pendingCut = false;
    this.#finishLine(line, cut);
  }

  /** A line without its LF (and, unless cut short, without its CR). */
  #finishLine(line: Buffer, cut: boolean): void {
    this.#line(!cut && line.length > 0 && line[line.length - 1] === 0x0d ? line.subarray(0, -1) : line, cut);
  }

  #line(line: Buffer, cut: boolean): void {
    if (this.#stack.length > 0 && line.length >= 2 && line[0] === 0x2d && line[1] === 0x2d) {
      const text = line.toString('latin1');
      for (let i = this.#stack.length - 1; i >= 0; i--) {
        const delimiter = `--${this.#stack[i]!.boundary}`;
        if (text.startsWith(delimiter)) {
          this.#boundary(i, text.startsWith('--', delimiter.length));
          return;
        }
      }
    }
    if (!this.#part) return; // a body line: only boundaries matter
    if (line.length === 0 && !cut) {
      this.#endHeaders(true);
      return;
    }
    if (cut) {
      this.#problems.add('a header line longer than the scan limit');
      // The rest of the field is lost: an address after the cut would escape sender binding.
      if (this.#part.top) this.#headersTruncated = true;
    }
    this.#part.acc.push(line);
  }

  #boundary(level: number, close: boolean): void {
    // Part headers that a boundary cuts short still describe a part.
    if (this.#part) this.#endHeaders(false);
    this.#stack.length = level + 1;
    const depth = this.#stack[level]!.depth;
    if (close) {
      this.#stack.length = level;
      return;
    }
    this.#part = { depth, top: false, acc: new HeaderAccumulator(this.#limits.partHeader) };
  }

  #endHeaders(complete: boolean): void {
    const part = this.#part!;
    this.#part = undefined;
    const headers = part.acc.finish();
    if (part.acc.truncated) this.#problems.add(part.top ? 'the header block exceeds the scan limit' : 'a part header block exceeds the scan limit');
    if (part.top) {
      if (part.acc.truncated) this.#headersTruncated = true;
      this.#topHeaders = headers;
      this.#headersComplete = complete;
    }
    const field = (name: string) => headers.filter((h) => h.name === name).map((h) => h.value);
    const types = field('content-type').map(parseStructuredValue);
    const dispositions = field('content-disposition').map(parseStructuredValue);
    if (types.some((t) => t.incomplete) || dispositions.some((d) => d.incomplete)) this.#problems.add('a MIME parameter repeated more often than the scan reads');
    // RFC 2045 §5.2: no (or no usable) Content-Type means text/plain.
    const contentType = types[0]?.value || 'text/plain';

    const boundary = types[0]?.params.get('boundary')?.[0];
    if (contentType.startsWith('multipart/') && boundary && boundary.length <= MAX_BOUNDARY) {
      if (this.#stack.length >= this.#limits.maxDepth) {
        this.#problems.add('MIME nesting deeper than the scan limit');
        return;
      }
      this.#stack.push({ boundary, depth: part.depth + 1 });
      return;
    }

    const filenames: string[] = [];
    for (const v of [...dispositions.flatMap((d) => d.params.get('filename') ?? []), ...types.flatMap((t) => t.params.get('name') ?? [])]) {
      const name = normalizeFilename(v);
      if (name && !filenames.includes(name)) filenames.push(name);
    }
    if (this.#parts.length >= this.#limits.maxParts) this.#problems.add('more MIME parts than the scan limit');
    else {
      const disposition = dispositions[0]?.value;
      this.#parts.push(disposition ? { contentType, filenames, disposition, depth: part.depth } : { contentType, filenames, depth: part.depth });
    }

    // An attached message (RFC 2046 §5.2.1) has its own header block and MIME tree.
    const encoding = (field('content-transfer-encoding')[0] ?? '').trim().toLowerCase();
    if ((contentType === 'message/rfc822' || contentType === 'message/global') && READABLE_ENCODINGS.has(encoding)) {
      if (part.depth + 1 > this.#limits.maxDepth) {
        this.#problems.add('MIME nesting deeper than the scan limit');
        return;
      }
      this.#part = { depth: part.depth + 1, top: false, acc: new HeaderAccumulator(this.#limits.partHeader) };
    }
  }
}

/** Scans a whole message held in memory (tests, `policy test --message`). */
export function scanMessage(message: Buffer | string, limits?: Partial<ScanLimits>): ScanResult {
  const scanner = new MessageScanner(limits);
  scanner.write(message);
  return scanner.end();
}
