/**
 * A deliberately dumb SMTP client for protocol tests: it writes exactly the bytes a test
 * gives it and hands back each reply, so tests can send what a well-behaved client wouldn't.
 */
import net from 'node:net';
import tls from 'node:tls';

export interface Reply {
  readonly code: number;
  readonly lines: string[];
  /** The whole reply as received, e.g. "250-a\r\n250 b". */
  readonly raw: string;
}

export class SmtpTalk {
  #socket: net.Socket | tls.TLSSocket;
  #buffer = '';
  #replies: Reply[] = [];
  #waiters: Array<(r: Reply | undefined) => void> = [];
  #ended = false;
  readonly closed: Promise<void>;
  #onClosed!: () => void;

  private constructor(socket: net.Socket | tls.TLSSocket) {
    this.#socket = socket;
    this.closed = new Promise((resolve) => (this.#onClosed = resolve));
    this.#attach(socket);
  }

  /**
   * `localAddress` binds the client's end, e.g. to 127.0.0.2, to tell it apart from the proxy's own 127.0.0.1.
   * `tls` adds client TLS options (versions, ciphers, servername, a client certificate) for implicit TLS.
   * `preamble` is written first, before any TLS handshake, as a load balancer writes a PROXY protocol header.
   */
  static async connect(port: number, opts: { implicitTls?: boolean; localAddress?: string; tls?: tls.ConnectionOptions; preamble?: Buffer } = {}): Promise<SmtpTalk> {
    const local = opts.localAddress ? { localAddress: opts.localAddress } : {};
    const connected = (socket: net.Socket, event: 'connect' | 'secureConnect') =>
      new Promise<void>((resolve, reject) => {
        socket.once(event, () => resolve());
        socket.once('error', reject);
      });
    let plain: net.Socket | undefined;
    if (opts.preamble) {
      plain = net.connect({ host: '127.0.0.1', port, ...local });
      await connected(plain, 'connect');
      plain.write(opts.preamble);
      if (!opts.implicitTls) return new SmtpTalk(plain);
    }
    const socket = opts.implicitTls
      ? tls.connect({ ...(plain ? { socket: plain } : { host: '127.0.0.1', port, ...local }), rejectUnauthorized: false, servername: 'localhost', ...opts.tls })
      : net.connect({ host: '127.0.0.1', port, ...local });
    await connected(socket, opts.implicitTls ? 'secureConnect' : 'connect');
    return new SmtpTalk(socket);
  }

  /** The client end's port: what the gate logs as the client's `port`. */
  get localPort(): number | undefined {
    return this.#socket.localPort;
  }

  get secure(): boolean {
    return this.#socket instanceof tls.TLSSocket;
  }

  get tlsSocket(): tls.TLSSocket | undefined {
    return this.#socket instanceof tls.TLSSocket ? this.#socket : undefined;
  }

  #attach(socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk.toString('latin1')));
    socket.on('error', () => {});
    socket.on('close', () => {
      this.#ended = true;
      for (const w of this.#waiters.splice(0)) w(undefined);
      this.#onClosed();
    });
  }

  #onData(text: string) {
    this.#buffer += text;
    const lines: string[] = [];
    for (;;) {
      const i = this.#buffer.indexOf('\r\n');
      if (i < 0) break;
      lines.push(this.#buffer.slice(0, i));
      this.#buffer = this.#buffer.slice(i + 2);
      const last = lines[lines.length - 1]!;
      if (/^\d{3}( |$)/.test(last)) {
        const reply = { code: Number(last.slice(0, 3)), lines: lines.map((l) => l.slice(4)), raw: lines.join('\r\n') };
        lines.length = 0;
        const w = this.#waiters.shift();
        if (w) w(reply);
        else this.#replies.push(reply);
      }
    }
    if (lines.length) this.#buffer = lines.map((l) => l + '\r\n').join('') + this.#buffer;
  }

  /** The next reply; rejects if the connection closes first. */
  read(): Promise<Reply> {
    const queued = this.#replies.shift();
    if (queued) return Promise.resolve(queued);
    if (this.#ended) return Promise.reject(new Error('connection closed'));
    return new Promise((resolve, reject) => this.#waiters.push((r) => (r ? resolve(r) : reject(new Error('connection closed')))));
  }

  write(data: string | Buffer): void {
    this.#socket.write(data);
  }

  async cmd(line: string): Promise<Reply> {
    this.write(line + '\r\n');
    return this.read();
  }

  /** STARTTLS and the handshake; the caller sends the new EHLO. `options` as for `handshake`. */
  async starttls(options: tls.ConnectionOptions = {}): Promise<Reply> {
    const reply = await this.cmd('STARTTLS');
    if (reply.code !== 220) return reply;
    await this.handshake(options);
    return reply;
  }

  /**
   * The client's TLS handshake on the plain connection, for a test that sent STARTTLS itself
   * and read the 220. Rejects when the handshake fails. `options` adds client TLS options
   * (versions, ciphers, servername, a client certificate).
   */
  async handshake(options: tls.ConnectionOptions = {}): Promise<void> {
    const plain = this.#socket;
    plain.removeAllListeners('data');
    const secure = tls.connect({ socket: plain, rejectUnauthorized: false, servername: 'localhost', ...options });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    this.#socket = secure;
    this.#attach(secure);
  }

  async authPlain(user: string, pass: string): Promise<Reply> {
    return this.cmd(`AUTH PLAIN ${Buffer.from(`\0${user}\0${pass}`).toString('base64')}`);
  }

  /** The write side's backpressure, for tests that stream large messages. */
  async writeAll(data: Buffer): Promise<void> {
    const socket = this.#socket;
    if (socket.write(data) || socket.destroyed) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        socket.off('drain', done);
        socket.off('close', done);
        resolve();
      };
      socket.once('drain', done);
      socket.once('close', done);
    });
  }

  close(): void {
    this.#socket.destroy();
  }

  /** Drops the connection with a TCP RST, as a crashing client or a middlebox would (plain TCP only). */
  reset(): void {
    const s = this.#socket;
    if (s instanceof tls.TLSSocket) throw new Error('reset() needs a plain TCP connection');
    s.resetAndDestroy();
  }
}
