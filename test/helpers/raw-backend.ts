/**
 * A scripted backend on a raw socket, for what a real SMTP library won't do on purpose: refuse
 * the DATA command itself, die in the middle of a message, never answer the final dot, or end
 * DATA on the sloppy terminators a vulnerable server accepts (SMTP smuggling). It records every
 * byte it receives, so a test can check exactly what smtpgate put on the wire.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';

/**
 * End-of-data sequences. `strict` is RFC 5321 §4.1.1.4. `lenient` adds what old Postfix,
 * Exim and Sendmail accepted before the smuggling fixes (SEC Consult, Dec 2023): with one of
 * these, a bare CR or LF in a relayed message ends it early and what follows is read as
 * commands, i.e. a second, smuggled message.
 */
const STRICT_TERMINATORS = ['\r\n.\r\n'];
const LENIENT_TERMINATORS = ['\r\n.\r\n', '\n.\n', '\n.\r\n', '\r.\r', '\r.\n'];

export interface RawBackendOptions {
  endOfData?: 'strict' | 'lenient';
  /** Reply lines, without CRLF ("553 5.7.1 Sender refused"); the defaults accept everything. */
  greeting?: string;
  ehlo?: string[];
  /** The reply line to an EHLO naming this host, instead of `ehlo` (a backend refusing a client's HELO name). */
  ehloRefused?: { name: string; reply: string };
  /** The reply to XCLIENT (say, 220 2.0.0 to accept it; XCLIENT must also be in `ehlo`). */
  xclient?: string;
  mail?: string;
  rcpt?: string;
  data?: string;
  /** The reply to the end of data; 'silent' never answers. */
  final?: string | 'silent';
  /** Wait this long before answering DATA (a slow backend). */
  dataReplyDelayMs?: number;
  /** Wait this long before answering RCPT. */
  rcptReplyDelayMs?: number;
  /** Drop the connection once this many bytes of message data have arrived (a backend dying mid-DATA). */
  dropAfterDataBytes?: number;
}

export interface RawMessage {
  readonly from: string;
  readonly to: string[];
  /** The message as it was on the wire (still dot-stuffed), up to and including the line end before the terminator. */
  readonly data: Buffer;
  readonly terminator: string;
}

export class RawConnection extends EventEmitter {
  readonly #chunks: Buffer[] = [];
  /** Command lines received, as the (lenient) parser split them. */
  readonly commands: string[] = [];
  /** Message-data bytes received after a 354 (all transactions of this connection). */
  dataBytes = 0;
  /** True once an end-of-data sequence was seen, whatever the reply to it. */
  sawEndOfData = false;
  isClosed = false;
  readonly closed: Promise<void>;

  constructor(readonly socket: net.Socket) {
    super();
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.once('close', () => {
      this.isClosed = true;
      this.emit('change');
    });
  }

  /** Every byte received on this connection, commands and data alike. */
  get bytes(): Buffer {
    return Buffer.concat(this.#chunks);
  }

  record(chunk: Buffer): void {
    this.#chunks.push(chunk);
  }

  /** Resolves once `predicate` holds; rejects if the connection closes before it does. */
  until(predicate: (c: RawConnection) => boolean, what: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (predicate(this)) {
          this.off('change', check);
          resolve();
        } else if (this.isClosed) {
          this.off('change', check);
          reject(new Error(`backend connection closed before: ${what}`));
        }
      };
      this.on('change', check);
      check();
    });
  }
}

export interface RawBackend {
  readonly port: number;
  readonly connections: RawConnection[];
  /** Messages the backend accepted (ended and answered with 2xx), across all connections. */
  readonly messages: RawMessage[];
  /** The i-th connection (0-based), once it has been accepted. */
  connection(i: number): Promise<RawConnection>;
  close(): Promise<void>;
}

const DEFAULT_EHLO = ['raw.test', 'PIPELINING', '8BITMIME'];

function multiline(code: number, lines: string[]): string {
  return lines.map((l, i) => `${code}${i === lines.length - 1 ? ' ' : '-'}${l}\r\n`).join('');
}

export async function startRawBackend(opts: RawBackendOptions = {}): Promise<RawBackend> {
  const terminators = (opts.endOfData === 'lenient' ? LENIENT_TERMINATORS : STRICT_TERMINATORS).map((t) => Buffer.from(t, 'latin1'));
  const connections: RawConnection[] = [];
  const messages: RawMessage[] = [];
  const events = new EventEmitter();

  const server = net.createServer((socket) => {
    const conn = new RawConnection(socket);
    connections.push(conn);
    events.emit('connection');
    socket.on('error', () => {});

    let mode: 'command' | 'data' = 'command';
    let pending = Buffer.alloc(0);
    let from = '';
    let to: string[] = [];
    const send = (text: string) => {
      if (!socket.destroyed) socket.write(text);
    };

    const command = (line: string) => {
      conn.commands.push(line);
      const verb = (/^\S+/.exec(line)?.[0] ?? '').toUpperCase();
      switch (verb) {
        case 'EHLO':
          if (opts.ehloRefused && line.slice(5).trim() === opts.ehloRefused.name) return send(opts.ehloRefused.reply + '\r\n');
          return send(multiline(250, opts.ehlo ?? DEFAULT_EHLO));
        case 'XCLIENT':
          return send((opts.xclient ?? '550 5.7.0 XCLIENT not allowed') + '\r\n');
        case 'HELO':
          return send('250 raw.test\r\n');
        case 'MAIL': {
          const reply = opts.mail ?? '250 2.1.0 Ok';
          if (reply.startsWith('2')) {
            from = /<([^>]*)>/.exec(line)?.[1] ?? '';
            to = [];
          }
          return send(reply + '\r\n');
        }
        case 'RCPT': {
          const reply = opts.rcpt ?? '250 2.1.5 Ok';
          if (reply.startsWith('2')) to.push(/<([^>]*)>/.exec(line)?.[1] ?? '');
          if (opts.rcptReplyDelayMs) {
            setTimeout(() => send(reply + '\r\n'), opts.rcptReplyDelayMs);
            return;
          }
          return send(reply + '\r\n');
        }
        case 'DATA': {
          const reply = opts.data ?? '354 End data with <CR><LF>.<CR><LF>';
          // The virtual CRLF lets a "." on the very first line end the data, as it does on the wire.
          if (reply.startsWith('354')) {
            mode = 'data';
            pending = Buffer.concat([Buffer.from('\r\n'), pending]);
          }
          if (opts.dataReplyDelayMs) {
            setTimeout(() => send(reply + '\r\n'), opts.dataReplyDelayMs);
            return;
          }
          return send(reply + '\r\n');
        }
        case 'RSET':
          from = '';
          to = [];
          return send('250 2.0.0 Ok\r\n');
        case 'NOOP':
          return send('250 2.0.0 Ok\r\n');
        case 'QUIT':
          send('221 2.0.0 Bye\r\n');
          socket.end();
          return;
        case '':
          return;
        default:
          return send('502 5.5.2 Error: command not recognized\r\n');
      }
    };

    /** Earliest end-of-data sequence in `pending` (which starts with the virtual CRLF). */
    const findEnd = (): { at: number; terminator: Buffer } | undefined => {
      let best: { at: number; terminator: Buffer } | undefined;
      for (const t of terminators) {
        const at = pending.indexOf(t);
        if (at >= 0 && (!best || at < best.at)) best = { at, terminator: t };
      }
      return best;
    };

    const consume = () => {
      for (;;) {
        if (socket.destroyed) return;
        if (mode === 'command') {
          // Lenient like the servers that smuggling exploits: LF alone ends a command line.
          const lf = pending.indexOf(0x0a);
          if (lf < 0) return;
          const line = pending.toString('latin1', 0, lf).replace(/\r$/, '').trim();
          pending = pending.subarray(lf + 1);
          command(line);
          continue;
        }
        const end = findEnd();
        if (!end) return;
        const dot = end.terminator.indexOf(0x2e);
        const data = Buffer.from(pending.subarray(2, end.at + dot));
        pending = pending.subarray(end.at + end.terminator.length);
        mode = 'command';
        conn.sawEndOfData = true;
        conn.emit('change');
        const final = opts.final ?? `250 2.0.0 Ok: queued as R${messages.length + 1}`;
        if (final === 'silent') continue;
        if (final.startsWith('2')) messages.push({ from, to, data, terminator: end.terminator.toString('latin1') });
        from = '';
        to = [];
        send(final + '\r\n');
      }
    };

    socket.on('data', (chunk: Buffer) => {
      conn.record(chunk);
      if (mode === 'data') {
        conn.dataBytes += chunk.length;
        if (opts.dropAfterDataBytes !== undefined && conn.dataBytes >= opts.dropAfterDataBytes) {
          conn.emit('change');
          socket.destroy();
          return;
        }
      }
      pending = Buffer.concat([pending, chunk]);
      consume();
      conn.emit('change');
    });

    send((opts.greeting ?? '220 raw.test ESMTP') + '\r\n');
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as net.AddressInfo).port;

  return {
    port,
    connections,
    messages,
    connection(i: number) {
      return new Promise((resolve) => {
        const check = () => {
          const c = connections[i];
          if (c) {
            events.off('connection', check);
            resolve(c);
          }
        };
        events.on('connection', check);
        check();
      });
    },
    close() {
      for (const c of connections) c.socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * True if `buf` holds a CR not followed by LF, or an LF not preceded by CR: the bytes that turn
 * into a smuggled end-of-data on a lenient server. smtpgate must never send one to a backend.
 */
export function hasBareCrOrLf(buf: Buffer): boolean {
  for (let i = buf.indexOf(0x0d); i !== -1; i = buf.indexOf(0x0d, i + 1)) {
    if (buf[i + 1] !== 0x0a) return true;
  }
  for (let i = buf.indexOf(0x0a); i !== -1; i = buf.indexOf(0x0a, i + 1)) {
    if (i === 0 || buf[i - 1] !== 0x0d) return true;
  }
  return false;
}
