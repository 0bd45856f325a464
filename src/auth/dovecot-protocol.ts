/**
 * Dovecot's auth-client protocol, the pure part: escaping, parsing the server's lines, the
 * handshake, the AUTH line smtpgate sends and what a reply means. The socket is in
 * dovecot-connection.ts. The protocol (doc.dovecot.org, "Dovecot Authentication Protocol";
 * checked against Dovecot 2.3's src/auth/auth-client-connection.c and auth-request-handler.c):
 *
 *   C: VERSION 1 1            S: VERSION 1 2
 *   C: CPID <pid>             S: MECH PLAIN plaintext   (one per mechanism)
 *                             S: SPID <pid> / CUID <n> / COOKIE <hex> / DONE
 *   C: AUTH <id> PLAIN service=smtp … resp=<base64>
 *                             S: OK <id> user=alice …  |  FAIL <id> user=… code=… reason=…
 *
 * Fields are separated by TAB, lines end in LF, and values use Dovecot's "tab-escaping"
 * (\001 is the escape character). Many requests share one connection, told apart by id.
 */
import { isIP } from 'node:net';
import type { AuthOutcome } from './authenticator.js';

export const PROTOCOL_MAJOR = 1;
export const PROTOCOL_MINOR = 1;

/**
 * The longest line accepted from the server. Dovecot's own limit is 16 KiB (GSSAPI blobs);
 * a longer line is a broken or hostile peer, and buffering it without bound would let it
 * grow our memory without end.
 */
export const MAX_LINE_BYTES = 64 * 1024;

/** The server said something this client cannot make sense of: the connection is dropped. */
export class DovecotProtocolError extends Error {}

const ESCAPES: Record<string, string> = { '\0': '\x010', '\x01': '\x011', '\t': '\x01t', '\r': '\x01r', '\n': '\x01n' };
const UNESCAPES: Record<string, string> = { '0': '\0', '1': '\x01', t: '\t', r: '\r', n: '\n' };

/** Dovecot's tab-escaping (lib/strescape.c str_append_tabescaped) of one value. */
export function tabEscape(value: string): string {
  return value.replace(/[\0\x01\t\r\n]/g, (c) => ESCAPES[c]!);
}

/**
 * The reverse. `\001` plus any other character stands for that character, as in Dovecot;
 * a `\001` with nothing after it is a garbled line.
 */
export function tabUnescape(value: string): string {
  if (!value.includes('\x01')) return value;
  let out = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (c !== '\x01') {
      out += c;
      continue;
    }
    const next = value[++i];
    if (next === undefined) throw new DovecotProtocolError('a value ends in a lone \\001 escape');
    out += UNESCAPES[next] ?? next;
  }
  return out;
}

/** The optional `name=value` / `boolean` parameters after a reply's id; a boolean maps to ''. */
export type Params = ReadonlyMap<string, string>;

export type ServerLine =
  | { readonly kind: 'VERSION'; readonly major: number; readonly minor: number }
  | { readonly kind: 'MECH'; readonly name: string; readonly flags: readonly string[] }
  | { readonly kind: 'SPID'; readonly pid: number }
  | { readonly kind: 'CUID'; readonly cuid: number }
  | { readonly kind: 'COOKIE'; readonly cookie: string }
  | { readonly kind: 'DONE' }
  | { readonly kind: 'OK' | 'FAIL' | 'CANCELLED'; readonly id: number; readonly params: Params }
  | { readonly kind: 'CONT'; readonly id: number; readonly data: string }
  | { readonly kind: 'other'; readonly command: string };

const UINT = /^(0|[1-9][0-9]{0,9})$/;

function uint(value: string | undefined, what: string): number {
  const n = value !== undefined && UINT.test(value) ? Number(value) : NaN;
  if (!(n <= 0xffffffff)) throw new DovecotProtocolError(`${what} is not an unsigned number: ${JSON.stringify(value ?? '')}`);
  return n;
}

function parseParams(fields: readonly string[]): Params {
  const params = new Map<string, string>();
  for (const field of fields) {
    const eq = field.indexOf('=');
    if (eq === -1) params.set(field, '');
    else params.set(field.slice(0, eq), field.slice(eq + 1));
  }
  return params;
}

/**
 * One line from the server (without its LF). Throws DovecotProtocolError for a line that is
 * empty or a known command in the wrong shape; an unknown command comes back as `other`, for
 * the connection to judge (ignored in the handshake, an error after it).
 */
export function parseServerLine(line: string): ServerLine {
  if (line === '') throw new DovecotProtocolError('an empty line');
  const fields = line.split('\t').map(tabUnescape);
  const [command, ...args] = fields as [string, ...string[]];
  switch (command) {
    case 'VERSION':
      if (args.length < 2) throw new DovecotProtocolError(`a VERSION line without major and minor: ${JSON.stringify(line)}`);
      return { kind: 'VERSION', major: uint(args[0], 'VERSION major'), minor: uint(args[1], 'VERSION minor') };
    case 'MECH':
      if (!args[0]) throw new DovecotProtocolError('a MECH line without a mechanism');
      return { kind: 'MECH', name: args[0].toUpperCase(), flags: args.slice(1) };
    case 'SPID':
      return { kind: 'SPID', pid: uint(args[0], 'SPID') };
    case 'CUID':
      return { kind: 'CUID', cuid: uint(args[0], 'CUID') };
    case 'COOKIE':
      if (!args[0]) throw new DovecotProtocolError('a COOKIE line without a cookie');
      return { kind: 'COOKIE', cookie: args[0] };
    case 'DONE':
      return { kind: 'DONE' };
    case 'OK':
    case 'FAIL':
    case 'CANCELLED':
      return { kind: command, id: uint(args[0], `${command} id`), params: parseParams(args.slice(1)) };
    case 'CONT':
      if (args.length < 2) throw new DovecotProtocolError('a CONT line without data');
      return { kind: 'CONT', id: uint(args[0], 'CONT id'), data: args[1]! };
    default:
      return { kind: 'other', command };
  }
}

export interface Mechanism {
  readonly name: string;
  /** Dovecot's security flags: plaintext, dictionary, private (not to be advertised), … */
  readonly flags: readonly string[];
}

export interface ServerHandshake {
  readonly version: { readonly major: number; readonly minor: number };
  readonly mechanisms: readonly Mechanism[];
  readonly serverPid: number | undefined;
}

/**
 * Reads the server's half of the handshake, one line at a time; `accept` returns true at DONE.
 * Unknown handshake lines are skipped: a later Dovecot may add some, and the doc asks clients
 * to ignore what they don't know.
 */
export class HandshakeReader {
  #version: { major: number; minor: number } | undefined;
  readonly #mechanisms: Mechanism[] = [];
  #serverPid: number | undefined;
  #cookie = false;

  accept(line: ServerLine): boolean {
    if (!this.#version && line.kind !== 'VERSION') {
      throw new DovecotProtocolError(`expected VERSION first, got ${line.kind === 'other' ? line.command : line.kind}`);
    }
    switch (line.kind) {
      case 'VERSION':
        if (this.#version) throw new DovecotProtocolError('a second VERSION line');
        // A different major version is a different protocol (Dovecot's own client refuses it too).
        if (line.major !== PROTOCOL_MAJOR) {
          throw new DovecotProtocolError(`Dovecot speaks auth protocol ${line.major}.${line.minor}; smtpgate speaks ${PROTOCOL_MAJOR}.x`);
        }
        this.#version = { major: line.major, minor: line.minor };
        return false;
      case 'MECH':
        this.#mechanisms.push({ name: line.name, flags: line.flags });
        return false;
      case 'SPID':
        this.#serverPid = line.pid;
        return false;
      case 'COOKIE':
        this.#cookie = true;
        return false;
      case 'CUID':
      case 'other':
        return false;
      case 'DONE':
        if (this.#mechanisms.length === 0) throw new DovecotProtocolError('the handshake listed no mechanisms');
        if (!this.#cookie) throw new DovecotProtocolError('the handshake had no COOKIE');
        return true;
      default:
        throw new DovecotProtocolError(`${line.kind} during the handshake`);
    }
  }

  result(): ServerHandshake {
    return { version: this.#version!, mechanisms: this.#mechanisms, serverPid: this.#serverPid };
  }
}

export function clientHandshake(pid: number): string {
  return `VERSION\t${PROTOCOL_MAJOR}\t${PROTOCOL_MINOR}\nCPID\t${pid}\n`;
}

export interface PlainAuth {
  readonly id: number;
  /** Dovecot's %s, which passdbs may select on. */
  readonly service: string;
  readonly login: string;
  readonly password: string;
  readonly remoteAddress: string;
  readonly sessionId: string;
  /** The client's connection is TLS (else: secured some other way, e.g. a trusted LB). */
  readonly tls: boolean;
}

/** PLAIN cannot carry a NUL in the login or the password (RFC 4616 §2: NUL separates the parts). */
export function plainCanCarry(login: string, password: string): boolean {
  return !login.includes('\0') && !password.includes('\0');
}

/**
 * The AUTH line for a PLAIN sign-in with an initial response (RFC 4616: "\0login\0password",
 * no authorization identity). `resp` must be the last parameter: Dovecot refuses anything
 * after it. Call only when `plainCanCarry`.
 */
export function authPlainLine(a: PlainAuth): string {
  if (!plainCanCarry(a.login, a.password)) throw new Error('authPlainLine: NUL in the login or password');
  const resp = Buffer.from(`\0${a.login}\0${a.password}`, 'utf8').toString('base64');
  const fields = [
    'AUTH',
    String(a.id),
    'PLAIN',
    `service=${tabEscape(a.service)}`,
    // AUTH reaches smtpgate only over TLS (or a connection the operator trusts), so Dovecot's
    // disable_plaintext_auth must not refuse it.
    a.tls ? 'secured=tls' : 'secured',
    // smtpgate counts failed logins and locks out by itself (limits/). Dovecot's penalty would
    // hold a repeated wrong password for up to 15 s, past our timeout: the failure would then
    // read as "unavailable", which is never counted, and so weaken the lockout.
    'no-penalty',
    `session=${tabEscape(a.sessionId)}`,
  ];
  const rip = dovecotIp(a.remoteAddress);
  if (rip) fields.push(`rip=${rip}`);
  fields.push(`resp=${resp}`);
  return `${fields.join('\t')}\n`;
}

/** An address as Dovecot's net_addr2ip reads it: IPv4-mapped IPv6 as plain IPv4; not an IP → none. */
function dovecotIp(address: string): string | undefined {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  const ip = mapped ? mapped[1]! : address;
  return isIP(ip) ? ip : undefined;
}

/** The server's final word on one request, as the connection hands it over. */
export type AuthReply =
  | { readonly kind: 'OK' | 'FAIL' | 'CANCELLED'; readonly params: Params; readonly utf8: boolean }
  | { readonly kind: 'CONT' };

/** Failure codes (lib-auth/auth-client-interface.h); Dovecot 2.2 sent some as bare flags. */
const TEMPORARY = ['temp_fail', 'temp'];
const DISABLED = ['user_disabled', 'pass_expired'];

/**
 * What a reply means for the sign-in of `login`. Pure: the source adds the log line.
 *
 * FAIL without a code is `bad_credentials`, never `unknown_user`: Dovecot answers an unknown
 * user and a wrong password alike on purpose (it would otherwise tell an attacker which
 * accounts exist), so smtpgate can't tell them apart either. That makes Dovecot final in a
 * chain: a source listed after it is never asked about a user Dovecot doesn't know.
 */
export function interpretReply(reply: AuthReply, login: string): AuthOutcome {
  if (reply.kind === 'CONT') {
    // PLAIN with an initial response needs no second step; a server asking for one is
    // misconfigured or not Dovecot. Refuse rather than guess what it wants.
    return { ok: false, reason: 'bad_credentials', detail: 'asked to continue (CONT) a PLAIN sign-in that was already complete' };
  }
  const { params } = reply;
  const code = params.get('code');
  const has = (names: readonly string[]) => names.some((n) => code === n || params.has(n));
  const why = params.get('reason');
  const said = why ? `: ${why}` : '';
  if (reply.kind === 'CANCELLED') return { ok: false, reason: 'unavailable', detail: `cancelled the request${said}` };
  if (reply.kind === 'FAIL') {
    if (has(TEMPORARY)) return { ok: false, reason: 'unavailable', detail: `temporary failure (${code ?? 'temp'})${said}` };
    if (has(DISABLED)) return { ok: false, reason: 'disabled', detail: `${code ?? DISABLED.find((n) => params.has(n))}${said}` };
    // authz_fail: a master-user login whose target may not be used. Still a refusal of these credentials.
    return { ok: false, reason: 'bad_credentials', ...(code || why ? { detail: `${code ?? 'failed'}${said}` } : {}) };
  }
  // OK. `nologin` means the password was right but the user may not log in (Dovecot's own
  // login processes refuse then; with `temp`, only for now).
  if (params.has('nologin')) {
    return params.has('temp')
      ? { ok: false, reason: 'unavailable', detail: `nologin, temporary${said}` }
      : { ok: false, reason: 'disabled', detail: `nologin${said}` };
  }
  if (!reply.utf8) return { ok: false, reason: 'unavailable', detail: 'the OK named the user in bytes that are not UTF-8' };
  // The passdb may canonicalise the login (case, a domain added): that spelling is the user.
  const user = params.get('user');
  return { ok: true, user: { username: user ? user : login } };
}
