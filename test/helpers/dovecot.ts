/**
 * A real Dovecot auth service for the dovecot source's tests, in a temporary directory: no
 * mail protocols (`protocols =`), only `service auth` with its auth-client socket in the
 * directory and an inet_listener on a free loopback port, and the same twice for lookups (the
 * auth-userdb socket and an `inet_listener auth-userdb`). Users come from a passwd-file;
 * a `deny = yes` passdb makes accounts disabled (FAIL code=user_disabled), and a checkpassword
 * script that exits 111 makes chosen logins fail temporarily (FAIL code=temp_fail).
 *
 * Needs root (Dovecot's master drops to the package's `dovecot` and `dovenull` users) and the
 * Debian dovecot-core package.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { createLogger } from '../../src/logging/logger.js';
import { onTestFinished } from 'vitest';
import { DovecotAuthenticator } from '../../src/auth/dovecot-source.js';
import { authSection } from '../../src/config/auth-section.js';
import { deadPort } from './sessions.js';

const run = promisify(execFile);

export const DOVECOT = '/usr/sbin/dovecot';

export interface DovecotUser {
  readonly password: string;
  /** How the passwd-file stores it; PLAIN by default. The hashes are made with `doveadm pw`. */
  readonly scheme?: 'PLAIN' | 'SHA512-CRYPT' | 'BLF-CRYPT';
  /** Dovecot's `nologin` extra field: the password is right, but the user may not log in. */
  readonly nologin?: boolean;
  /** More extra fields for the passdb, as the passwd-file writes them ("proxy host=… pass=…"). */
  readonly fields?: string;
}

export interface DovecotOptions {
  readonly users: Readonly<Record<string, DovecotUser>>;
  /** Logins listed in a `deny = yes` passdb: refused as disabled whatever the password. */
  readonly disabled?: readonly string[];
  /** Logins (not in `users`) whose lookup fails temporarily: checkpassword exits 111. */
  readonly tempFail?: readonly string[];
  /**
   * A passwd-file userdb on the users file, as a deployment with a userdb of its own has.
   * Without it, Dovecot's default userdb (static) asks the passdb whether a user exists.
   */
  readonly userdb?: boolean;
  /** auth_mechanisms; "plain login" by default. */
  readonly mechanisms?: string;
  /**
   * auth_failure_delay; 0 by default, so a wrong password is answered within Dovecot's
   * 500 ms failure-queue tick rather than after the 2 s production default.
   */
  readonly failureDelay?: string;
}

export interface TestDovecot {
  readonly dir: string;
  /** The auth-client unix socket. */
  readonly socketPath: string;
  /** The auth service's inet_listener on 127.0.0.1. */
  readonly port: number;
  /** The auth-userdb unix socket (mode 0600: full lookup rights for root, which the tests run as). */
  readonly userdbSocketPath: string;
  /** The `inet_listener auth-userdb` on 127.0.0.1. */
  readonly userdbPort: number;
  /** Dovecot's log file, as written so far. */
  log(): Promise<string>;
  /** SIGKILL to every Dovecot process (a crash); resolves when the master has exited. */
  kill(): Promise<void>;
  /** SIGSTOP / SIGCONT to every Dovecot process: sockets stay open, nothing answers. */
  freeze(): void;
  thaw(): void;
  /** Starts it again with the same config, socket and port, once accepting. */
  start(): Promise<void>;
  /** Stops it and removes the directory. */
  stop(): Promise<void>;
}

export async function startDovecot(opts: DovecotOptions): Promise<TestDovecot> {
  if (process.getuid?.() !== 0) throw new Error('a test Dovecot needs root: its master runs as root and drops to the dovecot/dovenull users');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-dovecot-'));
  // The auth process runs as the `dovecot` user and reads the passwd-files: it must reach them.
  await chmod(dir, 0o755);
  const port = await deadPort();
  const userdbPort = await deadPort();
  const conf = path.join(dir, 'dovecot.conf');
  const usersFile = path.join(dir, 'users');
  const deniedFile = path.join(dir, 'denied');
  const checkpassword = path.join(dir, 'checkpassword.sh');
  const logFile = path.join(dir, 'dovecot.log');
  const socketPath = path.join(dir, 'run', 'auth-client');
  const userdbSocketPath = path.join(dir, 'run', 'auth-userdb');

  await writeFile(
    conf,
    `# smtpgate test Dovecot: the auth service only.
base_dir = ${dir}/run
state_dir = ${dir}/state
protocols =
listen = 127.0.0.1
ssl = no
log_path = ${logFile}
auth_verbose = yes
default_internal_user = dovecot
default_login_user = dovenull
auth_mechanisms = ${opts.mechanisms ?? 'plain login'}
auth_failure_delay = ${opts.failureDelay ?? '0'}
passdb {
  driver = passwd-file
  args = ${deniedFile}
  deny = yes
}
passdb {
  driver = passwd-file
  args = ${usersFile}
}
${
  opts.tempFail?.length
    ? `passdb {
  driver = checkpassword
  args = ${checkpassword}
  # Only these logins reach it: anyone else would cost a fork per failed sign-in.
  username_filter = ${opts.tempFail.join(' ')}
}
`
    : ''
}${
  opts.userdb
    ? `userdb {
  driver = passwd-file
  args = ${usersFile}
}
`
    : ''
}service auth {
  unix_listener auth-client {
    mode = 0666
  }
  inet_listener {
    address = 127.0.0.1
    port = ${port}
  }
  # Not 0666: on a 0666 socket Dovecot allows passdb lookups only to its owner and group.
  unix_listener auth-userdb {
    mode = 0600
  }
  # Dovecot tells an inet listener's protocol by its name.
  inet_listener auth-userdb {
    address = 127.0.0.1
    port = ${userdbPort}
  }
}
`,
  );
  const lines: string[] = [];
  for (const [name, user] of Object.entries(opts.users)) {
    const scheme = user.scheme ?? 'PLAIN';
    const stored = scheme === 'PLAIN' ? `{PLAIN}${user.password}` : (await run('doveadm', ['-c', conf, 'pw', '-s', scheme, '-p', user.password])).stdout.trim();
    const fields = [...(user.nologin ? ['nologin reason=moved'] : []), ...(user.fields ? [user.fields] : [])];
    lines.push(`${name}:${stored}::::::${fields.map((f) => ` ${f}`).join('')}`);
  }
  await writeFile(usersFile, `${lines.join('\n')}\n`, { mode: 0o644 });
  await writeFile(deniedFile, (opts.disabled ?? []).map((n) => `${n}\n`).join(''), { mode: 0o644 });
  // checkpassword reads "login\0password\0" on fd 3; 111 is "temporary failure", 1 "wrong".
  const temp = (opts.tempFail ?? []).map((n) => `  ${n}) exit 111 ;;\n`).join('');
  await writeFile(checkpassword, `#!/bin/sh\nlogin=$(head -c 1024 <&3 | tr '\\0' '\\n' | head -n 1)\ncase "$login" in\n${temp}esac\nexit 1\n`, { mode: 0o755 });

  const listeners = [{ path: socketPath }, { host: '127.0.0.1', port }, { path: userdbSocketPath }, { host: '127.0.0.1', port: userdbPort }];
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let output = '';

  const log = () => readFile(logFile, 'utf8').catch(() => '');

  const start = async () => {
    output = '';
    // Its own process group (detached), so kill/freeze reach the auth process too.
    const c = spawn(DOVECOT, ['-F', '-c', conf], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    c.stdout!.on('data', (b: Buffer) => (output += b.toString()));
    c.stderr!.on('data', (b: Buffer) => (output += b.toString()));
    exited = new Promise((resolve) => c.once('exit', () => resolve()));
    let gone = false;
    void exited.then(() => (gone = true));
    // The master binds every listener before it forks the auth process, which it does on the
    // first connection: accepting on all of them is "ready".
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (gone) throw new Error(`dovecot exited before it was ready:\n${output}\n${await log()}`);
      if ((await Promise.all(listeners.map(accepts))).every(Boolean)) return;
      if (Date.now() > deadline) throw new Error(`dovecot did not accept on ${socketPath}, ${userdbSocketPath} and 127.0.0.1:${port}/${userdbPort} within 15 s:\n${output}\n${await log()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  const signalGroup = (signal: NodeJS.Signals) => {
    if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) process.kill(-child.pid, signal);
  };

  const kill = async () => {
    const group = child?.pid;
    // SIGKILL ends stopped processes too; a SIGCONT first would let a frozen Dovecot answer
    // what it holds before it dies.
    signalGroup('SIGKILL');
    await exited;
    // Its other processes die a moment later. Until the config process is gone, its socket
    // still accepts, and a Dovecot started now refuses to start ("Socket already exists").
    const gone = Date.now() + 15_000;
    while (group !== undefined && (await runningInGroup(group)) > 0) {
      if (Date.now() > gone) throw new Error(`dovecot's processes (group ${group}) still run 15 s after it was killed`);
      await new Promise((r) => setTimeout(r, 20));
    }
    // The master is gone, but the auth process may hold the listening sockets a moment longer
    // (a killed process exits asynchronously), and a connection would then be reset rather
    // than refused: down is when nothing accepts any more.
    const deadline = Date.now() + 15_000;
    while ((await Promise.all(listeners.map(accepts))).some(Boolean)) {
      if (Date.now() > deadline) throw new Error('dovecot\'s listeners still accept 15 s after it was killed');
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  try {
    await start();
  } catch (err) {
    await kill();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }

  return {
    dir,
    socketPath,
    port,
    userdbSocketPath,
    userdbPort,
    log,
    kill,
    freeze: () => signalGroup('SIGSTOP'),
    thaw: () => signalGroup('SIGCONT'),
    start,
    stop: async () => {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** How many processes of a process group still run (a zombie holds no socket: not counted). Linux /proc. */
async function runningInGroup(group: number): Promise<number> {
  let n = 0;
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    // "pid (comm) state ppid pgrp ...": comm may hold anything, so read from its last ')'.
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (state !== undefined && state !== 'Z' && Number(pgrp) === group) n++;
  }
  return n;
}

/** Does something accept a connection there (then closed at once)? */
function accepts(target: { path: string } | { host: string; port: number }): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection(target);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export const FAKE_HANDSHAKE = 'VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t4242\nCUID\t1\nCOOKIE\t0123456789abcdef0123456789abcdef\nDONE\n';
/** The auth-userdb socket's handshake, as Dovecot 2.3 sends it. */
export const FAKE_MASTER_HANDSHAKE = 'VERSION\t1\t1\nSPID\t4242\n';

export interface FakeDovecot {
  readonly port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Every line clients sent, in order, across connections. */
  readonly received: readonly string[];
  close(): Promise<void>;
}

/**
 * A stand-in auth server on loopback for what a real Dovecot won't do: it sends `handshake`
 * on connect, then hands each AUTH line to `onAuth` and each PASS or USER lookup to
 * `onLookup`, with the request's id, to answer (or not) on the socket as the test wants.
 */
export async function startFakeDovecot(
  opts: { handshake?: string; onAuth?: (id: string, line: string, socket: net.Socket) => void; onLookup?: (id: string, line: string, socket: net.Socket) => void } = {},
): Promise<FakeDovecot> {
  const received: string[] = [];
  const sockets = new Set<net.Socket>();
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket)).on('error', () => undefined);
    socket.write(opts.handshake ?? FAKE_HANDSHAKE);
    let buffered = '';
    socket.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('utf8');
      let lf: number;
      while ((lf = buffered.indexOf('\n')) !== -1) {
        const line = buffered.slice(0, lf);
        buffered = buffered.slice(lf + 1);
        received.push(line);
        if (line.startsWith('AUTH\t')) opts.onAuth?.(line.split('\t')[1]!, line, socket);
        if (line.startsWith('PASS\t') || line.startsWith('USER\t')) opts.onLookup?.(line.split('\t')[1]!, line, socket);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    get connections() {
      return connections;
    },
    received,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * A dovecot source built from an `auth.dovecot` section, the way the config file gives it,
 * closed when the test ends; its log lines (at debug) are kept for `logs()`.
 */
export function dovecotSource(section: Record<string, unknown>): { source: DovecotAuthenticator; logs: () => string } {
  const config = authSection('/').parse({ backend: 'dovecot', dovecot: section }).dovecot!;
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  const s = new DovecotAuthenticator(config, { log: createLogger({ level: 'debug', format: 'json', destination: sink }) });
  onTestFinished(() => s.close());
  return { source: s, logs: () => JSON.stringify(lines) };
}
