/**
 * Reads the HAProxy PROXY protocol header, versions 1 (text) and 2 (binary), that a trusted
 * load balancer puts in front of the SMTP bytes. smtp-server's `useProxy` only understands v1,
 * so smtpgate reads the header itself and then hands the socket to smtp-server.
 *
 * Spec: HAProxy doc/proxy-protocol.txt (§2.1 version 1, §2.2 version 2). Section numbers in the
 * comments below refer to that document.
 *
 * - `parseProxyHeader` is pure: it looks at the bytes received so far and says "need more",
 *   "here is the header and its length" or "this can't be a valid header". Its answer only
 *   depends on the bytes it has looked at, so feeding it a longer buffer never changes an
 *   answer that was already decided (the tests check this as a property).
 * - `readProxyHeader` is the I/O edge: it reads one header from a socket and gives the bytes
 *   after it back to the socket for smtp-server.
 * - `installProxyProtocol` puts it in front of an smtp-server, in place of the library's v1 reader.
 *
 * Decisions worth knowing:
 * - A connection whose first bytes can't start a header is refused at once (§2.1: "abort the
 *   connection as soon as possible"); a plain SMTP client ("EHLO…") is rejected on its first
 *   byte instead of waiting for the timeout. A client that waits for a greeting and sends
 *   nothing still waits for the timeout: the receiver must not speak first (§2).
 * - v2 UDP and UNIX-socket headers become `family: 'unknown'`: §2.2 lets a receiver fall back to
 *   UNSPEC ("use the real connection endpoints") for valid combinations it doesn't implement.
 * - v2 TLVs are checked to tile the remaining length exactly, then skipped. PP2_TYPE_CRC32C is
 *   not verified; §2.2.3 only requires that of receivers that support it.
 * - The v1 line must be printable US-ASCII (§2.1: "one line of US-ASCII text"), also in the
 *   part after "UNKNOWN" that is otherwise ignored.
 */
import type { Socket } from 'node:net';
import type { SMTPServer } from 'smtp-server';
import type { ListenerConfig } from '../config/schema.js';
import { CidrSet } from '../parsing/cidr.js';
import { replaceProxyHandler } from './smtp-server-seams.js';
import type { SessionIds } from './session-ids.js';

export interface ProxyAddresses {
  /** 'unknown' = v1 "UNKNOWN" or v2 LOCAL / AF_UNSPEC (and UDP / UNIX): use the real peer address. */
  readonly family: 'tcp4' | 'tcp6' | 'unknown';
  /** Normalized textual IP: IPv4 dotted, IPv6 compressed per RFC 5952 (IPv4-mapped stays v6 text). */
  readonly sourceAddress?: string;
  readonly sourcePort?: number;
  readonly destinationAddress?: string;
  readonly destinationPort?: number;
}

export type ProxyParseResult =
  | { status: 'incomplete' } // need more bytes
  | { status: 'ok'; header: ProxyAddresses; consumed: number } // bytes of the header (the rest belongs to SMTP)
  | { status: 'invalid'; reason: string }; // close the connection

/** §2.1: the worst-case v1 line ("PROXY UNKNOWN" + two full IPv6 addresses + ports), CRLF included. */
export const V1_MAX_LINE_BYTES = 107;

/**
 * Our cap on a whole v2 header: 16 fixed bytes + address block (at most 216, AF_UNIX) + TLVs.
 * 4 KiB leaves ample room for the registered TLVs (SSL, unique id ≤ 128 bytes, authority…)
 * while bounding what a peer can make us buffer. Since v1 lines are shorter, the parser never
 * answers 'incomplete' for a buffer this long: it is also the reader's size cap.
 */
export const MAX_PROXY_HEADER_BYTES = 4096;

const CR = 0x0d;
const LF = 0x0a;

/** §2.1: "PROXY" followed by exactly one space. */
const V1_PREFIX = Buffer.from('PROXY ', 'latin1');

/** §2.2: the 12-byte v2 signature, \r\n\r\n\0\r\nQUIT\n. */
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** §2.2: signature, version/command, family/transport, 16-bit length. */
const V2_FIXED_BYTES = 16;

// §2.2, 13th byte: low nibble is the command.
const CMD_LOCAL = 0x0;
const CMD_PROXY = 0x1;
// §2.2, 14th byte: high nibble is the address family, low nibble the transport.
const AF_UNSPEC = 0x0;
const AF_INET = 0x1;
const AF_INET6 = 0x2;
const AF_UNIX = 0x3;
const TRANSPORT_UNSPEC = 0x0;
const TRANSPORT_STREAM = 0x1;
const TRANSPORT_DGRAM = 0x2;

const INCOMPLETE: ProxyParseResult = { status: 'incomplete' };
const UNKNOWN_ENDPOINTS: ProxyAddresses = { family: 'unknown' };

const invalid = (reason: string): ProxyParseResult => ({ status: 'invalid', reason });

/** Pure: looks at the bytes received so far (from the connection start). */
export function parseProxyHeader(buf: Buffer): ProxyParseResult {
  if (buf.length === 0) return INCOMPLETE;
  // §2.2 "identifying the protocol version": "PROXY" means v1, the signature means v2,
  // "otherwise the protocol is not covered by this specification and the connection must be
  // dropped". The two start with different bytes, so the first byte picks the parser.
  if (buf[0] === V1_PREFIX[0]) return parseV1(buf);
  if (buf[0] === V2_SIGNATURE[0]) return parseV2(buf);
  return invalid('not a PROXY protocol header: expected "PROXY " (v1) or the v2 signature');
}

// ---------------------------------------------------------------------------------------------
// Version 1 (§2.1): "PROXY TCP4 <src> <dst> <sport> <dport>\r\n"

function parseV1(buf: Buffer): ProxyParseResult {
  const prefixBytes = Math.min(buf.length, V1_PREFIX.length);
  for (let i = 0; i < prefixBytes; i++) {
    if (buf[i] !== V1_PREFIX[i]) return invalid('not a PROXY protocol header: expected "PROXY " (v1)');
  }
  if (buf.length < V1_PREFIX.length) return INCOMPLETE;

  const end = findV1LineEnd(buf);
  if (typeof end !== 'number') return end;
  // The line is printable ASCII (checked by findV1LineEnd), so latin1 decoding is exact.
  const fields = parseV1Fields(buf.toString('latin1', V1_PREFIX.length, end));
  if (typeof fields === 'string') return invalid(fields);
  return { status: 'ok', header: fields, consumed: end + 2 };
}

/**
 * Index of the CR of the terminating CRLF, or the answer when there is none yet. Scans in byte
 * order and stops at the first offending byte, so the answer for a prefix never changes once
 * given.
 */
function findV1LineEnd(buf: Buffer): number | ProxyParseResult {
  const limit = Math.min(buf.length, V1_MAX_LINE_BYTES);
  for (let i = V1_PREFIX.length; i < limit; i++) {
    const c = buf[i]!;
    if (c === CR) {
      // §2.1: "If the CRLF sequence is not found in the first 107 characters, the receiver
      // should declare the line invalid."
      if (i + 1 >= V1_MAX_LINE_BYTES) return invalid(`v1 line has no CRLF within ${V1_MAX_LINE_BYTES} bytes`);
      if (i + 1 === buf.length) return INCOMPLETE;
      if (buf[i + 1] === LF) return i;
      // §2.1: "must not tolerate a single CR or LF character to end the line".
      return invalid('v1 line has a CR not followed by LF');
    }
    if (c === LF) return invalid('v1 line ends in a bare LF, not CRLF');
    if (c < 0x20 || c > 0x7e) return invalid(`v1 line has a non-printable byte 0x${c.toString(16).padStart(2, '0')}`);
  }
  return buf.length >= V1_MAX_LINE_BYTES ? invalid(`v1 line has no CRLF within ${V1_MAX_LINE_BYTES} bytes`) : INCOMPLETE;
}

/** The line after "PROXY " without its CRLF → addresses, or why it doesn't match. */
function parseV1Fields(line: string): ProxyAddresses | string {
  // §2.1: for "UNKNOWN" the rest of the line may be omitted and the receiver must ignore it.
  if (line === 'UNKNOWN' || line.startsWith('UNKNOWN ')) return UNKNOWN_ENDPOINTS;

  // §2.1: every field is separated by exactly one space, so a double, leading or trailing
  // space shows up as an empty field and fails the field checks below.
  const fields = line.split(' ');
  const [protocol, src, dst, sport, dport] = fields;
  if (protocol !== 'TCP4' && protocol !== 'TCP6') {
    return `v1 protocol ${JSON.stringify(protocol)} is not TCP4, TCP6 or UNKNOWN`;
  }
  if (fields.length !== 5 || src === undefined || dst === undefined || sport === undefined || dport === undefined) {
    return `v1 ${protocol} line must be "<src> <dst> <sport> <dport>" separated by single spaces`;
  }

  const family = protocol === 'TCP4' ? 'tcp4' : 'tcp6';
  // §2.1: "The advertised protocol family dictates what format to use."
  const parseAddress = family === 'tcp4' ? (s: string) => parseIPv4(s) : (s: string) => parseIPv6(s);
  const formatAddress = family === 'tcp4' ? formatIPv4 : formatIPv6;
  const srcBytes = parseAddress(src);
  if (!srcBytes) return `v1 source address ${JSON.stringify(src)} is not a valid ${protocol} address`;
  const dstBytes = parseAddress(dst);
  if (!dstBytes) return `v1 destination address ${JSON.stringify(dst)} is not a valid ${protocol} address`;
  const sourcePort = parseV1Port(sport);
  if (sourcePort === undefined) return `v1 source port ${JSON.stringify(sport)} is not a decimal in 0-65535`;
  const destinationPort = parseV1Port(dport);
  if (destinationPort === undefined) return `v1 destination port ${JSON.stringify(dport)} is not a decimal in 0-65535`;

  return {
    family,
    sourceAddress: formatAddress(srcBytes),
    sourcePort,
    destinationAddress: formatAddress(dstBytes),
    destinationPort,
  };
}

/** §2.1: decimal in [0..65535], "heading zeroes are not permitted". */
function parseV1Port(text: string): number | undefined {
  if (!/^(?:0|[1-9][0-9]{0,4})$/.test(text)) return undefined;
  const port = Number(text);
  return port <= 0xffff ? port : undefined;
}

// ---------------------------------------------------------------------------------------------
// Version 2 (§2.2): 12-byte signature, ver/cmd, fam/transport, 16-bit length, addresses, TLVs

function parseV2(buf: Buffer): ProxyParseResult {
  // Every check below looks at one more byte than the one before it, in wire order, so an
  // invalid header is refused as soon as the offending byte arrives.
  const sigBytes = Math.min(buf.length, V2_SIGNATURE.length);
  for (let i = 0; i < sigBytes; i++) {
    if (buf[i] !== V2_SIGNATURE[i]) return invalid('not a PROXY protocol header: bytes do not match the v2 signature');
  }
  if (buf.length < 13) return INCOMPLETE;

  // §2.2, 13th byte: "The highest four bits contains the version ... the receiver must only
  // accept this value [2]"; commands other than LOCAL and PROXY "must drop connections".
  const version = buf[12]! >> 4;
  const command = buf[12]! & 0x0f;
  if (version !== 2) return invalid(`v2 header has version ${version}, only 2 is defined`);
  if (command !== CMD_LOCAL && command !== CMD_PROXY) return invalid(`v2 header has unassigned command ${command}`);
  if (buf.length < 14) return INCOMPLETE;

  // §2.2, 14th byte. For LOCAL the family "is ignored", so it is only checked for PROXY;
  // unspecified values "must be rejected as invalid by receivers".
  const family = buf[13]! >> 4;
  const transport = buf[13]! & 0x0f;
  if (command === CMD_PROXY && family > AF_UNIX) return invalid(`v2 header has unspecified address family ${family}`);
  if (command === CMD_PROXY && transport > TRANSPORT_DGRAM) return invalid(`v2 header has unspecified transport ${transport}`);
  if (buf.length < V2_FIXED_BYTES) return INCOMPLETE;

  // §2.2, 15th-16th bytes: "the length of the protocol header in bytes is always exactly 16 +
  // this value"; receivers "must not assume zero is presented for LOCAL connections".
  const length = buf.readUInt16BE(14);
  const total = V2_FIXED_BYTES + length;
  if (total > MAX_PROXY_HEADER_BYTES) {
    return invalid(`v2 header declares ${total} bytes, more than the ${MAX_PROXY_HEADER_BYTES}-byte limit`);
  }
  const addressBytes = command === CMD_PROXY ? v2AddressBlockBytes(family, transport) : undefined;
  if (addressBytes !== undefined && length < addressBytes) {
    return invalid(`v2 header length ${length} is shorter than its ${addressBytes}-byte address block`);
  }
  if (buf.length < total) return INCOMPLETE;

  // §2.2 LOCAL: "must use the real connection endpoints and discard the protocol block".
  // AF_UNSPEC / UNSPEC transport: "The receiver should ignore address information." Without a
  // known address block size, TLVs can't be located either, so the whole block is skipped.
  if (addressBytes === undefined) return { status: 'ok', header: UNKNOWN_ENDPOINTS, consumed: total };

  const tlvProblem = checkV2Tlvs(buf.subarray(V2_FIXED_BYTES + addressBytes, total));
  if (tlvProblem) return invalid(tlvProblem);

  // §2.2: "A receiver is not required to implement other ones, provided that it automatically
  // falls back to the UNSPEC mode" — SMTP runs over TCP, so UDP and UNIX fall back.
  if (transport !== TRANSPORT_STREAM || (family !== AF_INET && family !== AF_INET6)) {
    return { status: 'ok', header: UNKNOWN_ENDPOINTS, consumed: total };
  }

  // §2.2 union proxy_addr: src addr, dst addr, src port, dst port, all in network byte order.
  const a = V2_FIXED_BYTES;
  const header: ProxyAddresses =
    family === AF_INET
      ? {
          family: 'tcp4',
          sourceAddress: formatIPv4(buf.subarray(a, a + 4)),
          destinationAddress: formatIPv4(buf.subarray(a + 4, a + 8)),
          sourcePort: buf.readUInt16BE(a + 8),
          destinationPort: buf.readUInt16BE(a + 10),
        }
      : {
          family: 'tcp6',
          sourceAddress: formatIPv6(buf.subarray(a, a + 16)),
          destinationAddress: formatIPv6(buf.subarray(a + 16, a + 32)),
          sourcePort: buf.readUInt16BE(a + 32),
          destinationPort: buf.readUInt16BE(a + 34),
        };
  return { status: 'ok', header, consumed: total };
}

/** §2.2 "In practice, the following protocol bytes are expected": 12, 36 or 216 address bytes. */
function v2AddressBlockBytes(family: number, transport: number): number | undefined {
  if (family === AF_UNSPEC || transport === TRANSPORT_UNSPEC) return undefined;
  if (family === AF_INET) return 2 * 4 + 2 * 2;
  if (family === AF_INET6) return 2 * 16 + 2 * 2;
  return 2 * 108; // AF_UNIX
}

/** §2.2 pp2_tlv: type (1 byte), length (2 bytes), value. They must tile the rest exactly. */
function checkV2Tlvs(tlvs: Buffer): string | undefined {
  let offset = 0;
  while (offset < tlvs.length) {
    if (tlvs.length - offset < 3) return `v2 header ends in ${tlvs.length - offset} stray byte(s) that can't form a TLV`;
    const type = tlvs[offset]!;
    const valueBytes = tlvs.readUInt16BE(offset + 1);
    offset += 3 + valueBytes;
    if (offset > tlvs.length) return `v2 TLV 0x${type.toString(16).padStart(2, '0')} runs past the header length`;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Addresses

/** §2.1: exactly 4 decimals in [0..255], one dot between, "heading zeroes are not permitted". */
function parseIPv4(text: string): Uint8Array | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  const bytes = new Uint8Array(4);
  for (const [i, part] of parts.entries()) {
    if (!/^(?:0|[1-9][0-9]{0,2})$/.test(part)) return undefined;
    const n = Number(part);
    if (n > 255) return undefined;
    bytes[i] = n;
  }
  return bytes;
}

/**
 * §2.1: colon-separated hex groups with at most one "::" and exactly 128 bits. Groups of 1-4
 * digits are accepted (senders print with inet_ntop), and so is a dotted IPv4 tail (RFC 4291
 * §2.2 form 3, e.g. "::ffff:192.0.2.1"). Zone ids ("%eth0") are not addresses on the wire.
 */
function parseIPv6(text: string): Uint8Array | undefined {
  if (!/^[0-9A-Fa-f:.]+$/.test(text)) return undefined;
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const head = parseIPv6Groups(halves[0]!, halves.length === 1);
  const tail = halves.length === 2 ? parseIPv6Groups(halves[1]!, true) : [];
  if (!head || !tail) return undefined;
  const given = head.length + tail.length;
  // Without "::" the groups must be exactly 8; with it, "::" stands for at least one group.
  if (halves.length === 1 ? given !== 8 : given > 7) return undefined;
  const groups = [...head, ...new Array<number>(8 - given).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 0xff;
  });
  return bytes;
}

/** "a:b:c" → [a, b, c]; the last part of the address may be a dotted IPv4 (two groups). */
function parseIPv6Groups(part: string, endsAddress: boolean): number[] | undefined {
  if (part === '') return [];
  const items = part.split(':');
  const groups: number[] = [];
  for (const [i, item] of items.entries()) {
    if (endsAddress && i === items.length - 1 && item.includes('.')) {
      const v4 = parseIPv4(item);
      if (!v4) return undefined;
      groups.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
    } else if (/^[0-9A-Fa-f]{1,4}$/.test(item)) {
      groups.push(parseInt(item, 16));
    } else {
      return undefined;
    }
  }
  return groups;
}

function formatIPv4(bytes: Uint8Array): string {
  return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
}

/** RFC 5952 text form of 16 address bytes. */
function formatIPv6(bytes: Uint8Array): string {
  // RFC 5952 §5: IPv4-mapped addresses (::ffff:0:0/96) are written with a dotted IPv4 tail,
  // which is also how Node reports a mapped peer in socket.remoteAddress.
  if (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    return `::ffff:${formatIPv4(bytes.subarray(12, 16))}`;
  }
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[2 * i]! << 8) | bytes[2 * i + 1]!);
  // RFC 5952 §4.2.2/§4.2.3: "::" replaces the longest run of two or more zero groups, the first
  // one when runs tie; a single zero group is written as "0".
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  // RFC 5952 §4.1 (no leading zeros) and §4.3 (lowercase): toString(16) does both.
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(':');
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLength))}`;
}

// ---------------------------------------------------------------------------------------------
// Socket reader

export type ProxyHeaderFailure = 'timeout' | 'invalid' | 'closed';

/** Why `readProxyHeader` gave up; `kind` is a bounded value fit for a metric label. */
export class ProxyHeaderError extends Error {
  constructor(
    readonly kind: ProxyHeaderFailure,
    message: string,
  ) {
    super(message);
    this.name = 'ProxyHeaderError';
  }
}

/**
 * I/O helper: reads exactly one header from a socket (never consuming SMTP bytes past it), with
 * a timeout and a size cap. Unshifts leftover bytes back onto the socket.
 *
 * Call it before anything else reads the socket, and don't set an encoding on it. It reads in
 * paused mode ('readable' + read()), so no byte is emitted to anyone else meanwhile, puts the
 * bytes after the header back with unshift(), and leaves the flowing/paused state as it found
 * it, so smtp-server can pipe the socket afterwards. The size cap is MAX_PROXY_HEADER_BYTES:
 * the parser decides before holding that many bytes. On rejection the socket is left open;
 * the caller closes it.
 */
export function readProxyHeader(socket: Socket, opts: { timeoutMs: number }): Promise<ProxyAddresses> {
  return new Promise<ProxyAddresses>((resolve, reject) => {
    if (!(opts.timeoutMs > 0 && Number.isFinite(opts.timeoutMs))) {
      reject(new RangeError(`readProxyHeader: timeoutMs must be a positive number, got ${opts.timeoutMs}`));
      return;
    }
    if (socket.destroyed || socket.readableEnded) {
      reject(new ProxyHeaderError('closed', 'connection closed before a PROXY protocol header was received'));
      return;
    }

    const flowingBefore = socket.readableFlowing;
    let received: Buffer = Buffer.alloc(0);
    let settled = false;

    const settle = (outcome: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.removeListener('readable', onReadable);
      socket.removeListener('end', onEnd);
      socket.removeListener('close', onClose);
      socket.removeListener('error', onError);
      // Removing the last 'readable' listener makes Node reset the stream's mode on the next
      // tick (Readable's updateReadableListening). Settle after that tick, then restore the
      // mode we found, so that whoever attaches next (smtp-server pipes the socket) starts the
      // flow as if we had never been there.
      process.nextTick(() => {
        if (flowingBefore === false) socket.pause();
        else if (flowingBefore === true) socket.resume();
        outcome();
      });
    };

    const fail = (kind: ProxyHeaderFailure, message: string) => settle(() => reject(new ProxyHeaderError(kind, message)));

    const onReadable = (): void => {
      let chunk: Buffer | null;
      while (!settled && (chunk = socket.read() as Buffer | null) !== null) {
        received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
        const result = parseProxyHeader(received);
        if (result.status === 'incomplete') continue;
        if (result.status === 'invalid') {
          fail('invalid', `invalid PROXY protocol header: ${result.reason}`);
          return;
        }
        // Synchronously, before 'end' can be scheduled: the bytes after the header are SMTP.
        const rest = received.subarray(result.consumed);
        if (rest.length > 0) socket.unshift(rest);
        const header = result.header;
        settle(() => resolve(header));
        return;
      }
    };
    const onEnd = () => fail('closed', `connection closed after ${received.length} byte(s) of an incomplete PROXY protocol header`);
    const onClose = () => fail('closed', 'connection closed before a PROXY protocol header was received');
    const onError = (err: Error) => fail('closed', `connection failed before a PROXY protocol header was received: ${err.message}`);

    // §2: "The receiver may apply a short timeout and decide to abort the connection".
    const timer = setTimeout(
      () => fail('timeout', `no complete PROXY protocol header within ${opts.timeoutMs} ms (${received.length} byte(s) received)`),
      opts.timeoutMs,
    );
    socket.on('end', onEnd);
    socket.on('close', onClose);
    socket.on('error', onError);
    // Adding the listener emits 'readable' if bytes are already buffered.
    socket.on('readable', onReadable);
  });
}

/**
 * PROXY protocol v1/v2 in front of `server` (smtp-server itself only knows v1). Only listed
 * peers may send the header, and they must; any other peer, and any bad header, is told to
 * `onRefused` and disconnected before a byte of SMTP is exchanged. It runs for every accepted
 * socket, before any TLS handshake, through smtp-server's `_handleProxy` seam.
 */
export function installProxyProtocol(server: SMTPServer, settings: NonNullable<ListenerConfig['proxyProtocol']>, ids: SessionIds, onRefused: (peer: string, why: string) => void): void {
  const peers = new CidrSet(settings.trusted);
  replaceProxyHandler(server, (socket, cb) => {
    const id = ids.next();
    const peer = socket.remoteAddress ?? '';
    const refuse = (why: string) => {
      onRefused(peer, why);
      socket.on('error', () => {});
      socket.destroy();
      cb(new Error(why));
    };
    if (!peers.has(peer)) return refuse('peer is not in proxyProtocol.trusted');
    readProxyHeader(socket, { timeoutMs: settings.timeout }).then(
      (header) => cb(null, header.family === 'unknown' || !header.sourceAddress ? { id } : { id, remoteAddress: header.sourceAddress, remotePort: header.sourcePort }),
      (err: unknown) => refuse(err instanceof ProxyHeaderError ? `${err.kind}: ${err.message}` : String(err)),
    );
  });
}
