/**
 * `smtpgate auth cache clear [--user NAME]`: forgets remembered sign-ins in the running
 * smtpgate (every worker's), through its admin address. Exits 1 when the cache is off or the
 * instance can't be reached, so a script never takes "nothing happened" for "cleared".
 */
import type { Command } from 'commander';
import { loadConfigFile } from '../config/load.js';
import { ConfigError, formatIssue } from '../parsing/errors.js';
import { requestAuthCacheClear } from '../auth/admin.js';
import { adminEndpoint } from './admin-endpoint.js';

export function registerAuthCommand(program: Command): void {
  const auth = program.command('auth').description('the running smtpgate\'s sign-in state');
  const cache = auth.command('cache').description('the auth cache (auth.cache): remembered sign-ins');
  cache
    .command('clear')
    .description('forget every remembered sign-in, or one user\'s, in the running smtpgate')
    .requiredOption('-c, --config <file>', 'the config of the running smtpgate')
    .option('-u, --user <name>', 'only this user\'s remembered sign-ins')
    .option('--json', 'print JSON')
    .action(async (opts: { config: string; user?: string; json?: boolean }) => {
      try {
        const config = await loadConfigFile(opts.config);
        if (!config.auth?.cache) throw new Error(`${opts.config}: auth.cache is not set: nothing is cached, so there is nothing to clear`);
        const { base, token } = await adminEndpoint(config);
        const r = await requestAuthCacheClear(base, opts.user, token ? { token } : {}).catch((err: Error) => {
          throw new Error(`could not reach the running smtpgate at ${base} (metrics.address): ${err.message}`);
        });
        const who = opts.user === undefined ? '' : ` for ${opts.user}`;
        process.stdout.write(opts.json ? JSON.stringify(r) + '\n' : `auth cache cleared${who}: ${r.cleared} remembered sign-in${r.cleared === 1 ? '' : 's'} forgotten\n`);
      } catch (err) {
        if (err instanceof ConfigError) process.stderr.write(`smtpgate: ${err.issues.map(formatIssue).join('\n  ')}\n`);
        else process.stderr.write(`smtpgate: ${err instanceof Error ? err.message : String(err)}\n`);
        process.exitCode = 1;
      }
    });
}
