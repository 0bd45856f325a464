/**
 * The one reply type. Every refusal smtpgate makes is a `Refusal` value; the same value
 * becomes the SMTP reply line, the `reason` label of a metric and the log line.
 */

/** Bounded set of refusal reasons: used as a Prometheus label, so never free text. */
export const REFUSAL_REASONS = [
  'tls_required',
  'auth_required',
  'auth_failed',
  'auth_malformed',
  'auth_unavailable',
  'app_password_required',
  'relay_denied',
  'backend_refused',
  'backend_unavailable',
  'backend_timeout',
  'backend_failed',
  'backend_auth',
  'smuggling',
  'message_too_big',
  'param_unsupported',
  'syntax',
  'protocol',
  'timeout',
  'client_aborted',
  'shutting_down',
  'proxy_protocol',
  'rate_limited',
  'too_many_connections',
  'locked_out',
  'suspended',
  'too_many_recipients',
  'limiter_unavailable',
  'policy',
  'sender_binding',
  'internal',
] as const;

export type RefusalReason = (typeof REFUSAL_REASONS)[number];

export interface Refusal {
  /** Three-digit SMTP reply code (RFC 5321 §4.2). */
  readonly code: number;
  /** Enhanced status code (RFC 3463), e.g. "5.7.1". */
  readonly enhanced: string;
  readonly text: string;
  readonly reason: RefusalReason;
}

export function refusal(code: number, enhanced: string, text: string, reason: RefusalReason): Refusal {
  return { code, enhanced, text, reason };
}

/** "4xx" / "5xx": the bounded label for a reply code. */
export function codeClass(code: number): string {
  return `${Math.floor(code / 100)}xx`;
}

/**
 * smtp-server writes `${responseCode} ${message}`. The message carries our enhanced code
 * ("550 5.5.2 text"); the command guard stops smtp-server from adding one of its own.
 */
export interface SmtpServerError extends Error {
  responseCode: number;
  refusal: Refusal;
}

export function toServerError(r: Refusal): SmtpServerError {
  const err = new Error(r.enhanced ? `${r.enhanced} ${r.text}` : r.text) as SmtpServerError;
  err.responseCode = r.code;
  err.refusal = r;
  return err;
}

/** Reply text must never carry a line break into the reply stream. */
export function sanitizeReplyText(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
}
