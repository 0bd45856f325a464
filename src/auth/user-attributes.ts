/**
 * Per-user attributes that policy rules use: the addresses a user may send as (sender
 * binding) and the groups they belong to. Kept in a YAML file beside the users file, keyed
 * by login, so it works the same with the users file and with passthrough auth:
 *
 *   alice:
 *     addresses: [alice@corp.example, "*@sales.corp.example"]
 *     groups: [staff, sales]
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { ConfigError } from '../parsing/errors.js';
import { describeZodIssues, parseYaml } from '../parsing/yaml-source.js';

export interface UserAttributes {
  readonly addresses: readonly string[];
  readonly groups: readonly string[];
}

export const NO_ATTRIBUTES: UserAttributes = { addresses: [], groups: [] };

/** An address, or a "*@domain" / "*" style wildcard. */
export const ADDRESS_PATTERN = /^[^\s@]+@[^\s@]+$|^\*$/;
const GROUP = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

const schema = z.record(
  z.string(),
  z
    .object({
      addresses: z.array(z.string().regex(ADDRESS_PATTERN, 'expected an address such as alice@corp.example or *@sales.corp.example')).default([]),
      groups: z.array(z.string().regex(GROUP, 'expected a group name of letters, digits, "_", "." or "-"')).default([]),
    })
    .strict(),
);

const ATTRIBUTE_KEYS = ['addresses', 'groups'];

export function parseUserAttributes(text: string, file: string): Map<string, UserAttributes> {
  const parsed = parseYaml(text, file);
  if (!parsed.ok) throw new ConfigError(parsed.issues);
  const result = schema.safeParse(parsed.raw);
  if (!result.success) {
    // The same messages as the config's: line, what was expected, "did you mean".
    throw new ConfigError(describeZodIssues(result.error.issues, parsed.raw, parsed.source, { knownKeys: (s) => (s.length === 1 ? ATTRIBUTE_KEYS : []) }));
  }
  const out = new Map<string, UserAttributes>();
  for (const [user, attrs] of Object.entries(result.data)) {
    out.set(user, { addresses: attrs.addresses.map((a) => a.toLowerCase()), groups: attrs.groups });
  }
  return out;
}

export async function readUserAttributes(file: string): Promise<Map<string, UserAttributes>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError([{ file, path: 'auth.attributes', message: `cannot read the user attributes file: ${(err as Error).message}` }]);
  }
  return parseUserAttributes(text, file);
}
