/**
 * Checks a client command line before smtp-server dispatches it, for the protocol rules that
 * smtp-server's own handlers get wrong or can't express with an exact reply:
 *
 * - AUTH without TLS: smtp-server only refuses it while STARTTLS is enabled, and answers 500
 *   when AUTH is hidden from EHLO. smtpgate never accepts AUTH in cleartext, on any listener,
 *   and answers RFC 3207/4954's 538 5.7.11 before a single credential byte is exchanged.
 * - BDAT: not supported (no CHUNKING advertised); RFC 3030 clients get 502.
 * - Bare LF line endings in the command stream (smtp-server splits commands on /\r?\n/):
 *   RFC 5321 §2.3.8 requires CRLF, and accepting LF alone is half of every SMTP smuggling
 *   attack (SEC Consult, Dec 2023). Like Postfix's smtpd_forbid_bare_newline, the session is
 *   refused and closed: a client that can't frame lines can't be resynchronised safely.
 *
 * - Line length (RFC 5321 §4.5.3.1.4): a command line over 512 octets gets 500; AUTH lines may
 *   be longer (RFC 4954 §4 allows 12288). A line that never ends is cut off by smtp-server's
 *   maxCommandLength with 421, so memory stays bounded.
 * - Bytes that don't belong in a command: NUL, a CR inside the line (e.g. in an EHLO name), and
 *   8-bit bytes outside MAIL/RCPT get 500/501. (Non-ASCII addresses are judged at MAIL/RCPT.)
 * - An error budget: after `maxProtocolErrors` syntax or sequence errors (5xx replies of the
 *   500–504 kind, and the guard's own) the session gets 421 and is closed.
 * - MAIL/RCPT parameters smtpgate does not advertise get 555 5.5.4 (`unacceptedParameter`), and
 *   a 256-octet path is accepted although smtp-server refuses it (`parseFullLengthPath`).
 * - A command line trickled in too slowly gets 421 4.4.2 (command-pace.ts).
 *
 * It also sets how long a new connection waits for its greeting (`greetingDelayFor`), in place
 * of smtp-server's hard-coded 100 ms early-talker wait, and asks for the connection limits as
 * soon as a connection is accepted, before that wait (`GuardHooks.admit`).
 *
 * The decisions are pure (`checkCommand`, `greetingDelayFor`); `installCommandGuard` gives each
 * connection a `ConnectionGuard`, which keeps what the checks remember between lines and is
 * wired in through smtp-server's seams (smtp-server-seams.ts).
 */
import type { SMTPServer } from 'smtp-server';
import type { WriteBatcher } from '../transport/write-batcher.js';
import type { ReadBufferReclaimer } from '../transport/read-buffer-reclaimer.js';
import type { CidrSet } from '../parsing/cidr.js';
import type { Refusal } from '../reply.js';
import {
  AUTH_BASE64_INVALID,
  AUTH_BEFORE_STARTTLS,
  AUTH_IN_TRANSACTION,
  BARE_LF_IN_COMMAND,
  BDAT_UNSUPPORTED,
  CR_IN_COMMAND,
  EIGHT_BIT_IN_COMMAND,
  ERROR_BUDGET_SPENT,
  LINE_TOO_LONG,
  NUL_IN_COMMAND,
  PIPELINING_AFTER_REFUSED_DATA,
  SHUTTING_DOWN,
  libraryRefusal,
  mailLineTooLong,
  parameterUnsupported,
} from '../refusals.js';
import type { Stage } from '../stage.js';
import { installFastDataParser } from './data-stream.js';
import { CommandLineWatch, type CommandPace } from './command-pace.js';
import {
  clientSocket,
  endSaslExchange,
  inDataMode,
  inSaslExchange,
  isClosing,
  isUpgrading,
  libraryEnhancedCode,
  observeReads,
  onEachConnection,
  onEachParser,
  replaceAddressParser,
  replaceCommandHandler,
  replaceGreetingWait,
  replaceSend,
  type ClientConnection,
  type CommandDispatch,
  type Send,
} from './smtp-server-seams.js';

/** A client connection, as the guard and the listener see it. */
export type GuardedConnection = ClientConnection;

export interface CommandFacts {
  /** The session runs under TLS. */
  readonly secure: boolean;
  /** The line answers a 334 challenge (AUTH LOGIN username/password), it is not a command. */
  readonly continuation: boolean;
  /** The proxy is draining: only a session in a mail transaction may go on. */
  readonly draining?: boolean;
  /** MAIL was accepted and the transaction hasn't ended. */
  readonly inTransaction?: boolean;
}

/** RFC 4648 base64, padded, nothing else: Node's decoder would silently skip junk. */
const STRICT_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** RFC 4954 §4: "=" is an empty initial response, "*" cancels; anything else must be base64. */
function isSaslToken(token: string, allowCancel: boolean): boolean {
  if (token === '=') return true;
  if (allowCancel && token === '*') return true;
  return token.length > 0 && STRICT_BASE64.test(token);
}

/** RFC 5321 §4.5.3.1.4: 512 octets including CRLF, so 510 without. */
export const MAX_COMMAND_OCTETS = 510;
/**
 * A MAIL line may be longer by what each advertised extension adds to it: SIZE 26 octets (RFC
 * 1870 §3), BODY 16 (RFC 6152 §3), SMTPUTF8 10 (RFC 6531 §3.1) and AUTH 500 (RFC 4954 §3).
 * RCPT takes no parameter smtpgate advertises, so it keeps the 512 of RFC 5321.
 */
export const MAX_MAIL_OCTETS = MAX_COMMAND_OCTETS + 26 + 16 + 10 + 500;
/** RFC 4954 §4: an AUTH command or response line may be up to 12288 octets. */
export const MAX_AUTH_LINE_OCTETS = 12288;

const MAIL_LINE_TOO_LONG = mailLineTooLong(MAX_MAIL_OCTETS + 2);

/**
 * The MAIL and RCPT parameters smtpgate accepts: those of the extensions its EHLO advertises.
 * SIZE, BODY and SMTPUTF8 go on to the backend when it advertises them too (relay/envelope.ts);
 * AUTH= (RFC 4954 §5) is accepted and not passed on, which RFC 4954 §5 allows: the backend
 * then treats the submitter as unknown (AUTH=<>). DSN (RFC 3461) and REQUIRETLS (RFC 8689)
 * are not advertised: smtpgate EHLOs its client before it has a backend connection, so it
 * cannot promise what the backend will do with them.
 */
const ACCEPTED_PARAMETERS: Readonly<Record<'MAIL' | 'RCPT', ReadonlySet<string>>> = {
  MAIL: new Set(['SIZE', 'BODY', 'SMTPUTF8', 'AUTH']),
  RCPT: new Set(),
};

/** RFC 5321 §4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"). */
const ESMTP_KEYWORD = /^[A-Za-z0-9][A-Za-z0-9-]{0,31}$/;

/**
 * RFC 5321 §4.1.1.11: a MAIL or RCPT parameter the server does not recognise or implement gets
 * 555. Accepting it and dropping it on the way to the backend would break what the client
 * asked for (a DSN, RFC 8689's "TLS all the way or bounce") without a word. The line is split
 * as smtp-server splits it (after the first ":", on white space, the path first), so both see
 * the same parameters.
 */
export function unacceptedParameter(verb: 'MAIL' | 'RCPT', line: string): Refusal | undefined {
  const colon = line.indexOf(':');
  if (colon < 0) return undefined; // smtp-server answers the syntax error
  const params = line.slice(colon + 1).trim().split(/\s+/).slice(1);
  for (const param of params) {
    const key = param.split('=')[0]!;
    if (!key || ACCEPTED_PARAMETERS[verb].has(key.toUpperCase())) continue;
    // Only a well-formed keyword is echoed: the reply must not carry arbitrary client bytes.
    return parameterUnsupported(verb, ESMTP_KEYWORD.test(key) ? key.toUpperCase() : undefined);
  }
  return undefined;
}

/** A command line's verb, upper-cased ("MAIL"); undefined when the line doesn't start with one. */
export function commandVerb(line: string): string | undefined {
  return /^\s*([A-Za-z]+)/.exec(line)?.[1]?.toUpperCase();
}

/** `verb`: the line's (commandVerb), when the caller has it already. */
export function checkCommand(line: string, facts: CommandFacts, verb = facts.continuation ? undefined : commandVerb(line)): Refusal | undefined {
  // Bytes first: a NUL or stray CR is never part of a valid line, continuation or not.
  if (line.includes('\0')) return NUL_IN_COMMAND;
  if (line.includes('\r')) return CR_IN_COMMAND;
  if (facts.continuation) {
    if (line.length > MAX_AUTH_LINE_OCTETS) return LINE_TOO_LONG;
    return isSaslToken(line.trim(), true) ? undefined : AUTH_BASE64_INVALID;
  }
  if (verb === 'MAIL' && line.length > MAX_MAIL_OCTETS) return MAIL_LINE_TOO_LONG;
  if (verb !== 'MAIL' && line.length > (verb === 'AUTH' ? MAX_AUTH_LINE_OCTETS : MAX_COMMAND_OCTETS)) return LINE_TOO_LONG;
  // SMTPUTF8 (RFC 6531) allows UTF-8 only in MAIL/RCPT addresses (and their parameters).
  if (verb !== 'MAIL' && verb !== 'RCPT' && /[\x80-\xff]/.test(line)) return EIGHT_BIT_IN_COMMAND;
  // While draining, a session outside a transaction is told to go elsewhere; QUIT still gets
  // its 221. A transaction under way may finish (the drain deadline bounds it).
  if (facts.draining && !facts.inTransaction && verb !== 'QUIT') return SHUTTING_DOWN;
  if (verb === 'AUTH' && !facts.secure) {
    return AUTH_BEFORE_STARTTLS;
  }
  // RFC 4954 §4: AUTH is not permitted during a mail transaction. Otherwise a MAIL judged as
  // unauthenticated (no sender binding, no per-user quota) would be relayed as the user's.
  if (verb === 'AUTH' && facts.inTransaction) return AUTH_IN_TRANSACTION;
  if (verb === 'AUTH') {
    const initial = line.trim().split(/\s+/)[2];
    if (initial !== undefined && !isSaslToken(initial, false)) return AUTH_BASE64_INVALID;
  }
  if (verb === 'BDAT') return BDAT_UNSUPPORTED;
  if (verb === 'MAIL' || verb === 'RCPT') return unacceptedParameter(verb, line);
  return undefined;
}

/**
 * True when `chunk` holds an LF not preceded by CR. `previous` is the last byte of the chunk
 * before (-1 at the start), since a CRLF may be split across two reads.
 */
export function hasBareLf(chunk: Buffer, previous: number): boolean {
  let i = chunk.indexOf(0x0a);
  while (i !== -1) {
    const before = i === 0 ? previous : chunk[i - 1];
    if (before !== 0x0d) return true;
    i = chunk.indexOf(0x0a, i + 1);
  }
  return false;
}

export interface GreetingSettings {
  /** listeners[].greetingDelay, in ms. */
  readonly delayMs: number;
  /** listeners[].trusted.networks, when the listener has them. */
  readonly trusted: CidrSet | undefined;
}

/**
 * How long a client waits for the 220. The wait catches early talkers: spam bots that send
 * before the greeting get smtp-server's "421 You talk too soon". A client in the listener's
 * trusted networks is greeted at once, deliberately: it is an internal app, and the check buys
 * nothing there (like Postfix postscreen's permit_mynetworks). `address` must be the real
 * client's, i.e. the one a PROXY protocol header named.
 */
export function greetingDelayFor(address: string, settings: GreetingSettings): number {
  return settings.trusted?.has(address) ? 0 : settings.delayMs;
}

/** The path around the mailbox: "MAIL FROM:<", an optional source route, then ">" and parameters. */
const PATH_PARTS = /^([^:]*:\s*<(?:@[^\s,:@<>]+(?:,@[^\s,:@<>]+)*:)?)([^<>\s]*)@([^<>@\s]*)(>.*)$/s;

/**
 * RFC 5321 §4.5.3.1.3: a path of 256 octets, "<" and ">" included, must be accepted, so a
 * mailbox of 254 octets. smtp-server 3.21.6 refuses one over 253 (its comment counts the
 * brackets twice). A 254-octet mailbox is parsed in two halves, each with a one-octet stand-in
 * for the other half, so that every other rule of the library (local-part dots, domain syntax,
 * IDN decoding, parameters) still decides, and the real mailbox is put back together. Anything
 * longer stays refused.
 */
export function parseFullLengthPath<P extends { address: string }>(parse: (name: string, command: string) => false | P, name: string, command: string): false | P {
  const parsed = parse(name, command);
  if (parsed) return parsed;
  const m = PATH_PARTS.exec(command);
  if (!m) return false;
  const [, head, local, domain, tail] = m as unknown as [string, string, string, string, string];
  if (local.length + 1 + domain.length !== 254) return false;
  const localOk = parse(name, `${head}${local}@x${tail}`);
  if (!localOk) return false;
  // A one-octet local part leaves the domain half no shorter: its first octet is set aside.
  const lead = local.length > 1 ? '' : domainLead(domain);
  if (lead === undefined) return false;
  const domainOk = parse(name, `${head}x@${domain.slice(lead.length)}${tail}`);
  if (!domainOk) return false;
  return { ...domainOk, address: `${localOk.address.slice(0, -2)}@${lead}${domainOk.address.slice(2)}` };
}

/**
 * The first octet of `domain`, when the domain without it passes smtp-server's domain rules
 * exactly when the whole does: a letter or digit (so no ".", "..", ".-" or "-." appears or
 * vanishes) in a first label that is no IDN A-label with or without it (so the IDN decoding
 * leaves it alone). Otherwise undefined.
 */
function domainLead(domain: string): string | undefined {
  const lead = domain[0] ?? '';
  if (!/^[A-Za-z0-9]$/.test(lead) || domain[1] === '.' || /^xn--/i.test(domain) || /^xn--/i.test(domain.slice(1))) return undefined;
  return lead;
}

/**
 * RFC 2920 §3.1: DATA ends a pipelined group; the message follows only after the 354. A client
 * that sent its message right behind a DATA that was refused would have every line of it run as
 * a command. Lines that arrived in the same read as a refused DATA are therefore refused, and
 * the session is closed (PIPELINING_AFTER_REFUSED_DATA), as Postfix's protocol-synchronization
 * check does.
 */

/** Commands that end a mail transaction. */
const RESETS = /^\s*(RSET|EHLO|HELO)\b/i;

/** Replies that mean the client broke the protocol, for the error budget. */
function isProtocolError(code: number, r?: Refusal): boolean {
  if (r) return r.reason === 'syntax' || r.reason === 'protocol' || r.reason === 'auth_malformed';
  return code >= 500 && code <= 504;
}

/** The session stage a command belongs to, for the refusal metric's `stage` label. */
export function stageOf(verb: string | undefined): Stage {
  switch (verb) {
    case 'AUTH':
      return 'auth';
    case 'STARTTLS':
      return 'tls';
    case 'MAIL':
      return 'mail';
    case 'RCPT':
      return 'rcpt';
    case 'DATA':
    case 'BDAT':
      return 'data';
    default:
      return 'connect';
  }
}

export interface GuardHooks {
  /** A refusal the guard made itself, with the stage of the command it answered. */
  onRefusal(sessionId: string, r: Refusal, stage: Stage): void;
  /** A 4xx/5xx smtp-server made on its own (syntax, sequence, AUTH exchange, timeouts). */
  onLibraryRefusal(sessionId: string, r: Refusal, stage: Stage): void;
  draining(): boolean;
  /** Syntax/sequence errors a session may make before it is closed with 421. */
  readonly maxProtocolErrors: number;
  /** A new client connection: the listener keeps it to close it on a timeout. */
  onConnection(conn: GuardedConnection): void;
  /**
   * The connection limits for a connection just accepted (its address is the real client's,
   * PROXY header included): a refusal is sent at once, in place of the greeting. A promise
   * only when the answer has to wait (a store counts the connection); it must not reject.
   */
  admit(conn: GuardedConnection): Refusal | undefined | Promise<Refusal | undefined>;
  /** Holds the replies of one event-loop turn so they leave together; none: each is written at once. */
  writes?: WriteBatcher;
  /** Told of every read from the client, to collect the read buffers relayed data leaves behind. */
  reclaimer?: ReadBufferReclaimer;
  /** STARTTLS was accepted: the handshake deadline starts. */
  onStartTls(sessionId: string): void;
  /** RSET, HELO or EHLO passed the checks: a mail transaction under way ends (RFC 5321 §4.1.1.1, §4.1.1.5). */
  onReset?(sessionId: string): void;
  /** The wait before the greeting (see `greetingDelayFor`). */
  readonly greeting: GreetingSettings;
  /** How fast a command line must arrive (see command-pace.ts). */
  readonly commandPace: CommandPace;
  /**
   * The backend's positive reply to the MAIL or RCPT smtp-server is about to accept, taken
   * once; none: smtp-server's own "Accepted" goes out.
   */
  takeAcceptedReply(sessionId: string): { code: number; text: string } | undefined;
}

const ENHANCED_PREFIX = /^[245]\.\d{1,3}\.\d{1,3} /;

export function inTransaction(conn: GuardedConnection): boolean {
  return Boolean(conn.session.envelope?.mailFrom);
}

/**
 * Hooks the guard into every connection the server creates, through smtp-server's seams
 * (smtp-server-seams.ts): its command dispatch, its replies, its reads and its greeting wait.
 */
export function installCommandGuard(server: SMTPServer, hooks: GuardHooks): void {
  onEachConnection(server, (conn) => new ConnectionGuard(conn, hooks));
}

/**
 * The guard of one connection. What it remembers between lines lives here, as named fields;
 * the constructor installs it on the connection before smtp-server handles a byte of it.
 */
class ConnectionGuard {
  /** The stage of the command being answered: a continuation line belongs to its AUTH. */
  #stage: Stage = 'connect';
  /** A bare LF arrived in command mode: the next command closes the session. */
  #bareLf = false;
  /** The last byte the current parser read, -1 before its first read (a CRLF may be split across reads). */
  #previousByte = -1;
  /** Reads of command-mode input, to tell lines that arrived together from later ones. */
  #reads = 0;
  /** The read a DATA line came in, until its reply; -1 otherwise. */
  #dataAt = -1;
  /** The read of the last refused DATA: lines from that read were pipelined behind it. */
  #dataRefusedAt = -2;
  /** Syntax and sequence errors so far, for the error budget. */
  #errors = 0;
  /** The error budget ran out and the 421 went out. */
  #overBudget = false;
  readonly #conn: GuardedConnection;
  readonly #hooks: GuardHooks;
  /** A line trickled in a byte at a time is cut off at its deadline or minimum rate. */
  readonly #lineWatch: CommandLineWatch;
  /** smtp-server's own command dispatch and reply writer, which the guard's stand in front of. */
  readonly #dispatch: CommandDispatch;
  readonly #send: Send;

  constructor(conn: GuardedConnection, hooks: GuardHooks) {
    this.#conn = conn;
    this.#hooks = hooks;
    this.#dispatch = replaceCommandHandler(conn, this.#onCommand);
    replaceAddressParser(conn, (parse) => (name, command) => parseFullLengthPath(parse, name, command));
    // At the stage its verb belongs to, while the message (DATA) is left to the DATA watchdog.
    this.#lineWatch = new CommandLineWatch(hooks.commandPace, (r, head) => {
      if (isClosing(conn) || inDataMode(conn)) return;
      hooks.onRefusal(conn.id, r, inSaslExchange(conn) ? this.#stage : stageOf(commandVerb(head)));
      conn.send(r.code, `${r.enhanced} ${r.text}`, false);
      conn.close();
    });
    clientSocket(conn).once('close', () => this.#lineWatch.stop());
    onEachParser(conn, (parser) => {
      // smtp-server's DATA parser copies every message byte; this one hands the reads on as they are.
      installFastDataParser(parser);
      this.#previousByte = -1;
      observeReads(parser, this.#onRead, this.#onParsed);
    });
    this.#send = replaceSend(conn, this.#onReply);
    hooks.onConnection(conn);
    // smtp-server calls init() right after adding the connection, and the PROXY header (if
    // any) was read before: remoteAddress is the real client's.
    const admission = hooks.admit(conn);
    const delayMs = greetingDelayFor(conn.remoteAddress, hooks.greeting);
    replaceGreetingWait(conn, (greet) => {
      // No wait at all means none: setTimeout(0) would still cost a millisecond.
      const wait = (then: () => void) => (delayMs === 0 ? setImmediate(then) : setTimeout(then, delayMs).unref());
      if (!(admission instanceof Promise)) return admission ? this.#refuseAtOnce(admission) : void wait(greet);
      const waited = new Promise<void>((resolve) => wait(resolve));
      void admission.then((r) => (r ? this.#refuseAtOnce(r) : waited.then(greet)));
    });
  }

  /**
   * A client over the connection limits is told so at once, without the greeting wait, and is
   * never greeted. So the limits count every connection from its first moment, the ones still
   * waiting for their greeting included; otherwise a long greetingDelay would let one address
   * hold any number of connections. The early-talker check itself is smtp-server's: it answers
   * any input with "421 You talk too soon" until the greeting.
   */
  #refuseAtOnce(r: Refusal): void {
    // The client may have gone while the limits were asked (an early talker, say).
    if (isClosing(this.#conn)) return;
    this.#hooks.onRefusal(this.#conn.id, r, 'connect');
    this.#conn.send(r.code, `${r.enhanced} ${r.text}`, false);
    // smtp-server closes after a 421 by itself; after any other code, so does smtpgate.
    this.#conn.close();
  }

  /** Every read from the client, before smtp-server's parser sees it. */
  readonly #onRead = (chunk: Buffer, dataMode: boolean): void => {
    this.#hooks.reclaimer?.read(chunk.length);
    if (!dataMode) {
      this.#reads++;
      if (!isUpgrading(this.#conn)) {
        this.#lineWatch.read(chunk);
        // The clock stops while smtp-server works on this read: answering the commands
        // pipelined before a line may wait on the backend, which is not the client trickling.
        this.#lineWatch.hold();
      }
      // Message content (data mode) is left to the smuggling guard.
      if (chunk.length > 0 && hasBareLf(chunk, this.#previousByte)) this.#bareLf = true;
    } else this.#lineWatch.stop();
    if (chunk.length > 0) this.#previousByte = chunk[chunk.length - 1]!;
  };

  /** smtp-server has dealt with a read and asks for the next: the client's time runs again. */
  readonly #onParsed = (): void => this.#lineWatch.release();

  /** Every command line (and AUTH continuation line), before smtp-server dispatches it. */
  readonly #onCommand = (command: Buffer, callback?: () => void): void => {
    const conn = this.#conn;
    if (isUpgrading(conn)) return this.#dispatch(command, callback);
    const line = command.toString('latin1');
    const continuation = inSaslExchange(conn);
    const verb = continuation ? undefined : commandVerb(line);
    if (!continuation) this.#stage = stageOf(verb);
    if (this.#bareLf) return this.#closeWith(BARE_LF_IN_COMMAND);
    if (this.#dataRefusedAt === this.#reads) return this.#closeWith(PIPELINING_AFTER_REFUSED_DATA);
    if (this.#stage === 'data' && /^\s*DATA\s*$/i.test(line)) this.#dataAt = this.#reads;
    const r = checkCommand(line, { secure: conn.secure, continuation, draining: this.#hooks.draining(), inTransaction: inTransaction(conn) }, verb);
    if (!r) {
      if (this.#stage === 'tls' && !conn.secure && /^\s*STARTTLS\s*$/i.test(line)) this.#hooks.onStartTls(conn.id);
      else if (this.#stage === 'connect' && RESETS.test(line)) this.#hooks.onReset?.(conn.id);
      return this.#dispatch(command, callback);
    }
    this.#hooks.onRefusal(conn.id, r, this.#stage);
    // A refused continuation line ends the SASL exchange (RFC 4954 §4).
    endSaslExchange(conn);
    conn.send(r.code, `${r.enhanced} ${r.text}`, false);
    if (isProtocolError(r.code, r)) this.#countError();
    if (callback) setImmediate(callback);
  };

  #closeWith(r: Refusal): void {
    this.#hooks.onRefusal(this.#conn.id, r, this.#stage);
    this.#conn.send(r.code, `${r.enhanced} ${r.text}`, false);
    this.#conn.close();
  }

  #countError(): void {
    if (this.#overBudget || ++this.#errors < this.#hooks.maxProtocolErrors) return;
    this.#overBudget = true;
    const r = ERROR_BUDGET_SPENT;
    this.#hooks.onRefusal(this.#conn.id, r, this.#stage);
    this.#conn.send(r.code, `${r.enhanced} ${r.text}`, false);
  }

  /**
   * Every reply smtp-server writes. RFC 2034: once ENHANCEDSTATUSCODES is advertised every
   * reply carries one. smtp-server adds one from its own table to every reply; smtpgate's
   * replies already carry the exact code in their text ("550 5.5.2 …"), so for those the
   * table's code is suppressed, never doubled.
   */
  readonly #onReply = (code: number, data: string | string[], context?: string | false): void => {
    const conn = this.#conn;
    const hooks = this.#hooks;
    // smtp-server answers every accepted MAIL and RCPT with its own "250 Accepted"; the client
    // hears the backend's reply instead (its 251 too, RFC 5321 §3.4), as it does a refusal's.
    if (context === 'MAIL_FROM_OK' || context === 'RCPT_TO_OK') {
      const accepted = hooks.takeAcceptedReply(conn.id);
      if (accepted) ({ code, text: data } = accepted);
    }
    if (this.#dataAt >= 0 && code !== 354) this.#dataRefusedAt = this.#dataAt;
    this.#dataAt = -1;
    const writes = hooks.writes;
    if (writes) {
      // STARTTLS's 220 must be on the wire before the socket is wrapped for TLS, and so must
      // any reply still held from earlier in this turn.
      if (this.#stage === 'tls' || isUpgrading(conn)) writes.release(clientSocket(conn));
      else writes.hold(clientSocket(conn));
    }
    if (typeof data === 'string' && ENHANCED_PREFIX.test(data)) {
      this.#send(code, data, false);
      return;
    }
    if (code >= 400 && typeof data === 'string') {
      const enhanced = libraryEnhancedCode(conn, code, context) || `${Math.floor(code / 100)}.0.0`;
      hooks.onLibraryRefusal(conn.id, libraryRefusal(code, enhanced, data), this.#stage);
    }
    this.#send(code, data, context);
    if (isProtocolError(code)) this.#countError();
  };
}
