/**
 * The metrics/admin HTTP endpoint: /metrics for Prometheus, /healthz (alive), /readyz (ready
 * to take traffic). Bound to 127.0.0.1 by default.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
/** A registry, or the cluster aggregator: whatever produces the exposition text. */
export interface MetricsSource {
  metrics(): Promise<string>;
  readonly contentType: string;
}

export interface Readiness {
  ready: boolean;
  reasons: string[];
}

export interface AdminServerOptions {
  host: string;
  port: number;
  registry: MetricsSource;
  /** A cluster primary asks its workers, so this may take a (bounded) while. */
  readiness: () => Readiness | Promise<Readiness>;
  /** More routes (e.g. /limits); each returns true when it handled the request. */
  routes?: ReadonlyArray<(req: http.IncomingMessage, res: http.ServerResponse) => boolean>;
}

export async function startAdminServer(opts: AdminServerOptions): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    for (const route of opts.routes ?? []) if (route(req, res)) return;
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (url === '/metrics') {
      opts.registry.metrics().then(
        (body) => res.writeHead(200, { 'content-type': opts.registry.contentType }).end(body),
        (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics collection failed: ${err.message}\n`),
      );
      return;
    }
    if (url === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}\n');
      return;
    }
    if (url === '/readyz') {
      Promise.resolve()
        .then(opts.readiness)
        .then(
          (r) => res.writeHead(r.ready ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify({ status: r.ready ? 'ready' : 'not_ready', reasons: r.reasons }) + '\n'),
          (err: Error) => res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ status: 'not_ready', reasons: [`readiness check failed: ${err.message}`] }) + '\n'),
        );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics, /healthz or /readyz\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

export function boundPort(server: { address(): AddressInfo | string | null }): number {
  const a = server.address();
  return a && typeof a === 'object' ? a.port : 0;
}
