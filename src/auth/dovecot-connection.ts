/**
 * One connection to a Dovecot auth socket (unix or TCP), in either of its protocols: the
 * handshake, then any number of requests in flight at once, each matched to its reply by id.
 * What the lines mean is the dialect's business (dovecot-protocol.ts: AUTH_CLIENT for
 * sign-ins, AUTH_MASTER for lookups); `SharedConnection` keeps one open and reopens it.
 *
 * Anything the server says that does not fit the protocol (a garbled or over-long line, an
 * unknown command) ends the connection, and every request on it fails: a confused peer's
 * later answers could be matched to the wrong request. No line the server sends is logged:
 * a lookup's reply can hold a secret.
 */
import net from 'node:net';
import { isUtf8 } from 'node:buffer';
import type { Logger } from '../logging/logger.js';
import type { DovecotConfig } from '../config/auth-section.js';
import { DovecotProtocolError, MAX_LINE_BYTES, type DovecotDialect } from './dovecot-protocol.js';

export type DovecotSocket = DovecotConfig['socket'];

/** How the socket is named in logs and messages: its path, or host:port. */
export function describeSocket(socket: DovecotSocket): string {
  return socket.kind === 'unix' ? socket.path : `${socket.host.includes(':') ? `[${socket.host}]` : socket.host}:${socket.port}`;
}

interface Pending<Reply> {
  readonly resolve: (reply: Reply) => void;
  readonly reject: (err: Error) => void;
  readonly timer: NodeJS.Timeout;
}

const ID_LIMIT = 0xffffffff;

export class DovecotConnection<Handshake, Reply> {
  readonly handshake: Handshake;
  readonly #socket: net.Socket;
  readonly #dialect: DovecotDialect<Handshake, Reply>;
  readonly #log: Logger;
  readonly #pending = new Map<number, Pending<Reply>>();
  readonly #closeListeners: ((err: Error) => void)[] = [];
  #lastId = 0;
  #closedBy: Error | undefined;

  private constructor(socket: net.Socket, dialect: DovecotDialect<Handshake, Reply>, handshake: Handshake, log: Logger, lines: LineReader) {
    this.#socket = socket;
    this.#dialect = dialect;
    this.handshake = handshake;
    this.#log = log;
    lines.onLine = (line, utf8) => this.#onLine(line, utf8);
    lines.onError = (err) => this.#fail(err);
    socket.on('close', () => this.#fail(new Error('connection closed by Dovecot')));
    socket.on('error', (err) => this.#fail(err));
  }

  /**
   * Connects and completes the handshake within `timeoutMs`. Rejects with the socket's error
   * (ENOENT, ECONNREFUSED, EACCES, …), a DovecotProtocolError, or a timeout.
   */
  static open<H, R>(target: DovecotSocket, dialect: DovecotDialect<H, R>, timeoutMs: number, log: Logger): Promise<DovecotConnection<H, R>> {
    return new Promise((resolve, reject) => {
      const socket = target.kind === 'unix' ? net.createConnection({ path: target.path }) : net.createConnection({ host: target.host, port: target.port });
      const reader = dialect.handshake();
      const lines = new LineReader(socket);
      let settled = false;
      const give = (err: Error | undefined, conn?: DovecotConnection<H, R>) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.off('error', onError).off('close', onClose).off('connect', onConnect);
        if (err) {
          socket.destroy();
          reject(err);
        } else {
          resolve(conn!);
        }
      };
      const timer = setTimeout(() => give(new Error(`no handshake within ${timeoutMs} ms`)), timeoutMs);
      const onError = (err: Error) => give(err);
      const onClose = () => give(new Error('connection closed during the handshake'));
      const onConnect = () => {
        socket.setNoDelay(true);
        socket.write(dialect.greeting(process.pid));
      };
      socket.once('connect', onConnect).on('error', onError).on('close', onClose);
      lines.onError = onError;
      lines.onLine = (line) => {
        try {
          const handshake = reader.accept(line);
          if (handshake !== undefined) {
            lines.onLine = undefined;
            give(undefined, new DovecotConnection(socket, dialect, handshake, log, lines));
          }
        } catch (err) {
          give(err as Error);
        }
      };
    });
  }

  get closed(): boolean {
    return this.#closedBy !== undefined;
  }

  /** Called once when the connection ends (at once if it already has), with why. */
  onClose(listener: (err: Error) => void): void {
    if (this.#closedBy) listener(this.#closedBy);
    else this.#closeListeners.push(listener);
  }

  /**
   * Sends the line `build(id)` makes and resolves with the server's reply to that id. Rejects
   * when no reply comes within `timeoutMs` (the request is then withdrawn at the server, if
   * the protocol can) or the connection ends first.
   */
  request(build: (id: number) => string, timeoutMs: number): Promise<Reply> {
    if (this.#closedBy) return Promise.reject(this.#closedBy);
    const id = this.#nextId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        if (this.#dialect.cancel) this.#write(this.#dialect.cancel(id));
        reject(new Error(`no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.#write(build(id));
    });
  }

  /** Ends the connection; requests still waiting fail with `why`. */
  close(why = new Error('connection closed by smtpgate')): void {
    this.#fail(why);
  }

  #nextId(): number {
    // Ids only have to be unique among the requests in flight on this connection.
    do {
      this.#lastId = this.#lastId >= ID_LIMIT ? 1 : this.#lastId + 1;
    } while (this.#pending.has(this.#lastId));
    return this.#lastId;
  }

  #write(line: string): void {
    if (!this.#closedBy && this.#socket.writable) this.#socket.write(line);
  }

  #onLine(text: string, utf8: boolean): void {
    let reply;
    try {
      reply = this.#dialect.reply(text, utf8);
    } catch (err) {
      this.#fail(err as Error);
      return;
    }
    const pending = this.#pending.get(reply.id);
    if (!pending) {
      // A reply to a request that timed out (and was cancelled) is harmless: Dovecot's own
      // client ignores unknown ids the same way.
      this.#log.debug({ id: reply.id, reply: reply.kind }, 'dovecot reply for a request no longer waiting');
      return;
    }
    this.#pending.delete(reply.id);
    clearTimeout(pending.timer);
    if (reply.answer) this.#write(reply.answer);
    pending.resolve(reply.reply);
  }

  #fail(err: Error): void {
    if (this.#closedBy) return;
    this.#closedBy = err;
    this.#socket.destroy();
    for (const [, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.#pending.clear();
    for (const listener of this.#closeListeners.splice(0)) listener(err);
  }
}

/**
 * One connection opened at the first use and shared by the requests after it; when it ends
 * (Dovecot restarted, a protocol error), the next use opens another. A failed attempt is not
 * kept either: the next use tries again.
 */
export class SharedConnection<Handshake, Reply> {
  readonly #open: () => Promise<DovecotConnection<Handshake, Reply>>;
  readonly #log: Logger;
  #connection: Promise<DovecotConnection<Handshake, Reply>> | undefined;
  #closed = false;

  /** `open` connects and may check the handshake (rejecting closes nothing: it must close what it opened). */
  constructor(open: () => Promise<DovecotConnection<Handshake, Reply>>, log: Logger) {
    this.#open = open;
    this.#log = log;
  }

  /** The connection in use, or one being opened; requests that arrive during the handshake wait for it. */
  get(): Promise<DovecotConnection<Handshake, Reply>> {
    if (this.#closed) return Promise.reject(new Error('the dovecot source was closed'));
    if (this.#connection) return this.#connection;
    const opening = this.#open().then((connection) => {
      connection.onClose((err) => {
        if (this.#connection === opening) this.#connection = undefined;
        if (!this.#closed) this.#log.debug({ err: err.message }, 'dovecot: connection ended; the next request reconnects');
      });
      return connection;
    });
    this.#connection = opening;
    opening.catch(() => {
      if (this.#connection === opening) this.#connection = undefined;
    });
    return opening;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const pending = this.#connection;
    this.#connection = undefined;
    const connection = await pending?.catch(() => undefined);
    connection?.close(new Error('the dovecot source was closed'));
  }
}

/** Splits the socket's bytes into LF-terminated lines, refusing any longer than MAX_LINE_BYTES. */
class LineReader {
  onLine: ((line: string, utf8: boolean) => void) | undefined;
  onError: ((err: Error) => void) | undefined;
  #partial: Buffer[] = [];
  #partialBytes = 0;
  #stopped = false;

  constructor(socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
  }

  #onData(chunk: Buffer): void {
    let start = 0;
    while (!this.#stopped) {
      const lf = chunk.indexOf(0x0a, start);
      if (lf === -1) break;
      const piece = chunk.subarray(start, lf);
      const line = this.#partialBytes === 0 ? piece : Buffer.concat([...this.#partial, piece]);
      this.#partial = [];
      this.#partialBytes = 0;
      start = lf + 1;
      if (line.length > MAX_LINE_BYTES) return this.#stop(new DovecotProtocolError(`a line of ${line.length} bytes (at most ${MAX_LINE_BYTES})`));
      // Lines are UTF-8 text; invalid bytes are kept as U+FFFD and flagged, so only a reply
      // that names a user in them is refused, not the whole connection.
      this.onLine?.(line.toString('utf8'), isUtf8(line));
    }
    if (this.#stopped || start >= chunk.length) return;
    this.#partial.push(chunk.subarray(start));
    this.#partialBytes += chunk.length - start;
    if (this.#partialBytes > MAX_LINE_BYTES) this.#stop(new DovecotProtocolError(`a line longer than ${MAX_LINE_BYTES} bytes`));
  }

  #stop(err: Error): void {
    this.#stopped = true;
    this.#partial = [];
    this.onError?.(err);
  }
}
