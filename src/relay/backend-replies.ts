/**
 * The backend's replies, as the client gets them: a positive reply is passed on word for
 * word, a refusal is mirrored with the backend's own codes. Pure.
 */
import { refusal, type Refusal } from '../reply.js';
import type { SmtpReply } from './smtp-client.js';

export function isPositive(reply: SmtpReply): boolean {
  return reply.code >= 200 && reply.code < 300;
}

/** The backend's refusal, mirrored: same code, its own enhanced code and text. */
export function backendRefusal(reply: SmtpReply): Refusal {
  // Only a 4xx/5xx can be mirrored; anything else at this point is a confused backend.
  if (reply.code < 400 || reply.code > 599) {
    return refusal(451, '4.3.0', `Unexpected reply ${reply.code} from the mail server, try again later`, 'backend_failed');
  }
  const enhanced = reply.enhanced ?? (reply.code >= 500 ? '5.0.0' : '4.0.0');
  return refusal(reply.code, enhanced, reply.text || 'Refused by the mail server', 'backend_refused');
}

/** The text of a backend reply as the client gets it: enhanced code first, when there is one. */
export function replyText(reply: SmtpReply): string {
  return reply.enhanced ? `${reply.enhanced} ${reply.text}` : reply.text;
}
