/**
 * Test configs as typed objects, written out with `yaml.stringify`: the shape comes from the
 * config schema's input type, so a misspelt key or a wrong value type fails `tsc` instead of
 * surfacing as a startup error in a test, and no test indents YAML by hand. Keep YAML text only
 * where a test is about the text itself (syntax errors, line numbers, comments).
 */
import { stringify } from 'yaml';
import type { z } from 'zod';
import { checkConfigFile } from '../../src/app.js';
import { parseConfig } from '../../src/config/load.js';
import type { configSchema } from '../../src/config/schema.js';
import { ConfigError } from '../../src/parsing/errors.js';

/** What a config file may say: the schema's input (durations as strings, addresses as "host:port"). */
export type ConfigInput = z.input<ReturnType<typeof configSchema>>;
export type ListenerInput = ConfigInput['listeners'][number];
export type BackendInput = ConfigInput['backend'];
export type TlsInput = NonNullable<ConfigInput['tls']>;
export type AuthInput = NonNullable<ConfigInput['auth']>;
export type LimitsInput = NonNullable<ConfigInput['limits']>;
export type DataInput = NonNullable<ConfigInput['data']>;

/**
 * A plaintext listener for internal apps on loopback: no TLS, no AUTH, and loopback is a
 * trusted network, so relay protection lets it send anywhere (as an internal app relay does).
 */
export function openListener(overrides: Partial<ListenerInput> = {}): ListenerInput {
  return {
    name: 'open',
    address: '127.0.0.1:0',
    tls: 'none',
    requireTls: false,
    requireAuth: false,
    trusted: { networks: ['127.0.0.0/8'] },
    ...overrides,
  };
}

/** A listener on a free loopback port; the schema's defaults (STARTTLS, TLS and AUTH required) apply to the rest. */
export function listener(name: string, overrides: Partial<ListenerInput> = {}): ListenerInput {
  return { name, address: '127.0.0.1:0', ...overrides };
}

/** The config file's text: keys in the order given, as the production loader reads any file. */
export function configYaml(config: Partial<ConfigInput>): string {
  return stringify(config, { lineWidth: 0 });
}

/** The lines of the ConfigError a config text is refused with, as `file`; throws if it is accepted. */
export function configIssues(text: string, file: string): string[] {
  try {
    parseConfig(text, file);
  } catch (err) {
    if (err instanceof ConfigError) return err.message.split('\n');
    throw err;
  }
  throw new Error('expected the config to be refused');
}

/** What `smtpgate check` finds in a config file and the files it names: one line each, none if all is well. */
export async function checkIssues(file: string): Promise<string[]> {
  try {
    await checkConfigFile(file, 'check');
  } catch (err) {
    if (err instanceof ConfigError) return err.message.split('\n');
    throw err;
  }
  return [];
}
