/**
 * RelaxedBodyHash against the implementation it replaces on the hot path, nodemailer's
 * RelaxedBody stream: the same body hash for every body, however it is cut into pieces.
 */
import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import RelaxedBody from 'nodemailer/lib/dkim/relaxed-body';
import { RelaxedBodyHash } from '../../src/dkim/relaxed-body-hash.js';

/** nodemailer's body hash of `body`, fed as one piece (its own tests cover its piece handling). */
function nodemailerHash(body: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const r = new RelaxedBody({ hashAlgo: 'sha256' });
    r.once('hash', (hash: string) => resolve(hash));
    r.once('error', reject);
    r.resume();
    r.end(body);
  });
}

/** Our hash of `body` cut into pieces of the lengths in `cuts` (in turn), `shift` bytes into its memory. */
function ourHash(body: Buffer, cuts: readonly number[], shift = 0): string {
  // The fast scan reads aligned 32-bit words: where the body lies in its ArrayBuffer matters.
  const held = Buffer.alloc(body.length + shift);
  body.copy(held, shift);
  const h = new RelaxedBodyHash('sha256');
  for (let at = shift, i = 0; at < held.length; i++) {
    const len = cuts.length > 0 ? cuts[i % cuts.length]! : held.length;
    h.update(held.subarray(at, at + len));
    at += len;
  }
  return h.digest();
}

/** Bodies from the bytes canonicalisation cares about, in runs, so lines and blank runs form. */
const token = fc.constantFrom('a', 'Zz', ' ', '  ', '\t', ' \t ', '\r\n', '\r\n\r\n', '\r', '\n', '\x00', '\x7f', '\xff', '.', 'word ', 'QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk', 'x'.repeat(77));
const body = fc.array(token, { maxLength: 60 }).map((t) => Buffer.from(t.join(''), 'latin1'));
/** Short pieces cut through every state; long ones take the fast scan's word path. */
const cuts = fc.oneof(fc.array(fc.integer({ min: 1, max: 9 }), { maxLength: 12 }), fc.array(fc.integer({ min: 60, max: 700 }), { minLength: 1, maxLength: 4 }));

describe('RelaxedBodyHash', () => {
  test('gives nodemailer\'s relaxed body hash for every body, however it is cut into pieces', async () => {
    await fc.assert(
      fc.asyncProperty(body, cuts, fc.integer({ min: 0, max: 3 }), async (b, c, shift) => {
        expect(ourHash(b, c, shift)).toBe(await nodemailerHash(b));
      }),
      { numRuns: 3000 },
    );
  });

  test('gives RFC 6376 §3.4.5\'s example and the empty body\'s hash', () => {
    // RFC 6376 §3.4.5: " C \r\nD \t E\r\n\r\n\r\n" canonicalises to " C\r\nD E\r\n".
    const example = ourHash(Buffer.from(' C \r\nD \t E\r\n\r\n\r\n', 'latin1'), []);
    const expected = new RelaxedBodyHash('sha256');
    expected.update(Buffer.from(' C\r\nD E\r\n', 'latin1'));
    expect(example).toBe(expected.digest());
    // RFC 6376 §3.4.4: an empty body is hashed as nothing at all.
    expect(ourHash(Buffer.alloc(0), [])).toBe('47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=');
  });

  test('matches nodemailer on large bodies of long lines and long blank runs', async () => {
    const parts: string[] = [];
    for (let i = 0; i < 2000; i++) parts.push('x'.repeat(i % 997) + (i % 7 === 0 ? ' \t ' : ' ') + 'y\r\n' + (i % 13 === 0 ? '\r\n'.repeat(3000) : ''));
    const b = Buffer.from(parts.join('') + '\r\n\r\n', 'latin1');
    const expected = await nodemailerHash(b);
    for (const c of [[65536], [4096, 1, 16383], [1]]) for (const shift of [0, 1, 2, 3]) expect(ourHash(b, c, shift)).toBe(expected);
  });
});
