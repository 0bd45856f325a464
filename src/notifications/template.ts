/**
 * The suspension notice's template (`notifications.template`): a text file an admin edits, in
 * the shape of a message:
 *
 *   Subject: Mail from {{user}} suspended
 *
 *   Hello,
 *   smtpgate suspended {{user}} at {{since}} ({{reason}}) ...
 *
 * The first line is the subject, then a blank line, then the body (plain text, UTF-8). No other
 * header may be set: From comes from `notifications.from`, To from the user and the admins, and
 * smtpgate writes Date, Message-ID and Auto-Submitted itself. Placeholders are
 * {{name}} for the names in PLACEHOLDERS; an unknown one is refused at start, with its line.
 *
 * Rendering is pure and one pass: a value is never read as a template (a login spelled
 * "{{reason}}" stays that text), and every value is cut to printable ASCII on one line
 * (printable()), so a login or a directory value with CR or LF can't add a header or a line.
 */
import { readFile } from 'node:fs/promises';
import { ConfigError, type ConfigIssue } from '../parsing/errors.js';
import { printable } from '../logging/printable.js';

/** What a template may say, and what each stands for (README, "Notifications"). */
export const PLACEHOLDERS = {
  user: 'the login of the suspended account',
  reason: 'why, in words: "3 quota hits within 1h (last: messages_user)"',
  since: 'when the suspension started (UTC, ISO 8601)',
  until: 'when it ends: a time (UTC), or "until an administrator clears it"',
  client: 'the address of the client whose session tripped the brake',
  count: 'the quota hits that made the suspension',
  window: 'the window those hits were counted in ("1h")',
  session: "the session id, as in smtpgate's log",
  hostname: "smtpgate's host name",
} as const;

export type Placeholder = keyof typeof PLACEHOLDERS;
export type NoticeValues = Readonly<Record<Placeholder, string>>;

export interface NoticeTemplate {
  readonly file: string;
  readonly subject: string;
  readonly body: string;
}

/** The notice as sent. */
export interface RenderedNotice {
  readonly subject: string;
  readonly text: string;
}

const PLACEHOLDER = /\{\{\s*([^{}]*?)\s*\}\}/g;
/** RFC 5322 §2.1.1: 78 characters a line is the advice; a subject template longer than that is likely a mistake. */
const MAX_SUBJECT = 200;

/** Pure: the template in `text` (from `file`, for messages), or a ConfigError naming the lines. */
export function parseNoticeTemplate(text: string, file: string): NoticeTemplate {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const issues: ConfigIssue[] = [];
  const issue = (line: number, message: string) => issues.push({ file, line, path: 'notifications.template', message });
  const blank = lines.findIndex((l) => l.trim() === '');
  const head = blank < 0 ? lines : lines.slice(0, blank);
  let subject: string | undefined;
  head.forEach((l, i) => {
    const m = /^([A-Za-z0-9-]+):[ \t]*(.*)$/s.exec(l);
    if (!m) return issue(i + 1, /^[ \t]/.test(l) ? 'the subject must be one line (no folded continuation lines)' : `expected "Subject: …" on the first line, then a blank line, then the body; found ${JSON.stringify(printable(l))}`);
    if (m[1]!.toLowerCase() !== 'subject') {
      return issue(i + 1, `only Subject: may be set in the template; ${m[1]} is not (From comes from notifications.from, To from the user and notifications.admins; smtpgate writes Date, Message-ID and Auto-Submitted itself)`);
    }
    if (subject !== undefined) return issue(i + 1, 'a second Subject: line; keep one');
    subject = m[2]!;
  });
  if (head.length > 0 && subject === undefined && issues.length === 0) issue(1, 'expected a "Subject: …" line first');
  if (head.length === 0) issue(1, 'expected a "Subject: …" line first, then a blank line, then the body');
  if (subject !== undefined && subject.trim() === '') issue(1, 'the subject is empty');
  if (subject !== undefined && /[\x00-\x08\x0a-\x1f\x7f]/.test(subject)) issue(1, 'the subject holds a control character; keep it plain text');
  if (subject !== undefined && subject.length > MAX_SUBJECT) issue(1, `the subject is ${subject.length} characters long; keep it under ${MAX_SUBJECT}`);
  const bodyLines = blank < 0 ? [] : lines.slice(blank + 1);
  if (bodyLines.every((l) => l.trim() === '')) issue(Math.max(blank + 2, 2), 'the body is empty: write the notice below the blank line after the subject');
  lines.forEach((l, i) => {
    for (const m of l.matchAll(PLACEHOLDER)) {
      if (!(m[1]! in PLACEHOLDERS)) issue(i + 1, `unknown placeholder {{${printable(m[1]!)}}}; known: ${Object.keys(PLACEHOLDERS).map((p) => `{{${p}}}`).join(', ')}`);
    }
  });
  if (issues.length) throw new ConfigError(issues);
  return { file, subject: subject!.trim(), body: bodyLines.join('\n').replace(/\s+$/, '') + '\n' };
}

export async function readNoticeTemplate(file: string): Promise<NoticeTemplate> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError([{ file, path: 'notifications.template', message: `cannot read the suspension notice template: ${(err as Error).message}` }]);
  }
  return parseNoticeTemplate(text, file);
}

/** Pure: the notice with every placeholder replaced, in one pass, by its value made printable. */
export function renderNotice(t: NoticeTemplate, values: NoticeValues): RenderedNotice {
  const fill = (s: string) => s.replace(PLACEHOLDER, (_all, name: string) => printable(values[name as Placeholder] ?? ''));
  return { subject: fill(t.subject), text: fill(t.body) };
}
