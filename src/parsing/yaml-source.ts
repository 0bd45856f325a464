/**
 * A YAML file as a loader sees it (the config, a policy file, a policy test file): the parsed
 * document, a line for any path inside it, and zod's issues turned into ConfigIssues that name
 * the file, the line, the path (and the rule, for policies), what was expected and what was
 * found, with a "did you mean" for misspelled keys.
 */
import { LineCounter, isNode, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { formatPath, type ConfigIssue } from './errors.js';

/** What `smtpgate policy check` reports; load errors carry the kinds the linter shares. The config uses 'invalid' and 'unknown_field'. */
export type FindingKind = 'invalid' | 'unknown_field' | 'bad_cidr' | 'unreachable' | 'unknown_group' | 'open_relay';

export interface PolicyIssue extends ConfigIssue {
  readonly kind: FindingKind;
  /** The rule the problem is in, when it is in one. */
  readonly rule?: string;
}

export class YamlSource {
  readonly file: string;
  readonly doc: Document;
  readonly #lines: LineCounter;
  /** Path segments as zod and the compiler see them → segments in the document. */
  readonly #toDoc: (segments: readonly PropertyKey[]) => readonly PropertyKey[];

  constructor(file: string, doc: Document, lines: LineCounter, toDoc: (segments: readonly PropertyKey[]) => readonly PropertyKey[] = (s) => s) {
    this.file = file;
    this.doc = doc;
    this.#lines = lines;
    this.#toDoc = toDoc;
  }

  /** The line of the deepest node on the path that exists: for a misspelled key, its parent map. */
  lineOf(segments: readonly PropertyKey[]): number | undefined {
    const docPath = this.#toDoc(segments);
    for (let n = docPath.length; n >= 0; n--) {
      const node = this.doc.getIn(docPath.slice(0, n) as unknown[], true);
      if (isNode(node) && node.range) return this.#lines.linePos(node.range[0]).line;
    }
    return undefined;
  }
}

export type ParsedYaml = { ok: true; source: YamlSource; raw: unknown } | { ok: false; issues: PolicyIssue[] };

/**
 * Parses YAML text. A document whose root is a list is handed on as `{ [listKey]: list }`, so a
 * policy file can be just its rules; paths still point at the right lines.
 */
export function parseYaml(text: string, file: string, listKey?: string): ParsedYaml {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    return {
      ok: false,
      issues: doc.errors.map((e) => ({ kind: 'invalid', file, path: '', line: lines.linePos(e.pos[0]).line, message: `not valid YAML: ${e.message.split('\n')[0]}` })),
    };
  }
  const js: unknown = doc.toJS() ?? {};
  if (listKey && Array.isArray(js)) {
    const toDoc = (s: readonly PropertyKey[]) => (s[0] === listKey ? s.slice(1) : s);
    return { ok: true, source: new YamlSource(file, doc, lines, toDoc), raw: { [listKey]: js } };
  }
  return { ok: true, source: new YamlSource(file, doc, lines), raw: js };
}

export interface DescribeOptions {
  /** Keys the schema knows at an object path, for "did you mean". */
  readonly knownKeys: (segments: readonly PropertyKey[]) => readonly string[];
  /** The rule (or test case) a path is inside: `label` prefixes the message, `rule` is the rule's name. */
  readonly ownerOf?: (segments: readonly PropertyKey[]) => { readonly label: string; readonly rule?: string } | undefined;
}

export function describeZodIssues(issues: readonly z.core.$ZodIssue[], raw: unknown, source: YamlSource, opts: DescribeOptions): PolicyIssue[] {
  return issues.flatMap((i) => describe(i, raw, source, opts));
}

function describe(issue: z.core.$ZodIssue, raw: unknown, source: YamlSource, opts: DescribeOptions): PolicyIssue[] {
  const segments = issue.path;
  const found = valueAt(raw, segments);
  const at = (segs: readonly PropertyKey[], message: string, kind: FindingKind = 'invalid'): PolicyIssue => {
    const owner = opts.ownerOf?.(segs);
    return {
      kind,
      file: source.file,
      path: formatPath(segs),
      line: source.lineOf(segs),
      message: owner ? `${owner.label}: ${message}` : message,
      ...(owner?.rule !== undefined ? { rule: owner.rule } : {}),
    };
  };
  switch (issue.code) {
    case 'unrecognized_keys':
      return issue.keys.map((key) => {
        const hint = closest(key, opts.knownKeys(segments));
        return at([...segments, key], `unknown key ${JSON.stringify(key)}${hint ? `; did you mean ${JSON.stringify(hint)}?` : ''}`, 'unknown_field');
      });
    case 'invalid_type':
      return [at(segments, found === undefined ? `required: expected ${issue.expected}, but it is missing` : `expected ${issue.expected}, found ${describeValue(found)}`)];
    case 'invalid_value':
      return [at(segments, `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(' | ')}, found ${describeValue(found)}`)];
    case 'invalid_union': {
      // A value that may take several forms: report the problems of the form it was written in.
      const branches = issue.errors.map((branch) => branch.filter((i) => !(i.code === 'invalid_type' && i.path.length === 0)));
      const best = branches.find((b) => b.length > 0);
      if (!best) return [at(segments, `expected ${unionExpectation(issue)}, found ${describeValue(found)}`)];
      return best.flatMap((inner) => describe({ ...inner, path: [...segments, ...inner.path] } as z.core.$ZodIssue, raw, source, opts));
    }
    default:
      return [at(segments, issue.message)];
  }
}

function unionExpectation(issue: z.core.$ZodIssue & { code: 'invalid_union' }): string {
  const kinds = new Set<string>();
  for (const branch of issue.errors) {
    for (const i of branch) {
      if (i.path.length === 0 && i.code === 'invalid_type') kinds.add(i.expected === 'array' ? 'a list' : String(i.expected));
      else if (i.path.length === 0 && i.code === 'invalid_value') for (const v of i.values) kinds.add(JSON.stringify(v));
    }
  }
  return kinds.size ? [...kinds].join(' or ') : 'one of the documented forms';
}

export function valueAt(raw: unknown, segments: readonly PropertyKey[]): unknown {
  let cur: unknown = raw;
  for (const s of segments) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[s];
  }
  return cur;
}

export function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null (an empty value)';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  return `${typeof v} ${JSON.stringify(v)}`;
}

export function closest(word: string, candidates: readonly string[]): string | undefined {
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
