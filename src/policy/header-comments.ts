/**
 * RFC 5322 comments "(...)", removed from a structured header value before it is parsed:
 * From:/To: address lists (addresses.ts), Content-Type and Content-Disposition (mime.ts). Pure.
 *
 * A backslash is a quoted-pair only inside a quoted-string or a comment (RFC 5322 §3.2.1,
 * §3.2.2, §3.2.4). Outside them it escapes nothing: `a \(b, c)` is "a \" and a comment, so a
 * comma or semicolon hidden in that comment can't split the value into extra entries.
 * Comments nest; quoted-pairs inside quoted-strings are kept as written, for the caller to
 * unquote.
 */
export function withoutComments(text: string): string {
  let out = '';
  let depth = 0;
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === '\\' && (quoted || depth > 0)) {
      if (depth === 0) out += ch + (text[i + 1] ?? '');
      i++;
      continue;
    }
    if (depth === 0 && ch === '"') quoted = !quoted;
    if (!quoted) {
      if (ch === '(') {
        depth++;
        continue;
      }
      if (ch === ')' && depth > 0) {
        depth--;
        continue;
      }
    }
    if (depth === 0) out += ch;
  }
  return out;
}
