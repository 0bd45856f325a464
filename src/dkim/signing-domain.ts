/**
 * Which domain signs a message: the domain of its one From: address (RFC 7489 §3.1: DMARC
 * aligns the signature's d= with the From: domain). Pure. A message without exactly one From:
 * field holding exactly one address is not signed: which author would the signature vouch for?
 */
import { domainToASCII } from 'node:url';
import { parseAddressList } from '../policy/addresses.js';

/** A header field as nodemailer's DKIM message parser gives it: lower-case name, raw line (latin1). */
export interface RawHeader {
  readonly key: string;
  readonly line: string;
}

/** Why a message is not signed; these are the metric's `result` values besides `signed`. */
export type UnsignedReason = 'no_from' | 'several_from' | 'from_not_address' | 'domain_not_listed' | 'from_not_owned';

export type SigningDomain =
  | { readonly ok: true; readonly domain: string; readonly address: string }
  | { readonly ok: false; readonly reason: Exclude<UnsignedReason, 'domain_not_listed' | 'from_not_owned'>; readonly detail: string };

export function signingDomain(headers: readonly RawHeader[]): SigningDomain {
  const from = headers.filter((h) => h.key === 'from');
  if (from.length === 0) return { ok: false, reason: 'no_from', detail: 'the message has no From: field' };
  if (from.length > 1) return { ok: false, reason: 'several_from', detail: `the message has ${from.length} From: fields` };
  const line = from[0]!.line;
  // The parser keeps each octet as one latin1 character; an 8-bit display name is UTF-8.
  const value = Buffer.from(line.slice(line.indexOf(':') + 1), 'latin1').toString('utf8').replace(/\r?\n/g, '');
  const list = parseAddressList(value);
  if (list.invalid.length > 0 || list.addresses.length !== 1) {
    const detail = list.addresses.length > 1 ? `From: holds ${list.addresses.length} addresses` : 'From: holds no address';
    return { ok: false, reason: 'from_not_address', detail };
  }
  const address = list.addresses[0]!;
  const at = address.lastIndexOf('@');
  const domain = domainToASCII(address.slice(at + 1).replace(/\.$/, ''));
  if (at < 1 || !domain) return { ok: false, reason: 'from_not_address', detail: 'From: holds no address with a domain' };
  return { ok: true, domain, address };
}
