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

/** Runs `smtpgate ARGS`; `cli` points at another copy of main.js (e.g. an install without dev dependencies). */
export async function runCli(args: readonly string[], cli = CLI): Promise<CliResult> {
  return exec(process.execPath, [cli, ...args], { timeout: 15_000 }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}
