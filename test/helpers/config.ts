/**
 * Test configs as typed objects, written out with `yaml.stringify`: the shape comes from the
 * config schema's input type, so a misspelt key or a wrong value type fails `tsc` instead of
 * surfacing as a startup error in a test, and no test indents YAML by hand. Keep YAML text only
 * where a test is about the text itself (syntax errors, line numbers, comments).
 */
import { stringify } from 'yaml';
import type { z } from 'zod';
import type { configSchema } from '../../src/config/schema.js';

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
