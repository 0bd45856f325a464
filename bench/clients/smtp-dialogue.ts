/**
 * The client side of an SMTP session for the bench's own load generators (W5, W6): send a
 * line, await the (possibly multi-line) reply, upgrade to TLS after STARTTLS. Just enough
 * protocol for well-behaved sessions; any unexpected reply is an error that ends the session.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';

export interface Reply {
  readonly code: number;
  readonly text: string;
}

export class SmtpDialogue {
  /** The TCP socket, under TLS too: its inactivity timer is the one that bounds a session. */
  readonly #socket: net.Socket;
  #stream: Duplex;
  #buffer = '';
  #lines: string[] = [];
  #waiting: (() => void) | undefined;
  #failure: Error | undefined;
  readonly #onData = (chunk: Buffer) => {
    this.#buffer += chunk.toString('latin1');
    let i: number;
    while ((i = this.#buffer.indexOf('\r\n')) >= 0) {
      this.#lines.push(this.#buffer.slice(0, i));
      this.#buffer = this.#buffer.slice(i + 2);
    }
    this.#wake();
  };
  readonly #onEnd = () => this.#fail(new Error('connection closed by the server'));
  readonly #onError = (err: Error) => this.#fail(err);

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    this.#stream = socket;
    this.#attach(socket);
  }

  /** Connects and reads the greeting (220). */
  static async connect(port: number, timeoutMs: number): Promise<SmtpDialogue> {
    const socket = net.connect({ host: '127.0.0.1', port, noDelay: true });
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`no activity for ${timeoutMs} ms`)));
    const d = new SmtpDialogue(socket);
    await d.expect(220);
    return d;
  }

  /** Sends one command line (CRLF added) and returns the reply, which must have `code`. */
  async command(line: string, code: number): Promise<Reply> {
    this.#stream.write(line + '\r\n');
    return this.expect(code);
  }

  /** Writes raw bytes (a message body) without waiting for anything. */
  write(data: string | Buffer): void {
    this.#stream.write(data);
  }

  async expect(code: number): Promise<Reply> {
    const reply = await this.#reply();
    if (reply.code !== code) throw new Error(`expected ${code}, got "${reply.code} ${reply.text}"`);
    return reply;
  }

  /** STARTTLS, then the handshake on the same socket (a self-signed bench certificate). */
  async startTls(): Promise<void> {
    await this.command('STARTTLS', 220);
    const plain = this.#socket;
    this.#detach(plain);
    const secure = tls.connect({ socket: plain, servername: 'localhost', rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.#stream = secure;
    this.#attach(secure);
  }

  /** From now on the session may stay silent for as long as the server lets it. */
  disableTimeout(): void {
    this.#socket.setTimeout(0);
  }

  close(): void {
    this.#stream.destroy();
  }

  #attach(stream: Duplex): void {
    stream.on('data', this.#onData);
    stream.on('end', this.#onEnd);
    stream.on('error', this.#onError);
  }

  #detach(stream: Duplex): void {
    stream.off('data', this.#onData);
    stream.off('end', this.#onEnd);
    stream.off('error', this.#onError);
    // A socket handed to tls.connect must not be left without an error listener meanwhile.
    stream.on('error', () => undefined);
  }

  #fail(err: Error): void {
    this.#failure ??= err;
    this.#wake();
  }

  #wake(): void {
    const w = this.#waiting;
    this.#waiting = undefined;
    w?.();
  }

  /** RFC 5321 §4.2.1: "250-…" lines continue, "250 …" ends the reply. */
  async #reply(): Promise<Reply> {
    for (;;) {
      const end = this.#lines.findIndex((l) => l.length < 4 || l[3] === ' ');
      if (end >= 0) {
        const lines = this.#lines.splice(0, end + 1);
        const last = lines[lines.length - 1]!;
        return { code: Number(last.slice(0, 3)), text: lines.map((l) => l.slice(4)).join('\n') };
      }
      if (this.#failure) throw this.#failure;
      await new Promise<void>((resolve) => (this.#waiting = resolve));
    }
  }
}

/** A message of about `bytes` octets in 78-character lines (like smtp-source's), From: the sender. */
export function messageText(opts: { from: string; to: string; bytes: number; id: string }): string {
  const head =
    `From: <${opts.from}>\r\nTo: <${opts.to}>\r\nSubject: bench ${opts.id}\r\n` +
    `Message-ID: <${opts.id}@bench.test>\r\nDate: ${new Date().toUTCString()}\r\n\r\n`;
  const line = 'X'.repeat(78) + '\r\n';
  const body = line.repeat(Math.max(1, Math.ceil((opts.bytes - head.length) / line.length)));
  return head + body;
}
