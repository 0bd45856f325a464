/**
 * backend.auth with mechanism XOAUTH2, read into what UpstreamTokens needs: the secrets from
 * their files (client secret, refresh tokens, a service account key), each problem reported
 * with the file and the config field that names it. Used at start, by `smtpgate check`, and
 * never with a secret written in the config itself.
 */
import { readFile } from 'node:fs/promises';
import { readSecretLine } from '../config/secret-file.js';
import type { BackendAuthConfig } from '../config/backend-auth-section.js';
import { GOOGLE_MAIL_SCOPE } from '../config/backend-auth-section.js';
import type { ConfigIssue } from '../parsing/errors.js';
import { parseServiceAccountKey, type TokenSettings } from './upstream-tokens.js';

export async function loadTokenSettings(auth: BackendAuthConfig | undefined): Promise<{ settings?: TokenSettings; issues: ConfigIssue[] }> {
  const issues: ConfigIssue[] = [];
  const o = auth?.mechanism === 'XOAUTH2' ? auth.oauth2 : undefined;
  if (!auth || !o) return { issues };
  const field = (name: string) => `backend.auth.oauth2.${name}`;
  const clientSecret = o.clientSecretFile ? await readSecretLine(o.clientSecretFile, field('clientSecretFile'), 'the OAuth2 client secret file', issues) : undefined;
  const refreshTokens = new Map<string, string>();
  if (o.grant === 'refresh_token') {
    const own = [{ user: auth.user, file: o.refreshTokenFile, path: field('refreshTokenFile') }];
    auth.mailboxes.forEach((r, i) => own.push({ user: r.user, file: r.refreshTokenFile ?? (r.user === auth.user ? o.refreshTokenFile : undefined), path: `backend.auth.mailboxes[${i}].refreshTokenFile` }));
    for (const { user, file, path } of own) {
      if (file === undefined || refreshTokens.has(user)) continue;
      const token = await readSecretLine(file, path, 'the refresh token file', issues);
      if (token !== undefined) refreshTokens.set(user, token);
    }
  }
  let serviceAccount: TokenSettings['serviceAccount'];
  if (o.keyFile) {
    try {
      serviceAccount = parseServiceAccountKey(await readFile(o.keyFile, 'utf8'));
    } catch (err) {
      issues.push({ file: o.keyFile, path: field('keyFile'), message: `cannot use the service account key: ${(err as Error).message}` });
    }
  }
  const scope = o.scope ?? (o.grant === 'service_account' ? GOOGLE_MAIL_SCOPE : undefined);
  const settings: TokenSettings = {
    grant: o.grant,
    tokenUrl: o.tokenUrl,
    ...(o.clientId === undefined ? {} : { clientId: o.clientId }),
    ...(clientSecret === undefined ? {} : { clientSecret }),
    ...(o.grant === 'refresh_token' ? { refreshTokens } : {}),
    ...(serviceAccount ? { serviceAccount } : {}),
    ...(scope === undefined ? {} : { scope }),
    timeoutMs: o.timeout,
    renewBeforeMs: o.renewBefore,
  };
  return { settings, issues };
}
