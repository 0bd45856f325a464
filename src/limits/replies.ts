/**
 * What a limit answers. Pure: (which limit, its rate, time to wait) → Refusal.
 *
 * A limit answers *temporarily* (RFC 3463 class 4): 421 4.7.0 at connect and AUTH-disconnect,
 * 454 4.7.0 for AUTH during a lockout (RFC 4954 §6), 451 4.7.1 for MAIL/RCPT, 452 4.5.3 for
 * too many recipients in one message (RFC 5321 §4.5.3.1.10). The text names the limit and,
 * where there is one, the time to retry in seconds. Only a suspended account gets a permanent
 * answer: a person has to act.
 */
import { refusal, type Refusal, type RefusalReason } from '../reply.js';
import { formatRate, retrySeconds, type Rate } from './rate.js';
import type { Stage } from '../stage.js';

/** The reasons a limit gives its refusals (a subset of REFUSAL_REASONS, src/reply.ts). */
export const LIMIT_REFUSAL_REASONS = ['rate_limited', 'too_many_connections', 'locked_out', 'suspended', 'too_many_recipients', 'limiter_unavailable'] as const satisfies readonly RefusalReason[];
export type LimitRefusalReason = (typeof LIMIT_REFUSAL_REASONS)[number];

function limitRefusal(code: number, enhanced: string, text: string, reason: LimitRefusalReason): Refusal {
  return refusal(code, enhanced, text, reason);
}

/** Concurrency has no window; this is the hint a client gets to come back. */
export const CONCURRENCY_RETRY_SECONDS = 30;

/** Every limit smtpgate applies, by the name used in metrics (`limiter` label) and store keys. */
export const LIMITER_NAMES = [
  'connection_rate',
  'concurrent_ip',
  'concurrent_listener',
  'auth_ip',
  'auth_user_ip',
  'suspension',
  'messages_user',
  'messages_sender',
  'messages_ip',
  'recipients_user',
  'recipients_message',
  'bytes_user',
  'brake',
  'policy',
  /** Not a limit: the claim on a suspension's one notice (src/notifications/), kept beside the suspension. */
  'suspension_notice',
] as const;
export type LimiterName = (typeof LIMITER_NAMES)[number];

export function connectionRateRefusal(rate: Rate, msBeforeNext: number): Refusal {
  return limitRefusal(
    421,
    '4.7.0',
    `Too many connections from your address (limit ${formatRate(rate)}); try again in ${retrySeconds(msBeforeNext)} seconds`,
    'rate_limited',
  );
}

export function concurrentIpRefusal(limit: number): Refusal {
  return limitRefusal(
    421,
    '4.7.0',
    `Too many open connections from your address (limit ${limit}); try again in ${CONCURRENCY_RETRY_SECONDS} seconds`,
    'too_many_connections',
  );
}

export function concurrentListenerRefusal(limit: number): Refusal {
  return limitRefusal(421, '4.7.0', `Too many open connections to this service (limit ${limit}); try again in ${CONCURRENCY_RETRY_SECONDS} seconds`, 'too_many_connections');
}

export type LockoutScope = 'ip' | 'user_ip';

export function lockedOutRefusal(scope: LockoutScope, msBeforeNext: number): Refusal {
  const who = scope === 'ip' ? 'from your address' : 'for this user from your address';
  return limitRefusal(454, '4.7.0', `Too many failed logins ${who}; try again in ${retrySeconds(msBeforeNext)} seconds`, 'locked_out');
}

/** After a few AUTH attempts during a lockout: smtp-server closes the connection after a 421. */
export function lockedOutDisconnect(msBeforeNext: number): Refusal {
  return limitRefusal(421, '4.7.0', `Too many login attempts during a lockout; closing connection, try again in ${retrySeconds(msBeforeNext)} seconds`, 'locked_out');
}

/** RFC 4954 §6: 535 5.7.8 at AUTH. The reason is given only to someone who knew the password. */
export function suspendedAuthRefusal(): Refusal {
  return limitRefusal(535, '5.7.8', 'Account suspended after repeatedly exceeding its sending quota; contact your administrator', 'suspended');
}

/** At MAIL/RCPT for a session that authenticated before the suspension. */
export function suspendedMailRefusal(): Refusal {
  return limitRefusal(550, '5.7.1', 'Account suspended after repeatedly exceeding its sending quota; nothing is relayed, contact your administrator', 'suspended');
}

const QUOTA_TEXT: Record<'messages_user' | 'messages_sender' | 'messages_ip' | 'recipients_user' | 'bytes_user', string> = {
  messages_user: 'Message limit for your account reached',
  messages_sender: 'Message limit for this sender address reached',
  messages_ip: 'Message limit for your address reached',
  recipients_user: 'Recipient limit for your account reached',
  bytes_user: 'Sending volume limit for your account reached',
};

export type QuotaLimiter = keyof typeof QUOTA_TEXT;

export function quotaRefusal(limiter: QuotaLimiter, rate: Rate, msBeforeNext: number): Refusal {
  const unit = limiter === 'bytes_user' ? 'bytes' : 'count';
  return limitRefusal(451, '4.7.1', `${QUOTA_TEXT[limiter]} (${formatRate(rate, unit)}); try again in ${retrySeconds(msBeforeNext)} seconds`, 'rate_limited');
}

export function tooManyRecipientsRefusal(limit: number): Refusal {
  return limitRefusal(452, '4.5.3', `Too many recipients for one message (limit ${limit}); send the rest in another message`, 'too_many_recipients');
}

/** onStoreFailure: deny. The code fits the stage: 421 closes at connect, 454 is AUTH's temporary failure, 451 elsewhere. */
export function limiterUnavailableRefusal(stage: Stage): Refusal {
  const text = 'Rate limiter temporarily unavailable; try again in 60 seconds';
  switch (stage) {
    case 'connect':
      return limitRefusal(421, '4.3.0', text, 'limiter_unavailable');
    case 'auth':
      return limitRefusal(454, '4.3.0', text, 'limiter_unavailable');
    default:
      return limitRefusal(451, '4.3.0', text, 'limiter_unavailable');
  }
}
