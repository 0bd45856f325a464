/**
 * Builds the MAIL and RCPT lines sent to the backend from what the client asked for, passing
 * on only the parameters the backend advertised. Pure: (client envelope, capabilities) →
 * line or refusal.
 */
import { domainToASCII } from 'node:url';
import type { SMTPServerAddress } from 'smtp-server';
import type { Refusal } from '../reply.js';
import { BACKEND_LACKS_8BITMIME, BACKEND_LACKS_SMTPUTF8 } from '../refusals.js';

export type EnvelopeLine = { ok: true; line: string } | { ok: false; refusal: Refusal };

export function mailCommand(from: SMTPServerAddress, backendCaps: ReadonlyMap<string, string>): EnvelopeLine {
  const params: string[] = [];
  const args = from.args || {};
  for (const [rawKey, value] of Object.entries(args)) {
    const key = rawKey.toUpperCase();
    if (key === 'SIZE' && typeof value === 'string') {
      // RFC 1870: only meaningful to a server that advertised SIZE.
      if (backendCaps.has('SIZE')) params.push(`SIZE=${value}`);
    } else if (key === 'BODY' && typeof value === 'string') {
      const body = value.toUpperCase();
      if (body === '8BITMIME') {
        if (!backendCaps.has('8BITMIME')) {
          return { ok: false, refusal: BACKEND_LACKS_8BITMIME };
        }
        params.push('BODY=8BITMIME');
      } else if (body === '7BIT' && backendCaps.has('8BITMIME')) {
        params.push('BODY=7BIT');
      }
    } else if (key === 'SMTPUTF8') {
      // RFC 6531 §3.4: an SMTPUTF8 message must not be downgraded silently.
      if (!backendCaps.has('SMTPUTF8')) {
        return { ok: false, refusal: BACKEND_LACKS_SMTPUTF8 };
      }
      params.push('SMTPUTF8');
    }
    // AUTH= (RFC 4954 §5) is not passed on: the backend treats the submitter as unknown. Every
    // other parameter was refused with 555 before it got here (command-guard.ts).
  }
  const smtputf8 = Boolean(args.SMTPUTF8);
  return { ok: true, line: `MAIL FROM:<${wireAddress(from.address, smtputf8)}>${params.length ? ' ' + params.join(' ') : ''}` };
}

export function rcptCommand(to: SMTPServerAddress, smtputf8: boolean): string {
  return `RCPT TO:<${wireAddress(to.address, smtputf8)}>`;
}

/**
 * smtp-server hands addresses over with IDN domains decoded to Unicode. Without SMTPUTF8 the
 * backend gets the ASCII (A-label, RFC 5890) form the client sent.
 */
export function wireAddress(address: string, smtputf8: boolean): string {
  if (smtputf8) return address;
  const at = address.lastIndexOf('@');
  if (at < 0) return address;
  const domain = address.slice(at + 1);
  if (/^[\x00-\x7f]*$/.test(domain)) return address;
  const ascii = domainToASCII(domain);
  return ascii ? `${address.slice(0, at)}@${ascii}` : address;
}
