/**
 * A backend's EHLO reply as a capability map: upper-cased keyword → the rest of its line.
 *
 * A backend answers every EHLO with the same lines, and smtpgate says EHLO on every backend
 * connection (twice with XCLIENT), so a backend's CapabilityCache keeps the maps of the last few
 * distinct replies and hands the same map out again for the same lines: the lines are compared,
 * not parsed. The maps are shared, hence read-only.
 */

/** Distinct replies remembered per backend: before and after XCLIENT, with room to spare. */
const REMEMBERED = 4;

/** EHLO reply lines → capability map. The first line is the server's name, not a capability. */
export function parseCapabilities(lines: readonly string[]): ReadonlyMap<string, string> {
  const caps = new Map<string, string>();
  for (const line of lines.slice(1)) {
    // "AUTH=PLAIN LOGIN" is the pre-RFC 4954 spelling some servers still send; "=" is not
    // an ehlo-keyword character, so splitting on it is safe.
    const m = /^([^\s=]+)[\s=]*(.*)$/.exec(line.trim());
    if (!m?.[1]) continue;
    const keyword = m[1].toUpperCase();
    if (!caps.has(keyword)) caps.set(keyword, (m[2] ?? '').trim());
  }
  return caps;
}

interface Remembered {
  readonly lines: readonly string[];
  readonly caps: ReadonlyMap<string, string>;
}

/** The capability maps of one backend's last few distinct EHLO replies. */
export class CapabilityCache {
  readonly #entries: Remembered[] = [];
  /** The entry replaced next once all are taken (the oldest). */
  #next = 0;

  parse(lines: readonly string[]): ReadonlyMap<string, string> {
    for (const entry of this.#entries) if (sameCapabilityLines(entry.lines, lines)) return entry.caps;
    const caps = parseCapabilities(lines);
    const entry = { lines: [...lines], caps };
    if (this.#entries.length < REMEMBERED) this.#entries.push(entry);
    else {
      this.#entries[this.#next] = entry;
      this.#next = (this.#next + 1) % REMEMBERED;
    }
    return caps;
  }
}

/** The same capabilities: every line after the first (the server's name and greeting) equal. */
function sameCapabilityLines(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 1; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
