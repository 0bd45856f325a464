import { describe, expect, test } from 'vitest';
import { CapabilityCache, parseCapabilities } from '../../src/relay/ehlo-capabilities.js';

const REPLY = ['backend.test Hello gate.test', 'PIPELINING', 'SIZE 10240000', 'auth=PLAIN LOGIN', 'XCLIENT NAME ADDR PROTO HELO', '8BITMIME'];

describe('EHLO capabilities', () => {
  test('map each keyword, upper-cased, to the rest of its line, skipping the server name', () => {
    expect([...parseCapabilities(REPLY)]).toEqual([
      ['PIPELINING', ''],
      ['SIZE', '10240000'],
      ['AUTH', 'PLAIN LOGIN'],
      ['XCLIENT', 'NAME ADDR PROTO HELO'],
      ['8BITMIME', ''],
    ]);
  });

  test('the cache gives the map of the same capability lines again, whatever the first line says', () => {
    const cache = new CapabilityCache();
    const first = cache.parse(REPLY);
    expect(cache.parse(['backend.test Hello client.example', ...REPLY.slice(1)])).toBe(first);
    expect([...first]).toEqual([...parseCapabilities(REPLY)]);
  });

  test('the cache parses other capability lines afresh, and keeps its own copy of the lines it parsed', () => {
    const cache = new CapabilityCache();
    const lines = [...REPLY];
    const withXclient = cache.parse(lines);
    lines[4] = 'STARTTLS';
    const withStartTls = cache.parse(lines);
    expect(withStartTls).not.toBe(withXclient);
    expect(withStartTls.has('STARTTLS')).toBe(true);
    expect(withStartTls.has('XCLIENT')).toBe(false);
    expect(cache.parse(REPLY)).toBe(withXclient);
    expect(cache.parse(REPLY.slice(0, 3))).toEqual(new Map([['PIPELINING', ''], ['SIZE', '10240000']]));
  });

  test('the cache is bounded: after four other replies the first one is parsed again', () => {
    const cache = new CapabilityCache();
    const first = cache.parse(REPLY);
    for (let i = 0; i < 3; i++) cache.parse([...REPLY, `X-OTHER${i}`]);
    expect(cache.parse(REPLY)).toBe(first);
    cache.parse([...REPLY, 'X-OTHER3']);
    const again = cache.parse(REPLY);
    expect(again).not.toBe(first);
    expect(again).toEqual(first);
  });
});
