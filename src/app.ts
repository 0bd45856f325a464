/**
 * The composition root. It reads nothing global: given a validated config it loads the
 * material the config points to (certificate, users file), builds the pieces — metrics,
 * logger, authenticator, backend factory, listeners, admin endpoint — wires them together,
 * and owns start and stop. Two `App`s can run in one process (the tests do).
 */
import { X509Certificate } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { access, readFile, stat } from 'node:fs/promises';
import type http from 'node:http';
import path from 'node:path';
import tls from 'node:tls';
import { ConfigError, formatPath, type ConfigIssue, type ConfigOrigin } from './parsing/errors.js';
import { loadConfigFile, loadConfigSource } from './config/load.js';
import { openRelayProblems } from './policy/open-relay.js';
import { anchorIssues, checkReferences, describeFsError, referencedFiles } from './config/referenced-files.js';
import { hostBitWarnings } from './config/cidr-host-bits.js';
import { applyLiveChanges, diffConfig } from './config/diff.js';
import { isLoopbackHost, type Config } from './config/schema.js';
import { openLog, prettyAvailable, type Logger, type LogOutput } from './logging/logger.js';
import { createMetrics, describeListeners, initSeries, recordReload, type Metrics } from './metrics/catalogue.js';
import { readBuildInfo } from './build-info.js';
import { boundPort, startAdminServer, type Readiness } from './metrics/http-server.js';
import { readUsersFile } from './auth/file-authenticator.js';
import { readUserAttributes, NO_ATTRIBUTES, type UserAttributes } from './auth/user-attributes.js';
import type { UserRecord } from './auth/users-file.js';
import { CredentialIndex, parseCredentialLines, readCredentialsFile } from './auth/credentials-file.js';
import { CredentialUsage } from './auth/credential-usage.js';
import { FileWatcher } from './config/file-watch.js';
import { createAuthStack, readAuthSecrets, type AuthSecrets, type AuthStack } from './auth/sources.js';
import { authCacheAdminRoute, credentialUsageAdminRoute, type CacheClearAnswer } from './auth/admin.js';
import type { HttpRefusal } from './limits/browser-guard.js';
import { DIRECTORY_SOURCES } from './config/auth-section.js';
import { initAuthMetrics } from './metrics/auth-metrics.js';
import { daysUntilExpiry } from './listener/tls-material.js';
import { TlsManager, describeIssues, loadCertificates, type CertificateSource, type LoadedCertificate } from './listener/tls-manager.js';
import { SmtpListener } from './listener/smtp-listener.js';
import { BackendPool, BackendSession, UpstreamTokens, chooseMailbox, type BackendClientOptions, type BackendLogin, type BackendTarget, type IdentityMode, type TokenSettings } from './relay/backend.js';
import { loadTokenSettings } from './relay/token-settings.js';
import { BackendHealth } from './relay/backend-health.js';
import { CapabilityCache } from './relay/ehlo-capabilities.js';
import { createLimits, type Limits } from './limits/limits.js';
import { limitsAdminRoutes } from './limits/admin.js';
import { readRedisPasswordFile } from './limits/redis-store.js';
import { storeSecretFiles } from './limits/config.js';
import { emptyPolicySet, loadPolicySet } from './policy/load.js';
import type { PolicySet } from './policy/types.js';
import { lintPolicySet } from './policy/lint.js';
import { formatFinding } from './policy/cli.js';
import type { HostPort } from './parsing/units.js';
import { WriteBatcher } from './transport/write-batcher.js';
import { collectorFromV8, ReadBufferReclaimer, type Collect } from './transport/read-buffer-reclaimer.js';
import { demoCertificateExists, ensureDemoCertificate, loadCertificateGenerator } from './demo/demo-certificate.js';
import { startCaptureBackend, type CaptureBackend } from './demo/capture-backend.js';
import { KeyRing, loadSigningKeys, type KeySet } from './dkim/key-ring.js';
import { readNoticeTemplate, type NoticeTemplate } from './notifications/template.js';
import { SuspensionNotifier, type NoticeRelay } from './notifications/notifier.js';

/** Everything the config points to, loaded and checked. */
export interface RuntimeMaterial {
  /** The default certificate first, then the SNI ones. */
  readonly certs?: readonly LoadedCertificate[];
  readonly users?: Awaited<ReturnType<typeof readUsersFile>>;
  readonly attributes: ReadonlyMap<string, UserAttributes>;
  /** The app passwords file (auth.credentials), when set. */
  readonly credentials?: CredentialIndex;
  /** What the auth sources need from files: the LDAP bind password, the HTTP hook's token, CAs. */
  readonly authSecrets: AuthSecrets;
  readonly backendCa?: Buffer;
  /** backend.auth's password, read from passwordFile when given. */
  readonly backendPassword?: string;
  /** backend.auth with mechanism XOAUTH2: the token endpoint and the secrets from their files. */
  readonly backendTokens?: TokenSettings;
  /** Client-certificate CA bundles by listener name. */
  readonly clientCas: ReadonlyMap<string, Buffer>;
  /** The policy rules (or the built-in set: relay protection only). */
  readonly policy: PolicySet;
  /** Bearer token for the admin routes, from metrics.adminTokenFile. */
  readonly adminToken?: string;
  /** log.syslog's CA bundle and client certificate, read. */
  readonly syslogTls?: { readonly ca?: Buffer; readonly cert?: Buffer; readonly key?: Buffer };
  /** The DKIM signing keys (dkim.domains), when dkim: is configured. */
  readonly dkimKeys?: KeySet;
  /** notifications.template, and the relay's CA and password (from their files). */
  readonly notices?: { readonly template: NoticeTemplate; readonly relayCa?: Buffer; readonly relayPassword?: string };
  readonly warnings: string[];
}

/** The admin bearer token: one line, at least 16 characters. */
export async function readAdminToken(file: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read the admin token file: ${(err as Error).message}`);
  }
  const token = text.trim();
  if (token.length < 16 || /\s/.test(token)) throw new Error('the admin token file must hold one token of at least 16 characters, without spaces');
  return token;
}

/** For a config built in code: no file, no lines. */
const UNKNOWN_ORIGIN: ConfigOrigin = { file: 'the config', lineOf: () => undefined };

/** How long stop() waits for the syslog server to take the last lines. */
const LOG_END_MS = 2_000;

/** How often the policy folder is checked for changes. */
const POLICY_POLL_MS = 2_000;

/** "host:port", with brackets for IPv6: the backend's label in logs and metrics. */
export function hostPortLabel(a: HostPort): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/**
 * Loads the certificate, key, users file and backend CA, collecting every problem. Used by
 * `check` (which reports them all) and `run` (which refuses to start on any).
 */
export async function loadRuntimeMaterial(config: Config, opts: { now?: Date; origin?: ConfigOrigin } = {}): Promise<RuntimeMaterial> {
  const now = opts.now ?? new Date();
  const origin = opts.origin ?? UNKNOWN_ORIGIN;
  const issues: ConfigIssue[] = [];
  const warnings: string[] = [];
  // A missing or unreadable file is reported at the config line naming it; see referenced-files.ts.
  const refs = referencedFiles(config);
  const unreadable = await checkReferences(refs, origin);
  let certs: LoadedCertificate[] | undefined;
  if (config.tls) {
    const loaded = await loadCertificates(certificateSources(config.tls));
    if (loaded.ok) {
      certs = loaded.certs;
      issues.push(...validityIssues(certs, now, origin));
      warnings.push(...expiryWarnings(certs, now));
    } else {
      issues.push(...loaded.issues);
    }
  }
  const directory = await loadUserDirectory(config);
  if (!directory.ok) issues.push(...directory.issues);
  else if (directory.users && directory.users.size === 0) warnings.push(`auth.users ${config.auth?.users} lists no users: nobody can authenticate`);
  const users = directory.ok ? directory.users : undefined;
  const attributes = directory.ok ? directory.attributes : new Map<string, UserAttributes>();
  const credentials = directory.ok ? directory.credentials : undefined;
  const clientCas = new Map<string, Buffer>();
  for (const [i, l] of config.listeners.entries()) {
    if (!l.clientCerts) continue;
    try {
      clientCas.set(l.name, await readFile(l.clientCerts.ca));
    } catch (err) {
      issues.push({ file: l.clientCerts.ca, path: `listeners[${i}].clientCerts.ca`, message: `cannot read the CA bundle: ${(err as Error).message}` });
    }
  }
  let adminToken: string | undefined;
  if (config.metrics.adminTokenFile) {
    try {
      adminToken = await readAdminToken(config.metrics.adminTokenFile);
    } catch (err) {
      issues.push({ file: config.metrics.adminTokenFile, path: 'metrics.adminTokenFile', message: (err as Error).message });
    }
  }
  let policy = emptyPolicySet();
  if (config.policies) {
    try {
      policy = await loadPolicySet(config.policies);
    } catch (err) {
      if (err instanceof ConfigError) issues.push(...err.issues);
      else throw err;
    }
  }
  if (config.log.format === 'pretty' && !prettyAvailable()) {
    issues.push({
      file: origin.file,
      line: origin.lineOf(['log', 'format']),
      path: 'log.format',
      message: '"pretty" needs the package pino-pretty, which is not installed here (it is a development dependency, left out by npm ci --omit=dev); use format: json, or npm install pino-pretty',
    });
  }
  warnings.push(...hostBitWarnings(config, origin));
  const relay = openRelayProblems(config, policy, origin);
  issues.push(...relay.issues);
  warnings.push(...relay.warnings);
  // What `smtpgate policy check` would find, except the open relay, decided above with the listeners.
  // Groups can be checked against the attributes file only when no directory adds its own.
  const directoryGroups = config.auth?.backend.some((k) => DIRECTORY_SOURCES.has(k)) ?? false;
  const knownGroups = config.auth?.attributes && !directoryGroups ? new Set([...attributes.values()].flatMap((a) => a.groups)) : undefined;
  for (const f of lintPolicySet(policy, knownGroups ? { knownGroups } : {})) if (f.kind !== 'open_relay') warnings.push(formatFinding(f));
  const backendCa = await readCaBundle(config.backend.ca, 'backend.ca', issues);
  const backendPassword = await readSmtpPassword(config.backend.auth, 'backend.auth.passwordFile', issues);
  const notices = await loadNoticeMaterial(config.notifications, issues);
  if (config.notifications && config.limits.brake.quotaHits === null) warnings.push('notifications is set, but limits.brake.quotaHits is off: no account is ever suspended, so no notice is ever sent');
  const tokens = await loadTokenSettings(config.backend.auth);
  issues.push(...tokens.issues);
  config.backend.auth?.mailboxes.forEach((r, i) => {
    if (r.group !== undefined && knownGroups && !knownGroups.has(r.group)) warnings.push(`backend.auth.mailboxes[${i}].group ${r.group} is no group of any user in ${config.auth?.attributes}: the rule never matches`);
  });
  for (const { field, file } of storeSecretFiles(config.limits.store)) {
    try {
      readRedisPasswordFile(file);
    } catch (err) {
      issues.push({ file, path: `limits.store.${field}`, message: (err as Error).message });
    }
  }
  const auth = await readAuthSecrets(config.auth);
  issues.push(...auth.issues);
  // Dovecot answers a wrong password and an unknown user alike, so it decides for everyone.
  const sources = config.auth?.backend ?? [];
  const afterDovecot = sources.slice(sources.indexOf('dovecot') + 1);
  if (sources.includes('dovecot') && afterDovecot.length > 0) {
    warnings.push(`auth.backend lists ${afterDovecot.join(', ')} after dovecot, which refuses every user it doesn't sign in (Dovecot doesn't tell an unknown user from a wrong password): ${afterDovecot.join(', ')} will be asked only while Dovecot is down. Put dovecot last`);
  }
  const dovecotSocket = config.auth?.dovecot?.socket;
  if (dovecotSocket?.kind === 'inet' && !isLoopbackHost(dovecotSocket.host)) {
    warnings.push(`auth.dovecot.socket ${dovecotSocket.host}:${dovecotSocket.port} is another machine: Dovecot's auth protocol has no encryption, so passwords cross the network in cleartext; use a unix socket, or a network you trust (or a TLS tunnel)`);
  }
  const lookupSocket = config.auth?.dovecot?.lookupSocket;
  if (lookupSocket?.kind === 'inet' && !isLoopbackHost(lookupSocket.host)) {
    warnings.push(`auth.dovecot.lookupSocket ${lookupSocket.host}:${lookupSocket.port} is another machine: Dovecot's auth-userdb protocol has no encryption, and Dovecot answers anyone who reaches that listener; use a unix socket, or a network you trust`);
  }
  if (config.auth?.ldap && !config.auth.ldap.verifyCertificate) warnings.push('auth.ldap.verifyCertificate is false: the directory\'s certificate is not checked, so anyone on the path can read the passwords smtpgate sends it');
  for (const l of config.listeners) {
    if (l.tls === 'none') warnings.push(`listener ${l.name} (${l.address.host}:${l.address.port}) has tls: none: AUTH is never offered there, and mail travels in cleartext`);
  }
  let dkimKeys: KeySet | undefined;
  if (config.dkim) {
    const loaded = await loadSigningKeys(config.dkim);
    if (loaded.ok) {
      dkimKeys = loaded.keys;
      warnings.push(...loaded.warnings);
    } else {
      issues.push(...loaded.issues);
    }
    const spool = config.dkim.spoolDir;
    if (!unreadable.some((u) => u.path === 'dkim.spoolDir')) {
      await access(spool, fsConstants.W_OK | fsConstants.X_OK).catch(() =>
        issues.push({ file: origin.file, line: origin.lineOf(['dkim', 'spoolDir']), path: 'dkim.spoolDir', message: `smtpgate (uid ${process.getuid?.() ?? '?'}) cannot create files in the DKIM spool folder ${spool}: give it write access, or point dkim.spoolDir at a folder it owns` }),
      );
    }
  }
  if (config.log.file) {
    const problem = await logFileProblem(config.log.file);
    if (problem) issues.push({ file: origin.file, line: origin.lineOf(['log', 'file']), path: 'log.file', message: problem });
  }
  const syslogTls = await readSyslogTls(config.log.syslog, issues);
  if (issues.length || unreadable.length) throw new ConfigError([...unreadable, ...anchorIssues(issues, refs, unreadable, origin)]);
  return { certs, users, attributes, credentials, authSecrets: auth.secrets, backendCa, backendPassword, backendTokens: tokens.settings, clientCas, policy, adminToken, syslogTls, dkimKeys, ...(notices ? { notices } : {}), warnings };
}

/** A CA bundle the config names at `field`, if any; a problem goes to `issues`. */
async function readCaBundle(file: string | undefined, field: string, issues: ConfigIssue[]): Promise<Buffer | undefined> {
  if (!file) return undefined;
  try {
    return await readFile(file);
  } catch (err) {
    issues.push({ file, path: field, message: `cannot read the CA bundle: ${(err as Error).message}` });
    return undefined;
  }
}

/** The password smtpgate gives a server (the backend, the notifications relay): inline, or its passwordFile's one line. */
async function readSmtpPassword(auth: { password?: string; passwordFile?: string } | undefined, field: string, issues: ConfigIssue[]): Promise<string | undefined> {
  const file = auth?.passwordFile;
  if (!file) return auth?.password;
  try {
    const password = (await readFile(file, 'utf8')).replace(/\r?\n$/, '');
    if (/[\r\n\0]/.test(password)) issues.push({ file, path: field, message: 'the password file must hold one line without CR, LF or NUL' });
    return password;
  } catch (err) {
    issues.push({ file, path: field, message: `cannot read the password file: ${(err as Error).message}` });
    return undefined;
  }
}

/** notifications.template and the relay's files; problems go to `issues`. */
async function loadNoticeMaterial(config: Config['notifications'], issues: ConfigIssue[]): Promise<RuntimeMaterial['notices']> {
  if (!config) return undefined;
  let template: NoticeTemplate | undefined;
  try {
    template = await readNoticeTemplate(config.template);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    issues.push(...err.issues);
  }
  const relayCa = await readCaBundle(config.relay?.ca, 'notifications.relay.ca', issues);
  const relayPassword = await readSmtpPassword(config.relay?.auth, 'notifications.relay.auth.passwordFile', issues);
  return template ? { template, ...(relayCa ? { relayCa } : {}), ...(relayPassword !== undefined ? { relayPassword } : {}) } : undefined;
}

type UserDirectoryLoad =
  | { ok: true; users?: Map<string, UserRecord>; attributes: Map<string, UserAttributes>; credentials?: CredentialIndex }
  | { ok: false; issues: ConfigIssue[] };

/**
 * The users file (file auth), the attributes file and (at start, `withCredentials`) the app
 * passwords file: all or none. A reload reads the app passwords file on its own
 * (App.#reloadCredentials): a broken users file must not keep a revoked app password working.
 */
async function loadUserDirectory(config: Config, withCredentials = true): Promise<UserDirectoryLoad> {
  const issues: ConfigIssue[] = [];
  let users: Map<string, UserRecord> | undefined;
  let attributes = new Map<string, UserAttributes>();
  const collect = (err: unknown) => {
    if (err instanceof ConfigError) issues.push(...err.issues);
    else throw err;
  };
  if (config.auth?.users) users = await readUsersFile(config.auth.users).catch((err: unknown) => void collect(err));
  if (config.auth?.attributes) attributes = (await readUserAttributes(config.auth.attributes).catch((err: unknown) => void collect(err))) ?? attributes;
  const credentials = withCredentials && config.auth?.credentials ? await readCredentialsFile(config.auth.credentials).catch((err: unknown) => void collect(err)) : undefined;
  return issues.length ? { ok: false, issues } : { ok: true, users, attributes, ...(credentials ? { credentials } : {}) };
}

/** The default pair first, then each SNI pair. */
export function certificateSources(tls: NonNullable<Config['tls']>): CertificateSource[] {
  return [
    { label: 'default', names: [], certFile: tls.cert, keyFile: tls.key, where: 'tls' },
    ...tls.sni.map((s, i) => ({ label: s.names[0]!, names: s.names, certFile: s.cert, keyFile: s.key, where: `tls.sni[${i}]` })),
  ];
}

/**
 * A certificate outside its validity period fails every client that verifies it: refused at
 * start like a missing one, at the config line that names it. (A reload keeps the old pair and
 * logs instead; see TlsManager.)
 */
function validityIssues(certs: readonly LoadedCertificate[], now: Date, origin: ConfigOrigin): ConfigIssue[] {
  return certs.flatMap(({ material: m }, i): ConfigIssue[] => {
    const segments = i === 0 ? ['tls', 'cert'] : ['tls', 'sni', i - 1, 'cert'];
    const at = { file: origin.file, line: origin.lineOf(segments), path: formatPath(segments) };
    const what = `the certificate ${m.certFile} (${m.subject})`;
    if (m.notAfter.getTime() < now.getTime()) return [{ ...at, message: `${what} expired on ${m.notAfter.toISOString()}; renew it (your ACME client's fullchain.pem)` }];
    if (m.notBefore.getTime() > now.getTime()) return [{ ...at, message: `${what} is not valid before ${m.notBefore.toISOString()}; check this machine's clock, or use the certificate in force now` }];
    return [];
  });
}

function expiryWarnings(certs: readonly LoadedCertificate[], now: Date): string[] {
  const out: string[] = [];
  for (const { material: m, source } of certs) {
    const days = daysUntilExpiry(m, now);
    if (days < 0) out.push(`${source.where}.cert ${m.certFile} expired on ${m.notAfter.toISOString()}`);
    else if (days < 14) out.push(`${source.where}.cert ${m.certFile} expires in ${Math.floor(days)} days (${m.notAfter.toISOString()}); renew it`);
  }
  return out;
}

/**
 * Loads and checks a config file and everything it points to. `run` generates a demo
 * certificate when the config asks for one; `check` never writes anything.
 */
export async function checkConfigFile(file: string, mode: 'run' | 'check' = 'run'): Promise<{ config: Config; material: RuntimeMaterial }> {
  const { config, source } = await loadConfigSource(file);
  // A development dependency a config may ask for: a production install (npm ci --omit=dev,
  // the container image) doesn't have it, and the config is refused rather than crash later.
  // (log.format: pretty, the other one, is checked with the rest in loadRuntimeMaterial.)
  const tls = config.demo?.generateCertificate && config.tls && !(await demoCertificateExists(config.tls.cert, config.tls.key)) ? config.tls : undefined;
  const generate = tls ? await loadCertificateGenerator() : undefined;
  if (tls && !generate) {
    throw new ConfigError([
      {
        file,
        line: source.lineOf(['demo', 'generateCertificate']),
        path: 'demo.generateCertificate',
        message:
          'needs the development dependency "selfsigned", which a production install (npm ci --omit=dev) leaves out: ' +
          'install the development dependencies (npm install) to try the demo, or give tls.cert and tls.key a real certificate and remove demo',
      },
    ]);
  }
  if (tls && generate) {
    if (mode === 'run') {
      await ensureDemoCertificate(tls.cert, tls.key, config.hostname, generate);
    } else {
      const material = await loadRuntimeMaterial({ ...config, tls: undefined }, { origin: source });
      return { config, material: { ...material, warnings: [...material.warnings, `tls.cert ${tls.cert} does not exist yet; demo mode generates a self-signed one at first start`] } };
    }
  }
  return { config, material: await loadRuntimeMaterial(config, { origin: source }) };
}

/**
 * Why smtpgate couldn't append to log.file, in words with the fix; undefined when it can. Only
 * looked at, never created: `check` leaves no file behind.
 */
async function logFileProblem(file: string): Promise<string | undefined> {
  try {
    const s = await stat(file);
    if (!s.isFile()) return `${file} is not a regular file: name a file in a folder smtpgate may write to`;
    await access(file, fsConstants.W_OK);
    return undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return `cannot append to ${file}: ${describeFsError(err)}`;
  }
  const dir = path.dirname(file);
  try {
    await access(dir, fsConstants.W_OK | fsConstants.X_OK);
    return undefined;
  } catch (err) {
    return `cannot create ${file}: the folder ${dir} ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : `is not writable for this user (uid ${process.getuid?.() ?? '?'})`}; create it and give smtpgate write access (under systemd: LogsDirectory=smtpgate makes /var/log/smtpgate)`;
  }
}

/** The files log.syslog names, read; a problem is an issue at its field (that they can be read at all is checked with the other references). */
async function readSyslogTls(syslog: Config['log']['syslog'], issues: ConfigIssue[]): Promise<RuntimeMaterial['syslogTls']> {
  if (!syslog) return undefined;
  const out: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  for (const field of ['ca', 'cert', 'key'] as const) {
    const file = syslog[field];
    if (!file) continue;
    try {
      out[field] = await readFile(file);
    } catch (err) {
      issues.push({ file, path: `log.syslog.${field}`, message: `cannot read it: ${(err as Error).message}` });
    }
  }
  if (out.ca) {
    // A secure context takes a bundle without one certificate in it without complaint.
    try {
      if (!out.ca.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no "BEGIN CERTIFICATE" in it');
      new X509Certificate(out.ca);
    } catch (err) {
      issues.push({ file: syslog.ca!, path: 'log.syslog.ca', message: `not a PEM CA bundle (${(err as Error).message}): give the CA certificate that signed the syslog server's certificate` });
    }
  }
  if (out.cert && out.key) {
    try {
      tls.createSecureContext({ cert: out.cert, key: out.key });
    } catch (err) {
      issues.push({ file: syslog.cert!, path: 'log.syslog.cert', message: `the client certificate and key don't load together (${(err as Error).message}): give a PEM certificate and its own private key` });
    }
  }
  return out;
}

/** The logger's streams as config.log says: stdout or the file, and the syslog server. */
export function openLogOutput(log: Config['log'], material: Pick<RuntimeMaterial, 'syslogTls'>): LogOutput {
  const s = log.syslog;
  return openLog({
    level: log.level,
    format: log.format,
    ...(log.file ? { file: log.file } : {}),
    ...(s
      ? {
          syslog: {
            transport: s.transport,
            host: s.host,
            port: s.port,
            facility: s.facility,
            appName: s.appName,
            bufferBytes: s.bufferSize,
            ...material.syslogTls,
            ...(s.tlsServerName ? { tlsServerName: s.tlsServerName } : {}),
          },
        }
      : {}),
  });
}

export interface AppOptions {
  /** Defaults to the logger of `logOutput`, else one built from config.log. */
  readonly log?: Logger;
  /** The streams behind the logger (built from config.log unless given): SIGUSR1 reopens them, stop() sends their last lines. */
  readonly logOutput?: LogOutput;
  /** Where the config came from, so SIGHUP can re-read it. */
  readonly configFile?: string;
  /** Serve /metrics, /healthz, /readyz (default true; a cluster worker leaves it to the primary). */
  readonly admin?: boolean;
  /** Collects young garbage after every few MB read from clients; defaults to V8's scavenge. */
  readonly collect?: Collect;
}

export interface BoundAddresses {
  readonly listeners: Record<string, number>;
  readonly metrics: number;
  readonly captureBackend?: number;
}

export class App {
  /** Socket writes of one event-loop turn leave together (client replies and backend commands). */
  readonly #writes = new WriteBatcher();
  /** Collects the read buffers relayed client data leaves behind (see read-buffer-reclaimer.ts). */
  readonly #reclaimer: ReadBufferReclaimer | undefined;
  #config: Config;
  /** The file the config came from, for reloads; undefined for a config built in code. */
  readonly #configFile: string | undefined;
  readonly log: Logger;
  readonly #logOutput: LogOutput | undefined;
  readonly metrics: Metrics;
  readonly limits: Limits;
  readonly #material: RuntimeMaterial;
  /** The auth sources in order, the cache in front; undefined without an auth section. */
  readonly #auth: AuthStack | undefined;
  #attributes: ReadonlyMap<string, UserAttributes>;
  #credentials: CredentialIndex;
  /** When and from where each app password was last used (in the limits store). */
  readonly #credentialUsage: CredentialUsage;
  #usersWatcher: FileWatcher | undefined;
  #policy: PolicySet;
  #policyWatcher: FileWatcher | undefined;
  #health: BackendHealth | undefined;
  readonly #serveAdmin: boolean;
  readonly #listeners: SmtpListener[] = [];
  #admin: http.Server | undefined;
  #tls: TlsManager | undefined;
  #dkim: KeyRing | undefined;
  #capture: CaptureBackend | undefined;
  /** OAuth2 tokens for the backend (backend.auth mechanism XOAUTH2). */
  #tokens: UpstreamTokens | undefined;
  /** Suspension notices (notifications); undefined without that section. */
  readonly #notifier: SuspensionNotifier | undefined;
  #noticeTemplate: NoticeTemplate | undefined;
  #addresses: BoundAddresses | undefined;
  #stopping = false;

  constructor(config: Config, material: RuntimeMaterial, opts: AppOptions = {}) {
    this.#config = config;
    this.#configFile = opts.configFile;
    this.#serveAdmin = opts.admin ?? true;
    this.#material = material;
    this.#logOutput = opts.logOutput ?? (opts.log ? undefined : openLogOutput(config.log, material));
    this.log = opts.log ?? this.#logOutput!.log;
    this.metrics = createMetrics(readBuildInfo());
    this.#logOutput?.onSyslogDrop(() => this.metrics.logSyslogDropped.inc());
    this.limits = createLimits({ config: config.limits, log: this.log, metrics: this.metrics.limits });
    this.#attributes = material.attributes;
    this.#credentials = material.credentials ?? new CredentialIndex();
    this.#credentialUsage = new CredentialUsage(this.limits.notes);
    this.#auth = config.auth
      ? createAuthStack(config.auth, {
          users: material.users,
          secrets: material.authSecrets,
          log: this.log,
          metrics: this.metrics.auth,
          appPasswords: {
            credentials: () => this.#credentials,
            attributes: (user) => this.userAttributes(user),
            usage: this.#credentialUsage,
          },
        })
      : undefined;
    this.#policy = material.policy;
    this.metrics.policy.setPolicySet(material.policy);
    this.#noticeTemplate = material.notices?.template;
    if (config.notifications && this.#noticeTemplate) {
      const notifier = new SuspensionNotifier({
        config: config.notifications,
        template: () => this.#noticeTemplate!,
        relays: this.#noticeRelays(config.notifications),
        claim: (user) => this.limits.claimSuspensionNotice(user),
        sent: this.metrics.notifications,
        log: this.log,
        hostname: config.hostname,
      });
      this.limits.onSuspended((e) => notifier.suspended(e));
      this.#notifier = notifier;
    }
    const collect = opts.collect ?? collectorFromV8();
    if (collect) {
      this.#reclaimer = new ReadBufferReclaimer(collect, {
        onCollect: () => this.metrics.readBufferCollections.inc(),
        onFailure: (err) => this.log.warn({ err }, 'young-generation collection failed: memory after large messages is left to V8 from now on'),
      });
    } else {
      this.log.warn('V8 offers no young-generation collection here: memory after large messages is left to its own scheduling');
    }
  }

  get addresses(): BoundAddresses {
    if (!this.#addresses) throw new Error('app not started');
    return this.#addresses;
  }

  async start(): Promise<BoundAddresses> {
    for (const w of this.#material.warnings) this.log.warn(w);
    const { config } = this;

    if (config.demo?.captureBackend) {
      const c = config.demo.captureBackend;
      this.#capture = await startCaptureBackend({ host: c.address.host, port: c.address.port, dir: c.dir });
      this.log.warn({ dir: c.dir, port: this.#capture.port }, 'DEMO capture backend running: messages are written to files and delivered nowhere (development only)');
    }

    const b = config.backend;
    const pool = new BackendPool(
      b.address.map((a) => ({ name: hostPortLabel(a), options: this.#backendOptions(a) })),
      b.strategy,
      b.markDownFor,
    );
    initSeries(this.metrics, { listeners: config.listeners.map((l) => l.name), backends: pool.targets.map((t) => t.name), loadedAt: new Date() });
    describeListeners(this.metrics, config.listeners);
    if (config.auth) {
      initAuthMetrics(this.metrics.auth, config.auth.backend, config.auth.cache !== undefined);
      // Each source that can be reached on its own (a directory) is checked once now, in the
      // background: a directory that is down at start shows in /readyz and the metrics at once.
      this.#auth?.chain.checkAll();
    }
    const identityCommand = identityCommandOf(b.identity);
    this.#health = new BackendHealth(
      pool,
      {
        onResult: (t, up, detail) => {
          this.metrics.backendUp.set({ backend: t.name }, up ? 1 : 0);
          if (up) this.log.info({ backend: t.name }, 'backend health check: up');
          else this.log.warn({ backend: t.name, detail }, 'backend health check: down');
        },
        // Logged once per change, not at every check: the gauge carries the state.
        onIdentity: (t, advertised) => {
          this.metrics.backendIdentityAdvertised.set({ backend: t.name }, advertised ? 1 : 0);
          if (advertised) this.log.info({ backend: t.name, command: identityCommand }, `backend advertises ${identityCommand}`);
          else this.log.warn({ backend: t.name, command: identityCommand, requireIdentity: b.requireIdentity }, missingIdentityText(identityCommand!));
        },
      },
      { identityCommand },
    );
    // The first round runs before the listeners open, so /readyz is right from the start.
    // An interval of 0 turns the probes off (and /readyz then ignores backends).
    if (b.healthCheckInterval > 0) await this.#health.start(b.healthCheckInterval);
    const backendLogin = this.#backendLogin();
    const events = {
      onConnected: (t: BackendTarget, seconds: number) => this.metrics.backendConnectSeconds.observe({ backend: t.name }, seconds),
      onError: (t: BackendTarget, err: { kind: string }) => this.metrics.backendErrors.inc({ backend: t.name, kind: err.kind }),
    };
    if (this.#material.certs && config.tls) {
      this.#tls = new TlsManager(this.#material.certs, { minVersion: config.tls.minVersion, ciphers: config.tls.ciphers }, {
        onReloaded: (certs) => {
          recordReload(this.metrics, 'certificate', true);
          this.#recordExpiry(certs);
          this.log.info({ certificates: certs.map((c) => ({ label: c.source.label, subject: c.material.subject, notAfter: c.material.notAfter })) }, 'certificates reloaded');
          for (const w of expiryWarnings(certs, new Date())) this.log.warn(w);
        },
        onReloadFailed: (issues) => {
          recordReload(this.metrics, 'certificate', false);
          this.log.error({ problems: describeIssues(issues) }, 'certificate reload failed; the previous certificates stay in force');
        },
      });
      this.#recordExpiry(this.#material.certs);
      await this.#tls.watch(config.tls.reloadInterval);
    }
    const policiesDir = config.policies;
    if (policiesDir) {
      // The folder itself is watched too: its mtime changes when a file is added or removed.
      this.#policyWatcher = new FileWatcher(() => [policiesDir, ...this.#policy.files], () => this.reloadPolicies().then(() => undefined));
      await this.#policyWatcher.start(POLICY_POLL_MS);
    }
    const limits = this.limits;
    // A store that can't be reached yet doesn't stop the start: onStoreFailure decides meanwhile.
    if (!(await limits.start(2000))) this.log.warn({ store: config.limits.store.kind, onStoreFailure: config.limits.onStoreFailure }, 'limiter store not reachable at start');
    if (config.dkim && this.#material.dkimKeys) {
      this.#dkim = new KeyRing(config.dkim, this.#material.dkimKeys, {
        onReloaded: (keys, warnings) => {
          recordReload(this.metrics, 'dkim', true);
          this.log.info({ domains: keys.size }, 'DKIM keys reloaded');
          for (const w of warnings) this.log.warn(w);
        },
        onReloadFailed: (issues) => {
          recordReload(this.metrics, 'dkim', false);
          this.log.error({ problems: describeIssues(issues) }, 'DKIM key reload failed; the previous keys stay in force');
        },
      });
      await this.#dkim.watch();
    }
    const dkimRing = this.#dkim;
    const dkim = config.dkim && dkimRing ? { keys: () => dkimRing.keys, spool: { dir: config.dkim.spoolDir, memoryThreshold: config.dkim.memoryThreshold }, trustedNetworks: config.dkim.trustedNetworks } : undefined;
    const tlsManager = this.#tls;
    const userFiles = [config.auth?.users, config.auth?.attributes, config.auth?.credentials].filter((f): f is string => f !== undefined);
    if (userFiles.length && config.auth) {
      this.#usersWatcher = new FileWatcher(() => userFiles, () => this.reloadUsers().then(() => undefined));
      await this.#usersWatcher.start(config.auth.reloadInterval);
    }
    const listenerPorts: Record<string, number> = {};
    try {
      for (const lc of config.listeners) {
        const listener = new SmtpListener({
          config: lc,
          limits,
          attributes: (user) => this.userAttributes(user),
          policy: () => this.#policy,
          hostname: config.hostname,
          tls: tlsManager ? { manager: tlsManager, clientCa: this.#material.clientCas.get(lc.name) } : undefined,
          authenticator: this.#auth?.authenticator,
          openBackend: (log) =>
            new BackendSession(pool, { identity: b.identity, auth: backendLogin?.(lc.name) }, {
              ...events,
              onIdentityReplaced: (t, attributes) => log.warn({ backend: t.name, attributes }, 'identity attributes sent to the backend as [UNAVAILABLE]: it could not hold them unchanged'),
            }),
          data: {
            bareLineEndings: config.data.bareLineEndings,
            receivedHeader: config.data.receivedHeader,
            authenticatedUserHeader: config.data.authenticatedUserHeader,
            stripHeaders: config.data.stripHeaders,
            maxMessageBytes: config.limits.maxMessageBytes,
            dkim,
          },
          client: config.client,
          writes: this.#writes,
          reclaimer: this.#reclaimer,
          metrics: this.metrics,
          log: this.log,
        });
        this.#listeners.push(listener);
        const bound = await listener.listen();
        listenerPorts[lc.name] = bound.port;
        this.log.info({ listener: lc.name, address: `${bound.host}:${bound.port}`, tls: lc.tls, requireTls: lc.requireTls, requireAuth: lc.requireAuth }, 'listening');
      }
      if (this.#serveAdmin) this.#admin = await startAdminServer({
        host: config.metrics.address.host,
        port: config.metrics.address.port,
        registry: this.metrics.registry,
        readiness: () => this.readiness(),
        // `smtpgate limits list|clear` reach a memory store through here; loopback by default.
        routes: [limitsAdminRoutes(this.limits, this.#adminRouteOptions()), authCacheAdminRoute((user) => Promise.resolve(this.clearAuthCache(user)), this.#adminRouteOptions()),
          credentialUsageAdminRoute(() => this.#credentialUsage.list(), this.#adminRouteOptions()),
        ],
      });
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.#addresses = { listeners: listenerPorts, metrics: this.#admin ? boundPort(this.#admin) : 0, captureBackend: this.#capture?.port };
    return this.#addresses;
  }

  /**
   * How the backend sessions of one listener sign in (backend.auth): the fixed credentials, or
   * with XOAUTH2 the mailbox backend.auth.mailboxes picks and a token for it.
   */
  #backendLogin(): ((listener: string) => BackendLogin) | undefined {
    const auth = this.config.backend.auth;
    if (!auth) return undefined;
    const settings = this.#material.backendTokens;
    if (auth.mechanism !== 'XOAUTH2' || !settings) {
      const fixed: BackendLogin = { user: auth.user, password: this.#material.backendPassword ?? '', mechanism: auth.mechanism === 'LOGIN' ? 'LOGIN' : 'PLAIN' };
      return () => fixed;
    }
    const tokens = new UpstreamTokens(settings, {
      onResult: (result, mailbox, detail) => {
        this.metrics.backendOAuthTokens.inc({ result });
        const fields = { mailbox, result, tokenUrl: settings.tokenUrl, ...detail };
        if (result === 'issued') this.log.info(fields, 'OAuth2 token for the backend obtained');
        else if (result === 'backoff') this.log.warn(fields, 'OAuth2 token for the backend not asked for: a recent attempt failed');
        else this.log.error(fields, result === 'failed' ? 'OAuth2 token for the backend: the token endpoint failed' : 'OAuth2 token refused by the backend');
      },
    });
    this.#tokens = tokens;
    return (listener) => ({
      mechanism: 'XOAUTH2',
      tokens,
      mailbox: (identity) => chooseMailbox(auth.mailboxes, auth.user, { listener, groups: identity.groups ?? (() => []) }),
    });
  }

  /** The TLS manager, for an explicit reload (SIGHUP) or tests. */
  get tls(): TlsManager | undefined {
    return this.#tls;
  }

  /** Attributes (addresses, groups) of a user, for policy. */
  userAttributes(user: string): UserAttributes {
    return this.#attributes.get(user) ?? NO_ATTRIBUTES;
  }

  /**
   * Re-reads the users and attributes files. Both are validated before either is swapped in;
   * a broken file keeps the old data, logs the problems and counts a failure.
   */
  async reloadUsers(): Promise<boolean> {
    await this.#reloadCredentials();
    const loaded = await loadUserDirectory(this.config, false);
    if (!loaded.ok) {
      recordReload(this.metrics, 'users', false);
      this.log.error({ problems: describeIssues(loaded.issues) }, 'users reload failed; the previous users stay in force');
      return false;
    }
    if (loaded.users) this.#auth?.file?.replaceUsers(loaded.users);
    this.#attributes = loaded.attributes;
    // A remembered sign-in must not outlive a reload: a removed user or a changed password counts now.
    const forgotten = this.#auth?.cache?.clear();
    recordReload(this.metrics, 'users', true);
    this.log.info({ users: loaded.users?.size, attributes: loaded.attributes.size, credentials: this.config.auth?.credentials ? this.#credentials.size : undefined, authCacheCleared: forgotten }, 'users reloaded');
    return true;
  }

  /**
   * Re-reads the app passwords file, failing closed: a line that doesn't parse is dropped (its
   * app password stops working) and the others apply; a file that can't be read means no app
   * password works until it can. Never the previous contents: that would keep a revoked
   * credential alive whenever the edit that revoked it also broke something.
   */
  async #reloadCredentials(): Promise<void> {
    const file = this.config.auth?.credentials;
    if (!file) return;
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      this.#credentials = new CredentialIndex();
      recordReload(this.metrics, 'credentials', false);
      this.log.error({ file, err: (err as Error).message }, 'app passwords file unreadable: no app password works until it can be read');
      return;
    }
    const { credentials, issues } = parseCredentialLines(text, file);
    this.#credentials = credentials;
    recordReload(this.metrics, 'credentials', issues.length === 0);
    if (issues.length) this.log.error({ problems: describeIssues(issues), credentials: credentials.size }, 'app passwords file has problems: those lines are ignored (their app passwords do not work) until fixed');
  }

  /** The policy set in force for new sessions. */
  get policy(): PolicySet {
    return this.#policy;
  }

  /**
   * Loads the whole policy folder again and swaps it in at once. An invalid set is refused
   * whole: the old rules stay in force, the problems are logged with file, rule and field,
   * and the failure is counted. Sessions already open keep the set they started with.
   */
  async reloadPolicies(): Promise<boolean> {
    if (!this.config.policies) return true;
    try {
      const next = await loadPolicySet(this.config.policies);
      // A set that would make a listener an open relay is refused like an invalid one.
      const relay = openRelayProblems(this.config, next, { file: this.#configFile ?? UNKNOWN_ORIGIN.file, lineOf: () => undefined });
      if (relay.issues.length) throw new ConfigError(relay.issues);
      for (const w of relay.warnings) this.log.warn(w);
      this.#policy = next;
      this.metrics.policy.setPolicySet(next);
      recordReload(this.metrics, 'policy', true);
      this.log.info({ dir: next.dir, rules: next.ruleCount, files: next.files.length }, 'policies reloaded');
      return true;
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      recordReload(this.metrics, 'policy', false);
      this.log.error({ problems: describeIssues(err.issues) }, 'policy reload failed; the previous rules stay in force');
      return false;
    }
  }

  /** The config in force (a reload swaps in the parts that can change live). */
  get config(): Config {
    return this.#config;
  }

  /**
   * Re-reads the config file. An invalid file changes nothing. Of a valid one, the parts that
   * can change live (log level, limit numbers, drain time) are applied; every other change is
   * reported as needing a restart, never silently ignored.
   */
  async reloadConfig(): Promise<{ applied: readonly string[]; needRestart: readonly string[] } | undefined> {
    if (!this.#configFile) return { applied: [], needRestart: [] };
    let next: Config;
    try {
      next = await loadConfigFile(this.#configFile);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      recordReload(this.metrics, 'config', false);
      this.log.error({ problems: describeIssues(err.issues) }, 'config reload failed; the running config stays in force');
      return undefined;
    }
    const diff = diffConfig(this.#config, next);
    this.#config = applyLiveChanges(this.#config, next);
    this.log.level = this.#config.log.level;
    this.limits.reconfigure(this.#config.limits);
    recordReload(this.metrics, 'config', true);
    this.log.info({ applied: diff.applied }, 'config reloaded');
    if (diff.needRestart.length) this.log.warn({ needRestart: diff.needRestart }, `changed settings take effect only after a restart: ${diff.needRestart.join(', ')}`);
    return diff;
  }

  /** SIGHUP: everything that can change without a restart. Each part keeps its old state on failure. */
  async reload(): Promise<void> {
    await this.reloadConfig();
    await this.#reloadNoticeTemplate();
    await this.reloadUsers();
    await this.reloadPolicies();
    await this.#tls?.reload();
    await this.#dkim?.reload();
  }

  /** The notice template, read again (SIGHUP); a broken one keeps the one in force. */
  async #reloadNoticeTemplate(): Promise<void> {
    const file = this.config.notifications?.template;
    if (!file || !this.#notifier) return;
    try {
      this.#noticeTemplate = await readNoticeTemplate(file);
      this.log.info({ file }, 'suspension notice template reloaded');
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      this.log.error({ problems: describeIssues(err.issues) }, 'suspension notice template reload failed; the previous template stays in force');
    }
  }

  /** Where notices go: notifications.relay, else the backend's addresses with its TLS and credentials. */
  #noticeRelays(n: NonNullable<Config['notifications']>): NoticeRelay[] {
    const heloName = this.config.backend.heloName ?? this.config.hostname;
    if (n.relay) {
      const r = n.relay;
      const password = this.#material.notices?.relayPassword;
      return [
        {
          address: r.address,
          tls: r.tls,
          tlsOptions: { rejectUnauthorized: r.tlsVerify, minVersion: 'TLSv1.2', ...(this.#material.notices?.relayCa ? { ca: this.#material.notices.relayCa } : {}), ...(r.servername ? { servername: r.servername } : {}) },
          ...(r.auth ? { auth: { user: r.auth.user, password: password ?? '', mechanism: r.auth.mechanism } } : {}),
          heloName,
        },
      ];
    }
    const b = this.config.backend;
    return b.address.map((address) => {
      const { tls, tlsOptions } = this.#backendOptions(address);
      // With XOAUTH2 the schema requires notifications.relay: a notice has no token to sign in with.
      const auth = b.auth && b.auth.mechanism !== 'XOAUTH2' ? { auth: { user: b.auth.user, password: this.#material.backendPassword ?? '', mechanism: b.auth.mechanism } } : {};
      return { address, tls, tlsOptions: tlsOptions ?? {}, ...auth, heloName };
    });
  }

  #recordExpiry(certs: readonly LoadedCertificate[]): void {
    for (const c of certs) this.metrics.certificateExpiry.set({ certificate: c.source.label }, c.material.notAfter.getTime() / 1000);
  }

  /**
   * Stops the app. With `drain`, /readyz turns 503 at once, idle sessions get 421 4.3.2, and
   * transactions under way get `shutdown.drainSeconds` to finish (SIGTERM). Without it,
   * everything is closed at once.
   */
  async stop(opts: { drain?: boolean } = {}): Promise<void> {
    this.#stopping = true;
    this.#tls?.stop();
    this.#dkim?.stop();
    this.#usersWatcher?.stop();
    this.#policyWatcher?.stop();
    this.#health?.stop();
    const grace = opts.drain ? this.config.shutdown.drainSeconds * 1000 : 0;
    if (opts.drain) this.log.info({ drainSeconds: this.config.shutdown.drainSeconds, sessions: this.#listeners.reduce((n, l) => n + l.activeSessions, 0) }, 'draining');
    await Promise.all(this.#listeners.map((l) => l.drain(grace)));
    const admin = this.#admin;
    if (admin) {
      const closed = new Promise<void>((resolve) => admin.close(() => resolve()));
      // Keep-alive scrapers would otherwise hold close() open until they time out.
      admin.closeAllConnections();
      await closed;
    }
    if (this.#capture) await this.#capture.close();
    await this.#tokens?.close();
    this.#notifier?.stop();
    await this.#auth?.authenticator.close?.();
    await this.limits.close();
    await this.#logOutput?.end(LOG_END_MS);
  }

  /** SIGUSR1: log.file opened anew under its name, after logrotate moved the old one away. */
  reopenLog(): void {
    const file = this.config.log.file;
    if (!file || !this.#logOutput) {
      this.log.info('SIGUSR1: there is no log.file to reopen');
      return;
    }
    this.#logOutput.reopen();
    this.log.info({ file }, 'SIGUSR1: log file reopened');
  }

  /**
   * Forgets remembered sign-ins (all, or one user's): `smtpgate auth cache clear`. Logged, since
   * it changes who is let in without a password check.
   */
  clearAuthCache(user?: string): CacheClearAnswer {
    const cache = this.#auth?.cache;
    if (!cache) return { cacheOff: true };
    const cleared = cache.clear(user);
    this.log.info({ user, cleared }, 'auth cache cleared');
    return user === undefined ? { cleared } : { cleared, user };
  }

  #adminRouteOptions() {
    return {
      ...(this.#material.adminToken ? { token: this.#material.adminToken } : {}),
      // A browser page reaching the admin routes is a CSRF or DNS-rebinding attempt: worth a line.
      onRefused: (r: HttpRefusal, req: http.IncomingMessage) =>
        this.log.warn(
          { status: r.status, path: req.url, client: req.socket.remoteAddress, origin: req.headers.origin, secFetchSite: req.headers['sec-fetch-site'], contentType: req.headers['content-type'] },
          'admin request refused',
        ),
    };
  }

  /** Whether this app should get traffic, and why not: what /readyz answers (the cluster primary asks each worker). */
  readiness(): Readiness {
    const reasons: string[] = [];
    if (this.#stopping) reasons.push('shutting down');
    if (this.#listeners.length !== this.config.listeners.length) reasons.push('listeners not bound');
    // "Recently": within three health-check rounds, so one lost probe doesn't flap readiness.
    const interval = this.config.backend.healthCheckInterval;
    const required = this.config.backend.requiredForReadiness;
    if (required && interval > 0 && !this.#health?.anyUpWithin(3 * interval)) reasons.push('no backend answered a recent health check');
    // The command the running health checks look for (backend.* changes need a restart).
    const command = this.#health?.identityCommand;
    const withoutIdentity = interval > 0 && command && this.config.backend.requireIdentity ? this.#health!.withoutIdentity() : [];
    if (withoutIdentity.length > 0) reasons.push(`backend ${withoutIdentity.join(', ')} ${missingIdentityText(command!)}`);
    if (!this.limits.storeUp && this.config.limits.onStoreFailure === 'deny') reasons.push('limiter store unreachable and limits.onStoreFailure is deny');
    // Nobody can sign in when every auth source is down (cached sign-ins aside). One source of
    // several being down is in smtpgate_auth_source_up and the log, not here: the others work.
    const authDown = this.#auth?.chain.down() ?? [];
    if (authDown.length > 0 && authDown.length === this.#auth!.chain.sources.length) {
      reasons.push(`no auth source answers: ${authDown.map((d) => `${d.source} (${d.detail})`).join('; ')}`);
    }
    return { ready: reasons.length === 0, reasons };
  }

  #backendOptions(address: HostPort): BackendClientOptions {
    const b = this.config.backend;
    return {
      host: address.host,
      port: address.port,
      tls: b.tls,
      tlsOptions: {
        rejectUnauthorized: b.tlsVerify,
        minVersion: 'TLSv1.2',
        ...(this.#material.backendCa ? { ca: this.#material.backendCa } : {}),
        ...(b.servername ? { servername: b.servername } : {}),
      },
      heloName: b.heloName ?? this.config.hostname,
      writes: this.#writes,
      capabilities: new CapabilityCache(),
      timeouts: {
        connectMs: b.timeouts.connect,
        greetingMs: b.timeouts.greeting,
        commandMs: b.timeouts.command,
        dataIdleMs: b.timeouts.dataIdle,
        finalReplyMs: b.timeouts.finalReply,
      },
    };
  }
}

/** Loads the config file and everything it names, then builds the app (not yet started). */
export async function createAppFromFile(file: string, opts: AppOptions = {}): Promise<App> {
  const { config, material } = await checkConfigFile(file);
  return new App(config, material, { ...opts, configFile: file });
}

/** The EHLO keyword `backend.identity` needs from the backend (none for `none`). */
function identityCommandOf(identity: IdentityMode): 'XCLIENT' | 'XFORWARD' | undefined {
  return identity === 'none' ? undefined : identity === 'xclient' ? 'XCLIENT' : 'XFORWARD';
}

function missingIdentityText(command: 'XCLIENT' | 'XFORWARD'): string {
  const fix = command === 'XCLIENT' ? 'smtpd_authorized_xclient_hosts' : 'smtpd_authorized_xforward_hosts';
  return `does not advertise ${command} (backend.identity), so it judges smtpgate's address instead of the client's: on Postfix add smtpgate's address to ${fix}, or set backend.requireIdentity: false to stay ready without it`;
}
