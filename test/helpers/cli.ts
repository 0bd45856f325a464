/**
 * The built smtpgate binary (`node dist/cli/main.js …`) run to completion, for tests of what
 * a command prints and how it exits. Needs `npm run build` first.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { CLI } from './child-gate.js';

const exec = promisify(execFile);

export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs `smtpgate ARGS`; `cli` points at another copy of main.js (e.g. an install without dev
 * dependencies). A run still going after `timeoutMs` is killed (0: never, for many at once on
 * a busy machine; the test's own timeout still applies).
 */
export async function runCli(args: readonly string[], cli = CLI, timeoutMs = 15_000): Promise<CliResult> {
  return exec(process.execPath, [cli, ...args], { timeout: timeoutMs }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}
