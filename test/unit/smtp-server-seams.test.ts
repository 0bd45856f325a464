/**
 * The contract of each seam into smtp-server's internals (src/listener/smtp-server-seams.ts):
 * what smtpgate relies on the library doing, checked against the installed smtp-server over a
 * real socket. A new smtp-server version is added to TESTED_SMTP_SERVER_VERSIONS only once
 * this file (and test/unit/data-stream.test.ts, the differential test of the DATA parser)
 * passes against it.
 */
import net, { type AddressInfo } from 'node:net';
import { TLSSocket } from 'node:tls';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { afterEach, describe, expect, test } from 'vitest';
import {
  TESTED_SMTP_SERVER_VERSIONS,
  clientSocket,
  endSaslExchange,
  inDataMode,
  inSaslExchange,
  installedSeamTargets,
  isClosing,
  isUpgrading,
  libraryEnhancedCode,
  observeReads,
  onEachConnection,
  onEachParser,
  openConnections,
  replaceAddressParser,
  replaceCommandHandler,
  replaceDataFeed,
  replaceGreetingWait,
  replaceProxyHandler,
  replaceSend,
  smtpServerProblems,
  type ClientConnection,
} from '../../src/listener/smtp-server-seams.js';
import { makeTestCert } from '../helpers/pki.js';
import { SmtpTalk } from '../helpers/smtp-talk.js';

const servers: SMTPServer[] = [];
const talks: SmtpTalk[] = [];

afterEach(async () => {
  for (const t of talks.splice(0)) t.close();
  await Promise.all(servers.splice(0).map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
});

/** A plain smtp-server on a free loopback port, with `install` run before it listens. */
async function start(options: SMTPServerOptions, install: (server: SMTPServer) => void = () => {}): Promise<{ server: SMTPServer; port: number }> {
  const server = new SMTPServer({ logger: false, authOptional: true, disabledCommands: ['STARTTLS'], closeTimeout: 50, ...options });
  servers.push(server);
  install(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return { server, port: (server.server.address() as AddressInfo).port };
}

async function talk(port: number): Promise<SmtpTalk> {
  const t = await SmtpTalk.connect(port);
  talks.push(t);
  return t;
}

/** A connection's guard in miniature: the first connection the server creates. */
function firstConnection(server: SMTPServer, setUp: (conn: ClientConnection) => void = () => {}): Promise<ClientConnection> {
  return new Promise((resolve) =>
    onEachConnection(server, (conn) => {
      setUp(conn);
      resolve(conn);
    }),
  );
}

describe('seam connections.add (onEachConnection, openConnections)', () => {
  test('runs once per connection before its greeting, with the id and address the session gets, and the connection is open', async () => {
    const events: string[] = [];
    let open: boolean | undefined;
    const { server, port } = await start({
      onConnect: (session, cb) => {
        events.push(`onConnect ${session.id} ${session.remoteAddress}`);
        open = [...openConnections(server)].some((c) => c.id === session.id);
        cb();
      },
    });
    onEachConnection(server, (conn) => events.push(`setUp ${conn.id} ${conn.remoteAddress}`));
    const t = await talk(port);
    expect((await t.read()).code).toBe(220);
    const id = /^setUp (\S+) /.exec(events[0] ?? '')?.[1];
    expect(events).toEqual([`setUp ${id} 127.0.0.1`, `onConnect ${id} 127.0.0.1`]);
    expect(open).toBe(true);
  });

  test('a closed connection is no longer open', async () => {
    let closed!: () => void;
    const gone = new Promise<void>((resolve) => (closed = resolve));
    const { server, port } = await start({ onClose: () => closed() });
    const t = await talk(port);
    await t.read();
    expect(openConnections(server).size).toBe(1);
    expect((await t.cmd('QUIT')).code).toBe(221);
    await gone;
    expect(openConnections(server).size).toBe(0);
  });
});

describe('seam _handleProxy (replaceProxyHandler)', () => {
  test('is asked for each socket before any byte, and the id and address it gives become the session and the connection', async () => {
    let seen: string | undefined;
    let session: { id: string; remoteAddress: string; remotePort: number } | undefined;
    const { server, port } = await start({
      onConnect: (s, cb) => {
        session = { id: s.id, remoteAddress: s.remoteAddress, remotePort: s.remotePort };
        cb();
      },
    });
    replaceProxyHandler(server, (socket, done) => {
      seen = socket.remoteAddress;
      done(null, { id: 'proxied0session0', remoteAddress: '192.0.2.7', remotePort: 4242 });
    });
    const conn = firstConnection(server);
    const t = await talk(port);
    expect((await t.read()).code).toBe(220);
    expect(seen).toBe('127.0.0.1');
    expect(session).toEqual({ id: 'proxied0session0', remoteAddress: '192.0.2.7', remotePort: 4242 });
    expect((await conn).remoteAddress).toBe('192.0.2.7');
  });

  test('an error from it means no connection and no greeting', async () => {
    let connected = false;
    const { server, port } = await start({ onConnect: (_s, cb) => ((connected = true), cb()) });
    replaceProxyHandler(server, (socket, done) => {
      socket.destroy();
      done(new Error('refused'));
    });
    const socket = net.connect({ host: '127.0.0.1', port });
    let received = '';
    socket.on('data', (d: Buffer) => (received += d.toString()));
    socket.on('error', () => {});
    await new Promise((resolve) => socket.once('close', resolve));
    expect(received).toBe('');
    expect(connected).toBe(false);
  });
});

describe('seam init (replaceGreetingWait)', () => {
  test('the greeting waits for greet(), and input before it gets smtp-server\'s "421 You talk too soon"', async () => {
    const greets: Array<() => void> = [];
    const waiting: Array<() => void> = [];
    const { server, port } = await start({});
    onEachConnection(server, (conn) =>
      replaceGreetingWait(conn, (greet) => {
        greets.push(greet);
        waiting.shift()?.();
      }),
    );
    const asked = () => new Promise<void>((resolve) => waiting.push(resolve));

    const early = asked();
    const talker = await talk(port);
    await early;
    talker.write('EHLO early\r\n');
    const refused = await talker.read();
    expect(refused.code).toBe(421);
    expect(refused.raw).toMatch(/talk too soon/i);

    const patient = asked();
    const t = await talk(port);
    await patient;
    const reply = t.read();
    greets[1]!();
    expect((await reply).code).toBe(220);
  });
});

describe('seam _onCommand (replaceCommandHandler)', () => {
  test('sees every command line and AUTH continuation line without its CRLF, and the dispatch it returns answers it', async () => {
    const lines: string[] = [];
    const { server, port } = await start({ allowInsecureAuth: true, authMethods: ['LOGIN'], onAuth: (_a, _s, cb) => cb(null, { user: 'u' }) });
    onEachConnection(server, (conn) => {
      const dispatch = replaceCommandHandler(conn, (command, callback) => {
        lines.push(command.toString('latin1'));
        dispatch(command, callback);
      });
    });
    const t = await talk(port);
    await t.read();
    expect((await t.cmd('EHLO a')).code).toBe(250);
    expect((await t.cmd('AUTH LOGIN')).code).toBe(334);
    expect((await t.cmd('dXNlcg==')).code).toBe(334);
    expect((await t.cmd('cGFzcw==')).code).toBe(235);
    expect(lines).toEqual(['EHLO a', 'AUTH LOGIN', 'dXNlcg==', 'cGFzcw==']);
  });

  test('a line it does not dispatch gets no reply from smtp-server, and the next line is read once callback runs', async () => {
    const { server, port } = await start({});
    onEachConnection(server, (conn) => {
      const dispatch = replaceCommandHandler(conn, (command, callback) => {
        if (command.toString() !== 'NOOP') return dispatch(command, callback);
        conn.send(250, 'the guard answered', false);
        callback?.();
      });
    });
    const t = await talk(port);
    await t.read();
    expect((await t.cmd('NOOP')).raw).toBe('250 the guard answered');
    expect((await t.cmd('HELO b')).code).toBe(250);
  });
});

describe('seam _nextHandler (inSaslExchange, endSaslExchange)', () => {
  test('a line that answers a 334 is marked as such, and ending the exchange makes the next line a command', async () => {
    const marks: Array<[string, boolean]> = [];
    const { server, port } = await start({ allowInsecureAuth: true, authMethods: ['LOGIN'], onAuth: (_a, _s, cb) => cb(null, { user: 'u' }) });
    onEachConnection(server, (conn) => {
      const dispatch = replaceCommandHandler(conn, (command, callback) => {
        const line = command.toString('latin1');
        marks.push([line, inSaslExchange(conn)]);
        if (line !== 'dXNlcg==') return dispatch(command, callback);
        endSaslExchange(conn);
        conn.send(501, 'refused by the guard', false);
        callback?.();
      });
    });
    const t = await talk(port);
    await t.read();
    await t.cmd('EHLO a');
    expect((await t.cmd('AUTH LOGIN')).code).toBe(334);
    expect((await t.cmd('dXNlcg==')).code).toBe(501);
    // Were the exchange still on, this would be taken for the password.
    expect((await t.cmd('NOOP')).code).toBe(250);
    expect(marks).toEqual([
      ['EHLO a', false],
      ['AUTH LOGIN', false],
      ['dXNlcg==', true],
      ['NOOP', false],
    ]);
  });
});

describe('seam _parseAddressCommand (replaceAddressParser)', () => {
  test("decides MAIL FROM and RCPT TO: the address it gives is the one the hooks see, and false is smtp-server's syntax error", async () => {
    const seen: string[] = [];
    const { server, port } = await start({
      onMailFrom: (a, _s, cb) => ((seen.push(`mail ${a.address}`), cb())),
      onRcptTo: (a, _s, cb) => ((seen.push(`rcpt ${a.address}`), cb())),
    });
    onEachConnection(server, (conn) =>
      replaceAddressParser(conn, (parse) => (name, command) => {
        if (command.includes('<refuse@')) return false;
        const parsed = parse(name, command);
        return parsed && { ...parsed, address: parsed.address.replace('@example.test', '@rewritten.test') };
      }),
    );
    const t = await talk(port);
    await t.read();
    await t.cmd('EHLO a');
    expect((await t.cmd('MAIL FROM:<a@example.test>')).code).toBe(250);
    expect((await t.cmd('RCPT TO:<refuse@example.test>')).code).toBe(501);
    expect((await t.cmd('RCPT TO:<b@example.test>')).code).toBe(250);
    expect(seen).toEqual(['mail a@rewritten.test', 'rcpt b@rewritten.test']);
  });
});

describe('seam send (replaceSend, libraryEnhancedCode)', () => {
  test('carries every reply with its context (MAIL_FROM_OK, RCPT_TO_OK for accepted MAIL and RCPT), and what it writes is what the client gets', async () => {
    const replies: Array<[number, string | false | undefined, string]> = [];
    const { server, port } = await start({ hideENHANCEDSTATUSCODES: false });
    onEachConnection(server, (conn) => {
      const send = replaceSend(conn, (code, data, context) => {
        replies.push([code, context, libraryEnhancedCode(conn, code, context)]);
        if (context === 'RCPT_TO_OK') return send(251, '2.1.5 the backend says so', false);
        send(code, data, context);
      });
    });
    const t = await talk(port);
    await t.read();
    await t.cmd('EHLO a');
    expect((await t.cmd('MAIL FROM:<a@example.test>')).raw).toBe('250 2.1.0 Accepted');
    expect((await t.cmd('RCPT TO:<b@example.test>')).raw).toBe('251 2.1.5 the backend says so');
    expect(replies).toContainEqual([250, 'MAIL_FROM_OK', '2.1.0']);
    expect(replies).toContainEqual([250, 'RCPT_TO_OK', '2.1.5']);
    expect(libraryEnhancedCode(await new Promise<ClientConnection>((r) => r([...openConnections(server)][0]!)), 550, false)).toBe('');
  });
});

describe('seams _createParser, _write, _upgrading, _socket, _dataMode (onEachParser, observeReads, isUpgrading, clientSocket, inDataMode)', () => {
  test('every read is seen, with its mode, by the first parser and by the new one smtp-server makes for STARTTLS', async () => {
    const cert = await makeTestCert();
    const reads: Array<[number, string, boolean]> = [];
    const facts: Record<string, unknown> = {};
    let parsers = 0;
    let parsed = 0;
    let connection: ClientConnection | undefined;
    const { server, port } = await start({
      key: cert.key,
      cert: cert.cert,
      disabledCommands: [],
      onSecure: (_socket, _s, cb) => {
        facts.upgradingAtSecure = isUpgrading(connection!);
        facts.tlsSocketAtSecure = clientSocket(connection!) instanceof TLSSocket;
        cb();
      },
      onData: (stream, _s, cb) => {
        facts.dataModeInOnData = inDataMode(connection!);
        stream.resume();
        stream.on('end', () => cb());
      },
    });
    onEachConnection(server, (conn) => {
      connection = conn;
      facts.tlsSocketAtStart = clientSocket(conn) instanceof TLSSocket;
      onEachParser(conn, (parser) => {
        const n = ++parsers;
        observeReads(
          parser,
          (chunk, dataMode) => reads.push([n, chunk.toString('latin1'), dataMode]),
          () => parsed++,
        );
      });
      const send = replaceSend(conn, (code, data, context) => {
        send(code, data, context);
        if (data === 'Ready to start TLS') setImmediate(() => (facts.upgradingAfterStarttls = isUpgrading(conn)));
      });
    });
    const t = await talk(port);
    await t.read();
    await t.cmd('EHLO a');
    expect((await t.starttls()).code).toBe(220);
    await t.cmd('EHLO b');
    await t.cmd('MAIL FROM:<a@example.test>');
    await t.cmd('RCPT TO:<b@example.test>');
    expect((await t.cmd('DATA')).code).toBe(354);
    expect((await t.cmd('Subject: x\r\n\r\nbody\r\n.')).code).toBe(250);
    expect(facts).toEqual({ tlsSocketAtStart: false, upgradingAfterStarttls: true, upgradingAtSecure: false, tlsSocketAtSecure: true, dataModeInOnData: true });
    expect(parsers).toBe(2);
    // The parser calls back once per read when it has dealt with it (the line watch's clock
    // restarts there): every read the client made has been answered, so every one is parsed.
    expect(parsed).toBe(reads.length);
    // smtp-server also writes empty chunks to itself around DATA (the guard skips those).
    expect(reads.filter(([, text]) => text !== '')).toEqual([
      [1, 'EHLO a\r\n', false],
      [1, 'STARTTLS\r\n', false],
      [2, 'EHLO b\r\n', false],
      [2, 'MAIL FROM:<a@example.test>\r\n', false],
      [2, 'RCPT TO:<b@example.test>\r\n', false],
      [2, 'DATA\r\n', false],
      [2, 'Subject: x\r\n\r\nbody\r\n.\r\n', true],
    ]);
  });
});

describe('seam _closing, _closed (isClosing)', () => {
  test('turns true as soon as the connection is closed', async () => {
    const { server, port } = await start({});
    const conn = firstConnection(server);
    const t = await talk(port);
    await t.read();
    const c = await conn;
    expect(isClosing(c)).toBe(false);
    c.close();
    expect(isClosing(c)).toBe(true);
    await t.closed;
    expect(isClosing(c)).toBe(true);
  });
});

describe('seam _feedDataStream (replaceDataFeed)', () => {
  test("runs for each read in data mode with the parser's DATA state, and end() ends DATA and hands the rest back to commands", async () => {
    const received: Buffer[] = [];
    const feeds: Array<{ atStart: boolean; sameStream: boolean }> = [];
    let dataStream: unknown;
    let sizes: unknown;
    const { server, port } = await start({
      onData: (stream, _s, cb) => {
        dataStream = stream;
        stream.on('data', (d: Buffer) => received.push(d));
        stream.on('end', () => {
          sizes = { byteLength: stream.byteLength, sizeExceeded: stream.sizeExceeded };
          cb();
        });
      },
    });
    onEachConnection(server, (conn) =>
      onEachParser(conn, (parser) =>
        replaceDataFeed(parser, (state, chunk, done) => {
          feeds.push({ atStart: state.atStart, sameStream: state.stream === dataStream });
          const end = chunk.indexOf('\r\n.\r\n');
          state.count(end + 2);
          state.end(chunk.subarray(0, end + 2), chunk.subarray(end + 5), done);
        }),
      ),
    );
    const t = await talk(port);
    await t.read();
    await t.cmd('EHLO a');
    await t.cmd('MAIL FROM:<a@example.test>');
    await t.cmd('RCPT TO:<b@example.test>');
    expect((await t.cmd('DATA')).code).toBe(354);
    t.write('Subject: x\r\n\r\nbody\r\n.\r\nNOOP\r\n');
    expect((await t.read()).code).toBe(250);
    expect((await t.read()).raw).toMatch(/^250 OK/);
    expect(Buffer.concat(received).toString()).toBe('Subject: x\r\n\r\nbody\r\n');
    expect(sizes).toEqual({ byteLength: 'Subject: x\r\n\r\nbody\r\n'.length, sizeExceeded: false });
    expect(feeds).toEqual([{ atStart: true, sameStream: true }]);
  });
});

describe('the startup check (smtpServerProblems)', () => {
  test('passes on the installed smtp-server', () => {
    expect(smtpServerProblems()).toEqual([]);
  });

  test('refuses an untested version, naming it, the tested versions and the fix', () => {
    const problems = smtpServerProblems({ ...installedSeamTargets(), version: '3.22.0' });
    expect(problems).toHaveLength(1);
    expect(problems[0]).toContain('smtp-server 3.22.0 is installed');
    expect(problems[0]).toContain(`tested with smtp-server ${TESTED_SMTP_SERVER_VERSIONS.join(', ')} only`);
    expect(problems[0]).toContain(`npm install --save-exact smtp-server@${TESTED_SMTP_SERVER_VERSIONS.at(-1)}`);
  });

  test('names every seam method that is missing or takes another number of parameters', () => {
    const targets = installedSeamTargets();
    const connection = Object.create(targets.prototypes.SMTPConnection) as Record<string, unknown>;
    connection._onCommand = undefined;
    connection.send = (code: number) => code;
    const stream = Object.create(targets.prototypes.SMTPStream) as Record<string, unknown>;
    stream._feedDataStream = undefined;
    const problems = smtpServerProblems({ ...targets, prototypes: { ...targets.prototypes, SMTPConnection: connection, SMTPStream: stream } });
    expect(problems).toHaveLength(3);
    expect(problems[0]).toMatch(/^smtp-server seam SMTPConnection\._onCommand is missing; install the tested version/);
    expect(problems[1]).toMatch(/^smtp-server seam SMTPConnection\.send takes 1 parameters, not 3/);
    expect(problems[2]).toMatch(/^smtp-server seam SMTPStream\._feedDataStream is missing/);
  });

  test('names a parser field or the connection set that is missing', () => {
    const targets = installedSeamTargets();
    const problems = smtpServerProblems({ ...targets, parser: { ...targets.parser, _lastBytes: undefined }, server: { connections: new Map() } });
    expect(problems).toEqual([expect.stringMatching(/^smtp-server seam SMTPStream\._lastBytes is missing or changed/), expect.stringMatching(/^smtp-server seam SMTPServer\.connections is not a Set/)]);
  });
});
