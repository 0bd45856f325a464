/**
 * The replies policy rules give: the defaults per stage and action, the built-in rule types'
 * own replies, and the admin's `reply: "550 5.7.1 text"` parsed and checked. Pure.
 */
import type { Refusal } from '../reply.js';
import { formatRate, retrySeconds } from '../limits/rate.js';
import { policyRefusal, type BuiltinType, type LimitRequest, type PolicyRefusalReason, type PolicyStage, type RefusingAction } from './types.js';

type ReplyTemplate = readonly [code: number, enhanced: string, text: string];

/** reject and tempfail replies per stage (RFC 5321 §4.2.2 codes, RFC 3463 enhanced codes). */
const STAGE_REPLIES: Record<PolicyStage, Record<'reject' | 'tempfail', ReplyTemplate>> = {
  connect: {
    reject: [554, '5.7.1', 'Access denied by policy'],
    // 421 closes the connection (RFC 5321 §3.8).
    tempfail: [421, '4.7.0', 'Service not available to you right now, try again later'],
  },
  auth: {
    // RFC 4954 §6: the login is refused without saying why.
    reject: [535, '5.7.8', 'Authentication not permitted'],
    tempfail: [454, '4.7.0', 'Temporary authentication failure, try again later'],
  },
  mail: { reject: [550, '5.7.1', 'Sender refused by policy'], tempfail: [451, '4.7.1', 'Sender deferred by policy, try again later'] },
  rcpt: { reject: [550, '5.7.1', 'Recipient refused by policy'], tempfail: [451, '4.7.1', 'Recipient deferred by policy, try again later'] },
  data: { reject: [550, '5.7.1', 'Message refused by policy'], tempfail: [451, '4.7.1', 'Message deferred by policy, try again later'] },
};

const REQUIRE_REPLIES: Record<'require_tls' | 'require_auth', ReplyTemplate> = {
  require_tls: [530, '5.7.0', 'Must issue a STARTTLS command first'],
  require_auth: [530, '5.7.0', 'Authentication required'],
};

export function defaultRefusal(stage: PolicyStage, action: RefusingAction, reason?: PolicyRefusalReason): Refusal {
  if (action === 'require_tls') return policyRefusal(...REQUIRE_REPLIES.require_tls, reason ?? 'tls_required');
  if (action === 'require_auth') return policyRefusal(...REQUIRE_REPLIES.require_auth, reason ?? 'auth_required');
  return policyRefusal(...STAGE_REPLIES[stage][action], reason ?? 'policy');
}

/** What a built-in rule type does by default, and the reason label its refusals carry. */
export interface BuiltinDefaults {
  readonly action: 'accept' | 'reject' | 'tempfail';
  readonly reason: PolicyRefusalReason;
  readonly reply?: (stage: PolicyStage) => ReplyTemplate;
}

export const BUILTIN_DEFAULTS: Readonly<Record<BuiltinType, BuiltinDefaults>> = {
  sender_binding: {
    action: 'reject',
    reason: 'sender_binding',
    reply: (stage) => [553, '5.7.1', stage === 'data' ? 'From: header address not owned by the authenticated user' : 'Sender address not owned by the authenticated user'],
  },
  // The classic answer to a relay attempt, as Postfix gives it.
  relay_protection: { action: 'reject', reason: 'relay_denied', reply: () => [554, '5.7.1', 'Relay access denied'] },
  trusted_networks: { action: 'accept', reason: 'policy' },
  recipient_domains: { action: 'reject', reason: 'policy', reply: () => [550, '5.7.1', 'Recipient domain not allowed for your account'] },
  // RFC 5321 §4.5.3.1.10: too many recipients is a 452, and the client sends the rest later.
  max_recipients: { action: 'tempfail', reason: 'too_many_recipients', reply: () => [452, '4.5.3', 'Too many recipients'] },
  // RFC 3463 5.3.4: message too big for system.
  max_size: { action: 'reject', reason: 'message_too_big', reply: () => [552, '5.3.4', 'Message size exceeds the limit for your account'] },
};

export type ReplyParse = { ok: true; refusal: Refusal } | { ok: false; message: string };

const MAX_TEXT = 200;

/**
 * Parses `reply:` as written: "550 5.7.1 Text", "550 Text" or just "Text". A missing code or
 * enhanced code comes from `fallback`. The code must suit the action: 5xx for reject, 4xx for
 * tempfail, either for require_tls/require_auth.
 */
export function parseReply(text: string, action: RefusingAction, fallback: Refusal): ReplyParse {
  const m = /^\s*(?:(\d{3})(?:\s+(\d\.\d{1,3}\.\d{1,3}))?(?:\s+|$))?(.*)$/s.exec(text)!;
  const code = m[1] === undefined ? fallback.code : Number(m[1]);
  const body = m[3]!.trim();
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(body)) return { ok: false, message: 'the reply text must be one line without control characters' };
  if (!/^[\x20-\x7e]*$/.test(body)) return { ok: false, message: 'the reply text must be plain ASCII (SMTP replies are ASCII)' };
  if (body.length > MAX_TEXT) return { ok: false, message: `the reply text is ${body.length} characters; keep it under ${MAX_TEXT}` };
  if (action === 'reject' && (code < 500 || code > 599)) return { ok: false, message: `reject needs a 5xx code, found ${code}; use tempfail for a 4xx` };
  if (action === 'tempfail' && (code < 400 || code > 499)) return { ok: false, message: `tempfail needs a 4xx code, found ${code}; use reject for a 5xx` };
  if (code < 400 || code > 599) return { ok: false, message: `expected a 4xx or 5xx code, found ${code}` };
  let enhanced = m[2];
  if (enhanced === undefined) {
    // The fallback's enhanced code, moved into this code's class.
    enhanced = `${Math.floor(code / 100)}${fallback.enhanced.slice(1)}`;
  } else if (enhanced[0] !== String(Math.floor(code / 100))) {
    return { ok: false, message: `the enhanced code ${enhanced} must start with ${Math.floor(code / 100)} to go with ${code} (RFC 3463)` };
  }
  return { ok: true, refusal: { ...fallback, code, enhanced, text: body || fallback.text } };
}

/** "550 5.7.1 Text": a refusal as the client reads it. */
export function formatRefusal(r: Refusal): string {
  return `${r.code} ${r.enhanced} ${r.text}`;
}

/** The refusal when a policy limit rule's bucket is over its rate. */
export function limitRefusal(req: LimitRequest, msBeforeNext: number): Refusal {
  const text = `Policy limit "${req.rule}" reached (${formatRate(req.rate)}, counted per ${req.per}); try again in ${retrySeconds(msBeforeNext)} seconds`;
  // At connect a 421 closes the connection; elsewhere 451 4.7.1 (RFC 3463: delivery not authorized, temporary).
  return req.stage === 'connect' ? policyRefusal(421, '4.7.0', text, 'rate_limited') : policyRefusal(451, '4.7.1', text, 'rate_limited');
}
