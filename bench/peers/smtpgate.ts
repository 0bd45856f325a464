/**
 * smtpgate as the CLI runs it (`node dist/cli/main.js run --config …`), with a generated
 * config: a trusted plaintext listener for smtp-source (127.0.0.1 in trusted networks, no TLS,
 * no AUTH required) and a STARTTLS + AUTH submission listener for W5 and W6.
 *
 * Logging stays at the default level (info: a line per connect, message and close) and goes to
 * a file, as it would to a journal. Health probes stay at their default interval.
 */
import { access, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { spawnChild, freePort, waitForPort } from '../lib/processes.js';
import type { Peer, PeerContext, PeerId, RunningPeer, Unavailable } from './peer.js';
import { PLAIN_LIMITS_YAML, POLICY_LIMITS_YAML, writePolicyFiles } from './smtpgate-policy.js';

/** The repository root: bench/dist/peers → ../../.. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const SMTPGATE_MAIN = path.join(REPO_ROOT, 'dist', 'cli', 'main.js');
const PROCESS_OPTIONS = path.join(REPO_ROOT, 'dist', 'cluster', 'process-options.js');

export class SmtpgatePeer implements Peer {
  readonly id: PeerId;
  readonly #policy: boolean;
  /** NODE_OPTIONS as deploy/ sets it (the systemd unit, the image): smtpgate's semi-space. */
  #nodeOptions = '';

  constructor(policy: boolean) {
    this.#policy = policy;
    this.id = policy ? 'smtpgate+policy' : 'smtpgate';
  }

  get description(): string {
    const what = this.#policy
      ? 'smtpgate (dist/cli/main.js), limits on (memory store) + 14 policy rules + sender binding'
      : 'smtpgate (dist/cli/main.js), default config, connection limits lifted, no policy folder';
    return `${what}, NODE_OPTIONS=${this.#nodeOptions} as deploy/ sets it (workers: 2 in W2-2proc, Redis limits store)`;
  }

  async prepare(): Promise<Unavailable | undefined> {
    try {
      await access(SMTPGATE_MAIN);
    } catch {
      return { reason: `${SMTPGATE_MAIN} is missing`, install: 'npm run build' };
    }
    const { SEMI_SPACE_FLAG } = (await import(pathToFileURL(PROCESS_OPTIONS).href)) as { SEMI_SPACE_FLAG: string };
    this.#nodeOptions = SEMI_SPACE_FLAG;
    return undefined;
  }

  async start(ctx: PeerContext): Promise<RunningPeer> {
    const port = await freePort();
    const startTlsPort = await freePort();
    let extra = PLAIN_LIMITS_YAML;
    let attributes = '';
    if (this.#policy) {
      const files = await writePolicyFiles(ctx.dir);
      extra = `${POLICY_LIMITS_YAML}policies: ${files.policies}\n`;
      attributes = `  attributes: ${files.attributes}\n`;
    }
    const workers = ctx.processes ?? 1;
    // More workers need the shared store (the config check insists); its own keys in the local Redis.
    if (workers > 1) extra += `  store: { kind: redis, url: "redis://127.0.0.1:6379", keyPrefix: "bench-${path.basename(ctx.dir)}" }\n`;
    const configFile = path.join(ctx.dir, 'smtpgate.yaml');
    await writeFile(
      configFile,
      `hostname: gate.bench.test
# One process, like nginx (master_process off) and Haraka (nodes=0), unless the workload
# asks for more (W2-2proc: nginx worker_processes 2 too); CPU is read over the process tree.
workers: ${workers}
listeners:
  - name: open
    address: 127.0.0.1:${port}
    tls: none
    requireTls: false
    requireAuth: false
    trusted:
      networks: [127.0.0.0/8]
  - name: submission
    address: 127.0.0.1:${startTlsPort}
    tls: starttls
tls:
  cert: ${ctx.tls.cert}
  key: ${ctx.tls.key}
auth:
${
  ctx.ldap
    ? `  backend: ldap\n  ldap: { url: ${ctx.ldap.url}, ca: ${ctx.ldap.ca}, bindDn: "${ctx.ldap.bindDn}", bindPasswordFile: ${ctx.ldap.bindPasswordFile}, userBase: "${ctx.ldap.userBase}" }\n`
    : `  users: ${ctx.usersFile}\n`
}${ctx.credentialsFile ? `  credentials: ${ctx.credentialsFile}\n` : ''}${ctx.authCache ? '  cache: { ttl: 10m, negativeTtl: 30s }\n' : ''}${attributes}backend:
  address: 127.0.0.1:${ctx.sinkPort}
metrics:
  address: 127.0.0.1:0
log:
  level: ${ctx.logLevel ?? 'info'}
shutdown:
  drainSeconds: 1
${ctx.dkim ? `dkim:\n  spoolDir: ${ctx.dir}\n  domains:\n    - { domain: ${ctx.dkim.domain}, selector: bench, key: ${ctx.dkim.keyFile} }\n` : ''}${extra}`,
    );
    const nodeArgs = [...(ctx.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${ctx.profileDir}`] : []), ...(ctx.nodeArgs ?? [])];
    const logFile = path.join(ctx.dir, 'smtpgate.log');
    const child = spawnChild(this.id, process.execPath, [...nodeArgs, SMTPGATE_MAIN, 'run', '--config', configFile], {
      logFile,
      cwd: ctx.dir,
      // An experiment's NODE_OPTIONS (even an empty one: node's default) replaces deploy/'s.
      env: { ...process.env, NODE_OPTIONS: this.#nodeOptions, ...ctx.env },
    });
    await waitForPort(port, child);
    await waitForPort(startTlsPort, child);
    return {
      pid: child.pid,
      port,
      startTlsPort,
      // Each connection's "connect" line carries the worker's pid (log.level info).
      connectionsPerProcess: async () => {
        const counts = new Map<number, number>();
        for (const m of (await readFile(logFile, 'utf8')).matchAll(/^\{[^\n]*"msg":"connect"[^\n]*$/gm)) {
          const pid = Number(/"pid":(\d+)/.exec(m[0])?.[1]);
          if (pid) counts.set(pid, (counts.get(pid) ?? 0) + 1);
        }
        return counts;
      },
      // SIGTERM drains (a second at most here); the CPU profile is written on that exit.
      stop: () => child.stop(10_000),
    };
  }
}
