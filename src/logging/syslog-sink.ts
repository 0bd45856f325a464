/**
 * Log lines to a syslog server (a SIEM): RFC 5424 messages over UDP (RFC 5426), TCP (RFC 6587
 * octet counting) or TLS (RFC 5425). Written here rather than with pino-syslog + pino-socket,
 * which were tried (pino-syslog 4.0.0, pino-socket 8.0.0) and fall short:
 * - pino-socket's TLS takes no CA, client certificate or server name (only `noverify`), so a
 *   server with a private CA can only be reached unverified;
 * - no octet counting: pino-syslog ends a message with an optional newline, and pino-socket's
 *   `onBeforeDataWrite` is a function, which can't cross into the transport's worker thread;
 * - buffering is unbounded: pino-socket ignores the socket's backpressure, and thread-stream
 *   queues whatever the worker hasn't taken; with the server down, 4 s of busy logging held
 *   500 MB, and the exit then threw "_flushSync took too long (10s)";
 * - pino-syslog reads numeric levels only: with level names every PRI is "<NaN>"; its
 *   structured data is one fixed string, and UDP is IPv4 only.
 *
 * So: a sink pino writes to (through pino.multistream, next to stdout or the file), that never
 * blocks or throws. While the server is unreachable or slow, messages wait in a queue of at
 * most `bufferBytes`; beyond that they are dropped and counted (onDrop). The connection is
 * retried with a backoff up to 30 s. UDP is fire and forget, as RFC 5426 is.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import os from 'node:os';
import tls from 'node:tls';
import { pino } from 'pino';
import { octetCounted, printUsAscii, syslogMessage, type SyslogIdentity } from './rfc5424.js';

export interface SyslogSinkOptions {
  readonly transport: 'udp' | 'tcp' | 'tls';
  readonly host: string;
  readonly port: number;
  readonly facility: number;
  readonly appName: string;
  /** Bytes of messages held while the server can't take them; more are dropped. */
  readonly bufferBytes: number;
  /** TLS: the CA bundle that signed the server's certificate (else the system's CAs). */
  readonly ca?: Buffer;
  /** TLS: a client certificate and key, for a server that asks for one. */
  readonly cert?: Buffer;
  readonly key?: Buffer;
  /** TLS: the name the server's certificate must carry (default: host). */
  readonly tlsServerName?: string;
}

export interface SyslogSinkEvents {
  /** The server can't be reached: the first failure of an outage (not each retry). */
  onDown?(err: Error, target: string): void;
  /** Connected again; `dropped` lines were lost during the outage. */
  onUp?(dropped: number, target: string): void;
  /** One line dropped. */
  onDrop?(): void;
}

const CONNECT_TIMEOUT_MS = 10_000;
const RETRY_FIRST_MS = 200;
const RETRY_MAX_MS = 30_000;

export class SyslogSink {
  // pino sets lastLevel (the number) before each write: the severity without parsing.
  readonly [pino.symbols.needsMetadataGsym] = true;
  lastLevel = 30;

  readonly #o: SyslogSinkOptions;
  readonly #who: SyslogIdentity;
  readonly #events: SyslogSinkEvents;
  readonly target: string;
  #state: 'connecting' | 'up' | 'down' | 'closed' = 'down';
  #socket: net.Socket | undefined;
  #udp: dgram.Socket | undefined;
  /** Stream transports: the socket said "enough" (write() returned false) until 'drain'. */
  #blocked = false;
  readonly #queue: Buffer[] = [];
  #queued = 0;
  /** UDP: bytes handed to send() whose callback hasn't come yet. */
  #inFlight = 0;
  #dropped = 0;
  #droppedAtDown = 0;
  #outage = false;
  #retryMs = RETRY_FIRST_MS;
  #retry: NodeJS.Timeout | undefined;
  #lastError: Error | undefined;

  constructor(options: SyslogSinkOptions, events: SyslogSinkEvents = {}) {
    this.#o = options;
    this.#events = events;
    this.#who = { facility: options.facility, appName: printUsAscii(options.appName, 48), hostname: printUsAscii(os.hostname(), 255), procId: process.pid };
    this.target = `${options.transport}://${net.isIPv6(options.host) ? `[${options.host}]` : options.host}:${options.port}`;
    this.#connect();
  }

  /** Lines dropped so far (buffer full, or a datagram the system refused). */
  get dropped(): number {
    return this.#dropped;
  }

  write(line: string): void {
    if (this.#state === 'closed') return;
    const message = syslogMessage(line, this.lastLevel, this.#who);
    const bytes = this.#o.transport === 'udp' ? Buffer.from(message, 'utf8') : octetCounted(message);
    if (this.#state === 'up' && !this.#blocked && this.#queue.length === 0) return this.#send(bytes);
    if (this.#queued + bytes.length > this.#o.bufferBytes) return this.#drop();
    this.#queue.push(bytes);
    this.#queued += bytes.length;
  }

  /**
   * Sends what is queued if the server takes it within `ms`, then closes. A SIGTERM's last
   * lines ("stopping") reach the server when it is there; an unreachable one delays nothing
   * beyond `ms`.
   */
  async end(ms: number): Promise<void> {
    if (this.#state === 'closed') return;
    const sent = new Promise<void>((resolve) => {
      const check = () => {
        if (this.#state === 'closed' || (this.#queue.length === 0 && !this.#blocked && this.#inFlight === 0)) return resolve();
        setTimeout(check, 20).unref();
      };
      check();
    });
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([sent, new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
    clearTimeout(timer);
    this.#state = 'closed';
    clearTimeout(this.#retry);
    this.#socket?.end();
    this.#socket?.destroySoon();
    this.#udp?.close();
  }

  #drop(): void {
    this.#dropped++;
    this.#events.onDrop?.();
  }

  /** Hands one message to the socket; only while up. */
  #send(bytes: Buffer): void {
    if (this.#udp) {
      if (this.#inFlight + bytes.length > this.#o.bufferBytes) return this.#drop();
      this.#inFlight += bytes.length;
      this.#udp.send(bytes, (err) => {
        this.#inFlight -= bytes.length;
        // EMSGSIZE (over 64 KiB), ENOBUFS: this one is lost.
        if (err) this.#drop();
      });
      return;
    }
    this.#blocked = !this.#socket!.write(bytes);
  }

  #connect(): void {
    if (this.#state === 'closed') return;
    this.#state = 'connecting';
    const { host, port } = this.#o;
    if (this.#o.transport === 'udp') {
      const udp = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
      this.#udp = udp;
      udp.on('error', (err) => {
        // After connect, errors are ICMP "port unreachable" for datagrams already sent: UDP
        // can't know more. Before it, the name didn't resolve: try again later.
        if (this.#state === 'connecting') {
          this.#udp = undefined;
          udp.close();
          this.#failed(err);
        }
      });
      udp.connect(port, host, () => this.#connected());
      udp.unref();
      return;
    }
    const socket =
      this.#o.transport === 'tls'
        ? tls.connect({
            host,
            port,
            minVersion: 'TLSv1.2',
            ...(this.#o.ca ? { ca: this.#o.ca } : {}),
            ...(this.#o.cert ? { cert: this.#o.cert, key: this.#o.key } : {}),
            ...((this.#o.tlsServerName ?? (net.isIP(host) ? undefined : host)) ? { servername: this.#o.tlsServerName ?? host } : {}),
          })
        : net.connect({ host, port });
    this.#socket = socket;
    socket.setTimeout(CONNECT_TIMEOUT_MS, () => socket.destroy(new Error(`no connection within ${CONNECT_TIMEOUT_MS / 1000} s`)));
    socket.once(this.#o.transport === 'tls' ? 'secureConnect' : 'connect', () => {
      socket.setTimeout(0);
      // A server that vanished without a FIN shows up on the next write or within minutes.
      socket.setKeepAlive(true, 60_000);
      this.#connected();
    });
    socket.on('drain', () => {
      this.#blocked = false;
      this.#flush();
    });
    // A syslog server sends nothing; anything it does send is discarded.
    socket.resume();
    socket.on('error', (err) => (this.#lastError = err));
    socket.on('close', () => {
      if (this.#socket !== socket || this.#state === 'closed') return;
      this.#socket = undefined;
      this.#blocked = false;
      this.#failed(this.#lastError ?? new Error('the server closed the connection'));
    });
    socket.unref();
  }

  #connected(): void {
    if (this.#state === 'closed') return;
    this.#state = 'up';
    this.#retryMs = RETRY_FIRST_MS;
    this.#lastError = undefined;
    if (this.#outage) {
      this.#outage = false;
      this.#events.onUp?.(this.#dropped - this.#droppedAtDown, this.target);
    }
    this.#flush();
  }

  #failed(err: Error): void {
    if (this.#state === 'closed') return;
    this.#state = 'down';
    if (!this.#outage) {
      this.#outage = true;
      this.#droppedAtDown = this.#dropped;
      this.#events.onDown?.(err, this.target);
    }
    this.#retry = setTimeout(() => this.#connect(), this.#retryMs);
    this.#retry.unref();
    this.#retryMs = Math.min(this.#retryMs * 2, RETRY_MAX_MS);
  }

  #flush(): void {
    while (this.#queue.length > 0 && this.#state === 'up' && !this.#blocked) {
      const next = this.#queue.shift()!;
      this.#queued -= next.length;
      this.#send(next);
    }
  }
}
