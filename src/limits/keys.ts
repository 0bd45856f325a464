/**
 * Limit keys: which bucket a client, user or sender is counted in. Pure functions.
 *
 * - IPv4 clients are counted per address.
 * - IPv6 clients are counted per network (/64 by default): one subscriber usually holds a whole
 *   /64, so per-address counting would give them 2^64 fresh buckets.
 * - An IPv4-mapped IPv6 address (::ffff:192.0.2.1, what a dual-stack socket reports) is the
 *   IPv4 client it stands for.
 * - Users and senders are lower-cased, so "Alice" and "alice" share one quota.
 */
import { isIPv4, isIPv6 } from 'node:net';

export interface ParsedIp {
  readonly version: 4 | 6;
  /** The address as an unsigned integer (32 or 128 bits). */
  readonly value: bigint;
}

/** Parses an IPv4 or IPv6 address; an IPv4-mapped IPv6 address becomes IPv4. Zone ids are dropped. */
export function parseIp(text: string): ParsedIp | undefined {
  const ip = withoutZone(text.trim());
  if (isIPv4(ip)) return { version: 4, value: ipv4Value(ip) };
  if (!isIPv6(ip)) return undefined;
  const value = ipv6Value(ip);
  if (value >> 32n === 0xffffn) return { version: 4, value: value & 0xffffffffn };
  return { version: 6, value };
}

/** Drops a zone id ("fe80::1%eth0"); the regex only runs for the rare address that has one. */
function withoutZone(ip: string): string {
  return ip.includes('%') ? ip.replace(/%.*$/, '') : ip;
}

/**
 * `ip` has passed isIPv4: four decimal octets of 0-255 and three dots, nothing else. Read with
 * plain numbers and made a BigInt once: it runs for every new connection.
 */
function ipv4Value(ip: string): bigint {
  let value = 0;
  let octet = 0;
  for (let i = 0; i < ip.length; i++) {
    const ch = ip.charCodeAt(i);
    if (ch === 0x2e) {
      value = value * 256 + octet;
      octet = 0;
    } else {
      octet = octet * 10 + (ch - 0x30);
    }
  }
  return BigInt(value * 256 + octet);
}

/** `ip` has passed isIPv6, so only the shapes it accepts need handling here. */
function ipv6Value(ip: string): bigint {
  let text = ip.toLowerCase();
  let tail: bigint[] = [];
  // An embedded IPv4 tail ("::ffff:192.0.2.1", "64:ff9b::192.0.2.1") is two hextets.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const n = ipv4Value(v4[1]!);
    tail = [n >> 16n, n & 0xffffn];
    text = text.slice(0, -v4[1]!.length);
    if (text.endsWith(':') && !text.endsWith('::')) text = text.slice(0, -1);
  }
  const [head, rest] = text.split('::') as [string, string | undefined];
  const parse = (part: string) => (part ? part.split(':').map((h) => BigInt(parseInt(h, 16))) : []);
  const left = parse(head);
  const right = [...parse(rest ?? ''), ...tail];
  const fill = rest === undefined ? [] : new Array<bigint>(8 - left.length - right.length).fill(0n);
  const hextets = rest === undefined ? [...left, ...tail] : [...left, ...fill, ...right];
  return hextets.reduce((acc, h) => (acc << 16n) | h, 0n);
}

function formatIpv4(value: bigint): string {
  const n = Number(value);
  return `${n >>> 24}.${(n >>> 16) & 0xff}.${(n >>> 8) & 0xff}.${n & 0xff}`;
}

/** RFC 5952 text: lower case, no leading zeros, the longest run of two or more zero hextets as "::". */
function formatIpv6(value: bigint): string {
  const h = Array.from({ length: 8 }, (_, i) => Number((value >> BigInt(112 - 16 * i)) & 0xffffn));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (h[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && h[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = h.map((x) => x.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

function mask(value: bigint, bits: number, prefix: number): bigint {
  const hostBits = BigInt(bits - prefix);
  return (value >> hostBits) << hostBits;
}

/**
 * The bucket a client address is counted in: "192.0.2.1" for IPv4, "2001:db8:1:2::/64" for
 * IPv6 (the /ipv6Prefix network). Anything unparseable is counted under its own text.
 */
export function ipKey(ip: string, ipv6Prefix = 64): string {
  return ipKeyOf(ip, parseIp(ip), ipv6Prefix);
}

/** ipKey for an address already parsed (`parsed` is `parseIp(ip)`), so a session parses it once. */
export function ipKeyOf(ip: string, parsed: ParsedIp | undefined, ipv6Prefix = 64): string {
  if (!parsed) return ip.trim().toLowerCase() || 'unknown';
  if (parsed.version === 4) return formatIpv4(parsed.value);
  return `${formatIpv6(mask(parsed.value, 128, ipv6Prefix))}/${ipv6Prefix}`;
}

/** Usernames beyond this are nonsense; cutting them keeps one junk AUTH from making a huge key. */
const MAX_NAME = 256;

export function userKey(username: string): string {
  return username.trim().toLowerCase().slice(0, MAX_NAME);
}

/** The envelope sender, lower-cased; undefined for the null sender "<>", which has no quota of its own. */
export function senderKey(address: string | undefined | false): string | undefined {
  if (!address) return undefined;
  const a = address.trim().toLowerCase().slice(0, MAX_NAME);
  return a === '' || a === '<>' ? undefined : a;
}

/** One username tried from one client network: "alice|192.0.2.1". */
export function userIpKey(user: string, ip: string): string {
  return `${user}|${ip}`;
}

/** The reverse of userIpKey. The IP part never holds "|", so the last one splits. */
export function splitUserIpKey(key: string): { user: string; ip: string } {
  const at = key.lastIndexOf('|');
  return at < 0 ? { user: key, ip: '' } : { user: key.slice(0, at), ip: key.slice(at + 1) };
}

export interface Cidr {
  readonly version: 4 | 6;
  readonly network: bigint;
  readonly prefix: number;
  /** As written in the config, for logs. */
  readonly text: string;
}

/** "10.0.0.0/8", "2001:db8::/32", or a single address (a /32 or /128). */
export function parseCidr(text: string): Cidr | undefined {
  const [addr, len, extra] = text.trim().split('/');
  if (extra !== undefined || addr === undefined) return undefined;
  const ip = withoutZone(addr.trim());
  const version = isIPv4(ip) ? 4 : isIPv6(ip) ? 6 : undefined;
  if (!version) return undefined;
  const bits = version === 4 ? 32 : 128;
  const prefix = len === undefined ? bits : /^\d{1,3}$/.test(len.trim()) ? Number(len) : NaN;
  if (!(prefix >= 0 && prefix <= bits)) return undefined;
  const value = version === 4 ? ipv4Value(ip) : ipv6Value(ip);
  return { version, network: mask(value, bits, prefix), prefix, text: text.trim() };
}

/**
 * The network a CIDR really means when its address has host bits set ("10.0.0.1/8" →
 * "10.0.0.0/8"); undefined when it has none or isn't a CIDR. A config check warns about it:
 * whoever wrote 10.0.0.1/8 may have meant the one host.
 */
export function networkIfHostBitsSet(text: string): string | undefined {
  const c = parseCidr(text);
  if (!c) return undefined;
  const ip = withoutZone(text.trim().split('/')[0]!.trim());
  if ((c.version === 4 ? ipv4Value(ip) : ipv6Value(ip)) === c.network) return undefined;
  return `${c.version === 4 ? formatIpv4(c.network) : formatIpv6(c.network)}/${c.prefix}`;
}

export function cidrContains(cidr: Cidr, ip: ParsedIp | undefined): boolean {
  if (!ip || ip.version !== cidr.version) return false;
  return mask(ip.value, ip.version === 4 ? 32 : 128, cidr.prefix) === cidr.network;
}
