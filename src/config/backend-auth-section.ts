/**
 * The `backend.auth:` section: how smtpgate itself signs in to the backend. Either fixed
 * credentials (PLAIN or LOGIN), or OAuth2 (XOAUTH2) for an upstream that no longer takes
 * passwords (Microsoft 365, Google Workspace):
 *
 *   backend:
 *     auth:
 *       mechanism: XOAUTH2
 *       user: relay@example.com            # the mailbox mail goes out as, unless a rule says otherwise
 *       oauth2:
 *         grant: client_credentials        # or refresh_token, service_account
 *         tokenUrl: https://login.microsoftonline.com/TENANT/oauth2/v2.0/token
 *         clientId: 00000000-0000-0000-0000-000000000000
 *         clientSecretFile: /etc/smtpgate/oauth-client-secret
 *         scope: https://outlook.office365.com/.default
 *       mailboxes:                         # first match wins
 *         - { listener: printers, user: scanner@example.com }
 *         - { group: erp, user: erp@example.com }
 *
 * Secrets are only ever read from files. Relative paths are resolved against the config
 * file's folder (`backendAuthSection(baseDir)`).
 */
import { z } from 'zod';
import { isLoopbackHost } from '../parsing/cidr.js';
import { duration } from './auth-section.js';
import { filePathIn } from './file-path.js';

export const OAUTH2_GRANTS = ['client_credentials', 'refresh_token', 'service_account'] as const;
export type OAuth2Grant = (typeof OAUTH2_GRANTS)[number];

/** Google's scope for SMTP (and IMAP/POP) with a service account's delegated token. */
export const GOOGLE_MAIL_SCOPE = 'https://mail.google.com/';

/** No CR, LF or NUL (they would end the AUTH line), and no ^A (it separates XOAUTH2's fields). */
const mailbox = z
  .string()
  .min(1)
  .regex(/^[^\r\n\0\x01]+$/, 'must not contain CR, LF, NUL or \\x01');

/**
 * The token endpoint: https, or http to this machine only (a test's or a local broker's). The
 * client secret and refresh token travel in the request body, so never in cleartext over a network.
 */
const tokenUrl = z.string().superRefine((value, ctx) => {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    ctx.addIssue({ code: 'custom', message: `expected a URL such as https://login.microsoftonline.com/TENANT/oauth2/v2.0/token, found ${JSON.stringify(value)}` });
    return;
  }
  const host = url.hostname.replace(/^\[|\]$/g, '');
  if (url.protocol === 'https:' || (url.protocol === 'http:' && isLoopbackHost(host))) return;
  ctx.addIssue({ code: 'custom', message: `expected an https:// URL (http:// only to this machine: the client secret travels in the request), found ${JSON.stringify(value)}` });
});

export function backendAuthSection(baseDir: string) {
  const filePath = filePathIn(baseDir);

  const oauth2 = z
    .object({
      /**
       * client_credentials: the app's own token (Microsoft identity platform, SMTP.SendAsApp);
       * refresh_token: a user's consent, renewed with its refresh token; service_account: a
       * Google service account's signed JWT with domain-wide delegation, one token per mailbox.
       */
      grant: z.enum(OAUTH2_GRANTS),
      /** The only URL smtpgate asks for tokens; redirects are not followed. */
      tokenUrl,
      clientId: z.string().min(1).optional(),
      clientSecretFile: filePath.optional(),
      refreshTokenFile: filePath.optional(),
      /** A Google service account key (the JSON file the console downloads: client_email, private_key). */
      keyFile: filePath.optional(),
      scope: z.string().min(1).optional(),
      /** Longest wait for the token endpoint's answer. */
      timeout: duration.default(10_000),
      /**
       * How long before its expiry a token is renewed (at most a fifth of its lifetime), so that
       * a token never runs out between smtpgate's check and the upstream's.
       */
      renewBefore: duration.default(300_000),
    })
    .strict()
    .superRefine((o, ctx) => {
      const need = (field: keyof typeof o, why: string) => {
        if (o[field] === undefined) ctx.addIssue({ code: 'custom', path: [field], message: `grant ${o.grant} needs ${field}: ${why}` });
      };
      const forbid = (field: keyof typeof o) => {
        if (o[field] !== undefined) ctx.addIssue({ code: 'custom', path: [field], message: `grant ${o.grant} does not use ${field}; remove it` });
      };
      switch (o.grant) {
        case 'client_credentials':
          need('clientId', 'the application (client) ID of the app registration');
          need('clientSecretFile', 'a file holding the client secret');
          need('scope', 'for Exchange Online, https://outlook.office365.com/.default');
          forbid('refreshTokenFile');
          forbid('keyFile');
          break;
        case 'refresh_token':
          need('clientId', 'the OAuth client ID the refresh token was issued to');
          need('refreshTokenFile', 'a file holding the refresh token of backend.auth.user');
          forbid('keyFile');
          break;
        case 'service_account':
          need('keyFile', 'the service account key file (JSON, with client_email and private_key)');
          forbid('clientSecretFile');
          forbid('refreshTokenFile');
          break;
      }
    });

  const mailboxRule = z
    .object({
      /** Sessions on this listener (a printers' listener, say). */
      listener: z.string().min(1).optional(),
      /** Sessions of a signed-in user in this group (auth.attributes or the directory's groups). */
      group: z.string().min(1).optional(),
      /** The upstream mailbox their mail goes out as. */
      user: mailbox,
      /** refresh_token grant: this mailbox's own refresh token (each user consents for themselves). */
      refreshTokenFile: filePath.optional(),
    })
    .strict()
    .refine((r) => r.listener !== undefined || r.group !== undefined, { message: 'give listener, group or both: the rule says whose mail goes out as this mailbox' });

  return z
    .object({
      /** The mailbox smtpgate signs in as (with XOAUTH2: unless a mailboxes rule matches). */
      user: mailbox,
      password: z.string().regex(/^[^\r\n\0]*$/, 'must not contain CR, LF or NUL').optional(),
      passwordFile: filePath.optional(),
      mechanism: z.enum(['PLAIN', 'LOGIN', 'XOAUTH2']).default('PLAIN'),
      oauth2: oauth2.optional(),
      mailboxes: z.array(mailboxRule).default([]),
    })
    .strict()
    .superRefine((a, ctx) => {
      if (a.mechanism !== 'XOAUTH2') {
        if ((a.password === undefined) === (a.passwordFile === undefined)) ctx.addIssue({ code: 'custom', message: 'give exactly one of password or passwordFile' });
        if (a.oauth2) ctx.addIssue({ code: 'custom', path: ['oauth2'], message: `oauth2 is for mechanism: XOAUTH2, not ${a.mechanism}; set mechanism: XOAUTH2 or remove oauth2` });
        if (a.mailboxes.length > 0) ctx.addIssue({ code: 'custom', path: ['mailboxes'], message: `mailboxes need mechanism: XOAUTH2 (with ${a.mechanism}, smtpgate has one password for one mailbox)` });
        return;
      }
      for (const field of ['password', 'passwordFile'] as const) {
        if (a[field] !== undefined) ctx.addIssue({ code: 'custom', path: [field], message: `mechanism XOAUTH2 signs in with a token, not a password; remove ${field} and configure oauth2` });
      }
      if (!a.oauth2) {
        ctx.addIssue({ code: 'custom', path: ['oauth2'], message: 'mechanism XOAUTH2 needs an oauth2 section (grant, tokenUrl and the grant\'s credentials); see README "Sending through Microsoft 365 or Google"' });
        return;
      }
      a.mailboxes.forEach((r, i) => {
        if (a.oauth2!.grant === 'refresh_token' && r.refreshTokenFile === undefined && r.user !== a.user) {
          ctx.addIssue({ code: 'custom', path: ['mailboxes', i, 'refreshTokenFile'], message: `a refresh token holds one user's consent: give mailbox ${r.user} its own refreshTokenFile` });
        }
        if (a.oauth2!.grant !== 'refresh_token' && r.refreshTokenFile !== undefined) {
          ctx.addIssue({ code: 'custom', path: ['mailboxes', i, 'refreshTokenFile'], message: `grant ${a.oauth2!.grant} does not use refreshTokenFile; remove it` });
        }
      });
    });
}

export type BackendAuthConfig = z.output<ReturnType<typeof backendAuthSection>>;
export type OAuth2Config = NonNullable<BackendAuthConfig['oauth2']>;
export type MailboxRule = BackendAuthConfig['mailboxes'][number];
