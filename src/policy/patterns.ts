/**
 * Patterns in policy rules: exact values and globs (`*` any run of characters, `?` one
 * character, nothing else is special), always anchored and compared case-insensitively, since
 * domains and (in practice) addresses are. Pure functions.
 */

/** Compiles a glob into an anchored, case-insensitive RegExp. */
export function compileGlob(glob: string): RegExp {
  let re = '';
  for (const ch of glob) {
    if (ch === '*') re += '.*';
    else if (ch === '?') re += '.';
    else re += ch.replace(/[.+^${}()|[\]\\/-]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, 'is');
}

export function isGlob(pattern: string): boolean {
  return pattern.includes('*') || pattern.includes('?');
}

/**
 * A list of patterns, from the rule itself and from list files. Exact entries go in a set, so
 * a list file of ten thousand addresses costs one lookup.
 */
export class PatternList {
  readonly #exact = new Map<string, string>();
  readonly #globs: { pattern: string; re: RegExp }[] = [];
  /** How the list reads in a trace: the inline entries and the list files it came from. */
  readonly label: string;
  readonly size: number;

  constructor(patterns: readonly string[], label?: string) {
    for (const p of patterns) {
      if (isGlob(p)) this.#globs.push({ pattern: p, re: compileGlob(p) });
      else if (!this.#exact.has(p.toLowerCase())) this.#exact.set(p.toLowerCase(), p);
    }
    this.size = patterns.length;
    this.label = label ?? patterns.join(', ');
  }

  /** The pattern that matches `value`, or undefined. */
  match(value: string): string | undefined {
    const exact = this.#exact.get(value.toLowerCase());
    if (exact !== undefined) return exact;
    for (const g of this.#globs) if (g.re.test(value)) return g.pattern;
    return undefined;
  }
}

/** The domain of an address, lower-cased, without a trailing dot; '' when there is none. */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0) return '';
  const domain = address.slice(at + 1).toLowerCase();
  return domain.endsWith('.') ? domain.slice(0, -1) : domain;
}

const ROUTING = /[%!@]/;

/**
 * Sender-specified routing in a recipient: user%other@ours, user!other@ours, "user@other"@ours,
 * or a source route @a,@b:user@c. An old backend may relay such an address onwards, so relay
 * protection never counts it as internal (the same test as Postfix's reject_unauth_destination,
 * see postconf(5) allow_untrusted_routing).
 */
export function hasSenderRouting(address: string): boolean {
  if (address.startsWith('@')) return true;
  const at = address.lastIndexOf('@');
  const local = at < 0 ? address : address.slice(0, at);
  return ROUTING.test(local);
}

/** Users' allowed addresses: globs, and "@domain" as a short form of "*@domain". */
export function addressPatterns(addresses: readonly string[]): PatternList {
  return new PatternList(addresses.map((a) => (a.startsWith('@') ? `*${a}` : a)));
}
