/**
 * Haraka with `queue/smtp_proxy`: the design smtpgate's relay copies (one backend connection
 * per transaction, opened at MAIL FROM, replies passed back). Installed by the bench with
 * `npm install --prefix <tmp> Haraka` — never a dependency of smtpgate — and run as
 * `node <tmp>/node_modules/Haraka/bin/haraka -c <config dir>`, as one process (`nodes=0`; unset,
 * Haraka forks a cluster master plus one worker, and the master hands each connection over),
 * like nginx (`master_process off`) and smtpgate.
 *
 * Plugins: `rcpt_to.in_host_list` (corp.test is a local domain, which is what lets the
 * recipients through: smtp_proxy only forwards a RCPT that a rcpt plugin accepted),
 * `queue/smtp_proxy` (host/port = the sink), `tls` (STARTTLS for W6; its dhparams.pem is made
 * once per bench run, or Haraka would run `openssl dhparam 2048` at every start, beside the
 * load), and a two-line local
 * plugin that answers the reverse-DNS hook itself: Haraka looks up every client's PTR record,
 * which would send the bench's traffic to the resolver, and smtpgate (disableReverseLookup)
 * and nginx (no `resolver`) don't look either.
 */
import { access, copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import { spawnChild, freePort, waitForPort } from '../lib/processes.js';
import type { Peer, PeerContext, RunningPeer, Unavailable } from './peer.js';

const INSTALL_TIMEOUT_MS = 5 * 60_000;
const run = promisify(execFile);

export class HarakaPeer implements Peer {
  readonly id = 'haraka' as const;
  #home: string | undefined;
  #dhparams: string | undefined;
  #version = 'Haraka';
  /** An existing `npm install --prefix DIR Haraka` to reuse (--haraka-dir), instead of a fresh install. */
  readonly #given: string | undefined;

  constructor(existingPrefix?: string) {
    this.#given = existingPrefix;
  }

  get description(): string {
    return `${this.#version} (npm), 1 process, rcpt_to.in_host_list + queue/smtp_proxy + tls`;
  }

  async prepare(workDir: string): Promise<Unavailable | undefined> {
    const prefix = this.#given ?? path.join(workDir, 'haraka-install');
    const install = `npm install --prefix ${prefix} Haraka`;
    const home = path.join(prefix, 'node_modules', 'Haraka');
    if (!this.#given) {
      process.stderr.write(`bench: installing Haraka: ${install}\n`);
      const result = await npmInstall(prefix);
      if (result) return { reason: `npm install failed: ${result}`, install };
    }
    try {
      await access(path.join(home, 'bin', 'haraka'));
      const pkg = JSON.parse(await readFile(path.join(home, 'package.json'), 'utf8')) as { version?: string };
      this.#version = `Haraka ${pkg.version ?? '?'}`;
    } catch {
      return { reason: `${home}/bin/haraka not found`, install };
    }
    // -dsaparam: seconds instead of a minute; the parameters are only there to be loaded.
    const dhparams = path.join(workDir, 'haraka-dhparams.pem');
    try {
      await run('openssl', ['dhparam', '-dsaparam', '-out', dhparams, '2048']);
    } catch (err) {
      return { reason: `openssl dhparam failed: ${(err as Error).message}`, install: 'apt-get install openssl' };
    }
    this.#dhparams = dhparams;
    this.#home = home;
    return undefined;
  }

  async start(ctx: PeerContext): Promise<RunningPeer> {
    const home = this.#home;
    const dhparams = this.#dhparams;
    if (!home || !dhparams) throw new Error('Haraka is not prepared');
    const port = await freePort();
    const root = path.join(ctx.dir, 'haraka');
    const config = path.join(root, 'config');
    await mkdir(config, { recursive: true });
    await mkdir(path.join(root, 'plugins'), { recursive: true });
    // Haraka reads whole sections from the local file, so start from its own connection.ini
    // and change only the size limit (W4 sends 50 MB messages; its default is 25 MiB).
    const connectionIni = (await readFile(path.join(home, 'config', 'connection.ini'), 'utf8')).replace(/^bytes=.*$/m, 'bytes=60000000');
    const files: Record<string, string> = {
      'smtp.ini': `listen=127.0.0.1:${port}\nnodes=0\n`,
      me: 'haraka.bench.test\n',
      plugins: 'bench_no_rdns\nrcpt_to.in_host_list\ntls\nqueue/smtp_proxy\n',
      host_list: 'corp.test\n',
      'smtp_proxy.ini': `host=127.0.0.1\nport=${ctx.sinkPort}\n`,
      'connection.ini': connectionIni,
    };
    for (const [name, text] of Object.entries(files)) await writeFile(path.join(config, name), text);
    await copyFile(ctx.tls.cert, path.join(config, 'tls_cert.pem'));
    await copyFile(ctx.tls.key, path.join(config, 'tls_key.pem'));
    await copyFile(dhparams, path.join(config, 'dhparams.pem'));
    await writeFile(
      path.join(root, 'plugins', 'bench_no_rdns.js'),
      `// All bench traffic stays on loopback: answer the reverse-DNS hook without a lookup.\nexports.hook_lookup_rdns = (next, connection) => next(OK, connection.remote.ip)\n`,
    );
    const child = spawnChild('haraka', process.execPath, [path.join(home, 'bin', 'haraka'), '-c', root], { logFile: path.join(ctx.dir, 'haraka.log') });
    await waitForPort(port, child, 30_000);
    return { pid: child.pid, port, startTlsPort: port, stop: () => child.stop(5000) };
  }
}

/** `npm install --prefix DIR Haraka`, bounded in time; resolves with an error text or undefined. */
function npmInstall(prefix: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const proc = spawn('npm', ['install', '--prefix', prefix, 'Haraka', '--no-audit', '--no-fund', '--loglevel=error'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-2000)));
    const timer = setTimeout(() => proc.kill('SIGKILL'), INSTALL_TIMEOUT_MS);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code === 0 ? undefined : `exit ${code}: ${stderr.trim().split('\n').slice(-3).join(' ')}`);
    });
    proc.once('error', (err) => resolve(err.message));
  });
}
