/**
 * CidrSet answers "is this client in the list?" for trusted networks, PROXY peers and limit
 * overrides. It remembers answers by address; a remembered answer must be the answer.
 */
import net from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CidrSet, parseCidr } from '../../src/parsing/cidr.js';

const LIST = ['10.0.0.0/8', '192.168.1.0/24', '203.0.113.7', '2001:db8::/32', '::1'];

/** The answer without any memory: node's BlockList, asked afresh. */
function fresh(ip: string): boolean {
  const list = new net.BlockList();
  for (const c of LIST.map((t) => parseCidr(t)!)) list.addSubnet(c.address, c.prefix, c.family);
  const v = net.isIP(ip);
  if (v === 0) return false;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  return mapped ? list.check(mapped[1]!, 'ipv4') : list.check(ip, v === 4 ? 'ipv4' : 'ipv6');
}

const ipv4 = fc.oneof(fc.ipV4(), fc.constantFrom('10.1.2.3', '192.168.1.200', '192.168.2.1', '203.0.113.7', '203.0.113.8'));
const address = fc.oneof(ipv4, ipv4.map((a) => `::ffff:${a}`), fc.ipV6(), fc.constantFrom('2001:db8::25', '2001:db9::1', '::1', 'not-an-ip', ''));

describe('CidrSet', () => {
  it('answers as the list says for addresses in and out of it, IPv4-mapped ones as their IPv4 address', () => {
    const set = new CidrSet(LIST.map((t) => parseCidr(t)!));
    expect(set.has('10.200.0.1')).toBe(true);
    expect(set.has('::ffff:192.168.1.9')).toBe(true);
    expect(set.has('2001:db8::25')).toBe(true);
    expect(set.has('192.168.2.1')).toBe(false);
    expect(set.has('2001:db9::1')).toBe(false);
    expect(set.has('not-an-ip')).toBe(false);
  });

  it('gives the same answer the second time, and after it has forgotten (more addresses than it keeps)', () => {
    const set = new CidrSet(LIST.map((t) => parseCidr(t)!));
    // 3,000 lookups of 1,500 distinct addresses: well past what the memo holds, each asked twice.
    fc.assert(
      fc.property(fc.array(address, { minLength: 1500, maxLength: 1500 }), (ips) => {
        for (const ip of [...ips, ...ips]) expect(set.has(ip)).toBe(fresh(ip));
      }),
      { numRuns: 3 },
    );
  });
});
