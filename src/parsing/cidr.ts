/**
 * CIDR lists ("10.0.0.0/8", "2001:db8::/32", or a bare address) as used for trusted networks,
 * PROXY protocol peers and limit overrides. Backed by node's BlockList.
 */
import net from 'node:net';

export interface Cidr {
  readonly address: string;
  readonly prefix: number;
  readonly family: 'ipv4' | 'ipv6';
}

export function parseCidr(text: string): Cidr | undefined {
  const m = /^([^/\s]+)(?:\/(\d{1,3}))?$/.exec(text.trim());
  if (!m) return undefined;
  const address = m[1]!;
  const version = net.isIP(address);
  if (version === 0) return undefined;
  const max = version === 4 ? 32 : 128;
  const prefix = m[2] === undefined ? max : Number(m[2]);
  if (prefix > max) return undefined;
  return { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

/** Addresses a CidrSet remembers its answer for before it starts again. */
const MEMO_LIMIT = 1024;

export class CidrSet {
  readonly #list = new net.BlockList();
  /**
   * Answers by address. BlockList.check builds a SocketAddress at every call (several µs: a W2
   * profile showed two calls per connection, trusted networks and the greeting delay), while a
   * gate sees the same clients again and again. A set never changes once built, so a remembered
   * answer stays right; when MEMO_LIMIT addresses are held the memo starts again, so many
   * addresses cost what they did before and no more memory.
   */
  readonly #memo = new Map<string, boolean>();
  readonly size: number;

  constructor(cidrs: readonly Cidr[]) {
    for (const c of cidrs) this.#list.addSubnet(c.address, c.prefix, c.family);
    this.size = cidrs.length;
  }

  has(ip: string): boolean {
    const known = this.#memo.get(ip);
    if (known !== undefined) return known;
    const answer = this.#check(ip);
    if (this.#memo.size >= MEMO_LIMIT) this.#memo.clear();
    this.#memo.set(ip, answer);
    return answer;
  }

  #check(ip: string): boolean {
    const version = net.isIP(ip);
    if (version === 0) return false;
    // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
    if (mapped) return this.#list.check(mapped[1]!, 'ipv4');
    return this.#list.check(ip, version === 4 ? 'ipv4' : 'ipv6');
  }
}

const LOOPBACK = new CidrSet([parseCidr('127.0.0.0/8')!, parseCidr('::1')!]);

/** Only this machine can reach an address bound here (an IPv4-mapped ::ffff:127.x too). */
export function isLoopbackHost(host: string): boolean {
  return host.toLowerCase() === 'localhost' || LOOPBACK.has(host);
}
