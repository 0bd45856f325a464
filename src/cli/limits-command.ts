/**
 * `smtpgate limits list` and `smtpgate limits clear IP|CIDR|USER`. With a Redis store the
 * command talks to Redis directly (every instance shares it); with the memory store it asks the
 * running instance through its admin address (the metrics address). Both print the same
 * report (text, or JSON with --json); `clear` exits 1 when there was nothing to clear, so a
 * mistyped address or name is not taken for a lifted lockout.
 */
import type { Command } from 'commander';
import { loadConfigFile } from '../config/load.js';
import { ConfigError, formatIssue } from '../parsing/errors.js';
import { fetchLimitsState, formatClearResult, formatLimitsState, requestLimitsClear, type ClearResult, type LimitsState } from '../limits/admin.js';
import type { Config } from '../config/schema.js';
import { withStore } from './live-store.js';

interface LimitsCommandOptions {
  config: string;
  top?: string;
  json?: boolean;
}

async function run(action: (config: Config) => Promise<void>, opts: LimitsCommandOptions): Promise<void> {
  try {
    await action(await loadConfigFile(opts.config));
  } catch (err) {
    if (err instanceof ConfigError) process.stderr.write(`smtpgate: ${err.issues.map(formatIssue).join('\n  ')}\n`);
    else process.stderr.write(`smtpgate: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  }
}

export function registerLimitsCommand(program: Command): void {
  const limits = program.command('limits').description('see and lift lockouts, suspensions and the top senders, from the live limiter store');

  limits
    .command('list')
    .description('locked-out IPs and users, suspended users and the top senders in the current window')
    .requiredOption('-c, --config <file>', 'the config of the running smtpgate')
    .option('--top <n>', 'how many top senders', '10')
    .option('--json', 'print JSON')
    .action((opts: LimitsCommandOptions) =>
      run(async (config) => {
        const top = Number(opts.top ?? 10);
        const state: LimitsState = await withStore(
          config,
          (base, token) => fetchLimitsState(base, { top, ...(token ? { token } : {}) }),
          (l) => l.listState({ top }),
        );
        process.stdout.write(opts.json ? JSON.stringify(state, null, 2) + '\n' : formatLimitsState(state) + '\n');
      }, opts),
    );

  limits
    .command('clear <target>')
    .description('lift the lockouts and counts of an IP or every address in a CIDR, or the lockouts, counts and suspension of a user')
    .requiredOption('-c, --config <file>', 'the config of the running smtpgate')
    .option('--json', 'print JSON')
    .action((target: string, opts: LimitsCommandOptions) =>
      run(async (config) => {
        const r: ClearResult = await withStore(
          config,
          (base, token) => requestLimitsClear(base, target, token ? { token } : {}),
          (l) => l.clear(target),
        );
        if (r.removed.length === 0) {
          throw new Error(`nothing to clear for ${target} (${r.kind} ${r.key}): the store holds no lockout, count or suspension for it; see \`smtpgate limits list\``);
        }
        process.stdout.write(opts.json ? JSON.stringify(r, null, 2) + '\n' : formatClearResult(r) + '\n');
      }, opts),
    );
}
