/**
 * nginx's mail proxy (Debian `nginx-light` + `libnginx-mod-mail`), one process
 * (`daemon off; master_process off`) from a temporary prefix, as root, on loopback ports; for
 * a workload with several processes, a master and that many worker processes (each with its
 * own accept loop on the shared listening socket; `accept_mutex` is off by default).
 *
 * The mail module needs an auth_http server even for `smtp_auth none`; the bench runs a tiny
 * Node responder (nginx-auth-http.ts) that points every session at the sink. nginx then sends
 * XCLIENT, HELO, MAIL and RCPT to the sink and, from there on, copies bytes both ways.
 */
import { access, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnChild, freePort, waitForPort, NOFILE } from '../lib/processes.js';
import type { Peer, PeerContext, RunningPeer, Unavailable } from './peer.js';

const NGINX = '/usr/sbin/nginx';
const MAIL_MODULE = '/usr/lib/nginx/modules/ngx_mail_module.so';
export const NGINX_INSTALL = 'apt-get install nginx-light libnginx-mod-mail';
const AUTH_HTTP = path.join(path.dirname(fileURLToPath(import.meta.url)), 'nginx-auth-http.js');

export class NginxPeer implements Peer {
  readonly id = 'nginx' as const;
  #version = 'nginx';

  get description(): string {
    return `${this.#version} mail proxy, 1 process (W2-2proc: master + 2 worker processes), smtp_auth none + Node auth_http responder, xclient on`;
  }

  async prepare(): Promise<Unavailable | undefined> {
    for (const file of [NGINX, MAIL_MODULE]) {
      try {
        await access(file);
      } catch {
        return { reason: `${file} not found`, install: NGINX_INSTALL };
      }
    }
    this.#version = await new Promise<string>((resolve) =>
      execFile(NGINX, ['-v'], (_err, stdout, stderr) => resolve((stderr || stdout).replace(/^nginx version:\s*/, '').trim() || 'nginx')),
    );
    return undefined;
  }

  async start(ctx: PeerContext): Promise<RunningPeer> {
    const port = await freePort();
    const startTlsPort = await freePort();
    const authPort = await freePort();
    const errorLog = path.join(ctx.dir, 'nginx-error.log');
    const conf = path.join(ctx.dir, 'nginx.conf');
    await writeFile(
      conf,
      `load_module ${MAIL_MODULE};
daemon off;
master_process ${(ctx.processes ?? 1) > 1 ? 'on' : 'off'};
worker_processes ${ctx.processes ?? 1};
pid ${path.join(ctx.dir, 'nginx.pid')};
error_log ${errorLog} warn;
worker_rlimit_nofile ${NOFILE};
events {
  worker_connections ${NOFILE};
}
mail {
  server_name nginx.bench.test;
  auth_http 127.0.0.1:${authPort}/auth;
  xclient on;
  server {
    listen 127.0.0.1:${port};
    protocol smtp;
    smtp_auth none;
  }
  server {
    listen 127.0.0.1:${startTlsPort};
    protocol smtp;
    smtp_auth none;
    starttls on;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate ${ctx.tls.cert};
    ssl_certificate_key ${ctx.tls.key};
  }
}
`,
    );
    const auth = spawnChild('nginx auth_http', process.execPath, [AUTH_HTTP, String(authPort), String(ctx.sinkPort)], {
      logFile: path.join(ctx.dir, 'auth-http.log'),
    });
    const nginx = spawnChild('nginx', NGINX, ['-p', `${ctx.dir}/`, '-c', conf, '-e', errorLog], { logFile: path.join(ctx.dir, 'nginx.out') });
    try {
      await waitForPort(authPort, auth);
      await waitForPort(port, nginx);
      await waitForPort(startTlsPort, nginx);
    } catch (err) {
      await Promise.all([nginx.stop(), auth.stop()]);
      throw err;
    }
    return {
      pid: nginx.pid,
      port,
      startTlsPort,
      stop: async () => {
        await Promise.all([nginx.stop(), auth.stop()]);
      },
    };
  }
}
