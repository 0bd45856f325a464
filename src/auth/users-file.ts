/**
 * The users file: htpasswd format with bcrypt hashes, as `htpasswd -B` writes them.
 *
 *   # comment
 *   alice:$2y$10$...
 *
 * Parsing is pure (`parseUsersFile`); reading and watching are in `FileAuthenticator`.
 */
import type { ConfigIssue } from '../parsing/errors.js';

export interface UserRecord {
  readonly username: string;
  readonly hash: string;
}

export type UsersParseResult = { ok: true; users: Map<string, UserRecord> } | { ok: false; issues: ConfigIssue[] };

/** RFC 5321 local-part-ish names plus '@' and '.', so "alice" and "alice@corp.example" both work. */
const USERNAME = /^[A-Za-z0-9._%+@-]{1,128}$/;
/** $2a$/$2b$/$2y$ bcrypt: cost 04-31 and 53 chars of bcrypt-base64. */
const BCRYPT = /^\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}$/;

export function parseUsersFile(text: string, file: string): UsersParseResult {
  const users = new Map<string, UserRecord>();
  const issues: ConfigIssue[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const at = { file, path: '', line: i + 1 };
    const colon = line.indexOf(':');
    if (colon <= 0) {
      issues.push({ ...at, message: 'expected "NAME:HASH" (as written by htpasswd -B), found a line without a ":"' });
      return;
    }
    const username = line.slice(0, colon);
    const hash = line.slice(colon + 1);
    if (!USERNAME.test(username)) {
      issues.push({ ...at, message: `user name ${JSON.stringify(username)} has characters other than letters, digits and ._%+@-` });
      return;
    }
    if (!BCRYPT.test(hash)) {
      const kind = hash.startsWith('$apr1$') ? 'an MD5 ($apr1$) hash' : hash.startsWith('{SHA}') ? 'a SHA-1 hash' : 'not a bcrypt hash';
      issues.push({ ...at, message: `user ${JSON.stringify(username)}: ${kind}; expected bcrypt ($2y$/$2b$), e.g. "smtpgate user passwd ${username}" or "htpasswd -B"` });
      return;
    }
    if (users.has(username)) {
      issues.push({ ...at, message: `user ${JSON.stringify(username)} is listed twice` });
      return;
    }
    users.set(username, { username, hash });
  });
  return issues.length ? { ok: false, issues } : { ok: true, users };
}

/** Serialises users back to htpasswd lines, keeping the order of the map. */
export function formatUsersFile(users: Iterable<UserRecord>): string {
  let out = '';
  for (const u of users) out += `${u.username}:${u.hash}\n`;
  return out;
}

export function isValidUsername(name: string): boolean {
  return USERNAME.test(name);
}
