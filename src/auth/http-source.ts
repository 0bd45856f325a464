/**
 * `auth.backend: http`: an HTTP hook decides, in the spirit of nginx's auth_http but in JSON.
 * The organisation writes a small service that checks the password wherever its accounts live
 * and answers allow / deny; smtpgate asks it for each sign-in, and whether a user exists for a
 * sign-in with an app password (a lookup).
 *
 * The request, for each AUTH:
 *
 *   POST <auth.http.url>                   (the URL as configured, path and query kept)
 *   Content-Type: application/json
 *   Accept: application/json
 *   Authorization: Bearer <token>          (only when auth.http.tokenFile is set)
 *
 *   {"user": "alice", "password": "…", "mechanism": "PLAIN",
 *    "client": {"address": "192.0.2.10", "session": "<smtpgate's session id>"},
 *    "listener": "submission",
 *    "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}}
 *
 *   mechanism is "PLAIN" or "LOGIN"; tls is null when the client has none (AUTH is refused
 *   without TLS, so in practice it is always there). The password is only ever in the body:
 *   never in the URL or a header.
 *
 * The answer, always HTTP 200 with Content-Type: application/json:
 *
 *   {"result": "allow", "user": "alice", "addresses": ["alice@corp.example"], "groups": ["staff"]}
 *   {"result": "deny", "reason": "wrong password"}
 *
 *   result     "allow"     the password is right                         → signed in
 *              "deny"      the user exists, the password is wrong        → 535 (bad_credentials;
 *                          to a lookup: disabled, see below)
 *              "unknown"   no such user here: the next source is asked   → unknown_user
 *              "disabled"  the account is disabled or locked             → 535 (disabled)
 *              "tempfail"  the hook cannot decide now                    → 454 (unavailable)
 *   user       optional, with allow: the canonical login (e.g. the directory's spelling), which
 *              smtpgate then uses for limits, policy and the logs; else the login as typed.
 *   addresses  optional, with allow: the addresses the user may send as (sender binding):
 *              "alice@corp.example", or a wildcard "*@sales.corp.example" / "*"; lower-cased.
 *   groups     optional, with allow: the user's groups, for policy `group:` rules.
 *   reason     optional: a line for smtpgate's log (never shown to the client).
 *
 *   Omit a field rather than send null; other keys are ignored. When neither addresses nor
 *   groups is given, smtpgate takes it that the hook keeps none (auth.attributes may add them).
 *
 * Anything else is "unavailable" (the client gets 454 4.7.0 and may retry; it is never counted
 * as a wrong password), and never "allow": any status but 200 (401/403 mean the hook refused
 * smtpgate's token; redirects are not followed), another Content-Type, a body that is not
 * JSON, a field of the wrong type or shape, a body over 64 KiB, no complete answer within
 * auth.http.timeout (connecting, TLS, the request and the whole answer together), or a
 * connection or certificate error.
 *
 * A lookup, for a client that signed in with an app password (auth.credentials), which
 * smtpgate has already checked itself: the same POST with the same headers, and a body with
 * "lookup": true and no password, mechanism or tls keys:
 *
 *   {"lookup": true, "user": "alice",
 *    "client": {"address": "192.0.2.10", "session": "<smtpgate's session id>"},
 *    "listener": "submission"}
 *
 *   The hook says whether the account exists and may sign in, with the same answers:
 *   "allow" (with user, addresses and groups as for a sign-in), "unknown", "disabled" or
 *   "tempfail"; anything else is "unavailable", as above.
 *
 *   "deny" means nothing to a lookup, since there is no password to be wrong: it is what a
 *   hook written before lookups answers when it checks the missing password. smtpgate fails
 *   closed on it: the lookup is refused as "disabled" (535, counted as a failed sign-in, and
 *   final: no later source is asked), with a warning in the log that the hook answered deny
 *   to a lookup and so probably does not support lookups. A hook that supports lookups looks
 *   at "lookup" before anything else.
 *
 *   Anyone who can reach the hook could ask it which users exist: set auth.http.tokenFile, and
 *   let the hook answer only requests that carry the token.
 *
 * `smtpgate check --probe` sends the sign-in request, with the header `X-Smtpgate-Probe: 1`, for
 * the user "smtpgate-probe" with an empty password and PLAIN, client address 127.0.0.1, session
 * "probe", listener "probe" and tls null. The chain probes a source that is down every few
 * seconds, so a hook may want to answer that header cheaply. A well-formed "unknown", "deny" or
 * "disabled" proves the hook works; "tempfail" fails the probe (the hook is up but cannot
 * decide, so sign-ins would get 454), and so does "allow", since a hook that lets an empty
 * password in lets anyone in.
 *
 * Connections to the hook are kept alive and reused (an undici Pool of up to 16); none is
 * opened before the first sign-in, and one the hook closed is simply opened again.
 */
import { Pool, errors as undiciErrors } from 'undici';
import { z } from 'zod';
import type { HttpAuthConfig } from '../config/auth-section.js';
import type { Logger } from '../logging/logger.js';
import type { AuthOutcome, AuthRequest, Authenticator, LookupRequest, SourceDeps } from './authenticator.js';
import { ADDRESS_PATTERN, type UserAttributes } from './user-attributes.js';

/** A hook's answer is a few hundred bytes; more is a misbehaving hook, not a bigger answer. */
export const MAX_ANSWER_BYTES = 64 * 1024;
/** Sign-ins in flight to the hook at once; more wait their turn (inside their timeout). */
const MAX_CONNECTIONS = 16;
export const PROBE_USER = 'smtpgate-probe';

/** No control characters: these values end up in logs and in headers smtpgate adds. */
const printable = (max: number) =>
  z
    .string()
    .min(1)
    .max(max)
    .regex(/^[^\u0000-\u001f\u007f]+$/, 'expected no control characters');

const hookAnswer = z.object({
  result: z.enum(['allow', 'deny', 'unknown', 'disabled', 'tempfail']),
  user: printable(256).optional(),
  addresses: z.array(z.string().max(320).regex(ADDRESS_PATTERN, 'expected an address such as alice@corp.example or *@sales.corp.example')).optional(),
  groups: z.array(printable(256)).optional(),
  reason: z.string().max(1000).optional(),
});
type HookAnswer = z.output<typeof hookAnswer>;

type Exchange =
  | { readonly ok: true; readonly answer: HookAnswer; readonly ms: number }
  | { readonly ok: false; readonly detail: string; readonly fix: string };

export class HttpAuthenticator implements Authenticator {
  readonly kind = 'http';
  readonly #url: URL;
  readonly #path: string;
  readonly #timeout: number;
  readonly #token: string | undefined;
  readonly #pool: Pool;
  readonly #log: Logger;
  #closed: Promise<void> | undefined;

  constructor(config: HttpAuthConfig, deps: SourceDeps & { token: string | undefined; ca: Buffer | undefined }) {
    this.#url = new URL(config.url);
    this.#path = `${this.#url.pathname}${this.#url.search}`;
    this.#timeout = config.timeout;
    const token = deps.token?.trim();
    this.#token = token ? token : undefined;
    this.#log = deps.log.child({ source: this.kind });
    // Lazy: a Pool opens its first connection with its first request.
    this.#pool = new Pool(this.#url.origin, {
      connections: MAX_CONNECTIONS,
      // With ca undefined, Node's own CA store; the servername (SNI) is the URL's host name.
      connect: { timeout: config.timeout, ...(deps.ca ? { ca: deps.ca } : {}) },
      headersTimeout: config.timeout,
      bodyTimeout: config.timeout,
      maxResponseSize: MAX_ANSWER_BYTES,
    });
  }

  async authenticate(req: AuthRequest): Promise<AuthOutcome> {
    const body = {
      user: req.username,
      password: req.password,
      mechanism: req.mechanism,
      client: clientOf(req),
      listener: req.listener,
      tls: req.tls ? { version: req.tls.version, cipher: req.tls.cipher } : null,
    };
    return this.#ask(body, req, req.password, (said) => ({ ok: false, reason: 'bad_credentials', detail: said }));
  }

  /** Asks the hook whether the user exists and may sign in: a lookup request (see the top of this file). */
  async lookup(req: LookupRequest): Promise<AuthOutcome> {
    const body = { lookup: true, user: req.username, client: clientOf(req), listener: req.listener };
    return this.#ask(body, req, '', (said) => {
      // Fail closed: a hook that checked the absent password must not let anyone in, nor pass
      // the login on to a later source.
      const detail = `${said} (to a lookup, which has no password: the hook probably does not support lookups; refused as disabled)`;
      this.#log.warn({ user: req.username, session: req.sessionId, detail }, 'auth hook answered deny to a lookup');
      return { ok: false, reason: 'disabled', detail };
    });
  }

  /**
   * One request and what its answer means. Every answer means the same to a sign-in and a
   * lookup but "deny", which `denied` turns into an outcome. `password` is kept out of the
   * log and the details, whatever the hook quotes back.
   */
  async #ask(body: object, req: LookupRequest, password: string, denied: (said: string) => AuthOutcome): Promise<AuthOutcome> {
    const exchange = await this.#exchange(body, {});
    if (!exchange.ok) {
      const detail = redact(exchange.detail, password);
      this.#log.warn({ user: req.username, session: req.sessionId, detail }, 'auth hook unavailable');
      return { ok: false, reason: 'unavailable', detail };
    }
    const { answer, ms } = exchange;
    const said = `${this.#url.href} said ${answer.result}${answer.reason ? `: ${redact(answer.reason, password)}` : ''}`;
    this.#log.debug({ user: req.username, session: req.sessionId, result: answer.result, ms }, 'auth hook answered');
    switch (answer.result) {
      case 'allow':
        return { ok: true, user: { username: answer.user ?? req.username, ...attributesOf(answer) } };
      case 'deny':
        return denied(said);
      case 'unknown':
        return { ok: false, reason: 'unknown_user', detail: said };
      case 'disabled':
        return { ok: false, reason: 'disabled', detail: said };
      case 'tempfail':
        this.#log.warn({ user: req.username, session: req.sessionId, detail: said }, 'auth hook cannot decide now');
        return { ok: false, reason: 'unavailable', detail: said };
    }
  }

  async probe(): Promise<string> {
    const body = {
      user: PROBE_USER,
      password: '',
      mechanism: 'PLAIN',
      client: { address: '127.0.0.1', session: 'probe' },
      listener: 'probe',
      tls: null,
    };
    const exchange = await this.#exchange(body, { 'x-smtpgate-probe': '1' });
    if (!exchange.ok) throw new Error(`auth.http: ${exchange.detail}. ${exchange.fix}`);
    const { answer, ms } = exchange;
    if (answer.result === 'allow') {
      throw new Error(`auth.http: ${this.#url.href} allowed the made-up user ${PROBE_USER} with an empty password: the hook lets anyone in. Fix the hook before using it`);
    }
    // The hook is up but cannot decide (its own directory is down): sign-ins would get 454.
    if (answer.result === 'tempfail') {
      throw new Error(`auth.http: ${this.#url.href} answered "tempfail"${answer.reason ? ` (${answer.reason})` : ''}: it cannot decide now. See the hook's own logs`);
    }
    return `${this.#url.href} answered "${answer.result}" for the made-up user ${PROBE_USER} in ${ms} ms (a well-formed answer: the hook works${this.#token ? ' and took the token' : ''})`;
  }

  close(): Promise<void> {
    // Lets sign-ins in flight finish (each is bounded by the timeout), then closes the sockets.
    this.#closed ??= this.#pool.close();
    return this.#closed;
  }

  /** One POST and its answer, within the timeout; never throws. */
  async #exchange(body: object, extraHeaders: Record<string, string>): Promise<Exchange> {
    const started = performance.now();
    const where = this.#url.href;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.#timeout);
    try {
      const res = await this.#pool.request({
        path: this.#path,
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          accept: 'application/json',
          'user-agent': 'smtpgate',
          ...(this.#token ? { authorization: `Bearer ${this.#token}` } : {}),
          ...extraHeaders,
        },
        body: JSON.stringify(body),
        signal: abort.signal,
      });
      if (res.statusCode !== 200) {
        // Read and drop the body so the connection can carry the next request.
        await res.body.dump();
        return { ok: false, ...refusedStatus(where, res.statusCode, res.headers.location, this.#token !== undefined) };
      }
      const type = String(res.headers['content-type'] ?? '');
      if (!/^application\/json\s*(;|$)/i.test(type)) {
        await res.body.dump();
        return { ok: false, detail: `${where} answered with Content-Type ${type ? JSON.stringify(type) : 'none'}, not application/json`, fix: ANSWER_FIX };
      }
      const bytes = Buffer.from(await res.body.arrayBuffer());
      let json: unknown;
      try {
        json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
      } catch (err) {
        return { ok: false, detail: `${where} answered with a body that is not JSON (${(err as Error).message})`, fix: ANSWER_FIX };
      }
      const parsed = hookAnswer.safeParse(json);
      if (!parsed.success) {
        const issues = parsed.error.issues.slice(0, 3).map((i) => `${i.path.length ? i.path.join('.') : 'the answer'}: ${i.message}`);
        return { ok: false, detail: `${where} answered with a malformed answer (${issues.join('; ')})`, fix: ANSWER_FIX };
      }
      return { ok: true, answer: parsed.data, ms: Math.round(performance.now() - started) };
    } catch (err) {
      if (abort.signal.aborted) {
        return { ok: false, detail: `${where}: no complete answer within ${this.#timeout} ms`, fix: 'Check that the hook is up and answers quickly, or raise auth.http.timeout' };
      }
      return { ok: false, ...transportFailure(where, err) };
    } finally {
      clearTimeout(timer);
    }
  }
}

const ANSWER_FIX = 'The hook must answer HTTP 200, Content-Type: application/json, {"result": "allow"|"deny"|"unknown"|"disabled"|"tempfail", ...} (see src/auth/http-source.ts)';

/** Who is signing in, as the hook is told. */
function clientOf(req: LookupRequest): { address: string; session: string } {
  return { address: req.remoteAddress, session: req.sessionId };
}

function attributesOf(answer: HookAnswer): { attributes?: UserAttributes } {
  if (answer.addresses === undefined && answer.groups === undefined) return {};
  return { attributes: { addresses: (answer.addresses ?? []).map((a) => a.toLowerCase()), groups: answer.groups ?? [] } };
}

function refusedStatus(where: string, status: number, location: string | string[] | undefined, sentToken: boolean): { detail: string; fix: string } {
  if (status === 401 || status === 403) {
    return sentToken
      ? { detail: `${where} refused smtpgate's token (HTTP ${status})`, fix: 'Check that auth.http.tokenFile holds the token the hook expects' }
      : { detail: `${where} wants a token (HTTP ${status}) and none is set`, fix: 'Set auth.http.tokenFile to a file holding the hook\'s token' };
  }
  if (status >= 300 && status < 400) {
    const to = typeof location === 'string' ? ` to ${location}` : '';
    return { detail: `${where} redirected${to} (HTTP ${status}); redirects are not followed`, fix: 'Put the final URL in auth.http.url' };
  }
  return { detail: `${where} answered HTTP ${status}`, fix: status >= 500 ? 'The hook failed: see its own logs' : ANSWER_FIX };
}

function transportFailure(where: string, err: unknown): { detail: string; fix: string } {
  if (err instanceof undiciErrors.ResponseExceededMaxSizeError) {
    return { detail: `${where} answered with a body over ${MAX_ANSWER_BYTES} bytes`, fix: ANSWER_FIX };
  }
  const e = innermost(err);
  const code = typeof e.code === 'string' ? e.code : undefined;
  const message = `${code && !e.message.includes(code) ? `${code}: ` : ''}${e.message}`;
  if (code && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS/.test(code)) {
    return { detail: `${where}: TLS: ${message}`, fix: 'Give the CA that signed the hook\'s certificate in auth.http.ca, or check the certificate\'s name matches the URL' };
  }
  return { detail: `${where}: ${message}`, fix: 'Check that the hook is running and that auth.http.url is right' };
}

/** undici wraps socket errors; the innermost names what happened (ECONNREFUSED, a certificate error). */
function innermost(err: unknown): Error & { code?: unknown } {
  let e: unknown = err;
  while (e instanceof Error && e.cause instanceof Error) e = e.cause;
  return e instanceof Error ? e : new Error(String(e));
}

/** A hook's reason might quote what it was sent; the password never reaches a log. */
function redact(text: string, password: string): string {
  return password ? text.split(password).join('[password]') : text;
}
