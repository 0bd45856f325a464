/**
 * How a CLI command says no: `smtpgate: message`, then each problem at its file and line, and
 * exit status 1. A `CommandRefusal` is something the operator can act on (a broken file, a
 * name that is taken, a directory that can't be written); anything else thrown is a bug and
 * reaches main's catch-all.
 */
import { formatIssue, type ConfigIssue } from '../parsing/errors.js';

export class CommandRefusal extends Error {
  constructor(
    message: string,
    readonly issues: readonly ConfigIssue[] = [],
  ) {
    super(message);
    this.name = 'CommandRefusal';
  }
}

/** Runs a command's action; a refusal is printed and sets exit status 1. */
export async function refusalsToExitCode(action: () => Promise<void>): Promise<void> {
  try {
    await action();
  } catch (err) {
    if (!(err instanceof CommandRefusal)) throw err;
    process.stderr.write(`smtpgate: ${err.message}\n`);
    for (const issue of err.issues) process.stderr.write(`  ${formatIssue(issue)}\n`);
    process.exitCode = 1;
  }
}
