/**
 * Where the log goes, through the real binary and real programs: journald's priority prefix
 * when stdout is the journal, a log file that the real logrotate rotates (SIGUSR1 reopens it, in
 * every cluster process), and a real rsyslogd receiving RFC 5424 over UDP, TCP and TLS, with
 * smtpgate serving mail while it is down. Needs `npm run build` first.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, openSync, closeSync, readFileSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { writeGateFiles, type StartGateOptions } from '../../helpers/gate.js';
import { openListener } from '../../helpers/config.js';
import { CLI, startChildGate, scrapeMetric, type ChildGate } from '../../helpers/child-gate.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';
import { describeWith, findProgram } from '../../helpers/programs.js';
import { deadPort, eventually } from '../../helpers/sessions.js';
import { makeTestCa, issueServerCert, type TestCert } from '../../helpers/pki.js';
import { startRsyslog, type Rsyslog } from '../../helpers/rsyslog.js';

const run = promisify(execFile);

/** One SMTP session: greeting, EHLO, QUIT; each is a "connect" line in the log. */
async function visit(port: number): Promise<void> {
  const c = await SmtpTalk.connect(port);
  try {
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    expect((await c.cmd('QUIT')).code).toBe(221);
  } finally {
    c.close();
  }
}

/** `smtpgate run` with stdout going to `stdout` (an fd); the test reads the log where it goes. */
function spawnGate(configFile: string, stdout: number | 'pipe', env: NodeJS.ProcessEnv = {}): ChildProcess {
  return spawn(process.execPath, [CLI, 'run', '--config', configFile], { stdio: ['ignore', stdout, 'pipe'], env: { ...process.env, ...env } });
}

async function stopGate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGINT');
  await gone;
}

const linesOf = (file: string) => (existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter((l) => l !== '') : []);
const jsonLinesOf = (file: string) => linesOf(file).map((l) => JSON.parse(l) as Record<string, unknown>);

/** A gate on one open listener at a fixed port, so a test that doesn't read stdout knows where to connect. */
async function gateFiles(extra: Partial<StartGateOptions['config']>) {
  const port = await deadPort();
  const files = await writeGateFiles({ backendPort: await deadPort(), listeners: [openListener({ address: `127.0.0.1:${port}` })], logLevel: 'info', config: extra });
  return { ...files, port };
}

test('on the journal (JOURNAL_STREAM is fd 1), format auto prefixes each line with its priority; elsewhere the lines are plain JSON', async () => {
  const { configFile, dir } = await gateFiles({ log: { level: 'info' } });
  const journal = path.join(dir, 'journal');
  await writeFile(journal, '');
  const s = statSync(journal, { bigint: true });
  const fd = openSync(journal, 'a');
  const gate = spawnGate(configFile, fd, { JOURNAL_STREAM: `${s.dev}:${s.ino}` });
  closeSync(fd);
  try {
    await eventually(() => readFileSync(journal, 'utf8').includes('"msg":"smtpgate ready"'), 'smtpgate ready in the journal file', 15_000);
  } finally {
    await stopGate(gate);
  }
  const lines = linesOf(journal);
  const priority = { fatal: 2, error: 3, warn: 4, info: 6, debug: 7, trace: 7 } as Record<string, number>;
  for (const line of lines) {
    const m = /^<(\d)>(\{.*\})$/.exec(line);
    expect(m, line).not.toBeNull();
    expect(Number(m![1]), line).toBe(priority[(JSON.parse(m![2]!) as { level: string }).level]);
  }
  // The open listener's "tls: none" warning and the ready line: both priorities are there.
  expect(lines.some((l) => l.startsWith('<4>'))).toBe(true);
  expect(lines.some((l) => l.startsWith('<6>'))).toBe(true);

  // The same variable with stdout a pipe (a child whose output was redirected): plain JSON.
  const piped = spawnGate(configFile, 'pipe', { JOURNAL_STREAM: `${s.dev}:${s.ino}` });
  let out = '';
  piped.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  try {
    await eventually(() => out.includes('"msg":"smtpgate ready"'), 'smtpgate ready on the pipe', 15_000);
  } finally {
    await stopGate(piped);
  }
  expect(out.split('\n').filter((l) => l !== '').every((l) => l.startsWith('{"level":'))).toBe(true);
});

describeWith(['logrotate', 'redis-server'], 'log.file with the real logrotate', () => {
  /** Rotates `file` once with logrotate (own state and config), postrotate sending SIGUSR1 to `pid`. */
  async function logrotate(file: string, pid: number): Promise<void> {
    const dir = path.dirname(file);
    const conf = path.join(dir, 'logrotate.conf');
    await writeFile(conf, `${file} {\n  rotate 2\n  missingok\n  postrotate\n    /bin/kill -USR1 ${pid}\n  endscript\n}\n`, { mode: 0o644 });
    await run(findProgram('logrotate')!, ['--force', '--state', path.join(dir, 'logrotate.state'), conf]);
  }

  for (const workers of [1, 2]) {
    test(`${workers === 1 ? 'one process' : 'two cluster workers'}: after rotation every process writes to the new file, and no line is lost`, async () => {
      const store = { kind: 'redis' as const, url: 'redis://127.0.0.1:6379', keyPrefix: `log-sinks-${randomUUID().slice(0, 8)}` };
      const { configFile, dir, port } = await gateFiles({ log: { level: 'info', file: 'smtpgate.log' }, ...(workers > 1 ? { workers, limits: { store } } : {}) });
      const file = path.join(dir, 'smtpgate.log');
      const gate = spawnGate(configFile, 'pipe');
      let stdout = '';
      gate.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
      try {
        await eventually(() => jsonLinesOf(file).filter((l) => l.msg === 'smtpgate ready').length === workers, `${workers} "smtpgate ready" in the log file`, 20_000);
        for (let i = 0; i < 5; i++) await visit(port);
        await eventually(() => jsonLinesOf(file).filter((l) => l.msg === 'connect').length === 5, 'the 5 sessions before the rotation in the log file');

        await logrotate(file, gate.pid!);
        await eventually(() => jsonLinesOf(file).filter((l) => l.msg === 'SIGUSR1: log file reopened').length === workers, `${workers} processes reopened the file`);
        for (let i = 0; i < 7; i++) await visit(port);
        await eventually(() => jsonLinesOf(file).filter((l) => l.msg === 'connect').length === 7, 'the 7 sessions after the rotation in the new file');
      } finally {
        await stopGate(gate);
      }
      const rotated = jsonLinesOf(`${file}.1`);
      expect(rotated.filter((l) => l.msg === 'connect')).toHaveLength(5);
      expect(rotated.some((l) => String(l.msg).startsWith('SIGUSR1'))).toBe(false);
      expect(jsonLinesOf(file).filter((l) => l.msg === 'connect')).toHaveLength(7);
      if (workers > 1) expect(new Set(jsonLinesOf(file).filter((l) => l.msg === 'SIGUSR1: log file reopened').map((l) => l.pid)).size).toBe(2);
      // Nothing went to stdout: the file is the primary stream.
      expect(stdout).toBe('');
    });
  }
});

describeWith(['rsyslogd'], 'log.syslog to a real rsyslogd', () => {
  let ca: TestCert;
  let rsyslog: Rsyslog;
  beforeAll(async () => {
    ca = await makeTestCa();
    rsyslog = await startRsyslog(await issueServerCert(ca, 'localhost'));
  });
  afterAll(async () => {
    await rsyslog?.stop();
  });

  async function gateTo(transport: 'udp' | 'tcp' | 'tls'): Promise<ChildGate> {
    return startChildGate({
      backendPort: await deadPort(),
      listeners: [openListener()],
      config: {
        log: {
          level: 'info',
          format: 'json',
          syslog: { transport, host: '127.0.0.1', port: rsyslog.ports[transport], ...(transport === 'tls' ? { ca: ca.certFile, tlsServerName: 'localhost' } : {}) },
        },
      },
    });
  }

  for (const transport of ['udp', 'tcp', 'tls'] as const) {
    test(`over ${transport}: a session's lines arrive with PRI mail.info/mail.warning and the session in the structured data`, async () => {
      const gate = await gateTo(transport);
      try {
        await visit(gate.port('open'));
        await eventually(() => rsyslog.received(transport).some((l) => l.json.msg === 'connect' && l.procId === String(gate.pid)), `the connect line over ${transport}`);
      } finally {
        await gate.stop();
      }
      const mine = rsyslog.received(transport).filter((l) => l.procId === String(gate.pid));
      const connect = mine.find((l) => l.json.msg === 'connect')!;
      expect(connect).toMatchObject({ pri: 2 * 8 + 6, facility: 'mail', severity: 'info', appName: 'smtpgate' });
      expect(connect.structuredData).toBe(`[smtpgate@32473 session="${String(connect.json.session)}" listener="open" client="127.0.0.1"]`);
      // The open listener's "tls: none" warning, logged at start.
      expect(mine.find((l) => l.json.level === 'warn')).toMatchObject({ pri: 2 * 8 + 4, severity: 'warning' });
    });
  }

  test('rsyslog down: smtpgate keeps serving mail, says so once, and the buffered lines arrive when it is back', async () => {
    const gate = await gateTo('tcp');
    try {
      await visit(gate.port('open'));
      await eventually(() => rsyslog.received('tcp').some((l) => l.procId === String(gate.pid) && l.json.msg === 'connect'), 'the first session over tcp');
      await rsyslog.stop();
      await eventually(() => gate.logs.some((l) => String(l.msg).startsWith('syslog server unreachable')), 'the "unreachable" line on stdout');
      for (let i = 0; i < 3; i++) await visit(gate.port('open'));
      expect(gate.alive).toBe(true);
      await eventually(() => gate.logs.filter((l) => l.msg === 'connect').length === 4, 'the 3 sessions of the outage on stdout');
      const sessionsDuringOutage = gate.logs.filter((l) => l.msg === 'connect').slice(1).map((l) => l.session);
      expect(sessionsDuringOutage).toHaveLength(3);

      await rsyslog.restart();
      await eventually(() => gate.logs.some((l) => l.msg === 'syslog server reachable again'), 'the reconnect', 40_000);
      const arrived = () => new Set(rsyslog.received('tcp').filter((l) => l.procId === String(gate.pid)).map((l) => l.json.session));
      await eventually(() => sessionsDuringOutage.every((s) => arrived().has(s)), 'the sessions of the outage, from the buffer');
      expect(gate.logs.find((l) => l.msg === 'syslog server reachable again')).toMatchObject({ dropped: 0 });
      // One line for the outage, not one per retry.
      expect(gate.logs.filter((l) => String(l.msg).startsWith('syslog server unreachable'))).toHaveLength(1);
      expect(await scrapeMetric(gate.metricsPort, 'smtpgate_log_syslog_dropped_total')).toBe(0);
    } finally {
      await gate.stop();
    }
  }, 60_000);
});
