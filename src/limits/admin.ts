/**
 * What `smtpgate limits list` and `smtpgate limits clear IP|USER` need.
 *
 * The pure half (summarize entries into a report, plan what a clear removes, format for a
 * terminal) is here; `Limits.listState()` and `Limits.clear()` run it against the store.
 *
 * How the CLI reaches the state:
 * - redis: it builds a `Limits` from the same config and asks Redis directly.
 * - memory: the state is inside the running process, so the CLI goes through the admin HTTP
 *   address: `limitsAdminRoutes` serves GET /limits and POST /limits/clear, and
 *   `fetchLimitsState` / `requestLimitsClear` are the client side.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { cidrContains, ipKey, parseCidr, parseIp, senderKey, splitUserIpKey, userKey, type Cidr } from './keys.js';
import { formatWindow, retrySeconds } from './rate.js';
import type { LimiterName } from './replies.js';
import type { StoredEntry } from './limiter-store.js';
import { readAdminBody, refuseAdminRequest, type HttpRefusal } from './browser-guard.js';

export interface LockedIp {
  readonly ip: string;
  readonly failures: number;
  readonly retryAfterSeconds: number;
}

export interface LockedUser {
  readonly user: string;
  readonly ip: string;
  readonly failures: number;
  readonly retryAfterSeconds: number;
}

/** A failure count still below its limit: failed logins in the current window. */
export interface FailureCount {
  /** The address (or IPv6 network) the failures came from. */
  readonly ip: string;
  /** Set for a per-user+address count. */
  readonly user?: string;
  readonly failures: number;
  readonly limit: number;
  readonly windowEndsInSeconds: number;
}

export interface SuspendedUser {
  readonly user: string;
  /** ISO time the brake suspended the account. */
  readonly since: string;
  /** ISO time it lifts by itself; null: until an admin clears it. */
  readonly until: string | null;
}

export interface TopSender {
  readonly user: string;
  readonly messages: number;
  readonly limit: number;
  readonly window: string;
  readonly windowEndsInSeconds: number;
}

export interface BrakeCount {
  readonly user: string;
  readonly quotaHits: number;
  readonly suspendAt: number;
}

export interface LimitsState {
  readonly generatedAt: string;
  readonly store: { readonly kind: string; readonly up: boolean };
  readonly lockedIps: readonly LockedIp[];
  readonly lockedUsers: readonly LockedUser[];
  /** Failed logins counted but not (yet) locked out, most first. */
  readonly failureCounts: readonly FailureCount[];
  readonly suspendedUsers: readonly SuspendedUser[];
  readonly topSenders: readonly TopSender[];
  /** Users on their way to a suspension. */
  readonly brake: readonly BrakeCount[];
}

/** The limiter names whose entries the listing reads. */
export const STATE_LIMITERS = ['auth_ip', 'auth_user_ip', 'suspension', 'messages_user', 'brake'] as const satisfies readonly LimiterName[];

export type StateEntries = Readonly<Record<(typeof STATE_LIMITERS)[number], readonly StoredEntry[]>>;

/** Pure: raw store entries → the report. A lockout is an entry at (or past) its limit. */
export function summarizeState(entries: StateEntries, opts: { now: number; top: number; store: { kind: string; up: boolean } }): LimitsState {
  const locked = (e: StoredEntry) => e.value >= e.points;
  const retry = (e: StoredEntry) => (e.msBeforeNext < 0 ? -1 : retrySeconds(e.msBeforeNext));
  const byRetry = <T extends { retryAfterSeconds: number }>(a: T, b: T) => b.retryAfterSeconds - a.retryAfterSeconds;
  return {
    generatedAt: new Date(opts.now).toISOString(),
    store: opts.store,
    lockedIps: entries.auth_ip
      .filter(locked)
      .map((e) => ({ ip: e.key, failures: e.value, retryAfterSeconds: retry(e) }))
      .sort(byRetry),
    lockedUsers: entries.auth_user_ip
      .filter(locked)
      .map((e) => ({ ...splitUserIpKey(e.key), failures: e.value, retryAfterSeconds: retry(e) }))
      .sort(byRetry),
    failureCounts: [
      ...entries.auth_ip.filter((e) => !locked(e) && e.value > 0).map((e) => ({ ip: e.key, failures: e.value, limit: e.points, windowEndsInSeconds: retry(e) })),
      ...entries.auth_user_ip
        .filter((e) => !locked(e) && e.value > 0)
        .map((e) => ({ ...splitUserIpKey(e.key), failures: e.value, limit: e.points, windowEndsInSeconds: retry(e) })),
    ]
      .sort((a, b) => b.failures - a.failures)
      .slice(0, opts.top),
    suspendedUsers: entries.suspension
      .map((e) => ({
        user: e.key,
        since: new Date(e.value * 1000).toISOString(),
        until: e.msBeforeNext < 0 ? null : new Date(opts.now + e.msBeforeNext).toISOString(),
      }))
      .sort((a, b) => a.since.localeCompare(b.since)),
    topSenders: [...entries.messages_user]
      .sort((a, b) => b.value - a.value)
      .slice(0, opts.top)
      .map((e) => ({ user: e.key, messages: e.value, limit: e.points, window: formatWindow(e.windowMs), windowEndsInSeconds: retry(e) })),
    brake: entries.brake.map((e) => ({ user: e.key, quotaHits: e.value, suspendAt: e.points })).sort((a, b) => b.quotaHits - a.quotaHits),
  };
}

export interface ClearPlan {
  readonly kind: 'ip' | 'user';
  /** The key the target maps to: the /64 network for IPv6, the lower-cased user. */
  readonly key: string;
  /** Which entries go, per limiter. */
  readonly match: Readonly<Partial<Record<LimiterName, (key: string) => boolean>>>;
}

/**
 * Pure: what `clear TARGET` removes. An address clears that client's lockouts and counters (an
 * IPv6 address: its network's, since that is where it is counted); a CIDR range clears those of
 * every address and network in it; anything else is a user, whose suspension, brake count,
 * lockouts from every address and quotas are cleared.
 */
export function planClear(target: string, ipv6Prefix: number): ClearPlan | undefined {
  const t = target.trim();
  if (!t) return undefined;
  const cidr = t.includes('/') ? parseCidr(t) : undefined;
  if (cidr) {
    const inRange = (k: string) => overlaps(cidr, k);
    return {
      kind: 'ip',
      key: cidrText(cidr),
      match: { auth_ip: inRange, auth_user_ip: (k) => inRange(splitUserIpKey(k).ip), connection_rate: inRange, messages_ip: inRange },
    };
  }
  if (parseIp(t)) {
    const key = ipKey(t, ipv6Prefix);
    const same = (k: string) => k === key;
    return {
      kind: 'ip',
      key,
      match: { auth_ip: same, auth_user_ip: (k) => splitUserIpKey(k).ip === key, connection_rate: same, messages_ip: same },
    };
  }
  const key = userKey(t);
  const same = (k: string) => k === key;
  const sender = senderKey(t);
  return {
    kind: 'user',
    key,
    match: {
      suspension: same,
      // The claim on the suspension's notice goes with it: the next suspension gets its own notice.
      suspension_notice: same,
      brake: same,
      auth_user_ip: (k) => splitUserIpKey(k).user === key,
      messages_user: same,
      recipients_user: same,
      bytes_user: same,
      // Logins are often addresses: the same text as a sender is cleared too.
      ...(sender?.includes('@') ? { messages_sender: (k: string) => k === sender } : {}),
    },
  };
}

/**
 * Whether a stored address key ("192.0.2.1", or an IPv6 network "2001:db8:1:2::/64") shares
 * addresses with the range: a range narrower than the network a client is counted in clears
 * that network's count, since the count can't be split.
 */
function overlaps(range: Cidr, storedKey: string): boolean {
  const stored = parseCidr(storedKey);
  if (!stored || stored.version !== range.version) return false;
  const wider = stored.prefix <= range.prefix ? stored : range;
  const narrower = wider === stored ? range : stored;
  return cidrContains(wider, { version: narrower.version, value: narrower.network });
}

/** "10.0.0.0/24", "2001:db8::/32": the range as its network address and prefix (ipKey writes either family). */
function cidrText(c: Cidr): string {
  if (c.version === 6) return ipKey(Array.from({ length: 8 }, (_, i) => ((c.network >> BigInt(112 - 16 * i)) & 0xffffn).toString(16)).join(':'), c.prefix);
  return `${[24n, 16n, 8n, 0n].map((s) => String((c.network >> s) & 0xffn)).join('.')}/${c.prefix}`;
}

export interface ClearResult {
  readonly target: string;
  readonly kind: 'ip' | 'user';
  /** The address, network, range or user the target stands for. */
  readonly key: string;
  readonly removed: readonly { readonly limiter: LimiterName; readonly key: string }[];
  /** What was removed, as `limits list` reports it (lockouts, counts, suspensions). */
  readonly cleared: LimitsState;
}

/** Pure: the report as a terminal table; `limits clear` prints what it removed the same way, under its own heading. */
export function formatLimitsState(s: LimitsState, heading = `limits state at ${s.generatedAt} (store: ${s.store.kind}, ${s.store.up ? 'up' : 'DOWN'})`): string {
  const lines: string[] = [heading];
  const section = (title: string, rows: string[]) => {
    lines.push('', `${title}:`);
    lines.push(...(rows.length ? rows.map((r) => `  ${r}`) : ['  (none)']));
  };
  const when = (secs: number) => (secs < 0 ? 'until cleared' : `${secs}s left`);
  section('locked-out addresses', s.lockedIps.map((l) => `${l.ip}  ${l.failures} failures  ${when(l.retryAfterSeconds)}`));
  section('locked-out users', s.lockedUsers.map((l) => `${l.user} from ${l.ip}  ${l.failures} failures  ${when(l.retryAfterSeconds)}`));
  section(
    'failed logins (current window)',
    s.failureCounts.map((c) => `${c.user === undefined ? c.ip : `${c.user} from ${c.ip}`}  ${c.failures}/${c.limit} failures  window ends in ${c.windowEndsInSeconds}s`),
  );
  section('suspended users', s.suspendedUsers.map((u) => `${u.user}  since ${u.since}  ${u.until ? `until ${u.until}` : 'until cleared'}`));
  section('top senders (current window)', s.topSenders.map((t) => `${t.user}  ${t.messages}/${t.limit} per ${t.window}  window ends in ${t.windowEndsInSeconds}s`));
  section('quota hits towards a suspension', s.brake.map((b) => `${b.user}  ${b.quotaHits} of ${b.suspendAt}`));
  return lines.join('\n');
}

/** Pure: `limits clear`'s report: what the target stood for, then what was removed in `limits list`'s format. */
export function formatClearResult(r: ClearResult): string {
  const n = r.removed.length;
  const report = formatLimitsState(r.cleared, `cleared ${n} ${n === 1 ? 'entry' : 'entries'} for ${r.target} (${r.kind} ${r.key}) at ${r.cleared.generatedAt} (store: ${r.cleared.store.kind})`);
  // Counters the list does not report (connection, message and recipient rates) are named, so every removal is shown.
  const listed: readonly LimiterName[] = STATE_LIMITERS;
  const others = r.removed.filter((e) => !listed.includes(e.limiter)).map((e) => `${e.limiter}  ${e.key}`);
  return others.length ? `${report}\n\nother counters:\n${others.map((o) => `  ${o}`).join('\n')}` : report;
}

/** What the HTTP routes need from the running app. */
export interface LimitsAdmin {
  listState(opts?: { top?: number }): Promise<LimitsState>;
  clear(target: string): Promise<ClearResult>;
}

/**
 * Routes for the admin HTTP server: GET /limits (the state as JSON) and POST /limits/clear
 * with body {"target": "..."}. Returns false for any other path, so the caller can go on.
 * With `token`, both need "Authorization: Bearer <token>"; without it, bind the admin address
 * to loopback only, since clearing a lockout is a privileged act.
 */
export function limitsAdminRoutes(admin: LimitsAdmin, opts: { token?: string; onRefused?: (refusal: HttpRefusal, req: IncomingMessage) => void } = {}) {
  return (req: IncomingMessage, res: ServerResponse): boolean => {
    const url = new URL(req.url ?? '/', 'http://admin.invalid');
    if (url.pathname !== '/limits' && url.pathname !== '/limits/clear') return false;
    const reply = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body) + '\n');
    };
    // CSRF, DNS rebinding and the token: see browser-guard.ts.
    const refused = refuseAdminRequest(req, opts.token);
    if (refused) {
      if (refused.status !== 401) opts.onRefused?.(refused, req);
      reply(refused.status, { error: refused.error });
      return true;
    }
    if (url.pathname === '/limits') {
      if (req.method !== 'GET') {
        reply(405, { error: 'use GET' });
        return true;
      }
      const top = Number(url.searchParams.get('top') ?? 10);
      admin.listState({ top: Number.isInteger(top) && top > 0 ? Math.min(top, 1000) : 10 }).then(
        (s) => reply(200, s),
        (err: Error) => reply(503, { error: err.message }),
      );
      return true;
    }
    if (req.method !== 'POST') {
      reply(405, { error: 'use POST' });
      return true;
    }
    const bad = () => reply(400, { error: 'expected a JSON body {"target": "IP or USER"}' });
    readAdminBody(req, (body) => {
      const target = (body as { target?: unknown } | undefined)?.target;
      if (typeof target !== 'string' || !target.trim()) return bad();
      admin.clear(target).then(
        (r) => reply(200, r),
        (err: Error) => reply(err instanceof RangeError ? 400 : 503, { error: err.message }),
      );
    }, bad);
    return true;
  };
}

/** Client side of GET /limits, for the CLI with a memory store. `base` is "http://127.0.0.1:9464". */
export async function fetchLimitsState(base: string, opts: { token?: string; top?: number } = {}): Promise<LimitsState> {
  const res = await fetch(new URL(`/limits?top=${opts.top ?? 10}`, base), { headers: authHeader(opts.token) });
  if (!res.ok) throw new Error(`GET /limits: ${res.status} ${await res.text()}`);
  return (await res.json()) as LimitsState;
}

/** Client side of POST /limits/clear. */
export async function requestLimitsClear(base: string, target: string, opts: { token?: string } = {}): Promise<ClearResult> {
  const res = await fetch(new URL('/limits/clear', base), {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...authHeader(opts.token) },
    body: JSON.stringify({ target }),
  });
  if (!res.ok) throw new Error(`POST /limits/clear: ${res.status} ${await res.text()}`);
  return (await res.json()) as ClearResult;
}

function authHeader(token: string | undefined): Record<string, string> {
  return token ? { authorization: `Bearer ${token}` } : {};
}
