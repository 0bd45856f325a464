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

/**
 * The queue id a backend names in its reply to the final dot, so the transaction record points
 * at the backend's own log; undefined when the reply names none. The forms of the servers
 * smtpgate is put in front of:
 *   Postfix    250 2.0.0 Ok: queued as 4dQ2x71zKz3Yxm
 *   Exim       250 OK id=1qZ3ab-0001xy-AB
 *   Sendmail   250 2.0.0 4B7AbCdE012345 Message accepted for delivery
 *   Exchange   250 2.6.0 <msgid> [InternalId=1234567, Hostname=EX1] Queued mail for delivery
 *   qmail      250 ok 1701940000 qp 12345
 * Only letters, digits and - . _ are taken, at most 64: it goes into logs.
 */
export function queueIdOf(text: string): string | undefined {
  const m =
    /\bqueued as ([A-Za-z0-9._-]{1,64})/i.exec(text) ??
    /\bid=([A-Za-z0-9._-]{1,64})/.exec(text) ??
    /^(?:\d\.\d{1,3}\.\d{1,3} )?([A-Za-z0-9]{8,32}) Message accepted for delivery/i.exec(text) ??
    /\[InternalId=(\d{1,32})\b/.exec(text) ??
    /^ok \d+ qp (\d{1,20})\b/i.exec(text);
  return m?.[1];
}
