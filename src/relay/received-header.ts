/**
 * The Received: header for the proxy hop, in RFC 5321 §4.4 form. Every value that came from
 * the client (EHLO name, reverse DNS) is reduced to a safe character set first: a CR or LF
 * there would let a client inject headers into the message the backend stores.
 *
 * `data.receivedHeader: private` keeps the header but names smtpgate's own hop only: the
 * client's EHLO name, host name and address stay out of the message (a roaming user's home
 * address, an internal app server's name), as Postfix admins do with a header_checks REPLACE
 * on submission. The header is rewritten, never dropped: mail without a Received: line for
 * the first hop looks forged to filters, and loop detection counts these lines.
 */

/**
 * full: the client's EHLO name, host name and address, as MTAs write them; private: only
 * smtpgate's own hop; off: no Received: header (older configs' `receivedHeader: false`).
 */
export type ReceivedHeaderMode = 'full' | 'private' | 'off';

/**
 * What a private header's FROM clause names instead of the client. RFC 5321 §4.4 requires
 * the clause; a name under .invalid (RFC 6761 §6.4) is valid syntax for the parsers that read
 * these lines and can never be mistaken for a real host.
 */
export const HIDDEN_CLIENT = 'client.invalid (address hidden)';

export interface ReceivedFacts {
  readonly helo?: string;
  readonly clientHostname?: string;
  readonly clientAddress: string;
  readonly byHost: string;
  /** ESMTP, ESMTPS, ESMTPA or ESMTPSA (RFC 3848). */
  readonly protocol: string;
  readonly sessionId: string;
  readonly tls?: { readonly version: string; readonly cipher: string };
  /** Only named when the message has exactly one recipient, as Postfix does. */
  readonly recipient?: string;
  readonly date: Date;
}

/** Keeps letters, digits and the punctuation that appears in host names and address literals. */
export function headerSafe(value: string, max = 255): string {
  return value.replace(/[^A-Za-z0-9.:\-_[\]@+=]/g, '?').slice(0, max);
}

export function receivedHeader(f: ReceivedFacts, mode: Exclude<ReceivedHeaderMode, 'off'>): string {
  const from = mode === 'private' ? HIDDEN_CLIENT : fromClause(f);
  const lines = [`Received: from ${from}`, `\tby ${headerSafe(f.byHost)} (smtpgate) with ${headerSafe(f.protocol)} id ${headerSafe(f.sessionId)}`];
  if (f.tls) lines.push(`\t(using ${headerSafe(f.tls.version)} with cipher ${headerSafe(f.tls.cipher)})`);
  const date = rfc5322Date(f.date);
  lines.push(f.recipient ? `\tfor <${headerSafe(f.recipient, 320)}>; ${date}` : `\t; ${date}`);
  return lines.join('\r\n') + '\r\n';
}

/** The client as MTAs name it: its EHLO name, then its host name and address in parentheses. */
function fromClause(f: ReceivedFacts): string {
  const helo = headerSafe(f.helo || 'unknown');
  const host = f.clientHostname ? headerSafe(f.clientHostname) : 'unknown';
  return `${helo} (${host} [${headerSafe(f.clientAddress)}])`;
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** RFC 5322 §3.3 date-time, in UTC. */
export function rfc5322Date(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}
