/**
 * The auth routes of the admin HTTP address, with the same gate as the /limits routes
 * (browser-guard.ts: no browser pages, an IP or localhost Host without a token, the bearer
 * token with one):
 *
 * `smtpgate auth cache clear [--user NAME]`: the auth cache lives inside the running process
 * (in each worker, with `workers`), so the CLI reaches it here.
 *
 *   POST /auth/cache/clear   {"user": "alice"} or {}   →   {"cleared": 3}
 *                                                    or   409 {"error": "auth.cache is off …"}
 *
 * `smtpgate credential list` with the memory limits store: the last use of each app password
 * is kept in the running process (credential-usage.ts), so the CLI reads it here. With Redis
 * the CLI reads Redis itself; more than one worker needs Redis, so this is one process's table.
 *
 *   GET /auth/credentials/used   →   {"used": {"<usageField>": {"at": "2026-12-07T10:00:00.000Z", "client": "10.1.3.7"}}}
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { readAdminBody, refuseAdminRequest, type HttpRefusal } from '../limits/browser-guard.js';
import type { CredentialUse } from './credential-usage.js';

/** What clearing did: how many entries went (in every worker), or that there is no cache. */
export type CacheClearAnswer = { readonly cleared: number; readonly user?: string } | { readonly cacheOff: true };

export interface AuthAdminRouteOptions {
  readonly token?: string;
  /** A refusal other than a missing or wrong token: a browser page, or a rebindable Host. */
  readonly onRefused?: (refusal: HttpRefusal, req: IncomingMessage) => void;
}

export const AUTH_CACHE_CLEAR_PATH = '/auth/cache/clear';
export const CREDENTIALS_USED_PATH = '/auth/credentials/used';

const CACHE_OFF = 'auth.cache is off in this config: nothing is cached, so there is nothing to clear';

type Reply = (status: number, body: unknown) => void;

/**
 * A route for one path: `handle` runs once the request has passed the gate and uses `method`.
 * Answers false for any other path, so the admin server tries its next route.
 */
function gatedRoute(path: string, method: 'GET' | 'POST', opts: AuthAdminRouteOptions, handle: (req: IncomingMessage, reply: Reply) => void) {
  return (req: IncomingMessage, res: ServerResponse): boolean => {
    if (new URL(req.url ?? '/', 'http://admin.invalid').pathname !== path) return false;
    const reply: Reply = (status, body) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body) + '\n');
    const refused = refuseAdminRequest(req, opts.token);
    if (refused) {
      if (refused.status !== 401) opts.onRefused?.(refused, req);
      reply(refused.status, { error: refused.error });
    } else if (req.method !== method) {
      reply(405, { error: `use ${method}` });
    } else {
      handle(req, reply);
    }
    return true;
  };
}

export function authCacheAdminRoute(clear: (user: string | undefined) => Promise<CacheClearAnswer>, opts: AuthAdminRouteOptions = {}) {
  return gatedRoute(AUTH_CACHE_CLEAR_PATH, 'POST', opts, (req, reply) => {
    readAdminBody(req, (body) => {
      const user = (body as { user?: unknown } | undefined)?.user;
      if (user !== undefined && (typeof user !== 'string' || !user)) return reply(400, { error: 'expected "user" to be a non-empty string' });
      clear(user).then(
        (answer) => ('cacheOff' in answer ? reply(409, { error: CACHE_OFF }) : reply(200, answer)),
        (err: Error) => reply(503, { error: err.message }),
      );
    }, () => reply(400, { error: 'expected a JSON body {} or {"user": "NAME"}' }));
  });
}

/** GET /auth/credentials/used: every recorded app password use, by `usageField`. `list` is `CredentialUsage.list`. */
export function credentialUsageAdminRoute(list: () => Promise<Map<string, CredentialUse>>, opts: AuthAdminRouteOptions = {}) {
  return gatedRoute(CREDENTIALS_USED_PATH, 'GET', opts, (_req, reply) => {
    list().then(
      (used) => reply(200, { used: Object.fromEntries([...used].map(([field, u]) => [field, { at: u.at, client: u.client }])) }),
      (err: Error) => reply(503, { error: err.message }),
    );
  });
}

/** Client side, for the CLI. `base` is "http://127.0.0.1:9464". */
export async function requestAuthCacheClear(base: string, user: string | undefined, opts: { token?: string } = {}): Promise<{ cleared: number }> {
  const res = await fetch(new URL(AUTH_CACHE_CLEAR_PATH, base), {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...bearer(opts.token) },
    body: JSON.stringify(user === undefined ? {} : { user }),
  });
  return (await answerOf(res, `POST ${AUTH_CACHE_CLEAR_PATH}`)) as { cleared: number };
}

/**
 * Client side of GET /auth/credentials/used. Gives up after `timeoutMs` (5 s), since a caller
 * such as `credential list` goes on without the answer rather than hang on a stuck instance.
 */
export async function fetchCredentialUsage(base: string, opts: { token?: string; timeoutMs?: number } = {}): Promise<Map<string, CredentialUse>> {
  const res = await fetch(new URL(CREDENTIALS_USED_PATH, base), { headers: bearer(opts.token), signal: AbortSignal.timeout(opts.timeoutMs ?? 5_000) });
  if (res.status === 404) throw new Error(`GET ${CREDENTIALS_USED_PATH}: 404: this smtpgate does not serve it (an older version?)`);
  const { used } = (await answerOf(res, `GET ${CREDENTIALS_USED_PATH}`)) as { used: Record<string, CredentialUse> };
  return new Map(Object.entries(used).map(([field, u]) => [field, { at: u.at, client: u.client }]));
}

function bearer(token: string | undefined): Record<string, string> {
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** The parsed JSON of a 2xx answer; otherwise an Error naming the request, the status and the route's error text. */
async function answerOf(res: Response, request: string): Promise<unknown> {
  const text = await res.text();
  if (!res.ok) {
    let error = text.trim();
    try {
      error = (JSON.parse(text) as { error?: string }).error ?? error;
    } catch {
      /* not JSON: the text as it came */
    }
    throw new Error(`${request}: ${res.status}: ${error}`);
  }
  return JSON.parse(text);
}
