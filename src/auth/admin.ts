/**
 * `smtpgate auth cache clear [--user NAME]`: the auth cache lives inside the running process
 * (in each worker, with `workers`), so the CLI reaches it through the admin HTTP address, with
 * the same gate as the /limits routes (browser-guard.ts: no browser pages, an IP or localhost
 * Host without a token, the bearer token with one).
 *
 *   POST /auth/cache/clear   {"user": "alice"} or {}   →   {"cleared": 3}
 *                                                    or   409 {"error": "auth.cache is off …"}
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { readAdminBody, refuseAdminRequest, type HttpRefusal } from '../limits/browser-guard.js';

/** What clearing did: how many entries went (in every worker), or that there is no cache. */
export type CacheClearAnswer = { readonly cleared: number; readonly user?: string } | { readonly cacheOff: true };

export const AUTH_CACHE_CLEAR_PATH = '/auth/cache/clear';

const CACHE_OFF = 'auth.cache is off in this config: nothing is cached, so there is nothing to clear';

export function authCacheAdminRoute(clear: (user: string | undefined) => Promise<CacheClearAnswer>, opts: { token?: string; onRefused?: (refusal: HttpRefusal, req: IncomingMessage) => void } = {}) {
  return (req: IncomingMessage, res: ServerResponse): boolean => {
    if (new URL(req.url ?? '/', 'http://admin.invalid').pathname !== AUTH_CACHE_CLEAR_PATH) return false;
    const reply = (status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body) + '\n');
    const refused = refuseAdminRequest(req, opts.token);
    if (refused) {
      if (refused.status !== 401) opts.onRefused?.(refused, req);
      reply(refused.status, { error: refused.error });
      return true;
    }
    if (req.method !== 'POST') {
      reply(405, { error: 'use POST' });
      return true;
    }
    readAdminBody(req, (body) => {
      const user = (body as { user?: unknown } | undefined)?.user;
      if (user !== undefined && (typeof user !== 'string' || !user)) return reply(400, { error: 'expected "user" to be a non-empty string' });
      clear(user).then(
        (answer) => ('cacheOff' in answer ? reply(409, { error: CACHE_OFF }) : reply(200, answer)),
        (err: Error) => reply(503, { error: err.message }),
      );
    }, () => reply(400, { error: 'expected a JSON body {} or {"user": "NAME"}' }));
    return true;
  };
}

/** Client side, for the CLI. `base` is "http://127.0.0.1:9464". */
export async function requestAuthCacheClear(base: string, user: string | undefined, opts: { token?: string } = {}): Promise<{ cleared: number }> {
  const res = await fetch(new URL(AUTH_CACHE_CLEAR_PATH, base), {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}) },
    body: JSON.stringify(user === undefined ? {} : { user }),
  });
  const text = await res.text();
  if (!res.ok) {
    let error = text.trim();
    try {
      error = (JSON.parse(text) as { error?: string }).error ?? error;
    } catch {
      /* not JSON: the text as it came */
    }
    throw new Error(`POST ${AUTH_CACHE_CLEAR_PATH}: ${res.status}: ${error}`);
  }
  return JSON.parse(text) as { cleared: number };
}
