/**
 * Addresses out of an RFC 5322 address-list header (From:), for sender binding. Pure.
 *
 *   From: "Alice (Sales)" <alice@corp.example>, bob@corp.example (Bob)
 *   From: Team: a@corp.example, b@corp.example;
 *
 * nodemailer's addressparser does the tokenizing (quotes, comments, groups, source routes).
 * It never throws and guesses on garbage, which is right for a mail client and wrong for a
 * check that binds a sender: every guess below that could let a reader see an address other
 * than the one checked makes the entry `invalid`, and a caller refuses what it can't check.
 */
import addressparser, { type Address } from 'nodemailer/lib/addressparser';
import { decodeEncodedWords } from './mime.js';

export interface InvalidEntry {
  /** The entry as addressparser read it. */
  readonly text: string;
  /** Why smtpgate can't vouch for it, for the trace: "an encoded-word in the address". */
  readonly reason: string;
}

export interface AddressList {
  /** Lower-cased addresses, in order. */
  readonly addresses: readonly string[];
  readonly invalid: readonly InvalidEntry[];
}

/**
 * An addr-spec as smtpgate accepts one: one "@", a local part of atoms and dots (addressparser
 * has already removed quotes that protect nothing, `"alice"@x` → `alice@x`), and a domain or a
 * domain literal. A quoted local part that needs its quotes (`"a b"@x`) is refused: no user
 * owns one, and mail readers disagree on how to show it.
 */
const ADDR_SPEC = /^[^\s@"<>(),;:\\[\]]+@(?:[^\s@"<>(),;:\\[\]]+|\[[^\s@"<>\\[\]]+\])$/;

// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;

/** `'Alice@Corp.Example'` → `alice@corp.example`: a display name that only repeats the address. */
const bare = (text: string) =>
  text
    .trim()
    .replace(/^["'<\s]+|["'>\s]+$/g, '')
    .toLowerCase();

/** Why a mailbox is not one smtpgate can vouch for, or undefined when it is. */
function problem(name: string, address: string): string | undefined {
  if (address === '') return 'no address';
  // RFC 2047 §5: an encoded-word is never part of an addr-spec. A reader that decodes one
  // anyway would show an address that was never checked ("=?utf-8?Q?ceo=40corp?=@evil").
  if (address.includes('=?')) return 'an encoded-word in the address';
  if (!ADDR_SPEC.test(address)) return 'not an address';
  // addressparser takes the first "@" word as the address and the rest as the display name:
  // `a@b c@d`, `<a@b> c@d`, `x <a@b> <c@d>` and a comment "(c@d) a@b" all read as a@b named
  // "c@d", where other readers take c@d. A display name holding an "@", raw or RFC 2047
  // decoded ("=?utf-8?B?Y2VvQGNvcnAuZXhhbXBsZQ==?= <me@corp>" shows as ceo@corp), passes
  // only when it is the address itself, as many mail clients write it.
  for (const n of [name, decodeEncodedWords(name)]) {
    if (n.includes('@') && bare(n) !== address.toLowerCase()) return 'another address in the display name';
  }
  return undefined;
}

function collect(entries: readonly Address[], addresses: string[], invalid: InvalidEntry[]): void {
  for (const e of entries) {
    if (e.group !== undefined) {
      // RFC 5322 §3.4: a group's name is a display name; `x@y: a@b;` shows x@y to some readers.
      if (e.name.includes('@') || decodeEncodedWords(e.name).includes('@')) invalid.push({ text: `${e.name}:`, reason: 'an address in the group name' });
      collect(e.group, addresses, invalid);
      continue;
    }
    const why = problem(e.name, e.address);
    if (why === undefined) addresses.push(e.address.toLowerCase());
    else invalid.push({ text: e.name && e.address ? `${e.name} <${e.address}>` : e.address || e.name || '<>', reason: why });
  }
}

/**
 * Parses an address-list header value as sent, never its RFC 2047-decoded form: decoding
 * first would let an encoded-word produce an address (RFC 2047 §5 forbids it in addr-spec).
 */
export function parseAddressList(value: string): AddressList {
  // A control character (NUL, a bare CR) is dropped or kept differently by each parser.
  if (CONTROL.test(value)) return { addresses: [], invalid: [{ text: value, reason: 'a control character' }] };
  const addresses: string[] = [];
  const invalid: InvalidEntry[] = [];
  let entries: Address[];
  try {
    entries = addressparser(value);
  } catch {
    // It is documented never to throw; if it ever does, the value is not checkable.
    return { addresses: [], invalid: [{ text: value, reason: 'addressparser failed' }] };
  }
  collect(entries, addresses, invalid);
  return { addresses, invalid };
}
