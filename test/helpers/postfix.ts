/**
 * A real Postfix smtpd as the "legacy server", in a temporary config directory, following the
 * recipe in DESIGN.md: it listens on one loopback port, trusts XCLIENT from 127.0.0.0/8,
 * discards every message it accepts (nothing is delivered anywhere), and logs to its stdout.
 *
 * Needs root (Postfix's master runs as root) and the Debian postfix package.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { deadPort } from './sessions.js';

const run = promisify(execFile);

export interface Postfix {
  readonly port: number;
  readonly configDir: string;
  /** Everything Postfix logged so far (maillog_file = /dev/stdout). */
  log(): string;
  /** Resolves with the first log line matching `re`, waiting for it to be written. */
  logLine(re: RegExp, what: string, timeoutMs?: number): Promise<string>;
  stop(): Promise<void>;
}

export interface PostfixOptions {
  /** Lines appended to main.cf (a test's own settings, e.g. header_checks); `$CONFIG` stands for the config directory. */
  readonly mainCf?: string;
  /** Files written into the config directory before start, by name (maps the settings refer to). */
  readonly files?: Readonly<Record<string, string>>;
}

export async function startPostfix(opts: PostfixOptions = {}): Promise<Postfix> {
  if (process.getuid?.() !== 0) throw new Error('a test Postfix needs root: its master process runs as root');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-postfix-'));
  const etc = path.join(dir, 'etc');
  const spool = path.join(dir, 'spool');
  const data = path.join(dir, 'data');
  await Promise.all([mkdir(etc), mkdir(spool), mkdir(data)]);
  const uid = Number((await run('id', ['-u', 'postfix'])).stdout.trim());
  await chown(data, uid, -1);
  await chmod(dir, 0o755);

  const port = await deadPort();
  const master = await readFile('/etc/postfix/master.cf', 'utf8');
  // The stock "smtp inet" service, moved to our port and out of the chroot.
  const smtpLine = /^smtp\s+inet\s.*$/m;
  if (!smtpLine.test(master)) throw new Error('/etc/postfix/master.cf has no "smtp inet" line to adapt');
  await writeFile(path.join(etc, 'master.cf'), master.replace(smtpLine, `127.0.0.1:${port} inet n - n - - smtpd`));
  await writeFile(
    path.join(etc, 'main.cf'),
    `compatibility_level = 3.6
queue_directory = ${spool}
data_directory = ${data}
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = legacy.test
mydestination = corp.test
mynetworks = 127.0.0.0/8
# Nothing leaves this Postfix: every accepted message is discarded.
default_transport = discard
local_transport = discard
local_recipient_maps =
smtpd_authorized_xclient_hosts = 127.0.0.0/8
maillog_file = /dev/stdout
${(opts.mainCf ?? '').replaceAll('$CONFIG', etc)}
`,
  );
  for (const [name, text] of Object.entries(opts.files ?? {})) await writeFile(path.join(etc, name), text);

  let output = '';
  const waiters = new Set<() => void>();
  // Postfix opens /dev/stdout by name, which fails (ENXIO) on the socketpair node gives a child
  // for 'pipe': a real pipe into cat is what its logger can open.
  const child: ChildProcess = spawn('sh', ['-c', 'postfix -c "$1" start-fg 2>&1 | cat', 'sh', etc], { stdio: ['ignore', 'pipe', 'pipe'] });
  const onOutput = (c: Buffer) => {
    output += c.toString();
    for (const w of [...waiters]) w();
  };
  child.stdout!.on('data', onOutput);
  child.stderr!.on('data', onOutput);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let hasExited = false;
  void exited.then(() => {
    hasExited = true;
    for (const w of [...waiters]) w();
  });

  const logLine = (re: RegExp, what: string, timeoutMs = 15_000): Promise<string> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error(`Postfix did not log ${what} within ${timeoutMs} ms; its log:\n${output}`)), timeoutMs);
      const finish = (err?: Error, line?: string) => {
        clearTimeout(timer);
        waiters.delete(check);
        if (err) reject(err);
        else resolve(line!);
      };
      const check = () => {
        const line = output.split('\n').find((l) => re.test(l));
        if (line !== undefined) finish(undefined, line);
        else if (hasExited) finish(new Error(`Postfix exited before logging ${what}; its log:\n${output}`));
      };
      waiters.add(check);
      check();
    });

  const stop = async () => {
    if (!hasExited) await stopMaster();
    await rm(dir, { recursive: true, force: true });
  };
  const stopMaster = async () => {
    await run('postfix', ['-c', etc, 'stop']).catch(() => undefined);
    const timer = setTimeout(() => {
      // stop normally ends start-fg at once; never leave a master behind if it doesn't.
      void readFile(path.join(spool, 'pid', 'master.pid'), 'utf8')
        .then((pid) => process.kill(Number(pid.trim()), 'SIGKILL'))
        .catch(() => undefined);
      child.kill('SIGKILL');
    }, 10_000);
    await exited;
    clearTimeout(timer);
  };

  try {
    // master binds its listeners before it logs this line.
    await logLine(/daemon started/, '"daemon started"');
  } catch (err) {
    await stop();
    // Run as root, `postfix -c DIR start-fg` (3.7) needs no alternate_config_directories entry
    // in /etc/postfix/main.cf; should a version insist, say what to change rather than edit it.
    if (/unauthorized configuration directory/.test(output)) {
      throw new Error(`Postfix refuses the config directory ${etc}: add it to alternate_config_directories in /etc/postfix/main.cf\n${output}`);
    }
    throw err;
  }
  return { port, configDir: etc, log: () => output, logLine, stop };
}
