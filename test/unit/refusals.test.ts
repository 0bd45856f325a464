/**
 * The named refusals (src/refusals.ts): each is a well-formed reply whatever its arguments, so
 * a code or text changed there can't produce a reply RFC 3463 or the metric labels refuse.
 */
import { describe, expect, test } from 'vitest';
import { REFUSAL_REASONS, type Refusal } from '../../src/reply.js';
import * as refusals from '../../src/refusals.js';

/** Every constant, and every constructor called with arguments of each shape it takes. */
function everyRefusal(): [string, Refusal][] {
  const out: [string, Refusal][] = [];
  for (const [name, value] of Object.entries(refusals)) {
    if (typeof value !== 'function') {
      out.push([name, value as Refusal]);
      continue;
    }
    const f = value as (...args: unknown[]) => Refusal;
    const samples: Record<string, unknown[][]> = {
      libraryRefusal: [[421, '4.4.2', 'Timeout - closing connection'], [503, '5.5.1', 'Bad sequence of commands'], [421, '4.7.0', 'Too many unauthenticated commands']],
      mailLineTooLong: [[1064]],
      commandLineOverdue: [['1s']],
      commandLineTooSlow: [[50]],
      clientCertificateRefused: [['a client certificate is required']],
      parameterUnsupported: [['MAIL', 'DSN'], ['RCPT', undefined]],
      dataTooSlow: [[100]],
      smugglingRefused: [['bare_cr'], ['bare_lf'], ['nul']],
      messageLineTooLong: [[1000]],
      messageTooBig: [[10_000_000]],
      backendRefusal: [[{ code: 550, enhanced: '5.1.1', text: 'No such user' }], [{ code: 452, text: '' }], [{ code: 250, text: 'OK' }], [{ code: 354, text: 'go' }]],
    };
    const calls = samples[name];
    if (!calls) throw new Error(`no sample arguments for ${name}: add them here`);
    for (const args of calls) out.push([`${name}(${JSON.stringify(args)})`, f(...args)]);
  }
  return out;
}

describe('every named refusal', () => {
  test.each(everyRefusal())('%s is a 4xx/5xx whose RFC 3463 class matches its code, with a bounded reason and a one-line text', (_name, r) => {
    expect(r.code).toBeGreaterThanOrEqual(400);
    expect(r.code).toBeLessThanOrEqual(599);
    expect(r.enhanced).toMatch(/^[45]\.\d{1,3}\.\d{1,3}$/);
    expect(r.enhanced[0]).toBe(String(r.code)[0]);
    expect(REFUSAL_REASONS).toContain(r.reason);
    expect(r.text.length).toBeGreaterThan(0);
    expect(r.text).not.toMatch(/[\r\n\0]/);
  });

  test('the smuggling refusal names each kind as the encoder does, and "Local error in processing" is written once for 451 and 421', () => {
    expect(refusals.smugglingRefused('nul').text).toBe('Message refused: NUL byte in message (bare CR/LF and NUL are not allowed)');
    expect(refusals.INTERNAL_ERROR).toMatchObject({ code: 451, enhanced: '4.3.0', reason: 'internal' });
    expect(refusals.INTERNAL_ERROR_CLOSING).toMatchObject({ code: 421, enhanced: '4.3.0', text: refusals.INTERNAL_ERROR.text });
  });
});
