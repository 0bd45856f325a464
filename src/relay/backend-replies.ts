/**
 * The backend's replies, as the client gets them: a positive reply is passed on word for
 * word, a refusal is mirrored with the backend's own codes. Pure.
 */
import type { SmtpReply } from './smtp-client.js';

export function isPositive(reply: SmtpReply): boolean {
  return reply.code >= 200 && reply.code < 300;
}

/** The backend's refusal, mirrored (one definition, with every other refusal: refusals.ts). */
export { backendRefusal } from '../refusals.js';

/** The text of a backend reply as the client gets it: enhanced code first, when there is one. */
export function replyText(reply: SmtpReply): string {
  return reply.enhanced ? `${reply.enhanced} ${reply.text}` : reply.text;
}
