/**
 * Every refusal smtpgate writes on its own, by name, grouped by the stage that makes it. Each
 * is a `Refusal` value (reply.ts): the reply, the metric's `reason` and the log line at once.
 * A code or a text is changed here, once. Refusals that depend on configuration live with it:
 * the limits' in limits/replies.ts, the policy rules' in policy/replies.ts.
 */
import { refusal, type Refusal } from './reply.js';
import { SMUGGLING_KIND_TEXT, type SmugglingKind } from './smuggling.js';

// ── any stage ──────────────────────────────────────────────────────────────────────────

const LOCAL_ERROR = 'Local error in processing, try again later';
/** A bug or a failed dependency inside smtpgate: the client retries later (RFC 3463 4.3.0). */
export const INTERNAL_ERROR = refusal(451, '4.3.0', LOCAL_ERROR, 'internal');
/** The same, where smtpgate closes the connection (before the greeting). */
export const INTERNAL_ERROR_CLOSING = refusal(421, '4.3.0', LOCAL_ERROR, 'internal');
/** RFC 3463 4.3.2: system not accepting network messages (a drain). */
export const SHUTTING_DOWN = refusal(421, '4.3.2', 'Service shutting down, try again later', 'shutting_down');
export const SESSION_TIME_LIMIT = refusal(421, '4.4.2', 'Session time limit reached, closing', 'timeout');
export const ERROR_BUDGET_SPENT = refusal(421, '4.7.0', 'Too many errors in this session, closing', 'protocol');

/** A 4xx/5xx smtp-server wrote itself (syntax, sequence, its own timeouts), seen on its way out. */
export function libraryRefusal(code: number, enhanced: string, text: string): Refusal {
  return refusal(code, enhanced, text, code === 421 && /timeout/i.test(text) ? 'timeout' : 'protocol');
}

// ── command lines (RFC 5321 §4.5.3.1, §2.3.8) ──────────────────────────────────────────────

export const LINE_TOO_LONG = refusal(500, '5.5.2', 'Line too long (RFC 5321 §4.5.3.1.4: 512 octets)', 'syntax');
export function mailLineTooLong(maxOctets: number): Refusal {
  return refusal(500, '5.5.2', `Line too long (a MAIL line may have ${maxOctets} octets with its parameters)`, 'syntax');
}
export const NUL_IN_COMMAND = refusal(500, '5.5.2', 'NUL byte in command', 'syntax');
export const CR_IN_COMMAND = refusal(501, '5.5.2', 'Bare CR in command', 'syntax');
export const EIGHT_BIT_IN_COMMAND = refusal(500, '5.5.2', '8-bit bytes are not allowed in this command', 'syntax');
export const BARE_LF_IN_COMMAND = refusal(521, '5.5.2', 'Bare LF received: SMTP command lines must end with CRLF (RFC 5321 §2.3.8)', 'syntax');
/** RFC 2920 §3.1: lines pipelined right behind a refused DATA. */
export const PIPELINING_AFTER_REFUSED_DATA = refusal(554, '5.5.0', 'SMTP protocol synchronization: commands sent right after a refused DATA', 'protocol');
export const BDAT_UNSUPPORTED = refusal(502, '5.5.1', 'BDAT (CHUNKING) is not supported; use DATA', 'syntax');
export function commandLineOverdue(deadline: string): Refusal {
  return refusal(421, '4.4.2', `Command line not completed within ${deadline}, closing`, 'timeout');
}
export function commandLineTooSlow(minRate: number): Refusal {
  return refusal(421, '4.4.2', `Command line arriving slower than ${minRate} bytes/s, closing`, 'timeout');
}

// ── tls ────────────────────────────────────────────────────────────────────────────────

export const TLS_HANDSHAKE_TIMEOUT = refusal(421, '4.4.2', 'TLS handshake timed out', 'timeout');
/** A client certificate that is required is missing or not trusted; `why` says which. */
export function clientCertificateRefused(why: string): Refusal {
  return refusal(554, '5.7.1', why, 'tls_required');
}

// ── auth (RFC 4954) ──────────────────────────────────────────────────────────────────────

/** AUTH before STARTTLS, answered by the command guard. */
export const AUTH_BEFORE_STARTTLS = refusal(538, '5.7.11', 'Encryption required for requested authentication mechanism: issue STARTTLS first', 'tls_required');
/** AUTH without TLS reaching the AUTH hook: the backstop behind AUTH_BEFORE_STARTTLS. */
export const AUTH_WITHOUT_TLS = refusal(538, '5.7.11', 'Encryption required for requested authentication mechanism', 'tls_required');
/** RFC 4954 §4. */
export const AUTH_IN_TRANSACTION = refusal(503, '5.5.1', 'AUTH not permitted during a mail transaction', 'protocol');
export const AUTH_BASE64_INVALID = refusal(501, '5.5.2', 'Invalid base64 data in AUTH exchange (RFC 4954)', 'auth_malformed');
export const AUTH_DATA_INVALID = refusal(501, '5.5.2', 'Invalid authentication data', 'auth_malformed');
export const AUTH_MECHANISM_UNKNOWN = refusal(504, '5.5.4', 'Unrecognized authentication type', 'auth_malformed');
export const AUTH_CREDENTIALS_INVALID = refusal(535, '5.7.8', 'Authentication credentials invalid', 'auth_failed');
export const AUTH_TEMPORARY_FAILURE = refusal(454, '4.7.0', 'Temporary authentication failure, try again later', 'auth_unavailable');
/**
 * A message whose first line is a continuation line (starts with a space or tab): behind the
 * headers smtpgate prepends, it would read as more of smtpgate's last header (an
 * X-Authenticated-User the client extends). RFC 5322 §2.2: a header block starts with a field.
 */
export const MESSAGE_STARTS_WITH_CONTINUATION = refusal(550, '5.6.0', 'Message must begin with a header field, not a continuation line', 'syntax');
/** auth.requireAppPassword: the user gave another password, which was not checked. */
export const AUTH_APP_PASSWORD_REQUIRED = refusal(535, '5.7.8', 'Authentication credentials invalid: this account must sign in with an app password; ask your mail administrator for one', 'app_password_required');

// ── mail and rcpt ────────────────────────────────────────────────────────────────────────

export const STARTTLS_REQUIRED = refusal(530, '5.7.0', 'Must issue a STARTTLS command first', 'tls_required');
export const AUTH_REQUIRED = refusal(530, '5.7.0', 'Authentication required', 'auth_required');
/** RFC 5321 §4.1.1.11; `keyword` only when it is a well-formed esmtp-keyword (never raw client bytes). */
export function parameterUnsupported(verb: 'MAIL' | 'RCPT', keyword: string | undefined): Refusal {
  return refusal(555, '5.5.4', `${verb === 'MAIL' ? 'MAIL FROM' : 'RCPT TO'} parameter ${keyword ? `${keyword} ` : ''}not recognized or not implemented`, 'param_unsupported');
}
export const PERCENT_OR_BANG_ROUTING = refusal(553, '5.1.3', 'Routing with "%" or "!" in the local part is not accepted', 'syntax');
/** RFC 6531 §3.4. */
export const NON_ASCII_WITHOUT_SMTPUTF8 = refusal(553, '5.6.7', 'Non-ASCII address without SMTPUTF8', 'param_unsupported');
export const BACKEND_LACKS_8BITMIME = refusal(555, '5.6.3', 'BODY=8BITMIME is not supported by the mail server behind this gateway', 'param_unsupported');
export const BACKEND_LACKS_SMTPUTF8 = refusal(553, '5.6.7', 'SMTPUTF8 is not supported by the mail server behind this gateway', 'param_unsupported');

// ── data ───────────────────────────────────────────────────────────────────────────────

export const DATA_TOO_LONG = refusal(421, '4.4.2', 'DATA took too long, closing', 'timeout');
export function dataTooSlow(minRate: number): Refusal {
  return refusal(421, '4.4.2', `Data rate below ${minRate} bytes/s, closing`, 'timeout');
}
/** A bare CR, bare LF or NUL in the message (SMTP smuggling): nothing is relayed. */
export function smugglingRefused(kind: SmugglingKind): Refusal {
  return refusal(550, '5.5.2', `Message refused: ${SMUGGLING_KIND_TEXT[kind]} in message (bare CR/LF and NUL are not allowed)`, 'smuggling');
}
/** RFC 5321 §4.5.3.1.6. */
export function messageLineTooLong(limit: number): Refusal {
  return refusal(550, '5.5.2', `Message refused: a line exceeds ${limit} octets (RFC 5321 §4.5.3.1.6)`, 'syntax');
}
export function messageTooBig(maxBytes: number): Refusal {
  return refusal(552, '5.3.4', `Message exceeds the maximum size of ${maxBytes} bytes`, 'message_too_big');
}
export const CLIENT_LEFT_DURING_DATA = refusal(421, '4.4.2', 'Connection lost during DATA', 'client_aborted');
/** For the metrics and the log only: a client that left gets no reply. */
export const CLIENT_GONE = refusal(421, '4.4.2', 'Connection lost', 'client_aborted');

// ── the backend ──────────────────────────────────────────────────────────────────────────

export const BACKEND_UNREACHABLE = refusal(451, '4.4.1', 'Mail server temporarily unreachable, try again later', 'backend_unavailable');
export const BACKEND_TIMED_OUT = refusal(451, '4.4.2', 'Mail server timed out, try again later', 'backend_timeout');
export const BACKEND_CONNECTION_FAILED = refusal(451, '4.4.2', 'Connection to the mail server failed, try again later', 'backend_failed');
/**
 * smtpgate could not sign in to the backend with OAuth2 (no token, or the token refused):
 * 454 as RFC 4954 §6 has it for a temporary authentication failure, so devices retry later.
 */
export const BACKEND_SIGN_IN_FAILED = refusal(454, '4.7.0', 'Temporary authentication failure at the mail server, try again later', 'backend_auth');

/** The backend's own 4xx/5xx, mirrored: same code, its enhanced code and text. Anything else is a confused backend. */
export function backendRefusal(reply: { readonly code: number; readonly enhanced?: string; readonly text: string }): Refusal {
  if (reply.code < 400 || reply.code > 599) {
    return refusal(451, '4.3.0', `Unexpected reply ${reply.code} from the mail server, try again later`, 'backend_failed');
  }
  const enhanced = reply.enhanced ?? (reply.code >= 500 ? '5.0.0' : '4.0.0');
  return refusal(reply.code, enhanced, reply.text || 'Refused by the mail server', 'backend_refused');
}
