/**
 * Builds the authenticator the config asks for: each source of `auth.backend` in order, in a
 * chain, with the cache in front when `auth.cache` is set. The secrets the sources need (the
 * LDAP service account's password, the HTTP hook's token, CA bundles) are read here, at config
 * load, so `smtpgate check` finds an unreadable one and names its config line.
 */
import { readFile } from 'node:fs/promises';
import type { AuthConfig, AuthSourceKind } from '../config/auth-section.js';
import { readSecretLine } from '../config/secret-file.js';
import type { ConfigIssue } from '../parsing/errors.js';
import type { Logger } from '../logging/logger.js';
import type { Authenticator } from './authenticator.js';
import { BackendAuthenticator } from './backend-authenticator.js';
import { AppPasswords, type AppPasswordDeps } from './app-passwords.js';
import { AuthCache } from './cache.js';
import { AuthChain } from './chain.js';
import { FileAuthenticator } from './file-authenticator.js';
import { DovecotAuthenticator } from './dovecot-source.js';
import { HttpAuthenticator } from './http-source.js';
import { LdapAuthenticator } from './ldap-source.js';
import type { AuthMetrics } from '../metrics/auth-metrics.js';
import type { UserRecord } from './users-file.js';

/** The contents of the files the sources name, read at config load. */
export interface AuthSecrets {
  readonly ldapBindPassword?: string;
  readonly ldapCa?: Buffer;
  readonly httpToken?: string;
  readonly httpCa?: Buffer;
}

async function readBundle(file: string, field: string, issues: ConfigIssue[]): Promise<Buffer | undefined> {
  try {
    const pem = await readFile(file);
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) issues.push({ file, path: field, message: 'expected PEM certificates ("-----BEGIN CERTIFICATE-----")' });
    else return pem;
  } catch (err) {
    issues.push({ file, path: field, message: `cannot read the CA bundle: ${(err as Error).message}` });
  }
  return undefined;
}

export async function readAuthSecrets(auth: AuthConfig | undefined): Promise<{ secrets: AuthSecrets; issues: ConfigIssue[] }> {
  const issues: ConfigIssue[] = [];
  const ldap = auth?.ldap;
  const http = auth?.http;
  const secrets: AuthSecrets = {
    ldapBindPassword: ldap?.bindPasswordFile ? await readSecretLine(ldap.bindPasswordFile, 'auth.ldap.bindPasswordFile', 'the LDAP bind password file', issues) : undefined,
    ldapCa: ldap?.ca ? await readBundle(ldap.ca, 'auth.ldap.ca', issues) : undefined,
    httpToken: http?.tokenFile ? await readSecretLine(http.tokenFile, 'auth.http.tokenFile', 'the HTTP hook token file', issues) : undefined,
    httpCa: http?.ca ? await readBundle(http.ca, 'auth.http.ca', issues) : undefined,
  };
  return { secrets, issues };
}

export interface AuthStack {
  /** What the session asks: the cache, or the chain. */
  readonly authenticator: Authenticator;
  readonly chain: AuthChain;
  readonly cache: AuthCache | undefined;
  /** The users-file source, when the chain has one (a users reload swaps its users). */
  readonly file: FileAuthenticator | undefined;
}

export interface AuthStackDeps {
  readonly users: Map<string, UserRecord> | undefined;
  /** With auth.credentials: what the app passwords layer reads (the file as last loaded, …). */
  readonly appPasswords?: Pick<AppPasswordDeps, 'credentials' | 'attributes' | 'usage'>;
  readonly secrets: AuthSecrets;
  readonly log: Logger;
  readonly metrics: AuthMetrics;
}

export function createAuthStack(auth: AuthConfig, deps: AuthStackDeps): AuthStack {
  let file: FileAuthenticator | undefined;
  const sources = auth.backend.map((kind: AuthSourceKind): Authenticator => {
    switch (kind) {
      case 'file':
        file = new FileAuthenticator(deps.users ?? new Map());
        return file;
      case 'backend':
        return new BackendAuthenticator();
      case 'ldap':
        return new LdapAuthenticator(auth.ldap!, { log: deps.log, bindPassword: deps.secrets.ldapBindPassword, ca: deps.secrets.ldapCa });
      case 'dovecot':
        return new DovecotAuthenticator(auth.dovecot!, { log: deps.log });
      case 'http':
        return new HttpAuthenticator(auth.http!, { log: deps.log, token: deps.secrets.httpToken, ca: deps.secrets.httpCa });
    }
  });
  const chain = new AuthChain(sources, { metrics: deps.metrics, log: deps.log });
  const cache = auth.cache ? new AuthCache(chain, auth.cache, { metrics: deps.metrics }) : undefined;
  // App passwords are checked in front of the cache, every time; only the account lookup is
  // remembered. The layer is there without auth.credentials too: a password of an app
  // password's shape is then refused, never sent to an account source (a device still holding
  // one after app passwords were turned off must not hand it to the directory).
  const requirement = auth.requireAppPassword;
  const appPasswords = deps.appPasswords ? new AppPasswords(cache ?? chain, { ...deps.appPasswords, requirement: () => requirement, log: deps.log }) : undefined;
  return { authenticator: appPasswords ?? cache ?? chain, chain, cache, file };
}

/** One source's answer to `smtpgate check --probe`. */
export interface ProbeResult {
  readonly source: AuthSourceKind;
  readonly ok: boolean;
  /** What it found, or what failed and the fix. */
  readonly text: string;
}

/**
 * `smtpgate check --probe`: reaches each source of the chain that can be reached on its own
 * (a directory, Dovecot, the HTTP hook) once, and says what it found.
 */
export async function probeAuthSources(auth: AuthConfig, deps: AuthStackDeps): Promise<ProbeResult[]> {
  const stack = createAuthStack(auth, deps);
  try {
    const results: ProbeResult[] = [];
    for (const [i, source] of stack.chain.sources.entries()) {
      const kind = auth.backend[i]!;
      if (!source.probe) {
        results.push({ source: kind, ok: true, text: kind === 'file' ? `${deps.users?.size ?? 0} users in ${auth.users}` : 'checked at each sign-in (passthrough to the backend)' });
        continue;
      }
      results.push(await source.probe().then((text) => ({ source: kind, ok: true, text }), (err: Error) => ({ source: kind, ok: false, text: err.message })));
    }
    return results;
  } finally {
    await stack.chain.close();
  }
}
