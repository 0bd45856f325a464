import { randomBytes } from 'node:crypto';
import { describe, expect, test } from 'vitest';
import { SessionIds, spellSessionIds } from '../../src/listener/session-ids.js';

/** How smtp-server makes its own session ids (smtp-server.js _handleProxy, 3.21.6). */
function libraryId(bytes: Buffer): string {
  return BigInt('0x' + bytes.toString('hex')).toString(32).padStart(16, '0');
}

describe('session ids', () => {
  test('spell 10 bytes exactly as smtp-server spells its own ids', () => {
    const edges = [Buffer.alloc(10), Buffer.alloc(10, 0xff), Buffer.from('00000000010000000001', 'hex'), Buffer.from('80000000000000000000', 'hex')];
    const all = [...edges, ...Array.from({ length: 500 }, () => randomBytes(10))];
    const spelled = spellSessionIds(Buffer.concat(all));
    expect(spelled).toHaveLength(all.length * 16);
    all.forEach((bytes, i) => expect(spelled.slice(i * 16, i * 16 + 16)).toBe(libraryId(bytes)));
  });

  test('are 16 base-32 digits and never repeat, also across refills of the pool', () => {
    const ids = new SessionIds();
    const seen = new Set<string>();
    for (let i = 0; i < 2000; i++) {
      const id = ids.next();
      expect(id).toMatch(/^[0-9a-v]{16}$/);
      seen.add(id);
    }
    expect(seen.size).toBe(2000);
  });
});
