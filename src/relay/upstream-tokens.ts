/**
 * OAuth2 access tokens for the upstream mailboxes smtpgate signs in as (backend.auth with
 * mechanism XOAUTH2), one cache entry per mailbox. nodemailer's XOAuth2 is the token handler:
 * it builds the refresh-token request, signs a Google service account's JWT (RFC 7523) and
 * reads the answer; the client-credentials grant (Microsoft identity platform) goes through its
 * provisionCallback hook. Every request goes to the one configured token URL, through
 * token-endpoint.ts (XOAuth2.postRequest is replaced, so nodemailer's own fetch, which follows
 * redirects, is never used).
 *
 * What smtpgate adds around it:
 * - renewal before expiry: a token is renewed once less than `renewBefore` (at most a fifth of
 *   its lifetime) is left, so it never runs out between smtpgate's check and the upstream's;
 *   while a renewal fails, the old token serves as long as it is valid;
 * - one renewal per mailbox at a time: concurrent sessions wait for the same one (XOAuth2
 *   queues concurrent getToken calls too; smtpgate's own promise lets it count and back off
 *   once per attempt, not once per waiting session);
 * - no retry loop: a failed renewal is retried by a later message, not before a backoff
 *   (5 s, doubling up to 5 min) has passed; meanwhile sessions are refused at once;
 * - a token the upstream refused is dropped: the next message asks for a new one.
 */
import { createPrivateKey } from 'node:crypto';
import XOAuth2 from 'nodemailer/lib/xoauth2';
import type { OAuth2Grant } from '../config/backend-auth-section.js';
import type { TokenResult } from '../metrics/catalogue.js';
import type { SmtpReply } from './smtp-client.js';
import { TokenEndpoint } from './token-endpoint.js';


const BACKOFF_FIRST_MS = 5_000;
const BACKOFF_MAX_MS = 300_000;

/** The wait after the nth failure in a row: 5 s, doubling, at most 5 min. */
function backoff(failures: number): number {
  return Math.min(BACKOFF_FIRST_MS * 2 ** (failures - 1), BACKOFF_MAX_MS);
}

/** An RFC 6750 b64token: what can follow "Bearer " on the AUTH line. */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

/** Why smtpgate could not sign in to the upstream: the client gets 454 4.7.0 (try again later). */
export class UpstreamAuthError extends Error {
  /** token: the token endpoint failed; backoff: not asked, a recent failure; refused: the upstream refused the token. */
  readonly kind: 'token' | 'backoff' | 'refused';
  readonly mailbox: string;
  readonly reply?: SmtpReply;

  constructor(kind: 'token' | 'backoff' | 'refused', mailbox: string, message: string, reply?: SmtpReply) {
    super(message);
    this.name = 'UpstreamAuthError';
    this.kind = kind;
    this.mailbox = mailbox;
    if (reply) this.reply = reply;
  }
}

/** Where tokens come from, with the secrets read from their files (app.ts loads them). */
export interface TokenSettings {
  readonly grant: OAuth2Grant;
  readonly tokenUrl: string;
  readonly clientId?: string;
  readonly clientSecret?: string;
  /** refresh_token grant: each mailbox's refresh token. */
  readonly refreshTokens?: ReadonlyMap<string, string>;
  /** service_account grant: the key's client_email and private_key. */
  readonly serviceAccount?: { readonly clientEmail: string; readonly privateKey: string };
  readonly scope?: string;
  readonly timeoutMs: number;
  readonly renewBeforeMs: number;
}

export interface TokenEvents {
  /** Once per renewal attempt (issued, failed), refused session (backoff) or refused token (rejected). */
  onResult(result: TokenResult, mailbox: string, detail: { expiresInSeconds?: number; error?: string; retryInSeconds?: number }): void;
}

/** What a backend session needs: a token for a mailbox, and a way to report one refused. */
export interface TokenSource {
  token(mailbox: string): Promise<string>;
  accepted(mailbox: string): void;
  rejected(mailbox: string, reply: SmtpReply, challenge?: string): void;
}

interface MailboxTokens {
  readonly handler: XOAuth2;
  token?: string;
  /** Epoch ms; 0 when the endpoint gave no lifetime (then it is renewed only when refused). */
  expires: number;
  obtainedAt: number;
  renewal?: Promise<string>;
  failures: number;
  retryAt: number;
  lastError?: string;
}

/** Times are Date.now()'s: XOAuth2 computes a token's expiry with it, so there is one clock. */
export class UpstreamTokens implements TokenSource {
  readonly #settings: TokenSettings;
  readonly #events: TokenEvents;
  readonly #endpoint: TokenEndpoint;
  readonly #mailboxes = new Map<string, MailboxTokens>();

  constructor(settings: TokenSettings, events: TokenEvents) {
    this.#settings = settings;
    this.#events = events;
    this.#endpoint = new TokenEndpoint(settings.tokenUrl, settings.timeoutMs);
  }

  /** A valid token for `mailbox`, renewed when due; rejects with an UpstreamAuthError. */
  async token(mailbox: string): Promise<string> {
    const m = this.#entry(mailbox);
    const now = Date.now();
    if (m.token !== undefined && !this.#due(m, now)) return m.token;
    const usable = m.token !== undefined && (m.expires === 0 || m.expires > now) ? m.token : undefined;
    if (m.renewal) return m.renewal.catch((err: unknown) => this.#fallBack(usable, err));
    if (now < m.retryAt) {
      if (usable !== undefined) return usable;
      const retryInSeconds = Math.ceil((m.retryAt - now) / 1000);
      this.#events.onResult('backoff', mailbox, { error: m.lastError, retryInSeconds });
      throw new UpstreamAuthError('backoff', mailbox, `the last token request failed (${m.lastError ?? 'unknown error'}); the next is due in ${retryInSeconds} s`);
    }
    const renewal = this.#renew(mailbox, m);
    m.renewal = renewal;
    try {
      return await renewal.catch((err: unknown) => this.#fallBack(usable, err));
    } finally {
      m.renewal = undefined;
    }
  }

  /**
   * The upstream refused `mailbox`'s token (AUTH XOAUTH2 answered other than 235): it is
   * dropped, and the next session asks the endpoint for a new one. Never retried here. A
   * token refused right after a renewal (or a failure) means renewing does not help (the
   * mailbox lacks the permission, say): later sessions then wait out a backoff, as after a
   * failed renewal, instead of asking for a token per message.
   */
  rejected(mailbox: string, reply: SmtpReply, challenge?: string): void {
    const m = this.#entry(mailbox);
    m.token = undefined;
    m.expires = 0;
    m.failures++;
    const error = `${reply.code} ${reply.text}${challenge ? ` ${challenge}` : ''}`;
    m.lastError = `the backend refused the token: ${error}`;
    if (m.failures > 1) {
      const delay = backoff(m.failures - 1);
      m.retryAt = Date.now() + delay;
      this.#events.onResult('rejected', mailbox, { error, retryInSeconds: delay / 1000 });
    } else {
      this.#events.onResult('rejected', mailbox, { error });
    }
  }

  /** The upstream took `mailbox`'s token: whatever failed before is over. */
  accepted(mailbox: string): void {
    const m = this.#entry(mailbox);
    m.failures = 0;
    m.retryAt = 0;
    m.lastError = undefined;
  }

  close(): Promise<void> {
    return this.#endpoint.close();
  }

  #due(m: MailboxTokens, now: number): boolean {
    if (m.expires === 0) return false;
    const margin = Math.min(this.#settings.renewBeforeMs, (m.expires - m.obtainedAt) / 5);
    return now >= m.expires - margin;
  }

  #fallBack(usable: string | undefined, err: unknown): string {
    if (usable !== undefined) return usable;
    throw err;
  }

  async #renew(mailbox: string, m: MailboxTokens): Promise<string> {
    const started = Date.now();
    let token: string;
    try {
      token = await new Promise<string>((resolve, reject) => m.handler.getToken(true, (err, t) => (err ? reject(err) : resolve(t))));
      if (!B64TOKEN.test(token)) throw new Error('the token endpoint answered with an access token that is not an RFC 6750 b64token');
    } catch (err) {
      m.failures++;
      const delay = backoff(m.failures);
      m.retryAt = started + delay;
      m.lastError = err instanceof Error ? err.message : String(err);
      this.#events.onResult('failed', mailbox, { error: m.lastError, retryInSeconds: delay / 1000 });
      throw new UpstreamAuthError('token', mailbox, `no OAuth2 token for ${mailbox}: ${m.lastError}`);
    }
    // failures stay counted until the upstream takes the token (accepted()).
    m.token = token;
    m.obtainedAt = started;
    m.expires = m.handler.expires || 0;
    this.#events.onResult('issued', mailbox, m.expires ? { expiresInSeconds: Math.round((m.expires - started) / 1000) } : {});
    return token;
  }

  #entry(mailbox: string): MailboxTokens {
    let m = this.#mailboxes.get(mailbox);
    if (!m) {
      m = { handler: this.#handler(mailbox), expires: 0, obtainedAt: 0, failures: 0, retryAt: 0 };
      this.#mailboxes.set(mailbox, m);
    }
    return m;
  }

  #handler(mailbox: string): XOAuth2 {
    const s = this.#settings;
    const endpoint = this.#endpoint;
    switch (s.grant) {
      case 'client_credentials':
        // RFC 6749 §4.4: the app's own token; the mailbox it may send as is the upstream's business
        // (Exchange: the app's service principal with SMTP.SendAsApp and mailbox permission).
        return new EndpointXOAuth2(endpoint, {
          user: mailbox,
          provisionCallback: (_user, _renew, done) => {
            const form = { grant_type: 'client_credentials', client_id: s.clientId ?? '', client_secret: s.clientSecret ?? '', scope: s.scope ?? '' };
            endpoint.token(form).then(
              (a) => done(null, a.accessToken, a.expiresIn === undefined ? undefined : Date.now() + a.expiresIn * 1000),
              (err: Error) => done(err),
            );
          },
        });
      case 'refresh_token':
        return new EndpointXOAuth2(endpoint, {
          user: mailbox,
          clientId: s.clientId,
          ...(s.clientSecret === undefined ? {} : { clientSecret: s.clientSecret }),
          refreshToken: s.refreshTokens?.get(mailbox),
          accessUrl: s.tokenUrl,
          // RFC 6749 §6: a scope may narrow the grant; Microsoft wants it on every refresh.
          ...(s.scope === undefined ? {} : { customParams: { scope: s.scope } }),
        });
      case 'service_account':
        // RFC 7523: a JWT signed with the key, its `sub` the mailbox (domain-wide delegation).
        return new EndpointXOAuth2(endpoint, {
          user: mailbox,
          serviceClient: s.serviceAccount?.clientEmail,
          privateKey: s.serviceAccount?.privateKey,
          accessUrl: s.tokenUrl,
          scope: s.scope,
        });
    }
  }
}

/** XOAuth2 whose token requests go to smtpgate's TokenEndpoint (one URL, no redirects, bounded). */
class EndpointXOAuth2 extends XOAuth2 {
  readonly #endpoint: TokenEndpoint;

  constructor(endpoint: TokenEndpoint, options: XOAuth2.Options) {
    super(options);
    this.#endpoint = endpoint;
  }

  override postRequest(_url: string, payload: Record<string, unknown> | string | Buffer, _params: XOAuth2.Options, callback: (err: Error | null, body?: Buffer) => void): void {
    // XOAuth2 posts to its accessUrl, which is the endpoint's URL; the form is its fields as strings.
    const form = typeof payload === 'object' && !Buffer.isBuffer(payload) ? Object.fromEntries(Object.entries(payload).map(([k, v]) => [k, String(v)])) : Object.fromEntries(new URLSearchParams(String(payload)));
    this.#endpoint.post(form).then(
      (body) => callback(null, body),
      (err: Error) => callback(err),
    );
  }
}

/** A Google service account key file (JSON): client_email and private_key, checked to be usable. */
export function parseServiceAccountKey(text: string): { clientEmail: string; privateKey: string } {
  let o: { client_email?: unknown; private_key?: unknown; type?: unknown };
  try {
    o = JSON.parse(text) as typeof o;
  } catch {
    throw new Error('expected the JSON key file the Google Cloud console downloads (Service accounts → Keys → Add key → JSON)');
  }
  if (typeof o.client_email !== 'string' || typeof o.private_key !== 'string') throw new Error('expected a service account key with client_email and private_key');
  try {
    createPrivateKey(o.private_key);
  } catch (err) {
    throw new Error(`private_key is not a usable private key: ${(err as Error).message}`);
  }
  return { clientEmail: o.client_email, privateKey: o.private_key };
}
