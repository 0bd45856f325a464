/**
 * What a user's directory entry says for smtpgate: the addresses they may send as, their
 * groups, and whether Active Directory has the account disabled. Pure functions over the
 * entry as ldapts returns it (attribute names as the server spelled them).
 */
import type { Entry } from 'ldapts';
import type { UserAttributes } from './user-attributes.js';
import { firstRdn } from './ldap-syntax.js';

/** AD's userAccountControl; bit 0x2 is ACCOUNTDISABLE (MS-ADTS §2.2.16). */
export const USER_ACCOUNT_CONTROL = 'userAccountControl';
const ACCOUNTDISABLE = 0x2;

/** local@domain, nothing that pattern matching would read as a wildcard, no spaces or controls. */
const PLAIN_ADDRESS = /^[^\s@*?\x00-\x1f\x7f]+@[^\s@*?\x00-\x1f\x7f]+$/;

/** Every value of `name` (matched without regard to case, as LDAP attribute names are), as text. */
export function valuesOf(entry: Entry, name: string): string[] {
  const lower = name.toLowerCase();
  const out: string[] = [];
  for (const [key, raw] of Object.entries(entry)) {
    if (key === 'dn' || key.toLowerCase() !== lower) continue;
    for (const v of Array.isArray(raw) ? raw : [raw]) out.push(Buffer.isBuffer(v) ? v.toString('utf8') : v);
  }
  return out;
}

/**
 * The addresses in `attributes`, lower-cased and without repeats. AD's proxyAddresses holds
 * "TYPE:value" pairs: only the SMTP ones are addresses ("SMTP:" marks the primary, "smtp:" the
 * others); X400:, SIP:, X500: and the like are dropped.
 *
 * Only plain addresses count. A wildcard ("*", "*@corp.example") would let the user send as
 * anyone under sender binding, and a directory's mail attribute is data that users can
 * sometimes edit themselves (a `by self write` ACL): wildcards belong in the attributes file,
 * which only the operator writes. Anything that isn't local@domain is dropped.
 */
export function addressesOf(entry: Entry, attributes: readonly string[]): string[] {
  const out = new Set<string>();
  for (const attribute of attributes) {
    const typed = attribute.toLowerCase() === 'proxyaddresses';
    for (const value of valuesOf(entry, attribute)) {
      let address = value.trim();
      if (typed) {
        if (!/^smtp:/i.test(address)) continue;
        address = address.slice(5);
      }
      if (PLAIN_ADDRESS.test(address)) out.add(address.toLowerCase());
    }
  }
  return [...out];
}

/**
 * The groups in `attribute` (memberOf: one DN per group). Each gives its full DN, for rules
 * that must not confuse two groups of one name in different OUs, and its CN, the short name
 * rules usually use: "CN=staff,OU=Groups,DC=corp,DC=example" → "staff" and the DN.
 */
export function groupsOf(entry: Entry, attribute: string): string[] {
  const out = new Set<string>();
  for (const dn of valuesOf(entry, attribute)) {
    const rdn = firstRdn(dn);
    if (rdn && rdn.type.toLowerCase() === 'cn') out.add(rdn.value);
    out.add(dn);
  }
  return [...out];
}

export function directoryAttributes(entry: Entry, config: { addressAttributes: readonly string[]; groupAttribute: string }): UserAttributes {
  return { addresses: addressesOf(entry, config.addressAttributes), groups: groupsOf(entry, config.groupAttribute) };
}

/**
 * The login as the directory spells it: the value of `attribute` that the directory's usual
 * (case-ignoring, space-trimming) matching took for `login`, so that "ALICE" signs in as
 * "alice". Undefined when no value is plainly the same.
 */
export function spelledLogin(entry: Entry, attribute: string, login: string): string | undefined {
  const wanted = login.trim().toLowerCase();
  return valuesOf(entry, attribute).find((v) => v.trim().toLowerCase() === wanted);
}

/** AD's ACCOUNTDISABLE bit. No userAccountControl (any other directory) is not disabled. */
export function adAccountDisabled(entry: Entry): boolean {
  return valuesOf(entry, USER_ACCOUNT_CONTROL).some((v) => /^-?\d+$/.test(v.trim()) && (Number(v) & ACCOUNTDISABLE) !== 0);
}
