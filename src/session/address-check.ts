/**
 * Envelope address rules smtpgate enforces before limits, policy or the backend see an
 * address. A legacy backend may still honour old routing syntax ("%" hack, "!" UUCP paths),
 * and would then deliver somewhere the policy never judged: those are refused outright.
 * Source routes are already reduced to the final mailbox by smtp-server (RFC 5321 §4.1.2),
 * and quoted local parts with "@" or a second "@" are refused by its parser.
 */
import type { Refusal } from '../reply.js';
import { NON_ASCII_WITHOUT_SMTPUTF8, PERCENT_OR_BANG_ROUTING } from '../refusals.js';
import { wireAddress } from '../relay/envelope.js';

export function checkRecipient(address: string, smtputf8: boolean): Refusal | undefined {
  const at = address.lastIndexOf('@');
  const local = at >= 0 ? address.slice(0, at) : address;
  if (/[%!]/.test(local)) {
    return PERCENT_OR_BANG_ROUTING;
  }
  return checkUtf8(address, smtputf8);
}

export function checkSender(address: string, smtputf8: boolean): Refusal | undefined {
  return checkUtf8(address, smtputf8);
}

/**
 * RFC 6531 §3.4: a non-ASCII address needs the SMTPUTF8 parameter on MAIL. smtp-server decodes
 * IDN domains to Unicode, so the domain is judged in its ASCII (A-label) form, which is what
 * the client sent and what the backend gets.
 */
function checkUtf8(address: string, smtputf8: boolean): Refusal | undefined {
  if (!smtputf8 && /[^\x00-\x7f]/.test(wireAddress(address, false))) {
    return NON_ASCII_WITHOUT_SMTPUTF8;
  }
  return undefined;
}
