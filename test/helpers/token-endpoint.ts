/**
 * An OAuth2 token endpoint on loopback (node http), as Microsoft's and Google's answer:
 * the client-credentials grant (RFC 6749 §4.4), the refresh-token grant (§6) and the JWT
 * bearer grant of a Google service account (RFC 7523, its RS256 signature checked against the
 * key's public half). Tokens expire after `expiresIn` seconds, a refresh token can be revoked
 * (invalid_grant, and its access tokens stop working), and `check()` is what a backend asks
 * of a bearer token it is shown.
 */
import { createPublicKey, generateKeyPairSync, randomBytes, verify } from 'node:crypto';
import http from 'node:http';

export interface TokenRequest {
  readonly form: Record<string, string>;
  /** The JWT's claims, for the service account grant. */
  readonly claims?: Record<string, unknown>;
}

export interface IssuedToken {
  readonly token: string;
  readonly grant: string;
  /** The mailbox the token is for; undefined for an app's own token (client credentials: any mailbox it may send as). */
  readonly user?: string;
  readonly refreshToken?: string;
  readonly expiresAt: number;
}

export type TokenCheck = 'ok' | 'expired' | 'revoked' | 'unknown' | 'wrong_user';

export interface TokenEndpointOptions {
  /** Lifetime of an access token in seconds (expires_in). */
  expiresIn?: number;
  clientId?: string;
  clientSecret?: string;
  /** refresh token → the mailbox that consented. */
  refreshTokens?: Record<string, string>;
  /** The scope a client-credentials or service-account request must name. */
  scope?: string;
  /** Every answer, replacing the grant logic: a status and a body (a redirect, an HTTP 500 ...). */
  answer?: (req: TokenRequest) => { status: number; headers?: Record<string, string>; body: string } | undefined;
}

export interface TestTokenEndpoint {
  readonly url: string;
  readonly requests: TokenRequest[];
  readonly issued: IssuedToken[];
  /** A service account key file's JSON for this endpoint (its public half is trusted here). */
  readonly serviceAccountKey: string;
  readonly serviceAccountEmail: string;
  expiresIn: number;
  /** What a backend makes of `token` presented for `user`. */
  check(token: string, user: string): TokenCheck;
  /** The refresh token is refused from now on (invalid_grant), and the access tokens issued with it too. */
  revoke(refreshToken: string): void;
  close(): Promise<void>;
}

export async function startTokenEndpoint(opts: TokenEndpointOptions = {}): Promise<TestTokenEndpoint> {
  const requests: TokenRequest[] = [];
  const issued: IssuedToken[] = [];
  const revoked = new Set<string>();
  const { publicKey, privateKey } = serviceAccountKeyPair();
  const serviceAccountEmail = 'smtpgate@project.iam.gserviceaccount.com';
  const state = { expiresIn: opts.expiresIn ?? 3600 };
  let url = '';

  const issue = (grant: string, user?: string, refreshToken?: string) => {
    const token = `ya29.${randomBytes(24).toString('base64url')}`;
    issued.push({ token, grant, ...(user === undefined ? {} : { user }), ...(refreshToken === undefined ? {} : { refreshToken }), expiresAt: Date.now() + state.expiresIn * 1000 });
    return { status: 200, body: JSON.stringify({ access_token: token, token_type: 'Bearer', expires_in: state.expiresIn }) };
  };
  const error = (status: number, code: string, description: string) => ({ status, body: JSON.stringify({ error: code, error_description: description }) });

  const grant = (req: TokenRequest): { status: number; headers?: Record<string, string>; body: string } => {
    const f = req.form;
    switch (f.grant_type) {
      case 'client_credentials':
        if (f.client_id !== opts.clientId || f.client_secret !== opts.clientSecret) return error(401, 'invalid_client', 'AADSTS7000215: Invalid client secret provided.');
        if (opts.scope !== undefined && f.scope !== opts.scope) return error(400, 'invalid_scope', `AADSTS70011: scope ${f.scope} is not valid`);
        return issue('client_credentials');
      case 'refresh_token': {
        const user = opts.refreshTokens?.[f.refresh_token ?? ''];
        if (f.client_id !== opts.clientId || (opts.clientSecret !== undefined && f.client_secret !== opts.clientSecret)) return error(401, 'invalid_client', 'The OAuth client was not found.');
        if (!user || revoked.has(f.refresh_token!)) return error(400, 'invalid_grant', 'Token has been expired or revoked.');
        return issue('refresh_token', user, f.refresh_token);
      }
      case 'urn:ietf:params:oauth:grant-type:jwt-bearer': {
        const c = req.claims;
        if (!c) return error(400, 'invalid_grant', 'Invalid JWT Signature.');
        const now = Date.now() / 1000;
        if (c.iss !== serviceAccountEmail || c.aud !== url || typeof c.sub !== 'string' || Number(c.exp) < now) return error(400, 'invalid_grant', 'Invalid JWT: claims');
        if (opts.scope !== undefined && c.scope !== opts.scope) return error(400, 'invalid_scope', 'Invalid OAuth scope');
        return issue('jwt-bearer', c.sub);
      }
      default:
        return error(400, 'unsupported_grant_type', `grant_type ${f.grant_type}`);
    }
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const form = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
      const claims = form.assertion ? verifiedClaims(form.assertion, publicKey) : undefined;
      const request: TokenRequest = claims ? { form, claims } : { form };
      requests.push(request);
      const answer = (req.method === 'POST' ? opts.answer?.(request) : undefined) ?? (req.method === 'POST' ? grant(request) : { status: 405, body: '' });
      res.writeHead(answer.status, { 'content-type': 'application/json', ...answer.headers });
      res.end(answer.body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const addr = server.address();
  url = `http://127.0.0.1:${addr && typeof addr === 'object' ? addr.port : 0}/oauth2/v2.0/token`;

  return {
    url,
    requests,
    issued,
    serviceAccountEmail,
    serviceAccountKey: JSON.stringify({ type: 'service_account', client_email: serviceAccountEmail, private_key: privateKey }),
    get expiresIn() {
      return state.expiresIn;
    },
    set expiresIn(v: number) {
      state.expiresIn = v;
    },
    check(token, user) {
      const t = issued.find((i) => i.token === token);
      if (!t) return 'unknown';
      if (t.refreshToken !== undefined && revoked.has(t.refreshToken)) return 'revoked';
      if (t.expiresAt <= Date.now()) return 'expired';
      if (t.user !== undefined && t.user !== user) return 'wrong_user';
      return 'ok';
    },
    revoke(refreshToken) {
      revoked.add(refreshToken);
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

let keyPair: { publicKey: string; privateKey: string } | undefined;

/** One RSA key pair per test file: generating one takes a while on a busy machine. */
function serviceAccountKeyPair(): { publicKey: ReturnType<typeof createPublicKey>; privateKey: string } {
  keyPair ??= generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
  return { publicKey: createPublicKey(keyPair.publicKey), privateKey: keyPair.privateKey };
}

/** The claims of an RS256 JWT whose signature the key verifies; undefined if it doesn't. */
function verifiedClaims(jwt: string, publicKey: ReturnType<typeof createPublicKey>): Record<string, unknown> | undefined {
  const [header, payload, signature] = jwt.split('.');
  if (!header || !payload || !signature) return undefined;
  if ((JSON.parse(Buffer.from(header, 'base64url').toString()) as { alg?: string }).alg !== 'RS256') return undefined;
  if (!verify('RSA-SHA256', Buffer.from(`${header}.${payload}`), publicKey, Buffer.from(signature, 'base64url'))) return undefined;
  return JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>;
}
