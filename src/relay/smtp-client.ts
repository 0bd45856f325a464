/**
 * The backend leg: a small SMTP client that sends one command and awaits one reply.
 *
 * nodemailer's SMTPConnection bundles MAIL+RCPT+DATA into one call, so it cannot refuse a
 * single recipient at RCPT time; the proxy needs the backend's verdict per command (see
 * DESIGN.md, "The session pipeline"). Everything that can go wrong on the transport
 * (refused, timed out, closed, TLS, garbage from the server) rejects with a `BackendError`;
 * every well-formed reply, whatever its code, resolves. Deciding what a 4xx/5xx means is
 * the owner's job.
 */
import type { WriteBatcher } from '../transport/write-batcher.js';
import { identityLines, type IdentityLines } from './identity-lines.js';
import { parseCapabilities, type CapabilityCache } from './ehlo-capabilities.js';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';

export interface SmtpReply {
  /** Three-digit reply code (RFC 5321 §4.2). */
  code: number;
  /** RFC 3463 enhanced status code taken from the first line's text, e.g. "5.1.1". */
  enhanced?: string;
  /** Text of each line, without the "250-" / "250 " prefix. */
  lines: string[];
  /** All lines' text joined with ' ', without the leading enhanced code. */
  text: string;
}

/**
 * `refused`: the backend refused the client itself, not smtpgate: its EHLO name, said after
 * XCLIENT. The client gets the backend's reply, as if it had connected directly.
 */
export type BackendErrorKind = 'connect' | 'timeout' | 'closed' | 'tls' | 'protocol' | 'refused';

export class BackendError extends Error {
  readonly kind: BackendErrorKind;
  /** The reply that caused the error, when there was one (bad greeting, refused STARTTLS ...). */
  readonly reply?: SmtpReply;

  constructor(kind: BackendErrorKind, message: string, options?: { cause?: unknown; reply?: SmtpReply }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BackendError';
    this.kind = kind;
    if (options?.reply) this.reply = options.reply;
  }
}

/**
 * How every connection ends that said QUIT: one shared value, since it is the same for all and
 * a new Error per connection would capture a stack trace no one reads. Never changed.
 */
const CLOSED_AFTER_QUIT = new BackendError('closed', 'backend connection closed after QUIT');

export interface BackendTimeouts {
  /** TCP connect, plus the TLS handshake for implicit TLS and for STARTTLS. */
  connectMs: number;
  /** The 220 greeting. */
  greetingMs: number;
  /** Each command's reply. */
  commandMs: number;
  /** Longest a DATA write may wait for the socket to drain. */
  dataIdleMs: number;
  /** The reply to the final ".". */
  finalReplyMs: number;
}

export interface BackendClientOptions {
  host: string;
  port: number;
  tls: 'none' | 'starttls' | 'implicit';
  /** Merged into tls.connect (servername, ca, rejectUnauthorized, minVersion ...). */
  tlsOptions?: tls.ConnectionOptions;
  /** Name sent in EHLO. */
  heloName: string;
  timeouts: BackendTimeouts;
  /** Holds the commands of one event-loop turn so they leave together; none: each is written at once. */
  writes?: WriteBatcher;
  /** This backend's EHLO replies already parsed; none: each EHLO reply is parsed. */
  capabilities?: CapabilityCache;
}

export interface IdentityOptions {
  /** The client's own EHLO name, said to the backend after XCLIENT (see xclient()). */
  clientHelo?: string;
  /** Hears the attributes that had a value but go as [UNAVAILABLE] (see identity-lines.ts). */
  onReplaced?: (names: string[]) => void;
}

/**
 * A reply is a few lines; 64 KiB is far beyond any honest server (RFC 5321 §4.5.3.1.5 caps
 * a reply line at 512 octets) and keeps a hostile backend from growing our memory.
 */
const MAX_REPLY_BYTES = 64 * 1024;

/** RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including the CRLF. */
const MAX_COMMAND_LINE = 510;

/** RFC 3463: class "." subject "." detail, at the very start of the text. */
const ENHANCED_RE = /^([245]\.\d{1,3}\.\d{1,3})(?: +|$)/;

/** RFC 5321 §4.2: "ddd" followed by "-" (more lines follow), " " or nothing (last line). */
const REPLY_LINE_RE = /^([2-5]\d\d)([ -]|$)/;

/** What a command line may never contain: it would end the line early (or be a NUL). */
const LINE_BREAK_RE = /[\r\n\0]/;

/** A command's name for messages, computed only when one is written. */
function labelText(label: string | (() => string)): string {
  return typeof label === 'string' ? label : label();
}

function buildReply(code: number, lines: string[]): SmtpReply {
  const first = lines[0] ?? '';
  const match = ENHANCED_RE.exec(first);
  const enhanced = match?.[1];
  const texts = lines.map((line, i) => {
    if (enhanced === undefined) return line;
    // Servers that speak ENHANCEDSTATUSCODES repeat the code on every line of a multi-line
    // reply (RFC 2034); one copy is enough for whoever turns `text` into a reply.
    if (i === 0 || line.startsWith(enhanced + ' ') || line === enhanced) {
      return line.slice(enhanced.length).trimStart();
    }
    return line;
  });
  const text = texts.filter((t) => t !== '').join(' ');
  return enhanced === undefined ? { code, lines, text } : { code, enhanced, lines, text };
}

/**
 * Incremental reply parser. Bytes in, whole replies out, in order. Tolerates bare LF line
 * ends (RFC 5321 §2.3.8 asks receivers not to, but we are the client here and a lenient read
 * of *replies* cannot smuggle anything).
 */
class ReplyParser {
  private partial: Buffer = Buffer.alloc(0);
  private code: number | undefined;
  private lines: string[] = [];
  private replyBytes = 0;

  /** True while some bytes of a reply have arrived but not the whole reply. */
  get hasPartial(): boolean {
    return this.partial.length > 0 || this.lines.length > 0;
  }

  /**
   * Feeds one chunk. `onReply` is called for each complete reply and may return false to
   * stop parsing (the connection has failed). Throws a BackendError('protocol') on garbage.
   */
  push(chunk: Buffer, onReply: (reply: SmtpReply) => boolean): void {
    let data = this.partial.length > 0 ? Buffer.concat([this.partial, chunk]) : chunk;
    let start = 0;
    for (;;) {
      const lf = data.indexOf(0x0a, start);
      if (lf < 0) break;
      const end = lf > start && data[lf - 1] === 0x0d ? lf - 1 : lf;
      const line = data.toString('utf8', start, end);
      this.replyBytes += lf + 1 - start;
      start = lf + 1;
      if (this.replyBytes > MAX_REPLY_BYTES) {
        throw new BackendError('protocol', `backend reply exceeds ${MAX_REPLY_BYTES} bytes`);
      }
      const reply = this.line(line);
      if (reply && !onReply(reply)) {
        data = Buffer.alloc(0);
        start = 0;
        break;
      }
    }
    this.partial = start === 0 ? data : Buffer.from(data.subarray(start));
    if (this.replyBytes + this.partial.length > MAX_REPLY_BYTES) {
      throw new BackendError('protocol', `backend reply exceeds ${MAX_REPLY_BYTES} bytes`);
    }
  }

  private line(line: string): SmtpReply | undefined {
    const m = REPLY_LINE_RE.exec(line);
    if (!m) {
      throw new BackendError('protocol', `malformed reply line from backend: ${JSON.stringify(line.slice(0, 80))}`);
    }
    const code = Number(m[1]);
    if (this.code !== undefined && code !== this.code) {
      // RFC 5321 §4.2.1: every line of a multi-line reply carries the same code.
      throw new BackendError('protocol', `backend changed reply code within a reply (${this.code} then ${code})`);
    }
    this.code = code;
    this.lines.push(line.slice(4));
    if (m[2] === '-') return undefined;
    const reply = buildReply(code, this.lines);
    this.code = undefined;
    this.lines = [];
    this.replyBytes = 0;
    return reply;
  }
}

/**
 * The reply deadline of the command awaited in a lock-step exchange: one Timeout per
 * connection, refreshed for each command, where a setTimeout and a clearTimeout per command
 * cost a timer object and two timer-list updates each. A reply stops it lazily: the timer stays
 * queued and, if it fires, finds no command waiting. It is started again with `refresh()`, or
 * replaced when a command's timeout differs (the greeting, the final dot).
 */
class ReplyTimer {
  #timer: NodeJS.Timeout | undefined;
  #ms = 0;
  /** The timeout of the command holding the timer; undefined while it holds none. */
  #onTimeout: (() => void) | undefined;

  /** A command holds the timer, its deadline not yet reached. */
  get running(): boolean {
    return this.#onTimeout !== undefined;
  }

  /** `onTimeout` runs `ms` from now unless stop() or dispose() comes first. */
  start(ms: number, onTimeout: () => void): void {
    this.#onTimeout = onTimeout;
    if (this.#timer !== undefined && this.#ms === ms) {
      this.#timer.refresh();
      return;
    }
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#ms = ms;
    this.#timer = setTimeout(this.#fire, ms);
  }

  stop(): void {
    this.#onTimeout = undefined;
  }

  /** The connection is gone: nothing stays queued. */
  dispose(): void {
    this.#onTimeout = undefined;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  readonly #fire = (): void => {
    const onTimeout = this.#onTimeout;
    this.#onTimeout = undefined;
    onTimeout?.();
  };
}

interface Waiter {
  resolve: (reply: SmtpReply) => void;
  reject: (err: BackendError) => void;
  /**
   * Its reply deadline: 'shared' while it holds the connection's ReplyTimer (no other command
   * was awaiting a reply when it was armed), its own Timeout if it was pipelined behind one.
   */
  timer: NodeJS.Timeout | 'shared' | undefined;
}

/** Where the connection is; decides which kind a transport failure gets. */
type Phase = 'tcp' | 'tls-handshake' | 'greeting' | 'ready';

/* eslint-disable @typescript-eslint/no-explicit-any */
export interface BackendConnection {
  /** Emitted once when the socket goes away, whatever the reason; the reason is the failure. */
  on(event: 'close', listener: (reason: BackendError) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
  once(event: 'close', listener: (reason: BackendError) => void): this;
  once(event: string | symbol, listener: (...args: any[]) => void): this;
  off(event: 'close', listener: (reason: BackendError) => void): this;
  off(event: string | symbol, listener: (...args: any[]) => void): this;
}
/* eslint-enable @typescript-eslint/no-explicit-any */

export class BackendConnection extends EventEmitter {
  /**
   * Connects, reads the greeting, says EHLO and, for tls:'starttls', upgrades and says EHLO
   * again. Every failure rejects with a BackendError and leaves no socket behind.
   */
  static async connect(opts: BackendClientOptions): Promise<BackendConnection> {
    if (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535) {
      throw new BackendError('connect', `invalid backend port ${String(opts.port)}`);
    }
    let conn: BackendConnection;
    try {
      conn = new BackendConnection(opts);
    } catch (err) {
      // net/tls.connect throw synchronously on bad options (an unparsable key or certificate, say).
      throw new BackendError(opts.tls === 'implicit' ? 'tls' : 'connect', `cannot open backend connection: ${errorMessage(err)}`, {
        cause: err,
      });
    }
    try {
      await conn.open();
      return conn;
    } catch (err) {
      conn.abort();
      throw err;
    }
  }

  private readonly opts: BackendClientOptions;
  private socket: net.Socket;
  /** The plain socket under a STARTTLS-upgraded one; still needs its error/close watched. */
  private rawSocket: net.Socket | undefined;
  private readonly parser = new ReplyParser();
  private readonly waiters: Waiter[] = [];
  private readonly replyTimer = new ReplyTimer();
  private phase: Phase = 'tcp';
  /** Settles when the transport is up (TCP connected, or TLS handshake done). */
  private transportWaiter: { resolve: () => void; reject: (err: BackendError) => void } | undefined;
  private transportTimer: NodeJS.Timeout | undefined;
  private readonly transportUp: Promise<void>;
  /** Set once; from then on the connection is dead and every call rejects. */
  private failure: BackendError | undefined;
  private closeEmitted = false;
  /** Lets the DataWriter of a message being sent hear about a transport failure. */
  private onFail: ((err: BackendError) => void) | undefined;
  private dataInProgress = false;
  private greetingReply: SmtpReply = { code: 0, lines: [], text: '' };
  private caps: ReadonlyMap<string, string> = new Map();
  private isSecure = false;

  private constructor(opts: BackendClientOptions) {
    super();
    this.opts = opts;
    const transportUp = new Promise<void>((resolve, reject) => {
      this.transportWaiter = { resolve, reject };
    });
    // The promise is awaited by open(); this branch only keeps an early failure from being
    // reported as unhandled before open() gets there.
    transportUp.catch(() => undefined);
    this.transportUp = transportUp;

    // noDelay (TCP_NODELAY): every exchange is one short command waiting on one short reply;
    // Nagle's algorithm would only add latency to each round trip. A STARTTLS upgrade keeps
    // the same TCP socket, so the setting carries over.
    if (opts.tls === 'implicit') {
      const socket = tls.connect({ ...this.tlsConnectOptions(), host: opts.host, port: opts.port });
      socket.setNoDelay(true); // tls.ConnectionOptions has no `noDelay`; applied once connected
      this.socket = socket;
      socket.once('connect', () => {
        this.phase = 'tls-handshake';
      });
      socket.once('secureConnect', () => this.transportReady());
    } else {
      const socket = net.connect({ host: opts.host, port: opts.port, noDelay: true });
      this.socket = socket;
      socket.once('connect', () => this.transportReady());
    }
    this.watch(this.socket);
    this.socket.on('data', this.onData);
    this.armTransportTimer(opts.timeouts.connectMs, 'connect');
  }

  get greeting(): SmtpReply {
    return this.greetingReply;
  }

  /** Upper-cased EHLO keyword → rest of its line ('' if none). Replaced by every EHLO. */
  get capabilities(): ReadonlyMap<string, string> {
    return this.caps;
  }

  get secure(): boolean {
    return this.isSecure;
  }

  get closed(): boolean {
    return this.failure !== undefined;
  }

  /** A command awaits its reply, or message data is being sent: a QUIT now would not be read as one. */
  get busy(): boolean {
    return this.waiters.length > 0 || this.dataInProgress;
  }

  hasCapability(name: string): boolean {
    return this.caps.has(name.toUpperCase());
  }

  /**
   * Writes one command line and resolves with its reply, whatever the code. Commands may be
   * pipelined (RFC 2920): replies are matched to commands in order.
   */
  command(line: string): Promise<SmtpReply> {
    // The label (the verb) is only needed if the reply times out.
    return this.send(line, () => /^[A-Za-z]{1,16}\b/.exec(line)?.[0]?.toUpperCase() ?? 'command', this.opts.timeouts.commandMs);
  }

  /** EHLO with smtpgate's own name, or with `name` (a client's, after XCLIENT). */
  async ehlo(name = this.opts.heloName): Promise<SmtpReply> {
    const reply = await this.send(`EHLO ${name}`, 'EHLO', this.opts.timeouts.commandMs);
    // Whatever the server said before no longer holds (RFC 3207 §4.2, XCLIENT_README):
    // keep only what this reply advertises, nothing if it refused.
    this.caps = reply.code !== 250 ? new Map() : this.opts.capabilities ? this.opts.capabilities.parse(reply.lines) : parseCapabilities(reply.lines);
    return reply;
  }

  /** RFC 4954 + RFC 4616: AUTH PLAIN with an initial response. */
  async authPlain(user: string, pass: string): Promise<SmtpReply> {
    if (user.includes('\0') || pass.includes('\0')) {
      throw new BackendError('protocol', 'AUTH PLAIN credentials must not contain NUL');
    }
    const token = Buffer.from(`\0${user}\0${pass}`, 'utf8').toString('base64');
    const reply = await this.send(`AUTH PLAIN ${token}`, 'AUTH PLAIN', this.opts.timeouts.commandMs);
    if (reply.code === 334) {
      // The server wants yet another round after a complete PLAIN response. Leaving it
      // mid-exchange would make it read the next command as SASL data; cancel instead
      // (RFC 4954 §4: "*" aborts) and hand back the cancel's reply, a failure.
      return this.send('*', 'AUTH cancel', this.opts.timeouts.commandMs);
    }
    return reply;
  }

  /** The LOGIN mechanism (draft-murchison-sasl-login): user and password, one 334 each. */
  async authLogin(user: string, pass: string): Promise<SmtpReply> {
    const ms = this.opts.timeouts.commandMs;
    let reply = await this.send('AUTH LOGIN', 'AUTH LOGIN', ms);
    if (reply.code !== 334) return reply;
    // Labels never include the lines themselves: those carry the credentials.
    reply = await this.send(Buffer.from(user, 'utf8').toString('base64'), 'AUTH LOGIN username', ms);
    if (reply.code !== 334) return reply;
    return this.send(Buffer.from(pass, 'utf8').toString('base64'), 'AUTH LOGIN password', ms);
  }

  /**
   * XOAUTH2, the SASL profile Google and Microsoft use for OAuth2 bearer tokens: the initial
   * response is base64("user=" user ^A "auth=Bearer " token ^A ^A). A refused token gets a 334
   * whose text is a base64 JSON error (RFC 7628 §3.2.2 does the same for OAUTHBEARER); the
   * client answers with an empty line and the server gives the final 5xx. That reply is
   * returned, with the decoded error as `challenge`: left mid-exchange, the server would read
   * the next command as SASL data.
   */
  async authXOAuth2(user: string, token: string): Promise<{ reply: SmtpReply; challenge?: string }> {
    if (/[\x00-\x1f\x7f]/.test(user) || !/^[\x21-\x7e]+$/.test(token)) {
      // ^A separates the fields: one inside the user would let it add its own.
      throw new BackendError('protocol', 'XOAUTH2 user or token contains control characters');
    }
    const initial = Buffer.from(`user=${user}\x01auth=Bearer ${token}\x01\x01`, 'utf8').toString('base64');
    const ms = this.opts.timeouts.commandMs;
    // The label never includes the line: it carries the token.
    const reply = await this.send(`AUTH XOAUTH2 ${initial}`, 'AUTH XOAUTH2', ms);
    if (reply.code !== 334) return { reply };
    const challenge = Buffer.from(reply.text, 'base64').toString('utf8').replace(/[\x00-\x1f\x7f]/g, ' ').slice(0, 512);
    return { reply: await this.send('', 'AUTH XOAUTH2 error response', ms), challenge };
  }

  /**
   * Postfix XCLIENT. Success is 220: the backend starts a new session as if the client had
   * just connected, so EHLO is said again (capabilities refreshed) and the 220 returned.
   * The first reply other than 220, or a failed re-EHLO with smtpgate's name, is returned as is;
   * a refused EHLO with the client's name throws BackendError('refused') carrying that reply.
   *
   * The last EHLO names `clientHelo`, the client's own EHLO name, when there is one that fits
   * on the line: an EHLO replaces the HELO that XCLIENT set (smtpd.c helo_cmd), so saying
   * smtpgate's name would make the backend's HELO checks judge smtpgate instead of the client.
   * The backend then records that name exactly as if the client had said it directly.
   */
  async xclient(attrs: Record<string, string | undefined>, opts: IdentityOptions = {}): Promise<SmtpReply> {
    const lines = this.identityLines('XCLIENT', attrs, opts.onReplaced);
    const clientHelo = opts.clientHelo;
    const lastEhlo = clientHelo !== undefined && clientHelo.trim() !== '' && !LINE_BREAK_RE.test(clientHelo) && Buffer.byteLength(`EHLO ${clientHelo}`) <= MAX_COMMAND_LINE ? clientHelo : undefined;
    let last: SmtpReply | undefined;
    for (const [i, line] of lines.entries()) {
      last = await this.command(line);
      if (last.code !== 220) return last;
      const name = i === lines.length - 1 ? lastEhlo : undefined;
      const ehlo = await this.ehlo(name);
      // The backend's HELO checks (Postfix reject_invalid_helo_hostname, ...) judged the
      // client's name: that is the client's refusal, to be told to it, not a backend failure
      // (421 is the backend closing down, and stays one).
      if (name !== undefined && ehlo.code >= 450 && ehlo.code !== 421) throw new BackendError('refused', `backend refused the client's EHLO name: ${ehlo.code} ${ehlo.text}`, { reply: ehlo });
      if (ehlo.code !== 250) return ehlo;
    }
    // identityLines() never returns an empty list.
    return last as SmtpReply;
  }

  /**
   * Postfix XFORWARD: 250 per command, the session carries on (no new greeting, no EHLO).
   * The first reply other than 250 is returned as is.
   */
  async xforward(attrs: Record<string, string | undefined>, opts: Pick<IdentityOptions, 'onReplaced'> = {}): Promise<SmtpReply> {
    const lines = this.identityLines('XFORWARD', attrs, opts.onReplaced);
    let last: SmtpReply | undefined;
    for (const line of lines) {
      last = await this.command(line);
      if (last.code !== 250) return last;
    }
    return last as SmtpReply;
  }

  /**
   * Starts sending a message body after DATA got 354: the caller writes already canonical
   * bytes (CRLF line ends, dot-stuffed, ending in CRLF or empty) to the returned writer and
   * ends with `finish()`, which writes the terminating "." and resolves with the final reply.
   * Writes made in one turn of the event loop leave in one syscall (the socket is corked until
   * the next turn, or until finish()), so a small message's header, body and dot are one
   * packet.
   *
   * To abandon the message, `abort()` the connection: it is destroyed without the final dot,
   * so the backend drops the half-sent message (RFC 5321 §3.8: a connection lost
   * mid-transaction is an RSET).
   */
  beginData(): DataWriter {
    if (this.failure) throw this.closedError();
    if (this.dataInProgress || this.waiters.length > 0) {
      throw new BackendError('protocol', 'message data started while another command is in flight');
    }
    this.dataInProgress = true;
    return new DataWriter(this.socket, this.opts.timeouts, {
      failure: () => this.failure,
      fail: (err) => this.fail(err),
      setOnFail: (cb) => {
        this.onFail = cb;
      },
      finish: () => {
        this.dataInProgress = false;
        return this.send('.', 'end of data', this.opts.timeouts.finalReplyMs);
      },
    });
  }

  /**
   * Drops the connection at once, e.g. to abandon a transaction without the final dot. Pending
   * and later calls reject with `reason` (and a DataWriter's onFailure hears it, synchronously),
   * so a caller that passes its own can tell its abort from a failure of the backend's. A
   * connection that has failed already keeps its first error.
   */
  abort(reason: BackendError = new BackendError('closed', 'backend connection aborted')): void {
    this.fail(reason);
  }

  /** RFC 5321 §4.1.1.10: QUIT and wait for 221 (or the close), bounded; never rejects. */
  async quit(): Promise<void> {
    if (this.failure) return;
    try {
      await this.send('QUIT', 'QUIT', this.opts.timeouts.commandMs);
    } catch {
      // Timed out or closed: either way the connection is finished.
    }
    this.fail(CLOSED_AFTER_QUIT, true);
  }

  // ---- internals ----------------------------------------------------------------------

  private async open(): Promise<void> {
    const { timeouts } = this.opts;
    const greetingWait = this.expectReply(timeouts.greetingMs, 'greeting', false);
    // The greeting waiter is queued before any byte can arrive; its timer starts only once
    // the transport is up, so a slow TCP connect is charged to connectMs alone.
    greetingWait.promise.catch(() => undefined);
    await this.transportUp;
    greetingWait.arm();
    const greeting = await greetingWait.promise;
    this.greetingReply = greeting;
    if (greeting.code < 200 || greeting.code > 299) {
      // RFC 5321 §3.1: a 554 (or 421) greeting means "no service"; there is nothing to try.
      throw new BackendError('protocol', `backend refused the session: ${greeting.code} ${greeting.text}`, {
        reply: greeting,
      });
    }
    this.phase = 'ready';

    await this.hello();

    if (this.opts.tls === 'starttls') {
      await this.startTls();
    }
  }

  /** EHLO, falling back to HELO for a server that does not know EHLO (RFC 5321 §4.1.4). */
  private async hello(): Promise<void> {
    const ehlo = await this.ehlo();
    if (ehlo.code === 250) return;
    if (ehlo.code >= 500 && this.opts.tls !== 'starttls') {
      const helo = await this.send(`HELO ${this.opts.heloName}`, 'HELO', this.opts.timeouts.commandMs);
      if (helo.code === 250) return;
      throw new BackendError('protocol', `backend refused HELO: ${helo.code} ${helo.text}`, { reply: helo });
    }
    if (this.opts.tls === 'starttls' && ehlo.code >= 500) {
      // No EHLO, no extensions, hence no STARTTLS (RFC 3207 §4).
      throw new BackendError('tls', `backend refused EHLO, so it cannot offer STARTTLS: ${ehlo.code} ${ehlo.text}`, {
        reply: ehlo,
      });
    }
    throw new BackendError('protocol', `backend refused EHLO: ${ehlo.code} ${ehlo.text}`, { reply: ehlo });
  }

  private async startTls(): Promise<void> {
    if (!this.hasCapability('STARTTLS')) {
      // Never fall back to plaintext: that is exactly the downgrade STARTTLS stripping exploits.
      throw new BackendError('tls', 'backend does not offer STARTTLS');
    }
    const reply = await this.send('STARTTLS', 'STARTTLS', this.opts.timeouts.commandMs);
    if (reply.code !== 220) {
      throw new BackendError('tls', `backend refused STARTTLS: ${reply.code} ${reply.text}`, { reply });
    }
    if (this.failure) throw this.failure;
    if (this.parser.hasPartial) {
      // Bytes after the 220 but before the handshake would be read as if they came over
      // TLS: the STARTTLS response injection of CVE-2011-0411. RFC 3207 §4.2 bars them.
      throw new BackendError('tls', 'backend sent data after its STARTTLS reply, before the TLS handshake');
    }
    // RFC 3207 §4.2: forget everything learnt before TLS.
    this.caps = new Map();

    const raw = this.socket;
    raw.off('data', this.onData);
    this.rawSocket = raw;
    this.phase = 'tls-handshake';
    let secured: tls.TLSSocket;
    try {
      secured = tls.connect({ ...this.tlsConnectOptions(), host: this.opts.host, socket: raw });
    } catch (err) {
      throw new BackendError('tls', `cannot start TLS with the backend: ${errorMessage(err)}`, { cause: err });
    }
    // Nothing below can complete the handshake synchronously, so the listeners are in time.
    const transportUp = new Promise<void>((resolve, reject) => {
      this.transportWaiter = { resolve, reject };
    });
    this.armTransportTimer(this.opts.timeouts.connectMs, 'TLS handshake');
    this.socket = secured;
    this.watch(secured);
    secured.on('data', this.onData);
    secured.once('secureConnect', () => this.transportReady());
    await transportUp;

    const ehlo = await this.ehlo();
    if (ehlo.code !== 250) {
      throw new BackendError('protocol', `backend refused EHLO after STARTTLS: ${ehlo.code} ${ehlo.text}`, {
        reply: ehlo,
      });
    }
  }

  private tlsConnectOptions(): tls.ConnectionOptions {
    const options: tls.ConnectionOptions = { ...this.opts.tlsOptions };
    // SNI must be a host name, never an IP literal (RFC 6066 §3). Certificate checks still
    // use `host`, which covers IP SANs.
    if (options.servername === undefined && net.isIP(this.opts.host) === 0) {
      options.servername = this.opts.host;
    }
    return options;
  }

  private armTransportTimer(ms: number, what: string): void {
    this.transportTimer = setTimeout(() => {
      this.fail(new BackendError('timeout', `${what} to ${this.opts.host}:${this.opts.port} timed out after ${ms} ms`));
    }, ms);
  }

  private transportReady(): void {
    if (this.transportTimer) clearTimeout(this.transportTimer);
    this.transportTimer = undefined;
    this.isSecure = this.socket instanceof tls.TLSSocket;
    this.phase = this.phase === 'tls-handshake' && this.rawSocket ? 'ready' : 'greeting';
    const waiter = this.transportWaiter;
    this.transportWaiter = undefined;
    waiter?.resolve();
  }

  private watch(socket: net.Socket): void {
    socket.on('error', (err: Error) => this.onTransportError(err));
    socket.on('close', () => this.onTransportClose());
  }

  private send(line: string, label: string | (() => string), timeoutMs: number): Promise<SmtpReply> {
    if (LINE_BREAK_RE.test(line)) {
      // A CR or LF would end the command early and start another one of the caller's
      // choosing: command injection. Nothing is written.
      return Promise.reject(new BackendError('protocol', `refusing to send ${labelText(label)}: the line contains CR, LF or NUL`));
    }
    if (this.failure) return Promise.reject(this.closedError());
    if (this.dataInProgress) {
      return Promise.reject(new BackendError('protocol', `refusing to send ${labelText(label)} while message data is being sent`));
    }
    const wait = this.expectReply(timeoutMs, label, true);
    this.opts.writes?.hold(this.socket);
    this.socket.write(`${line}\r\n`, 'utf8');
    return wait.promise;
  }

  /** Queues a waiter for the next reply. The timer runs from arm() (immediately if `armNow`). */
  private expectReply(
    timeoutMs: number,
    label: string | (() => string),
    armNow: boolean,
  ): { promise: Promise<SmtpReply>; arm: () => void } {
    let waiter!: Waiter;
    const promise = new Promise<SmtpReply>((resolve, reject) => {
      waiter = { resolve, reject, timer: undefined };
    });
    this.waiters.push(waiter);
    const arm = (): void => {
      if (this.failure || waiter.timer) return;
      const onTimeout = () => this.fail(new BackendError('timeout', `no reply from backend to ${labelText(label)} within ${timeoutMs} ms`));
      if (this.replyTimer.running) {
        waiter.timer = setTimeout(onTimeout, timeoutMs);
      } else {
        this.replyTimer.start(timeoutMs, onTimeout);
        waiter.timer = 'shared';
      }
    };
    if (armNow) arm();
    return { promise, arm };
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.failure) return;
    try {
      this.parser.push(chunk, (reply) => this.deliver(reply));
    } catch (err) {
      this.fail(err instanceof BackendError ? err : new BackendError('protocol', errorMessage(err), { cause: err }));
    }
  };

  /** Hands a reply to the oldest waiter; returns false once the connection has failed. */
  private deliver(reply: SmtpReply): boolean {
    const waiter = this.waiters.shift();
    if (!waiter) {
      // RFC 5321 §3.8: a server about to shut down may say 421 unprompted, then close.
      const err =
        reply.code === 421
          ? new BackendError('closed', `backend is closing the connection: 421 ${reply.text}`, { reply })
          : new BackendError('protocol', `unexpected reply from backend with no command pending: ${reply.code}`, {
              reply,
            });
      this.fail(err);
      return false;
    }
    if (waiter.timer === 'shared') this.replyTimer.stop();
    else clearTimeout(waiter.timer);
    waiter.resolve(reply);
    return this.failure === undefined;
  }

  private onTransportError(err: Error): void {
    if (this.failure) return;
    const where = `${this.opts.host}:${this.opts.port}`;
    switch (this.phase) {
      case 'tcp':
        this.fail(new BackendError('connect', `cannot connect to backend ${where}: ${err.message}`, { cause: err }));
        break;
      case 'tls-handshake':
        this.fail(new BackendError('tls', `TLS handshake with backend ${where} failed: ${err.message}`, { cause: err }));
        break;
      case 'greeting':
        this.fail(new BackendError('connect', `backend ${where} failed before its greeting: ${err.message}`, { cause: err }));
        break;
      case 'ready':
        this.fail(new BackendError('closed', `backend connection failed: ${err.message}`, { cause: err }));
        break;
    }
  }

  private onTransportClose(): void {
    if (!this.failure) {
      const where = `${this.opts.host}:${this.opts.port}`;
      switch (this.phase) {
        case 'tcp':
        case 'greeting':
          this.fail(new BackendError('connect', `backend ${where} closed the connection before its greeting`));
          break;
        case 'tls-handshake':
          this.fail(new BackendError('tls', `backend ${where} closed the connection during the TLS handshake`));
          break;
        case 'ready':
          this.fail(new BackendError('closed', `backend ${where} closed the connection`));
          break;
      }
    }
    if (!this.closeEmitted) {
      this.closeEmitted = true;
      this.emit('close', this.failure ?? this.closedError());
    }
  }

  /**
   * The single way the connection dies. Idempotent, so whichever of error, close, timeout
   * or abort comes first wins and the others are no-ops: every pending promise is settled
   * exactly once and every timer cleared.
   */
  private fail(err: BackendError, graceful = false): void {
    if (this.failure) return;
    this.failure = err;
    if (this.transportTimer) clearTimeout(this.transportTimer);
    this.transportTimer = undefined;
    const transport = this.transportWaiter;
    this.transportWaiter = undefined;
    transport?.reject(err);
    this.replyTimer.dispose();
    for (const waiter of this.waiters.splice(0)) {
      if (waiter.timer !== 'shared') clearTimeout(waiter.timer);
      waiter.reject(err);
    }
    const onFail = this.onFail;
    this.onFail = undefined;
    onFail?.(err);

    const socket = this.socket;
    const raw = this.rawSocket;
    if (graceful && !socket.destroyed) {
      // After QUIT: send our FIN (and TLS close_notify), then let go without waiting for
      // the server's.
      socket.end(() => {
        socket.destroy();
        raw?.destroy();
      });
    } else {
      socket.destroy();
      raw?.destroy();
    }
  }

  private closedError(): BackendError {
    return new BackendError('closed', 'backend connection is closed', { cause: this.failure });
  }

  /** The XCLIENT / XFORWARD commands for `attrs` (see identity-lines.ts). */
  private identityLines(verb: 'XCLIENT' | 'XFORWARD', attrs: Record<string, string | undefined>, onReplaced?: (names: string[]) => void): string[] {
    const advertised = this.caps.get(verb);
    if (advertised === undefined) throw new BackendError('protocol', `backend does not advertise ${verb}`);
    let built: IdentityLines;
    try {
      built = identityLines(verb, attrs, advertised);
    } catch (err) {
      throw new BackendError('protocol', errorMessage(err));
    }
    if (built.replaced.length > 0) onReplaced?.(built.replaced);
    return built.lines;
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Message pieces at least this large are written at once rather than held until the turn ends. */
const DIRECT_WRITE_BYTES = 16 * 1024;

/** What a DataWriter needs from its connection. */
interface DataWriterHost {
  failure(): BackendError | undefined;
  fail(err: BackendError): void;
  setOnFail(cb: ((err: BackendError) => void) | undefined): void;
  finish(): Promise<SmtpReply>;
}

/**
 * One message body on its way to the backend (see BackendConnection.beginData). Not reusable:
 * after finish() or a failure it writes nothing more.
 */
export class DataWriter {
  readonly #socket: net.Socket;
  readonly #timeouts: BackendTimeouts;
  readonly #host: DataWriterHost;
  #corked = false;
  #open = true;
  #drainTimer: NodeJS.Timeout | undefined;
  #drainWaiter: (() => void) | undefined;

  constructor(socket: net.Socket, timeouts: BackendTimeouts, host: DataWriterHost) {
    this.#socket = socket;
    this.#timeouts = timeouts;
    this.#host = host;
    host.setOnFail(() => this.#close());
  }

  /**
   * Queues canonical bytes. Returns false when the backend is not keeping up: write no more
   * until the callback given to onDrain() runs (a slow backend must never make us buffer a
   * whole message). Writes nothing once the connection has failed.
   */
  write(chunk: Buffer): boolean {
    if (!this.#open || this.#host.failure()) return true;
    if (chunk.length >= DIRECT_WRITE_BYTES) {
      // A large piece gains nothing from waiting: what is held goes first, then this, at once.
      this.#uncork();
    } else if (!this.#corked) {
      this.#corked = true;
      this.#socket.cork();
      setImmediate(this.#uncork);
    }
    if (this.#socket.write(chunk)) return true;
    if (this.#drainTimer === undefined) {
      const { dataIdleMs } = this.#timeouts;
      this.#socket.once('drain', this.#drained);
      this.#drainTimer = setTimeout(() => {
        this.#host.fail(new BackendError('timeout', `backend did not accept message data for ${dataIdleMs} ms`));
      }, dataIdleMs);
    }
    return false;
  }

  /** False once the connection has failed or the message was finished: write() then writes nothing. */
  get open(): boolean {
    return this.#open && !this.#host.failure();
  }

  /** Bytes written and not yet handed to the kernel (the socket may still reference them). */
  get pendingBytes(): number {
    return this.#socket.writableLength;
  }

  /**
   * Runs `cb` once the backend has taken everything written (at once if nothing is pending),
   * or once the connection has failed.
   */
  onDrain(cb: () => void): void {
    if (this.#drainTimer === undefined) cb();
    else this.#drainWaiter = cb;
  }

  /** Runs `cb` if the connection fails before finish() (the message is then lost, not sent). */
  onFailure(cb: (err: BackendError) => void): void {
    this.#host.setOnFail((err) => {
      this.#close();
      cb(err);
    });
  }

  /** Writes the terminating "." and resolves with the backend's reply to the message. */
  finish(): Promise<SmtpReply> {
    if (!this.#open) return Promise.reject(new BackendError('protocol', 'message data already finished'));
    this.#close();
    const reply = this.#host.finish();
    this.#uncork();
    return reply;
  }

  #close(): void {
    this.#open = false;
    this.#host.setOnFail(undefined);
    if (this.#drainTimer) clearTimeout(this.#drainTimer);
    this.#drainTimer = undefined;
    this.#socket.off('drain', this.#drained);
    // Whoever waits to write more learns that nothing more will be written (write() is a
    // no-op now and finish() rejects) instead of waiting for ever: a DKIM spool replay is
    // past the point where the session listens for the failure.
    const waiter = this.#drainWaiter;
    this.#drainWaiter = undefined;
    waiter?.();
  }

  readonly #uncork = (): void => {
    if (!this.#corked) return;
    this.#corked = false;
    this.#socket.uncork();
  };

  readonly #drained = (): void => {
    if (this.#drainTimer) clearTimeout(this.#drainTimer);
    this.#drainTimer = undefined;
    const waiter = this.#drainWaiter;
    this.#drainWaiter = undefined;
    waiter?.();
  };
}
