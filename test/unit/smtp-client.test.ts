/**
 * The backend-leg SMTP client, over real sockets: an in-process smtp-server where a real
 * SMTP server is the point, and a raw net server scripting exact bytes where the test is
 * about framing, timing or misbehaviour.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { generate } from 'selfsigned';
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import {
  BackendConnection,
  BackendError,
  type BackendClientOptions,
  type BackendTimeouts,
  type DataWriter,
  type SmtpReply,
} from '../../src/relay/smtp-client.js';
import { CapabilityCache } from '../../src/relay/ehlo-capabilities.js';

const HELO = 'gate.test';

const TIMEOUTS: BackendTimeouts = {
  connectMs: 2000,
  greetingMs: 2000,
  commandMs: 2000,
  dataIdleMs: 2000,
  finalReplyMs: 5000,
};

let pem: { key: string; cert: string };

beforeAll(async () => {
  // commonName "localhost" makes selfsigned add SANs for both localhost and 127.0.0.1.
  const generated = await generate([{ name: 'commonName', value: 'localhost' }], {
    keySize: 2048,
    algorithm: 'sha256',
  });
  pem = { key: generated.private, cert: generated.cert };
});

// ---- resource tracking: everything opened by a test is closed after it ---------------------

const connections: BackendConnection[] = [];
const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const conn of connections.splice(0)) conn.abort();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

afterAll(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

async function connect(port: number, overrides: Partial<BackendClientOptions> = {}): Promise<BackendConnection> {
  const conn = await BackendConnection.connect({
    host: '127.0.0.1',
    port,
    tls: 'none',
    heloName: HELO,
    timeouts: TIMEOUTS,
    ...overrides,
  });
  connections.push(conn);
  return conn;
}

/** Runs `promise`, expecting a BackendError; returns it. */
async function backendError(promise: Promise<unknown>): Promise<BackendError> {
  const err = await promise.then(
    () => {
      throw new Error('expected a BackendError, the promise resolved');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BackendError);
  return err as BackendError;
}

// ---- an in-process smtp-server ------------------------------------------------------------

async function startSmtpServer(options: SMTPServerOptions): Promise<{ server: SMTPServer; port: number }> {
  const server = new SMTPServer({
    key: pem.key,
    cert: pem.cert,
    disableReverseLookup: true,
    authOptional: true,
    logger: false,
    ...options,
  });
  server.on('error', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const address = server.server.address() as net.AddressInfo;
  return { server, port: address.port };
}

// ---- a scripted raw server -----------------------------------------------------------------

interface ScriptedConn {
  socket: net.Socket;
  /** Every byte received, in order. */
  raw(): Buffer;
  /** Received command lines (CRLF-split) while not in DATA mode. */
  lines: string[];
  /** Set by a script after it answered 354: bytes are recorded but not split into lines. */
  inData: boolean;
  write(text: string): void;
  closed: Promise<void>;
}

type Script = {
  greeting?: string;
  onLine?: (line: string, conn: ScriptedConn) => void;
  onData?: (chunk: Buffer, conn: ScriptedConn) => void;
  onConnection?: (conn: ScriptedConn) => void;
};

async function startScripted(script: Script): Promise<{ port: number; connection: Promise<ScriptedConn> }> {
  const sockets = new Set<net.Socket>();
  let first!: (conn: ScriptedConn) => void;
  const connection = new Promise<ScriptedConn>((resolve) => {
    first = resolve;
  });
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    socket.on('error', () => undefined);
    const chunks: Buffer[] = [];
    let pending = '';
    const conn: ScriptedConn = {
      socket,
      raw: () => Buffer.concat(chunks),
      lines: [],
      inData: false,
      write: (text) => {
        if (!socket.destroyed) socket.write(text);
      },
      closed: once(socket, 'close').then(() => undefined),
    };
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      script.onData?.(chunk, conn);
      if (conn.inData) return;
      pending += chunk.toString('latin1');
      let idx: number;
      while (!conn.inData && (idx = pending.indexOf('\r\n')) >= 0) {
        const line = pending.slice(0, idx);
        pending = pending.slice(idx + 2);
        conn.lines.push(line);
        script.onLine?.(line, conn);
      }
    });
    first(conn);
    script.onConnection?.(conn);
    if (script.greeting !== undefined) conn.write(script.greeting);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { port: (server.address() as net.AddressInfo).port, connection };
}

/** A scripted server speaking just enough SMTP: greeting, EHLO with `caps`, 250 to the rest. */
function basicScript(caps: string[], extra?: (line: string, conn: ScriptedConn) => boolean): Script {
  return {
    greeting: '220 backend.test ESMTP\r\n',
    onLine(line, conn) {
      if (extra?.(line, conn)) return;
      if (/^EHLO /i.test(line)) {
        const all = ['backend.test', ...caps];
        conn.write(all.map((c, i) => `250${i === all.length - 1 ? ' ' : '-'}${c}\r\n`).join(''));
      } else if (line === 'QUIT') {
        conn.write('221 2.0.0 bye\r\n');
        conn.socket.end();
      } else {
        conn.write('250 2.0.0 ok\r\n');
      }
    },
  };
}

function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void; reject: (err: unknown) => void } {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

// ---- tests ---------------------------------------------------------------------------------

describe('greeting and EHLO', () => {
  it('parses the greeting and EHLO capabilities from smtp-server', async () => {
    const { port } = await startSmtpServer({
      name: 'backend.test',
      size: 10240000,
      authMethods: ['PLAIN', 'LOGIN'],
      allowInsecureAuth: true,
      disabledCommands: ['STARTTLS'],
    });
    const conn = await connect(port);
    expect(conn.greeting.code).toBe(220);
    expect(conn.greeting.text).toContain('backend.test');
    expect(conn.capabilities.get('SIZE')).toBe('10240000');
    expect(conn.capabilities.get('AUTH')).toBe('PLAIN LOGIN');
    expect(conn.capabilities.get('PIPELINING')).toBe('');
    expect(conn.hasCapability('size')).toBe(true);
    expect(conn.hasCapability('STARTTLS')).toBe(false);
    expect(conn.secure).toBe(false);
    expect(conn.closed).toBe(false);
  });

  it('upper-cases keywords, accepts the old AUTH= spelling and strips the enhanced code from text', async () => {
    const { port } = await startScripted({
      greeting: '220-backend.test ESMTP first line\r\n220 second line\r\n',
      onLine(line, conn) {
        if (line.startsWith('EHLO ')) {
          conn.write('250-backend.test hello\r\n250-size 1000\r\n250-AUTH=LOGIN PLAIN\r\n250-8BITMIME\r\n250 XCLIENT NAME ADDR\r\n');
        } else if (line === 'NOOP') {
          conn.write('250-2.0.0 first\r\n250 2.0.0 second\r\n');
        }
      },
    });
    const conn = await connect(port);
    expect(conn.greeting.lines).toEqual(['backend.test ESMTP first line', 'second line']);
    expect(conn.greeting.text).toBe('backend.test ESMTP first line second line');
    expect(conn.greeting.enhanced).toBeUndefined();
    expect([...conn.capabilities.entries()]).toEqual([
      ['SIZE', '1000'],
      ['AUTH', 'LOGIN PLAIN'],
      ['8BITMIME', ''],
      ['XCLIENT', 'NAME ADDR'],
    ]);
    const reply = await conn.command('NOOP');
    expect(reply).toEqual({ code: 250, enhanced: '2.0.0', lines: ['2.0.0 first', '2.0.0 second'], text: 'first second' });
  });

  it('reassembles multi-line replies delivered one byte per TCP segment', async () => {
    const ehloReply = '250-backend.test\r\n250-PIPELINING\r\n250-SIZE 2048\r\n250 STARTTLS\r\n';
    const writeByByte = async (socket: net.Socket, text: string): Promise<void> => {
      for (const byte of Buffer.from(text)) {
        await new Promise<void>((resolve, reject) => socket.write(Buffer.of(byte), (e) => (e ? reject(e) : resolve())));
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    const { port } = await startScripted({
      onConnection: (conn) => void writeByByte(conn.socket, '220-backend.test\r\n220 ready\r\n').catch(() => undefined),
      onLine(line, conn) {
        if (line.startsWith('EHLO ')) void writeByByte(conn.socket, ehloReply).catch(() => undefined);
        if (line === 'RSET') void writeByByte(conn.socket, '451-4.3.0 try\r\n451 4.3.0 later\r\n').catch(() => undefined);
      },
    });
    const conn = await connect(port);
    expect(conn.greeting.lines).toEqual(['backend.test', 'ready']);
    expect([...conn.capabilities.keys()]).toEqual(['PIPELINING', 'SIZE', 'STARTTLS']);
    expect(conn.capabilities.get('SIZE')).toBe('2048');
    const reply = await conn.command('RSET');
    expect(reply).toEqual({ code: 451, enhanced: '4.3.0', lines: ['4.3.0 try', '4.3.0 later'], text: 'try later' });
  });

  it('matches several replies arriving in one chunk to pipelined commands in order, tolerating bare LF', async () => {
    const { port } = await startScripted(
      basicScript(['PIPELINING'], (line, conn) => {
        if (line.startsWith('MAIL')) return true; // answered together with the RCPT
        if (line.startsWith('RCPT')) {
          conn.write('250 2.1.0 sender ok\n550-5.1.1 no such\r\n550 5.1.1 user\r\n');
          return true;
        }
        return false;
      }),
    );
    const conn = await connect(port);
    const [mail, rcpt] = await Promise.all([conn.command('MAIL FROM:<a@example.com>'), conn.command('RCPT TO:<b@example.com>')]);
    expect(mail).toEqual({ code: 250, enhanced: '2.1.0', lines: ['2.1.0 sender ok'], text: 'sender ok' });
    expect(rcpt.code).toBe(550);
    expect(rcpt.enhanced).toBe('5.1.1');
    expect(rcpt.text).toBe('no such user');
  });

  it('treats a reply with no command pending as a protocol error and closes', async () => {
    const { port } = await startScripted(
      basicScript([], (line, conn) => {
        if (line === 'NOOP') {
          conn.write('250 ok\r\n250 surprise\r\n');
          return true;
        }
        return false;
      }),
    );
    const conn = await connect(port);
    const closed = once(conn, 'close') as Promise<[BackendError]>;
    const reply = await conn.command('NOOP');
    expect(reply.text).toBe('ok');
    const [reason] = await closed;
    expect(reason.kind).toBe('protocol');
    expect(conn.closed).toBe(true);
  });

  it('caps a reply at 64 KiB and fails with kind protocol', async () => {
    const { port } = await startScripted(
      basicScript([], (line, conn) => {
        if (line === 'NOOP') {
          conn.write('250-' + 'x'.repeat(70 * 1024));
          return true;
        }
        return false;
      }),
    );
    const conn = await connect(port);
    const err = await backendError(conn.command('NOOP'));
    expect(err.kind).toBe('protocol');
    expect(conn.closed).toBe(true);
  });

  it('rejects a malformed reply line with kind protocol', async () => {
    const { port } = await startScripted(
      basicScript([], (line, conn) => {
        if (line === 'NOOP') {
          conn.write('hello there\r\n');
          return true;
        }
        return false;
      }),
    );
    const conn = await connect(port);
    expect((await backendError(conn.command('NOOP'))).kind).toBe('protocol');
  });

  it('falls back to HELO when the server does not know EHLO', async () => {
    const { port, connection } = await startScripted({
      greeting: '220 old.test SMTP\r\n',
      onLine(line, conn) {
        conn.write(line.startsWith('EHLO') ? '502 5.5.1 unrecognized\r\n' : '250 old.test\r\n');
      },
    });
    const conn = await connect(port);
    expect(conn.capabilities.size).toBe(0);
    expect((await connection).lines).toEqual([`EHLO ${HELO}`, `HELO ${HELO}`]);
  });
});

describe('connect failures and timeouts', () => {
  it('rejects with kind connect when the connection is refused', async () => {
    const port = await freePort();
    const err = await backendError(connect(port));
    expect(err.kind).toBe('connect');
    expect((err.cause as NodeJS.ErrnoException).code).toBe('ECONNREFUSED');
  });

  it('rejects with kind protocol on a non-2xx greeting, carrying the reply, and closes the socket', async () => {
    const { port, connection } = await startScripted({ greeting: '554 5.7.1 go away\r\n' });
    const err = await backendError(connect(port));
    expect(err.kind).toBe('protocol');
    expect(err.reply?.code).toBe(554);
    expect(err.reply?.enhanced).toBe('5.7.1');
    expect(err.reply?.text).toBe('go away');
    const server = await connection;
    await server.closed;
    expect(server.lines).toEqual([]); // not even an EHLO
  });

  it('rejects with kind connect when the server closes before greeting', async () => {
    const { port } = await startScripted({ onConnection: (conn) => conn.socket.end() });
    expect((await backendError(connect(port))).kind).toBe('connect');
  });

  it('times out a greeting that never comes with kind timeout', async () => {
    const { port, connection } = await startScripted({});
    const started = Date.now();
    const err = await backendError(connect(port, { timeouts: { ...TIMEOUTS, greetingMs: 150 } }));
    expect(err.kind).toBe('timeout');
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    await (await connection).closed;
  });

  it('times out a command with kind timeout, destroys the socket, emits close once, and fails later commands as closed', async () => {
    const { port, connection } = await startScripted(basicScript([], (line) => line === 'NOOP'));
    const conn = await connect(port, { timeouts: { ...TIMEOUTS, commandMs: 150 } });
    const reasons: BackendError[] = [];
    conn.on('close', (reason: BackendError) => reasons.push(reason));
    const closed = once(conn, 'close');
    const started = Date.now();
    const err = await backendError(conn.command('NOOP'));
    expect(err.kind).toBe('timeout');
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(conn.closed).toBe(true);
    await closed;
    await (await connection).closed; // the server sees the socket go away
    expect(reasons).toHaveLength(1);
    expect(reasons[0]?.kind).toBe('timeout');
    const later = await backendError(conn.command('RSET'));
    expect(later.kind).toBe('closed');
    conn.abort();
    conn.abort();
    expect(reasons).toHaveLength(1);
  });

  it('a backend that stops answering mid-session times out commandMs after the unanswered command, not after an earlier one', async () => {
    let noops = 0;
    const { port } = await startScripted(basicScript([], (line) => line === 'NOOP' && ++noops > 3));
    const conn = await connect(port, { timeouts: { ...TIMEOUTS, commandMs: 150 } });
    for (let i = 0; i < 3; i++) expect((await conn.command('NOOP')).code).toBe(250);
    // Idle for most of a command timeout: a deadline left over from the last answered command
    // would fire 50 ms into the next one.
    await new Promise((resolve) => setTimeout(resolve, 100));
    const sent = Date.now();
    const err = await backendError(conn.command('NOOP'));
    expect(err.kind).toBe('timeout');
    expect(err.message).toBe('no reply from backend to NOOP within 150 ms');
    expect(Date.now() - sent).toBeGreaterThanOrEqual(140);
    expect(conn.closed).toBe(true);
  });

  it('an idle connection, with every command answered, outlives commandMs', async () => {
    const { port } = await startScripted(basicScript([]));
    const conn = await connect(port, { timeouts: { ...TIMEOUTS, greetingMs: 100, commandMs: 100 } });
    expect((await conn.command('NOOP')).code).toBe(250);
    await new Promise((resolve) => setTimeout(resolve, 250));
    expect(conn.closed).toBe(false);
    expect((await conn.command('NOOP')).code).toBe(250);
  });

  it('gives each command of a lock-step session its own commandMs, however long the session', async () => {
    // Each reply comes 100 ms late: 400 ms in all, well past one 150 ms timeout.
    const { port } = await startScripted(
      basicScript([], (line, conn) => {
        if (line !== 'NOOP') return false;
        setTimeout(() => conn.write('250 2.0.0 ok\r\n'), 100);
        return true;
      }),
    );
    const conn = await connect(port, { timeouts: { ...TIMEOUTS, commandMs: 150 } });
    for (let i = 0; i < 4; i++) expect((await conn.command('NOOP')).code).toBe(250);
    expect(conn.closed).toBe(false);
  });

  it('times a command pipelined behind another from its own sending, and names it when it times out', async () => {
    const { port } = await startScripted(basicScript([], (line) => line === 'RSET'));
    const conn = await connect(port, { timeouts: { ...TIMEOUTS, commandMs: 150 } });
    const noop = conn.command('NOOP');
    const sent = Date.now();
    const rset = backendError(conn.command('RSET'));
    expect((await noop).code).toBe(250);
    const err = await rset;
    expect(err.kind).toBe('timeout');
    expect(err.message).toBe('no reply from backend to RSET within 150 ms');
    expect(Date.now() - sent).toBeGreaterThanOrEqual(140);
  });

  it('rejects a pending command with kind closed when the backend drops the connection', async () => {
    const { port } = await startScripted(
      basicScript([], (line, conn) => {
        if (line === 'NOOP') {
          conn.socket.destroy();
          return true;
        }
        return false;
      }),
    );
    const conn = await connect(port);
    expect((await backendError(conn.command('NOOP'))).kind).toBe('closed');
  });

  it('turns an unsolicited 421 into kind closed carrying the reply', async () => {
    const { port } = await startScripted(
      basicScript([], (line, conn) => {
        if (line === 'NOOP') {
          conn.write('250 ok\r\n421 4.4.2 idle too long\r\n');
          conn.socket.end();
          return true;
        }
        return false;
      }),
    );
    const conn = await connect(port);
    const closed = once(conn, 'close') as Promise<[BackendError]>;
    await conn.command('NOOP');
    const [reason] = await closed;
    expect(reason.kind).toBe('closed');
    expect(reason.reply?.code).toBe(421);
  });
});

describe('TLS', () => {
  it('upgrades with STARTTLS, re-sends EHLO, and reports secure', async () => {
    let session: SMTPServerSession | undefined;
    const { port } = await startSmtpServer({
      authMethods: ['PLAIN'],
      onMailFrom(_address, s, callback) {
        session = s;
        callback();
      },
    });
    const conn = await connect(port, { tls: 'starttls', tlsOptions: { ca: pem.cert } });
    expect(conn.secure).toBe(true);
    // Capabilities come from the EHLO after TLS: smtp-server drops STARTTLS and offers AUTH
    // only once the session is encrypted.
    expect(conn.hasCapability('STARTTLS')).toBe(false);
    expect(conn.capabilities.get('AUTH')).toBe('PLAIN');
    const reply = await conn.command('MAIL FROM:<a@example.com>');
    expect(reply.code).toBe(250);
    expect(session?.secure).toBe(true);
  });

  it('refuses tls:starttls when the backend does not offer STARTTLS, without falling back to plaintext', async () => {
    const { port, connection } = await startScripted(basicScript(['PIPELINING', 'AUTH PLAIN']));
    const err = await backendError(connect(port, { tls: 'starttls', tlsOptions: { ca: pem.cert } }));
    expect(err.kind).toBe('tls');
    const server = await connection;
    await server.closed;
    expect(server.lines).toEqual([`EHLO ${HELO}`]);
  });

  it('fails the STARTTLS upgrade with kind tls when the certificate is not trusted', async () => {
    const { port } = await startSmtpServer({});
    const err = await backendError(connect(port, { tls: 'starttls' }));
    expect(err.kind).toBe('tls');
  });

  it('refuses bytes injected after the STARTTLS 220 (CVE-2011-0411)', async () => {
    const { port } = await startScripted(
      basicScript(['STARTTLS'], (line, conn) => {
        if (line === 'STARTTLS') {
          conn.write('220 2.0.0 go ahead\r\n250-injected');
          return true;
        }
        return false;
      }),
    );
    const err = await backendError(connect(port, { tls: 'starttls', tlsOptions: { ca: pem.cert } }));
    expect(err.kind).toBe('tls');
  });

  it('refuses to go on when the backend answers STARTTLS with an error', async () => {
    const { port, connection } = await startScripted(
      basicScript(['STARTTLS'], (line, conn) => {
        if (line === 'STARTTLS') {
          conn.write('454 4.7.0 TLS not available due to temporary reason\r\n');
          return true;
        }
        return false;
      }),
    );
    const err = await backendError(connect(port, { tls: 'starttls', tlsOptions: { ca: pem.cert } }));
    expect(err.kind).toBe('tls');
    expect(err.reply?.code).toBe(454);
    const server = await connection;
    await server.closed;
    expect(server.lines).toEqual([`EHLO ${HELO}`, 'STARTTLS']);
  });

  it('times out an implicit TLS handshake that never completes after connectMs', async () => {
    const { port } = await startScripted({}); // accepts TCP, never speaks TLS
    const started = Date.now();
    const err = await backendError(
      connect(port, { tls: 'implicit', tlsOptions: { ca: pem.cert }, timeouts: { ...TIMEOUTS, connectMs: 150 } }),
    );
    expect(err.kind).toBe('timeout');
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
  });

  it('turns TLS options that tls.connect throws on into a rejection with kind tls', async () => {
    const bad = { cert: 'not a certificate', key: 'not a key' };
    const { port: implicitPort } = await startScripted({});
    expect((await backendError(connect(implicitPort, { tls: 'implicit', tlsOptions: bad }))).kind).toBe('tls');
    const { port: starttlsPort, connection } = await startScripted(
      basicScript(['STARTTLS'], (line, conn) => {
        if (line === 'STARTTLS') {
          conn.write('220 2.0.0 go ahead\r\n');
          return true;
        }
        return false;
      }),
    );
    expect((await backendError(connect(starttlsPort, { tls: 'starttls', tlsOptions: bad }))).kind).toBe('tls');
    await (await connection).closed;
  });

  it('connects with implicit TLS', async () => {
    const { port } = await startSmtpServer({ secure: true });
    const conn = await connect(port, { tls: 'implicit', tlsOptions: { ca: pem.cert } });
    expect(conn.secure).toBe(true);
    expect(conn.greeting.code).toBe(220);
    expect((await conn.command('NOOP')).code).toBe(250);
  });
});

describe('AUTH', () => {
  async function authServer(): Promise<{ port: number; seen: Array<{ method: string; username?: string; password?: string | null }> }> {
    const seen: Array<{ method: string; username?: string; password?: string | null }> = [];
    const { port } = await startSmtpServer({
      authMethods: ['PLAIN', 'LOGIN'],
      allowInsecureAuth: true,
      disabledCommands: ['STARTTLS'],
      onAuth(auth, _session, callback) {
        seen.push({ method: auth.method, username: auth.username, password: auth.password });
        if (auth.username === 'alice' && auth.password === 'pä55 wörd') return callback(null, { user: 'alice' });
        return callback(Object.assign(new Error('5.7.8 bad credentials'), { responseCode: 535 }));
      },
    });
    return { port, seen };
  }

  it('AUTH PLAIN delivers the credentials smtp-server decodes: 235 when right, 535 when wrong', async () => {
    const { port, seen } = await authServer();
    const ok = await (await connect(port)).authPlain('alice', 'pä55 wörd');
    expect(ok.code).toBe(235);
    const bad = await (await connect(port)).authPlain('alice', 'nope');
    expect(bad.code).toBe(535);
    expect(seen).toEqual([
      { method: 'PLAIN', username: 'alice', password: 'pä55 wörd' },
      { method: 'PLAIN', username: 'alice', password: 'nope' },
    ]);
  });

  it('AUTH LOGIN walks the 334 exchange: 235 when right, 535 when wrong', async () => {
    const { port, seen } = await authServer();
    const ok = await (await connect(port)).authLogin('alice', 'pä55 wörd');
    expect(ok.code).toBe(235);
    const bad = await (await connect(port)).authLogin('bob', 'pä55 wörd');
    expect(bad.code).toBe(535);
    expect(seen).toEqual([
      { method: 'LOGIN', username: 'alice', password: 'pä55 wörd' },
      { method: 'LOGIN', username: 'bob', password: 'pä55 wörd' },
    ]);
  });

  it('AUTH LOGIN returns the first non-334 reply without sending credentials', async () => {
    const { port, connection } = await startScripted(
      basicScript([], (line, conn) => {
        if (line === 'AUTH LOGIN') {
          conn.write('504 5.5.4 mechanism not available\r\n');
          return true;
        }
        return false;
      }),
    );
    const conn = await connect(port);
    const reply = await conn.authLogin('alice', 'secret');
    expect(reply.code).toBe(504);
    await conn.command('NOOP');
    expect((await connection).lines).toEqual([`EHLO ${HELO}`, 'AUTH LOGIN', 'NOOP']);
  });
});

describe('AUTH XOAUTH2', () => {
  async function bearerServer(): Promise<{ port: number; seen: Array<{ username?: string; accessToken?: string }> }> {
    const seen: Array<{ username?: string; accessToken?: string }> = [];
    const { port } = await startSmtpServer({
      authMethods: ['XOAUTH2'],
      allowInsecureAuth: true,
      disabledCommands: ['STARTTLS'],
      onAuth(auth, _session, callback) {
        seen.push({ username: auth.username, accessToken: auth.accessToken });
        if (auth.username === 'scanner@example.com' && auth.accessToken === 'ya29.valid') return callback(null, { user: auth.username });
        // smtp-server's way of refusing a bearer: 334 with the JSON error, as Google does.
        return callback(null, { data: { status: '401', schemes: 'bearer', scope: 'https://mail.google.com/' } });
      },
    });
    return { port, seen };
  }

  it('sends user and bearer token as the initial response; a valid token gets 235', async () => {
    const { port, seen } = await bearerServer();
    const { reply, challenge } = await (await connect(port)).authXOAuth2('scanner@example.com', 'ya29.valid');
    expect(reply.code).toBe(235);
    expect(challenge).toBeUndefined();
    expect(seen).toEqual([{ username: 'scanner@example.com', accessToken: 'ya29.valid' }]);
  });

  it('a refused token: answers the 334 error challenge with an empty line, returns the final 535 and the decoded error; the connection stays usable', async () => {
    const { port } = await bearerServer();
    const conn = await connect(port);
    const { reply, challenge } = await conn.authXOAuth2('scanner@example.com', 'ya29.expired');
    expect(reply.code).toBe(535);
    expect(JSON.parse(challenge!)).toEqual({ status: '401', schemes: 'bearer', scope: 'https://mail.google.com/' });
    expect((await conn.command('NOOP')).code).toBe(250);
  });

  it('writes the exact RFC 7628-style initial response, and the empty line after a 334', async () => {
    const { port, connection } = await startScripted(
      basicScript([], (line, conn) => {
        if (line.startsWith('AUTH XOAUTH2 ')) {
          conn.write(`334 ${Buffer.from('{"status":"400"}').toString('base64')}\r\n`);
          return true;
        }
        if (line === '') {
          conn.write('535 5.7.3 Authentication unsuccessful\r\n');
          return true;
        }
        return false;
      }),
    );
    const { reply } = await (await connect(port)).authXOAuth2('scanner@example.com', 'tok.en-1');
    expect(reply).toMatchObject({ code: 535, enhanced: '5.7.3' });
    const lines = (await connection).lines;
    expect(lines[1]).toBe(`AUTH XOAUTH2 ${Buffer.from('user=scanner@example.com\x01auth=Bearer tok.en-1\x01\x01').toString('base64')}`);
    expect(lines[2]).toBe('');
  });

  it('refuses a user or token with control characters (^A would add fields) and sends nothing', async () => {
    const { port, connection } = await startScripted(basicScript([]));
    const conn = await connect(port);
    await expect(conn.authXOAuth2('a@example.com\x01auth=Bearer x', 'tok')).rejects.toMatchObject({ kind: 'protocol' });
    await expect(conn.authXOAuth2('a@example.com', 'tok en')).rejects.toMatchObject({ kind: 'protocol' });
    await conn.command('NOOP');
    expect((await connection).lines).toEqual([`EHLO ${HELO}`, 'NOOP']);
  });
});

describe('XCLIENT and XFORWARD', () => {
  it('XCLIENT encodes values, drops unadvertised attributes, and re-sends EHLO after the 220 reset', async () => {
    let ehlos = 0;
    const { port, connection } = await startScripted({
      greeting: '220 backend.test ESMTP\r\n',
      onLine(line, conn) {
        if (line.startsWith('EHLO ')) {
          ehlos += 1;
          conn.write(
            ehlos === 1
              ? '250-backend.test\r\n250-XCLIENT NAME ADDR HELO PROTO\r\n250 PIPELINING\r\n'
              : '250-backend.test\r\n250-SIZE 5000\r\n250 PIPELINING\r\n',
          );
        } else if (line.startsWith('XCLIENT ')) {
          conn.write('220 backend.test ESMTP\r\n');
        }
      },
    });
    const conn = await connect(port);
    const reply = await conn.xclient({
      NAME: '',
      ADDR: '192.0.2.1',
      helo: 'bad name+=é',
      LOGIN: 'alice', // not advertised
      PORT: '4321', // not advertised
      PROTO: 'ESMTP',
    });
    expect(reply.code).toBe(220);
    const server = await connection;
    expect(server.lines).toEqual([
      `EHLO ${HELO}`,
      'XCLIENT NAME=[UNAVAILABLE] HELO=bad+20name+2B+3D+C3+A9 PROTO=ESMTP ADDR=192.0.2.1',
      `EHLO ${HELO}`,
    ]);
    expect(conn.hasCapability('XCLIENT')).toBe(false);
    expect(conn.capabilities.get('SIZE')).toBe('5000');
  });

  it('connections sharing a capability cache each hold what their own last EHLO advertised, before and after XCLIENT', async () => {
    const { port } = await startScripted({
      greeting: '220 backend.test ESMTP\r\n',
      onLine(line, conn) {
        if (line.startsWith('EHLO ')) {
          const ehlos = conn.lines.filter((l) => l.startsWith('EHLO ')).length;
          conn.write(ehlos === 1 ? '250-backend.test\r\n250-XCLIENT NAME ADDR\r\n250 PIPELINING\r\n' : `250-backend.test greets ${line.slice(5)}\r\n250-SIZE 5000\r\n250 PIPELINING\r\n`);
        } else if (line.startsWith('XCLIENT ')) {
          conn.write('220 backend.test ESMTP\r\n');
        }
      },
    });
    const capabilities = new CapabilityCache();
    const first = await connect(port, { capabilities });
    expect(first.hasCapability('XCLIENT')).toBe(true);
    expect((await first.xclient({ ADDR: '192.0.2.1' }, { clientHelo: 'one.example' })).code).toBe(220);
    expect(first.hasCapability('XCLIENT')).toBe(false);
    expect(first.capabilities.get('SIZE')).toBe('5000');
    const second = await connect(port, { capabilities });
    expect(second.hasCapability('XCLIENT')).toBe(true);
    expect(first.hasCapability('XCLIENT')).toBe(false);
    expect((await second.xclient({ ADDR: '192.0.2.2' }, { clientHelo: 'two.example' })).code).toBe(220);
    // The same lines after the server's name: the second connection was given the first's map.
    expect(second.capabilities).toBe(first.capabilities);
  });

  it('XCLIENT splits a line that would exceed 512 octets, with EHLO after each 220 and ADDR in the last command', async () => {
    const { port, connection } = await startScripted(
      basicScript(['XCLIENT NAME ADDR HELO'], (line, conn) => {
        if (line.startsWith('XCLIENT ')) {
          conn.write('220 backend.test ESMTP\r\n');
          return true;
        }
        return false;
      }),
    );
    const conn = await connect(port);
    // Host names: labels of at most 63 octets (a NAME that is not one goes as [UNAVAILABLE]).
    const name = `${'n'.repeat(60)}.`.repeat(4) + 'example';
    const helo = 'h'.repeat(230) + '.example';
    const reply = await conn.xclient({ ADDR: '192.0.2.1', NAME: name, HELO: helo });
    expect(reply.code).toBe(220);
    const server = await connection;
    expect(server.lines).toEqual([
      `EHLO ${HELO}`,
      `XCLIENT NAME=${name}`,
      `EHLO ${HELO}`,
      `XCLIENT HELO=${helo} ADDR=192.0.2.1`,
      `EHLO ${HELO}`,
    ]);
    for (const line of server.lines) expect(line.length + 2).toBeLessThanOrEqual(512);
  });

  it("XCLIENT's last EHLO names the client's own EHLO name, so the backend's HELO checks judge the client", async () => {
    const { port, connection } = await startScripted(
      basicScript(['XCLIENT NAME ADDR HELO'], (line, conn) => {
        if (line.startsWith('XCLIENT ')) {
          conn.write('220 backend.test ESMTP\r\n');
          return true;
        }
        return false;
      }),
    );
    const conn = await connect(port);
    const helo = 'odd"name<x>\\' + 'h'.repeat(220);
    const name = `${'n'.repeat(60)}.`.repeat(4) + 'example';
    expect((await conn.xclient({ NAME: name, HELO: helo, ADDR: '192.0.2.1' }, { clientHelo: helo })).code).toBe(220);
    expect((await connection).lines).toEqual([
      `EHLO ${HELO}`,
      `XCLIENT NAME=${name}`,
      `EHLO ${HELO}`,
      `XCLIENT HELO=odd+22name+3Cx+3E+5C${'h'.repeat(220)} ADDR=192.0.2.1`,
      `EHLO ${helo}`,
    ]);
  });

  it('XCLIENT returns a refusal as is and sends nothing more', async () => {
    const { port, connection } = await startScripted(
      basicScript(['XCLIENT NAME ADDR'], (line, conn) => {
        if (line.startsWith('XCLIENT ')) {
          conn.write('550 5.7.0 Error: insufficient authorization\r\n');
          return true;
        }
        return false;
      }),
    );
    const conn = await connect(port);
    const reply = await conn.xclient({ ADDR: '192.0.2.1' });
    expect(reply.code).toBe(550);
    await conn.command('NOOP');
    expect((await connection).lines).toEqual([`EHLO ${HELO}`, 'XCLIENT ADDR=192.0.2.1', 'NOOP']);
  });

  it('XCLIENT hands the session to the forwarded client on a real smtp-server', async () => {
    let session: SMTPServerSession | undefined;
    const { port } = await startSmtpServer({
      useXClient: true,
      disabledCommands: ['STARTTLS'],
      onMailFrom(_address, s, callback) {
        session = s;
        callback();
      },
    });
    const conn = await connect(port);
    expect(conn.capabilities.get('XCLIENT')).toBe('NAME ADDR PORT PROTO HELO LOGIN');
    const reply = await conn.xclient({ ADDR: '192.0.2.7', PORT: '2525', NAME: 'client.example', HELO: 'client.example' });
    expect(reply.code).toBe(220);
    // smtp-server stops offering XCLIENT once ADDR has been handed over: the re-EHLO saw that.
    expect(conn.hasCapability('XCLIENT')).toBe(false);
    expect((await conn.command('MAIL FROM:<a@example.com>')).code).toBe(250);
    expect(session?.remoteAddress).toBe('192.0.2.7');
    expect(session?.remotePort).toBe(2525);
    expect(session?.clientHostname).toBe('client.example');
  });

  it('XFORWARD delivers the advertised attributes to a real smtp-server', async () => {
    let session: SMTPServerSession | undefined;
    const { port } = await startSmtpServer({
      useXForward: true,
      disabledCommands: ['STARTTLS'],
      onMailFrom(_address, s, callback) {
        session = s;
        callback();
      },
    });
    const conn = await connect(port);
    const reply = await conn.xforward({ ADDR: '192.0.2.9', NAME: '', HELO: 'client.example', LOGIN: 'dropped' });
    expect(reply.code).toBe(250);
    expect((await conn.command('MAIL FROM:<a@example.com>')).code).toBe(250);
    expect(session?.remoteAddress).toBe('192.0.2.9');
    expect(session?.xForward.get('ADDR')).toBe('192.0.2.9');
    expect(session?.xForward.get('NAME')).toBe(''); // smtp-server stores "[UNAVAILABLE]" as ''
    expect(session?.xForward.get('HELO')).toBe('client.example');
    expect(session?.xForward.has('LOGIN')).toBe(false);
  });

  it('XFORWARD expects 250 and does not re-send EHLO', async () => {
    const { port, connection } = await startScripted(basicScript(['XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE']));
    const conn = await connect(port);
    const reply = await conn.xforward({ ADDR: 'IPV6:2001:db8::1', PORT: '40000', IDENT: 'queue id=1', SOURCE: 'REMOTE' });
    expect(reply.code).toBe(250);
    expect(conn.hasCapability('XFORWARD')).toBe(true);
    await conn.command('NOOP');
    expect((await connection).lines).toEqual([
      `EHLO ${HELO}`,
      'XFORWARD PORT=40000 IDENT=queue+20id+3D1 SOURCE=REMOTE ADDR=IPV6:2001:db8::1',
      'NOOP',
    ]);
  });

  it('XCLIENT rejects with kind protocol when the backend does not advertise it, writing nothing', async () => {
    const { port, connection } = await startScripted(basicScript(['PIPELINING']));
    const conn = await connect(port);
    expect((await backendError(conn.xclient({ ADDR: '192.0.2.1' }))).kind).toBe('protocol');
    await conn.command('NOOP');
    expect((await connection).lines).toEqual([`EHLO ${HELO}`, 'NOOP']);
  });
});

describe('DATA', () => {
  /** A canonical body: CRLF line ends, dot-stuffed. Returns both forms. */
  function makeMessage(bytes: number): { original: Buffer; stuffed: Buffer } {
    const lines: string[] = ['Subject: big', 'From: <a@example.com>', ''];
    let size = 0;
    let i = 0;
    while (size < bytes) {
      // Some lines start with a dot so that dot-stuffing is exercised end to end.
      const line = (i % 7 === 0 ? '.' : '') + `line ${i} ` + 'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(2);
      lines.push(line);
      size += line.length + 2;
      i += 1;
    }
    const original = Buffer.from(lines.map((l) => l + '\r\n').join(''));
    const stuffed = Buffer.from(lines.map((l) => (l.startsWith('.') ? '.' + l : l) + '\r\n').join(''));
    return { original, stuffed };
  }

  function sha256(data: Buffer): string {
    return createHash('sha256').update(data).digest('hex');
  }

  /**
   * Sends a body the way the relay does: chunk by chunk, taking no more while write() says the
   * backend is behind, until onDrain(); a failure heard through onFailure() rejects at once.
   * Chunks are pulled lazily, so a test can see how much of the body was ever taken.
   */
  async function sendBody(writer: DataWriter, chunks: Iterable<Buffer>): Promise<SmtpReply> {
    let failure: BackendError | undefined;
    let wake = (): void => undefined;
    writer.onFailure((err) => {
      failure = err;
      wake();
    });
    for (const chunk of chunks) {
      if (!writer.write(chunk)) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          writer.onDrain(resolve);
        });
      }
      if (failure) throw failure;
    }
    if (failure) throw failure;
    return writer.finish();
  }

  /** `chunk` over and over up to `total` bytes; `pulled()` is how many bytes were taken so far. */
  function repeated(chunk: Buffer, total: number): { chunks: Generator<Buffer>; pulled: () => number } {
    let pulled = 0;
    function* chunks(): Generator<Buffer> {
      while (pulled < total) {
        pulled += chunk.length;
        yield chunk;
      }
    }
    return { chunks: chunks(), pulled: () => pulled };
  }

  it('sends what beginData() is given in one turn, and the final dot with it, in a single packet', async () => {
    // What the backend reads once it answered 354.
    const packets: Buffer[] = [];
    const { port } = await startScripted({
      ...basicScript([], (line, conn) => {
        if (line !== 'DATA') return false;
        conn.write('354 go ahead\r\n');
        conn.inData = true;
        return true;
      }),
      onData: (chunk, conn) => {
        if (!conn.inData) return;
        packets.push(chunk);
        if (Buffer.concat(packets).toString('latin1').endsWith('\r\n.\r\n')) conn.write('250 2.0.0 queued\r\n');
      },
    });
    const conn = await connect(port);
    await conn.command('MAIL FROM:<a@example.com>');
    await conn.command('RCPT TO:<b@example.com>');
    expect((await conn.command('DATA')).code).toBe(354);
    // Socket writes towards the backend (each is one write/writev syscall); the backend's own
    // socket, whose remote port is not the backend's, is not counted.
    const toBackend: string[] = [];
    const proto = net.Socket.prototype as unknown as Record<'_write' | '_writev', (...args: unknown[]) => void>;
    for (const method of ['_write', '_writev'] as const) {
      const original = proto[method];
      vi.spyOn(proto, method).mockImplementation(function (this: net.Socket, ...args: unknown[]) {
        if (this.remotePort === port) toBackend.push(method);
        return original.apply(this, args);
      });
    }
    const writer = conn.beginData();
    expect(writer.write(Buffer.from('Received: by test\r\n'))).toBe(true);
    expect(writer.write(Buffer.from('Subject: one\r\n\r\nbody\r\n'))).toBe(true);
    const reply = await writer.finish();
    vi.restoreAllMocks();
    expect(reply.code).toBe(250);
    expect(toBackend).toEqual(['_writev']);
    expect(Buffer.concat(packets).toString('latin1')).toBe('Received: by test\r\nSubject: one\r\n\r\nbody\r\n.\r\n');
  });

  it('streams a 5 MB body and smtp-server receives exactly those bytes', async () => {
    const received = deferred<Buffer>();
    const { port } = await startSmtpServer({
      disabledCommands: ['STARTTLS'],
      size: 50 * 1024 * 1024,
      onData(stream, _session, callback) {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('error', received.reject);
        stream.on('end', () => {
          received.resolve(Buffer.concat(chunks));
          callback(null, '2.0.0 queued as X1');
        });
      },
    });
    const conn = await connect(port);
    const { original, stuffed } = makeMessage(5 * 1024 * 1024);
    expect((await conn.command('MAIL FROM:<a@example.com>')).code).toBe(250);
    expect((await conn.command('RCPT TO:<b@example.com>')).code).toBe(250);
    expect((await conn.command('DATA')).code).toBe(354);
    // 64 KiB chunks, far more than the socket buffer takes at once: write() must say "wait".
    const chunks: Buffer[] = [];
    for (let off = 0; off < stuffed.length; off += 64 * 1024) chunks.push(stuffed.subarray(off, off + 64 * 1024));
    const reply = await sendBody(conn.beginData(), chunks);
    expect(reply.code).toBe(250);
    expect(reply.enhanced).toBe('2.0.0');
    const got = await received.promise;
    expect(got.length).toBe(original.length);
    expect(sha256(got)).toBe(sha256(original));
    // the connection is still usable for the next transaction
    expect((await conn.command('RSET')).code).toBe(250);
  });

  it('stops reading the body while the backend does not read, and gives up with kind timeout after dataIdleMs', async () => {
    const { port, connection } = await startScripted(
      basicScript([], (line, conn) => {
        if (line === 'DATA') {
          conn.write('354 go ahead\r\n');
          conn.inData = true;
          conn.socket.pause(); // never read the message: the kernel buffers fill up
          return true;
        }
        return false;
      }),
    );
    const conn = await connect(port, { timeouts: { ...TIMEOUTS, dataIdleMs: 300 } });
    await conn.command('MAIL FROM:<a@example.com>');
    await conn.command('RCPT TO:<b@example.com>');
    expect((await conn.command('DATA')).code).toBe(354);

    const total = 64 * 1024 * 1024;
    const body = repeated(Buffer.alloc(64 * 1024, 'x'), total);
    const err = await backendError(sendBody(conn.beginData(), body.chunks));
    expect(err.kind).toBe('timeout');
    expect(body.pulled()).toBeLessThan(total);
    expect(conn.closed).toBe(true);
    const server = await connection;
    server.socket.resume(); // a paused socket would never read the EOF
    await server.closed;
  });

  it('a message abandoned with abort() mid-body ends without the final dot, and onFailure hears of it', async () => {
    const sawBody = deferred<void>();
    const { port, connection } = await startScripted(
      basicScript([], (line, conn) => {
        if (line === 'DATA') {
          conn.write('354 go ahead\r\n');
          conn.inData = true;
          return true;
        }
        return false;
      }),
    );
    void connection.then((server) =>
      server.socket.on('data', () => {
        if (server.raw().includes('first part')) sawBody.resolve();
      }),
    );
    const conn = await connect(port);
    await conn.command('MAIL FROM:<a@example.com>');
    await conn.command('RCPT TO:<b@example.com>');
    await conn.command('DATA');

    const writer = conn.beginData();
    const failed = deferred<BackendError>();
    writer.onFailure(failed.resolve);
    writer.write(Buffer.from('Subject: x\r\n\r\nfirst part\r\n'));
    await sawBody.promise; // the backend has the start of the message ...
    conn.abort(); // ... when its owner gives up on it (the client went away, say)
    expect((await failed.promise).kind).toBe('closed');
    expect(conn.closed).toBe(true);
    // Nothing more leaves: neither later body bytes nor, from finish(), the final dot.
    writer.write(Buffer.from('second part\r\n'));
    await backendError(writer.finish());
    const server = await connection;
    await server.closed;
    const raw = server.raw().toString('latin1');
    expect(raw).toContain('first part\r\n');
    expect(raw.endsWith('first part\r\n')).toBe(true);
    expect(raw.slice(raw.indexOf('DATA\r\n'))).not.toContain('\r\n.\r\n');
  });

  it('rejects with kind closed when the backend closes the connection mid-DATA', async () => {
    const { port } = await startScripted({
      ...basicScript([], (line, conn) => {
        if (line === 'DATA') {
          conn.write('354 go ahead\r\n');
          conn.inData = true;
          return true;
        }
        return false;
      }),
      onData(_chunk, conn) {
        // Crash once a good part of the message has arrived.
        if (conn.inData && conn.raw().length > 256 * 1024) conn.socket.destroy();
      },
    });
    const conn = await connect(port);
    await conn.command('MAIL FROM:<a@example.com>');
    await conn.command('RCPT TO:<b@example.com>');
    await conn.command('DATA');
    // Far more than the backend takes before it goes away.
    const total = 64 * 1024 * 1024;
    const body = repeated(Buffer.alloc(16 * 1024, 'y'), total);
    const err = await backendError(sendBody(conn.beginData(), body.chunks));
    expect(err.kind).toBe('closed');
    expect(body.pulled()).toBeGreaterThan(256 * 1024);
    expect(body.pulled()).toBeLessThan(total);
    expect(conn.closed).toBe(true);
  });

  it('writes just the terminating dot for an empty body', async () => {
    const { port, connection } = await startScripted(
      basicScript([], (line, conn) => {
        if (line === 'DATA') {
          conn.write('354 go ahead\r\n');
          return true;
        }
        if (line === '.') {
          conn.write('250 2.0.0 empty ok\r\n');
          return true;
        }
        return false;
      }),
    );
    const conn = await connect(port);
    await conn.command('DATA');
    const reply = await conn.beginData().finish();
    expect(reply.text).toBe('empty ok');
    expect((await connection).lines).toEqual([`EHLO ${HELO}`, 'DATA', '.']);
  });
});

describe('command safety and lifecycle', () => {
  it('refuses a command line containing CR, LF or NUL without writing anything', async () => {
    const { port, connection } = await startScripted(basicScript([]));
    const conn = await connect(port);
    for (const line of ['MAIL FROM:<a@example.com>\r\nRCPT TO:<x@evil.test>', 'NOOP\n', 'NO\rOP', 'NO\0OP']) {
      expect((await backendError(conn.command(line))).kind).toBe('protocol');
    }
    expect(conn.closed).toBe(false);
    expect((await conn.command('NOOP')).code).toBe(250);
    expect((await connection).raw().toString('latin1')).toBe(`EHLO ${HELO}\r\nNOOP\r\n`);
  });

  it('quit sends QUIT, resolves on 221 and closes the connection', async () => {
    const { port, connection } = await startScripted(basicScript([]));
    const conn = await connect(port);
    const closed = once(conn, 'close') as Promise<[BackendError]>;
    await conn.quit();
    const [reason] = await closed;
    expect(reason).toBeInstanceOf(BackendError);
    expect([reason.kind, reason.message]).toEqual(['closed', 'backend connection closed after QUIT']);
    expect(conn.closed).toBe(true);
    expect((await connection).lines).toEqual([`EHLO ${HELO}`, 'QUIT']);
    expect((await backendError(conn.command('NOOP'))).kind).toBe('closed');
    await conn.quit(); // still never rejects
  });

  it('quit against a silent backend resolves after commandMs instead of rejecting', async () => {
    const { port } = await startScripted(basicScript([], (line) => line === 'QUIT'));
    const conn = await connect(port, { timeouts: { ...TIMEOUTS, commandMs: 150 } });
    const started = Date.now();
    await expect(conn.quit()).resolves.toBeUndefined();
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(conn.closed).toBe(true);
  });

  it('abort is idempotent, emits close once, and rejects pending commands with kind closed', async () => {
    const { port } = await startScripted(basicScript([], (line) => line === 'NOOP'));
    const conn = await connect(port);
    let closes = 0;
    conn.on('close', () => (closes += 1));
    const closed = once(conn, 'close');
    const pending = conn.command('NOOP');
    conn.abort();
    conn.abort();
    expect((await backendError(pending)).kind).toBe('closed');
    await closed;
    conn.abort();
    expect(closes).toBe(1);
  });
});
