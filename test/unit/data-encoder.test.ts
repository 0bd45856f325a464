import { loadSmugglingVectors } from '../helpers/smuggling-vectors.js';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  BodyEncoder,
  LineTooLongError,
  SmugglingError,
  dotUnstuff,
  isCanonical,
  type BodyEncoderOptions,
  type SmugglingKind,
} from '../../src/relay/data-encoder.js';
// A seeded PRNG, so the body is the same on every run.
import { prng } from '../helpers/flaky-backend.js';

// ---------------------------------------------------------------------------------------------
// helpers

const CR = 0x0d;
const LF = 0x0a;
const NUL = 0x00;
const DOT = 0x2e;

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
/** Buffers compared as latin1 strings so that failures show readable, escaped diffs. */
const s = (buf: Buffer): string => buf.toString('latin1');

interface Run {
  /**
   * Everything encode() and end() returned before the end or the first error: what the relay
   * would have written to the backend.
   */
  out: Buffer;
  /** Bytes returned by each call that returned any, in order. */
  writes: number[];
  error: Error | undefined;
  enc: BodyEncoder;
}

/** Feeds `chunks`, then end(), to a fresh BodyEncoder as the relay does, stopping at the first error. */
function encode(chunks: readonly Buffer[], opts: BodyEncoderOptions): Run {
  const enc = new BodyEncoder(opts);
  const parts: Buffer[] = [];
  const writes: number[] = [];
  const take = (pieces: Buffer[]): void => {
    if (pieces.length === 0) return;
    parts.push(...pieces);
    writes.push(pieces.reduce((n, piece) => n + piece.length, 0));
  };
  let error: Error | undefined;
  try {
    for (const chunk of chunks) take(enc.encode(chunk));
    take(enc.end());
  } catch (err) {
    if (!(err instanceof Error)) throw err;
    error = err;
  }
  return { out: Buffer.concat(parts), writes, error, enc };
}

function splitAt(input: Buffer, cuts: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let from = 0;
  for (const cut of cuts) {
    out.push(input.subarray(from, cut));
    from = cut;
  }
  out.push(input.subarray(from));
  return out;
}

function oneByteChunks(input: Buffer): Buffer[] {
  return Array.from({ length: input.length }, (_, i) => input.subarray(i, i + 1));
}

/** Chunk sizes applied cyclically; a 0 produces an empty chunk. */
function chunkBy(input: Buffer, sizes: readonly number[]): Buffer[] {
  if (!sizes.some((n) => n > 0)) return [input];
  const out: Buffer[] = [];
  let pos = 0;
  for (let i = 0; pos < input.length; i++) {
    const n = sizes[i % sizes.length] ?? 1;
    out.push(input.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}

/**
 * The whole input, 1-byte chunks, empty chunks around and between, every 2-way split and,
 * for short inputs, every 3-way split.
 */
function chunkings(input: Buffer): Buffer[][] {
  const empty = Buffer.alloc(0);
  const all: Buffer[][] = [
    [input],
    oneByteChunks(input),
    [empty, input, empty],
    oneByteChunks(input).flatMap((c) => [empty, c]),
  ];
  for (let i = 0; i <= input.length; i++) all.push(splitAt(input, [i]));
  if (input.length <= 24) {
    for (let i = 0; i <= input.length; i++) {
      for (let j = i; j <= input.length; j++) all.push(splitAt(input, [i, j]));
    }
  }
  return all;
}

interface ErrorShape {
  name: string;
  kind?: SmugglingKind;
  offset: number;
  limit?: number;
}

function shape(err: Error | undefined): ErrorShape | undefined {
  if (err === undefined) return undefined;
  if (err instanceof SmugglingError) return { name: err.name, kind: err.kind, offset: err.offset };
  if (err instanceof LineTooLongError) return { name: err.name, offset: err.offset, limit: err.limit };
  throw err;
}

/** The input with every stray CR/LF/NUL replaced by a space (no CRLF appended). */
function spacesForStrays(input: Buffer): Buffer {
  const out = Buffer.from(input);
  for (let i = 0; i < out.length; i++) {
    const byte = out[i];
    if (byte === CR && out[i + 1] === LF) i++;
    else if (byte === CR || byte === LF || byte === NUL) out[i] = 0x20;
  }
  return out;
}

/**
 * Error-path guarantee: what was returned before the error is canonical, is a clean prefix of the
 * message, and contains nothing at or after the offending byte. Nor anything from the chunk
 * that holds it, with one exception: when that chunk starts with the LF of a CRLF split across
 * the boundary and the offending byte is its own trailing CR, the LF went out with its CR.
 */
function expectNothingFromOffendingChunk(input: Buffer, chunks: readonly Buffer[], run: Run, offset: number): void {
  let chunkStart = 0;
  let prev: Buffer | undefined;
  let allowance = 0;
  for (const c of chunks) {
    if (offset < chunkStart + c.length) {
      const straddles = c[0] === LF && prev !== undefined && prev[prev.length - 1] === CR;
      if (straddles && offset === chunkStart + c.length - 1 && c[c.length - 1] === CR) allowance = 1;
      break;
    }
    chunkStart += c.length;
    if (c.length > 0) prev = c;
  }
  expect(isCanonical(run.out)).toBe(true);
  const unstuffed = dotUnstuff(run.out);
  expect(unstuffed.length).toBeLessThanOrEqual(chunkStart + allowance);
  expect(unstuffed.length).toBeLessThanOrEqual(offset);
  expect(s(unstuffed)).toBe(s(spacesForStrays(input).subarray(0, unstuffed.length)));
}

/** What a backend would see as the message once the caller appends the terminator. */
const withTerminator = (out: Buffer): string => s(out) + '.\r\n';

// ---------------------------------------------------------------------------------------------
// reference model, deliberately byte-by-byte and independent of the implementation's scanning

type ModelResult =
  | { ok: true; out: Buffer; unstuffed: Buffer; normalized: number }
  | { ok: false; error: ErrorShape };

function strayKind(byte: number): SmugglingKind {
  return byte === NUL ? 'nul' : byte === CR ? 'bare_cr' : 'bare_lf';
}

function model(input: Buffer, opts: BodyEncoderOptions): ModelResult {
  const limit = opts.maxLineOctets ?? 0;
  const maxContent = limit > 0 ? limit - 2 : Infinity;
  const norm: number[] = [];
  let line = 0;
  let normalized = 0;
  for (let i = 0; i < input.length; i++) {
    const byte = input[i] as number;
    if (byte === CR && input[i + 1] === LF) {
      norm.push(CR, LF);
      line = 0;
      i++;
      continue;
    }
    let v = byte;
    if (byte === NUL || byte === CR || byte === LF) {
      if (opts.mode === 'reject') {
        return { ok: false, error: { name: 'SmugglingError', kind: strayKind(byte), offset: i } };
      }
      normalized++;
      v = 0x20;
    }
    if (line + 1 > maxContent) return { ok: false, error: { name: 'LineTooLongError', offset: i, limit } };
    line++;
    norm.push(v);
  }
  let text = Buffer.from(norm).toString('latin1');
  if (text.length > 0 && !text.endsWith('\r\n')) text += '\r\n';
  const stuffed = text
    .split('\r\n')
    .map((l) => (l.startsWith('.') ? `.${l}` : l))
    .join('\r\n');
  return { ok: true, out: b(stuffed), unstuffed: b(text), normalized };
}

function firstStray(input: Buffer): { kind: SmugglingKind; offset: number } | undefined {
  const r = model(input, { mode: 'reject' });
  return r.ok ? undefined : { kind: r.error.kind as SmugglingKind, offset: r.error.offset };
}

/**
 * A lenient receiver (old Postfix/Exim/Exchange) that ends DATA at the first of several
 * end-of-data spellings, and treats the very start of the data as a line start.
 * Returns the index just past the first terminator, or -1.
 */
const LENIENT_ENDS = ['\r\n.\r\n', '\n.\n', '\n.\r\n', '\r.\r', '\r.\n', '\n.\r', '\r\n.\n', '\r\n.\r'];
function lenientEndOfData(wire: string): number {
  const atStart = /^\.(\r\n|\r|\n)/.exec(wire);
  if (atStart) return atStart[0].length;
  let best = -1;
  let bestEnd = -1;
  for (const t of LENIENT_ENDS) {
    const i = wire.indexOf(t);
    if (i === -1) continue;
    if (best === -1 || i < best || (i === best && i + t.length > bestEnd)) {
      best = i;
      bestEnd = i + t.length;
    }
  }
  return bestEnd;
}

// ---------------------------------------------------------------------------------------------
// fixture

const VECTORS = loadSmugglingVectors();
const SMUGGLED =
  'MAIL FROM:<spoof@corp.test>\r\nRCPT TO:<victim@corp.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n';
// The first message's body either ends mid-line (the vector supplies the line ending, as in
// SEC Consult's payloads) or with its own CRLF. The space variant is the notation of the
// fixture's header taken literally; no space is the realistic attack.
const BODIES = ['From: a@corp.test\r\nSubject: hello\r\n\r\nfirst message', 'Subject: hello\r\n\r\nfirst message\r\n'];
const SEPARATORS = ['', ' '];

const vectorCases = VECTORS.flatMap((vector) =>
  BODIES.flatMap((body, bi) =>
    SEPARATORS.map((sep) => ({
      name: `${JSON.stringify(s(vector))} body#${bi}${sep === '' ? '' : ' +space'}`,
      vector,
      input: Buffer.concat([b(body), vector, b(sep + SMUGGLED)]),
    })),
  ),
);

// ---------------------------------------------------------------------------------------------

describe('smuggling vectors (test/fixtures/smuggling-vectors.txt)', () => {
  it('the fixture parses into the known vectors, each of which is non-canonical', () => {
    expect(VECTORS.length).toBeGreaterThanOrEqual(12);
    expect(s(VECTORS[0] as Buffer)).toBe('\n.\n');
    expect(VECTORS.map(s)).toContain('\r\n\x00.\r\n');
    for (const v of VECTORS) expect(isCanonical(v)).toBe(false);
  });

  it('every constructed input is one message to a strict CRLF.CRLF receiver (smuggling needs a lenient one)', () => {
    for (const { input } of vectorCases) {
      const wire = s(input) + '.\r\n';
      expect(wire.indexOf('\r\n.\r\n')).toBe(wire.length - 5);
    }
  });

  describe.each(vectorCases)('$name', ({ input }) => {
    const expected = firstStray(input);

    it('reject mode fails with a SmugglingError of the right kind and offset, returning nothing from the offending chunk', () => {
      expect(expected).toBeDefined();
      const whole = encode([input], { mode: 'reject' });
      expect(whole.error).toBeInstanceOf(SmugglingError);
      expect(shape(whole.error)).toEqual({ name: 'SmugglingError', ...expected });
      expect(whole.out.length).toBe(0);
      for (const chunks of [oneByteChunks(input), ...Array.from({ length: input.length + 1 }, (_, i) => splitAt(input, [i]))]) {
        const r = encode(chunks, { mode: 'reject' });
        expect(shape(r.error)).toEqual({ name: 'SmugglingError', ...expected });
        expectNothingFromOffendingChunk(input, chunks, r, (expected as { offset: number }).offset);
      }
    });

    it('normalize mode yields canonical output that even a lenient receiver reads as exactly one message', () => {
      const r = encode([input], { mode: 'normalize' });
      expect(r.error).toBeUndefined();
      expect(isCanonical(r.out)).toBe(true);
      expect(s(r.out).endsWith('\r\n')).toBe(true);
      const wire = withTerminator(r.out);
      expect(wire.indexOf('\r\n.\r\n')).toBe(wire.length - 5);
      expect(lenientEndOfData(wire)).toBe(wire.length);
      // The smuggled commands survive only as text inside the one message.
      expect(s(r.out)).toContain('MAIL FROM:<spoof@corp.test>');
      expect(r.enc.normalized).toBeGreaterThan(0);
      const m = model(input, { mode: 'normalize' });
      expect(m.ok && s(m.out)).toBe(s(r.out));

      for (const chunks of [oneByteChunks(input), ...Array.from({ length: input.length + 1 }, (_, i) => splitAt(input, [i]))]) {
        const c = encode(chunks, { mode: 'normalize' });
        expect(s(c.out)).toBe(s(r.out));
      }
    });
  });
});

describe('dot-stuffing (RFC 5321 §4.5.2)', () => {
  const cases: Array<[string, string]> = [
    ['.\r\n', '..\r\n'],
    ['.', '..\r\n'],
    ['..', '...\r\n'],
    ['..\r\n', '...\r\n'],
    ['...\r\n', '....\r\n'],
    ['a\r\n.\r\nb\r\n', 'a\r\n..\r\nb\r\n'],
    ['a.b\r\n.c\r\n', 'a.b\r\n..c\r\n'],
    ['\r\n.\r\n', '\r\n..\r\n'],
    ['.\r\n.\r\n.\r\n', '..\r\n..\r\n..\r\n'],
    ['x\r\n.', 'x\r\n..\r\n'],
    ['x\r\n\r\n.\r\n\r\n', 'x\r\n\r\n..\r\n\r\n'],
    ['Subject: t\r\n\r\n.\r\n..\r\n...\r\n.x.\r\n', 'Subject: t\r\n\r\n..\r\n...\r\n....\r\n..x.\r\n'],
    [' .\r\n', ' .\r\n'],
  ];

  describe.each(cases)('%j', (input, expected) => {
    it.each(['reject', 'normalize'] as const)('%s mode stuffs it identically under every chunking', (mode) => {
      const buf = b(input);
      for (const chunks of chunkings(buf)) {
        const r = encode(chunks, { mode });
        expect(r.error).toBeUndefined();
        expect(s(r.out)).toBe(expected);
        expect(r.enc.bytesIn).toBe(buf.length);
        expect(r.enc.bytesOut).toBe(expected.length);
        expect(r.enc.normalized).toBe(0);
      }
      const wire = withTerminator(b(expected));
      expect(wire.indexOf('\r\n.\r\n')).toBe(wire.length - 5);
      expect(s(dotUnstuff(b(expected)))).toBe(input.endsWith('\r\n') ? input : `${input}\r\n`);
    });
  });

  it('a "." line landing exactly on chunk boundaries is still stuffed', () => {
    const chunks = ['x\r', '\n', '.', '\r', '\n', '.', '.', '\r\n'].map(b);
    const r = encode(chunks, { mode: 'reject' });
    expect(r.error).toBeUndefined();
    expect(s(r.out)).toBe('x\r\n..\r\n...\r\n');
  });

  it('does not emit the final ".\\r\\n" itself', () => {
    const r = encode([b('hello\r\n')], { mode: 'reject' });
    expect(s(r.out)).toBe('hello\r\n');
  });
});

describe('line endings across chunks', () => {
  it('a CRLF split across chunks is a line ending, not a bare CR', () => {
    for (const chunks of [
      ['abc\r', '\ndef\r\n'],
      ['abc\r', '', '\n', 'def\r', '\n'],
      ['\r', '\n'],
      ['abc\r', '\n.\r', '\n'],
    ]) {
      const r = encode(chunks.map(b), { mode: 'reject' });
      expect(r.error).toBeUndefined();
      expect(isCanonical(r.out)).toBe(true);
      expect(s(dotUnstuff(r.out))).toBe(chunks.join(''));
    }
  });

  it('a trailing lone CR is bare: bare_cr in reject mode', () => {
    for (const chunks of [['abc\r'], ['abc', '\r'], ['abc\r', '']]) {
      const r = encode(chunks.map(b), { mode: 'reject' });
      expect(shape(r.error)).toEqual({ name: 'SmugglingError', kind: 'bare_cr', offset: 3 });
      expectNothingFromOffendingChunk(b('abc\r'), chunks.map(b), r, 3);
    }
  });

  it('a trailing lone CR is bare: a space (then the closing CRLF) in normalize mode', () => {
    for (const [chunks, expected] of [
      [['abc\r'], 'abc \r\n'],
      [['abc', '\r'], 'abc \r\n'],
      [['\r'], ' \r\n'],
      [['abc\r\n\r'], 'abc\r\n \r\n'],
      [['.\r'], '.. \r\n'],
    ] as const) {
      const r = encode(chunks.map(b), { mode: 'normalize' });
      expect(r.error).toBeUndefined();
      expect(s(r.out)).toBe(expected);
      expect(r.enc.normalized).toBe(1);
    }
  });

  it('normalize mode turns each stray CR, LF and NUL into one space and never into CRLF', () => {
    const cases: Array<[string, string, number]> = [
      ['a\nb', 'a b\r\n', 1],
      ['a\rb', 'a b\r\n', 1],
      ['a\r\r\nb\r\n', 'a \r\nb\r\n', 1],
      ['a\r\n\nb\r\n', 'a\r\n b\r\n', 1],
      ['\n', ' \r\n', 1],
      ['\n.\n', ' . \r\n', 2],
      ['\r.\r', ' . \r\n', 2],
      ['a\x00b\r\n', 'a b\r\n', 1],
      ['\x00.\r\n', ' .\r\n', 1],
      ['\n\r', '  \r\n', 2],
    ];
    for (const [input, expected, count] of cases) {
      for (const chunks of chunkings(b(input))) {
        const r = encode(chunks, { mode: 'normalize' });
        expect(r.error).toBeUndefined();
        expect(s(r.out)).toBe(expected);
        expect(r.enc.normalized).toBe(count);
      }
    }
  });

  it('reject mode returns nothing from the chunk that holds the offending byte', () => {
    const r1 = encode(['hello\r\n', 'world\r\n', 'evil\n.\nMAIL FROM:<x>\r\n'].map(b), { mode: 'reject' });
    expect(shape(r1.error)).toEqual({ name: 'SmugglingError', kind: 'bare_lf', offset: 18 });
    expect(s(r1.out)).toBe('hello\r\nworld\r\n');

    // The chunk ending in CR is held back until the CR is decided, so it is withheld too.
    const r2 = encode(['hello\r\n', 'abc\r', 'x\r\n'].map(b), { mode: 'reject' });
    expect(shape(r2.error)).toEqual({ name: 'SmugglingError', kind: 'bare_cr', offset: 10 });
    expect(s(r2.out)).toBe('hello\r\n');

    const r3 = encode(['a\x00'].map(b), { mode: 'reject' });
    expect(shape(r3.error)).toEqual({ name: 'SmugglingError', kind: 'nul', offset: 1 });
    expect(r3.out.length).toBe(0);
  });

  it('output held behind a trailing CR never spans more than one chunk', () => {
    const chunks = Array.from({ length: 5000 }, () => b('xy\r'));
    const r = encode(chunks, { mode: 'normalize' });
    expect(r.error).toBeUndefined();
    // Each call returns one chunk's worth ("xy" + the space for its CR); end() adds the CRLF.
    expect(Math.max(...r.writes)).toBeLessThanOrEqual(5);
    expect(r.writes.length).toBeGreaterThanOrEqual(4999);
    expect(r.out.length).toBe(5000 * 3 + 2);
    expect(r.enc.normalized).toBe(5000);
  });

  it('an empty message produces empty output', () => {
    for (const chunks of [[], [Buffer.alloc(0)], [Buffer.alloc(0), Buffer.alloc(0)]]) {
      for (const mode of ['reject', 'normalize'] as const) {
        const r = encode(chunks, { mode });
        expect(r.error).toBeUndefined();
        expect(r.out.length).toBe(0);
        expect(r.enc.bytesIn).toBe(0);
        expect(r.enc.bytesOut).toBe(0);
      }
    }
  });

  it('a last line without CRLF (only possible when fed directly) gets one, so the caller\'s dot starts a line', () => {
    const r = encode([b('a\r\nno newline')], { mode: 'reject' });
    expect(s(r.out)).toBe('a\r\nno newline\r\n');
    expect(r.enc.bytesIn).toBe(13);
    expect(r.enc.bytesOut).toBe(15);
  });
});

describe('maxLineOctets (RFC 5321 §4.5.3.1.6)', () => {
  it('a line of exactly the limit (CRLF included) passes, limit+1 fails', () => {
    for (const mode of ['reject', 'normalize'] as const) {
      const ok = b(`${'x'.repeat(8)}\r\n`);
      for (const chunks of chunkings(ok)) {
        const r = encode(chunks, { mode, maxLineOctets: 10 });
        expect(r.error).toBeUndefined();
        expect(s(r.out)).toBe(s(ok));
      }
      const bad = b(`${'x'.repeat(9)}\r\n`);
      for (const chunks of chunkings(bad)) {
        const r = encode(chunks, { mode, maxLineOctets: 10 });
        expect(r.error).toBeInstanceOf(LineTooLongError);
        expect(shape(r.error)).toEqual({ name: 'LineTooLongError', offset: 8, limit: 10 });
        expectNothingFromOffendingChunk(bad, chunks, r, 8);
      }
    }
  });

  it('RFC default of 1000: 998 octets + CRLF pass, 999 + CRLF fail', () => {
    const ok = encode([b(`${'a'.repeat(998)}\r\n`)], { mode: 'reject', maxLineOctets: 1000 });
    expect(ok.error).toBeUndefined();
    const bad = encode([b(`${'a'.repeat(999)}\r\n`)], { mode: 'reject', maxLineOctets: 1000 });
    expect(shape(bad.error)).toEqual({ name: 'LineTooLongError', offset: 998, limit: 1000 });
  });

  it('counts unstuffed octets: a stuffed dot does not make a line too long', () => {
    const r = encode([b(`.${'x'.repeat(7)}\r\n`)], { mode: 'reject', maxLineOctets: 10 });
    expect(r.error).toBeUndefined();
    expect(s(r.out)).toBe(`..${'x'.repeat(7)}\r\n`);
  });

  it('counts the CRLF the encoder appends to an unterminated last line', () => {
    const ok = encode([b('x'.repeat(8))], { mode: 'reject', maxLineOctets: 10 });
    expect(ok.error).toBeUndefined();
    const bad = encode([b('x'.repeat(9))], { mode: 'reject', maxLineOctets: 10 });
    expect(shape(bad.error)).toEqual({ name: 'LineTooLongError', offset: 8, limit: 10 });
  });

  it('reports the offset inside a later line, and counts a normalized stray byte as an octet', () => {
    const later = encode([b(`ab\r\n${'x'.repeat(9)}\r\n`)], { mode: 'reject', maxLineOctets: 10 });
    expect(shape(later.error)).toEqual({ name: 'LineTooLongError', offset: 12, limit: 10 });
    const stray = encode([b(`${'x'.repeat(7)}\rx\r\n`)], { mode: 'normalize', maxLineOctets: 10 });
    expect(shape(stray.error)).toEqual({ name: 'LineTooLongError', offset: 8, limit: 10 });
  });

  it('0 or undefined means unchecked', () => {
    const long = b(`${'x'.repeat(100_000)}\r\n`);
    for (const maxLineOctets of [0, undefined]) {
      const r = encode([long], { mode: 'reject', maxLineOctets });
      expect(r.error).toBeUndefined();
      expect(r.out.length).toBe(long.length);
    }
  });
});

describe('construction and failure', () => {
  it('rejects an unknown mode and a nonsensical maxLineOctets', () => {
    expect(() => new BodyEncoder({ mode: 'strict' as 'reject' })).toThrow(TypeError);
    for (const maxLineOctets of [-1, 1, 1.5, Number.NaN, Infinity]) {
      expect(() => new BodyEncoder({ mode: 'reject', maxLineOctets })).toThrow(RangeError);
    }
    expect(() => new BodyEncoder({ mode: 'normalize', maxLineOctets: 2 })).not.toThrow();
  });

  it('throws the SmugglingError from the encode() call that meets the byte, and is spent after it', () => {
    const enc = new BodyEncoder({ mode: 'reject' });
    expect(s(Buffer.concat(enc.encode(b('ok\r\n'))))).toBe('ok\r\n');
    let err: unknown;
    try {
      enc.encode(b('bad\n.\n'));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SmugglingError);
    expect(err).toMatchObject({ name: 'SmugglingError', kind: 'bare_lf', offset: 7 });
    // The relay aborts the backend on the error; an encoder fed on regardless adds nothing.
    expect(enc.encode(b('more\r\n'))).toEqual([]);
    expect(enc.end()).toEqual([]);
  });
});

describe('isCanonical and dotUnstuff', () => {
  it('isCanonical accepts only CRLF pairs and no NUL', () => {
    for (const ok of ['', 'abc', 'a\r\nb\r\n', '\r\n\r\n', '.\r\n']) expect(isCanonical(b(ok))).toBe(true);
    for (const bad of ['\r', '\n', 'a\nb', 'a\rb', '\n\r', 'a\r\r\n', 'a\r\n\n', 'a\x00', '\r\n\x00', 'x\r']) {
      expect(isCanonical(b(bad))).toBe(false);
    }
  });

  it('dotUnstuff removes one leading dot per line and nothing else', () => {
    expect(s(dotUnstuff(b('..\r\n...\r\na.b\r\n.x\r\nx')))).toBe('.\r\n..\r\na.b\r\nx\r\nx');
    expect(s(dotUnstuff(b('')))).toBe('');
    expect(s(dotUnstuff(b('.')))).toBe('');
  });
});

describe('properties (fast-check)', () => {
  const token = fc.oneof(
    { arbitrary: fc.constant('\r'), weight: 3 },
    { arbitrary: fc.constant('\n'), weight: 3 },
    { arbitrary: fc.constant('.'), weight: 3 },
    { arbitrary: fc.constant('\0'), weight: 1 },
    { arbitrary: fc.constant('a'), weight: 3 },
    { arbitrary: fc.constant('\r\n'), weight: 4 },
  );
  const messy = fc.array(token, { maxLength: 60 }).map((t) => b(t.join('')));
  const clean = fc
    .array(fc.constantFrom('.', 'a', 'a', '\r\n', '\r\n'), { maxLength: 60 })
    .map((t) => b(t.join('')));
  const sizes = fc.array(fc.nat({ max: 16 }), { maxLength: 12 });

  it('normalize: output is canonical, matches the reference model and is independent of chunking', () => {
    fc.assert(
      fc.property(messy, sizes, (input, sz) => {
        const m = model(input, { mode: 'normalize' });
        if (!m.ok) throw new Error('model cannot fail without a line limit');
        const whole = encode([input], { mode: 'normalize' });
        const split = encode(chunkBy(input, sz), { mode: 'normalize' });
        const bytes = encode(oneByteChunks(input), { mode: 'normalize' });
        expect(whole.error).toBeUndefined();
        expect(isCanonical(whole.out)).toBe(true);
        expect(s(dotUnstuff(whole.out))).toBe(s(m.unstuffed));
        expect(s(whole.out)).toBe(s(m.out));
        expect(s(split.out)).toBe(s(whole.out));
        expect(s(bytes.out)).toBe(s(whole.out));
        expect(whole.enc.normalized).toBe(m.normalized);
        expect(split.enc.normalized).toBe(m.normalized);
        expect(whole.enc.bytesIn).toBe(input.length);
        expect(split.enc.bytesOut).toBe(whole.out.length);
        const wire = withTerminator(whole.out);
        expect(lenientEndOfData(wire)).toBe(wire.length);
      }),
      { numRuns: 400 },
    );
  });

  it('reject: errors exactly at the first stray byte, else outputs the stuffed input, whatever the chunking', () => {
    fc.assert(
      fc.property(fc.oneof(messy, clean), sizes, (input, sz) => {
        const m = model(input, { mode: 'reject' });
        const chunks = chunkBy(input, sz);
        for (const run of [encode([input], { mode: 'reject' }), encode(chunks, { mode: 'reject' })]) {
          if (m.ok) {
            expect(run.error).toBeUndefined();
            expect(s(run.out)).toBe(s(m.out));
            expect(s(dotUnstuff(run.out))).toBe(s(m.unstuffed));
          } else {
            expect(run.error).toBeInstanceOf(SmugglingError);
            expect(shape(run.error)).toEqual(m.error);
          }
        }
        if (!m.ok) {
          const r = encode(chunks, { mode: 'reject' });
          expectNothingFromOffendingChunk(input, chunks, r, m.error.offset);
        }
      }),
      { numRuns: 400 },
    );
  });

  it('line limit: both modes agree with the reference model under any chunking', () => {
    fc.assert(
      fc.property(
        fc.oneof(messy, clean),
        sizes,
        fc.constantFrom('reject', 'normalize'),
        fc.integer({ min: 2, max: 8 }),
        (input, sz, mode, maxLineOctets) => {
          const opts: BodyEncoderOptions = { mode: mode as 'reject' | 'normalize', maxLineOctets };
          const m = model(input, opts);
          const chunks = chunkBy(input, sz);
          const r = encode(chunks, opts);
          if (m.ok) {
            expect(r.error).toBeUndefined();
            expect(s(r.out)).toBe(s(m.out));
          } else {
            expect(shape(r.error)).toEqual(m.error);
            expectNothingFromOffendingChunk(input, chunks, r, m.error.offset);
          }
        },
      ),
      { numRuns: 400 },
    );
  });
});

describe('streaming', () => {
  function template(): { buf: Buffer; dotLines: number } {
    const rand = prng(0x5eed);
    const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-=+/';
    const lines: string[] = [];
    let size = 0;
    let dotLines = 0;
    while (size < 1_000_000) {
      const r = rand();
      let line = '';
      if (r < 0.05) line = '.';
      else if (r >= 0.08) {
        const n = Math.floor(rand() * 120);
        for (let i = 0; i < n; i++) line += alphabet.charAt(Math.floor(rand() * alphabet.length));
        if (rand() < 0.1) line = `.${line}`;
      }
      if (line.startsWith('.')) dotLines++;
      lines.push(`${line}\r\n`);
      size += line.length + 2;
    }
    return { buf: b(lines.join('')), dotLines };
  }

  it('encodes a 50 MB message in 64 KiB chunks with bounded output per chunk and byte-exact content', () => {
    const CHUNK = 64 * 1024;
    const { buf: tpl, dotLines } = template();
    const repeats = Math.ceil((50 * 1024 * 1024) / tpl.length);
    const total = repeats * tpl.length;
    const inHash = createHash('sha256');

    function* generate(): Generator<Buffer> {
      for (let pos = 0; pos < total; pos += CHUNK) {
        const n = Math.min(CHUNK, total - pos);
        const start = pos % tpl.length;
        const chunk =
          start + n <= tpl.length
            ? tpl.subarray(start, start + n)
            : Buffer.concat([tpl.subarray(start), tpl.subarray(0, n - (tpl.length - start))]);
        inHash.update(chunk);
        yield chunk;
      }
    }

    const enc = new BodyEncoder({ mode: 'reject', maxLineOctets: 1000 });
    const outHash = createHash('sha256');
    let outLen = 0;
    let unstuffedLen = 0;
    let atLineStart = true;
    let maxPerCall = 0;
    // Unstuffs incrementally: a line-start dot may be the first byte of a piece.
    const unstuff = (piece: Buffer): void => {
      const len = piece.length;
      let from = atLineStart && piece[0] === DOT ? 1 : 0;
      for (let j = piece.indexOf(LF); j !== -1 && j + 1 < len; j = piece.indexOf(LF, j + 1)) {
        if (piece[j + 1] === DOT) {
          outHash.update(piece.subarray(from, j + 1));
          unstuffedLen += j + 1 - from;
          from = j + 2;
        }
      }
      outHash.update(piece.subarray(from));
      unstuffedLen += len - from;
      if (len > 0) atLineStart = piece[len - 1] === LF;
    };
    const take = (pieces: Buffer[]): void => {
      let n = 0;
      for (const piece of pieces) {
        unstuff(piece);
        n += piece.length;
      }
      outLen += n;
      maxPerCall = Math.max(maxPerCall, n);
    };

    for (const chunk of generate()) take(enc.encode(chunk));
    take(enc.end());

    expect(enc.bytesIn).toBe(total);
    expect(outLen).toBe(total + repeats * dotLines);
    expect(enc.bytesOut).toBe(outLen);
    expect(unstuffedLen).toBe(total);
    expect(outHash.digest('hex')).toBe(inHash.digest('hex'));
    // Nothing close to the message size is ever held: a call returns at most its own chunk and
    // the one held back behind a trailing CR before it, plus their stuffed dots.
    expect(maxPerCall).toBeLessThan(3 * CHUNK);
  });
});
