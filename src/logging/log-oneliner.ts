/**
 * A log record as one line for a terminal, in the manner of Postfix's mail log:
 *
 *   2026-12-07T11:00:00.123+01:00 AbC12: client=192.0.2.7, sasl_username=alice, helo=laptop,
 *     from=<alice@corp.example>, size=1234, message-id=<x@laptop>,
 *     to=<bob@corp.example> 250 2.1.5, to=<gone@corp.example> 550 5.1.1 backend_refused,
 *     relay=10.0.0.5:25, queue_id=4dQ2x71zKz3Yxm, status=sent (250 2.0.0 Ok: queued as 4dQ2x71zKz3Yxm)
 *   2026-12-07T11:00:05.001+01:00 Xy9Zq: reject: AUTH from 192.0.2.9: 535 5.7.8 Authentication
 *     credentials invalid; reason=auth_failed, user=alice, result=wrong_password, source=file
 *
 * (each on one line). Every value that came from a client (EHLO name, addresses, user names,
 * reply texts the backend echoed) is escaped: a control character, a C1 control, a Unicode line
 * or paragraph separator or a bidi override never reaches the terminal raw, so a hostile name
 * can neither run terminal escape sequences nor forge a line of its own. Values that could be
 * read as another field (a space, a comma, a quote) are quoted.
 */
import { clientOf, usersOf } from './log-search.js';
import type { LogRecord } from './log-line.js';

/**
 * C0 controls, DEL, C1 controls (0x9b is a CSI on some terminals), the Unicode line and
 * paragraph separators and the bidi embedding, override and isolate marks (Trojan Source,
 * CVE-2021-42574), and the backslash that starts an escape.
 */
const UNSAFE = /[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\\]/g;

/** Escapes what must not reach a terminal raw: `\n`, `\x1b`, `\u202e`, `\\`. */
export function escapeForTerminal(s: string): string {
  return s.replace(UNSAFE, (c) => {
    if (c === '\\') return '\\\\';
    if (c === '\n') return '\\n';
    if (c === '\r') return '\\r';
    if (c === '\t') return '\\t';
    const code = c.charCodeAt(0);
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/** A value in `key=value`: as it is when it can't be mistaken for more fields, else quoted. */
function word(v: unknown): string {
  const s = typeof v === 'string' ? v : v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v);
  const safe = escapeForTerminal(s);
  return /^[^\s,;"=<>()]+$/.test(safe) ? safe : `"${safe.replace(/"/g, '\\"')}"`;
}

/** An envelope address as Postfix shows it, `<a@b>` (`<>` for the null sender), its brackets never forged. */
function address(v: unknown): string {
  const s = escapeForTerminal(typeof v === 'string' ? v : '');
  return /^[^\s,;"<>()]*$/.test(s) ? `<${s}>` : `"<${s.replace(/"/g, '\\"')}>"`;
}

/** A Message-ID as Postfix shows it, `<x@y>`. */
function messageId(v: unknown): string {
  return typeof v === 'string' && v.startsWith('<') && v.endsWith('>') ? address(v.slice(1, -1)) : word(v);
}

/** A text shown last, in parentheses: escaped, its parentheses kept balanced. */
function text(v: unknown): string {
  return escapeForTerminal(typeof v === 'string' ? v : String(v ?? '')).replace(/[()]/g, (c) => (c === '(' ? '\\x28' : '\\x29'));
}

/** The line's time: local with its offset (as rsyslog writes it), or UTC with `utc`. */
export function formatTime(at: number | undefined, utc: boolean): string {
  if (at === undefined) return '-';
  const d = new Date(at);
  if (utc) return d.toISOString();
  const offset = -d.getTimezoneOffset();
  const local = new Date(at + offset * 60_000).toISOString().slice(0, 23);
  const sign = offset >= 0 ? '+' : '-';
  const abs = Math.abs(offset);
  return `${local}${sign}${String(Math.floor(abs / 60)).padStart(2, '0')}:${String(abs % 60).padStart(2, '0')}`;
}

const TRANSACTION_STATUS: Record<string, string> = { relayed: 'sent', refused: 'refused', aborted: 'aborted', backend_failure: 'backend_failure' };

/** One line for a record: a transaction, a refusal, a lockout, a sign-in, or any other line. */
export function formatRecord(r: LogRecord, opts: { utc: boolean }): string {
  const head = `${formatTime(r.at, opts.utc)} ${r.session === undefined ? '-' : word(r.session)}:`;
  return `${head} ${body(r)}`;
}

function body(r: LogRecord): string {
  if (r.msg === 'transaction') return transaction(r);
  if (r.msg.startsWith('refused: ')) return refusal(r);
  if (r.msg.startsWith('AUTH lockout')) return lockout(r);
  if (r.msg === 'authenticated') return signIn(r);
  return other(r);
}

function pairs(fields: [string, unknown][]): string {
  // Names too: a generic line's come from the log, which anyone may have written to (logger(1)).
  return fields.filter(([, v]) => v !== undefined).map(([k, v]) => `${word(k)}=${word(v)}`).join(', ');
}

function transaction(r: LogRecord): string {
  const auth = r.auth as { method?: unknown; user?: unknown; credential?: unknown } | undefined;
  const tls = r.tls as { version?: unknown } | undefined;
  const parts = [
    pairs([
      ['client', clientOf(r)],
      ['sasl_username', auth?.user],
      ['credential', auth?.credential],
      ['trusted', r.trusted === true ? 'yes' : undefined],
      ['helo', r.helo],
      ['tls', tls?.version],
    ]),
    `from=${address(r.from)}`,
  ];
  if (r.size !== undefined) parts.push(`size=${word(r.size)}`);
  if (r.messageId !== undefined) parts.push(`message-id=${messageId(r.messageId)}`);
  if (Array.isArray(r.rcpt)) {
    for (const x of r.rcpt as { to?: unknown; code?: unknown; enhanced?: unknown; reason?: unknown; rule?: unknown }[]) {
      const verdict = [x.code, x.enhanced, x.reason].filter((v) => v !== undefined).map(word);
      if (x.rule !== undefined) verdict.push(`rule=${word(x.rule)}`);
      parts.push(`to=${address(x.to)}${verdict.length ? ' ' + verdict.join(' ') : ''}`);
    }
  }
  if (r.backend !== undefined) parts.push(`relay=${word(r.backend)}`);
  if (r.queueId !== undefined) parts.push(`queue_id=${word(r.queueId)}`);
  const outcome = typeof r.outcome === 'string' ? r.outcome : 'unknown';
  let status = `status=${TRANSACTION_STATUS[outcome] ?? word(outcome)}`;
  if (outcome !== 'relayed') {
    if (r.stage !== undefined) status += ` stage=${word(r.stage)}`;
    for (const v of [r.code, r.enhanced]) if (v !== undefined) status += ` ${word(v)}`;
    if (r.reason !== undefined) status += ` reason=${word(r.reason)}`;
    if (r.rule !== undefined) status += ` rule=${word(r.rule)}`;
  }
  if (r.reply !== undefined) status += ` (${text(r.reply)})`;
  parts.push(status);
  return parts.join(', ');
}

function refusal(r: LogRecord): string {
  const stage = typeof r.stage === 'string' ? r.stage.toUpperCase() : 'SESSION';
  const reply = [r.code, r.enhanced].filter((v) => v !== undefined).map(word).join(' ');
  const why = pairs([
    ['reason', r.reason],
    ['rule', r.rule],
    ['user', r.user],
    ['result', r.authResult],
    ['source', r.source],
    ['credential', r.credential],
    ['detail', r.detail],
  ]);
  const from = r.from === undefined ? '' : `, from=${address(r.from)}`;
  const to = r.to === undefined ? '' : `, to=${address(r.to)}`;
  return `reject: ${word(stage)} from ${word(clientOf(r) ?? 'unknown')}: ${reply} ${text(r.msg.slice('refused: '.length))}; ${why}${from}${to}`;
}

function lockout(r: LogRecord): string {
  return `lockout: ${pairs([
    ['client', clientOf(r)],
    ['user', r.scope === 'ip' ? undefined : usersOf(r)[0]],
    ['scope', r.scope],
    ['failures', r.failures],
    ['lock', typeof r.lockSeconds === 'number' ? `${r.lockSeconds}s` : undefined],
  ])}`;
}

function signIn(r: LogRecord): string {
  return pairs([
    ['client', clientOf(r)],
    ['sasl_method', r.mechanism],
    ['sasl_username', r.user],
    ['credential', r.credential],
    ['source', r.source],
  ]);
}

/** Fields every line has, left out of a generic line: they are its head already. */
const HEAD_FIELDS = new Set(['level', 'time', 'app', 'session', 'msg', 'at', 'levelName', 'pid', 'hostname']);

function other(r: LogRecord): string {
  const rest = pairs(Object.entries(r).filter(([k]) => !HEAD_FIELDS.has(k)));
  return `${word(r.levelName)}: ${text(r.msg)}${rest ? '; ' + rest : ''}`;
}
