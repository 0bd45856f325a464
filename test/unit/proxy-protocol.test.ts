import { once } from 'node:events';
import net, { type AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import {
  MAX_PROXY_HEADER_BYTES,
  ProxyHeaderError,
  V1_MAX_LINE_BYTES,
  parseProxyHeader,
  readProxyHeader,
  type ProxyAddresses,
  type ProxyParseResult,
} from '../../src/listener/proxy-protocol.js';

// ---------------------------------------------------------------------------------------------
// helpers

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const SMTP = b('EHLO x\r\nMAIL FROM:<a@example.org>\r\n');

const SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const PROXY_V2 = 0x21; // version 2, command PROXY
const LOCAL_V2 = 0x20; // version 2, command LOCAL
const TCP4 = 0x11;
const UDP4 = 0x12;
const TCP6 = 0x21;
const UNIX_STREAM = 0x31;

/** A v2 header: signature, ver/cmd, fam/transport, length (of `body` unless overridden), body. */
function v2(verCmd: number, famTransport: number, body: Buffer, length = body.length): Buffer {
  const fixed = Buffer.alloc(4);
  fixed[0] = verCmd;
  fixed[1] = famTransport;
  fixed.writeUInt16BE(length, 2);
  return Buffer.concat([SIGNATURE, fixed, body]);
}

function tlv(type: number, value: Buffer): Buffer {
  const head = Buffer.alloc(3);
  head[0] = type;
  head.writeUInt16BE(value.length, 1);
  return Buffer.concat([head, value]);
}

function ipv4Block(src: string, dst: string, sport: number, dport: number): Buffer {
  const out = Buffer.alloc(12);
  Buffer.from(src.split('.').map(Number)).copy(out, 0);
  Buffer.from(dst.split('.').map(Number)).copy(out, 4);
  out.writeUInt16BE(sport, 8);
  out.writeUInt16BE(dport, 10);
  return out;
}

function ipv6Block(src: Buffer, dst: Buffer, sport: number, dport: number): Buffer {
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(sport, 0);
  ports.writeUInt16BE(dport, 2);
  return Buffer.concat([src, dst, ports]);
}

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s/g, ''), 'hex');

/** Results for every prefix of `buf`, from the empty buffer to the whole of it. */
function prefixResults(buf: Buffer): ProxyParseResult[] {
  return Array.from({ length: buf.length + 1 }, (_, n) => parseProxyHeader(buf.subarray(0, n)));
}

function expectOk(buf: Buffer): { header: ProxyAddresses; consumed: number } {
  const r = parseProxyHeader(buf);
  if (r.status !== 'ok') throw new Error(`expected ok, got ${JSON.stringify(r)}`);
  return { header: r.header, consumed: r.consumed };
}

function expectInvalid(buf: Buffer): string {
  const r = parseProxyHeader(buf);
  if (r.status !== 'invalid') throw new Error(`expected invalid, got ${JSON.stringify(r)}`);
  return r.reason;
}

/** The smallest prefix length at which the parser stops saying 'incomplete'. */
function decidedAt(buf: Buffer): number | undefined {
  const i = prefixResults(buf).findIndex((r) => r.status !== 'incomplete');
  return i < 0 ? undefined : i;
}

// ---------------------------------------------------------------------------------------------
// version 1

describe('parseProxyHeader, version 1 (text, §2.1)', () => {
  it('parses a TCP4 line into addresses and ports', () => {
    expect(expectOk(b('PROXY TCP4 192.168.0.1 192.168.0.11 56324 25\r\n'))).toEqual({
      header: {
        family: 'tcp4',
        sourceAddress: '192.168.0.1',
        sourcePort: 56324,
        destinationAddress: '192.168.0.11',
        destinationPort: 25,
      },
      consumed: 46,
    });
  });

  it('accepts the extreme TCP4 values: 0.0.0.0, 255.255.255.255, ports 0 and 65535', () => {
    expect(expectOk(b('PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n')).header).toEqual({
      family: 'tcp4',
      sourceAddress: '0.0.0.0',
      sourcePort: 0,
      destinationAddress: '255.255.255.255',
      destinationPort: 65535,
    });
  });

  it('parses a TCP6 line and normalizes the addresses per RFC 5952', () => {
    expect(expectOk(b('PROXY TCP6 2001:DB8:0:0:0:0:0:1 2001:0db8::0001 40000 587\r\n')).header).toEqual({
      family: 'tcp6',
      sourceAddress: '2001:db8::1',
      sourcePort: 40000,
      destinationAddress: '2001:db8::1',
      destinationPort: 587,
    });
  });

  it.each([
    ['::', '::'],
    ['::1', '::1'],
    ['1::', '1::'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // first of two equal runs (RFC 5952 §4.2.3)
    ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'], // the longest run wins
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // one zero group is not compressed (§4.2.2)
    ['2001:db8::1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
    ['FFFF:ABCD::', 'ffff:abcd::'],
    ['::ffff:192.0.2.1', '::ffff:192.0.2.1'], // IPv4-mapped stays IPv6 text (§5)
    ['::FFFF:c000:0201', '::ffff:192.0.2.1'],
    ['64:ff9b::192.0.2.1', '64:ff9b::c000:201'],
  ])('writes the TCP6 address %s as %s', (input, normalized) => {
    const { header } = expectOk(b(`PROXY TCP6 ${input} ::1 1 2\r\n`));
    expect(header.sourceAddress).toBe(normalized);
  });

  it('parses "PROXY UNKNOWN" as unknown endpoints, with or without the ignored fields', () => {
    expect(expectOk(b('PROXY UNKNOWN\r\n'))).toEqual({ header: { family: 'unknown' }, consumed: 15 });
    expect(expectOk(b('PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n')).header).toEqual({ family: 'unknown' });
    expect(expectOk(b('PROXY UNKNOWN whatever the sender puts here\r\n')).header).toEqual({ family: 'unknown' });
  });

  it('accepts the worst-case 107-byte line and refuses one byte more', () => {
    const ffff = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';
    const longest = b(`PROXY UNKNOWN ${ffff} ${ffff} 65535 65535\r\n`);
    expect(longest.length).toBe(V1_MAX_LINE_BYTES);
    expect(expectOk(longest).consumed).toBe(107);
    expect(expectInvalid(b(`PROXY UNKNOWN ${ffff} ${ffff} 65535 655355\r\n`))).toMatch(/no CRLF within 107 bytes/);
  });

  it('reports only the header bytes as consumed, leaving "EHLO x\\r\\n" for the SMTP reader', () => {
    const header = b('PROXY TCP4 10.0.0.1 10.0.0.2 1234 25\r\n');
    const { consumed } = expectOk(Buffer.concat([header, SMTP]));
    expect(consumed).toBe(header.length);
    expect(Buffer.concat([header, SMTP]).subarray(consumed).toString('latin1')).toBe(SMTP.toString('latin1'));
  });

  it('says incomplete for every proper prefix of a valid line, and decides on the LF', () => {
    for (const line of ['PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n', 'PROXY TCP6 ::1 ::2 1 2\r\n', 'PROXY UNKNOWN\r\n']) {
      const buf = b(line);
      const results = prefixResults(buf);
      expect(results.slice(0, -1).every((r) => r.status === 'incomplete')).toBe(true);
      expect(results.at(-1)?.status).toBe('ok');
    }
  });

  it.each([
    ['a line with no CRLF within 107 bytes', `PROXY UNKNOWN ${'x'.repeat(100)}`, /no CRLF within 107 bytes/],
    ['a line ending in a bare LF', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n', /bare LF/],
    ['a line with a CR not followed by LF', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n', /CR not followed by LF/],
    ['a non-printable byte', 'PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n', /non-printable byte 0x09/],
    ['a byte outside US-ASCII', 'PROXY UNKNOWN \xe9\r\n', /non-printable byte 0xe9/],
    ['an IPv4 octet over 255', 'PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n', /source address "256.1.1.1"/],
    ['an IPv4 octet with a leading zero', 'PROXY TCP4 1.2.3.4 05.6.7.8 1 2\r\n', /destination address "05.6.7.8"/],
    ['an IPv4 address with three octets', 'PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n', /source address/],
    ['an IPv6 address on a TCP4 line', 'PROXY TCP4 ::1 5.6.7.8 1 2\r\n', /not a valid TCP4 address/],
    ['an IPv4 address on a TCP6 line', 'PROXY TCP6 1.2.3.4 ::1 1 2\r\n', /not a valid TCP6 address/],
    ['an IPv6 address with a zone id', 'PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n', /source address/],
    ['an IPv6 address with two "::"', 'PROXY TCP6 1::2::3 ::1 1 2\r\n', /source address/],
    ['an IPv6 address with nine groups', 'PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n', /source address/],
    ['an IPv6 group of five digits', 'PROXY TCP6 12345:: ::1 1 2\r\n', /source address/],
    ['port 70000', 'PROXY TCP4 1.2.3.4 5.6.7.8 70000 25\r\n', /source port "70000"/],
    ['port 65536', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n', /destination port "65536"/],
    ['a port with a leading zero', 'PROXY TCP4 1.2.3.4 5.6.7.8 025 25\r\n', /source port "025"/],
    ['a port with a sign', 'PROXY TCP4 1.2.3.4 5.6.7.8 +25 25\r\n', /source port "\+25"/],
    ['a hexadecimal port', 'PROXY TCP4 1.2.3.4 5.6.7.8 0x19 25\r\n', /source port/],
    ['two spaces between fields', 'PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n', /separated by single spaces/],
    ['two spaces after PROXY', 'PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n', /protocol "" is not/],
    ['a trailing space', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n', /separated by single spaces/],
    ['a missing port', 'PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n', /separated by single spaces/],
    ['an unknown protocol', 'PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n', /protocol "TCP5" is not TCP4, TCP6 or UNKNOWN/],
    ['a lowercase protocol', 'PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n', /protocol "tcp4"/],
    ['UNKNOWN glued to more text', 'PROXY UNKNOWNX\r\n', /protocol "UNKNOWNX"/],
    ['an empty line after PROXY', 'PROXY \r\n', /protocol ""/],
    ['a lowercase "proxy"', 'proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n', /not a PROXY protocol header/],
    ['"PROXY" without its space', 'PROXY\r\n', /not a PROXY protocol header/],
  ])('refuses %s', (_name, line, reason) => {
    expect(expectInvalid(b(line))).toMatch(reason);
  });

  it('refuses bytes that stop matching "PROXY " at the first byte that differs', () => {
    expect(decidedAt(b('EHLO x\r\n'))).toBe(1);
    expect(decidedAt(b('PROXZ TCP4'))).toBe(5);
    expect(decidedAt(b('PROXY TCP4 1.2.3.4\n'))).toBe(19);
    expect(parseProxyHeader(b('PROXY'))).toEqual({ status: 'incomplete' });
  });

  it('says incomplete for an empty buffer', () => {
    expect(parseProxyHeader(Buffer.alloc(0))).toEqual({ status: 'incomplete' });
  });
});

// ---------------------------------------------------------------------------------------------
// version 2

const V6_SRC = hex('2001 0db8 0000 0000 0000 0000 0000 0001');
const V6_DST = hex('2001 0db8 0001 0000 0000 0000 0000 00ab');
const SSL_TLV = tlv(0x20, Buffer.concat([Buffer.from([0x01, 0, 0, 0, 0]), tlv(0x21, b('TLSv1.3'))]));
const TLVS = Buffer.concat([tlv(0x05, b('unique-id-1234')), tlv(0x04, Buffer.alloc(0)), SSL_TLV]);

describe('parseProxyHeader, version 2 (binary, §2.2)', () => {
  it('parses PROXY TCP over IPv4', () => {
    const buf = v2(PROXY_V2, TCP4, ipv4Block('203.0.113.7', '192.0.2.25', 51000, 25));
    expect(parseProxyHeader(buf)).toEqual({
      status: 'ok',
      header: {
        family: 'tcp4',
        sourceAddress: '203.0.113.7',
        sourcePort: 51000,
        destinationAddress: '192.0.2.25',
        destinationPort: 25,
      },
      consumed: 28,
    });
  });

  it('skips TLVs after the IPv4 block and counts them as consumed', () => {
    const buf = v2(PROXY_V2, TCP4, Buffer.concat([ipv4Block('203.0.113.7', '192.0.2.25', 51000, 465), TLVS]));
    const { header, consumed } = expectOk(buf);
    expect(header).toEqual({
      family: 'tcp4',
      sourceAddress: '203.0.113.7',
      sourcePort: 51000,
      destinationAddress: '192.0.2.25',
      destinationPort: 465,
    });
    expect(consumed).toBe(16 + 12 + TLVS.length);
  });

  it('parses PROXY TCP over IPv6, with and without TLVs, writing addresses per RFC 5952', () => {
    const expected = {
      family: 'tcp6',
      sourceAddress: '2001:db8::1',
      sourcePort: 1,
      destinationAddress: '2001:db8:1::ab',
      destinationPort: 65535,
    };
    const bare = v2(PROXY_V2, TCP6, ipv6Block(V6_SRC, V6_DST, 1, 65535));
    expect(expectOk(bare)).toEqual({ header: expected, consumed: 52 });
    const withTlvs = v2(PROXY_V2, TCP6, Buffer.concat([ipv6Block(V6_SRC, V6_DST, 1, 65535), TLVS]));
    expect(expectOk(withTlvs)).toEqual({ header: expected, consumed: 52 + TLVS.length });
  });

  it('keeps an IPv4-mapped IPv6 source as IPv6 text', () => {
    const mapped = hex('0000 0000 0000 0000 0000 ffff c000 0201');
    const { header } = expectOk(v2(PROXY_V2, TCP6, ipv6Block(mapped, V6_DST, 1, 2)));
    expect(header.sourceAddress).toBe('::ffff:192.0.2.1');
  });

  it('treats LOCAL as unknown endpoints and skips whatever block its length announces', () => {
    expect(expectOk(v2(LOCAL_V2, 0x00, Buffer.alloc(0)))).toEqual({ header: { family: 'unknown' }, consumed: 16 });
    // "must not assume zero is presented for LOCAL connections"
    const withBlock = v2(LOCAL_V2, TCP4, Buffer.concat([ipv4Block('1.2.3.4', '5.6.7.8', 1, 2), TLVS]));
    expect(expectOk(withBlock)).toEqual({ header: { family: 'unknown' }, consumed: withBlock.length });
    // the family is ignored for LOCAL, even an unspecified one
    expect(expectOk(v2(LOCAL_V2, 0xff, Buffer.alloc(3))).header).toEqual({ family: 'unknown' });
  });

  it('treats PROXY with AF_UNSPEC as unknown endpoints', () => {
    expect(expectOk(v2(PROXY_V2, 0x00, Buffer.alloc(0)))).toEqual({ header: { family: 'unknown' }, consumed: 16 });
    expect(expectOk(v2(PROXY_V2, 0x00, Buffer.alloc(7))).consumed).toBe(23);
  });

  it('falls back to unknown endpoints for UDP and UNIX sockets, which SMTP never uses', () => {
    expect(expectOk(v2(PROXY_V2, UDP4, ipv4Block('1.2.3.4', '5.6.7.8', 1, 2))).header).toEqual({ family: 'unknown' });
    expect(expectOk(v2(PROXY_V2, 0x22, ipv6Block(V6_SRC, V6_DST, 1, 2))).header).toEqual({ family: 'unknown' });
    const unix = v2(PROXY_V2, UNIX_STREAM, Buffer.concat([Buffer.alloc(216), TLVS]));
    expect(expectOk(unix)).toEqual({ header: { family: 'unknown' }, consumed: unix.length });
  });

  it('says incomplete at every byte boundary until the header is complete', () => {
    const headers = [
      v2(PROXY_V2, TCP4, ipv4Block('1.2.3.4', '5.6.7.8', 1, 2)),
      v2(PROXY_V2, TCP4, Buffer.concat([ipv4Block('1.2.3.4', '5.6.7.8', 1, 2), TLVS])),
      v2(PROXY_V2, TCP6, ipv6Block(V6_SRC, V6_DST, 1, 2)),
      v2(PROXY_V2, TCP6, Buffer.concat([ipv6Block(V6_SRC, V6_DST, 1, 2), TLVS])),
      v2(LOCAL_V2, 0x00, Buffer.alloc(0)),
      v2(LOCAL_V2, 0x00, TLVS),
    ];
    for (const header of headers) {
      const full = parseProxyHeader(header);
      expect(full.status).toBe('ok');
      const results = prefixResults(Buffer.concat([header, SMTP]));
      results.forEach((r, n) => {
        if (n < header.length) expect(r, `prefix of ${n} bytes`).toEqual({ status: 'incomplete' });
        else expect(r, `prefix of ${n} bytes`).toEqual(full);
      });
    }
  });

  it('reports only the header bytes as consumed, leaving "EHLO x\\r\\n" for the SMTP reader', () => {
    const header = v2(PROXY_V2, TCP4, Buffer.concat([ipv4Block('1.2.3.4', '5.6.7.8', 1, 2), TLVS]));
    const buf = Buffer.concat([header, b('EHLO x\r\n')]);
    const { consumed } = expectOk(buf);
    expect(consumed).toBe(header.length);
    expect(buf.subarray(consumed).toString('latin1')).toBe('EHLO x\r\n');
  });

  it('refuses a wrong signature at the first byte that differs', () => {
    const good = v2(PROXY_V2, TCP4, ipv4Block('1.2.3.4', '5.6.7.8', 1, 2));
    for (let i = 0; i < 12; i++) {
      const bad = Buffer.from(good);
      bad[i] = bad[i]! ^ 0x40;
      if (i === 0) expect(expectInvalid(bad)).toMatch(/not a PROXY protocol header/);
      else expect(expectInvalid(bad)).toMatch(/do not match the v2 signature/);
      expect(decidedAt(bad)).toBe(i + 1);
    }
  });

  it('refuses a version nibble other than 2 as soon as the 13th byte arrives', () => {
    const v1Nibble = v2(0x11, TCP4, ipv4Block('1.2.3.4', '5.6.7.8', 1, 2));
    expect(expectInvalid(v1Nibble)).toMatch(/version 1, only 2 is defined/);
    expect(decidedAt(v1Nibble)).toBe(13);
    expect(expectInvalid(v2(0x31, TCP4, ipv4Block('1.2.3.4', '5.6.7.8', 1, 2)))).toMatch(/version 3/);
  });

  it('refuses unassigned commands, address families and transports', () => {
    expect(expectInvalid(v2(0x22, TCP4, ipv4Block('1.2.3.4', '5.6.7.8', 1, 2)))).toMatch(/unassigned command 2/);
    expect(expectInvalid(v2(PROXY_V2, 0x41, Buffer.alloc(12)))).toMatch(/unspecified address family 4/);
    expect(expectInvalid(v2(PROXY_V2, 0x13, Buffer.alloc(12)))).toMatch(/unspecified transport 3/);
    expect(decidedAt(v2(PROXY_V2, 0x41, Buffer.alloc(12)))).toBe(14);
  });

  it('refuses a length too large as soon as the length field arrives', () => {
    const huge = Buffer.concat([v2(PROXY_V2, TCP4, ipv4Block('1.2.3.4', '5.6.7.8', 1, 2), 0xffff)]);
    expect(expectInvalid(huge)).toMatch(/declares 65551 bytes, more than the 4096-byte limit/);
    expect(decidedAt(huge)).toBe(16);
  });

  it('accepts a header of exactly MAX_PROXY_HEADER_BYTES and refuses one byte more', () => {
    const padding = (n: number) => tlv(0x04, Buffer.alloc(n - 3)); // PP2_TYPE_NOOP
    const atCap = v2(PROXY_V2, TCP4, Buffer.concat([ipv4Block('1.2.3.4', '5.6.7.8', 1, 2), padding(4096 - 28)]));
    expect(atCap.length).toBe(MAX_PROXY_HEADER_BYTES);
    expect(decidedAt(atCap)).toBe(MAX_PROXY_HEADER_BYTES);
    expect(expectOk(atCap).consumed).toBe(MAX_PROXY_HEADER_BYTES);
    const overCap = v2(PROXY_V2, TCP4, Buffer.concat([ipv4Block('1.2.3.4', '5.6.7.8', 1, 2), padding(4097 - 28)]));
    expect(expectInvalid(overCap)).toMatch(/more than the 4096-byte limit/);
  });

  it('refuses a length shorter than the address block of the announced family', () => {
    expect(expectInvalid(v2(PROXY_V2, TCP4, Buffer.alloc(11)))).toMatch(/length 11 is shorter than its 12-byte address block/);
    expect(expectInvalid(v2(PROXY_V2, TCP6, Buffer.alloc(12)))).toMatch(/shorter than its 36-byte/);
    expect(expectInvalid(v2(PROXY_V2, UNIX_STREAM, Buffer.alloc(36)))).toMatch(/shorter than its 216-byte/);
  });

  it('refuses TLVs that do not fit in the announced length', () => {
    const block = ipv4Block('1.2.3.4', '5.6.7.8', 1, 2);
    const overrun = Buffer.concat([block, tlv(0x05, b('abcdef')).subarray(0, 7)]);
    expect(expectInvalid(v2(PROXY_V2, TCP4, overrun))).toMatch(/TLV 0x05 runs past the header length/);
    expect(expectInvalid(v2(PROXY_V2, TCP4, Buffer.concat([block, Buffer.from([0x04, 0x00])])))).toMatch(
      /2 stray byte\(s\) that can't form a TLV/,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// properties

/** Inputs that reach deep into both parsers, not just random bytes that fail on byte 0. */
const ipv6Bytes = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((a) => Buffer.from(a));
const port = fc.integer({ min: 0, max: 65535 });
const tlvs = fc
  .array(fc.tuple(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 40 })), { maxLength: 4 })
  .map((list) => Buffer.concat(list.map(([t, v]) => tlv(t, Buffer.from(v)))));

const validHeader: fc.Arbitrary<Buffer> = fc.oneof(
  fc.tuple(fc.ipV4(), fc.ipV4(), port, port).map(([s, d, sp, dp]) => b(`PROXY TCP4 ${s} ${d} ${sp} ${dp}\r\n`)),
  fc.tuple(fc.ipV6(), fc.ipV6(), port, port).map(([s, d, sp, dp]) => b(`PROXY TCP6 ${s} ${d} ${sp} ${dp}\r\n`)),
  fc.stringMatching(/^( [ -~]{0,92})?$/).map((tail) => b(`PROXY UNKNOWN${tail}\r\n`)),
  fc.tuple(fc.ipV4(), fc.ipV4(), port, port, tlvs).map(([s, d, sp, dp, t]) =>
    v2(PROXY_V2, TCP4, Buffer.concat([ipv4Block(s, d, sp, dp), t])),
  ),
  fc.tuple(ipv6Bytes, ipv6Bytes, port, port, tlvs).map(([s, d, sp, dp, t]) =>
    v2(PROXY_V2, TCP6, Buffer.concat([ipv6Block(s, d, sp, dp), t])),
  ),
  fc.tuple(fc.integer({ min: 0, max: 255 }), tlvs).map(([fam, t]) => v2(LOCAL_V2, fam, t)),
);

const anyInput: fc.Arbitrary<Buffer> = fc.oneof(
  fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
  fc.uint8Array({ maxLength: 120 }).map((a) => Buffer.concat([SIGNATURE, Buffer.from(a)])),
  fc.stringMatching(/^[ -~\r\n]{0,120}$/).map((s) => b(`PROXY ${s}`)),
  fc.tuple(validHeader, fc.uint8Array({ maxLength: 20 })).map(([h, tail]) => Buffer.concat([h, Buffer.from(tail)])),
  // one corrupted byte anywhere in a valid header
  fc.tuple(validHeader, fc.nat(), fc.integer({ min: 1, max: 255 })).map(([h, at, x]) => {
    const bad = Buffer.from(h);
    const i = at % bad.length;
    bad[i] = bad[i]! ^ x;
    return bad;
  }),
);

/** WHATWG URL serializes IPv6 with the same compression rules; it just has no dotted tail. */
function urlOracle(bytes: Buffer): string {
  const full = Array.from({ length: 8 }, (_, i) => bytes.readUInt16BE(2 * i).toString(16)).join(':');
  const text = new URL(`http://[${full}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(text);
  if (!mapped) return text;
  return `::ffff:${[...bytes.subarray(12, 16)].join('.')}`;
}

describe('parseProxyHeader, properties', () => {
  it('never throws, and answers with well-formed results', () => {
    fc.assert(
      fc.property(anyInput, (buf) => {
        const r = parseProxyHeader(buf);
        if (r.status === 'ok') {
          expect(r.consumed).toBeGreaterThan(0);
          expect(r.consumed).toBeLessThanOrEqual(Math.min(buf.length, MAX_PROXY_HEADER_BYTES));
        }
        if (r.status === 'invalid') expect(r.reason).not.toBe('');
        // the reader's size cap relies on this
        if (r.status === 'incomplete') expect(buf.length).toBeLessThan(MAX_PROXY_HEADER_BYTES);
      }),
      { numRuns: 2000 },
    );
  });

  it('is stable under incremental feeding: incomplete until decided, then the same answer', () => {
    fc.assert(
      fc.property(anyInput, (buf) => {
        const results = prefixResults(buf);
        const first = results.findIndex((r) => r.status !== 'incomplete');
        if (first < 0) return;
        for (const r of results.slice(first)) expect(r).toEqual(results[first]);
        const decided = results[first]!;
        if (decided.status === 'ok') expect(decided.consumed).toBe(first);
      }),
      { numRuns: 1000 },
    );
  });

  it('parses every valid header at exactly its own length, whatever SMTP bytes follow', () => {
    fc.assert(
      fc.property(validHeader, fc.uint8Array({ maxLength: 30 }), (header, tail) => {
        const buf = Buffer.concat([header, Buffer.from(tail)]);
        expect(decidedAt(buf)).toBe(header.length);
        expect(parseProxyHeader(buf)).toMatchObject({ status: 'ok', consumed: header.length });
      }),
      { numRuns: 1000 },
    );
  });

  it('writes IPv6 addresses as WHATWG URL does (RFC 5952), in v2 and after a v1 round trip', () => {
    fc.assert(
      fc.property(ipv6Bytes, (bytes) => {
        const expected = urlOracle(bytes);
        const viaV2 = expectOk(v2(PROXY_V2, TCP6, ipv6Block(bytes, bytes, 1, 2))).header;
        expect(viaV2.sourceAddress).toBe(expected);
        const longForm = Array.from({ length: 8 }, (_, i) => bytes.toString('hex', 2 * i, 2 * i + 2)).join(':');
        const viaV1 = expectOk(b(`PROXY TCP6 ${longForm} ${expected} 1 2\r\n`)).header;
        expect(viaV1.sourceAddress).toBe(expected);
        expect(viaV1.destinationAddress).toBe(expected);
      }),
      { numRuns: 1000 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// readProxyHeader over real sockets

interface Pair {
  client: net.Socket;
  server: net.Socket;
}

const cleanups: Array<() => void> = [];
afterEach(() => {
  while (cleanups.length) cleanups.pop()!();
});

async function socketPair(): Promise<Pair> {
  const listener = net.createServer();
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  const { port } = listener.address() as AddressInfo;
  const accepted = once(listener, 'connection') as Promise<[net.Socket]>;
  const client = net.connect({ host: '127.0.0.1', port, noDelay: true });
  const [[server]] = await Promise.all([accepted, once(client, 'connect')]);
  cleanups.push(() => {
    client.destroy();
    server.destroy();
    listener.close();
  });
  return { client, server };
}

function write(socket: net.Socket, data: Buffer): Promise<void> {
  return new Promise((resolve, reject) => socket.write(data, (err) => (err ? reject(err) : resolve())));
}

/** Reads the rest of the stream the way smtp-server does: socket.pipe(parser). */
function pipeToEnd(socket: net.Socket): Promise<string> {
  const chunks: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      chunks.push(chunk);
      done();
    },
  });
  socket.pipe(sink);
  return new Promise((resolve) => sink.on('finish', () => resolve(Buffer.concat(chunks).toString('latin1'))));
}

/**
 * Writes one byte at a time and waits until the server side has read each one off the wire, so
 * that the reader really gets the data in 1-byte chunks (loopback would coalesce them).
 */
async function writeByteByByte(pair: Pair, data: Buffer): Promise<void> {
  for (let i = 0; i < data.length; i++) {
    const target = pair.server.bytesRead + 1;
    await write(pair.client, data.subarray(i, i + 1));
    while (pair.server.bytesRead < target) await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

describe('readProxyHeader', () => {
  it('reads a v1 header sent in 1-byte writes and leaves the following SMTP bytes intact', async () => {
    const pair = await socketPair();
    const { client, server } = pair;
    const reading = readProxyHeader(server, { timeoutMs: 5000 });
    await writeByteByByte(pair, b('PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 40000 25\r\n'));
    client.end(SMTP);
    await expect(reading).resolves.toEqual({
      family: 'tcp6',
      sourceAddress: '2001:db8::1',
      sourcePort: 40000,
      destinationAddress: '::ffff:10.0.0.1',
      destinationPort: 25,
    });
    await expect(pipeToEnd(server)).resolves.toBe(SMTP.toString('latin1'));
  });

  it('reads a v2 header with TLVs sent in 1-byte writes and leaves the following SMTP bytes intact', async () => {
    const pair = await socketPair();
    const { client, server } = pair;
    const reading = readProxyHeader(server, { timeoutMs: 5000 });
    await writeByteByByte(pair, v2(PROXY_V2, TCP4, Buffer.concat([ipv4Block('198.51.100.9', '10.1.1.1', 61000, 587), TLVS])));
    await writeByteByByte(pair, b('EHLO x\r\n'));
    client.end(b('QUIT\r\n'));
    await expect(reading).resolves.toEqual({
      family: 'tcp4',
      sourceAddress: '198.51.100.9',
      sourcePort: 61000,
      destinationAddress: '10.1.1.1',
      destinationPort: 587,
    });
    await expect(pipeToEnd(server)).resolves.toBe('EHLO x\r\nQUIT\r\n');
  });

  it('gives back SMTP bytes that arrive in the same segment as the header', async () => {
    const { client, server } = await socketPair();
    client.end(Buffer.concat([v2(LOCAL_V2, 0x00, Buffer.alloc(0)), SMTP]));
    await expect(readProxyHeader(server, { timeoutMs: 5000 })).resolves.toEqual({ family: 'unknown' });
    await expect(pipeToEnd(server)).resolves.toBe(SMTP.toString('latin1'));
  });

  it('leaves the socket in the flowing/paused mode it found, ready for a later data listener', async () => {
    const { client, server } = await socketPair();
    expect(server.readableFlowing).toBe(null);
    const reading = readProxyHeader(server, { timeoutMs: 5000 });
    await write(client, b('PROXY UNKNOWN\r\n'));
    await reading;
    expect(server.readableFlowing).toBe(null);
    expect(server.listenerCount('readable')).toBe(0);
    expect(server.listenerCount('data')).toBe(0);
    // Bytes that arrive after the header was read flow to a 'data' listener attached now.
    const received = new Promise<string>((resolve) => server.once('data', (d: Buffer) => resolve(d.toString('latin1'))));
    await write(client, b('EHLO late\r\n'));
    await expect(received).resolves.toBe('EHLO late\r\n');

    const second = await socketPair();
    second.server.pause();
    const pausedReading = readProxyHeader(second.server, { timeoutMs: 5000 });
    second.client.end(Buffer.concat([b('PROXY UNKNOWN\r\n'), SMTP]));
    await pausedReading;
    expect(second.server.readableFlowing).toBe(false);
    await expect(pipeToEnd(second.server)).resolves.toBe(SMTP.toString('latin1'));
  });

  it('rejects with a timeout when the header does not complete in time', async () => {
    const { client, server } = await socketPair();
    const reading = readProxyHeader(server, { timeoutMs: 100 });
    await write(client, b('PROXY TCP4 1.2.3.4'));
    const err = await reading.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProxyHeaderError);
    expect(err).toMatchObject({ kind: 'timeout', message: expect.stringMatching(/within 100 ms \(18 byte\(s\) received\)/) });
  });

  it('rejects a client that speaks SMTP first at once, without waiting for the timeout', { timeout: 2000 }, async () => {
    const { client, server } = await socketPair();
    const reading = readProxyHeader(server, { timeoutMs: 10_000 });
    await write(client, b('EHLO x\r\n'));
    const err = await reading.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProxyHeaderError);
    expect(err).toMatchObject({ kind: 'invalid', message: expect.stringMatching(/^invalid PROXY protocol header: not a PROXY/) });
  });

  it('rejects an invalid v2 header at once', { timeout: 2000 }, async () => {
    const { client, server } = await socketPair();
    const reading = readProxyHeader(server, { timeoutMs: 10_000 });
    await write(client, v2(0x11, TCP4, ipv4Block('1.2.3.4', '5.6.7.8', 1, 2)));
    await expect(reading).rejects.toMatchObject({ kind: 'invalid', message: expect.stringMatching(/version 1/) });
  });

  it('rejects when the peer closes in the middle of the header', { timeout: 2000 }, async () => {
    const { client, server } = await socketPair();
    const reading = readProxyHeader(server, { timeoutMs: 10_000 });
    client.end(b('PROXY TCP4 1.2.3.4 5.6'));
    await expect(reading).rejects.toMatchObject({
      kind: 'closed',
      message: expect.stringMatching(/closed after 22 byte\(s\) of an incomplete PROXY protocol header/),
    });
  });

  it('rejects when the socket is destroyed while waiting, or was already', { timeout: 2000 }, async () => {
    const { server } = await socketPair();
    const reading = readProxyHeader(server, { timeoutMs: 10_000 });
    server.destroy();
    await expect(reading).rejects.toMatchObject({ kind: 'closed' });
    await expect(readProxyHeader(server, { timeoutMs: 10_000 })).rejects.toMatchObject({ kind: 'closed' });
  });
});
