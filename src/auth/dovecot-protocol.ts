/**
 * Dovecot's auth protocols, the pure part: escaping, parsing the server's lines, the
 * handshakes, the lines smtpgate sends and what a reply means. The socket is in
 * dovecot-connection.ts, which speaks either protocol through its `DovecotDialect`.
 *
 * The auth-client protocol (socket `auth-client`) checks passwords (doc.dovecot.org, "Dovecot
 * Authentication Protocol"; checked against Dovecot 2.3's src/auth/auth-client-connection.c
 * and auth-request-handler.c):
 *
 *   C: VERSION 1 1            S: VERSION 1 2
 *   C: CPID <pid>             S: MECH PLAIN plaintext   (one per mechanism)
 *                             S: SPID <pid> / CUID <n> / COOKIE <hex> / DONE
 *   C: AUTH <id> PLAIN service=smtp … resp=<base64>
 *                             S: OK <id> user=alice …  |  FAIL <id> user=… code=… reason=…
 *
 * The auth-master protocol (sockets `auth-userdb` and `auth-master`) looks users up without a
 * password; it is further down, with its own comment.
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

/**
 * What a connection must know of one of the two protocols: what to say first, how the
 * server's half of the handshake ends, and which request a later line answers. The connection
 * (dovecot-connection.ts) does the rest alike for both: ids, timeouts, failing what is in
 * flight when the peer says something that does not fit.
 */
export interface DovecotDialect<Handshake, Reply> {
  /** The socket's kind, for messages: "auth-client", "auth-master". */
  readonly name: string;
  /** The client's half of the handshake, sent once connected. */
  greeting(pid: number): string;
  /** A reader for the server's half: `accept` returns the handshake at its last line, else undefined. */
  handshake(): { accept(line: string): Handshake | undefined };
  /**
   * A line after the handshake: the id it answers and what to hand the request. Throws
   * DovecotProtocolError for a line that is no reply; the connection is then dropped.
   */
  reply(line: string, utf8: boolean): DialectReply<Reply>;
  /** The line that withdraws a request nobody waits for any more, when the protocol has one. */
  cancel?(id: number): string;
}

export interface DialectReply<Reply> {
  readonly id: number;
  /** The reply's command, the only part of it a log line may show. */
  readonly kind: string;
  readonly reply: Reply;
  /** A line to send back once the reply reached a waiting request (CANCEL after a CONT). */
  readonly answer?: string;
}

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

/** A line's command and its arguments, unescaped; both protocols split lines alike. */
function splitLine(line: string): [command: string, args: string[]] {
  if (line === '') throw new DovecotProtocolError('an empty line');
  const [command, ...args] = line.split('\t').map(tabUnescape) as [string, ...string[]];
  return [command, args];
}

/** The VERSION line that starts both protocols' handshakes. */
function versionLine(args: readonly string[]): { readonly kind: 'VERSION'; readonly major: number; readonly minor: number } {
  if (args.length < 2) throw new DovecotProtocolError('a VERSION line without major and minor');
  return { kind: 'VERSION', major: uint(args[0], 'VERSION major'), minor: uint(args[1], 'VERSION minor') };
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
  const [command, args] = splitLine(line);
  switch (command) {
    case 'VERSION':
      return versionLine(args);
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

/**
 * The auth-client protocol as a connection speaks it. A CONT is handed back as a final reply,
 * and the request cancelled: smtpgate only sends complete sign-ins.
 */
export const AUTH_CLIENT: DovecotDialect<ServerHandshake, AuthReply> = {
  name: 'auth-client',
  greeting: clientHandshake,
  handshake() {
    const reader = new HandshakeReader();
    return { accept: (line) => (reader.accept(parseServerLine(line)) ? reader.result() : undefined) };
  },
  reply(text, utf8) {
    const line = parseServerLine(text);
    switch (line.kind) {
      case 'OK':
      case 'FAIL':
      case 'CANCELLED':
        return { id: line.id, kind: line.kind, reply: { kind: line.kind, params: line.params, utf8 } };
      case 'CONT':
        return { id: line.id, kind: 'CONT', reply: { kind: 'CONT' }, answer: cancelLine(line.id) };
      default:
        throw new DovecotProtocolError(`unexpected ${line.kind === 'other' ? JSON.stringify(line.command.slice(0, 40)) : line.kind} line after the handshake`);
    }
  },
  cancel: cancelLine,
};

function cancelLine(id: number): string {
  return `CANCEL\t${id}\n`;
}

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

/*
 * The auth-master protocol: lookups without a password, on the `auth-userdb` socket (or
 * `auth-master`, which also takes commands smtpgate never sends). Checked against Dovecot
 * 2.3's src/auth/auth-master-connection.c (the server) and src/lib-auth/auth-master.c (its
 * own client, which LMTP and doveadm use):
 *
 *   C: VERSION 1 0            S: VERSION 1 1
 *                             S: SPID <pid>
 *   C: PASS <id> <user> service=smtp session=… rip=…
 *                             S: PASS <id> user=alice <passdb fields…>  |  NOTFOUND <id>  |  FAIL <id> [reason=…]
 *   C: USER <id> <user> service=smtp …
 *                             S: USER <id> alice <userdb fields…>  |  NOTFOUND <id>  |  FAIL <id> [reason=…]
 *
 * The server answers requests on one connection as each lookup finishes, so replies come in
 * any order and are matched by id; there is no CANCEL. A request line longer than 1 KiB, or
 * one without service=, makes the server drop the connection.
 *
 * PASS is a passdb lookup, the one a sign-in makes, minus the password check. Its reply
 * carries the passdb's extra fields: `nologin`, but also whatever else the passdb returns,
 * secrets among them (a proxy's `pass=`; a passdb query may return anything). Only the
 * fields smtpgate uses are kept, at parsing; the rest is dropped there and never logged.
 */

export const MASTER_PROTOCOL_MAJOR = 1;
/** What Dovecot's own lookup client (lib-auth/auth-master.c) sends; the server reads only the major. */
export const MASTER_PROTOCOL_MINOR = 0;

/** The server reads a request into a 1 KiB buffer (auth-master-connection.c MAX_INBUF_SIZE); a longer line, LF included, drops the connection. */
export const MASTER_MAX_REQUEST_BYTES = 1024;

export interface MasterHandshake {
  readonly version: { readonly major: number; readonly minor: number };
  readonly serverPid: number | undefined;
}

/**
 * A reply to a lookup, holding only what smtpgate uses. PASS: the user as the passdb spells
 * it and the fields that say they may not log in. USER: the user; the userdb's fields (uid,
 * home, mail location) are of no use here and are dropped.
 */
export type MasterReply =
  | { readonly kind: 'PASS'; readonly id: number; readonly user: string | undefined; readonly nologin: boolean; readonly temp: boolean; readonly reason: string | undefined }
  | { readonly kind: 'USER'; readonly id: number; readonly user: string }
  | { readonly kind: 'NOTFOUND'; readonly id: number }
  | { readonly kind: 'FAIL'; readonly id: number; readonly reason: string | undefined };

export type MasterLine =
  | { readonly kind: 'VERSION'; readonly major: number; readonly minor: number }
  | { readonly kind: 'SPID'; readonly pid: number }
  | MasterReply
  | { readonly kind: 'other'; readonly command: string };

/**
 * One line from the master socket (without its LF). Throws DovecotProtocolError for an empty
 * line or a reply without a proper id. Error messages never quote a reply's fields: a PASS
 * line may hold a secret, and the message goes to the log.
 */
export function parseMasterLine(line: string): MasterLine {
  const [command, args] = splitLine(line);
  switch (command) {
    case 'VERSION':
      return versionLine(args);
    case 'SPID':
      return { kind: 'SPID', pid: uint(args[0], 'SPID') };
    case 'PASS':
      return { kind: 'PASS', id: replyId(command, args[0]), ...passFields(args.slice(1)) };
    case 'USER': {
      const id = replyId(command, args[0]);
      if (!args[1]) throw new DovecotProtocolError('a USER reply without the user');
      return { kind: 'USER', id, user: args[1] };
    }
    case 'NOTFOUND':
      return { kind: 'NOTFOUND', id: replyId(command, args[0]) };
    case 'FAIL':
      return { kind: 'FAIL', id: replyId(command, args[0]), reason: passFields(args.slice(1)).reason };
    default:
      return { kind: 'other', command };
  }
}

function replyId(command: string, value: string | undefined): number {
  const n = value !== undefined && UINT.test(value) ? Number(value) : NaN;
  if (!(n <= 0xffffffff)) throw new DovecotProtocolError(`a ${command} reply without a valid id`);
  return n;
}

/** Picks the fields smtpgate uses out of a reply's `name=value` / `flag` fields; the others are not kept. */
function passFields(fields: readonly string[]): { user: string | undefined; nologin: boolean; temp: boolean; reason: string | undefined } {
  const picked = { user: undefined as string | undefined, nologin: false, temp: false, reason: undefined as string | undefined };
  for (const field of fields) {
    const eq = field.indexOf('=');
    const name = eq === -1 ? field : field.slice(0, eq);
    const value = eq === -1 ? '' : field.slice(eq + 1);
    if (name === 'user') picked.user = value;
    else if (name === 'reason') picked.reason = value;
    else if (name === 'nologin') picked.nologin = true;
    else if (name === 'temp') picked.temp = true;
  }
  return picked;
}

/**
 * Reads the server's half of the master handshake: VERSION first, then SPID, which ends it
 * (there is no DONE). Other lines before SPID are skipped, as Dovecot's own client does, but
 * for MECH: the auth-client socket's handshake also has VERSION and SPID, with MECH lines
 * between, and is told apart by them before a lookup is sent to the wrong protocol.
 */
export class MasterHandshakeReader {
  #version: { major: number; minor: number } | undefined;

  accept(line: MasterLine): MasterHandshake | undefined {
    if (!this.#version && line.kind !== 'VERSION') {
      throw new DovecotProtocolError(`expected VERSION first, got ${line.kind === 'other' ? line.command.slice(0, 40) : line.kind}`);
    }
    switch (line.kind) {
      case 'VERSION':
        if (this.#version) throw new DovecotProtocolError('a second VERSION line');
        if (line.major !== MASTER_PROTOCOL_MAJOR) {
          throw new DovecotProtocolError(`Dovecot speaks auth-master protocol ${line.major}.${line.minor}; smtpgate speaks ${MASTER_PROTOCOL_MAJOR}.x`);
        }
        this.#version = { major: line.major, minor: line.minor };
        return undefined;
      case 'SPID':
        return { version: this.#version!, serverPid: line.pid || undefined };
      case 'other':
        if (line.command === 'MECH') throw new DovecotProtocolError('MECH during the handshake: this is an auth-client socket');
        return undefined;
      default:
        throw new DovecotProtocolError(`${line.kind} during the handshake`);
    }
  }
}

/** A lookup reply as the connection hands it over. */
export interface MasterAnswer {
  readonly line: MasterReply;
  /** False when the line had bytes that are not UTF-8 (kept as U+FFFD). */
  readonly utf8: boolean;
}

/** The auth-master protocol as a connection speaks it. */
export const AUTH_MASTER: DovecotDialect<MasterHandshake, MasterAnswer> = {
  name: 'auth-master',
  greeting: () => `VERSION\t${MASTER_PROTOCOL_MAJOR}\t${MASTER_PROTOCOL_MINOR}\n`,
  handshake() {
    const reader = new MasterHandshakeReader();
    return { accept: (line) => reader.accept(parseMasterLine(line)) };
  },
  reply(text, utf8) {
    const line = parseMasterLine(text);
    if (line.kind === 'VERSION' || line.kind === 'SPID' || line.kind === 'other') {
      // A command is named only when it looks like one: a shifted PASS line could put a secret first.
      const what = line.kind !== 'other' ? line.kind : /^[A-Z_-]{1,20}$/.test(line.command) ? JSON.stringify(line.command) : undefined;
      throw new DovecotProtocolError(what ? `unexpected ${what} line after the handshake` : 'an unknown line after the handshake');
    }
    return { id: line.id, kind: line.kind, reply: { line, utf8 } };
  },
};

export interface MasterLookup {
  readonly id: number;
  /** PASS asks the passdb, USER the userdb. */
  readonly command: 'PASS' | 'USER';
  readonly login: string;
  /** Dovecot's %s, which passdbs may select on; required by the server. */
  readonly service: string;
  readonly remoteAddress: string;
  readonly sessionId: string;
}

/**
 * Why `login` can't be looked up over the master socket, or undefined when it can. A NUL
 * would cut the name short in the server (which unescapes into a C string), so "alice\0x"
 * would be looked up as "alice"; a name too long for the server's 1 KiB request buffer would
 * drop the connection. Dovecot's own client treats names it can't send as users that can't
 * exist, and so does smtpgate.
 */
export function masterLookupRefusal(l: Omit<MasterLookup, 'id' | 'command'>): string | undefined {
  if (l.login.includes('\0')) return 'a NUL in the login cannot be looked up';
  const longest = Buffer.byteLength(masterLookupLine({ ...l, id: 0xffffffff, command: 'PASS' }));
  if (longest > MASTER_MAX_REQUEST_BYTES) return `a login of ${Buffer.byteLength(l.login)} bytes makes a lookup longer than Dovecot's ${MASTER_MAX_REQUEST_BYTES}-byte request limit`;
  return undefined;
}

/** The PASS or USER line for a lookup. Call only when `masterLookupRefusal` found nothing. */
export function masterLookupLine(l: MasterLookup): string {
  if (l.login.includes('\0')) throw new Error('masterLookupLine: NUL in the login');
  const fields = [l.command, String(l.id), tabEscape(l.login), `service=${tabEscape(l.service)}`, `session=${tabEscape(l.sessionId)}`];
  // The passdb sees the client's address as it does at a sign-in (%r, allow_nets).
  const rip = dovecotIp(l.remoteAddress);
  if (rip) fields.push(`rip=${rip}`);
  return `${fields.join('\t')}\n`;
}

/**
 * What the passdb said about a login looked up with PASS, or `askUserdb` when it said
 * NOTFOUND. Dovecot answers NOTFOUND alike for a user it doesn't know, one found in a
 * `deny = yes` passdb, and one whose password expired (auth-master-connection.c,
 * pass_callback_finish), so the passdb alone can't tell a disabled account from an unknown
 * one; the userdb (USER) can, see `interpretUserLookup`.
 */
export function interpretPassLookup(answer: MasterAnswer, login: string): AuthOutcome | { readonly askUserdb: true } {
  const { line } = answer;
  const said = (reason: string | undefined) => (reason ? `: ${reason}` : '');
  switch (line.kind) {
    case 'NOTFOUND':
      return { askUserdb: true };
    case 'FAIL':
      // Without a reason: the passdb failed, or the socket lets smtpgate look up only users
      // with its own uid (mode 0666, and smtpgate neither owns it nor is in its group).
      return {
        ok: false,
        reason: 'unavailable',
        detail: line.reason
          ? `passdb lookup failed: ${line.reason}`
          : "passdb lookup failed (a passdb error, or smtpgate may not make passdb lookups on this socket: see Dovecot's log)",
      };
    case 'USER':
      return { ok: false, reason: 'unavailable', detail: 'answered a PASS lookup with USER' };
    case 'PASS':
      // Dovecot's own login processes refuse a user with nologin; with temp, only for now.
      if (line.nologin) {
        return line.temp ? { ok: false, reason: 'unavailable', detail: `nologin, temporary${said(line.reason)}` } : { ok: false, reason: 'disabled', detail: `nologin${said(line.reason)}` };
      }
      if (!answer.utf8) return { ok: false, reason: 'unavailable', detail: 'the PASS reply named the user in bytes that are not UTF-8' };
      // The passdb may canonicalise the login (case, a domain added): that spelling is the user.
      return { ok: true, user: { username: line.user ? line.user : login } };
  }
}

/**
 * What a USER lookup says after the passdb said NOTFOUND: a userdb that knows the user means
 * the account exists but the passdb won't let it sign in (a deny passdb, an expired password)
 * — disabled, which is final in the chain. A userdb that doesn't know them either means
 * unknown_user. Two setups blur this: a userdb that accepts any user (static with
 * allow_all_users = yes) makes every unknown login read as disabled; Dovecot's static userdb
 * without it asks the passdb, so a denied account reads as unknown_user.
 */
export function interpretUserLookup(answer: MasterAnswer): AuthOutcome {
  const { line } = answer;
  switch (line.kind) {
    case 'USER':
      return { ok: false, reason: 'disabled', detail: 'the passdb refuses this login, which the userdb knows (a deny passdb, an expired password, or a userdb that accepts any user)' };
    case 'NOTFOUND':
      return { ok: false, reason: 'unknown_user' };
    case 'FAIL':
      return { ok: false, reason: 'unavailable', detail: `userdb lookup failed${line.reason ? `: ${line.reason}` : " (see Dovecot's log)"}` };
    case 'PASS':
      return { ok: false, reason: 'unavailable', detail: 'answered a USER lookup with PASS' };
  }
}
