/**
 * Line-wise edits of the users file, for `smtpgate user add|passwd|del`. Pure: text in, text
 * out. Comments, blank lines, other users and their order are kept byte for byte; only the
 * target user's line is replaced or removed, and a new user is appended at the end.
 *
 * A file with any problem is refused rather than edited: rewriting around a line we cannot
 * read could silently drop or keep a user the operator meant to change.
 */
import type { ConfigIssue } from '../parsing/errors.js';
import { isValidUsername, parseUsersFile } from './users-file.js';

export type UsersFileEdit =
  | { readonly op: 'add'; readonly username: string; readonly hash: string }
  | { readonly op: 'passwd'; readonly username: string; readonly hash: string }
  | { readonly op: 'del'; readonly username: string };

export type UsersFileEditRefusal =
  | { readonly reason: 'invalid_username'; readonly message: string }
  | { readonly reason: 'file_has_problems'; readonly message: string; readonly issues: readonly ConfigIssue[] }
  | { readonly reason: 'user_exists'; readonly message: string }
  | { readonly reason: 'no_such_user'; readonly message: string };

export type UsersFileEditResult = { ok: true; text: string } | ({ ok: false } & UsersFileEditRefusal);

/**
 * Whether `op` on `username` can be applied to this file text, without needing the new hash.
 * The CLI asks this before prompting for a password, so a doomed edit fails fast.
 */
export function checkUsersFileEdit(text: string, file: string, op: UsersFileEdit['op'], username: string): UsersFileEditRefusal | undefined {
  if (!isValidUsername(username)) {
    return { reason: 'invalid_username', message: `user name ${JSON.stringify(username)} is not valid: use 1-128 letters, digits and ._%+@-` };
  }
  const parsed = parseUsersFile(text, file);
  if (!parsed.ok) {
    const n = parsed.issues.length;
    return { reason: 'file_has_problems', message: `${file} has ${n} problem${n === 1 ? '' : 's'}; fix ${n === 1 ? 'it' : 'them'} first (nothing was changed):`, issues: parsed.issues };
  }
  const exists = parsed.users.has(username);
  if (op === 'add' && exists) {
    return { reason: 'user_exists', message: `user ${username} already exists in ${file}; to change the password: smtpgate user passwd ${username}` };
  }
  if (op !== 'add' && !exists) {
    return { reason: 'no_such_user', message: `user ${username} is not in ${file}${op === 'passwd' ? `; to create it: smtpgate user add ${username}` : ''}` };
  }
  return undefined;
}

export function applyUsersFileEdit(text: string, file: string, edit: UsersFileEdit): UsersFileEditResult {
  const refusal = checkUsersFileEdit(text, file, edit.op, edit.username);
  if (refusal) return { ok: false, ...refusal };

  if (edit.op === 'add') {
    const eol = text.includes('\r\n') ? '\r\n' : '\n';
    const sep = text === '' || text.endsWith('\n') ? '' : eol;
    return { ok: true, text: `${text}${sep}${edit.username}:${edit.hash}${eol}` };
  }

  let out = '';
  for (const line of splitKeepingEndings(text)) {
    const content = line.replace(/\r?\n$/, '');
    if (userOfLine(content) !== edit.username) {
      out += line;
    } else if (edit.op === 'passwd') {
      out += `${edit.username}:${edit.hash}${line.slice(content.length)}`;
    }
    // 'del': the line is dropped, with its line ending.
  }
  return { ok: true, text: out };
}

/** Lines with their own endings ("\n" or "\r\n"), so joining them gives back the exact text. */
function splitKeepingEndings(text: string): string[] {
  return text.match(/[^\n]*\n|[^\n]+$/g) ?? [];
}

/** The user a line defines, read the way `parseUsersFile` reads it; undefined for comments and blanks. */
function userOfLine(content: string): string | undefined {
  const line = content.trim();
  if (line === '' || line.startsWith('#')) return undefined;
  const colon = line.indexOf(':');
  return colon > 0 ? line.slice(0, colon) : undefined;
}
