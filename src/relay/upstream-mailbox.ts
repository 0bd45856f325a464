/**
 * Which upstream mailbox a session's mail goes out as, with backend.auth mechanism XOAUTH2:
 * the first of backend.auth.mailboxes that matches the session's listener and the signed-in
 * user's groups, else backend.auth.user. A printers' listener can so send as the scanner
 * mailbox while the ERP group sends as its own. Pure.
 */
import type { MailboxRule } from '../config/backend-auth-section.js';

export interface MailboxSubject {
  readonly listener: string;
  /** The signed-in user's groups (none for a session that did not sign in); asked only if a rule names a group. */
  readonly groups: () => readonly string[];
}

export function chooseMailbox(rules: readonly MailboxRule[], fallback: string, who: MailboxSubject): string {
  let groups: readonly string[] | undefined;
  for (const rule of rules) {
    if (rule.listener !== undefined && rule.listener !== who.listener) continue;
    if (rule.group !== undefined && !(groups ??= who.groups()).includes(rule.group)) continue;
    return rule.user;
  }
  return fallback;
}
