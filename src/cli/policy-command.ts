/**
 * `smtpgate policy check [DIR]` and `smtpgate policy test`: the commander wiring around
 * src/policy/cli.ts. With --config, DIR defaults to the config's `policies:` folder and the
 * user attributes file supplies groups (for the unknown-group lint) and users' addresses.
 */
import type { Command } from 'commander';
import { loadConfigFile } from '../config/load.js';
import { ConfigError, formatIssue } from '../parsing/errors.js';
import { readUserAttributes, type UserAttributes } from '../auth/user-attributes.js';
import { DIRECTORY_SOURCES } from '../config/auth-section.js';
import { runPolicyCheck, runPolicyTest, type CommandResult } from '../policy/cli.js';

interface Context {
  dir: string;
  attributes?: Map<string, UserAttributes>;
  /** An auth source (a directory) supplies groups too: the attributes file doesn't list them all. */
  directoryGroups?: boolean;
}

async function context(dirArg: string | undefined, configFile: string | undefined): Promise<Context> {
  if (!configFile) {
    if (!dirArg) throw new Error('give the policy folder (DIR) or --config FILE');
    return { dir: dirArg };
  }
  const config = await loadConfigFile(configFile);
  const dir = dirArg ?? config.policies;
  if (!dir) throw new Error(`${configFile} has no "policies:" folder; give DIR`);
  return {
    dir,
    attributes: config.auth?.attributes ? await readUserAttributes(config.auth.attributes) : undefined,
    directoryGroups: config.auth?.backend.some((k) => DIRECTORY_SOURCES.has(k)) ?? false,
  };
}

function finish(r: CommandResult): void {
  process.stdout.write(r.output);
  process.exitCode = r.exitCode;
}

function fail(err: unknown): void {
  if (err instanceof ConfigError) process.stderr.write(`smtpgate: ${err.issues.map(formatIssue).join('\n  ')}\n`);
  else process.stderr.write(`smtpgate: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

export function registerPolicyCommand(program: Command): void {
  const policy = program.command('policy').description('check policy rules, and test them against a described session before they go live');

  policy
    .command('check [dir]')
    .description('lint a policy folder: unknown fields, unreachable rules, unknown groups, bad CIDRs; exit 1 on any finding')
    .option('-c, --config <file>', "use the config's policies folder and its user attributes (for groups)")
    .action(async (dir: string | undefined, opts: { config?: string }) => {
      try {
        const ctx = await context(dir, opts.config);
        finish(
          await runPolicyCheck({
            dir: ctx.dir,
            knownGroups: ctx.attributes && !ctx.directoryGroups ? new Set([...ctx.attributes.values()].flatMap((a) => a.groups)) : undefined,
            ...(ctx.directoryGroups ? { groupsUnknownBecause: 'an auth source of the config (a directory) supplies groups' } : {}),
          }),
        );
      } catch (err) {
        fail(err);
      }
    });

  policy
    .command('test [dir]')
    .description('evaluate a described session stage by stage and print the decision and the trace; --all runs the tests folder')
    .option('-c, --config <file>', "use the config's policies folder and its user attributes")
    .option('--all', 'run every case in <dir>/tests/*.yaml and stop at the first mismatch')
    .option('--ip <ip>', 'client address', '10.1.2.3')
    .option('--listener <name>', 'listener name', 'submission')
    .option('--no-tls', 'the session has no TLS')
    .option('--tls-version <v>', 'TLS version in use', 'TLSv1.3')
    .option('--helo <name>', 'EHLO name')
    .option('--user <name>', 'authenticated user')
    .option('--group <name>', "user's group (repeatable; default from the attributes file)", collect)
    .option('--address <addr>', 'an address the user may send as (repeatable)', collect)
    .option('--trusted', 'the client is in trusted networks')
    .option('--from <addr>', 'MAIL FROM address')
    .option('--to <addr>', 'RCPT TO address (repeatable)', collect)
    .option('--size <size>', 'declared SIZE, e.g. 2MB')
    .option('--message-size <size>', 'actual message size')
    .option('--header <"Name: value">', 'a message header (repeatable)', collect)
    .option('--attachment <name[:type]>', 'an attachment (repeatable)', collect)
    .option('--message <file>', 'a message (.eml) to scan for the data stage')
    .option('--time <iso>', 'when the session happens (ISO 8601)')
    .action(async (dir: string | undefined, opts: Record<string, unknown>) => {
      try {
        const ctx = await context(dir, opts.config as string | undefined);
        const attrs = ctx.attributes;
        finish(
          await runPolicyTest({
            dir: ctx.dir,
            all: Boolean(opts.all),
            ip: opts.ip as string,
            listener: opts.listener as string,
            tls: opts.tls === false ? false : (opts.tlsVersion as string),
            helo: opts.helo as string | undefined,
            user: opts.user as string | undefined,
            group: opts.group as string[] | undefined,
            address: opts.address as string[] | undefined,
            trusted: Boolean(opts.trusted),
            from: opts.from as string | undefined,
            to: opts.to as string[] | undefined,
            size: opts.size as string | undefined,
            messageSize: opts.messageSize as string | undefined,
            header: opts.header as string[] | undefined,
            attachment: opts.attachment as string[] | undefined,
            message: opts.message as string | undefined,
            time: opts.time as string | undefined,
            userLookup: attrs ? (name) => attrs.get(name) : undefined,
          }),
        );
      } catch (err) {
        fail(err);
      }
    });
}
