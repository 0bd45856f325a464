/**
 * A real rsyslogd (Debian `rsyslog`, `rsyslog-gnutls`) in a temp folder, for the log.syslog
 * tests: UDP, TCP and TLS inputs on free loopback ports, each written to its own file with a
 * template that shows what arrived: PRI, facility, severity, APP-NAME, PROCID,
 * STRUCTURED-DATA and MSG. `restart()` brings it back on the same ports after `stop()`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { deadPort } from './sessions.js';
import type { TestCert } from './pki.js';

export const RSYSLOGD = '/usr/sbin/rsyslogd';

export interface ReceivedLine {
  readonly pri: number;
  readonly facility: string;
  readonly severity: string;
  readonly appName: string;
  readonly procId: string;
  readonly structuredData: string;
  /** MSG: smtpgate's JSON line. */
  readonly json: Record<string, unknown>;
}

export interface Rsyslog {
  readonly ports: { readonly udp: number; readonly tcp: number; readonly tls: number };
  /** What each input received so far. */
  received(input: 'udp' | 'tcp' | 'tls'): ReceivedLine[];
  stop(): Promise<void>;
  restart(): Promise<void>;
}

const SEEN = '%pri% %syslogfacility-text% %syslogseverity-text% %app-name% %procid% %structured-data% %msg%\\n';

/** `server`: the TLS input's certificate (signed by a CA the test gives smtpgate). */
export async function startRsyslog(server: TestCert): Promise<Rsyslog> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-rsyslog-'));
  await mkdir(path.join(dir, 'work'));
  const ports = { udp: await deadPort(), tcp: await deadPort(), tls: await deadPort() };
  const conf = path.join(dir, 'rsyslog.conf');
  await writeFile(
    conf,
    `global(workDirectory="${dir}/work")
module(load="imudp")
module(load="imtcp")
template(name="seen" type="string" string="${SEEN}")
ruleset(name="udp") { action(type="omfile" file="${dir}/udp.log" template="seen") }
ruleset(name="tcp") { action(type="omfile" file="${dir}/tcp.log" template="seen") }
ruleset(name="tls") { action(type="omfile" file="${dir}/tls.log" template="seen") }
input(type="imudp" address="127.0.0.1" port="${ports.udp}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="${ports.tcp}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="${ports.tls}" ruleset="tls" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon"
      streamDriver.CertFile="${server.certFile}" streamDriver.KeyFile="${server.keyFile}")
`,
  );
  const pidFile = path.join(dir, 'rsyslogd.pid');
  let child: ChildProcess | undefined;
  let output = '';

  const start = async () => {
    output = '';
    const c = spawn(RSYSLOGD, ['-n', '-f', conf, '-i', pidFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    c.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    c.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    // rsyslogd announces nothing when its inputs listen: the TCP ones accepting a connection
    // is the sign (the inputs start together).
    const deadline = Date.now() + 10_000;
    for (const port of [ports.tcp, ports.tls]) {
      while (!(await accepts(port))) {
        if (c.exitCode !== null) throw new Error(`rsyslogd exited with ${c.exitCode}:\n${output}`);
        if (Date.now() > deadline) throw new Error(`rsyslogd did not listen on ${port} within 10 s:\n${output}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  };
  const stop = async () => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill('SIGTERM');
    await gone;
  };
  await start();
  return {
    ports,
    received: (input) => {
      const file = path.join(dir, `${input}.log`);
      if (!existsSync(file)) return [];
      return readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => l !== '')
        .map(parseSeen);
    },
    stop,
    restart: start,
  };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** One line of the "seen" template: SD is "-" or "[...]" (escaped quotes and brackets inside). */
function parseSeen(line: string): ReceivedLine {
  const m = /^(\d+) (\S+) (\S+) (\S+) (\S+) (-|\[(?:[^\]\\]|\\.)*\]) (.*)$/.exec(line);
  if (!m) throw new Error(`rsyslog wrote a line the test can't read: ${line}`);
  return { pri: Number(m[1]), facility: m[2]!, severity: m[3]!, appName: m[4]!, procId: m[5]!, structuredData: m[6]!, json: JSON.parse(m[7]!) as Record<string, unknown> };
}
