/**
 * What `smtpgate log grep` looks for, and whether a record is it. Pure: the options are parsed
 * into a query once, and each record is judged on its own fields.
 *
 * The mail log's events are the records a mail admin looks through: each transaction
 * (`"msg":"transaction"`), each refusal outside a transaction (connect, tls, auth: a refusal
 * at mail, rcpt or data is in its transaction's record already), each lockout, each sign-in.
 * `all` widens that to every line of smtpgate's.
 */
import { CidrSet, parseCidr } from '../parsing/cidr.js';
import { parseDuration } from '../parsing/units.js';
import type { LogRecord } from './log-line.js';

export interface LogQuery {
  readonly user?: string;
  readonly address?: string;
  readonly client?: CidrSet;
  readonly messageId?: string;
  readonly queueId?: string;
  readonly session?: string;
  /** Milliseconds since the epoch, inclusive. */
  readonly since?: number;
  /** Milliseconds since the epoch, exclusive. */
  readonly until?: number;
  /** Every line of smtpgate's, not only the mail log's events. */
  readonly all?: boolean;
}

/** The options as the command line gives them. */
export interface LogQueryOptions {
  readonly user?: string;
  readonly address?: string;
  readonly client?: string;
  readonly messageId?: string;
  readonly queueId?: string;
  readonly session?: string;
  readonly since?: string;
  readonly until?: string;
  readonly all?: boolean;
  readonly utc?: boolean;
}

export class LogQueryError extends Error {}

/** The query, or a LogQueryError naming the option and what it takes. */
export function parseLogQuery(opts: LogQueryOptions, now: number): LogQuery {
  const q: { -readonly [K in keyof LogQuery]: LogQuery[K] } = {};
  if (opts.user !== undefined) q.user = opts.user.toLowerCase();
  if (opts.address !== undefined) q.address = stripBrackets(opts.address).toLowerCase();
  if (opts.client !== undefined) {
    const cidr = parseCidr(opts.client);
    if (!cidr) throw new LogQueryError(`--client: expected an IP address or a CIDR range (192.0.2.7, 10.0.0.0/8, 2001:db8::/32), found "${opts.client}"`);
    q.client = new CidrSet([cidr]);
  }
  if (opts.messageId !== undefined) q.messageId = stripBrackets(opts.messageId);
  if (opts.queueId !== undefined) q.queueId = opts.queueId;
  if (opts.session !== undefined) q.session = opts.session;
  if (opts.since !== undefined) q.since = parseWhen('--since', opts.since, now, opts.utc ?? false);
  if (opts.until !== undefined) q.until = parseWhen('--until', opts.until, now, opts.utc ?? false);
  if (opts.all) q.all = true;
  return q;
}

/**
 * A moment: a time ago (`90s`, `15m`, `1h`, `2d`), or a date and time (`2026-12-07`,
 * `2026-12-07 10:30`, `2026-12-07T10:30:00Z`, `…+01:00`). Without a zone it is local time, or
 * UTC with `--utc`, the zone the lines are shown in.
 */
export function parseWhen(option: string, text: string, now: number, utc: boolean): number {
  const ago = parseDuration(text);
  if (ago !== undefined) return now - ago;
  const m = /^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?)(Z|[+-]\d{2}:?\d{2})?)?$/i.exec(text.trim());
  const at = m ? Date.parse(`${m[1]}T${m[2] ?? '00:00'}${m[3] ?? (utc ? 'Z' : '')}`) : NaN;
  if (!Number.isFinite(at)) {
    throw new LogQueryError(`${option}: expected a time ago (30m, 1h, 2d) or a date and time (2026-12-07, "2026-12-07 10:30", 2026-12-07T10:30:00Z), found "${text}"`);
  }
  return at;
}

/** Is this a mail log event (see the top of the file)? */
export function isMailLogEvent(r: LogRecord): boolean {
  if (r.msg === 'transaction' || r.msg === 'authenticated') return true;
  if (r.msg.startsWith('AUTH lockout')) return true;
  if (r.msg.startsWith('refused: ')) return r.stage !== 'mail' && r.stage !== 'rcpt' && r.stage !== 'data';
  return false;
}

export function matchesQuery(r: LogRecord, q: LogQuery): boolean {
  if (!q.all && !isMailLogEvent(r)) return false;
  if (q.since !== undefined && (r.at === undefined || r.at < q.since)) return false;
  if (q.until !== undefined && (r.at === undefined || r.at >= q.until)) return false;
  if (q.session !== undefined && r.session !== q.session) return false;
  if (q.queueId !== undefined && r.queueId !== q.queueId) return false;
  if (q.messageId !== undefined && (typeof r.messageId !== 'string' || stripBrackets(r.messageId) !== q.messageId)) return false;
  if (q.user !== undefined && !usersOf(r).some((u) => u.toLowerCase() === q.user)) return false;
  if (q.address !== undefined && !addressesOf(r).some((a) => addressMatches(a, q.address!))) return false;
  if (q.client !== undefined) {
    const ip = clientOf(r);
    if (ip === undefined || !q.client.has(ip)) return false;
  }
  return true;
}

/** The client's address: the session's `client`, or the limits' `ip` on a lockout line. */
export function clientOf(r: LogRecord): string | undefined {
  return typeof r.client === 'string' ? r.client : typeof r.ip === 'string' ? r.ip : undefined;
}

/** The user a line names: the transaction's signed-in user, or a sign-in's or refusal's `user`. */
export function usersOf(r: LogRecord): string[] {
  const users: string[] = [];
  if (typeof r.user === 'string') users.push(r.user);
  const auth = r.auth as { user?: unknown } | undefined;
  if (auth && typeof auth.user === 'string') users.push(auth.user);
  return users;
}

/** The envelope addresses a line names: `from`, `to`, and each `rcpt[].to`. */
function addressesOf(r: LogRecord): string[] {
  const out: string[] = [];
  if (typeof r.from === 'string') out.push(r.from);
  if (typeof r.to === 'string') out.push(r.to);
  if (Array.isArray(r.rcpt)) for (const x of r.rcpt as { to?: unknown }[]) if (x && typeof x.to === 'string') out.push(x.to);
  return out;
}

/** `alice@corp.example` matches that address; `@corp.example` every address at the domain. Case aside. */
function addressMatches(address: string, wanted: string): boolean {
  const a = address.toLowerCase();
  return wanted.startsWith('@') ? a.endsWith(wanted) : a === wanted;
}

function stripBrackets(s: string): string {
  const t = s.trim();
  return t.startsWith('<') && t.endsWith('>') ? t.slice(1, -1) : t;
}
