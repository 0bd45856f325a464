/**
 * Which bucket a client is counted in. IPv6 clients share their /64 (one subscriber holds a
 * whole /64); users and senders are case-insensitive.
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { cidrContains, ipKey, networkIfHostBitsSet, parseCidr, parseIp, senderKey, splitUserIpKey, userIpKey, userKey } from '../../src/limits/keys.js';

describe('ipKey', () => {
  test('IPv4 addresses are counted as they are', () => {
    expect(ipKey('192.0.2.1')).toBe('192.0.2.1');
    expect(ipKey('10.0.0.255')).toBe('10.0.0.255');
  });

  test('an IPv4-mapped IPv6 address (a dual-stack socket) is the IPv4 client', () => {
    expect(ipKey('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(ipKey('::FFFF:c000:0201')).toBe('192.0.2.1');
  });

  test('IPv6 addresses in one /64 share a bucket; the next /64 is another', () => {
    const a = ipKey('2001:db8:1:2:aaaa::1');
    expect(a).toBe('2001:db8:1:2::/64');
    expect(ipKey('2001:db8:1:2:ffff:ffff:ffff:ffff')).toBe(a);
    expect(ipKey('2001:0db8:0001:0002::9')).toBe(a);
    expect(ipKey('2001:db8:1:3::1')).toBe('2001:db8:1:3::/64');
  });

  test('the IPv6 prefix is configurable', () => {
    expect(ipKey('2001:db8:1:2:3:4:5:6', 48)).toBe('2001:db8:1::/48');
    expect(ipKey('2001:db8:1:2:3:4:5:6', 128)).toBe('2001:db8:1:2:3:4:5:6/128');
    expect(ipKey('2001:db8:1:2:3:4:5:6', 56)).toBe('2001:db8:1::/56');
    expect(ipKey('2001:db8:1:2ff:3:4:5:6', 56)).toBe('2001:db8:1:200::/56');
  });

  test('zone ids and embedded IPv4 tails are understood', () => {
    expect(ipKey('fe80::1%eth0')).toBe('fe80::/64');
    expect(ipKey('64:ff9b::192.0.2.1', 128)).toBe('64:ff9b::c000:201/128');
    expect(ipKey('::1')).toBe('::/64');
    expect(ipKey('::1', 128)).toBe('::1/128');
  });

  test('RFC 5952 text: the longest zero run is the one compressed', () => {
    expect(ipKey('2001:db8:0:0:1:0:0:0', 128)).toBe('2001:db8:0:0:1::/128');
    expect(ipKey('2001:0:0:1:0:0:0:1', 128)).toBe('2001:0:0:1::1/128');
    expect(ipKey('2001:db8:1:1:1:1:0:1', 128)).toBe('2001:db8:1:1:1:1:0:1/128');
  });

  test('every IPv4 address, plain or IPv4-mapped, has the value of its four octets and is its own key', () => {
    const octet = fc.integer({ min: 0, max: 255 });
    fc.assert(
      fc.property(octet, octet, octet, octet, (a, b, c, d) => {
        const text = `${a}.${b}.${c}.${d}`;
        const value = (BigInt(a) << 24n) | (BigInt(b) << 16n) | (BigInt(c) << 8n) | BigInt(d);
        expect(parseIp(text)).toEqual({ version: 4, value });
        expect(parseIp(`::ffff:${text}`)).toEqual({ version: 4, value });
        expect(ipKey(text)).toBe(text);
        expect(ipKey(`::FFFF:${text}`)).toBe(text);
        expect(cidrContains(parseCidr(`${text}/32`)!, parseIp(text))).toBe(true);
      }),
    );
    expect(parseIp('255.255.255.255')).toEqual({ version: 4, value: 0xffffffffn });
    expect(ipKey('255.255.255.255')).toBe('255.255.255.255');
  });

  test('an unparseable address is counted under its own text', () => {
    expect(ipKey('')).toBe('unknown');
    expect(ipKey('Not-An-IP')).toBe('not-an-ip');
    expect(parseIp('300.1.1.1')).toBeUndefined();
  });
});

describe('user and sender keys', () => {
  test('users are lower-cased and trimmed', () => {
    expect(userKey('Alice')).toBe('alice');
    expect(userKey(' ALICE@Example.COM ')).toBe('alice@example.com');
  });

  test('absurdly long usernames are cut, so junk AUTH cannot make huge keys', () => {
    expect(userKey('x'.repeat(10_000))).toHaveLength(256);
  });

  test('senders are lower-cased; the null sender has no key', () => {
    expect(senderKey('Payroll@Example.COM')).toBe('payroll@example.com');
    expect(senderKey('')).toBeUndefined();
    expect(senderKey('<>')).toBeUndefined();
    expect(senderKey(undefined)).toBeUndefined();
  });

  test('user+IP keys split back even when the user contains "|" and the IP contains ":"', () => {
    const k = userIpKey('a|b', '2001:db8::/64');
    expect(splitUserIpKey(k)).toEqual({ user: 'a|b', ip: '2001:db8::/64' });
  });
});

describe('CIDRs for overrides', () => {
  test('IPv4 and IPv6 networks match the addresses inside them only', () => {
    const v4 = parseCidr('192.0.2.0/24')!;
    expect(cidrContains(v4, parseIp('192.0.2.200'))).toBe(true);
    expect(cidrContains(v4, parseIp('192.0.3.1'))).toBe(false);
    expect(cidrContains(v4, parseIp('::ffff:192.0.2.7'))).toBe(true);
    const v6 = parseCidr('2001:db8:abcd::/48')!;
    expect(cidrContains(v6, parseIp('2001:db8:abcd:12::1'))).toBe(true);
    expect(cidrContains(v6, parseIp('2001:db8:abce::1'))).toBe(false);
    expect(cidrContains(v6, parseIp('192.0.2.1'))).toBe(false);
  });

  test('a single address is a /32 or /128; a network with host bits set is masked', () => {
    expect(parseCidr('192.0.2.9')).toMatchObject({ version: 4, prefix: 32 });
    expect(parseCidr('2001:db8::1')).toMatchObject({ version: 6, prefix: 128 });
    expect(cidrContains(parseCidr('10.1.2.3/8')!, parseIp('10.200.0.1'))).toBe(true);
    expect(cidrContains(parseCidr('0.0.0.0/0')!, parseIp('203.0.113.5'))).toBe(true);
  });

  test('nonsense is refused', () => {
    for (const bad of ['10.0.0.0/33', '10.0.0/8', 'example.com', '2001:db8::/129', '10.0.0.0/8/1', '10.0.0.0/x']) {
      expect(parseCidr(bad), bad).toBeUndefined();
    }
  });
});

describe('networkIfHostBitsSet', () => {
  test.each([
    ['10.0.0.1/8', '10.0.0.0/8'],
    ['10.255.255.255/9', '10.128.0.0/9'],
    ['192.168.1.7/24', '192.168.1.0/24'],
    ['1.2.3.4/0', '0.0.0.0/0'],
    ['2001:db8::1/32', '2001:db8::/32'],
    ['2001:db8:abcd:12::1/48', '2001:db8:abcd::/48'],
    ['fe80::1/10', 'fe80::/10'],
  ])('%s means %s', (text, network) => {
    expect(networkIfHostBitsSet(text)).toBe(network);
  });

  test.each(['10.0.0.0/8', '10.20.0.1', '10.20.0.1/32', '0.0.0.0/0', '2001:db8::/32', '2001:db8::1', '::/0', 'not a cidr'])('%s has none', (text) => {
    expect(networkIfHostBitsSet(text)).toBeUndefined();
  });
});
