/**
 * Addresses out of an RFC 5322 address-list header (From:, To:), for sender binding. Pure.
 *
 *   From: "Alice (Sales)" <alice@corp.example>, bob@corp.example (Bob)
 *   From: Team: a@corp.example, b@corp.example;
 *
 * Comments are dropped, display names ignored, groups opened; an entry that isn't an address
 * is reported as `invalid`, so a caller can refuse what it can't check rather than wave it on.
 */
import { withoutComments } from './header-comments.js';

export interface AddressList {
  /** Lower-cased addresses, in order. */
  readonly addresses: readonly string[];
  /** Entries that are not addresses (no "@"), as written. */
  readonly invalid: readonly string[];
}

/** Splits an address list into entries: on "," outside quotes and <>, and opens groups "name: ...;". */
function entries(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  let angle = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === '\\' && quoted) {
      cur += ch + (text[i + 1] ?? '');
      i++;
      continue;
    }
    if (ch === '"' && !angle) quoted = !quoted;
    else if (!quoted && ch === '<') angle = true;
    else if (!quoted && ch === '>') angle = false;
    if (!quoted && !angle && (ch === ',' || ch === ';')) {
      out.push(cur);
      cur = '';
      continue;
    }
    // A group's display name ends at its colon (RFC 5322 §3.4).
    if (!quoted && !angle && ch === ':') {
      cur = '';
      continue;
    }
    cur += ch;
  }
  out.push(cur);
  return out.map((e) => e.trim()).filter((e) => e !== '');
}

/** `"alice"@corp.example` → `alice@corp.example` when the quotes protect nothing. */
function normalizeAddress(addr: string): string {
  const at = addr.lastIndexOf('@');
  if (at < 0) return addr.toLowerCase();
  let local = addr.slice(0, at);
  const m = /^"((?:[^"\\]|\\.)*)"$/.exec(local);
  if (m) {
    const inner = m[1]!.replace(/\\(.)/g, '$1');
    if (/^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$/.test(inner)) local = inner;
  }
  return `${local}@${addr.slice(at + 1)}`.toLowerCase();
}

export function parseAddressList(value: string): AddressList {
  const addresses: string[] = [];
  const invalid: string[] = [];
  for (const entry of entries(withoutComments(value))) {
    let addr: string;
    const lt = entry.lastIndexOf('<');
    if (lt >= 0) {
      const gt = entry.indexOf('>', lt);
      addr = entry.slice(lt + 1, gt < 0 ? undefined : gt).trim();
      // Obsolete source route "<@a,@b:user@c>" (RFC 5322 §4.4).
      if (addr.startsWith('@') && addr.includes(':')) addr = addr.slice(addr.lastIndexOf(':') + 1);
    } else addr = entry;
    addr = addr.replace(/\s+/g, '');
    if (addr === '' && lt >= 0) {
      invalid.push(entry);
      continue;
    }
    if (!addr.includes('@') || addr.startsWith('@') || addr.endsWith('@')) invalid.push(entry);
    else addresses.push(normalizeAddress(addr));
  }
  return { addresses, invalid };
}
