/**
 * `smtpgate policy check|test` on the shipped policies/ folder, as an admin (and .ci/run)
 * runs them: the set is clean, its own tests pass, and a wrong expectation fails the run and
 * names the case.
 */
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { expect, onTestFinished, test } from 'vitest';

const execFileP = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../../..');
const CLI = path.join(ROOT, 'dist/cli/main.js');

/** Runs the CLI from the repository root; resolves with the exit code and output either way. */
async function smtpgate(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return execFileP(process.execPath, [CLI, ...args], { cwd: ROOT, timeout: 15_000 }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}

test('`smtpgate policy check policies` exits 0 on the shipped set', async () => {
  const r = await smtpgate('policy', 'check', 'policies');
  expect(r).toMatchObject({ code: 0, stderr: '' });
  expect(r.stdout).toMatch(/^policies: 4 files, \d+ rules, no findings$/m);
});

test('`smtpgate policy test policies --all` exits 0 and reports every case of policies/tests as passed', async () => {
  const cases = (parse(await readFile(path.join(ROOT, 'policies/tests/submission.yaml'), 'utf8')) as { tests: unknown[] }).tests.length;
  const r = await smtpgate('policy', 'test', 'policies', '--all');
  expect(r).toMatchObject({ code: 0, stderr: '' });
  expect(r.stdout).toContain(`\n${cases} tests passed\n`);
  expect(r.stdout).not.toMatch(/^FAIL/m);
});

test('a copy of the set with one expectation changed makes `policy test --all` exit 1 and name the failing case', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-policy-cli-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  const copy = path.join(dir, 'policies');
  await cp(path.join(ROOT, 'policies'), copy, { recursive: true });
  const testsFile = path.join(copy, 'tests/submission.yaml');
  const original = await readFile(testsFile, 'utf8');
  const wrong = original.replace('      mail: { decision: reject, code: 553, enhanced: 5.7.1, rule: sender-binding }\n', '      mail: accept\n');
  expect(wrong).not.toBe(original);
  await writeFile(testsFile, wrong);

  const r = await smtpgate('policy', 'test', copy, '--all');
  expect(r.code).toBe(1);
  expect(r.stdout).toMatch(new RegExp(`^FAIL {2}${testsFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+ {2}alice may not send as bob$`, 'm'));
  expect(r.stdout).toMatch(/expected accept, got reject 553 5\.7\.1 .*sender-binding/);
  expect(r.stdout).toMatch(/stopped at the first failing test \(2 tests passed before it\)/);
});
