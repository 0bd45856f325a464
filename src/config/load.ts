/**
 * Reads and validates the config file. A config with any mistake never starts: every problem
 * is collected and reported with the file, line, path inside it, what was expected and what
 * was found.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { z } from 'zod';
import { ConfigError } from '../parsing/errors.js';
import { describeZodIssues, parseYaml, type YamlSource } from '../parsing/yaml-source.js';
import { configSchema, type Config } from './schema.js';

export async function loadConfigFile(file: string): Promise<Config> {
  return (await loadConfigSource(file)).config;
}

/** The config and the YAML it came from, so later checks can name the line of a field. */
export async function loadConfigSource(file: string): Promise<{ config: Config; source: YamlSource }> {
  const absolute = path.resolve(file);
  let text: string;
  try {
    text = await readFile(absolute, 'utf8');
  } catch (err) {
    throw new ConfigError([{ file: absolute, path: '', message: `cannot read the config file: ${(err as Error).message}` }]);
  }
  return parseConfigSource(text, absolute);
}

/** Parses and validates config text; `file` names it in errors and anchors relative paths. */
export function parseConfig(text: string, file: string): Config {
  return parseConfigSource(text, file).config;
}

function parseConfigSource(text: string, file: string): { config: Config; source: YamlSource } {
  const parsed = parseYaml(text, file);
  if (!parsed.ok) throw new ConfigError(parsed.issues);
  const schema = configSchema(path.dirname(file));
  const result = schema.safeParse(parsed.raw);
  if (result.success) return { config: result.data, source: parsed.source };
  throw new ConfigError(describeZodIssues(result.error.issues, parsed.raw, parsed.source, { knownKeys: (segments) => knownKeysAt(schema, segments) }));
}

/** Keys the schema knows at an object path, read from the schema itself so hints never drift. */
function knownKeysAt(schema: z.ZodType, segments: readonly PropertyKey[]): readonly string[] {
  let node: unknown = schema;
  const unwrap = (n: unknown): unknown => {
    for (;;) {
      const def = (n as { _zod?: { def?: Record<string, unknown> } })._zod?.def;
      if (!def) return n;
      if (def.type === 'optional' || def.type === 'default' || def.type === 'nullable') n = def.innerType;
      else if (def.type === 'pipe') n = def.in;
      else return n;
    }
  };
  for (const s of segments) {
    node = unwrap(node);
    const def = (node as { _zod: { def: Record<string, unknown> } })._zod.def;
    if (def.type === 'array' && typeof s === 'number') node = def.element;
    else if (def.type === 'object' && typeof s === 'string') node = (def.shape as Record<string, unknown>)[s];
    else return [];
  }
  const def = (unwrap(node) as { _zod?: { def?: Record<string, unknown> } })._zod?.def;
  return def?.type === 'object' ? Object.keys(def.shape as object) : [];
}
