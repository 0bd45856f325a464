/**
 * The pure parts of DKIM signing: undoing dot-stuffing for the body hash, however the pieces
 * are cut, and which domain signs a message.
 */
import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import { DotUnstuffer } from '../../src/dkim/message-signer.js';
import { signingDomain } from '../../src/dkim/signing-domain.js';

describe('DotUnstuffer', () => {
  test('gives back the message as written, for every way of cutting the stuffed bytes into pieces', () => {
    const line = fc.oneof(fc.constant('.'), fc.constant('..'), fc.string({ maxLength: 12 }).map((s) => s.replace(/[\r\n]/g, 'x')), fc.string({ maxLength: 6 }).map((s) => '.' + s.replace(/[\r\n]/g, 'x')));
    fc.assert(
      fc.property(fc.array(line, { maxLength: 30 }), fc.array(fc.integer({ min: 1, max: 9 }), { minLength: 1, maxLength: 20 }), (lines, cuts) => {
        const content = Buffer.from(lines.map((l) => l + '\r\n').join(''), 'latin1');
        const stuffed = Buffer.from(content.toString('latin1').replace(/^\./gm, '..'), 'latin1');
        const u = new DotUnstuffer();
        const out: Buffer[] = [];
        for (let at = 0, i = 0; at < stuffed.length; at += cuts[i++ % cuts.length]!) out.push(...u.unstuff(stuffed.subarray(at, at + cuts[i % cuts.length]!)));
        expect(Buffer.concat(out).toString('latin1')).toBe(content.toString('latin1'));
      }),
    );
  });
});

describe('signingDomain', () => {
  const h = (...lines: string[]) => lines.map((line) => ({ key: line.slice(0, line.indexOf(':')).toLowerCase(), line }));

  test('is the domain of the one From: address, in lower case', () => {
    expect(signingDomain(h('From: "Alice" <Alice@Corp.Test>'))).toEqual({ ok: true, domain: 'corp.test', address: 'alice@corp.test' });
  });

  test('reads a folded From: with an 8-bit display name', () => {
    const line = Buffer.from('From: "Jörg Müller"\n  <joerg@corp.test>', 'utf8').toString('latin1');
    expect(signingDomain([{ key: 'from', line }])).toEqual({ ok: true, domain: 'corp.test', address: 'joerg@corp.test' });
  });

  test('turns an internationalised domain into its A-label', () => {
    const line = Buffer.from('From: a@bücher.test', 'utf8').toString('latin1');
    expect(signingDomain([{ key: 'from', line }])).toEqual({ ok: true, domain: 'xn--bcher-kva.test', address: 'a@bücher.test' });
  });

  test('refuses a message without From:, with two, or with two addresses in one', () => {
    expect(signingDomain(h('To: b@x.test'))).toMatchObject({ ok: false, reason: 'no_from' });
    expect(signingDomain(h('From: a@corp.test', 'From: b@corp.test'))).toMatchObject({ ok: false, reason: 'several_from' });
    expect(signingDomain(h('From: a@corp.test, b@corp.test'))).toMatchObject({ ok: false, reason: 'from_not_address' });
    expect(signingDomain(h('From: undisclosed'))).toMatchObject({ ok: false, reason: 'from_not_address' });
  });
});
