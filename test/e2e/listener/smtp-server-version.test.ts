/**
 * smtpgate reaches into smtp-server's internals (src/listener/smtp-server-seams.ts), so an
 * smtp-server version it was not tested with must never start: `smtpgate check` and `smtpgate
 * run` refuse it, naming the installed and the tested versions and the fix. The install is a
 * copy of dist/ whose node_modules holds the real packages, except an smtp-server that says it
 * is another version.
 */
import { cp, mkdir, mkdtemp, readFile, readdir, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, expect, test } from 'vitest';
import { TESTED_SMTP_SERVER_VERSIONS } from '../../../src/listener/smtp-server-seams.js';
import { runCli } from '../../helpers/cli.js';

const ROOT = path.resolve(import.meta.dirname, '../../..');
let cli: string;
let config: string;

beforeAll(async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'smtpgate-smtp-server-version-'));
  await cp(path.join(ROOT, 'dist'), path.join(dir, 'dist'), { recursive: true });
  await cp(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
  const modules = path.join(dir, 'node_modules');
  await mkdir(modules);
  for (const name of await readdir(path.join(ROOT, 'node_modules'))) {
    if (name !== 'smtp-server') await symlink(path.join(ROOT, 'node_modules', name), path.join(modules, name));
  }
  const library = path.join(modules, 'smtp-server');
  await cp(path.join(ROOT, 'node_modules/smtp-server'), library, { recursive: true });
  const pkg = JSON.parse(await readFile(path.join(library, 'package.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(path.join(library, 'package.json'), JSON.stringify({ ...pkg, version: '3.99.0' }));
  cli = path.join(dir, 'dist/cli/main.js');
  // Never read: the version is refused before the config.
  config = path.join(dir, 'smtpgate.yaml');
});

for (const command of ['check', 'run']) {
  test(`smtpgate ${command} refuses an untested smtp-server version, naming it, the tested versions and the fix`, async () => {
    const r = await runCli([command, '--config', config], cli);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain("smtpgate: the installed smtp-server can't be used; nothing was started");
    expect(r.stderr).toContain(`smtp-server 3.99.0 is installed, but smtpgate is tested with smtp-server ${TESTED_SMTP_SERVER_VERSIONS.join(', ')} only`);
    expect(r.stderr).toContain('npm ci');
  });
}

test('smtpgate check goes on to the config with the tested smtp-server version', async () => {
  const r = await runCli(['check', '--config', path.join(path.dirname(config), 'missing.yaml')]);
  expect(r.code).toBe(1);
  expect(r.stderr).not.toContain("smtp-server can't be used");
  expect(r.stderr).toContain('missing.yaml');
});
