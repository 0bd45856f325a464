/**
 * Reads a policy folder and compiles it into a `PolicySet`, or fails with a ConfigError that
 * names, for every problem, the file, the line, the rule and the field.
 *
 * - Files: `*.yaml` / `*.yml` directly in the folder, read in name order (`00-settings.yaml`,
 *   `10-connect.yaml`, …). Sub-folders (`lists/`, `tests/`) are not rule files.
 * - List files: a list entry `file:lists/blocked.txt` reads one entry per line, `#` comments
 *   and blank lines ignored, relative to the policy folder.
 * - The whole set is validated before anything is returned, so a reload either swaps in a
 *   complete new set or keeps the old one.
 */
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, formatPath } from '../parsing/errors.js';
import { CidrSet, parseCidr, type Cidr } from '../parsing/cidr.js';
import { parseSize } from '../parsing/units.js';
import { parseRate } from '../limits/rate.js';
import type { z } from 'zod';
import type { Refusal } from '../reply.js';
import { CLIENT_KINDS, staticValue } from './client-kind.js';
import { planStages } from './evaluate.js';
import { PatternList } from './patterns.js';
import { BUILTIN_DEFAULTS, defaultRefusal, parseReply } from './replies.js';
import { CONDITION_KEYS, FILE_KEYS, RULE_KEYS, SETTING_KEYS, fileSchema, ruleSchema, type RawCondition, type RawPolicyFile, type RawRule, type SettingKey } from './schema.js';
import {
  AUTH_METHODS,
  IMPLICIT_RELAY_RULE,
  POLICY_STAGES,
  STAGE_ORDER,
  policyRefusal,
  type AuthMethod,
  type BuiltinCheck,
  type BuiltinType,
  type Condition,
  type DefaultAction,
  type HeaderField,
  type PolicySet,
  type PolicySettings,
  type PolicyStage,
  type RefusingAction,
  type Rule,
  type RuleAction,
  type RuleMode,
  type TimeRange,
} from './types.js';
import { describeZodIssues, parseYaml, valueAt, type FindingKind, type PolicyIssue, type YamlSource } from '../parsing/yaml-source.js';

// ── public entry points ───────────────────────────────────────────────────────────────────

/**
 * Loads and validates every rule file in `dir`. Throws ConfigError listing every problem
 * (`issues` are PolicyIssues: ConfigIssues with a `kind` and the `rule` they are in).
 */
export async function loadPolicySet(dir: string): Promise<PolicySet> {
  let names: string[];
  try {
    const entries = await readdir(dir, { withFileTypes: true });
    names = entries.filter((e) => e.isFile() && /\.ya?ml$/i.test(e.name) && !e.name.startsWith('.')).map((e) => e.name);
  } catch (err) {
    throw new ConfigError([{ file: dir, path: '', message: `cannot read the policy folder: ${(err as Error).message}` }]);
  }
  names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const texts: PolicyFileText[] = [];
  const issues: PolicyIssue[] = [];
  for (const name of names) {
    const file = path.join(dir, name);
    try {
      texts.push({ file, text: await readFile(file, 'utf8') });
    } catch (err) {
      issues.push({ kind: 'invalid', file, path: '', message: `cannot read the policy file: ${(err as Error).message}` });
    }
  }
  const parsed = parsePolicyFiles(texts, issues);
  const lists = await readListFiles(dir, parsed);
  const set = compilePolicySet(dir, parsed, lists, issues);
  if (issues.length > 0) throw new ConfigError(issues);
  return set;
}

/**
 * The set used when the config names no policy folder: no rules, default accept, and relay
 * protection on, so that even then smtpgate is never an open relay.
 */
export function emptyPolicySet(timezone = systemTimezone()): PolicySet {
  return compilePolicySet('', [], new Map(), [], timezone);
}

export function systemTimezone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
}

// ── parsing ───────────────────────────────────────────────────────────────────────────────

export interface PolicyFileText {
  readonly file: string;
  readonly text: string;
}

interface ParsedFile {
  readonly file: string;
  readonly source: YamlSource;
  /** The settings; empty when the file's top level has a problem. */
  readonly raw: RawPolicyFile;
  /** The rules by position; undefined where a rule has a problem (already reported). */
  readonly rules: readonly (RawRule | undefined)[];
}

function parsePolicyFiles(texts: readonly PolicyFileText[], issues: PolicyIssue[]): ParsedFile[] {
  const out: ParsedFile[] = [];
  for (const { file, text } of texts) {
    const y = parseYaml(text, file, 'rules');
    if (!y.ok) {
      issues.push(...y.issues);
      continue;
    }
    if (y.raw === null || typeof y.raw !== 'object') {
      issues.push({ kind: 'invalid', file, path: '', line: 1, message: 'expected a map (settings and rules:) or a list of rules' });
      continue;
    }
    const describe = (zodIssues: readonly z.core.$ZodIssue[]) => describeZodIssues(zodIssues, y.raw, y.source, { knownKeys, ownerOf: (s) => ruleOwner(y.raw, s) });
    const result = fileSchema.safeParse(y.raw);
    if (!result.success) issues.push(...describe(result.error.issues));
    const rawRules = (y.raw as { rules?: unknown }).rules;
    const rules = (Array.isArray(rawRules) ? rawRules : []).map((r: unknown, i) => {
      const parsed = ruleSchema.safeParse(r);
      if (parsed.success) return parsed.data;
      issues.push(...describe(parsed.error.issues.map((issue) => ({ ...issue, path: ['rules', i, ...issue.path] }))));
      return undefined;
    });
    const settings: RawPolicyFile = {};
    if (result.success) for (const key of SETTING_KEYS) if (result.data[key] !== undefined) Object.assign(settings, { [key]: result.data[key] });
    out.push({ file, source: y.source, raw: settings, rules });
  }
  return out;
}

function knownKeys(segments: readonly PropertyKey[]): readonly string[] {
  if (segments.length === 0) return FILE_KEYS;
  if (segments.length === 2 && segments[0] === 'rules') return RULE_KEYS;
  const last = segments[segments.length - 1];
  const prev = segments[segments.length - 2];
  if (last === 'when' || last === 'not' || (typeof last === 'number' && (prev === 'any' || prev === 'all'))) return CONDITION_KEYS;
  if (last === 'default') return POLICY_STAGES;
  return [];
}

function ruleOwner(raw: unknown, segments: readonly PropertyKey[]): { label: string; rule?: string } | undefined {
  if (segments[0] !== 'rules' || typeof segments[1] !== 'number') return undefined;
  const name = valueAt(raw, ['rules', segments[1], 'name']);
  return typeof name === 'string' ? { label: `rule ${JSON.stringify(name)}`, rule: name } : { label: `rule #${segments[1] + 1}` };
}

// ── list files ────────────────────────────────────────────────────────────────────────────

interface ListFile {
  readonly file: string;
  readonly entries: readonly { readonly text: string; readonly line: number }[];
}
type ListFiles = ReadonlyMap<string, ListFile | { readonly error: string }>;

/** Fields whose entries may be `file:PATH`. */
const LIST_FIELDS = new Set([
  'clientIp', 'listener', 'tlsVersion', 'user', 'group', 'helo', 'sender', 'senderDomain', 'recipient', 'recipientDomain',
  'attachmentName', 'attachmentType', 'internalDomains', 'trustedNetworks', 'allow', 'networks',
]);
const LIST_PREFIX = 'file:';

function listRefs(value: unknown, out: Set<string>, key?: string): void {
  if (Array.isArray(value)) for (const v of value) listRefs(v, out, key);
  else if (typeof value === 'string') {
    if (key && LIST_FIELDS.has(key) && value.startsWith(LIST_PREFIX)) out.add(value.slice(LIST_PREFIX.length).trim());
  } else if (value && typeof value === 'object') for (const [k, v] of Object.entries(value)) listRefs(v, out, k);
}

async function readListFiles(dir: string, files: readonly ParsedFile[]): Promise<ListFiles> {
  const refs = new Set<string>();
  for (const f of files) listRefs({ ...f.raw, rules: f.rules }, refs);
  const out = new Map<string, ListFile | { error: string }>();
  await Promise.all(
    [...refs].map(async (ref) => {
      const file = path.isAbsolute(ref) ? ref : path.join(dir, ref);
      try {
        out.set(listKey(dir, ref), { file, entries: parseListFile(await readFile(path.resolve(dir, ref), 'utf8')) });
      } catch (err) {
        out.set(listKey(dir, ref), { error: (err as Error).message });
      }
    }),
  );
  return out;
}

const listKey = (dir: string, ref: string) => path.resolve(dir, ref);

/** One entry per line; "#" starts a comment (at the start of a line or after white space). */
export function parseListFile(text: string): { text: string; line: number }[] {
  const entries: { text: string; line: number }[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const t = raw.replace(/(^|\s)#.*$/, '').trim();
    if (t) entries.push({ text: t, line: i + 1 });
  });
  return entries;
}

// ── compiling ─────────────────────────────────────────────────────────────────────────────

interface Ctx {
  readonly dir: string;
  readonly source: YamlSource;
  readonly lists: ListFiles;
  readonly issues: PolicyIssue[];
  /** The rule being compiled, to name it in messages. */
  rule?: string;
}

function report(ctx: Ctx, segments: readonly PropertyKey[], message: string, kind: FindingKind = 'invalid'): void {
  ctx.issues.push({
    kind,
    file: ctx.source.file,
    path: formatPath(segments),
    line: ctx.source.lineOf(segments),
    message: ctx.rule !== undefined ? `rule ${JSON.stringify(ctx.rule)}: ${message}` : message,
    ...(ctx.rule !== undefined ? { rule: ctx.rule } : {}),
  });
}

type Validator = (entry: string) => string | undefined;

interface Expanded {
  readonly values: string[];
  readonly label: string;
}

/** A one-or-many field with `file:` entries read in; every entry validated, problems reported where they are. */
function expand(ctx: Ctx, segs: readonly PropertyKey[], value: string | string[], validate: Validator, kind: FindingKind = 'invalid'): Expanded {
  const single = typeof value === 'string';
  const list = single ? [value] : value;
  const values: string[] = [];
  const labels: string[] = [];
  if (list.length === 0) report(ctx, segs, 'expected at least one entry, found an empty list');
  list.forEach((v, i) => {
    const at = single ? segs : [...segs, i];
    if (v.startsWith(LIST_PREFIX)) {
      const ref = v.slice(LIST_PREFIX.length).trim();
      const lf = ctx.lists.get(listKey(ctx.dir, ref));
      if (!lf || 'error' in lf) {
        report(ctx, at, `cannot read list file ${JSON.stringify(ref)}: ${lf && 'error' in lf ? lf.error : 'not found'}`);
        return;
      }
      const where = `list file used at ${ctx.source.file}:${ctx.source.lineOf(at) ?? '?'} ${formatPath(at)}${ctx.rule !== undefined ? ` in rule ${JSON.stringify(ctx.rule)}` : ''}`;
      for (const e of lf.entries) {
        const err = validate(e.text);
        if (err) ctx.issues.push({ kind, file: lf.file, path: '', line: e.line, message: `${err} (${where})`, ...(ctx.rule !== undefined ? { rule: ctx.rule } : {}) });
        else values.push(e.text);
      }
      labels.push(`${v} (${lf.entries.length} entries)`);
      return;
    }
    const t = v.trim();
    const err = validate(t);
    if (err) report(ctx, at, err, kind);
    else {
      values.push(t);
      labels.push(t);
    }
  });
  return { values, label: labels.join(', ') };
}

const found = (v: string) => `found ${JSON.stringify(v)}`;

const V = {
  cidr: (v: string) => (parseCidr(v) ? undefined : `expected an address or CIDR such as 10.0.0.0/8 or 2001:db8::/32, ${found(v)}`),
  listener: (v: string) => (/^[a-z][a-z0-9_-]{0,31}$/.test(v) ? undefined : `expected a listener name such as "submission", ${found(v)}`),
  tlsVersion: (v: string) => (['TLSv1', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3'].includes(v) ? undefined : `expected one of "TLSv1.2" | "TLSv1.3" (or the old "TLSv1" | "TLSv1.1"), ${found(v)}`),
  authMethod: (v: string) => ((AUTH_METHODS as readonly string[]).includes(v) ? undefined : `expected one of ${AUTH_METHODS.map((m) => JSON.stringify(m)).join(' | ')}, ${found(v)}`),
  word: (what: string) => (v: string) => (/^\S+$/.test(v) ? undefined : `expected ${what} without spaces, ${found(v)}`),
  group: (v: string) => (/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(v) ? undefined : `expected a group name of letters, digits, "_", "." or "-", ${found(v)}`),
  domain: (v: string) =>
    v.includes('@')
      ? `expected a domain such as corp.example or *.corp.example, ${found(v)}; to match addresses use sender/recipient`
      : /^[^\s<>,;]+$/.test(v)
        ? undefined
        : `expected a domain such as corp.example or *.corp.example, ${found(v)}`,
  address: (allowNull: boolean) => (v: string) =>
    (allowNull && v === '<>') || /^[^\s@<>]*@[^\s@<>]+$/.test(v)
      ? undefined
      : `expected an address such as alice@corp.example or *@corp.example${allowNull ? ' (or <> for the null sender)' : ''}, ${found(v)}${v.includes('@') ? '' : '; to match a domain use senderDomain/recipientDomain'}`,
  // eslint-disable-next-line no-control-regex
  filename: (v: string) => (v !== '' && !/[\x00-\x1f\x7f]/.test(v) ? undefined : `expected a file name or glob such as *.exe, ${found(v)}`),
  contentType: (v: string) => (v === '*' || /^[A-Za-z0-9*?!#$&^_.+-]+\/[A-Za-z0-9*?!#$&^_.+-]+$/.test(v) ? undefined : `expected a content type such as application/x-msdownload or application/*, ${found(v)}`),
};

/** The stage from which a condition's fact is known. */
const FACT_STAGE: Readonly<Record<Exclude<keyof RawCondition, 'not' | 'any' | 'all'>, PolicyStage>> = {
  clientIp: 'connect',
  listener: 'connect',
  tls: 'connect',
  tlsVersion: 'connect',
  trusted: 'connect',
  time: 'connect',
  days: 'connect',
  authenticated: 'auth',
  authMethod: 'auth',
  user: 'auth',
  group: 'auth',
  helo: 'auth',
  sender: 'mail',
  senderDomain: 'mail',
  senderInternal: 'mail',
  declaredSizeOver: 'mail',
  recipient: 'rcpt',
  recipientDomain: 'rcpt',
  recipientInternal: 'rcpt',
  recipientsOver: 'rcpt',
  header: 'data',
  attachmentName: 'data',
  attachmentType: 'data',
  messageSizeOver: 'data',
  scanIncomplete: 'data',
};

const DAY_NAMES = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];

/** Compiles one condition map into its parts (all must hold). */
function compileParts(ctx: Ctx, raw: RawCondition, segs: readonly PropertyKey[], stage: PolicyStage): Condition[] {
  const parts: Condition[] = [];
  for (const [key, value] of Object.entries(raw) as [keyof RawCondition, unknown][]) {
    if (value === undefined) continue;
    const at = [...segs, key];
    if (key !== 'not' && key !== 'any' && key !== 'all') {
      const known = FACT_STAGE[key];
      if (STAGE_ORDER[known] > STAGE_ORDER[stage]) {
        report(ctx, at, `${key} is not known yet at stage ${stage}; it is known from stage ${known} on`);
        continue;
      }
    }
    const c = compileLeaf(ctx, key, value, at, stage);
    if (c) parts.push(c);
  }
  return parts;
}

function combine(parts: Condition[]): Condition | undefined {
  if (parts.length === 0) return undefined;
  return parts.length === 1 ? parts[0] : { kind: 'all', of: parts };
}

function compileLeaf(ctx: Ctx, key: keyof RawCondition, value: unknown, at: readonly PropertyKey[], stage: PolicyStage): Condition | undefined {
  const list = (validate: Validator, kind?: FindingKind) => expand(ctx, at, value as string | string[], validate, kind);
  switch (key) {
    case 'clientIp': {
      const e = list(V.cidr, 'bad_cidr');
      return { kind: 'clientIp', set: new CidrSet(e.values.map((v) => parseCidr(v)!)), text: e.label };
    }
    case 'listener':
      return { kind: 'listener', names: list(V.listener).values };
    case 'tls':
    case 'authenticated':
    case 'trusted':
    case 'senderInternal':
    case 'recipientInternal':
    case 'scanIncomplete':
      return { kind: key, value: value as boolean };
    case 'tlsVersion':
      return { kind: 'tlsVersion', versions: list(V.tlsVersion).values };
    case 'authMethod':
      return { kind: 'authMethod', methods: list(V.authMethod).values as AuthMethod[] };
    case 'user':
      return { kind: 'user', list: patternList(list(V.word('a user name'))) };
    case 'group':
      return { kind: 'group', groups: list(V.group).values, source: { file: ctx.source.file, line: ctx.source.lineOf(at) } };
    case 'helo':
      return { kind: 'helo', list: patternList(list(V.word('an EHLO name'))) };
    case 'sender':
      return { kind: 'sender', list: patternList(list(V.address(true))) };
    case 'recipient':
      return { kind: 'recipient', list: patternList(list(V.address(false))) };
    case 'senderDomain':
    case 'recipientDomain':
      return { kind: key, list: patternList(list(V.domain)) };
    case 'attachmentName':
      return { kind: 'attachmentName', list: patternList(list(V.filename)) };
    case 'attachmentType':
      return { kind: 'attachmentType', list: patternList(list(V.contentType)) };
    case 'recipientsOver': {
      const n = value as number;
      if (!Number.isSafeInteger(n) || n < 0) return void report(ctx, at, `expected a whole number, found ${n}`);
      return { kind: 'recipientsOver', max: n };
    }
    case 'declaredSizeOver':
    case 'messageSizeOver': {
      const bytes = parseSize(value as string | number);
      if (bytes === undefined) return void report(ctx, at, `expected a size such as "10MB" or "512KiB", found ${JSON.stringify(value)}`);
      return { kind: 'sizeOver', fact: key === 'declaredSizeOver' ? 'declaredSize' : 'messageSize', max: bytes };
    }
    case 'header':
      return compileHeaderMatch(ctx, value as Record<string, string | string[]>, at);
    case 'time': {
      const ranges: TimeRange[] = [];
      const e = list((v) => (parseTimeRange(v) ? undefined : `expected a time range such as "08:00-18:00" (24-hour clock; "22:00-06:00" spans midnight), ${found(v)}`));
      for (const v of e.values) ranges.push(parseTimeRange(v)!);
      return { kind: 'time', ranges, text: e.label };
    }
    case 'days': {
      const days = new Set<number>();
      const e = list((v) => (parseDays(v) ? undefined : `expected days such as mon, "mon-fri" or sat, ${found(v)}`));
      for (const v of e.values) for (const d of parseDays(v)!) days.add(d);
      return { kind: 'days', days, text: e.label };
    }
    case 'not': {
      const parts = compileParts(ctx, value as RawCondition, at, stage);
      const inner = combine(parts);
      if (!inner) return void report(ctx, at, 'not: needs at least one condition');
      return { kind: 'not', of: inner };
    }
    case 'any':
    case 'all': {
      const items = value as RawCondition[];
      if (items.length === 0) return void report(ctx, at, `${key}: needs at least one condition map`);
      const of: Condition[] = [];
      items.forEach((item, i) => {
        const c = combine(compileParts(ctx, item, [...at, i], stage));
        if (c) of.push(c);
        else report(ctx, [...at, i], `${key}: an entry needs at least one condition`);
      });
      return { kind: key, of };
    }
  }
}

function patternList(e: Expanded): PatternList {
  return new PatternList(e.values, e.label);
}

function compileHeaderMatch(ctx: Ctx, value: Record<string, string | string[]>, at: readonly PropertyKey[]): Condition | undefined {
  const parts: Condition[] = [];
  const entries = Object.entries(value);
  if (entries.length === 0) return void report(ctx, at, 'expected a header name and a pattern, e.g. header: { X-Mailer: "^PHPMailer" }');
  for (const [name, patterns] of entries) {
    const hat = [...at, name];
    if (!/^[\x21-\x39\x3b-\x7e]+$/.test(name)) {
      report(ctx, hat, `expected a header name such as Subject or X-Mailer, found ${JSON.stringify(name)}`);
      continue;
    }
    const res: RegExp[] = [];
    const list = typeof patterns === 'string' ? [patterns] : patterns;
    list.forEach((p, i) => {
      try {
        // Case-insensitive, like Postfix's regexp tables.
        res.push(new RegExp(p, 'i'));
      } catch (err) {
        report(ctx, typeof patterns === 'string' ? hat : [...hat, i], `not a valid regular expression: ${(err as Error).message}`);
      }
    });
    if (res.length) parts.push({ kind: 'header', name: name.toLowerCase(), patterns: res });
  }
  return combine(parts);
}

export function parseTimeRange(v: string): TimeRange | undefined {
  const m = /^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$/.exec(v);
  if (!m) return undefined;
  const from = Number(m[1]) * 60 + Number(m[2]);
  const to = Number(m[3]) * 60 + Number(m[4]);
  if (Number(m[2]) > 59 || Number(m[4]) > 59 || from > 24 * 60 || to > 24 * 60 || from === to) return undefined;
  return { from: from % (24 * 60), to: to === 24 * 60 ? 24 * 60 : to };
}

export function parseDays(v: string): number[] | undefined {
  const m = /^\s*([a-z]{3})[a-z]*\s*(?:-\s*([a-z]{3})[a-z]*\s*)?$/i.exec(v);
  if (!m) return undefined;
  const a = DAY_NAMES.indexOf(m[1]!.toLowerCase());
  const b = m[2] === undefined ? a : DAY_NAMES.indexOf(m[2].toLowerCase());
  if (a < 0 || b < 0) return undefined;
  const out: number[] = [];
  for (let d = a; ; d = (d + 1) % 7) {
    out.push(d);
    if (d === b) break;
  }
  return out;
}

// ── rules ─────────────────────────────────────────────────────────────────────────────────

const RULE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

const BUILTIN_STAGES: Readonly<Record<BuiltinType, { allowed: readonly PolicyStage[]; default?: readonly PolicyStage[] }>> = {
  sender_binding: { allowed: ['mail', 'data'], default: ['mail', 'data'] },
  relay_protection: { allowed: ['rcpt'], default: ['rcpt'] },
  trusted_networks: { allowed: POLICY_STAGES },
  recipient_domains: { allowed: ['rcpt'], default: ['rcpt'] },
  max_recipients: { allowed: ['rcpt'], default: ['rcpt'] },
  max_size: { allowed: ['mail', 'data'], default: ['mail', 'data'] },
};

const REFUSING = new Set(['reject', 'tempfail', 'require_tls', 'require_auth']);

/** Which rule fields go with which action or type: the rest are mistakes worth naming. */
const FIELD_OWNERS: Readonly<Record<string, { ok: (action: string, type: BuiltinType | undefined) => boolean; needs: string }>> = {
  reply: { ok: (a) => REFUSING.has(a), needs: 'action reject, tempfail, require_tls or require_auth' },
  header: { ok: (a) => a === 'add_header', needs: 'action: add_header' },
  rate: { ok: (a) => a === 'limit', needs: 'action: limit' },
  per: { ok: (a) => a === 'limit', needs: 'action: limit' },
  max: { ok: (_a, t) => t === 'max_recipients' || t === 'max_size', needs: 'type max_recipients or max_size' },
  allow: { ok: (_a, t) => t === 'recipient_domains', needs: 'type: recipient_domains' },
  allowInternal: { ok: (_a, t) => t === 'recipient_domains', needs: 'type: recipient_domains' },
  allowNullSender: { ok: (_a, t) => t === 'sender_binding', needs: 'type: sender_binding' },
  networks: { ok: (_a, t) => t === 'trusted_networks', needs: 'type: trusted_networks' },
};

function compileRule(ctx: Ctx, raw: RawRule, index: number, names: Map<string, string>): Rule[] {
  const segs = ['rules', index] as const;
  const at = (...more: PropertyKey[]) => [...segs, ...more];
  ctx.rule = raw.name;
  const before = ctx.issues.length;

  if (!RULE_NAME.test(raw.name)) {
    report(ctx, at('name'), `expected a rule name of letters, digits, "_", "." or "-" (it becomes a metric label), found ${JSON.stringify(raw.name)}`);
  } else if (raw.name === 'default') {
    report(ctx, at('name'), '"default" is reserved for the fall-through decision; choose another name');
  } else if (names.has(raw.name)) {
    report(ctx, at('name'), `the name is already used by the rule at ${names.get(raw.name)}; names must be unique (they label metrics and log lines)`);
  } else names.set(raw.name, `${ctx.source.file}:${ctx.source.lineOf(segs) ?? '?'}`);

  const type = raw.type;
  let actionName: string;
  if (type) {
    actionName = raw.action ?? BUILTIN_DEFAULTS[type].action;
    if (!['accept', 'reject', 'tempfail'].includes(actionName)) {
      report(ctx, at('action'), `a type: ${type} rule can accept, reject or tempfail, found ${JSON.stringify(actionName)}`);
      return [];
    }
  } else if (raw.action) {
    actionName = raw.action;
  } else {
    report(ctx, segs, 'required: an action (accept, reject, tempfail, require_tls, require_auth, add_header, limit) or a type (sender_binding, relay_protection, …)');
    return [];
  }

  // Stages.
  let stages: PolicyStage[];
  if (raw.stage !== undefined) {
    stages = [...new Set(typeof raw.stage === 'string' ? [raw.stage] : raw.stage)];
    if (stages.length === 0) report(ctx, at('stage'), 'expected at least one stage: connect, auth, mail, rcpt or data');
  } else if (type && BUILTIN_STAGES[type].default) {
    stages = [...BUILTIN_STAGES[type].default!];
  } else {
    report(ctx, segs, 'required: stage (connect, auth, mail, rcpt or data), the point in the session where the rule runs');
    return [];
  }
  stages.sort((a, b) => STAGE_ORDER[a] - STAGE_ORDER[b]);
  if (type) {
    const bad = stages.filter((s) => !BUILTIN_STAGES[type].allowed.includes(s));
    if (bad.length) report(ctx, at('stage'), `a type: ${type} rule runs at ${BUILTIN_STAGES[type].allowed.join(' or ')}, found ${bad.join(', ')}`);
  }
  const first = stages[0] ?? 'connect';

  for (const [field, owner] of Object.entries(FIELD_OWNERS)) {
    if ((raw as Record<string, unknown>)[field] !== undefined && !owner.ok(actionName, type)) {
      report(ctx, at(field), `${JSON.stringify(field)} only goes with ${owner.needs}; this rule has ${type ? `type: ${type}, ` : ''}action: ${actionName}`);
    }
  }

  const mode: RuleMode = raw.mode ?? 'enforce';
  if (mode === 'audit' && !REFUSING.has(actionName)) {
    report(ctx, at('mode'), `mode: audit is for rules that refuse (reject, tempfail, require_tls, require_auth); this rule's action ${actionName} never refuses`);
  }

  // Conditions.
  const parts = raw.when ? compileParts(ctx, raw.when, at('when'), first) : [];
  const check = type ? compileBuiltin(ctx, type, raw, at) : undefined;
  if (check) parts.push({ kind: 'builtin', check });
  const when = combine(parts);

  // The action, per stage (a refusal's default text depends on the stage).
  const actions = new Map<PolicyStage, RuleAction>();
  for (const stage of stages) {
    const a = compileAction(ctx, raw, actionName, type, stage, stage === first, at);
    if (a) actions.set(stage, a);
  }
  if (actionName === 'add_header' && stages.includes('data')) {
    report(ctx, at('stage'), 'add_header can\'t run at data: by then the message header has gone on to the mail server; tag the message at mail or rcpt');
  }
  if (actionName === 'limit' && raw.per) {
    const needs: PolicyStage | undefined = raw.per === 'user' ? 'auth' : raw.per === 'sender' ? 'mail' : undefined;
    if (needs && STAGE_ORDER[first] < STAGE_ORDER[needs]) report(ctx, at('per'), `per: ${raw.per} is not known at stage ${first}; use a stage from ${needs} on, or per: ip`);
  }

  ctx.rule = undefined;
  if (ctx.issues.length > before) return [];
  const base = {
    name: raw.name,
    stages,
    ...(type ? { type } : {}),
    mode,
    when,
    ...(raw.description !== undefined ? { description: raw.description } : {}),
    source: { file: ctx.source.file, line: ctx.source.lineOf(segs) },
    whenText: raw.when === undefined ? undefined : stableJson(raw.when),
  };
  return stages.map((stage) => ({ ...base, stage, action: actions.get(stage)! }));
}

function compileBuiltin(ctx: Ctx, type: BuiltinType, raw: RawRule, at: (...more: PropertyKey[]) => PropertyKey[]): BuiltinCheck | undefined {
  switch (type) {
    case 'sender_binding':
      return { type, allowNullSender: raw.allowNullSender ?? false };
    case 'relay_protection':
      return { type };
    case 'trusted_networks': {
      if (raw.networks === undefined) return { type, networks: undefined };
      const e = expand(ctx, at('networks'), raw.networks, V.cidr, 'bad_cidr');
      return { type, networks: new CidrSet(e.values.map((v) => parseCidr(v)!)) };
    }
    case 'recipient_domains': {
      if (raw.allow === undefined) return void report(ctx, at(), 'required: allow, the recipient domains this rule permits (e.g. allow: [partner.example])');
      const e = expand(ctx, at('allow'), raw.allow, V.domain);
      return { type, allow: new PatternList(e.values, e.label), allowInternal: raw.allowInternal ?? true };
    }
    case 'max_recipients': {
      const n = raw.max;
      if (n === undefined) return void report(ctx, at(), 'required: max, the most recipients one message may have (e.g. max: 50)');
      if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1) return void report(ctx, at('max'), `expected a whole number of at least 1, found ${JSON.stringify(n)}`);
      return { type, max: n };
    }
    case 'max_size': {
      if (raw.max === undefined) return void report(ctx, at(), 'required: max, the largest message allowed (e.g. max: 10MB)');
      const bytes = parseSize(raw.max);
      if (bytes === undefined || bytes < 1) return void report(ctx, at('max'), `expected a size such as "10MB" or "512KiB", found ${JSON.stringify(raw.max)}`);
      return { type, max: bytes };
    }
  }
}

function compileAction(
  ctx: Ctx,
  raw: RawRule,
  action: string,
  type: BuiltinType | undefined,
  stage: PolicyStage,
  reportProblems: boolean,
  at: (...more: PropertyKey[]) => PropertyKey[],
): RuleAction | undefined {
  const problem = (segs: PropertyKey[], message: string) => {
    if (reportProblems) report(ctx, segs, message);
  };
  switch (action) {
    case 'accept':
      return { kind: 'accept' };
    case 'reject':
    case 'tempfail':
    case 'require_tls':
    case 'require_auth': {
      let refusal = refusalFor(stage, action, type);
      if (raw.reply !== undefined) {
        const parsed = parseReply(raw.reply, action, refusal);
        if (!parsed.ok) return void problem(at('reply'), `${parsed.message}; write it as "550 5.7.1 Text"`);
        refusal = parsed.refusal;
      }
      return { kind: action, refusal };
    }
    case 'add_header': {
      if (raw.header === undefined) return void problem(at(), 'required: header, the line to add, e.g. header: "X-Smtpgate-Policy: external"');
      const list = typeof raw.header === 'string' ? [raw.header] : raw.header;
      const headers: HeaderField[] = [];
      list.forEach((h, i) => {
        const parsed = parseHeaderLine(h);
        if (typeof parsed === 'string') problem(typeof raw.header === 'string' ? at('header') : at('header', i), parsed);
        else headers.push(parsed);
      });
      return headers.length === list.length ? { kind: 'add_header', headers } : undefined;
    }
    case 'limit': {
      if (raw.rate === undefined || raw.per === undefined) return void problem(at(), 'required: rate and per, e.g. rate: 50/1h and per: user (or ip, or sender)');
      const parsed = parseRate(raw.rate);
      if (!parsed.ok) return void problem(at('rate'), parsed.message);
      return { kind: 'limit', rate: parsed.rate, rateText: raw.rate.trim(), per: raw.per };
    }
  }
  return undefined;
}

function refusalFor(stage: PolicyStage, action: RefusingAction, type: BuiltinType | undefined): Refusal {
  if (!type) return defaultRefusal(stage, action);
  const d = BUILTIN_DEFAULTS[type];
  if (d.reply && action === d.action) return policyRefusal(...d.reply(stage), d.reason);
  return defaultRefusal(stage, action, d.reason);
}

/**
 * "Name: value" for add_header. Static text from the policy file only; still checked, since a
 * CR or LF in it would let the line start a header (or the body) of its own.
 */
export function parseHeaderLine(line: string): HeaderField | string {
  const colon = line.indexOf(':');
  if (colon <= 0) return `expected "Name: value", e.g. "X-Smtpgate-Policy: external", found ${JSON.stringify(line)}`;
  const name = line.slice(0, colon).trim();
  const value = line.slice(colon + 1).trim();
  if (!/^[A-Za-z0-9][A-Za-z0-9-]{0,75}$/.test(name)) return `the header name must be letters, digits and "-", found ${JSON.stringify(name)}`;
  if (/^(received|from|sender|to|cc|bcc|date|message-id|return-path|subject|reply-to|content-[a-z-]+|mime-version)$/i.test(name)) {
    return `smtpgate won't add ${name}: it would change what the message says; use an X- header`;
  }
  if (value === '') return `the header ${name} needs a value`;
  if (!/^[\x20-\x7e\t]+$/.test(value)) return `the header value must be one line of printable ASCII (no CR, LF or control characters), found ${JSON.stringify(value)}`;
  if (name.length + 2 + value.length > 900) return 'the header line is too long; keep it under 900 characters (RFC 5322 §2.1.1 allows 998)';
  return { name, value };
}

function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stableJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

// ── the set ───────────────────────────────────────────────────────────────────────────────

function compileSettings(files: readonly ParsedFile[], lists: ListFiles, issues: PolicyIssue[], dir: string, timezoneDefault: string): PolicySettings {
  const setAt = new Map<SettingKey, string>();
  let internal: PatternList = new PatternList([], '(none)');
  let trusted: Cidr[] = [];
  let timezone = timezoneDefault;
  const defaults: Record<PolicyStage, DefaultAction> = { connect: 'accept', auth: 'accept', mail: 'accept', rcpt: 'accept', data: 'accept' };
  let relayProtection = true;
  for (const f of files) {
    const ctx: Ctx = { dir, source: f.source, lists, issues };
    for (const key of SETTING_KEYS) {
      const value = f.raw[key];
      if (value === undefined) continue;
      const where = `${f.file}:${f.source.lineOf([key]) ?? '?'}`;
      if (setAt.has(key)) {
        report(ctx, [key], `${key} is already set at ${setAt.get(key)}; set each setting in one file only`);
        continue;
      }
      setAt.set(key, where);
      switch (key) {
        case 'internalDomains': {
          const e = expand(ctx, [key], value as string | string[], V.domain);
          internal = new PatternList(e.values, e.label);
          break;
        }
        case 'trustedNetworks':
          trusted = expand(ctx, [key], value as string | string[], V.cidr, 'bad_cidr').values.map((v) => parseCidr(v)!);
          break;
        case 'timezone':
          try {
            new Intl.DateTimeFormat('en-US', { timeZone: value as string });
            timezone = value as string;
          } catch {
            report(ctx, [key], `unknown time zone ${JSON.stringify(value)}; expected an IANA name such as "Europe/Berlin" or "UTC"`);
          }
          break;
        case 'default':
          if (typeof value === 'string') for (const s of POLICY_STAGES) defaults[s] = value as DefaultAction;
          else Object.assign(defaults, value);
          break;
        case 'relayProtection':
          relayProtection = value === true || value === 'on';
          break;
      }
    }
  }
  return { internalDomains: internal, trustedNetworks: new CidrSet(trusted), timezone, defaults, relayProtection };
}

function compilePolicySet(dir: string, files: readonly ParsedFile[], lists: ListFiles, issues: PolicyIssue[], timezoneDefault = systemTimezone()): PolicySet {
  const settings = compileSettings(files, lists, issues, dir, timezoneDefault);
  const rules: Rule[] = [];
  const names = new Map<string, string>();
  for (const f of files) {
    const ctx: Ctx = { dir, source: f.source, lists, issues };
    f.rules.forEach((raw, i) => {
      if (raw) rules.push(...compileRule(ctx, raw, i, names));
    });
  }
  const byStage = Object.fromEntries(POLICY_STAGES.map((s) => [s, rules.filter((r) => r.stage === s)])) as Record<PolicyStage, Rule[]>;
  if (settings.relayProtection && !byStage.rcpt.some((r) => r.type === 'relay_protection')) {
    byStage.rcpt.unshift(implicitRelayRule());
  }
  const dataRules = byStage.data.filter((r) => r.mode !== 'off');
  const scanned = (rules: readonly Rule[]) =>
    rules.some((r) => uses(r.when, (c) => c.kind === 'header' || c.kind === 'attachmentName' || c.kind === 'attachmentType' || c.kind === 'scanIncomplete' || (c.kind === 'builtin' && c.check.type === 'sender_binding')));
  return {
    dir,
    files: files.map((f) => f.file),
    settings,
    rules,
    ruleCount: names.size,
    byStage,
    plan: planStages(byStage, settings),
    // Only the rules a client of the kind could meet: sender binding reads From: headers of an authenticated client's message only.
    scans: Object.freeze(CLIENT_KINDS.map((kind) => scanned(dataRules.filter((r) => r.when === undefined || staticValue(r.when, kind) !== false)))),
  };
}

/** Runs first at rcpt unless the set has its own relay_protection rule or turns it off. */
function implicitRelayRule(): Rule {
  const d = BUILTIN_DEFAULTS.relay_protection;
  return {
    name: IMPLICIT_RELAY_RULE,
    stage: 'rcpt',
    stages: ['rcpt'],
    type: 'relay_protection',
    mode: 'enforce',
    when: { kind: 'builtin', check: { type: 'relay_protection' } },
    action: { kind: 'reject', refusal: policyRefusal(...d.reply!('rcpt'), d.reason) },
    description: 'built in: unauthenticated, untrusted clients may only send to internal domains',
    source: { file: 'built in' },
  };
}

function uses(c: Condition | undefined, pred: (c: Condition) => boolean): boolean {
  if (!c) return false;
  if (pred(c)) return true;
  if (c.kind === 'all' || c.kind === 'any') return c.of.some((x) => uses(x, pred));
  if (c.kind === 'not') return uses(c.of, pred);
  return false;
}
