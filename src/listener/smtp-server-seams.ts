/**
 * Every place where smtpgate reaches into smtp-server's internals, and nowhere else.
 *
 * smtp-server has no public hook before a command is dispatched, none for the greeting wait,
 * none for a PROXY protocol v2 header and none to replace its DATA parser, so smtpgate replaces
 * or reads a few of its private members (the "seams"). Each is a typed installer or accessor
 * here; the rest of smtpgate never names a private member and never deep-imports the library.
 * Installers run once per server, connection or parser, so the hot path costs what it cost
 * when the wiring was inline: no per-command allocation, no extra layer per line.
 *
 * A seam is only known to hold on the versions listed in TESTED_SMTP_SERVER_VERSIONS:
 * `smtpServerProblems()` (run by every listener and by `smtpgate check`) refuses any other
 * installed version, and any seam that is missing or has changed shape, with a message that
 * names it. test/unit/smtp-server-seams.test.ts has one contract test per seam, over a real
 * socket to a real smtp-server; run it before adding a version to the list.
 */
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import type { Writable } from 'node:stream';
import { SMTPServer } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';

/** The smtp-server versions the seams below were checked against (exact versions). */
export const TESTED_SMTP_SERVER_VERSIONS: readonly string[] = ['3.21.6'];

/** smtp-server's command and DATA parser of one connection (a new one after STARTTLS). */
export type CommandParser = SMTPStream;

/** The address parse smtp-server makes of a MAIL/RCPT line: the mailbox and its parameters. */
export type ParsedAddress = ReturnType<SMTPConnection['_parseAddressCommand']>;

/** A client connection, as much of smtp-server's SMTPConnection as smtpgate may use directly. */
export interface ClientConnection {
  readonly id: string;
  /** The client's address and port; with the PROXY protocol, the ones its header named. */
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** The host name smtp-server greets with. */
  readonly name: string;
  readonly secure: boolean;
  readonly session: { readonly envelope?: { readonly mailFrom?: unknown } };
  /** Writes a reply; smtp-server closes the connection after any 421 it sends. */
  send(code: number, data: string | string[], context?: string | false): void;
  close(): void;
}

type Connection = ClientConnection & SMTPConnection;
const lib = (conn: ClientConnection): SMTPConnection => conn as Connection;

// ── the server ───────────────────────────────────────────────────────────────────────────

/**
 * Seam `connections.add`: smtp-server adds each new connection to `server.connections` right
 * before it calls the connection's init(), and the PROXY header (if any) has been read by then.
 * It is the one moment a connection can be set up before its first byte is handled.
 */
export function onEachConnection(server: SMTPServer, setUp: (conn: ClientConnection) => void): void {
  const connections = server.connections;
  const add = connections.add.bind(connections);
  connections.add = (conn) => {
    setUp(conn as Connection);
    return add(conn);
  };
}

/** The connections smtp-server has open now. */
export function openConnections(server: SMTPServer): ReadonlySet<ClientConnection> {
  return server.connections as Set<Connection>;
}

/** What a PROXY handler tells smtp-server about the socket: the session id, and the real client. */
export interface ProxiedSocket {
  id: string;
  remoteAddress?: string;
  remotePort?: number;
}
export type ProxyHandler = (socket: Socket, done: (err: Error | null, options?: ProxiedSocket) => void) => void;

/**
 * Seam `_handleProxy`: smtp-server asks it for every accepted socket, before any TLS handshake
 * and before the connection exists, for the session id and the client's address.
 */
export function replaceProxyHandler(server: SMTPServer, handler: ProxyHandler): void {
  server._handleProxy = handler;
}

// ── one connection ───────────────────────────────────────────────────────────────────────

/**
 * Seam `init`: smtp-server's SMTPConnection.init() (3.21.6) with the greeting wait handed to
 * `wait`, in place of its hard-coded 100 ms early-talker wait. `wait` calls `greet` to run
 * onConnect and send the 220 (or never, to refuse the connection). smtp-server's own
 * maxClients check is kept as it was.
 */
export function replaceGreetingWait(conn: ClientConnection, wait: (greet: () => void) => void): void {
  const c = lib(conn);
  c.init = () =>
    c._setListeners(() => {
      const max = c._server.options.maxClients;
      if (max && c._server.connections.size > max) return c.send(421, `${c.name} Too many connected clients, try again in a moment`, false);
      wait(() => c.connectionReady());
    });
}

export type CommandDispatch = (command: Buffer, callback?: () => void) => void;

/**
 * Seam `_onCommand`: smtp-server looks it up on the connection for every command line (and
 * every line of an AUTH exchange). Installs `handler` in its place and returns smtp-server's
 * own, which the handler calls to let a line through.
 */
export function replaceCommandHandler(conn: ClientConnection, handler: CommandDispatch): CommandDispatch {
  const c = lib(conn);
  const dispatch = c._onCommand.bind(c);
  c._onCommand = handler;
  return dispatch;
}

export type AddressParse = (name: string, command: string) => ParsedAddress;

/** Seam `_parseAddressCommand`: how smtp-server parses the path and parameters of MAIL/RCPT. */
export function replaceAddressParser(conn: ClientConnection, wrap: (parse: AddressParse) => AddressParse): void {
  const c = lib(conn);
  const parse: AddressParse = c._parseAddressCommand.bind(c);
  c._parseAddressCommand = wrap(parse);
}

export type Send = (code: number, data: string | string[], context?: string | false) => void;

/**
 * Seam `send`: every reply smtp-server writes, with its context (e.g. "MAIL_FROM_OK") that picks
 * the enhanced status code. Installs `send` in its place and returns smtp-server's own.
 */
export function replaceSend(conn: ClientConnection, send: Send): Send {
  const c = lib(conn);
  const original: Send = c.send.bind(c);
  c.send = send;
  return original;
}

/**
 * Seam `_createParser` (and `_parser`): `setUp` runs on the connection's parser now and on each
 * one smtp-server creates later (after STARTTLS), before it reads a byte.
 */
export function onEachParser(conn: ClientConnection, setUp: (parser: CommandParser) => void): void {
  const c = lib(conn);
  if (c._parser) setUp(c._parser);
  const create = c._createParser.bind(c);
  c._createParser = () => {
    const parser = create();
    setUp(parser);
    return parser;
  };
}

/**
 * Seam `_write` (and `_dataMode`): `observe` sees every read from the client before the parser
 * does, with whether the parser is in DATA mode at that moment.
 */
export function observeReads(parser: CommandParser, observe: (chunk: Buffer, dataMode: boolean) => void, parsed: () => void): void {
  const write = parser._write.bind(parser);
  parser._write = (chunk: Buffer, encoding, done) => {
    observe(chunk, parser._dataMode);
    // The parser calls back once it has answered every command in the chunk and reads again.
    write(chunk, encoding, (err?: Error | null) => {
      parsed();
      done(err);
    });
  };
}

/** smtp-server is closing, or has closed, the connection. */
export function isClosing(conn: ClientConnection): boolean {
  const c = lib(conn);
  return c._closing || c._closed;
}

/** The parser is reading a message (between DATA's 354 and the final dot). */
export function inDataMode(conn: ClientConnection): boolean {
  const parser = lib(conn)._parser;
  return parser !== false && parser._dataMode;
}

/** STARTTLS was accepted and the socket is being wrapped for TLS. */
export function isUpgrading(conn: ClientConnection): boolean {
  return lib(conn)._upgrading;
}

/** The next line answers a 334 challenge (an AUTH exchange), it is not a command. */
export function inSaslExchange(conn: ClientConnection): boolean {
  return Boolean(lib(conn)._nextHandler);
}

/** Ends the AUTH exchange under way: the next line is a command again (RFC 4954 §4). */
export function endSaslExchange(conn: ClientConnection): void {
  lib(conn)._nextHandler = false;
}

/** The client's socket (a TLSSocket after STARTTLS). */
export function clientSocket(conn: ClientConnection): Writable {
  return lib(conn)._socket;
}

/** The enhanced status code smtp-server's own table gives a reply ('' when it has none). */
export function libraryEnhancedCode(conn: ClientConnection, code: number, context?: string | false): string {
  return lib(conn)._getEnhancedStatusCode(code, context);
}

// ── the DATA parser ──────────────────────────────────────────────────────────────────────

/** The DATA-mode state of one parser, as a replacement DATA parser reads and updates it. */
export interface DataModeState {
  /** The message stream of the DATA under way. */
  readonly stream: NonNullable<SMTPStream['_dataStream']>;
  /** The last few input bytes held back from the previous read (`_lastBytes`), now taken. */
  takeKept(): Buffer | false;
  keep(bytes: Buffer): void;
  /** No byte of the message has been consumed yet. */
  readonly atStart: boolean;
  leaveStart(): void;
  /** Counts message bytes (smtp-server's size check and `byteLength`). */
  count(bytes: number): void;
  /** Ends data mode: `last` is the message's last piece, `rest` goes back to command parsing. */
  end(last: Buffer | false, rest: Buffer, done: (err?: Error | null) => void): void;
}

class ParserDataMode implements DataModeState {
  readonly #parser: SMTPStream;
  constructor(parser: SMTPStream) {
    this.#parser = parser;
  }
  get stream(): NonNullable<SMTPStream['_dataStream']> {
    // Only asked in data mode, which always has a stream.
    return this.#parser._dataStream!;
  }
  takeKept(): Buffer | false {
    const kept = this.#parser._lastBytes;
    this.#parser._lastBytes = false;
    return kept;
  }
  keep(bytes: Buffer): void {
    this.#parser._lastBytes = bytes;
  }
  get atStart(): boolean {
    return this.#parser._atDataStart;
  }
  leaveStart(): void {
    this.#parser._atDataStart = false;
  }
  count(bytes: number): void {
    this.#parser._countDataBytes(bytes);
  }
  end(last: Buffer | false, rest: Buffer, done: (err?: Error | null) => void): void {
    this.#parser._endDataMode(last, rest, done);
  }
}

export type DataFeed = (state: DataModeState, chunk: Buffer, done: (err?: Error | null) => void) => void;

/**
 * Seam `_feedDataStream`: the method SMTPStream runs for each read in data mode; it looks it up
 * on the instance each time, so replacing it on one parser changes nothing else.
 */
export function replaceDataFeed(parser: CommandParser, feed: DataFeed): void {
  const state = new ParserDataMode(parser);
  parser._feedDataStream = (chunk, done) => feed(state, chunk, done);
}

// ── the startup check ────────────────────────────────────────────────────────────────────

/** The installed smtp-server's version, from its package.json. */
export function installedSmtpServerVersion(): string {
  const pkg = createRequire(import.meta.url)('smtp-server/package.json') as { version?: unknown };
  return String(pkg.version);
}

interface MethodSeam {
  readonly owner: 'SMTPServer' | 'SMTPConnection' | 'SMTPStream';
  readonly name: string;
  /** The declared parameter count (Function.length) the seam was written against. */
  readonly arity: number;
}

/** Every private method the seams above replace or call, with its 3.21.6 parameter count. */
const METHOD_SEAMS: readonly MethodSeam[] = [
  { owner: 'SMTPServer', name: '_handleProxy', arity: 2 },
  { owner: 'SMTPConnection', name: 'init', arity: 0 },
  { owner: 'SMTPConnection', name: '_setListeners', arity: 1 },
  { owner: 'SMTPConnection', name: 'connectionReady', arity: 1 },
  { owner: 'SMTPConnection', name: '_onCommand', arity: 2 },
  { owner: 'SMTPConnection', name: '_parseAddressCommand', arity: 2 },
  { owner: 'SMTPConnection', name: 'send', arity: 3 },
  { owner: 'SMTPConnection', name: 'close', arity: 0 },
  { owner: 'SMTPConnection', name: '_createParser', arity: 0 },
  { owner: 'SMTPConnection', name: '_getEnhancedStatusCode', arity: 2 },
  { owner: 'SMTPStream', name: '_write', arity: 3 },
  { owner: 'SMTPStream', name: '_feedDataStream', arity: 2 },
  { owner: 'SMTPStream', name: '_countDataBytes', arity: 1 },
  { owner: 'SMTPStream', name: '_endDataMode', arity: 3 },
  { owner: 'SMTPStream', name: 'continue', arity: 0 },
];

/** The parser's fields the seams read or set, with the value a new parser starts with. */
const PARSER_FIELDS: Readonly<Record<string, unknown>> = { _dataMode: false, _dataStream: null, _atDataStart: false, _lastBytes: false };

export interface SeamTargets {
  readonly version: string;
  readonly prototypes: Readonly<Record<MethodSeam['owner'], object>>;
  /** A parser as smtp-server creates it. */
  readonly parser: object;
  /** A server as smtp-server creates it. */
  readonly server: object;
}

/** The installed library, as the probe sees it; `server` defaults to a new one, never listened on. */
export function installedSeamTargets(server: SMTPServer = new SMTPServer({ logger: false })): SeamTargets {
  return {
    version: installedSmtpServerVersion(),
    prototypes: { SMTPServer: SMTPServer.prototype, SMTPConnection: SMTPConnection.prototype, SMTPStream: SMTPStream.prototype },
    parser: new SMTPStream(),
    server,
  };
}

/**
 * What stands between smtpgate and the installed smtp-server: an untested version, a seam
 * method missing or with another parameter count, a field missing. Empty when all is well.
 * Each problem names the seam and the fix.
 */
export function smtpServerProblems(targets: SeamTargets = installedSeamTargets()): string[] {
  const fix = `install the tested version (npm ci, or npm install --save-exact smtp-server@${TESTED_SMTP_SERVER_VERSIONS.at(-1)})`;
  if (!TESTED_SMTP_SERVER_VERSIONS.includes(targets.version)) {
    return [
      `smtp-server ${targets.version} is installed, but smtpgate is tested with smtp-server ${TESTED_SMTP_SERVER_VERSIONS.join(', ')} only: ` +
        `it relies on the library's internals (src/listener/smtp-server-seams.ts). Fix: ${fix}; to support ${targets.version}, ` +
        'run test/unit/smtp-server-seams.test.ts against it and add it to TESTED_SMTP_SERVER_VERSIONS.',
    ];
  }
  const problems: string[] = [];
  for (const seam of METHOD_SEAMS) {
    const method: unknown = (targets.prototypes[seam.owner] as Record<string, unknown>)[seam.name];
    if (typeof method !== 'function') problems.push(`smtp-server seam ${seam.owner}.${seam.name} is missing; ${fix}`);
    else if (method.length !== seam.arity) problems.push(`smtp-server seam ${seam.owner}.${seam.name} takes ${method.length} parameters, not ${seam.arity}; ${fix}`);
  }
  for (const [field, initial] of Object.entries(PARSER_FIELDS)) {
    if ((targets.parser as Record<string, unknown>)[field] !== initial) problems.push(`smtp-server seam SMTPStream.${field} is missing or changed (a new parser has ${String((targets.parser as Record<string, unknown>)[field])}); ${fix}`);
  }
  if (!((targets.server as { connections?: unknown }).connections instanceof Set)) problems.push(`smtp-server seam SMTPServer.connections is not a Set; ${fix}`);
  return problems;
}

/**
 * Refuses to go on with an smtp-server the seams don't fit (see `smtpServerProblems`): run on
 * each server before a seam is installed on it.
 */
export function assertSmtpServerSeams(server: SMTPServer): void {
  const problems = smtpServerProblems(installedSeamTargets(server));
  if (problems.length > 0) throw new Error(problems.join('\n'));
}
