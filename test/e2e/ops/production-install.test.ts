/**
 * smtpgate as `npm ci --omit=dev` installs it (deploy/Dockerfile's runtime stage): the built
 * dist/ next to a node_modules that holds the production dependencies only. Made here from
 * this checkout's tree: every package `npm ls --omit=dev` lists is linked into a temp folder,
 * and node resolves through the links (--preserve-symlinks), so a development dependency
 * imported anywhere in the load path is missing, exactly as in the image.
 */
import { execFile, spawn } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, test } from 'vitest';
import { makeTestCert } from '../../helpers/pki.js';
import { deadPort } from '../../helpers/sessions.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../../..');

/** The top-level folders of node_modules that `npm ci --omit=dev` would install. */
async function productionPackages(): Promise<string[]> {
  const { stdout } = await run('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: ROOT, maxBuffer: 16 * 1024 * 1024 });
  const top = path.join(ROOT, 'node_modules') + path.sep;
  // Nested node_modules come along with the package they are in.
  return stdout
    .split('\n')
    .filter((p) => p.startsWith(top) && !p.slice(top.length).includes(`${path.sep}node_modules${path.sep}`))
    .map((p) => p.slice(top.length));
}

/** Runs the CLI there until it exits, or kills it once it says it is ready. */
function smtpgate(dir: string, args: string[]): Promise<{ code: number | null; output: string; ready: boolean }> {
  const child = spawn(process.execPath, ['--preserve-symlinks', '--preserve-symlinks-main', path.join(dir, 'dist/cli/main.js'), ...args], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  let ready = false;
  const onData = (c: Buffer) => {
    output += c.toString();
    if (!ready && output.includes('smtpgate ready')) {
      ready = true;
      child.kill('SIGINT');
    }
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, output, ready })));
}

describe('installed with npm ci --omit=dev (production dependencies only)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-prod-'));
    await cp(path.join(ROOT, 'dist'), path.join(dir, 'dist'), { recursive: true });
    await cp(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
    await cp(path.join(ROOT, 'demo'), path.join(dir, 'demo'), { recursive: true });
    for (const pkg of await productionPackages()) {
      await mkdir(path.dirname(path.join(dir, 'node_modules', pkg)), { recursive: true });
      await symlink(path.join(ROOT, 'node_modules', pkg), path.join(dir, 'node_modules', pkg), 'dir');
    }
  });

  /** The shipped demo config on free ports, logging JSON (pino-pretty is a development dependency too). */
  async function demoConfig(): Promise<string> {
    const capture = await deadPort();
    const text = (await readFile(path.join(ROOT, 'smtpgate.demo.yaml'), 'utf8'))
      .replaceAll('127.0.0.1:2526', `127.0.0.1:${capture}`)
      .replace(/127\.0\.0\.1:(2525|2465|9464)/g, '127.0.0.1:0')
      .replace('format: pretty', 'format: json');
    const file = path.join(dir, 'smtpgate.demo.yaml');
    await writeFile(file, text);
    return file;
  }

  test('the development dependency selfsigned is not part of it', async () => {
    const pkgs = await productionPackages();
    expect(pkgs).toContain('smtp-server');
    expect(pkgs).not.toContain('selfsigned');
  });

  async function realConfig(name: string, extra: string[] = []): Promise<string> {
    const cert = await makeTestCert('mail.corp.test');
    const file = path.join(dir, name);
    await writeFile(
      file,
      [
        'listeners:',
        '  - name: submission',
        '    address: 127.0.0.1:0',
        'tls:',
        `  cert: ${cert.certFile}`,
        `  key: ${cert.keyFile}`,
        'auth:',
        '  users: demo/users',
        'backend:',
        '  address: 127.0.0.1:25',
        'metrics:',
        '  address: 127.0.0.1:0',
        ...extra,
        '',
      ].join('\n'),
    );
    return file;
  }

  test('a real config (certificate given) is checked and runs', async () => {
    const file = await realConfig('real.yaml');
    const checked = await smtpgate(dir, ['check', '--config', file]);
    expect(checked.output).toContain(`${file}: OK`);
    expect(checked.code).toBe(0);
    const ran = await smtpgate(dir, ['run', '--config', file]);
    expect(ran.ready, ran.output).toBe(true);
  });

  test.each(['check', 'run'])('demo mode, with no certificate yet: `%s` refuses, naming the field and the fix', async (command) => {
    const file = await demoConfig();
    const result = await smtpgate(dir, [command, '--config', file]);
    expect(result.ready, result.output).toBe(false);
    expect(result.code).toBe(1);
    expect(result.output).toMatch(new RegExp(`${escapeRegExp(file)}:\\d+: demo\\.generateCertificate: needs the development dependency "selfsigned"`));
  });

  test.each(['check', 'run'])('log.format: pretty (pino-pretty is a development dependency): `%s` refuses, naming the field and the fix', async (command) => {
    const file = await realConfig(`pretty-${command}.yaml`, ['log:', '  format: pretty']);
    const result = await smtpgate(dir, [command, '--config', file]);
    expect(result.ready, result.output).toBe(false);
    expect(result.code).toBe(1);
    expect(result.output).toMatch(new RegExp(`${escapeRegExp(file)}:\\d+: log\\.format: "pretty" needs the package pino-pretty, which is not installed here`));
  });
});

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
