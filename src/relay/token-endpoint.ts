/**
 * The one HTTP exchange of OAuth2 in smtpgate: a form POST to the configured token URL
 * (RFC 6749 §4.4 client credentials, §6 refresh, RFC 7523 JWT bearer) and its JSON answer.
 * Only that URL is ever contacted: redirects are not followed (undici's request() doesn't),
 * and the answer is bounded in time and size.
 */
import { Pool } from 'undici';

/** A token answer is a few KiB (Microsoft's JWTs are the largest); more is not a token answer. */
const MAX_ANSWER_BYTES = 64 * 1024;

/** A successful answer (RFC 6749 §5.1). */
export interface TokenAnswer {
  readonly accessToken: string;
  /** Lifetime in seconds, when the endpoint said (expires_in). */
  readonly expiresIn?: number;
}

export class TokenEndpoint {
  readonly #url: URL;
  readonly #timeout: number;
  readonly #pool: Pool;

  constructor(url: string, timeoutMs: number) {
    this.#url = new URL(url);
    this.#timeout = timeoutMs;
    // Lazy: no connection before the first request. Two connections: one renewal per mailbox at a time.
    this.#pool = new Pool(this.#url.origin, { connections: 2, connect: { timeout: timeoutMs }, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
  }

  get url(): string {
    return this.#url.href;
  }

  /**
   * POSTs `form` and returns the answer's body as it came, for a caller that parses it itself
   * (nodemailer's XOAuth2 does): a 2xx, or a 4xx whose JSON names an OAuth2 error (RFC 6749
   * §5.2: invalid_grant, invalid_client ...). Anything else rejects with an Error that says
   * what the endpoint did.
   */
  async post(form: Readonly<Record<string, string>>): Promise<Buffer> {
    const where = this.#url.href;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.#timeout);
    let status: number;
    let location: unknown;
    let body: Buffer;
    try {
      const res = await this.#pool.request({
        path: `${this.#url.pathname}${this.#url.search}`,
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json', 'user-agent': 'smtpgate' },
        body: new URLSearchParams(form).toString(),
        signal: abort.signal,
      });
      status = res.statusCode;
      location = res.headers.location;
      body = await readBounded(res.body);
    } catch (err) {
      throw new Error(abort.signal.aborted ? `${where}: no answer within ${this.#timeout} ms` : `${where}: ${innermost(err).message}`);
    } finally {
      clearTimeout(timer);
    }
    if (status >= 200 && status < 300) return body;
    if (status >= 300 && status < 400) {
      const to = typeof location === 'string' ? ` to ${location}` : '';
      throw new Error(`${where} redirected${to} (HTTP ${status}); redirects are not followed: put the final URL in backend.auth.oauth2.tokenUrl`);
    }
    if (oauthErrorOf(body) !== undefined) return body;
    throw new Error(`${where} answered HTTP ${status}`);
  }

  /** POSTs `form` and parses a token answer; an OAuth2 error rejects with "error: description". */
  async token(form: Readonly<Record<string, string>>): Promise<TokenAnswer> {
    return parseTokenAnswer(await this.post(form), this.#url.href);
  }

  close(): Promise<void> {
    return this.#pool.close();
  }
}

/** RFC 6749 §5.1 / §5.2: the access token and its lifetime, or the error the endpoint named. */
export function parseTokenAnswer(body: Buffer, where: string): TokenAnswer {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    throw new Error(`${where} answered with a body that is not JSON`);
  }
  const error = oauthErrorOf(body);
  if (error !== undefined) throw new Error(error);
  const o = json as { access_token?: unknown; expires_in?: unknown };
  if (typeof o.access_token !== 'string' || o.access_token === '') throw new Error(`${where} answered without an access_token`);
  const expiresIn = Number(o.expires_in);
  return Number.isFinite(expiresIn) && expiresIn > 0 ? { accessToken: o.access_token, expiresIn } : { accessToken: o.access_token };
}

/** "invalid_grant: AADSTS70000 …" for an RFC 6749 §5.2 error answer; undefined otherwise. */
function oauthErrorOf(body: Buffer): string | undefined {
  try {
    const o = JSON.parse(body.toString('utf8')) as { error?: unknown; error_description?: unknown };
    if (typeof o.error !== 'string') return undefined;
    return typeof o.error_description === 'string' ? `${o.error}: ${o.error_description.split(/\r?\n/)[0]}` : o.error;
  } catch {
    return undefined;
  }
}

async function readBounded(body: AsyncIterable<Buffer> & { destroy(err?: Error): unknown }): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > MAX_ANSWER_BYTES) {
      body.destroy();
      throw new Error(`the token endpoint answered with more than ${MAX_ANSWER_BYTES} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** undici wraps socket errors; the innermost names what happened (ECONNREFUSED, a certificate error). */
function innermost(err: unknown): Error {
  let e: unknown = err;
  while (e instanceof Error && e.cause instanceof Error) e = e.cause;
  return e instanceof Error ? e : new Error(String(e));
}
