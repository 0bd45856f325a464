/**
 * The XCLIENT / XFORWARD lines smtpgate builds from a client's identity (src/relay/identity-lines.ts).
 * The real Postfix check is test/e2e/relay/postfix-identity-encoding.test.ts; this pins the rules
 * for every generated value, including those no Postfix in the test machine would show.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { identityAddr } from '../../src/relay/backend-session.js';
import { identityLines, UNAVAILABLE, xtextEncode } from '../../src/relay/identity-lines.js';
import { prngFor } from '../helpers/flaky-backend.js';

const XCLIENT_CAPS = 'NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT';
const SEED = Number(process.env.SMTPGATE_SEED ?? 1414);

/** RFC 3461 xtext decoding, as Postfix's xtext_unquote() does it. */
function xtextDecode(value: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < value.length; i++) {
    if (value[i] === '+') {
      bytes.push(parseInt(value.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      bytes.push(value.charCodeAt(i));
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

/** name → value, over all lines (a later line's value wins, as on the backend). */
function parse(lines: string[]): Map<string, string> {
  const attrs = new Map<string, string>();
  for (const line of lines) {
    for (const token of line.split(' ').slice(1)) {
      const eq = token.indexOf('=');
      attrs.set(token.slice(0, eq), token.slice(eq + 1));
    }
  }
  return attrs;
}

const ALPHABET = ['a', 'b', '.', '-', '"', '<', '>', '\\', '+', '=', '[', ']', ' ', '\t', '\x7f', '\x01', 'ü', '日', '😀', ':', '@', '(', ')', ';', '%', ','];

function generated(seed: number, index: number, maxLength: number): string {
  const rnd = prngFor(seed, index);
  const length = 1 + Math.floor(rnd() * maxLength);
  let s = '';
  for (let i = 0; i < length; i++) s += ALPHABET[Math.floor(rnd() * ALPHABET.length)];
  return s;
}

describe('xtextEncode', () => {
  it('encodes per RFC 3461: bytes outside "!".."~", "+" and "=" as +HH of the UTF-8 bytes', () => {
    expect(xtextEncode('a+b=c d')).toBe('a+2Bb+3Dc+20d');
    expect(xtextEncode('é\x7f~!')).toBe('+C3+A9+7F~!');
    expect(xtextEncode('[UNAVAILABLE]')).toBe('[UNAVAILABLE]');
  });

  it("also encodes the characters Postfix's command tokenizer reads as quoting: \" < > \\", () => {
    expect(xtextEncode('a"b<c>d\\e')).toBe('a+22b+3Cc+3Ed+5Ce');
  });
  it('gives every byte of every value its encoding, values that need none (returned as they are) among them', () => {
    // The definition, byte by byte: the fast path for values that need no +HH must agree with it.
    const byByte = (v: string) =>
      [...Buffer.from(v, 'utf8')].map((b) => (b >= 0x21 && b <= 0x7e && !'+="<>\\'.includes(String.fromCharCode(b)) ? String.fromCharCode(b) : `+${b.toString(16).toUpperCase().padStart(2, '0')}`)).join('');
    const printable = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7f }).map((c) => String.fromCharCode(c)), maxLength: 40 });
    fc.assert(fc.property(fc.oneof(printable, fc.string({ unit: 'binary', maxLength: 20 })), (v) => {
      expect(xtextEncode(v)).toBe(byByte(v));
    }), { numRuns: 2000 });
    for (let b = 0; b < 0x80; b++) expect(xtextEncode(`a${String.fromCharCode(b)}z`)).toBe(byByte(`a${String.fromCharCode(b)}z`));
  });
});

describe('identityLines', () => {
  it('every client-chosen HELO and LOGIN comes back intact from one token per attribute, or as [UNAVAILABLE] when Postfix could not hold it', () => {
    for (let i = 0; i < 500; i++) {
      const helo = generated(SEED, i, 300);
      const login = generated(SEED + 1, i, 300);
      const { lines, replaced } = identityLines('XCLIENT', { NAME: undefined, ADDR: '192.0.2.1', PORT: '40000', PROTO: 'ESMTP', HELO: helo, LOGIN: login }, XCLIENT_CAPS);
      const where = JSON.stringify({ helo, login, lines });
      for (const line of lines) {
        expect(Buffer.byteLength(line) + 2, where).toBeLessThanOrEqual(512);
        // Nothing Postfix's tokenizer would take for quoting or whitespace inside a value.
        expect(line, where).toMatch(/^(XCLIENT)( [A-Z]+=[!-~]+)+$/);
        expect(line, where).not.toMatch(/["<>\\]/);
      }
      const attrs = parse(lines);
      for (const [name, given] of [['HELO', helo], ['LOGIN', login]] as const) {
        const sent = attrs.get(name)!;
        if (sent === UNAVAILABLE) expect(replaced, where).toContain(name);
        else expect(xtextDecode(sent), where).toBe(given);
        expect(sent.length, where).toBeLessThanOrEqual(255);
      }
      expect(attrs.get('ADDR')).toBe('192.0.2.1');
      // A login that would arrive altered (controls masked as '?') never arrives at all.
      if (/[\x00-\x1f\x7f]/.test(login)) expect(attrs.get('LOGIN'), where).toBe(UNAVAILABLE);
    }
  });

  it('puts HELO, PROTO, LOGIN and ADDR (last) in the last XCLIENT command, since Postfix resets the first three when a later command omits them', () => {
    const helo = 'h'.repeat(200) + '.test';
    const login = 'l'.repeat(250);
    const name = `${'n'.repeat(60)}.`.repeat(3) + 'test';
    const { lines, replaced } = identityLines('XCLIENT', { ADDR: '192.0.2.1', NAME: name, PORT: '40000', PROTO: 'ESMTP', HELO: helo, LOGIN: login }, XCLIENT_CAPS);
    expect(lines).toEqual([`XCLIENT NAME=${name} PORT=40000`, `XCLIENT HELO=${helo} PROTO=ESMTP LOGIN=${login} ADDR=192.0.2.1`]);
    expect(replaced).toEqual([]);
  });

  it('gives up the HELO before the login when both do not fit on the last line', () => {
    const helo = 'h'.repeat(250);
    const login = 'l'.repeat(250);
    const { lines, replaced } = identityLines('XCLIENT', { ADDR: 'IPV6:2001:db8::1', PROTO: 'ESMTP', HELO: helo, LOGIN: login }, XCLIENT_CAPS);
    expect(lines).toEqual([`XCLIENT HELO=[UNAVAILABLE] PROTO=ESMTP LOGIN=${login} ADDR=IPV6:2001:db8::1`]);
    expect(replaced).toEqual(['HELO']);
  });

  it('sends as [UNAVAILABLE] a value over 255 octets once encoded, a login with control characters, and a NAME that is not a host name', () => {
    const cases: Array<[string, string]> = [
      ['HELO', 'x'.repeat(256)],
      ['HELO', 'ü'.repeat(43)],
      ['LOGIN', '+'.repeat(86)],
      ['LOGIN', 'tab\there'],
      ['LOGIN', 'del\x7f'],
      ['LOGIN', 'lone\uD800surrogate'],
      ['NAME', 'not a host'],
      ['NAME', 'a..b'],
    ];
    for (const [name, value] of cases) {
      const { lines, replaced } = identityLines('XCLIENT', { [name]: value, ADDR: '192.0.2.1' }, XCLIENT_CAPS);
      expect(parse(lines).get(name), `${name}=${JSON.stringify(value)}`).toBe(UNAVAILABLE);
      expect(replaced).toEqual([name]);
    }
  });

  it('keeps what Postfix holds as given: a 255-octet HELO, a UTF-8 login, a host NAME, [TEMPUNAVAIL]', () => {
    const { lines, replaced } = identityLines('XCLIENT', { HELO: 'x'.repeat(255), LOGIN: 'jürgen', NAME: 'mx_1.example.', ADDR: '192.0.2.1' }, XCLIENT_CAPS);
    expect(lines).toEqual([`XCLIENT NAME=mx_1.example. HELO=${'x'.repeat(255)} LOGIN=j+C3+BCrgen ADDR=192.0.2.1`]);
    expect(replaced).toEqual([]);
    expect(identityLines('XCLIENT', { NAME: '[TEMPUNAVAIL]' }, XCLIENT_CAPS).lines).toEqual(['XCLIENT NAME=[TEMPUNAVAIL]']);
  });

  it('XFORWARD: every attribute may go in any command (Postfix keeps them until the transaction ends), ADDR last', () => {
    const name = `${'n'.repeat(60)}.`.repeat(4) + 'test';
    const helo = 'h'.repeat(250);
    const { lines } = identityLines('XFORWARD', { ADDR: '192.0.2.1', NAME: name, HELO: helo, PROTO: 'SMTP' }, 'NAME ADDR PORT PROTO HELO IDENT SOURCE');
    expect(lines).toEqual([`XFORWARD NAME=${name}`, `XFORWARD HELO=${helo} PROTO=SMTP ADDR=192.0.2.1`]);
  });
});

describe('identityAddr', () => {
  it('sends an IPv4 client seen through a dual-stack socket as IPv4, and IPv6 with the IPV6: prefix', () => {
    expect(identityAddr('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(identityAddr('::FFFF:192.0.2.1')).toBe('192.0.2.1');
    expect(identityAddr('192.0.2.1')).toBe('192.0.2.1');
    expect(identityAddr('2001:db8::1')).toBe('IPV6:2001:db8::1');
    expect(identityAddr('::1')).toBe('IPV6:::1');
  });
});
