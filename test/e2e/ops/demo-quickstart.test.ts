/**
 * The quick start, as a newcomer runs it: the real `smtpgate run` binary with the shipped
 * demo config, and the real swaks line from the README and the banner.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { cp, mkdtemp, readFile, readdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { describeWith } from '../../helpers/programs.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../../..');
const CLI = path.join(ROOT, 'dist/cli/main.js');

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describeWith(['swaks'], 'demo quick start with the real binaries', () => {
  let dir: string;
  let child: ChildProcess;
  const ports = { submission: 0, smtps: 0, capture: 0, metrics: 0 };
  let output = '';

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-demo-'));
    for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort();
    await cp(path.join(ROOT, 'demo'), path.join(dir, 'demo'), { recursive: true });
    // The shipped demo config, with free ports so the test never collides with a running demo.
    const demo = (await readFile(path.join(ROOT, 'smtpgate.demo.yaml'), 'utf8'))
      .replaceAll('127.0.0.1:2525', `127.0.0.1:${ports.submission}`)
      .replaceAll('127.0.0.1:2465', `127.0.0.1:${ports.smtps}`)
      .replaceAll('127.0.0.1:2526', `127.0.0.1:${ports.capture}`)
      .replaceAll('127.0.0.1:9464', `127.0.0.1:${ports.metrics}`)
      .replace('format: pretty', 'format: json');
    await writeFile(path.join(dir, 'smtpgate.demo.yaml'), demo);
    child = spawn(process.execPath, [CLI, 'run', '--config', 'smtpgate.demo.yaml'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (c: Buffer) => {
        output += c.toString();
        if (output.includes('smtpgate ready')) resolve();
      });
      child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
      child.once('exit', (code) => reject(new Error(`smtpgate exited with ${code}:\n${output}`)));
    });
  });

  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  });

  test('the banner prints a ready-to-paste swaks line and says where the mail lands', () => {
    expect(output).toContain(`swaks --server 127.0.0.1:${ports.submission} --tls --auth PLAIN --auth-user demo --auth-password demo --from demo@example.test --to someone@example.test`);
    expect(output).toContain(`swaks --server 127.0.0.1:${ports.smtps} --tlsc --auth PLAIN`);
    expect(output).toContain(path.join(dir, 'var/mail'));
    expect(output).toMatch(/development only/);
  });

  async function swaks(args: string[]) {
    return run('swaks', args, { timeout: 20_000 }).catch((e: { stdout: string; stderr: string; code: number }) => e);
  }

  async function newestMessage(before: Set<string>): Promise<Buffer> {
    const files = (await readdir(path.join(dir, 'var/mail'))).filter((f) => f.endsWith('.eml') && !before.has(f));
    expect(files).toHaveLength(1);
    return readFile(path.join(dir, 'var/mail', files[0]!));
  }

  async function existing(): Promise<Set<string>> {
    return new Set(await readdir(path.join(dir, 'var/mail')).catch(() => []));
  }

  test('the README swaks line gets 250 and the message arrives byte for byte (STARTTLS on the submission port)', async () => {
    // swaks ends the data with "\r\n.\r\n" itself, so the file has no final CRLF and the
    // message the client sent is exactly `body`.
    const body = 'From: demo@example.test\r\nTo: someone@example.test\r\nSubject: quick start\r\nMessage-Id: <qs-1@example.test>\r\n\r\nHello through smtpgate.\r\n.leading dot line\r\n';
    const bodyFile = path.join(dir, 'body.eml');
    await writeFile(bodyFile, body.slice(0, -2));
    const before = await existing();
    const res = await swaks(['--server', `127.0.0.1:${ports.submission}`, '--tls', '--auth', 'PLAIN', '--auth-user', 'demo', '--auth-password', 'demo', '--from', 'demo@example.test', '--to', 'someone@example.test', '--data', bodyFile]);
    expect(res.stdout).toMatch(/<~ {2}250 2\.0\.0 Ok: saved as/);
    const stored = await newestMessage(before);
    const text = stored.toString('latin1');
    expect(text.startsWith('Received: from ')).toBe(true);
    // Everything after our Received header is exactly what the client sent.
    expect(text.slice(text.indexOf('From: demo@example.test'))).toBe(body);
  });

  test('the same works with implicit TLS (--tlsc) on the smtps port', async () => {
    const before = await existing();
    const res = await swaks(['--server', `127.0.0.1:${ports.smtps}`, '--tlsc', '--auth', 'PLAIN', '--auth-user', 'demo', '--auth-password', 'demo', '--from', 'demo@example.test', '--to', 'someone@example.test']);
    expect(res.stdout).toMatch(/<~ {2}250 2\.0\.0 Ok: saved as/);
    expect((await newestMessage(before)).toString()).toMatch(/\r\nSubject: test .*\r\n/);
  });

  test('without TLS the server does not offer AUTH, and swaks gives up', async () => {
    const res = await swaks(['--server', `127.0.0.1:${ports.submission}`, '--auth', 'PLAIN', '--auth-user', 'demo', '--auth-password', 'demo', '--from', 'demo@example.test', '--to', 'someone@example.test']);
    expect(res.stdout).not.toMatch(/250-AUTH/);
    expect(res.stdout + (res as { stderr?: string }).stderr).toMatch(/Host did not advertise authentication/);
  });

  test('a wrong password gets 535', async () => {
    const res = await swaks(['--server', `127.0.0.1:${ports.submission}`, '--tls', '--auth', 'PLAIN', '--auth-user', 'demo', '--auth-password', 'nope', '--from', 'demo@example.test', '--to', 'someone@example.test']);
    expect(res.stdout).toMatch(/<~\* 535 5\.7\.8 /);
  });

  test('metrics show the relayed messages', async () => {
    const text = await (await fetch(`http://127.0.0.1:${ports.metrics}/metrics`)).text();
    const relayed = text.split('\n').filter((l) => l.startsWith('smtpgate_messages_total{') && l.includes('result="relayed"'));
    const total = relayed.reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
    expect(total).toBeGreaterThanOrEqual(2);
  });
});

describeWith([], 'smtpgate check on the command line', () => {
  test('exits 0 on the shipped demo config', async () => {
    const res = await run(process.execPath, [CLI, 'check', '--config', path.join(ROOT, 'smtpgate.demo.yaml')]);
    expect(res.stdout).toMatch(/smtpgate\.demo\.yaml: OK \(2 listeners/);
  });

  test('exits 1 and prints every problem for a broken config', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-cli-'));
    const file = path.join(dir, 'bad.yaml');
    await writeFile(file, 'listeners:\n  - name: submission\n    address: 0.0.0.0:587\n    tls: startls\nbackend:\n  adress: 10.0.0.5:25\n');
    const res = await run(process.execPath, [CLI, 'check', '--config', file]).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(`${file}:4: listeners[0].tls: expected one of "starttls" | "implicit" | "none", found string "startls"`);
    expect(res.stderr).toContain(`${file}:6: backend.adress: unknown key "adress"; did you mean "address"?`);
    expect(res.stderr).toContain('nothing was started');
  });
});
