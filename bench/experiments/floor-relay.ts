/**
 * EXPERIMENT, a reference point (docs/benchmarks.md, "Where the time goes"): the least a Node
 * process can do to relay SMTP lock-step. Command lines go to the backend as they come, replies
 * back as they come, the message body is passed through after the 354. No parsing beyond
 * lines, no checks, no promises, no logging: not a proxy anyone should run, only what the
 * sockets cost.
 *
 *   node bench/dist/experiments/floor-relay.js LISTEN_PORT BACKEND_PORT [smtp-server]
 *
 * With a third argument `smtp-server` it runs smtp-server (as smtpgate configures it: no
 * AUTH, no STARTTLS, TCP_NODELAY) in front of smtpgate's own BackendConnection and BodyEncoder
 * instead, with smtpgate's WriteBatcher on both legs and the same backend handshake (EHLO,
 * XCLIENT): the library floor, before any of smtpgate's checks, limits, policy, logging or
 * metrics. Drive either with smtp-source and read its CPU from /proc/PID/stat.
 */
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { SMTPServer } from 'smtp-server';

/** The repository root: bench/dist/experiments → ../../.. */
const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

// smtpgate's modules are loaded from its build (npm run build) at run time, so only the
// shapes used here are declared.
interface Reply {
  code: number;
  text: string;
}
interface Writer {
  write(chunk: Buffer): boolean;
  finish(): Promise<Reply>;
}
interface Backend {
  command(line: string): Promise<Reply>;
  beginData(): Writer;
  quit(): Promise<void>;
}
interface Encoder {
  encode(chunk: Buffer): Buffer[];
  end(): Buffer[];
}
interface Batcher {
  hold(socket: unknown): void;
}
const load = async (file: string) => import(pathToFileURL(path.join(REPO_ROOT, 'dist', file)).href) as Promise<Record<string, unknown>>;

const [listenPort, backendPort, mode] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
process.on('SIGTERM', () => process.exit(0));

if (mode === 'smtp-server') {
  const { BackendConnection } = (await load('relay/smtp-client.js')) as { BackendConnection: { connect(opts: object): Promise<Backend> } };
  const { BodyEncoder } = (await load('relay/data-encoder.js')) as { BodyEncoder: new (opts: object) => Encoder };
  const { WriteBatcher } = (await load('transport/write-batcher.js')) as { WriteBatcher: new () => Batcher };
  const timeouts = { connectMs: 5000, greetingMs: 5000, commandMs: 5000, dataIdleMs: 5000, finalReplyMs: 5000 };
  const writes = new WriteBatcher();
  const backends = new Map<string, Backend>();
  const open = async (address: string, port: number): Promise<Backend> => {
    const c = await BackendConnection.connect({ host: '127.0.0.1', port: backendPort, tls: 'none', heloName: 'floor.test', timeouts, writes });
    // smtpgate's identity handshake; Postfix answers 220 and wants a new EHLO, smtp-sink 250.
    const reply = await c.command(`XCLIENT NAME=[UNAVAILABLE] PORT=${port} PROTO=SMTP ADDR=${address}`);
    if (reply.code === 220) await c.command('EHLO floor.test');
    return c;
  };
  const server = new SMTPServer({
    authOptional: true,
    noDelay: true,
    disableReverseLookup: true,
    logger: false,
    disabledCommands: ['STARTTLS', 'AUTH'],
    onConnect(session, cb) {
      open(session.remoteAddress, session.remotePort).then((c) => {
        backends.set(session.id, c);
        cb();
      }, cb);
    },
    onMailFrom(address, session, cb) {
      backends.get(session.id)!.command(`MAIL FROM:<${address.address}>`).then((r) => cb(r.code === 250 ? null : new Error(r.text)), cb);
    },
    onRcptTo(address, session, cb) {
      backends.get(session.id)!.command(`RCPT TO:<${address.address}>`).then((r) => cb(r.code === 250 ? null : new Error(r.text)), cb);
    },
    onData(stream, session, cb) {
      const backend = backends.get(session.id)!;
      void backend.command('DATA').then(() => {
        const writer = backend.beginData();
        const encoder = new BodyEncoder({ mode: 'reject', maxLineOctets: 1000 });
        stream.on('data', (chunk: Buffer) => encoder.encode(chunk).forEach((p) => writer.write(p)));
        stream.on('end', () => {
          encoder.end().forEach((p) => writer.write(p));
          writer.finish().then((r) => cb(null, r.text), cb);
        });
      });
    },
    onClose(session) {
      void backends.get(session.id)?.quit();
      backends.delete(session.id);
    },
  });
  // The client leg's replies are held to the end of the turn, as smtpgate's command guard does.
  const connections = server.connections as Set<{ _socket: unknown; send: (...args: unknown[]) => void }>;
  const add = connections.add.bind(connections);
  connections.add = (conn) => {
    const send = conn.send.bind(conn);
    conn.send = (...args: unknown[]) => {
      writes.hold(conn._socket);
      send(...args);
    };
    return add(conn);
  };
  server.listen(listenPort, '127.0.0.1');
} else {
  net
    .createServer({ noDelay: true }, (client) => {
      const backend = net.connect({ port: backendPort, host: '127.0.0.1', noDelay: true });
      let inData = false;
      let pending = '';
      client.on('data', (chunk: Buffer) => {
        if (inData) {
          backend.write(chunk);
          if (chunk.toString('latin1').endsWith('\r\n.\r\n')) inData = false;
          return;
        }
        pending += chunk.toString('latin1');
        for (let i = pending.indexOf('\r\n'); i >= 0; i = pending.indexOf('\r\n')) {
          backend.write(pending.slice(0, i + 2));
          pending = pending.slice(i + 2);
        }
      });
      let replies = '';
      backend.on('data', (chunk: Buffer) => {
        replies += chunk.toString('latin1');
        for (let i = replies.indexOf('\r\n'); i >= 0; i = replies.indexOf('\r\n')) {
          const line = replies.slice(0, i + 2);
          replies = replies.slice(i + 2);
          if (line.startsWith('354')) inData = true;
          client.write(line);
        }
      });
      const both = () => {
        client.destroy();
        backend.destroy();
      };
      for (const s of [client, backend]) {
        s.on('error', both);
        s.on('close', both);
      }
    })
    .listen(listenPort, '127.0.0.1');
}
