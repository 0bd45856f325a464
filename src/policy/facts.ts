/**
 * Building `SessionFacts` pieces the same way in the listener and in `smtpgate policy test`,
 * so a simulated session sees what a real one would.
 */
import type { ScanResult } from './mime.js';
import type { SessionFacts, UserFacts } from './types.js';

export interface UserAttributesLike {
  readonly addresses: readonly string[];
  readonly groups: readonly string[];
}

/**
 * A user's facts from their attributes. A user with no addresses configured whose login is
 * itself an address (alice@corp.example) may send as that address: the usual setup, and the
 * only safe guess. Anyone else with no addresses can send as nobody under sender binding.
 */
export function buildUserFacts(name: string, attributes: UserAttributesLike | undefined): UserFacts {
  const addresses = attributes?.addresses.length ? attributes.addresses : /^[^\s@]+@[^\s@]+$/.test(name) ? [name.toLowerCase()] : [];
  return { name, groups: attributes?.groups ?? [], addresses };
}

/** The data-stage facts a finished MIME scan gives. */
export function dataFacts(scan: ScanResult): Pick<SessionFacts, 'headers' | 'headersTruncated' | 'attachments' | 'scanIncomplete' | 'messageSize'> {
  return { headers: scan.headers, headersTruncated: scan.headersTruncated, attachments: scan.attachments, scanIncomplete: scan.incomplete, messageSize: scan.size };
}
