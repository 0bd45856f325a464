/**
 * A real HTTP auth hook for tests (`auth.backend: http`), on a free loopback port: it speaks
 * the protocol documented in src/auth/http-source.ts (sign-ins and lookups, or sign-ins only
 * like a hook written before lookups) from a small directory of users, checks
 * the bearer token when given one, and records every request and TCP connection. A test can
 * make it misbehave (`reply`): any status, headers and body, or no answer at all.
 */
import { once } from 'node:events';
import http, { type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { TestCert } from './pki.js';

export interface HookUser {
  readonly password: string;
  readonly disabled?: boolean;
  /** The canonical login the hook answers with, when it differs from the one typed. */
  readonly canonical?: string;
  readonly addresses?: readonly string[];
  readonly groups?: readonly string[];
}

export interface HookRequest {
  readonly method: string;
  /** The request target as sent (path and query). */
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  /** The raw request line and headers, as received, to check nothing secret is in them. */
  readonly rawHead: string;
  readonly body: string;
  /** Which TCP connection (0, 1, …, in order of opening) carried it. */
  readonly connection: number;
}

/** A made-up answer; `'hang'` never answers (until the hook stops). */
export type HookReply = { readonly status?: number; readonly headers?: Record<string, string>; readonly body?: string | Buffer } | 'hang';

export interface AuthHookOptions {
  readonly users?: Record<string, HookUser>;
  /** When set, every request must carry "Authorization: Bearer <token>", else 401. */
  readonly token?: string;
  /** Serve HTTPS with this certificate; plain HTTP without. */
  readonly tls?: TestCert;
  /** The path the hook answers on (else 404). */
  readonly path?: string;
  /** A fixed port, to start a hook again where a stopped one was. */
  readonly port?: number;
  /**
   * false: a hook written before lookups, which ignores "lookup" and checks the absent
   * password (so it answers a known user's lookup with deny). Default true.
   */
  readonly lookups?: boolean;
}

export interface AuthHook {
  readonly url: string;
  readonly port: number;
  readonly requests: HookRequest[];
  /** TCP connections accepted so far. */
  readonly connectionCount: number;
  /** Overrides the directory's answer while set: return undefined to let the directory answer. */
  reply: ((req: HookRequest) => HookReply | undefined) | undefined;
  /** Resolves once every connection a client opened is closed. */
  allClosed(): Promise<void>;
  stop(): Promise<void>;
}

export async function startAuthHook(opts: AuthHookOptions = {}): Promise<AuthHook> {
  const users = new Map(Object.entries(opts.users ?? {}));
  const hookPath = opts.path ?? '/smtp-auth';
  const requests: HookRequest[] = [];
  const sockets = new Map<Socket, number>();
  const hanging = new Set<ServerResponse>();
  let connectionCount = 0;
  let drained: (() => void) | undefined;

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const rawHead = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n${req.rawHeaders.map((v, i) => (i % 2 ? `${v}\r\n` : `${v}: `)).join('')}`;
      const record: HookRequest = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        rawHead,
        body: Buffer.concat(chunks).toString('utf8'),
        connection: sockets.get(req.socket) ?? -1,
      };
      requests.push(record);
      const made = hook.reply?.(record);
      if (made === 'hang') {
        hanging.add(res);
        return;
      }
      const answer = made ?? directoryAnswer(record);
      res.writeHead(answer.status ?? 200, { 'content-type': 'application/json', ...answer.headers });
      res.end(answer.body ?? '');
    });
  };

  const directoryAnswer = (req: HookRequest): Exclude<HookReply, 'hang'> => {
    if (opts.token !== undefined && req.headers.authorization !== `Bearer ${opts.token}`) return { status: 401, body: '{"error":"bad token"}' };
    if (req.method !== 'POST' || req.url !== hookPath) return { status: 404, body: '{"error":"not found"}' };
    if (!/^application\/json/.test(req.headers['content-type'] ?? '')) return { status: 415, body: '{"error":"expected JSON"}' };
    const ask = JSON.parse(req.body) as { user: string; password?: string; lookup?: boolean };
    const user = users.get(ask.user);
    const json = (o: object) => ({ body: JSON.stringify(o) });
    if (!user) return json({ result: 'unknown' });
    const lookup = ask.lookup === true && opts.lookups !== false;
    if (!lookup && user.password !== ask.password) return json({ result: 'deny', reason: 'wrong password' });
    if (user.disabled) return json({ result: 'disabled', reason: 'account locked' });
    return json({
      result: 'allow',
      ...(user.canonical ? { user: user.canonical } : {}),
      ...(user.addresses ? { addresses: user.addresses } : {}),
      ...(user.groups ? { groups: user.groups } : {}),
    });
  };

  const server = opts.tls ? https.createServer({ cert: opts.tls.cert, key: opts.tls.key }, handle) : http.createServer(handle);
  server.on('connection', (socket: Socket) => {
    sockets.set(socket, connectionCount++);
    socket.on('close', () => {
      sockets.delete(socket);
      if (sockets.size === 0) drained?.();
    });
  });
  server.listen(opts.port ?? 0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;

  const hook: AuthHook = {
    url: `${opts.tls ? 'https' : 'http'}://localhost:${port}${hookPath}`,
    port,
    requests,
    get connectionCount() {
      return connectionCount;
    },
    reply: undefined,
    allClosed() {
      if (sockets.size === 0) return Promise.resolve();
      return new Promise((resolve) => (drained = resolve));
    },
    async stop() {
      const closed = new Promise((resolve) => server.close(resolve));
      for (const res of hanging) res.destroy();
      for (const socket of sockets.keys()) socket.destroy();
      await closed;
    },
  };
  return hook;
}
