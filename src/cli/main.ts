#!/usr/bin/env node
/**
 * The smtpgate command line: `run` starts the proxy, `check` validates everything `run` would
 * load without opening a port, `user` edits the users file, `credential` the app passwords file,
 * `log grep` searches the mail log.
 */
import { Command } from 'commander';
import { checkConfigFile, hostPortLabel } from '../app.js';
import { run } from './run-command.js';
import { ConfigError, formatIssue } from '../parsing/errors.js';
import type { Config } from '../config/schema.js';
import { registerUserCommand } from './user-command.js';
import { registerCredentialCommand } from './credential-command.js';
import { registerPolicyCommand } from './policy-command.js';
import { registerLimitsCommand } from './limits-command.js';
import { registerAuthCommand } from './auth-command.js';
import { registerLogCommand } from './log-command.js';
import { registerDkimCommand } from './dkim-command.js';
import { Registry } from 'prom-client';
import { probeAuthSources } from '../auth/sources.js';
import { createAuthMetrics } from '../metrics/auth-metrics.js';
import { createLogger } from '../logging/logger.js';
import { readBuildInfo } from '../build-info.js';
import { smtpServerProblems } from '../listener/smtp-server-seams.js';

const program = new Command();

program
  .name('smtpgate')
  .description('SMTP security-enforcing proxy: TLS, AUTH, rate limits and policy in front of a legacy mail server.')
  .version(readBuildInfo().version, '-V, --version', 'print the smtpgate version')
  .showHelpAfterError()
  .addHelpText(
    'after',
    `
Examples:
  smtpgate check --config /etc/smtpgate/smtpgate.yaml   validate config, certificate and users file
  smtpgate run --config /etc/smtpgate/smtpgate.yaml     start the proxy
  smtpgate user add alice --file /etc/smtpgate/users    add a user (asks for the password)
  smtpgate credential add alice --label phone --config /etc/smtpgate/smtpgate.yaml
                                                       make an app password (printed once)
  smtpgate log grep --user alice --since 1d /var/log/smtpgate/smtpgate.log
                                                       alice's mail and sign-ins of the last day
  smtpgate dkim keygen example.com mail2025            write a DKIM key, print its DNS record
  npm start                                            the demo (smtpgate.demo.yaml)`,
  );

program
  .command('run')
  .description('start the proxy with the given config (refuses to start on any config problem)')
  .requiredOption('-c, --config <file>', 'path to the YAML config file')
  .action(async (opts: { config: string }) => {
    const { config, material } = await loadOrExit(opts.config);
    await run(config, material, { configFile: opts.config, onReady: (c, bound) => c.demo && printDemoBanner(c, bound) });
  });

program
  .command('check')
  .description('validate the config, certificate, key and users file without opening a port; exit 1 on any problem')
  .requiredOption('-c, --config <file>', 'path to the YAML config file')
  .option('--probe', 'also reach each auth source once (LDAP bind with the service account, Dovecot, the HTTP hook) and report what it found')
  .action(async (opts: { config: string; probe?: boolean }) => {
    const { config, material } = await loadOrExit(opts.config, 'check');
    for (const w of material.warnings) process.stdout.write(`warning: ${w}\n`);
    if (opts.probe && config.auth) {
      const results = await probeAuthSources(config.auth, {
        users: material.users,
        secrets: material.authSecrets,
        log: createLogger({ level: 'silent', format: 'json' }),
        metrics: createAuthMetrics(new Registry()),
      });
      for (const r of results) process.stdout.write(`auth.${r.source}: ${r.ok ? 'OK' : 'FAILED'}: ${r.text}\n`);
      if (results.some((r) => !r.ok)) {
        process.stderr.write(`${opts.config}: an auth source could not be reached (above)\n`);
        process.exit(1);
      }
    }
    process.stdout.write(`${opts.config}: OK (${config.listeners.length} listener${config.listeners.length === 1 ? '' : 's'}, backend ${config.backend.address.map(hostPortLabel).join(', ')})\n`);
  });

registerUserCommand(program);
registerCredentialCommand(program);
registerPolicyCommand(program);
registerLimitsCommand(program);
registerAuthCommand(program);
registerLogCommand(program);
registerDkimCommand(program);

async function loadOrExit(file: string, mode: 'run' | 'check' = 'run') {
  // smtpgate relies on smtp-server's internals (listener/smtp-server-seams.ts): an untested
  // version is refused before anything else, by `check` as by `run`.
  const seams = smtpServerProblems();
  if (seams.length > 0) {
    process.stderr.write(`smtpgate: the installed smtp-server can't be used; nothing was started:\n`);
    for (const problem of seams) process.stderr.write(`  ${problem}\n`);
    process.exit(1);
  }
  try {
    return await checkConfigFile(file, mode);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`smtpgate: ${err.issues.length} problem${err.issues.length === 1 ? '' : 's'} found; nothing was started:\n`);
      for (const issue of err.issues) process.stderr.write(`  ${formatIssue(issue)}\n`);
      process.exit(1);
    }
    throw err;
  }
}

function printDemoBanner(config: Config, bound: { listeners: Record<string, number>; metrics: number }): void {
  const starttls = config.listeners.find((l) => l.tls === 'starttls');
  const implicit = config.listeners.find((l) => l.tls === 'implicit');
  const dir = config.demo?.captureBackend?.dir;
  const line = (s = '') => process.stdout.write(s + '\n');
  line();
  line('  smtpgate demo is running (DEMO MODE: self-signed certificate, dev-only capture backend)');
  line();
  if (starttls) {
    line('  Send a message through the proxy with STARTTLS and AUTH:');
    line(`    swaks --server 127.0.0.1:${bound.listeners[starttls.name]} --tls --auth PLAIN --auth-user demo --auth-password demo --from demo@example.test --to someone@example.test`);
  }
  if (implicit) {
    line('  Or with implicit TLS:');
    line(`    swaks --server 127.0.0.1:${bound.listeners[implicit.name]} --tlsc --auth PLAIN --auth-user demo --auth-password demo --from demo@example.test --to someone@example.test`);
  }
  if (dir) line(`  The message lands in ${dir}/<id>.eml (the embedded capture backend; it delivers nowhere).`);
  line(`  Metrics: http://${config.metrics.address.host}:${bound.metrics}/metrics`);
  line();
}

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`smtpgate: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
