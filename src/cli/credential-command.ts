/**
 * `smtpgate credential add|list|revoke`: app passwords (auth.credentials), one random secret
 * per device, kept in the credentials file as a keyed hash (see ../auth/credentials-file.ts).
 *
 * The file format and its edits are pure (`credentials-file.ts`); finding, reading and
 * atomically replacing the file is `edited-file.ts`, as for `smtpgate user`. This file owns
 * what is particular to app passwords: the restrictions given on the command line, printing
 * the secret once, and reading each credential's last use from the limits store (Redis
 * directly, or the running instance's admin address with the memory store).
 */
import type { Command } from 'commander';
import { CredentialUsage, usageField, type CredentialUse } from '../auth/credential-usage.js';
import {
  applyCredentialsEdit,
  formatCredentialLine,
  generateSecret,
  hashSecret,
  isValidLabel,
  parseCredentialsFile,
  parseTime,
  type Credential,
  type CredentialIndex,
} from '../auth/credentials-file.js';
import { fetchCredentialUsage } from '../auth/admin.js';
import { isValidUsername, parseUsersFile } from '../auth/users-file.js';
import { hostBitsAdvice } from '../config/cidr-host-bits.js';
import type { Config } from '../config/schema.js';
import { formatWindow } from '../limits/rate.js';
import { parseCidr } from '../parsing/cidr.js';
import { parseDuration } from '../parsing/units.js';
import { CommandRefusal, refusalsToExitCode } from './command-refusal.js';
import { chooseFile, editFile, followSymlinks, readFileText, type FileInConfig, type FileOptions } from './edited-file.js';
import { withStore } from './live-store.js';

const CREDENTIALS_FILE: FileInConfig = { noun: 'credentials file', setting: 'auth.credentials', pick: (config) => config.auth?.credentials };

interface AddOptions extends FileOptions {
  label: string;
  networks?: string;
  expires?: string;
  listeners?: string;
}

interface ListOptions extends FileOptions {
  json?: boolean;
}

const HELP = `
An app password is a random secret for one device or program (a printer, a phone, a script),
checked by smtpgate itself against the credentials file (auth.credentials), which holds only
its hash. Each has a label, unique per user, and may be limited to client networks, to
listeners, and in time. Revoking one leaves the user's other app passwords and password alone.

The file: --file PATH, or --config FILE for the file its auth.credentials names (list also reads
the last use of each app password from that config's limits store). A symlinked file is
followed and the link kept. A file whose directory can't be written is refused with nothing
changed: a Kubernetes Secret volume is read-only, so edit a copy (--file ./credentials) and
update the Secret from it. A running smtpgate picks up a change within auth.reloadInterval.
Commands on one file take turns: each holds FILE.lock beside it while it edits, and another
waits up to 10 s for it; a lock left by a command that died is taken over.

Exit status: 0 done; 1 refused (the reason on stderr as "smtpgate: ...", and nothing changed).

Examples:
  # a printer on 10.1.3.0/24, for a year; the secret goes straight into a variable
  secret=$(smtpgate credential add alice@corp.example --label printer-3rd-floor \\
             --networks 10.1.3.0/24 --expires 365d --config /etc/smtpgate/smtpgate.yaml)
  smtpgate credential list alice@corp.example --config /etc/smtpgate/smtpgate.yaml
  smtpgate credential list --json --file /etc/smtpgate/credentials
  smtpgate credential revoke alice@corp.example printer-3rd-floor --config /etc/smtpgate/smtpgate.yaml`;

const ADD_HELP = `
The secret ("sgap" and 26 letters and digits) is printed alone on the first line of stdout,
once: store it in the device now. Only its hash is kept; if it is lost, revoke it and add
another. What was added, and its restrictions, go to stderr.

  --networks   client addresses or networks the device signs in from, comma-separated
               (10.1.3.0/24,2001:db8:3::/48, or one address); a network written with host
               bits set (10.1.3.5/24) is refused with the two ways to write it
  --expires    a duration from now (365d, 12h) or an ISO 8601 date or time (2027-12-31,
               2027-12-31T18:00:00Z, 2027-12-31T18:00:00+01:00); never one in the past
  --listeners  listener names (with --config, they must be its listeners)

A new file is created with mode 0640; an existing one keeps its mode and owner. With --config,
when auth.backend is file only, adding an app password for a user the users file doesn't list
is warned about: that user can't be looked up, so the app password can't sign in.

Example:
  smtpgate credential add alice@corp.example --label printer-3rd-floor --networks 10.1.3.0/24 \\
    --expires 365d --config /etc/smtpgate/smtpgate.yaml`;

const LIST_HELP = `
One line per app password: user, label, networks, listeners, when it was created, when it
expires ("(expired)" once past), and its last use (time and client address). The secret is
never shown; it isn't stored.

Last use is read from the limits store of --config's smtpgate: Redis directly
(limits.store.kind: redis), or the running instance over its admin address (metrics.address)
with the memory store, which forgets at a restart. "never": no use recorded there. "unknown":
it couldn't be read (with --file alone, the instance not running, or the store down); the list
is printed anyway and stderr says why, once.

A user with no app passwords (or a file that doesn't exist yet) prints nothing ({"credentials":
[]} with --json), a note on stderr, and exits 0: that is an answer, not an error. A broken file
is refused (exit 1) with each problem at its line.

--json prints {"file", "lastUse": {"known", "from"?, "reason"?}, "credentials": [{"user",
"label", "created", "expires", "expired", "networks", "listeners", "lastUsed"?}]}: times in ISO
8601, null where not set (networks and listeners null: any), lastUsed {"at", "client"} or null
(never), and absent when last use is unknown.`;

const REVOKE_HELP = `
Removes that one line; the rest of the file is kept byte for byte. A running smtpgate refuses
the app password once it has re-read the file (within auth.reloadInterval). With --config and a
Redis limits store, its last-use record is removed from Redis too (best effort: no other
credential ever reads it). A label the user doesn't have is refused (exit 1).

Example:
  smtpgate credential revoke alice@corp.example printer-3rd-floor --config /etc/smtpgate/smtpgate.yaml`;

export function registerCredentialCommand(program: Command): void {
  const credential = program
    .command('credential')
    .description('app passwords: add one per device (the secret is shown once), list them with their last use, revoke one')
    .addHelpText('after', HELP);

  const withFileOptions = (cmd: Command) =>
    cmd
      .option('-f, --file <path>', 'the credentials file')
      .option('-c, --config <file>', 'use the credentials file named by auth.credentials in this config (and its limits store for last use)');

  withFileOptions(credential.command('add <user>').description('make a new app password for a user and print it once'))
    .requiredOption('-l, --label <label>', 'what it is for, unique per user: 1-64 letters, digits and ._- (printer-3rd-floor)')
    .option('--networks <cidrs>', 'only from these client networks, comma-separated')
    .option('--expires <when>', 'refused from then on: a duration from now (365d, 12h) or an ISO 8601 date/time')
    .option('--listeners <names>', 'only on these listeners, comma-separated')
    .addHelpText('after', ADD_HELP)
    .action((user: string, opts: AddOptions) => refusalsToExitCode(() => addCredential(user, opts, new Date())));

  withFileOptions(credential.command('list [user]').description("list every app password, or one user's, with its restrictions and last use"))
    .option('--json', 'print JSON')
    .addHelpText('after', LIST_HELP)
    .action((user: string | undefined, opts: ListOptions) => refusalsToExitCode(() => listCredentials(user, opts, new Date())));

  withFileOptions(credential.command('revoke <user> <label>').description('remove one app password; the user\'s others stay'))
    .addHelpText('after', REVOKE_HELP)
    .action((user: string, label: string, opts: FileOptions) => refusalsToExitCode(() => revokeCredential(user, label, opts)));
}

// ── add ───────────────────────────────────────────────────────────────────────────────────

async function addCredential(user: string, opts: AddOptions, now: Date): Promise<void> {
  const { file, config } = await chooseFile(opts, CREDENTIALS_FILE);
  if (!isValidUsername(user)) throw new CommandRefusal(`user name ${JSON.stringify(user)} is not valid: use 1-128 letters, digits and ._%+@- (as the user signs in)`);
  if (!isValidLabel(opts.label)) throw new CommandRefusal(`--label ${JSON.stringify(opts.label)}: use 1-64 letters, digits and ._- (e.g. printer-3rd-floor)`);
  const restrictions = {
    ...(opts.networks !== undefined ? { networks: parseNetworks(opts.networks) } : {}),
    ...(opts.expires !== undefined ? { expires: parseExpiry(opts.expires, now) } : {}),
    ...(opts.listeners !== undefined ? { listeners: parseListeners(opts.listeners, config, opts.config) } : {}),
  };
  const secret = generateSecret();
  const credential = { user, label: opts.label, hash: hashSecret(secret), created: now, ...restrictions };
  // What is written must read back: this catches what the checks above don't (a listener name's shape).
  const line = parseCredentialsFile(formatCredentialLine(credential), file);
  if (!line.ok && line.issues[0]) throw new CommandRefusal(`${line.issues[0].message}; nothing was changed`);

  await editFile(await followSymlinks(file), file, (current) => {
    const result = applyCredentialsEdit(current.text, file, { op: 'add', credential });
    if (!result.ok) throw new CommandRefusal(result.message, result.issues ?? []);
    return result.text;
  });

  // Only now that the file holds its hash: a secret printed for a failed write would never work.
  process.stdout.write(`${secret}\n`);
  const note = [
    `app password ${JSON.stringify(opts.label)} for ${user} added to ${file}`,
    'shown once: store it in the device now (only its hash is kept; if it is lost, revoke it and add another)',
    `  networks:  ${restrictions.networks?.join(', ') ?? 'any'}`,
    `  listeners: ${restrictions.listeners?.join(', ') ?? 'any'}`,
    `  expires:   ${restrictions.expires ? shownTime(restrictions.expires) : 'never'}`,
    `(a running smtpgate picks it up within auth.reloadInterval${config?.auth ? `, ${formatWindow(config.auth.reloadInterval)}` : ''})`,
  ];
  const warning = config && opts.config !== undefined ? await unknownUserWarning(user, config, opts.config) : undefined;
  process.stderr.write(`${note.join('\n')}\n${warning ? `warning: ${warning}\n` : ''}`);
}

function parseNetworks(text: string): string[] {
  return text.split(',').map((raw) => {
    const n = raw.trim();
    if (!parseCidr(n)) throw new CommandRefusal(`--networks: ${JSON.stringify(n)} is not an address or CIDR network such as 10.1.3.0/24 or 2001:db8::/48`);
    const advice = hostBitsAdvice(n);
    if (advice) throw new CommandRefusal(`--networks: ${advice}`);
    return n;
  });
}

/** A duration from `now` ("365d") or an ISO 8601 date/time; never one already past. To the second, as the file keeps it. */
function parseExpiry(text: string, now: Date): Date {
  const ms = parseDuration(text);
  const at = ms !== undefined ? new Date(now.getTime() + ms) : isCalendarDay(text.trim()) ? parseTime(text.trim()) : undefined;
  if (!at) {
    throw new CommandRefusal(`--expires ${JSON.stringify(text)}: expected a duration from now such as 365d or 12h, or an ISO 8601 date or time such as 2027-12-31 or 2027-12-31T18:00:00Z`);
  }
  // ISO 8601 as the file writes it has four-digit years.
  if (Number.isNaN(at.getTime()) || at.getUTCFullYear() > 9999) throw new CommandRefusal(`--expires ${text}: too far ahead; give a time before the year 10000, or leave --expires out`);
  const expires = new Date(Math.floor(at.getTime() / 1000) * 1000);
  if (expires.getTime() <= now.getTime()) {
    throw new CommandRefusal(`--expires ${text}: ${shownTime(expires)} is not in the future (it is now ${shownTime(now)}); nothing was changed`);
  }
  return expires;
}

/** Whether the text starts with a day that exists: Date rolls "2027-02-30" over to March 2 without a word. */
function isCalendarDay(text: string): boolean {
  const m = /^(\d{4})-(\d{2})-(\d{2})/.exec(text);
  if (!m) return false;
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const date = new Date(Date.UTC(year, month - 1, day));
  return date.getUTCMonth() === month - 1 && date.getUTCDate() === day;
}

function parseListeners(text: string, config: Config | undefined, configFile: string | undefined): string[] {
  const names = text.split(',').map((n) => n.trim());
  if (config) {
    const known = config.listeners.map((l) => l.name);
    const unknown = names.find((n) => !known.includes(n));
    if (unknown !== undefined) throw new CommandRefusal(`--listeners: ${configFile} has no listener ${JSON.stringify(unknown)} (its listeners: ${known.join(', ')})`);
  }
  return names;
}

/**
 * With only the users file to look users up in, an app password for a user it doesn't list can
 * never sign in (the secret checks out, then the lookup says unknown user). Other sources may
 * know the user; only the file-only chain can tell for sure.
 */
async function unknownUserWarning(user: string, config: Config, configFile: string): Promise<string | undefined> {
  const auth = config.auth;
  if (!auth?.users || auth.backend.length !== 1 || auth.backend[0] !== 'file') return undefined;
  const { text } = await readFileText(await followSymlinks(auth.users), auth.users).catch(() => ({ text: undefined }));
  const parsed = text === undefined ? undefined : parseUsersFile(text, auth.users);
  if (!parsed?.ok) return `could not check that ${user} is in the users file ${auth.users} (it can't be read or has problems; see smtpgate check)`;
  if (parsed.users.has(user)) return undefined;
  return `${user} is not in the users file ${auth.users}, and auth.backend is file only: this app password can't sign in until the user is added (smtpgate user add ${user} --config ${configFile})`;
}

// ── list ──────────────────────────────────────────────────────────────────────────────────

/** The last uses, or why they can't be had. */
type LastUses = { readonly known: true; readonly from: string; readonly used: Map<string, CredentialUse> } | { readonly known: false; readonly reason: string };

async function listCredentials(user: string | undefined, opts: ListOptions, now: Date): Promise<void> {
  const { file, config } = await chooseFile(opts, CREDENTIALS_FILE);
  const index = await readCredentials(file);
  const credentials = index ? (user === undefined ? index.all() : [...index.of(user)]) : [];
  if (credentials.length === 0) {
    const why = !index ? `${file} does not exist (yet)` : user === undefined ? `${file} holds none` : `${file} holds none for ${user}`;
    process.stderr.write(`no app passwords: ${why}\n`);
    if (opts.json) process.stdout.write(JSON.stringify({ file, lastUse: { known: false, reason: 'nothing to look up' }, credentials: [] }, null, 2) + '\n');
    return;
  }
  const lastUses = await readLastUses(config);
  if (!lastUses.known) process.stderr.write(`last used: unknown: ${lastUses.reason}\n`);
  const rows = credentials.map((c) => rowOf(c, lastUses, now));
  if (opts.json) {
    const lastUse = lastUses.known ? { known: true, from: lastUses.from } : { known: false, reason: lastUses.reason };
    process.stdout.write(JSON.stringify({ file, lastUse, credentials: rows }, null, 2) + '\n');
  } else {
    process.stdout.write(formatTable(rows));
  }
}

/** The parsed file; undefined when it does not exist. A file with problems is refused. */
async function readCredentials(file: string): Promise<CredentialIndex | undefined> {
  const { text, stats } = await readFileText(await followSymlinks(file), file);
  if (!stats) return undefined;
  const parsed = parseCredentialsFile(text, file);
  if (!parsed.ok) {
    const n = parsed.issues.length;
    throw new CommandRefusal(`${file} has ${n} problem${n === 1 ? '' : 's'}; fix ${n === 1 ? 'it' : 'them'} first (a running smtpgate refuses it too):`, parsed.issues);
  }
  return parsed.credentials;
}

async function readLastUses(config: Config | undefined): Promise<LastUses> {
  if (!config) return { known: false, reason: 'with --file alone there is no limits store to read it from: pass --config (the running smtpgate\'s config) instead to see it' };
  const kind = config.limits.store.kind;
  try {
    const used = await withStore(
      config,
      (base, token) =>
        fetchCredentialUsage(base, token ? { token } : {}).catch((err: Error) => {
          throw new Error(`could not ask the running smtpgate at ${base} (metrics.address; the memory store lives in its process): ${messageOf(err)}`);
        }),
      (limits) => new CredentialUsage(limits.notes).list(),
    );
    return { known: true, from: kind === 'memory' ? 'instance' : kind, used };
  } catch (err) {
    return { known: false, reason: messageOf(err as Error) };
  }
}

/** fetch's "fetch failed" hides the reason (connection refused) in its cause. */
function messageOf(err: Error): string {
  const cause = (err as { cause?: unknown }).cause;
  return cause instanceof Error ? `${err.message} (${cause.message})` : err.message;
}

interface CredentialRow {
  readonly user: string;
  readonly label: string;
  readonly created: string | null;
  readonly expires: string | null;
  readonly expired: boolean;
  readonly networks: readonly string[] | null;
  readonly listeners: readonly string[] | null;
  /** Absent when last use is unknown; null: none recorded. */
  readonly lastUsed?: CredentialUse | null;
}

function rowOf(c: Credential, lastUses: LastUses, now: Date): CredentialRow {
  const used = lastUses.known ? lastUses.used.get(usageField(c)) : undefined;
  return {
    user: c.user,
    label: c.label,
    created: c.created ? shownTime(c.created) : null,
    expires: c.expires ? shownTime(c.expires) : null,
    expired: c.expires !== undefined && now.getTime() >= c.expires.getTime(),
    networks: c.networks ?? null,
    listeners: c.listeners ?? null,
    ...(lastUses.known ? { lastUsed: used ? { at: used.at, client: used.client } : null } : {}),
  };
}

function formatTable(rows: readonly CredentialRow[]): string {
  const lastUsed = (r: CredentialRow) => (r.lastUsed === undefined ? 'unknown' : r.lastUsed === null ? 'never' : `${shownTime(new Date(r.lastUsed.at))} from ${r.lastUsed.client}`);
  const table = [
    ['USER', 'LABEL', 'NETWORKS', 'LISTENERS', 'CREATED', 'EXPIRES', 'LAST USED'],
    ...rows.map((r) => [
      r.user,
      r.label,
      r.networks?.join(',') ?? 'any',
      r.listeners?.join(',') ?? 'any',
      r.created ?? '-',
      r.expires ? `${r.expires}${r.expired ? ' (expired)' : ''}` : 'never',
      lastUsed(r),
    ]),
  ];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  return table.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

/** ISO 8601 to the second, as the file writes times. */
function shownTime(d: Date): string {
  return Number.isNaN(d.getTime()) ? 'an unreadable time' : d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

// ── revoke ────────────────────────────────────────────────────────────────────────────────

async function revokeCredential(user: string, label: string, opts: FileOptions): Promise<void> {
  const { file, config } = await chooseFile(opts, CREDENTIALS_FILE);
  let revoked: Credential | undefined;
  await editFile(await followSymlinks(file), file, (current) => {
    if (!current.stats) throw new CommandRefusal(`${file} does not exist; nothing was changed`);
    const result = applyCredentialsEdit(current.text, file, { op: 'revoke', user, label });
    if (!result.ok) throw new CommandRefusal(result.message, result.issues ?? []);
    // The edit succeeded, so the file parsed and holds this credential: its hash keys its last use.
    const parsed = parseCredentialsFile(current.text, file);
    revoked = parsed.ok ? parsed.credentials.of(user).find((c) => c.label === label) : undefined;
    return result.text;
  });
  process.stdout.write(`revoked app password ${label} of ${user} in ${file} (a running smtpgate refuses it within auth.reloadInterval)\n`);
  if (config && revoked && config.limits.store.kind !== 'memory') process.stderr.write(`${await forgetLastUse(config, revoked)}\n`);
}

/**
 * Tidiness, best effort: the revoked credential's last-use record goes from Redis. A new
 * credential never reads it (its field holds the hash's salt), so failing here changes nothing.
 * With the memory store the record dies with the running process.
 */
async function forgetLastUse(config: Config, revoked: Credential): Promise<string> {
  const kind = config.limits.store.kind;
  try {
    await withStore(config, () => Promise.resolve(), (limits) => new CredentialUsage(limits.notes).forget(revoked));
    return `its last-use record was removed from the limits store (${kind})`;
  } catch (err) {
    return `its last-use record could not be removed from the limits store (${kind}): ${messageOf(err as Error)}; harmless: no other credential reads it`;
  }
}
