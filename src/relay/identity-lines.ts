/**
 * The XCLIENT and XFORWARD command lines that tell the backend who the client is (Postfix
 * XCLIENT_README, XFORWARD_README). Every value but the address is the client's to choose (its
 * EHLO name, its login), so every value must reach the backend as itself or as [UNAVAILABLE]:
 * a value that breaks the line loses the rest of it, and the backend then judges smtpgate's own
 * address, with no login, and applies its `mynetworks` trust to the client.
 *
 * What Postfix does with a line (smtpd.c xclient_cmd / xforward_cmd, smtpd_token.c, 3.7-3.12):
 * - its command tokenizer reads '"' and '<' as the start of a quoted string that runs to the
 *   closing quote or the end of the line, and '\' as escaping the next character (a space
 *   included): any of them, unencoded, glues the following attributes onto this one;
 * - it xtext-decodes each value, then masks control characters (and invalid UTF-8) as '?';
 * - it refuses the whole command (501) for a value over 255 octets as sent, and, for XCLIENT,
 *   a NAME that is not a host name;
 * - an XCLIENT command that omits HELO, PROTO or LOGIN resets them: when the attributes are
 *   split over several commands (512-octet lines), those three go in the last one, with ADDR.
 * Pure: the same attributes and capability line always give the same commands.
 */

/** XCLIENT_README / XFORWARD_README: the value that stands for "not known". */
export const UNAVAILABLE = '[UNAVAILABLE]';

/** RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including the CRLF. */
const MAX_COMMAND_LINE = 510;

/** smtpd.c: "501 5.5.4 Error: attribute value too long" past 255 octets (as sent, encoded). */
const MAX_VALUE = 255;

/** ehlo-keyword (RFC 5321 §4.1.1.1); also what XCLIENT/XFORWARD attribute names look like. */
const KEYWORD_RE = /^[A-Za-z0-9][A-Za-z0-9-]*$/;

/** What Postfix's printable() would mask as '?': a login must arrive as the client gave it. */
const CONTROL_RE = /[\x00-\x1f\x7f]/;

/** Postfix valid_hostname(): labels of letters, digits, '-' and '_' (its NAME check, XCLIENT and XFORWARD). */
const HOSTNAME_RE = /^[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?$/;

/** A UTF-16 surrogate without its pair: it has no UTF-8 form, so it could only arrive altered. */
const LONE_SURROGATE_RE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** The special values both commands accept in place of a real one (XCLIENT_README Note 2). */
const SPECIAL_RE = /^\[(?:UNAVAILABLE|TEMPUNAVAIL)\]$/i;

/** XCLIENT attributes Postfix resets when a later XCLIENT command leaves them out (smtpd.c). */
const RESET_UNLESS_REPEATED = new Set(['HELO', 'PROTO', 'LOGIN']);

/**
 * RFC 3461 §4 xtext over the UTF-8 bytes: bytes outside "!".."~", and "+" and "=", become
 * "+HH" (upper-case hex, which smtp-server's decoder insists on). So do '"', '<', '>' and '\':
 * xtext allows "+HH" for any byte, and Postfix's tokenizer would otherwise read them as quoting.
 */
export function xtextEncode(value: string): string {
  // Most values (addresses, ports, host names, logins) need no "+HH" at all.
  if (XTEXT_AS_IS_RE.test(value)) return value;
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    if (byte >= 0x21 && byte <= 0x7e && !ENCODED_PRINTABLE.has(byte)) out += String.fromCharCode(byte);
    else out += '+' + byte.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/** '+' and '=' (RFC 3461), then '"', '<', '>', '\' (Postfix smtpd_token.c quoting). */
const ENCODED_PRINTABLE = new Set([0x2b, 0x3d, 0x22, 0x3c, 0x3e, 0x5c]);

/** A value of only "!".."~" without ENCODED_PRINTABLE's bytes: its xtext is itself. */
const XTEXT_AS_IS_RE = /^[\x21\x23-\x2a\x2c-\x3b\x3f-\x5b\x5d-\x7e]*$/;

export interface IdentityLines {
  /** The commands to send, in order; never empty. */
  readonly lines: string[];
  /** Attributes that had a value but go as [UNAVAILABLE], because the backend could not hold it unchanged. */
  readonly replaced: string[];
}

/**
 * Builds the XCLIENT or XFORWARD commands for `attrs`: only the attributes named on the
 * backend's capability line (`advertised`, e.g. "NAME ADDR PORT PROTO HELO LOGIN"), each value
 * encoded or replaced (see the file comment), each line within 512 octets, ADDR last (once ADDR
 * is sent the proxy is usually no longer authorized to send more: XCLIENT_README Note 1).
 * An empty or missing value goes as [UNAVAILABLE]. Throws on an invalid attribute name or when
 * none of the attributes is advertised.
 */
export function identityLines(verb: 'XCLIENT' | 'XFORWARD', attrs: Readonly<Record<string, string | undefined>>, advertised: string): IdentityLines {
  const allowed = new Set(advertised.toUpperCase().split(/\s+/).filter(Boolean));
  const values = new Map<string, string>();
  const replaced: string[] = [];
  for (const [rawName, raw] of Object.entries(attrs)) {
    if (!KEYWORD_RE.test(rawName)) throw new Error(`invalid ${verb} attribute name ${JSON.stringify(rawName)}`);
    const name = rawName.toUpperCase();
    if (!allowed.has(name)) continue;
    const missing = raw === undefined || raw === '';
    const encoded = missing ? UNAVAILABLE : xtextEncode(raw);
    const value = missing || representable(name, raw, encoded) ? encoded : undefined;
    if (value === undefined) replaced.push(name);
    values.set(name, value ?? UNAVAILABLE);
  }
  if (values.size === 0) throw new Error(`none of the ${verb} attributes is advertised by the backend`);

  // The last command carries ADDR (last of all) and, for XCLIENT, what Postfix would otherwise reset.
  const finalNames = verb === 'XCLIENT' ? [...RESET_UNLESS_REPEATED] : [];
  const early = [...values].filter(([name]) => name !== 'ADDR' && !finalNames.includes(name));
  const final = finalNames.filter((n) => values.has(n)).map((n): [string, string] => [n, values.get(n)!]);
  if (values.has('ADDR')) final.push(['ADDR', values.get('ADDR')!]);

  // At most 255 octets a value, only LOGIN and HELO beside short ones: over the limit they give
  // way, the HELO first (the backend hears the client's EHLO name again after XCLIENT anyway).
  for (const name of ['HELO', 'LOGIN']) {
    if (lineLength(verb, final) <= MAX_COMMAND_LINE) break;
    const at = final.findIndex(([n]) => n === name);
    if (at >= 0 && final[at]![1] !== UNAVAILABLE) {
      final[at] = [name, UNAVAILABLE];
      replaced.push(name);
    }
  }

  const lines: string[] = [];
  let line = verb;
  for (const [name, value] of early) {
    const part = `${name}=${value}`;
    if (line !== verb && line.length + 1 + part.length > MAX_COMMAND_LINE) {
      lines.push(line);
      line = verb;
    }
    line += ` ${part}`;
  }
  if (final.length > 0 && line !== verb && line.length + lineLength('', final) > MAX_COMMAND_LINE) {
    lines.push(line);
    line = verb;
  }
  for (const [name, value] of final) line += ` ${name}=${value}`;
  lines.push(line);
  return { lines, replaced };
}

/** Whether Postfix would hold `value` of attribute `name` (xtext: `encoded`) exactly as given. */
function representable(name: string, value: string, encoded: string): boolean {
  if (SPECIAL_RE.test(value)) return true;
  if (encoded.length > MAX_VALUE || LONE_SURROGATE_RE.test(value)) return false;
  switch (name) {
    case 'LOGIN':
      return !CONTROL_RE.test(value);
    case 'NAME':
      return HOSTNAME_RE.test(value) && value.length <= MAX_VALUE;
    default:
      // HELO: Postfix masks control characters and NEUTER_CHARACTERS in every HELO it records,
      // a client's own EHLO included (smtpd.c helo_cmd): it records what it would have anyway.
      return true;
  }
}

function lineLength(verb: string, parts: ReadonlyArray<readonly [string, string]>): number {
  return parts.reduce((n, [name, value]) => n + 1 + name.length + 1 + value.length, verb.length);
}
