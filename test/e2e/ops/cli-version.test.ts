/**
 * `smtpgate --version` prints the version of the package it was installed from: package.json
 * next to dist/, read when it runs, never a number compiled in.
 */
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect, test } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const run = promisify(execFile);

test('smtpgate --version prints the version from package.json', async () => {
  const { version } = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const { stdout } = await run(process.execPath, [path.join(ROOT, 'dist/cli/main.js'), '--version']);
  expect(stdout).toBe(`${version}\n`);
});

test('smtpgate --version reads package.json at run time, next to the dist folder it runs from', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'smtpgate-version-'));
  await cp(path.join(ROOT, 'dist'), path.join(dir, 'dist'), { recursive: true });
  await symlink(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(path.join(dir, 'package.json'), JSON.stringify({ ...pkg, version: '9.8.7-test' }));
  const { stdout } = await run(process.execPath, [path.join(dir, 'dist/cli/main.js'), '--version']);
  expect(stdout).toBe('9.8.7-test\n');
});
