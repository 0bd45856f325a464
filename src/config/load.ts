/**
 * Reads and validates the config file. A config with any mistake never starts: every problem
 * is collected and reported with the file, line, path inside it, what was expected and what
 * was found.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { LineCounter, parseDocument, isNode } from 'yaml';
import type { z } from 'zod';
import { ConfigError, formatPath, type ConfigIssue } from './errors.js';
import { configSchema, type Config } from './schema.js';

export async function loadConfigFile(file: string): Promise<Config> {
  const absolute = path.resolve(file);
  let text: string;
  try {
    text = await readFile(absolute, 'utf8');
  } catch (err) {
    throw new ConfigError([{ file: absolute, path: '', message: `cannot read the config file: ${(err as Error).message}` }]);
  }
  return parseConfig(text, absolute);
}

/** Parses and validates config text; `file` names it in errors and anchors relative paths. */
export function parseConfig(text: string, file: string): Config {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors.map((e) => ({
        file,
        path: '',
        line: lineCounter.linePos(e.pos[0]).line,
        message: `not valid YAML: ${e.message.split('\n')[0]}`,
      })),
    );
  }
  const raw: unknown = doc.toJS() ?? {};
  const schema = configSchema(path.dirname(file));
  const result = schema.safeParse(raw);
  if (result.success) return result.data;

  const lineOf = (segments: readonly PropertyKey[]): number | undefined => {
    // Point at the deepest node that exists: for a misspelled key that is its parent map.
    for (let n = segments.length; n >= 0; n--) {
      const node = doc.getIn(segments.slice(0, n) as unknown[], true);
      if (isNode(node) && node.range) return lineCounter.linePos(node.range[0]).line;
    }
    return undefined;
  };
  throw new ConfigError(result.error.issues.flatMap((issue) => describeIssue(issue, raw, file, schema, lineOf)));
}

function describeIssue(
  issue: z.core.$ZodIssue,
  raw: unknown,
  file: string,
  schema: z.ZodType,
  lineOf: (segments: readonly PropertyKey[]) => number | undefined,
): ConfigIssue[] {
  const segments = issue.path;
  const found = valueAt(raw, segments);
  switch (issue.code) {
    case 'unrecognized_keys':
      return issue.keys.map((key) => {
        const known = knownKeysAt(schema, segments);
        const hint = closest(key, known);
        return {
          file,
          path: formatPath([...segments, key]),
          line: lineOf([...segments, key]),
          message: `unknown key ${JSON.stringify(key)}${hint ? `; did you mean ${JSON.stringify(hint)}?` : ''}`,
        };
      });
    case 'invalid_type':
      return [
        {
          file,
          path: formatPath(segments),
          line: lineOf(segments),
          message:
            found === undefined
              ? `required: expected ${issue.expected}, but it is missing`
              : `expected ${issue.expected}, found ${describeValue(found)}`,
        },
      ];
    case 'invalid_value':
      return [
        {
          file,
          path: formatPath(segments),
          line: lineOf(segments),
          message: `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(' | ')}, found ${describeValue(found)}`,
        },
      ];
    case 'invalid_union': {
      // A value that may take several forms (e.g. one address or a list): report the problems
      // of the form the value was written in, not zod's generic "Invalid input".
      const branches = issue.errors.map((branch) => branch.filter((i) => !(i.code === 'invalid_type' && i.path.length === 0)));
      const best = branches.find((b) => b.length > 0);
      if (!best) return [{ file, path: formatPath(segments), line: lineOf(segments), message: `expected one of the documented forms, found ${describeValue(found)}` }];
      return best.flatMap((inner) => describeIssue({ ...inner, path: [...segments, ...inner.path] } as z.core.$ZodIssue, raw, file, schema, lineOf));
    }
    default:
      return [{ file, path: formatPath(segments), line: lineOf(segments), message: issue.message }];
  }
}

function valueAt(raw: unknown, segments: readonly PropertyKey[]): unknown {
  let cur: unknown = raw;
  for (const s of segments) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[s];
  }
  return cur;
}

function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null (an empty value)';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  return `${typeof v} ${JSON.stringify(v)}`;
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

function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return bestDistance <= Math.max(2, Math.floor(word.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length]!;
}
