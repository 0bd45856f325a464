/**
 * The `auth:` section of the config file: where passwords are checked (`backend`, one source
 * or a list tried in order), each source's settings, and the auth cache.
 *
 *   auth:
 *     backend: [file, ldap]       # service accounts in the users file, then the directory
 *     users: /etc/smtpgate/users
 *     ldap: { url: ldaps://dc1.corp.example, bindDn: …, bindPasswordFile: …, userBase: … }
 *     cache: { ttl: 10m, negativeTtl: 30s }
 *
 * Relative paths are resolved against the config file's folder (`authSection(baseDir)`).
 */
import path from 'node:path';
import { FilterParser } from 'ldapts';
import { z } from 'zod';
import { parseDuration, parseHostPort } from '../parsing/units.js';
import { filePathIn } from './file-path.js';

export const AUTH_SOURCES = ['file', 'backend', 'ldap', 'dovecot', 'http'] as const;
export type AuthSourceKind = (typeof AUTH_SOURCES)[number];

/** The sources that answer from a directory (and so may carry the user's addresses and groups). */
export const DIRECTORY_SOURCES: ReadonlySet<AuthSourceKind> = new Set(['ldap', 'dovecot', 'http']);

/** A duration such as "30s" or "5m", in milliseconds. */
export const duration = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected a duration such as "5s", "10m" or "1h", found ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return ms;
});

/** An LDAP URL: ldaps:// (TLS from the first byte) or ldap:// (which must then use StartTLS). */
const ldapUrl = z.string().regex(/^ldaps?:\/\/[^\s/]+\/?$/i, 'expected an LDAP URL such as ldaps://dc1.corp.example:636 or ldap://ldap.corp.example:389 (no path or query)');

/** `{user}` in a filter or DN template is the login, escaped for its place (RFC 4515 / RFC 4514). */
const USER_PLACEHOLDER = '{user}';

export function authSection(baseDir: string) {
  const filePath = filePathIn(baseDir);

  const ldap = z
    .object({
      /** One server, or several tried in order; ldaps://, or ldap:// with startTls: true. */
      url: z.union([ldapUrl, z.array(ldapUrl).min(1, 'expected at least one LDAP URL')]).transform((u) => (Array.isArray(u) ? u : [u])),
      startTls: z.boolean().default(false),
      /** CA bundle for the directory's certificate (else the system's CAs). */
      ca: filePath.optional(),
      /** Certificate verification; off only for a lab, never silently. */
      verifyCertificate: z.boolean().default(true),
      /** Search-then-bind: the service account that looks users up. */
      bindDn: z.string().min(1).optional(),
      bindPasswordFile: filePath.optional(),
      /** Direct bind, no service account: the user's DN with {user}, e.g. "uid={user},ou=people,dc=example,dc=org". */
      userDnTemplate: z.string().includes(USER_PLACEHOLDER, { message: 'expected a DN with {user} in it, e.g. "uid={user},ou=people,dc=example,dc=org"' }).optional(),
      userBase: z.string().min(1).optional(),
      userFilter: z.string().includes(USER_PLACEHOLDER, { message: 'expected an LDAP filter with {user} in it, e.g. "(&(objectClass=user)(sAMAccountName={user}))"' }).default('(uid={user})'),
      /** Directory attributes holding the addresses a user may send as (AD's proxyAddresses: the SMTP:/smtp: values). */
      addressAttributes: z.array(z.string().min(1)).default(['mail']),
      /** The attribute listing the user's groups by DN (memberOf); a group is named in policy by its CN or its full DN. */
      groupAttribute: z.string().min(1).default('memberOf'),
      /** An LDAP filter an account must NOT match (e.g. "(pwdAccountLockedTime=*)"); AD's ACCOUNTDISABLE bit is always honoured. */
      disabledFilter: z.string().min(1).optional(),
      /** Per operation (connect, bind, search). */
      timeout: duration.default(5_000),
    })
    .strict()
    .superRefine((l, ctx) => {
      l.url.forEach((u, i) => {
        if (/^ldap:\/\//i.test(u) && !l.startTls) {
          ctx.addIssue({
            code: 'custom',
            path: ['url', ...(l.url.length > 1 ? [i] : [])],
            message: `${u} would send passwords in cleartext: use ldaps://, or set startTls: true`,
          });
        }
        if (/^ldaps:\/\//i.test(u) && l.startTls) {
          ctx.addIssue({ code: 'custom', path: ['startTls'], message: `${u} is already TLS (ldaps://): remove startTls, or use ldap:// with startTls: true` });
        }
      });
      // Caught here, with the file and line, rather than as "unavailable" at the first sign-in.
      for (const key of ['userFilter', 'disabledFilter'] as const) {
        const filter = l[key];
        if (filter === undefined) continue;
        try {
          FilterParser.parseString(filter.split(USER_PLACEHOLDER).join('x'));
        } catch (err) {
          ctx.addIssue({ code: 'custom', path: [key], message: `not an LDAP filter (RFC 4515): ${(err as Error).message}; expected e.g. "(uid={user})"` });
        }
      }
      const searches = l.bindDn !== undefined || l.bindPasswordFile !== undefined || l.userBase !== undefined;
      if (l.userDnTemplate === undefined) {
        for (const key of ['bindDn', 'bindPasswordFile', 'userBase'] as const) {
          if (l[key] === undefined) {
            ctx.addIssue({ code: 'custom', path: [key], message: `search-then-bind needs bindDn, bindPasswordFile and userBase (or give userDnTemplate for a direct bind)` });
          }
        }
      } else if (searches && (l.bindDn === undefined || l.bindPasswordFile === undefined)) {
        ctx.addIssue({ code: 'custom', path: ['bindDn'], message: 'with userDnTemplate, bindDn and bindPasswordFile go together (the service account reads the user\'s entry after the bind)' });
      }
    });

  /** A Dovecot auth socket: a unix path (absolute, or relative to the config file), or host:port. */
  const dovecotSocket = (example: string) =>
    z.string().min(1).transform((s, ctx) => {
      if (s.startsWith('/') || s.startsWith('.')) return { kind: 'unix' as const, path: path.resolve(baseDir, s) };
      const hp = parseHostPort(s);
      if (!hp) {
        ctx.addIssue({ code: 'custom', message: `expected a unix socket path (${example}) or host:port, found ${JSON.stringify(s)}` });
        return z.NEVER;
      }
      return { kind: 'inet' as const, host: hp.host, port: hp.port };
    });

  const dovecot = z
    .object({
      /** Dovecot's auth-client socket: a unix path, or host:port of an inet_listener. */
      socket: dovecotSocket('/run/dovecot/auth-client'),
      /**
       * Dovecot's auth-userdb socket (or auth-master), for looking users up without a password:
       * app passwords (auth.credentials) need it, since the auth-client socket can only check
       * passwords. smtpgate makes passdb lookups there, which Dovecot allows only when the socket
       * is not mode 0666, or smtpgate owns it or is in its group:
       *   service auth { unix_listener auth-userdb { mode = 0660  group = smtpgate } }
       * Or host:port of an `inet_listener auth-userdb`, which Dovecot gives full lookup rights to
       * anyone who reaches it: listen on loopback or a private network only.
       */
      lookupSocket: dovecotSocket('/run/dovecot/auth-userdb').optional(),
      /** The service name Dovecot's passdb sees (%s). */
      service: z.string().regex(/^[a-z0-9_-]{1,32}$/i, 'expected a service name such as smtp').default('smtp'),
      /** Per sign-in or lookup, connecting included. */
      timeout: duration.default(5_000),
    })
    .strict();

  const http = z
    .object({
      /** The hook's URL: https://, or http:// to this machine only (the password travels in the body). */
      url: z.string().url('expected a URL such as https://auth.corp.example/smtp'),
      /** Sent as "Authorization: Bearer <token>". */
      tokenFile: filePath.optional(),
      /** CA bundle for the hook's certificate (else the system's CAs). */
      ca: filePath.optional(),
      timeout: duration.default(5_000),
    })
    .strict()
    .superRefine((h, ctx) => {
      const u = new URL(h.url);
      if (u.protocol !== 'https:' && u.protocol !== 'http:') ctx.addIssue({ code: 'custom', path: ['url'], message: `expected an https:// URL, found ${u.protocol}` });
      if (u.protocol === 'http:' && !['localhost', '127.0.0.1', '[::1]'].includes(u.hostname)) {
        ctx.addIssue({ code: 'custom', path: ['url'], message: `${h.url} would send passwords in cleartext: use https:// (http:// is allowed to localhost only)` });
      }
      if (u.username || u.password) ctx.addIssue({ code: 'custom', path: ['url'], message: 'put no credentials in the URL: use tokenFile' });
    });

  const cache = z
    .object({
      /** How long a successful sign-in is remembered (0 turns caching of successes off). */
      ttl: duration.default(600_000),
      /** How long a failed one is remembered (0: never). */
      negativeTtl: duration.default(30_000),
      /** Entries kept at most; the least recently used go first. */
      size: z.number().int().min(1).max(10_000_000).default(100_000),
    })
    .strict();

  const backend = z.enum(AUTH_SOURCES);

  return z
    .object({
      /** Where passwords are checked: one source, or a list tried in order (see auth/chain.ts). */
      backend: z
        .union([backend, z.array(backend).min(1, 'expected at least one auth source')])
        .default('file')
        .transform((b) => (Array.isArray(b) ? b : [b])),
      users: filePath.optional(),
      /** YAML: per-user addresses (sender binding) and groups, for policy rules. */
      attributes: filePath.optional(),
      /** How often the users and attributes files are checked for changes. */
      reloadInterval: duration.default(5_000),
      ldap: ldap.optional(),
      dovecot: dovecot.optional(),
      http: http.optional(),
      cache: cache.optional(),
      /** App passwords (see auth/credentials-file.ts), written by `smtpgate credential add`; reloaded like the users file. */
      credentials: filePath.optional(),
      /** Users and groups whose directory password is refused: they sign in with an app password. */
      requireAppPassword: z
        .object({
          users: z.array(z.string().min(1)).default([]),
          groups: z.array(z.string().min(1)).default([]),
        })
        .strict()
        .optional(),
    })
    .strict()
    .superRefine((a, ctx) => {
      const at = (kind: AuthSourceKind) => ['backend', ...(a.backend.length > 1 ? [a.backend.indexOf(kind)] : [])];
      const seen = new Set<AuthSourceKind>();
      a.backend.forEach((kind, i) => {
        if (seen.has(kind)) ctx.addIssue({ code: 'custom', path: ['backend', i], message: `${kind} is listed twice` });
        seen.add(kind);
      });
      if (seen.has('file') && a.users === undefined) ctx.addIssue({ code: 'custom', path: ['users'], message: 'auth.backend: file needs auth.users (the htpasswd users file)' });
      for (const kind of ['ldap', 'dovecot', 'http'] as const) {
        if (seen.has(kind) && a[kind] === undefined) ctx.addIssue({ code: 'custom', path: [kind], message: `auth.backend names ${kind}, so an auth.${kind} section is required` });
        if (!seen.has(kind) && a[kind] !== undefined) ctx.addIssue({ code: 'custom', path: [kind], message: `auth.${kind} is set but auth.backend does not name ${kind}: add it to auth.backend, or remove this section` });
      }
      // The legacy server answers 535 alike for an unknown user and a wrong password, so after
      // it no other source could be asked: it can only be the last.
      if (seen.has('backend') && a.backend.at(-1) !== 'backend') {
        ctx.addIssue({ code: 'custom', path: at('backend'), message: 'backend (passthrough) must be the last source: the legacy server cannot tell an unknown user from a wrong password' });
      }
      if (a.requireAppPassword && a.credentials === undefined) {
        ctx.addIssue({ code: 'custom', path: ['requireAppPassword'], message: 'requireAppPassword needs auth.credentials (the app passwords file): without it those users could not sign in at all' });
      }
      if (a.requireAppPassword && a.requireAppPassword.users.length + a.requireAppPassword.groups.length === 0) {
        ctx.addIssue({ code: 'custom', path: ['requireAppPassword'], message: 'requireAppPassword names no users and no groups: list some, or remove it' });
      }
      // An app password's account is looked up without a password: each source must be able to.
      const ldapProblem = a.credentials !== undefined && a.ldap ? ldapLookupProblem(a.ldap) : undefined;
      if (ldapProblem) ctx.addIssue({ code: 'custom', path: ['ldap', a.ldap!.bindDn === undefined ? 'bindDn' : 'userDnTemplate'], message: `${ldapProblem.replace(/^auth\.ldap: /, '')} (auth.credentials needs it)` });
      const dovecotProblem = a.credentials !== undefined && a.dovecot ? dovecotLookupProblem(a.dovecot) : undefined;
      if (dovecotProblem) ctx.addIssue({ code: 'custom', path: ['dovecot', 'lookupSocket'], message: `${dovecotProblem.replace(/^auth\.dovecot: /, '')} (auth.credentials needs it)` });
      if (a.credentials !== undefined && a.backend.length === 1 && a.backend[0] === 'backend') {
        ctx.addIssue({ code: 'custom', path: ['credentials'], message: 'app passwords need a source that can look a user up without their password (file, ldap, dovecot or http); passthrough (backend) cannot' });
      }
      // A passthrough login is the session's own backend connection: it can't be remembered.
      if (seen.has('backend') && a.cache !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['cache'], message: 'auth.cache cannot be used with backend (passthrough): each session\'s backend connection must log in itself' });
      }
    });
}

/**
 * Why this LDAP section cannot look a user up without their password (for app passwords), as
 * a line naming the fix; undefined when it can. A lookup reads the user's entry as the service
 * account: direct bind has no other way in, since it binds as the user with their password.
 * The entry is read at the template's DN, so the template must be a DN: AD's
 * "{user}@corp.example" is a sign-in name with no entry at it. Pure, for the config check of
 * the sections that need lookups and for the LDAP source's lookup() itself.
 */
export function ldapLookupProblem(ldap: { readonly bindDn?: string | undefined; readonly userDnTemplate?: string | undefined }): string | undefined {
  const template = ldap.userDnTemplate;
  if (template === undefined) return undefined;
  if (ldap.bindDn === undefined) {
    return `auth.ldap: a lookup without the user's password needs a service account, and direct bind (userDnTemplate) has none: set bindDn and bindPasswordFile (a service account that may read the users' entries)`;
  }
  // RFC 4514 §3: a DN starts with an attribute type (a name or an OID) and "=".
  if (!/^\s*([A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)*)\s*=/.test(template)) {
    return `auth.ldap: userDnTemplate ${JSON.stringify(template)} is no DN, so there is no entry to read for a lookup without the user's password: use search-then-bind (userBase and a userFilter such as "(userPrincipalName={user}@corp.example)")`;
  }
  return undefined;
}

export type AuthConfig = z.output<ReturnType<typeof authSection>>;
export type LdapConfig = NonNullable<AuthConfig['ldap']>;
export type DovecotConfig = NonNullable<AuthConfig['dovecot']>;
export type HttpAuthConfig = NonNullable<AuthConfig['http']>;
export type AuthCacheConfig = NonNullable<AuthConfig['cache']>;

/**
 * Why this Dovecot section cannot look a user up without their password (for app passwords,
 * auth.credentials), as a line naming the fix; undefined when it can. The auth-client socket
 * only checks passwords; lookups need the auth-userdb socket (lookupSocket). Pure, for the
 * config check at start (a config that would answer every app-password sign-in with 454 is
 * refused instead) and for the Dovecot source's lookup() itself.
 */
export function dovecotLookupProblem(dovecot: { readonly lookupSocket?: unknown }): string | undefined {
  if (dovecot.lookupSocket !== undefined) return undefined;
  return (
    "auth.dovecot: a lookup without the user's password needs lookupSocket, Dovecot's auth-userdb socket (the auth-client socket can only check passwords): " +
    'set lookupSocket: /run/dovecot/auth-userdb, and let smtpgate make passdb lookups there: ' +
    "service auth { unix_listener auth-userdb { mode = 0660  group = <smtpgate's group> } }"
  );
}
