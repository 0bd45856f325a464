/**
 * The files and folders a config names (certificate, key, users, attributes, policy folder,
 * CA bundles, password and token files), checked before anything reads them, so that a
 * missing or unreadable one is reported at the config line that names it, with the reason in
 * words instead of a raw ENOENT. A problem found later *inside* such a file keeps its own file
 * and line, and says which config line named the file.
 */
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import path from 'node:path';
import { formatPath, type ConfigIssue } from '../parsing/errors.js';
import type { ConfigOrigin } from '../parsing/errors.js';
import type { Config } from './schema.js';

export interface FileReference {
  /** Config path segments of the field that names it. */
  readonly segments: readonly PropertyKey[];
  /** The absolute path. */
  readonly file: string;
  readonly kind: 'file' | 'folder';
  /** What it is, for messages: "the certificate". */
  readonly what: string;
}

/** Pure: every file and folder the config names, in config order. */
export function referencedFiles(config: Config): FileReference[] {
  const refs: FileReference[] = [];
  const add = (segments: PropertyKey[], file: string | undefined, what: string, kind: 'file' | 'folder' = 'file') => {
    if (file !== undefined) refs.push({ segments, file, kind, what });
  };
  config.listeners.forEach((l, i) => add(['listeners', i, 'clientCerts', 'ca'], l.clientCerts?.ca, 'the client-certificate CA bundle'));
  if (config.tls) {
    add(['tls', 'cert'], config.tls.cert, 'the certificate');
    add(['tls', 'key'], config.tls.key, 'the private key');
    config.tls.sni.forEach((s, i) => {
      add(['tls', 'sni', i, 'cert'], s.cert, 'the certificate');
      add(['tls', 'sni', i, 'key'], s.key, 'the private key');
    });
  }
  add(['auth', 'users'], config.auth?.users, 'the users file');
  add(['auth', 'attributes'], config.auth?.attributes, 'the user attributes file');
  add(['auth', 'credentials'], config.auth?.credentials, 'the app passwords file (smtpgate credential add creates it; an empty file will do)');
  add(['auth', 'ldap', 'bindPasswordFile'], config.auth?.ldap?.bindPasswordFile, 'the LDAP bind password file');
  add(['auth', 'ldap', 'ca'], config.auth?.ldap?.ca, 'the LDAP CA bundle');
  add(['auth', 'http', 'tokenFile'], config.auth?.http?.tokenFile, 'the HTTP hook token file');
  add(['auth', 'http', 'ca'], config.auth?.http?.ca, 'the HTTP hook CA bundle');
  add(['backend', 'ca'], config.backend.ca, 'the CA bundle');
  add(['backend', 'auth', 'passwordFile'], config.backend.auth?.passwordFile, 'the password file');
  const oauth2 = config.backend.auth?.oauth2;
  add(['backend', 'auth', 'oauth2', 'clientSecretFile'], oauth2?.clientSecretFile, 'the OAuth2 client secret file');
  add(['backend', 'auth', 'oauth2', 'refreshTokenFile'], oauth2?.refreshTokenFile, 'the refresh token file');
  add(['backend', 'auth', 'oauth2', 'keyFile'], oauth2?.keyFile, 'the service account key file');
  config.backend.auth?.mailboxes.forEach((r, i) => add(['backend', 'auth', 'mailboxes', i, 'refreshTokenFile'], r.refreshTokenFile, 'the refresh token file'));
  add(['policies'], config.policies, 'the policy folder', 'folder');
  add(['notifications', 'template'], config.notifications?.template, 'the suspension notice template');
  add(['notifications', 'relay', 'ca'], config.notifications?.relay?.ca, 'the CA bundle');
  add(['notifications', 'relay', 'auth', 'passwordFile'], config.notifications?.relay?.auth?.passwordFile, 'the password file');
  add(['metrics', 'adminTokenFile'], config.metrics.adminTokenFile, 'the admin token file');
  add(['log', 'syslog', 'ca'], config.log.syslog?.ca, "the syslog server's CA bundle");
  add(['log', 'syslog', 'cert'], config.log.syslog?.cert, 'the syslog client certificate');
  add(['log', 'syslog', 'key'], config.log.syslog?.key, "the syslog client certificate's key");
  config.dkim?.domains.forEach((d, i) => add(['dkim', 'domains', i, 'key'], d.key, 'the DKIM key'));
  add(['dkim', 'spoolDir'], config.dkim?.spoolDir, 'the DKIM spool folder', 'folder');
  return refs;
}

/** An OS error on a path, in words (the code stays out of the message). */
export function describeFsError(err: unknown): string {
  switch ((err as NodeJS.ErrnoException).code) {
    case 'ENOENT':
      return 'it does not exist';
    case 'EACCES':
    case 'EPERM':
      return `permission denied for this user (uid ${process.getuid?.() ?? '?'}): give it read access (chgrp/chmod)`;
    case 'ENOTDIR':
      return 'a part of the path is a file, not a folder';
    case 'ELOOP':
      return 'a symbolic link in the path points to itself';
    case 'EISDIR':
      return 'it is a folder, not a file';
    default:
      return (err as Error).message;
  }
}

/** The references that can't be read, as problems at the config lines that name them. */
export async function checkReferences(refs: readonly FileReference[], origin: ConfigOrigin): Promise<ConfigIssue[]> {
  const issues: ConfigIssue[] = [];
  for (const ref of refs) {
    const reason = await unreadable(ref);
    if (reason) issues.push({ file: origin.file, line: origin.lineOf(ref.segments), path: formatPath(ref.segments), message: `cannot read ${ref.what} ${ref.file}: ${reason}` });
  }
  return issues;
}

async function unreadable(ref: FileReference): Promise<string | undefined> {
  try {
    const s = await stat(ref.file);
    if (ref.kind === 'file' && s.isDirectory()) return 'it is a folder, not a file';
    if (ref.kind === 'folder' && !s.isDirectory()) return 'it is a file, not a folder';
    await access(ref.file, ref.kind === 'folder' ? constants.R_OK | constants.X_OK : constants.R_OK);
    return undefined;
  } catch (err) {
    return describeFsError(err);
  }
}

/**
 * Problems the loaders found in referenced files: those about a file already reported as
 * unreadable are dropped (they would say the same, less well); the rest say which config line
 * named the file they are in.
 */
export function anchorIssues(issues: readonly ConfigIssue[], refs: readonly FileReference[], unreadable: readonly ConfigIssue[], origin: ConfigOrigin): ConfigIssue[] {
  const refOf = (file: string) => refs.find((r) => file === r.file || (r.kind === 'folder' && file.startsWith(r.file + path.sep)));
  const broken = new Set(refs.filter((r) => unreadable.some((u) => u.path === formatPath(r.segments))).map((r) => r.file));
  return issues.flatMap((issue) => {
    const ref = refOf(issue.file);
    if (!ref || issue.file === origin.file) return [issue];
    if (broken.has(ref.file)) return [];
    const line = origin.lineOf(ref.segments);
    return [{ ...issue, message: `${issue.message} (named by ${origin.file}${line ? `:${line}` : ''} ${formatPath(ref.segments)})` }];
  });
}
