/**
 * The app passwords file (`auth.credentials`): one credential per line, written by
 * `smtpgate credential add`.
 *
 *   # comment
 *   USER:LABEL:HASH[:OPTIONS]
 *   alice@corp.example:printer-3rd-floor:$sgap1$<salt>$<mac>:created=2026-12-07T10:00:00Z networks=10.1.3.0/24
 *
 * - USER is a login as the user signs in (the users file's rules: letters, digits, ._%+@-);
 *   LABEL names the device or application (letters, digits, ._-), unique per user.
 * - HASH is `$sgap1$` + base64url(salt) + `$` + base64url(HMAC-SHA-256(salt, secret)). The
 *   secret itself is never stored. It is random and long (130 bits), so a fast keyed hash is
 *   as safe as bcrypt against an offline guess and costs microseconds per sign-in, not a
 *   bcrypt verification.
 * - OPTIONS, separated by spaces, each at most once:
 *     created=ISO-8601 time        when it was made (shown by `credential list`)
 *     expires=ISO-8601 time        refused from then on
 *     networks=CIDR,CIDR           only from these client addresses
 *     listeners=NAME,NAME          only on these listeners
 *   The colons inside an IPv6 network are fine: the options are everything after the third ":".
 *
 * An app password looks like `sgap` and 26 letters and digits (base32: a-z, 2-7), so smtpgate
 * can tell one from a directory password without asking anything: a password of that shape is
 * only ever checked against this file, and never sent to the directory.
 *
 * Parsing, formatting and editing are pure (text in, text out); the CLI and the app do the I/O.
 */
import { createHmac, randomBytes, randomInt, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { CidrSet, parseCidr } from '../parsing/cidr.js';
import { ConfigError, type ConfigIssue } from '../parsing/errors.js';
import { isValidUsername } from './users-file.js';

export interface Credential {
  readonly user: string;
  readonly label: string;
  /** `$sgap1$salt$mac`. */
  readonly hash: string;
  readonly created?: Date;
  readonly expires?: Date;
  /** As written, for `credential list`; `allowed` is what is checked. */
  readonly networks?: readonly string[];
  readonly allowed?: CidrSet;
  readonly listeners?: readonly string[];
}

export type CredentialsParseResult = { ok: true; credentials: CredentialIndex } | { ok: false; issues: ConfigIssue[] };

/** The prefix every app password starts with. */
export const SECRET_PREFIX = 'sgap';
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
/** 26 base32 characters: 130 bits. */
const SECRET_CHARS = 26;
const SECRET_SHAPE = new RegExp(`^${SECRET_PREFIX}[a-z2-7]{${SECRET_CHARS}}$`);
const HASH_SHAPE = /^\$sgap1\$([A-Za-z0-9_-]{22})\$([A-Za-z0-9_-]{43})$/;
const LABEL = /^[A-Za-z0-9._-]{1,64}$/;
const LISTENER = /^[A-Za-z0-9._-]{1,64}$/;
const OPTION_KEYS = ['created', 'expires', 'networks', 'listeners'] as const;
type OptionKey = (typeof OPTION_KEYS)[number];

/**
 * The app password a password is, if it has an app password's shape (and so is checked only
 * against the file, never sent to an account source): as generated, or typed on a device that
 * upper-cases it or adds a space around it. Undefined for any other password.
 */
export function appPasswordIn(password: string): string | undefined {
  if (password.length < SECRET_PREFIX.length + SECRET_CHARS || password.length > SECRET_PREFIX.length + SECRET_CHARS + 8) return undefined;
  const secret = password.trim().toLowerCase();
  return SECRET_SHAPE.test(secret) ? secret : undefined;
}

/** A new app password: `sgap` and 26 random base32 characters, from the OS's CSPRNG. */
export function generateSecret(): string {
  let s = SECRET_PREFIX;
  for (let i = 0; i < SECRET_CHARS; i++) s += BASE32[randomInt(32)];
  return s;
}

/** The stored form of a secret: a fresh random salt and the HMAC under it. */
export function hashSecret(secret: string): string {
  const salt = randomBytes(16);
  return `$sgap1$${salt.toString('base64url')}$${mac(salt, secret).toString('base64url')}`;
}

function mac(salt: Buffer, secret: string): Buffer {
  return createHmac('sha256', salt).update(secret, 'utf8').digest();
}

/** Whether `secret` is the one `hash` was made from; constant time in the secret. */
export function secretMatches(secret: string, hash: string): boolean {
  const m = HASH_SHAPE.exec(hash);
  if (!m) return false;
  return timingSafeEqual(mac(Buffer.from(m[1]!, 'base64url'), secret), Buffer.from(m[2]!, 'base64url'));
}

export function isValidLabel(label: string): boolean {
  return LABEL.test(label);
}

/**
 * The credentials, by user; each user's in file order. A login is matched without regard to
 * case, as directories match logins ("Alice" signs in with alice's app password); the account
 * source still decides who that is.
 */
export class CredentialIndex {
  readonly #byUser = new Map<string, Credential[]>();
  size = 0;

  add(c: Credential): void {
    const key = c.user.toLowerCase();
    const list = this.#byUser.get(key);
    if (list) list.push(c);
    else this.#byUser.set(key, [c]);
    this.size++;
  }

  of(user: string): readonly Credential[] {
    return this.#byUser.get(user.toLowerCase()) ?? [];
  }

  /** The user's credential whose secret this is, if any. Checks every one of them, match or not. */
  match(user: string, secret: string): Credential | undefined {
    let found: Credential | undefined;
    for (const c of this.of(user)) if (secretMatches(secret, c.hash) && !found) found = c;
    return found;
  }

  all(): Credential[] {
    return [...this.#byUser.values()].flat();
  }
}

export function parseCredentialsFile(text: string, file: string): CredentialsParseResult {
  const { credentials, issues } = parseCredentialLines(text, file);
  return issues.length ? { ok: false, issues } : { ok: true, credentials };
}

/**
 * Every line that parses, and the problems of those that don't. A reload takes the lines that
 * parse and drops the others (their app passwords stop working), so that a slip in the file
 * never keeps a revoked credential alive.
 */
export function parseCredentialLines(text: string, file: string): { credentials: CredentialIndex; issues: ConfigIssue[] } {
  const index = new CredentialIndex();
  const issues: ConfigIssue[] = [];
  const seen = new Set<string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const at = { file, path: '', line: i + 1 };
    const parsed = parseLine(line);
    if ('message' in parsed) {
      issues.push({ ...at, message: parsed.message });
      return;
    }
    const key = `${parsed.user.toLowerCase()}\0${parsed.label}`;
    if (seen.has(key)) {
      issues.push({ ...at, message: `${parsed.user} has two credentials labelled ${JSON.stringify(parsed.label)}: labels are unique per user` });
      return;
    }
    seen.add(key);
    index.add(parsed);
  });
  return { credentials: index, issues };
}

/** Reads and parses the file; a problem is a ConfigError naming the file and line. */
export async function readCredentialsFile(file: string): Promise<CredentialIndex> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError([{ file, path: 'auth.credentials', message: `cannot read the app passwords file: ${(err as Error).message}` }]);
  }
  const parsed = parseCredentialsFile(text, file);
  if (!parsed.ok) throw new ConfigError(parsed.issues);
  return parsed.credentials;
}

function parseLine(line: string): Credential | { message: string } {
  const fields: string[] = [];
  let rest = line;
  for (let i = 0; i < 3; i++) {
    const colon = rest.indexOf(':');
    if (colon < 0) {
      fields.push(rest);
      rest = '';
      break;
    }
    fields.push(rest.slice(0, colon));
    rest = rest.slice(colon + 1);
  }
  if (fields.length < 3) return { message: 'expected "USER:LABEL:HASH[:OPTIONS]" (as written by smtpgate credential add)' };
  const [user, label, hash] = fields as [string, string, string];
  if (!isValidUsername(user)) return { message: `user name ${JSON.stringify(user)} has characters other than letters, digits and ._%+@-` };
  if (!isValidLabel(label)) return { message: `label ${JSON.stringify(label)}: use 1-64 letters, digits and ._-` };
  if (!HASH_SHAPE.test(hash)) return { message: `${user}/${label}: the hash is not an app password hash ($sgap1$…); make credentials with "smtpgate credential add"` };
  const options = parseOptions(rest.trim());
  if ('message' in options) return { message: `${user}/${label}: ${options.message}` };
  return Object.assign({ user, label, hash }, options);
}

type Options = Pick<Credential, 'created' | 'expires' | 'networks' | 'allowed' | 'listeners'>;

function parseOptions(text: string): Options | { message: string } {
  const out: { -readonly [K in keyof Options]: Options[K] } = {};
  const given = new Set<string>();
  for (const word of text ? text.split(/\s+/) : []) {
    const eq = word.indexOf('=');
    const key = eq > 0 ? word.slice(0, eq) : word;
    const value = eq > 0 ? word.slice(eq + 1) : '';
    if (!(OPTION_KEYS as readonly string[]).includes(key)) return { message: `unknown option ${JSON.stringify(key)}; expected ${OPTION_KEYS.join('=, ')}=` };
    if (given.has(key)) return { message: `${key}= is given twice` };
    given.add(key);
    if (value === '') return { message: `${key}= has no value` };
    switch (key as OptionKey) {
      case 'created':
      case 'expires': {
        const date = parseTime(value);
        if (!date) return { message: `${key}=${value} is not an ISO 8601 time such as 2027-03-07T10:00:00Z` };
        out[key as 'created' | 'expires'] = date;
        break;
      }
      case 'networks': {
        const list = value.split(',');
        const bad = list.find((n) => !parseCidr(n));
        if (bad !== undefined) return { message: `networks: ${JSON.stringify(bad)} is not an address or CIDR network (10.1.3.0/24, 2001:db8::/48)` };
        out.networks = list;
        out.allowed = new CidrSet(list.map((n) => parseCidr(n)!));
        break;
      }
      case 'listeners': {
        const list = value.split(',');
        const bad = list.find((n) => !LISTENER.test(n));
        if (bad !== undefined) return { message: `listeners: ${JSON.stringify(bad)} is not a listener name` };
        out.listeners = list;
        break;
      }
    }
  }
  return out;
}

/** Strict ISO 8601 with a zone (a date alone is midnight UTC); also what `credential add --expires` takes. */
export function parseTime(value: string): Date | undefined {
  if (!/^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2}))?$/.test(value)) return undefined;
  // A day the calendar doesn't have (2027-02-30) is refused, not rolled over into March.
  const [y, m, d] = value.slice(0, 10).split('-').map(Number) as [number, number, number];
  if (new Date(Date.UTC(y, m - 1, d)).getUTCDate() !== d) return undefined;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? undefined : date;
}

/** One credential as a line of the file (no line ending). */
export function formatCredentialLine(c: Pick<Credential, 'user' | 'label' | 'hash' | 'created' | 'expires' | 'networks' | 'listeners'>): string {
  const options: string[] = [];
  if (c.created) options.push(`created=${isoSeconds(c.created)}`);
  if (c.expires) options.push(`expires=${isoSeconds(c.expires)}`);
  if (c.networks?.length) options.push(`networks=${c.networks.join(',')}`);
  if (c.listeners?.length) options.push(`listeners=${c.listeners.join(',')}`);
  return `${c.user}:${c.label}:${c.hash}${options.length ? `:${options.join(' ')}` : ''}`;
}

function isoSeconds(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

// ── checks at sign-in ─────────────────────────────────────────────────────────────────────

/** Why a matching credential is refused here and now; undefined when it may be used. */
export function credentialRefusal(c: Credential, where: { readonly remoteAddress: string; readonly listener: string; readonly now: Date }): string | undefined {
  if (c.expires && where.now.getTime() >= c.expires.getTime()) return `app password ${c.label} expired at ${isoSeconds(c.expires)}`;
  if (c.listeners && !c.listeners.includes(where.listener)) return `app password ${c.label} is not for listener ${where.listener} (only ${c.listeners.join(', ')})`;
  if (c.allowed && !c.allowed.has(where.remoteAddress)) return `app password ${c.label} is not for client ${where.remoteAddress} (only ${c.networks!.join(', ')})`;
  return undefined;
}

// ── edits, for `smtpgate credential add|revoke` ───────────────────────────────────────────

export type CredentialsEdit =
  | { readonly op: 'add'; readonly credential: Parameters<typeof formatCredentialLine>[0] }
  | { readonly op: 'revoke'; readonly user: string; readonly label: string };

export type CredentialsEditResult = { ok: true; text: string } | { ok: false; message: string; issues?: readonly ConfigIssue[] };

/**
 * Applies one edit to the file's text. Comments, blank lines and other credentials are kept
 * byte for byte; `add` appends a line, `revoke` drops one. A file with any problem is refused
 * rather than edited, as with the users file.
 */
export function applyCredentialsEdit(text: string, file: string, edit: CredentialsEdit): CredentialsEditResult {
  const user = edit.op === 'add' ? edit.credential.user : edit.user;
  const label = edit.op === 'add' ? edit.credential.label : edit.label;
  if (!isValidUsername(user)) return { ok: false, message: `user name ${JSON.stringify(user)} is not valid: use 1-128 letters, digits and ._%+@-` };
  if (!isValidLabel(label)) return { ok: false, message: `label ${JSON.stringify(label)} is not valid: use 1-64 letters, digits and ._-` };
  const parsed = parseCredentialsFile(text, file);
  if (!parsed.ok) {
    const n = parsed.issues.length;
    return { ok: false, message: `${file} has ${n} problem${n === 1 ? '' : 's'}; fix ${n === 1 ? 'it' : 'them'} first (nothing was changed):`, issues: parsed.issues };
  }
  const exists = parsed.credentials.of(user).some((c) => c.label === label);
  const lineUser = (content: string) => content.slice(0, content.indexOf(':')).toLowerCase();
  if (edit.op === 'add') {
    if (exists) return { ok: false, message: `${user} already has a credential labelled ${label}; revoke it first (smtpgate credential revoke ${user} ${label}) or choose another label` };
    const eol = text.includes('\r\n') ? '\r\n' : '\n';
    const sep = text === '' || text.endsWith('\n') ? '' : eol;
    return { ok: true, text: `${text}${sep}${formatCredentialLine(edit.credential)}${eol}` };
  }
  if (!exists) return { ok: false, message: `${user} has no credential labelled ${label} in ${file}; see smtpgate credential list ${user}` };
  let out = '';
  for (const line of text.match(/[^\n]*\n|[^\n]+$/g) ?? []) {
    const content = line.replace(/\r?\n$/, '').trim();
    const isTarget = !content.startsWith('#') && lineUser(content) === user.toLowerCase() && content.slice(content.indexOf(':') + 1).startsWith(`${label}:`);
    if (!isTarget) out += line;
  }
  return { ok: true, text: out };
}
