/**
 * Putting a login into LDAP strings, and reading group names out of DNs. A login is untrusted
 * text: in a filter it must stay one assertion value (`*` or `)(uid=*` must not widen the
 * search), and in a DN one attribute value (`,` must not start a new RDN).
 */
import { Filter } from 'ldapts';

/** The place in `auth.ldap.userFilter` / `userDnTemplate` where the login goes. */
export const USER_PLACEHOLDER = '{user}';

/** RFC 4515 §3: `*`, `(`, `)`, `\` and NUL as `\XX` inside an assertion value. */
export function escapeFilterValue(value: string): string {
  return Filter.escape(value);
}

/**
 * RFC 4514 §2.4: `"`, `+`, `,`, `;`, `<`, `>` and `\` anywhere, `#` or a space at the start,
 * a space at the end, and NUL as `\00`. `=` is escaped too (allowed by §2.4, and some
 * servers' parsers want it).
 */
export function escapeDnValue(value: string): string {
  let out = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (c === '\0') out += '\\00';
    else if ('"+,;<>\\='.includes(c)) out += `\\${c}`;
    else if ((i === 0 && (c === '#' || c === ' ')) || (i === value.length - 1 && c === ' ')) out += `\\${c}`;
    else out += c;
  }
  return out;
}

/** The template with every `{user}` replaced by `escaped` (taken literally: no `$&` patterns). */
export function fillTemplate(template: string, escaped: string): string {
  return template.split(USER_PLACEHOLDER).join(escaped);
}

/**
 * The attribute the login is compared with: "uid" in "(&(objectClass=person)(uid={user}))" or in
 * "uid={user},ou=people,dc=example,dc=org". Undefined when the login is only part of a value
 * ("{user}@corp.example").
 */
export function loginAttribute(template: string): string | undefined {
  return /(?:^|\()\s*([A-Za-z][A-Za-z0-9-]*)\s*=\{user\}\s*(?:\)|,|$)/.exec(template)?.[1];
}

/**
 * The first RDN of a DN as `{ type, value }`, the value unescaped (RFC 4514 §3: `\` + a special
 * character, or `\` + two hex digits, which may spell a UTF-8 sequence). Undefined when the
 * string does not start with `type=value`, or the RDN is multi-valued (`CN=a+OU=b`).
 */
export function firstRdn(dn: string): { type: string; value: string } | undefined {
  const eq = dn.indexOf('=');
  if (eq <= 0) return undefined;
  const type = dn.slice(0, eq).trim();
  if (!/^[A-Za-z][A-Za-z0-9-]*$|^[0-9]+(\.[0-9]+)*$/.test(type)) return undefined;
  const bytes: number[] = [];
  // RFC 4514 §2.4: unescaped leading and trailing spaces are not part of the value.
  let kept = 0;
  for (let i = eq + 1; i < dn.length; i++) {
    const c = dn[i]!;
    if (c === ',' || c === ';') break;
    if (c === '+') return undefined;
    if (c === ' ' && bytes.length === 0) continue;
    if (c !== '\\') {
      bytes.push(...Buffer.from(c, 'utf8'));
      if (c !== ' ') kept = bytes.length;
      continue;
    }
    const hex = dn.slice(i + 1, i + 3);
    if (/^[0-9a-fA-F]{2}$/.test(hex)) {
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else if (i + 1 < dn.length) {
      bytes.push(...Buffer.from(dn[i + 1]!, 'utf8'));
      i += 1;
    } else {
      return undefined;
    }
    kept = bytes.length;
  }
  if (kept === 0) return undefined;
  return { type, value: Buffer.from(bytes.slice(0, kept)).toString('utf8') };
}
