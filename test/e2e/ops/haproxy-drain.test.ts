/**
 * docs/deployment.md's HAProxy setup, run: a real HAProxy with the page's `defaults` and
 * backend settings (addresses changed to loopback) in front of two smtpgate instances. When one
 * drains (SIGTERM), it stops accepting at once, seconds before HAProxy's health checks notice;
 * no client may be cut off meanwhile: HAProxy must send it to the other instance.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startGate, type Gate } from '../../helpers/gate.js';
import { listener } from '../../helpers/config.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { deadPort, eventually } from '../../helpers/sessions.js';
import { describeWith, findProgram } from '../../helpers/programs.js';

const ROOT = path.resolve(import.meta.dirname, '../../..');

/** The lines of section `name` ("defaults", "backend smtpgate_587") in the page's haproxy block. */
function documentedSection(name: string): string[] {
  const page = readFileSync(path.join(ROOT, 'docs/deployment.md'), 'utf8');
  const block = /```haproxy\n([\s\S]*?)```/.exec(page)?.[1] ?? '';
  const lines = block.split('\n');
  const start = lines.indexOf(name);
  if (start < 0) throw new Error(`docs/deployment.md: no "${name}" in the haproxy block`);
  const body: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (!line.startsWith(' ')) break;
    body.push(line);
  }
  return body;
}

const PROXIED_LISTENER = listener('proxied', { tls: 'none', requireTls: false, greetingDelay: 0, proxyProtocol: { trusted: ['127.0.0.1/32'] } });

/** Connects through HAProxy and reads the first line: the greeting, or '' if cut off. */
function greeting(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    let text = '';
    socket.on('data', (d: Buffer) => {
      text += d.toString();
      const end = text.indexOf('\r\n');
      if (end >= 0) {
        socket.end('QUIT\r\n');
        resolve(text.slice(0, end));
      }
    });
    socket.on('error', () => resolve(''));
    socket.on('close', () => resolve(''));
  });
}

describeWith(['haproxy'], 'HAProxy, as docs/deployment.md sets it up, during a drain', () => {
  let backend: RecordingBackend;
  const gates: Gate[] = [];
  let haproxy: ChildProcess;
  let frontPort: number;
  let output = '';

  beforeAll(async () => {
    backend = await startRecordingBackend();
    for (let i = 0; i < 2; i++) gates.push(await startGate({ backendPort: backend.port, listeners: [PROXIED_LISTENER] }));
    frontPort = await deadPort();
    const backendLines = documentedSection('backend smtpgate_587').filter((l) => !/^\s*server /.test(l));
    const config = [
      'global',
      '    maxconn 256',
      'defaults',
      ...documentedSection('defaults'),
      'frontend smtp',
      `    bind 127.0.0.1:${frontPort}`,
      '    default_backend smtpgate',
      'backend smtpgate',
      ...backendLines,
      // As the page's servers, on loopback: each instance's own metrics port for the checks.
      ...gates.map((g, i) => `    server gate${i + 1} 127.0.0.1:${g.port('proxied')} port ${g.metricsPort}`),
      '',
    ].join('\n');
    const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-haproxy-'));
    await writeFile(path.join(dir, 'haproxy.cfg'), config);
    haproxy = spawn(findProgram('haproxy')!, ['-db', '-f', path.join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'pipe', 'pipe'] });
    haproxy.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    haproxy.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    const exited = new Promise<never>((_, reject) => haproxy.once('exit', (code) => reject(new Error(`haproxy exited with ${code}:\n${output}\n${config}`))));
    await Promise.race([exited, eventually(async () => (await greeting(frontPort)).startsWith('220 '), 'HAProxy to pass a connection through')]);
  }, 30_000);

  afterAll(async () => {
    if (haproxy && haproxy.exitCode === null) {
      const exited = new Promise((r) => haproxy.once('exit', r));
      haproxy.kill('SIGTERM');
      await exited;
    }
    for (const g of gates) await g.stop();
    await backend?.close();
  });

  test('connections arriving before the health checks notice the drain are redispatched to the other instance, none is cut off', { timeout: 60_000 }, async () => {
    // Both instances serve before the drain (leastconn spreads these over both).
    const before = await Promise.all(Array.from({ length: 6 }, () => greeting(frontPort)));
    expect(before.every((g) => g.startsWith('220 ')), before.join(' | ')).toBe(true);
    await gates[0]!.app.stop({ drain: true });
    // At once, within HAProxy's first check interval: a share of these go to the drained one.
    const during = await Promise.all(Array.from({ length: 6 }, () => greeting(frontPort)));
    expect(during.filter((g) => !g.startsWith('220 ')), `cut off:\n${output}`).toEqual([]);
  });
});
