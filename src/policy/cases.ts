/**
 * Policy test files: `policies/tests/*.yaml`, each a list of "this session → these decisions"
 * cases that `smtpgate policy test --all` runs against the policy set.
 *
 *   tests:
 *     - name: alice may not send as bob
 *       session:
 *         ip: 198.51.100.7
 *         user: alice
 *         addresses: [alice@corp.example]
 *         from: bob@corp.example
 *         to: friend@example.net
 *       expect:
 *         mail: { decision: reject, code: 553, rule: sender-binding }
 *
 * A stage's expectation is a word (accept, reject, tempfail, require_tls, require_auth,
 * refuse, not_reached), a reply ("553", "553 5.7.1"), or a map of decision, code, enhanced,
 * rule. `rcpt` may be a list, one expectation per `to` entry.
 */
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { formatPath } from '../parsing/errors.js';
import { parseSize } from '../parsing/units.js';
import { buildUserFacts } from './facts.js';
import { scanMessage } from './mime.js';
import { headerFromLine, simulateSession, type SessionSpec, type StageReport } from './simulate.js';
import { AUTH_METHODS, POLICY_STAGES, type Decision, type Header, type MimePart, type PolicySet, type PolicyStage } from './types.js';
import { describeZodIssues, parseYaml, valueAt, type PolicyIssue } from '../parsing/yaml-source.js';

const oneOrMany = z.union([z.string(), z.array(z.string())]);
const sizeValue = z.union([z.string(), z.number()]);

const sessionSchema = z
  .object({
    ip: z.string(),
    listener: z.string().optional(),
    tls: z.union([z.string(), z.literal(false)]).optional(),
    helo: z.string().optional(),
    user: z.string().optional(),
    /** How the user signed in: password (the default), app_password or certificate. */
    authMethod: z.enum(AUTH_METHODS).optional(),
    groups: z.array(z.string()).optional(),
    addresses: z.array(z.string()).optional(),
    trusted: z.boolean().optional(),
    from: z.string().optional(),
    to: oneOrMany.optional(),
    size: sizeValue.optional(),
    messageSize: sizeValue.optional(),
    headers: z.union([z.record(z.string(), z.string()), z.array(z.string())]).optional(),
    attachments: z.array(z.object({ name: z.string().optional(), type: z.string().optional() }).strict()).optional(),
    scanIncomplete: z.boolean().optional(),
    /** The raw message (headers, blank line, body), scanned like a real one. */
    message: z.string().optional(),
    /** A message file (.eml) relative to the test file. */
    messageFile: z.string().optional(),
    time: z.string().optional(),
  })
  .strict();

export type RawSession = z.infer<typeof sessionSchema>;

const EXPECT_WORDS = ['accept', 'reject', 'tempfail', 'require_tls', 'require_auth', 'refuse', 'not_reached'] as const;
type ExpectWord = (typeof EXPECT_WORDS)[number];

const stageExpect = z.union([
  z.string(),
  z.number(),
  z
    .object({
      decision: z.enum(EXPECT_WORDS).optional(),
      code: z.number().optional(),
      enhanced: z.string().optional(),
      rule: z.string().optional(),
    })
    .strict(),
]);

const caseSchema = z
  .object({
    name: z.string(),
    session: sessionSchema,
    expect: z
      .object({
        connect: stageExpect.optional(),
        auth: stageExpect.optional(),
        mail: stageExpect.optional(),
        rcpt: z.union([stageExpect, z.array(stageExpect)]).optional(),
        data: stageExpect.optional(),
        /** Audit-mode rules that must have fired (anywhere in the session). */
        audit: oneOrMany.optional(),
        /** Headers add_header rules must have added, "Name: value". */
        headers: oneOrMany.optional(),
      })
      .strict(),
  })
  .strict();

const testFileSchema = z.object({ tests: z.array(caseSchema) }).strict();
type RawCase = z.infer<typeof caseSchema>;
type StageExpectation = z.infer<typeof stageExpect>;

export interface PolicyTestCase {
  readonly file: string;
  readonly line?: number;
  readonly name: string;
  readonly session: SessionSpec;
  readonly expect: RawCase['expect'];
}

const CASE_KEYS = Object.keys(caseSchema.shape);
const SESSION_KEYS = Object.keys(sessionSchema.shape);
const EXPECT_KEYS = ['connect', 'auth', 'mail', 'rcpt', 'data', 'audit', 'headers'];

/** Reads every test file in `dir` (name order). Problems come back as issues with file and line. */
export async function loadTestCases(dir: string): Promise<{ cases: PolicyTestCase[]; issues: PolicyIssue[] }> {
  const cases: PolicyTestCase[] = [];
  const issues: PolicyIssue[] = [];
  let names: string[];
  try {
    names = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile() && /\.ya?ml$/i.test(e.name)).map((e) => e.name);
  } catch (err) {
    return { cases, issues: [{ kind: 'invalid', file: dir, path: '', message: `cannot read the policy tests folder: ${(err as Error).message}` }] };
  }
  names.sort();
  for (const name of names) {
    const file = path.join(dir, name);
    const y = parseYaml(await readFile(file, 'utf8'), file, 'tests');
    if (!y.ok) {
      issues.push(...y.issues);
      continue;
    }
    const parsed = testFileSchema.safeParse(y.raw);
    if (!parsed.success) {
      issues.push(
        ...describeZodIssues(parsed.error.issues, y.raw, y.source, {
          knownKeys: (s) => (s.length === 0 ? ['tests'] : s.length === 2 ? CASE_KEYS : s[2] === 'session' && s.length === 3 ? SESSION_KEYS : s[2] === 'expect' && s.length === 3 ? EXPECT_KEYS : []),
          ownerOf: (s) => {
            const n = typeof s[1] === 'number' ? valueAt(y.raw, ['tests', s[1], 'name']) : undefined;
            return typeof n === 'string' ? { label: `test ${JSON.stringify(n)}` } : undefined;
          },
        }),
      );
      continue;
    }
    for (const [i, c] of parsed.data.tests.entries()) {
      const at = (...more: PropertyKey[]) => ['tests', i, ...more];
      const problem = (segs: PropertyKey[], message: string) =>
        issues.push({ kind: 'invalid', file, path: formatPath(segs), line: y.source.lineOf(segs), message: `test ${JSON.stringify(c.name)}: ${message}` });
      const session = await sessionFromRaw(c.session, path.dirname(file), (field, message) => problem(at('session', field), message));
      if (session) cases.push({ file, line: y.source.lineOf(at()), name: c.name, session, expect: c.expect });
    }
  }
  return { cases, issues };
}

export interface SessionDefaults {
  /** Groups and addresses of a user, from the user attributes file, when the session doesn't list them. */
  readonly userLookup?: (name: string) => { addresses: readonly string[]; groups: readonly string[] } | undefined;
  readonly now?: Date;
}

/** Turns a session as written (test file or command line) into a SessionSpec; problems go to `problem`. */
export async function sessionFromRaw(raw: RawSession, baseDir: string, problem: (field: string, message: string) => void, defaults: SessionDefaults = {}): Promise<SessionSpec | undefined> {
  let ok = true;
  const fail = (field: string, message: string) => {
    ok = false;
    problem(field, message);
  };
  const size = (field: 'size' | 'messageSize') => {
    const v = raw[field];
    if (v === undefined) return undefined;
    const n = parseSize(v);
    if (n === undefined) fail(field, `expected a size such as "2MB", found ${JSON.stringify(v)}`);
    return n;
  };
  const declaredSize = size('size');
  let messageSize = size('messageSize');
  const tls = raw.tls === false ? undefined : (raw.tls ?? 'TLSv1.3');
  if (raw.user !== undefined && tls === undefined) fail('tls', 'smtpgate never accepts AUTH without TLS: a session with a user needs tls');

  let headers: Header[] | undefined;
  if (raw.headers) {
    const lines = Array.isArray(raw.headers) ? raw.headers : Object.entries(raw.headers).map(([k, v]) => `${k}: ${v}`);
    headers = [];
    for (const l of lines) {
      const h = headerFromLine(l);
      if (h) headers.push(h);
      else fail('headers', `expected "Name: value", found ${JSON.stringify(l)}`);
    }
  }
  let attachments: MimePart[] | undefined = raw.attachments?.map((a) => ({
    contentType: (a.type ?? 'application/octet-stream').toLowerCase(),
    filenames: a.name ? [a.name] : [],
    depth: 1,
  }));
  let scanIncomplete = raw.scanIncomplete;
  let headersTruncated = false;
  let message: string | Buffer | undefined = raw.message?.replace(/\r?\n/g, '\r\n');
  if (raw.messageFile !== undefined) {
    try {
      message = await readFile(path.resolve(baseDir, raw.messageFile));
    } catch (err) {
      fail('messageFile', `cannot read ${raw.messageFile}: ${(err as Error).message}`);
    }
  }
  if (message !== undefined) {
    const scan = scanMessage(message);
    headers = [...scan.headers, ...(headers ?? [])];
    attachments = [...scan.attachments, ...(attachments ?? [])];
    messageSize ??= scan.size;
    scanIncomplete ??= scan.incomplete;
    headersTruncated = scan.headersTruncated;
  }
  let now = defaults.now ?? new Date();
  if (raw.time !== undefined) {
    const t = new Date(raw.time);
    if (Number.isNaN(t.getTime())) fail('time', `expected a date and time such as "2025-03-10T14:30:00Z", found ${JSON.stringify(raw.time)}`);
    else now = t;
  }
  const looked = raw.user !== undefined ? defaults.userLookup?.(raw.user) : undefined;
  const user =
    raw.user === undefined
      ? undefined
      : buildUserFacts(raw.user, {
          addresses: (raw.addresses ?? looked?.addresses ?? []).map((a) => a.toLowerCase()),
          groups: raw.groups ?? looked?.groups ?? [],
        });
  if (!ok) return undefined;
  return {
    ip: raw.ip,
    listener: raw.listener ?? 'submission',
    tls,
    ...(raw.helo !== undefined ? { helo: raw.helo } : {}),
    ...(user ? { user } : {}),
    ...(raw.authMethod !== undefined ? { authMethod: raw.authMethod } : {}),
    trusted: raw.trusted ?? false,
    ...(raw.from !== undefined ? { from: raw.from === '<>' ? '' : raw.from } : {}),
    to: raw.to === undefined ? [] : typeof raw.to === 'string' ? [raw.to] : raw.to,
    ...(declaredSize !== undefined ? { declaredSize } : {}),
    ...(messageSize !== undefined ? { messageSize } : {}),
    ...(headers ? { headers } : {}),
    ...(attachments ? { attachments } : {}),
    ...(scanIncomplete !== undefined ? { scanIncomplete } : {}),
    ...(headersTruncated ? { headersTruncated } : {}),
    now,
  };
}

// ── checking expectations ─────────────────────────────────────────────────────────────────

export interface CaseResult {
  readonly case: PolicyTestCase;
  readonly reports: readonly StageReport[];
  /** Empty when the case passed. */
  readonly mismatches: readonly Mismatch[];
}

export interface Mismatch {
  readonly stage?: PolicyStage;
  readonly subject?: string;
  readonly message: string;
  /** The stage's report, for its trace. */
  readonly report?: StageReport;
}

export function runCase(set: PolicySet, c: PolicyTestCase): CaseResult {
  const reports = simulateSession(set, c.session);
  const mismatches: Mismatch[] = [];
  for (const stage of POLICY_STAGES) {
    const exp = c.expect[stage];
    if (exp === undefined) continue;
    const stageReports = reports.filter((r) => r.stage === stage);
    if (stage === 'rcpt') {
      const list = Array.isArray(exp) ? exp : c.session.to.map(() => exp);
      if (Array.isArray(exp) && exp.length !== c.session.to.length) {
        mismatches.push({ stage, message: `expect.rcpt lists ${exp.length} expectations for ${c.session.to.length} recipients` });
        continue;
      }
      list.forEach((e, i) => {
        const to = c.session.to[i]!;
        const report = stageReports[i];
        const why = compare(e, report);
        if (why) mismatches.push({ stage, subject: to, message: why, ...(report ? { report } : {}) });
      });
      continue;
    }
    const report = stageReports[0];
    const why = compare(exp as StageExpectation, report);
    if (why) mismatches.push({ stage, ...(report?.subject !== undefined ? { subject: report.subject } : {}), message: why, ...(report ? { report } : {}) });
  }
  if (c.expect.audit !== undefined) {
    const want = typeof c.expect.audit === 'string' ? [c.expect.audit] : c.expect.audit;
    const got = new Set(reports.flatMap((r) => r.evaluation?.audits.map((a) => a.rule) ?? []));
    for (const rule of want) if (!got.has(rule)) mismatches.push({ message: `expected audit rule ${JSON.stringify(rule)} to fire, but it didn't (fired: ${[...got].join(', ') || 'none'})` });
  }
  if (c.expect.headers !== undefined) {
    const want = typeof c.expect.headers === 'string' ? [c.expect.headers] : c.expect.headers;
    const got = reports.flatMap((r) => r.evaluation?.headers.map((h) => `${h.name}: ${h.value}`) ?? []);
    for (const h of want) if (!got.includes(h)) mismatches.push({ message: `expected header ${JSON.stringify(h)} to be added (added: ${got.map((g) => JSON.stringify(g)).join(', ') || 'none'})` });
  }
  return { case: c, reports, mismatches };
}

/** Why `report` doesn't meet `exp`, or undefined when it does. */
function compare(exp: StageExpectation, report: StageReport | undefined): string | undefined {
  const want = normalize(exp);
  if (want.decision === 'not_reached') return report ? `expected the stage not to be reached, got ${describeDecision(report.decision)}` : undefined;
  if (!report) return `expected ${describeExpectation(want)}, but the session never got to this stage`;
  const d = report.decision;
  const got = describeDecision(d);
  const fail = () => `expected ${describeExpectation(want)}, got ${got}`;
  if (want.decision && !matchesWord(want.decision, d)) return fail();
  if (want.code !== undefined && (d.kind === 'accept' || d.kind === 'continue' || d.refusal.code !== want.code)) return fail();
  if (want.enhanced !== undefined && (d.kind === 'accept' || d.kind === 'continue' || d.refusal.enhanced !== want.enhanced)) return fail();
  if (want.rule !== undefined && d.rule !== want.rule) return fail();
  return undefined;
}

interface Want {
  decision?: ExpectWord;
  code?: number;
  enhanced?: string;
  rule?: string;
}

function normalize(exp: StageExpectation): Want {
  if (typeof exp === 'number') return { code: exp };
  if (typeof exp === 'string') {
    const m = /^\s*(\d{3})(?:\s+(\d\.\d{1,3}\.\d{1,3}))?\s*$/.exec(exp);
    if (m) return { code: Number(m[1]), ...(m[2] ? { enhanced: m[2] } : {}) };
    return { decision: exp.trim() as ExpectWord };
  }
  return exp;
}

function matchesWord(word: string, d: Decision): boolean {
  switch (word) {
    case 'accept':
      // The stage lets the session go on: a rule accepted, nothing objected, or a requirement is held for later.
      return d.kind !== 'refuse';
    case 'refuse':
      return d.kind === 'refuse';
    case 'reject':
      return d.kind === 'refuse' && d.refusal.code >= 500;
    case 'tempfail':
      return d.kind === 'refuse' && d.refusal.code < 500;
    case 'require_tls':
    case 'require_auth':
      return d.kind === word || (d.kind === 'refuse' && d.action === word);
    default:
      return false;
  }
}

function describeExpectation(w: Want): string {
  const parts = [w.decision, w.code, w.enhanced].filter((x) => x !== undefined).join(' ');
  return `${parts || 'anything'}${w.rule ? ` by rule ${JSON.stringify(w.rule)}` : ''}`;
}

export function describeDecision(d: Decision): string {
  switch (d.kind) {
    case 'accept':
      return `accept (rule ${JSON.stringify(d.rule)})`;
    case 'continue':
      return 'accept (no rule decided: default)';
    case 'refuse':
      return `${d.action} ${d.refusal.code} ${d.refusal.enhanced} ${d.refusal.text} (rule ${JSON.stringify(d.rule)})`;
    default:
      return `${d.kind}: held until MAIL, then ${d.refusal.code} ${d.refusal.enhanced} if unmet (rule ${JSON.stringify(d.rule)})`;
  }
}
