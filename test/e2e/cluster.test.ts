/**
 * `workers: N`: a cluster primary forks N workers sharing the listeners, restarts one that
 * dies, and serves /metrics aggregated across them. Limits need Redis there.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { OPEN_LISTENER_YAML, writeGateFiles } from '../helpers/gate.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/backends.js';
import { SmtpTalk } from '../helpers/smtp-talk.js';
import { describeWith } from '../helpers/programs.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const CLI = path.join(ROOT, 'dist/cli/main.js');

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

describeWith(['redis-server'], 'two workers behind one primary', () => {
  let backend: RecordingBackend;
  let child: ChildProcess;
  const logs: Record<string, unknown>[] = [];
  let smtpPort = 0;
  let metricsPort = 0;
  const waiters: Array<() => void> = [];

  const waitForLog = (match: (l: Record<string, unknown>) => boolean, count = 1) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('timed out waiting for a log line')), 15_000);
      const check = () => {
        if (logs.filter(match).length >= count) {
          clearTimeout(timer);
          resolve();
        } else {
          waiters.push(check);
        }
      };
      check();
    });

  beforeAll(async () => {
    backend = await startRecordingBackend();
    smtpPort = await freePort();
    metricsPort = await freePort();
    const { configFile } = await writeGateFiles({
      backendPort: backend.port,
      listenersYaml: OPEN_LISTENER_YAML.replace('127.0.0.1:0', `127.0.0.1:${smtpPort}`),
      metricsAddress: `127.0.0.1:${metricsPort}`,
      logLevel: 'info',
      extraYaml: `workers: 2\nlimits:\n  store:\n    kind: redis\n    url: redis://127.0.0.1:6379\n    keyPrefix: cluster-test-${randomUUID().slice(0, 8)}\n`,
    });
    child = spawn(process.execPath, [CLI, 'run', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    let buf = '';
    const onData = (c: Buffer) => {
      buf += c.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          logs.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          logs.push({ msg: line });
        }
        for (const w of waiters.splice(0)) w();
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    await waitForLog((l) => l.msg === 'smtpgate primary ready');
    await waitForLog((l) => l.msg === 'worker ready', 2);
  });

  afterAll(async () => {
    if (child?.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    await backend?.close();
  });

  async function send(subject: string): Promise<number> {
    const c = await SmtpTalk.connect(smtpPort);
    await c.read();
    await c.cmd('EHLO client.test');
    await c.cmd('MAIL FROM:<app@corp.test>');
    await c.cmd('RCPT TO:<bob@corp.test>');
    await c.cmd('DATA');
    const code = (await c.cmd(`Subject: ${subject}\r\n\r\nx\r\n.`)).code;
    await c.cmd('QUIT');
    return code;
  }

  async function relayedTotal(): Promise<number> {
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    return text
      .split('\n')
      .filter((l) => l.startsWith('smtpgate_messages_total{') && l.includes('result="relayed"'))
      .reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
  }

  test('both workers serve mail and /metrics on the primary adds them up', async () => {
    for (let i = 0; i < 6; i++) expect(await send(`m${i}`)).toBe(250);
    expect(backend.messages).toHaveLength(6);
    expect(await relayedTotal()).toBe(6);
    const pids = new Set(logs.filter((l) => l.msg === 'message relayed').map((l) => l.pid));
    expect(pids.size).toBeGreaterThanOrEqual(1);
    expect((await fetch(`http://127.0.0.1:${metricsPort}/readyz`)).status).toBe(200);
  });

  test('a worker that dies is replaced and mail keeps flowing', async () => {
    const workerPid = logs.find((l) => l.msg === 'smtpgate ready')!.pid as number;
    process.kill(workerPid, 'SIGKILL');
    await waitForLog((l) => l.msg === 'worker died; starting a new one');
    await waitForLog((l) => l.msg === 'worker ready', 3);
    expect(await send('after restart')).toBe(250);
    expect((await fetch(`http://127.0.0.1:${metricsPort}/readyz`)).status).toBe(200);
  });

  test('SIGTERM drains the workers and the primary exits 0', async () => {
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});

test('workers > 1 with the memory store is refused by smtpgate check', async () => {
  const { configFile } = await writeGateFiles({ backendPort: 2525, extraYaml: 'workers: 2\n' });
  const res = await promisify(execFile)(process.execPath, [CLI, 'check', '--config', configFile]).then(
    () => ({ code: 0, stderr: '' }),
    (e: { code: number; stderr: string }) => e,
  );
  expect(res.code).toBe(1);
  expect(res.stderr).toContain('workers: 2 workers need limits.store.kind: redis');
});
