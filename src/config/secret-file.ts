/**
 * Secrets named by the config (a bind password, a hook token, an OAuth2 client secret) live in
 * files, never in the config itself. This reads one and reports what is wrong with it.
 */
import { readFile } from 'node:fs/promises';
import type { ConfigIssue } from '../parsing/errors.js';

/** A secret file: one line, no CR, LF or NUL inside it; a final newline is dropped. */
export async function readSecretLine(file: string, field: string, what: string, issues: ConfigIssue[]): Promise<string | undefined> {
  try {
    const text = (await readFile(file, 'utf8')).replace(/\r?\n$/, '');
    if (!text) issues.push({ file, path: field, message: `${what} is empty: write the secret on one line` });
    else if (/[\r\n\0]/.test(text)) issues.push({ file, path: field, message: `${what} must hold one line without CR, LF or NUL` });
    else return text;
  } catch (err) {
    issues.push({ file, path: field, message: `cannot read ${what}: ${(err as Error).message}` });
  }
  return undefined;
}
