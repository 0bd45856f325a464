/**
 * data.stripHeaders: chosen fields leave the client's top-level header block, folded lines and
 * all, whatever the chunking; nothing after the header block is touched; the output stays
 * canonical. The stripper reads the body encoder's output, so these tests feed it canonical
 * bytes, or the client's bytes through a BodyEncoder as the message sink does.
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { BodyEncoder, SmugglingError, isCanonical } from '../../src/relay/data-encoder.js';
import { HeaderStripper } from '../../src/relay/header-stripper.js';
import { LEAKY_HEADERS, LEAKY_MESSAGE, LEAKY_MESSAGE_STRIPPED } from '../helpers/leaky-message.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const s = (bufs: Buffer[]): string => Buffer.concat(bufs).toString('latin1');

/** Feeds `message` to a fresh stripper in pieces of the given sizes (the rest in one piece), then end(). */
function strip(message: string, names: string[], sizes: number[] = []): string {
  const stripper = new HeaderStripper(names);
  const input = b(message);
  const out: Buffer[] = [];
  let at = 0;
  for (const n of sizes) {
    out.push(...stripper.filter([input.subarray(at, at + n)]));
    at += n;
  }
  out.push(...stripper.filter([input.subarray(at)]), ...stripper.end());
  return s(out);
}

/** One-octet pieces: every line and every name crosses chunk boundaries. */
const octets = (message: string): number[] => Array.from({ length: b(message).length }, () => 1);

/**
 * The oracle: the same rules written over the whole message with regular expressions. The
 * header block ends at the first line that is neither a continuation nor "name *WSP :".
 */
function reference(message: string, names: string[]): string {
  const strip = new Set(names.map((n) => n.toLowerCase()));
  const lines = message.split(/(?<=\r\n)/);
  const out: string[] = [];
  let dropping = false;
  let i = 0;
  for (; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^[ \t]/.test(line)) {
      if (!dropping) out.push(line);
      continue;
    }
    const field = /^([\x21-\x39\x3b-\x7e]+)[ \t]*:/.exec(line);
    if (!field) break;
    dropping = strip.has(field[1]!.toLowerCase());
    if (!dropping) out.push(line);
  }
  return out.join('') + lines.slice(i).join('');
}

const LEAKY = LEAKY_HEADERS;
const MESSAGE = LEAKY_MESSAGE;
const STRIPPED = LEAKY_MESSAGE_STRIPPED;

describe('which lines go', () => {
  test('a stripped field goes in any case, every time it appears, with its folded continuation lines; every other octet stays', () => {
    expect(strip(MESSAGE, LEAKY)).toBe(STRIPPED);
    // The oracle agrees, and the message did change: the test can fail.
    expect(reference(MESSAGE, LEAKY)).toBe(STRIPPED);
    expect(STRIPPED).not.toBe(MESSAGE);
  });

  test('names are configured in any case too', () => {
    expect(strip(MESSAGE, ['x-originating-ip', 'X-INTERNAL-HOST'])).toBe(STRIPPED);
  });

  test('a field whose name only starts like a stripped one, or is a prefix of one, stays', () => {
    const out = strip(MESSAGE, LEAKY);
    expect(out).toContain('\r\nX-Originating-IP-Extra: kept, only starts like a stripped name\r\n');
    expect(out).toContain('\r\nX-Originating-I: kept, a prefix of one\r\n');
  });

  test('white space between the name and the colon (RFC 5322 §4.5.8 obsolete syntax) still names the field', () => {
    expect(strip('Subject: a\r\nX-Originating-IP \t : [10.0.0.1]\r\n\r\nbody\r\n', LEAKY)).toBe('Subject: a\r\n\r\nbody\r\n');
  });

  test('nothing after the header block changes: the body and an attached message/rfc822 part keep their X-Originating-IP', () => {
    const out = strip(MESSAGE, LEAKY);
    const body = MESSAGE.slice(MESSAGE.indexOf('\r\n\r\n'));
    expect(out.endsWith(body)).toBe(true);
    expect(out.match(/X-Originating-IP: /g)).toHaveLength(2);
  });

  test('the header block ends at the first line that is no header field, as in Postfix: a stripped name after it stays', () => {
    const message = 'Subject: a\r\nnot a header line\r\nX-Originating-IP: [10.0.0.1]\r\n\r\nbody\r\n';
    expect(strip(message, LEAKY)).toBe(message);
    const noColon = 'Subject: a\r\nX-Originating-IP [10.0.0.1]\r\nX-Originating-IP: [10.0.0.2]\r\n';
    expect(strip(noColon, LEAKY)).toBe(noColon);
  });

  test('a message that is only headers (no empty line) loses its stripped fields, the last line included', () => {
    expect(strip('Subject: a\r\nX-Originating-IP: [10.0.0.1]\r\nTo: b@corp.example\r\n', LEAKY)).toBe('Subject: a\r\nTo: b@corp.example\r\n');
    expect(strip('Subject: a\r\nX-Originating-IP: [10.0.0.1]\r\n folded\r\n', LEAKY)).toBe('Subject: a\r\n');
    expect(strip('X-Originating-IP: [10.0.0.1]\r\n', LEAKY)).toBe('');
  });

  test("a continuation line before the client's first field belongs to smtpgate's own last header: it stays", () => {
    expect(strip(' (continued)\r\nX-Originating-IP: [10.0.0.1]\r\nSubject: a\r\n\r\nb\r\n', LEAKY)).toBe(' (continued)\r\nSubject: a\r\n\r\nb\r\n');
  });

  test('a dot-stuffed line is no stripped field: ".X-Originating-IP" is another name', () => {
    // The encoder's output for a client line ".X-Originating-IP: x".
    const message = '..X-Originating-IP: x\r\nX-Originating-IP: y\r\n\r\n..\r\n';
    expect(strip(message, LEAKY)).toBe('..X-Originating-IP: x\r\n\r\n..\r\n');
  });

  test('without names nothing goes', () => {
    expect(strip(MESSAGE, [])).toBe(MESSAGE);
  });
});

describe('chunking', () => {
  test('one-octet pieces give the same message', () => {
    expect(strip(MESSAGE, LEAKY, octets(MESSAGE))).toBe(STRIPPED);
  });

  test('a split at every position, and at every pair of positions in the header block, gives the same message', () => {
    const length = b(MESSAGE).length;
    for (let at = 0; at <= length; at++) expect(strip(MESSAGE, LEAKY, [at]), `split at ${at}`).toBe(STRIPPED);
    const headerEnd = MESSAGE.indexOf('\r\n\r\n') + 4;
    for (let i = 0; i <= headerEnd; i++) {
      for (let j = 0; i + j <= headerEnd; j++) expect(strip(MESSAGE, LEAKY, [i, j]), `split at ${i} and ${i + j}`).toBe(STRIPPED);
    }
  });

  test('after the header block, the pieces come back as they are: the same array, no copy', () => {
    const stripper = new HeaderStripper(LEAKY);
    expect(s(stripper.filter([b('X-Originating-IP: x\r\nSubject: a\r\n\r\n')]))).toBe('Subject: a\r\n\r\n');
    const body = [b('line one\r\n'), b('X-Originating-IP: body\r\n')];
    expect(stripper.filter(body)).toBe(body);
  });

  test('only the current line is ever held: by the end of each line, every kept octet before it has been passed on', () => {
    const stripper = new HeaderStripper(LEAKY);
    const input = b(MESSAGE);
    const out: Buffer[] = [];
    for (let at = 0; at < input.length; at++) {
      out.push(...stripper.filter([input.subarray(at, at + 1)]));
      if (input[at] === 0x0a) expect(s(out)).toBe(reference(MESSAGE.slice(0, at + 1), LEAKY));
    }
  });

  test('a kept field is passed on as soon as its name shows it is not stripped (too long, or its colon), before its line ends', () => {
    const stripper = new HeaderStripper(LEAKY);
    expect(stripper.filter([b('X-Originating-IP')])).toEqual([]);
    // Longer than every configured name: it can no longer be one of them.
    expect(s(stripper.filter([b('-Extra')]))).toBe('X-Originating-IP-Extra');
    expect(s(stripper.filter([b(': some value\r\nSubj')]))).toBe(': some value\r\n');
    expect(s(stripper.filter([b('ect: x')]))).toBe('Subject: x');
  });
});

describe('after the body encoder, as the message sink runs it', () => {
  /** The client's bytes through a BodyEncoder (reject mode), then the stripper, in `chunk`-octet chunks. */
  function relay(message: string, names: string[], chunk: number): string {
    const encoder = new BodyEncoder({ mode: 'reject', maxLineOctets: 1000 });
    const stripper = new HeaderStripper(names);
    const input = b(message);
    const out: Buffer[] = [];
    for (let at = 0; at < input.length; at += chunk) out.push(...stripper.filter(encoder.encode(input.subarray(at, at + chunk))));
    out.push(...stripper.filter(encoder.end()), ...stripper.end());
    return s(out);
  }

  test('the stripped message is what the encoder alone would send, minus the stripped lines, at any chunk size', () => {
    const dotted = MESSAGE.replace('attached body', '.attached body starting with a dot');
    const stuffed = dotted.replace('\r\n.attached', '\r\n..attached');
    for (const chunk of [1, 2, 3, 7, 64, 100_000]) expect(relay(dotted, LEAKY, chunk), `chunks of ${chunk}`).toBe(reference(stuffed, LEAKY));
  });

  test('a bare LF inside a stripped field still refuses the message: the smuggling guard sees every octet first', () => {
    expect(() => relay('X-Originating-IP: [10.0.0.1]\n.\r\nSubject: a\r\n\r\nb\r\n', LEAKY, 5)).toThrow(SmugglingError);
  });
});

describe('properties (fast-check)', () => {
  const line = fc.oneof(
    fc.constantFrom('X-Originating-IP', 'x-originating-ip', 'X-ORIGINATING-IP', 'X-Originating-IP-Extra', 'X-Originating-I', 'Subject', 'X-Internal-Host', 'Received').chain((name) =>
      fc.tuple(fc.constantFrom('', ' ', '\t', ' \t '), fc.constantFrom('', ' [10.0.0.1]', ' a: b', ':')).map(([gap, value]) => `${name}${gap}:${value}`),
    ),
    fc.constantFrom(' folded', '\tfolded', ' ', ''),
    fc.constantFrom('body text', '..', '..X-Originating-IP: stuffed', ':starts with a colon', 'X-Originating-IP no colon', '\xe9t\xe9: 8-bit name'),
  );
  const message = fc.tuple(fc.array(line, { maxLength: 14 }), fc.boolean()).map(([lines, crlfAtEnd]) => lines.join('\r\n') + (crlfAtEnd && lines.length > 0 ? '\r\n' : ''));
  const cuts = fc.array(fc.integer({ min: 0, max: 12 }), { maxLength: 40 });

  test('any canonical message, cut anywhere: the same output as the oracle, still canonical, made of whole input lines', () => {
    fc.assert(
      fc.property(message, cuts, (text, sizes) => {
        const out = strip(text, LEAKY, sizes);
        expect(out).toBe(reference(text, LEAKY));
        if (text.endsWith('\r\n')) expect(isCanonical(b(out))).toBe(true);
        // Every output line is an input line, in the input's order.
        const inputLines = text.split(/(?<=\r\n)/);
        let from = 0;
        for (const kept of out.split(/(?<=\r\n)/).filter((l) => l !== '')) {
          const at = inputLines.indexOf(kept, from);
          expect(at, `"${kept}" is an input line`).toBeGreaterThanOrEqual(from);
          from = at + 1;
        }
      }),
      { numRuns: 2000 },
    );
  });
});
