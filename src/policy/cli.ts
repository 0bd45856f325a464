/**
 * `smtpgate policy check [DIR]` and `smtpgate policy test`, as functions of their parsed
 * options that return the exit code and the text to print. src/cli/main.ts registers them
 * with commander; tests call them directly.
 */
import path from 'node:path';
import { ConfigError, formatIssue, type ConfigIssue } from '../parsing/errors.js';
import { loadTestCases, runCase, sessionFromRaw, describeDecision, type RawSession, type SessionDefaults } from './cases.js';
import { lintPolicySet, type Finding } from './lint.js';
import { loadPolicySet } from './load.js';
import { simulateSession, type SessionSpec, type StageReport } from './simulate.js';
import type { PolicySet, TraceEntry } from './types.js';
import type { PolicyIssue } from '../parsing/yaml-source.js';

export interface CommandResult {
  readonly exitCode: number;
  readonly output: string;
}

// ── policy check ──────────────────────────────────────────────────────────────────────────

export interface PolicyCheckOptions {
  /** The policy folder. */
  readonly dir: string;
  /** Groups that exist (from the user attributes file); without it the unknown-group check is skipped. */
  readonly knownGroups?: ReadonlySet<string>;
  /** Why there are no known groups, when it isn't that no attributes file was given. */
  readonly groupsUnknownBecause?: string;
}

export async function runPolicyCheck(opts: PolicyCheckOptions): Promise<CommandResult> {
  let set: PolicySet;
  try {
    set = await loadPolicySet(opts.dir);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    const lines = err.issues.map((i) => `  ${formatFinding(toFinding(i))}`);
    return { exitCode: 1, output: `smtpgate policy check: ${count(err.issues.length, 'problem')} in ${opts.dir}; the set can't be loaded:\n${lines.join('\n')}\n` };
  }
  const findings = lintPolicySet(set, opts.knownGroups ? { knownGroups: opts.knownGroups } : {});
  const summary = `${opts.dir}: ${count(set.files.length, 'file')}, ${count(set.ruleCount, 'rule')}`;
  const skipped = opts.knownGroups ? '' : `\n(groups not checked: ${opts.groupsUnknownBecause ?? 'no user attributes given'})`;
  if (findings.length === 0) return { exitCode: 0, output: `${summary}, no findings${skipped}\n` };
  return { exitCode: 1, output: `${summary}, ${count(findings.length, 'finding')}:\n${findings.map((f) => `  ${formatFinding(f)}`).join('\n')}${skipped}\n` };
}

function toFinding(issue: ConfigIssue): Finding & { path?: string } {
  const p = issue as PolicyIssue;
  return { kind: p.kind ?? 'invalid', file: issue.file, ...(issue.line !== undefined ? { line: issue.line } : {}), ...(p.rule ? { rule: p.rule } : {}), message: issue.path ? `${issue.path}: ${issue.message}` : issue.message };
}

export function formatFinding(f: Finding): string {
  return `${f.file}${f.line ? `:${f.line}` : ''}: ${f.message} [${f.kind}]`;
}

function count(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

// ── policy test ───────────────────────────────────────────────────────────────────────────

export interface PolicyTestOptions extends SessionDefaults {
  readonly dir: string;
  /** Run every case in the tests folder and stop at the first mismatch. */
  readonly all?: boolean;
  /** The tests folder; default `<dir>/tests`. */
  readonly testsDir?: string;
  // One session, described on the command line:
  readonly ip?: string;
  readonly listener?: string;
  /** TLS version in use ("TLSv1.3", the default), or false for none. */
  readonly tls?: string | false;
  readonly helo?: string;
  readonly user?: string;
  readonly group?: readonly string[];
  readonly address?: readonly string[];
  readonly trusted?: boolean;
  readonly from?: string;
  readonly to?: readonly string[];
  /** Declared SIZE, e.g. "2MB". */
  readonly size?: string;
  readonly messageSize?: string;
  /** "Name: value" headers for the data stage. */
  readonly header?: readonly string[];
  /** "file.exe" or "file.exe:application/x-msdownload". */
  readonly attachment?: readonly string[];
  /** A message file (.eml) to scan for the data stage. */
  readonly message?: string;
  /** When the session happens (ISO 8601), for time and days conditions. */
  readonly time?: string;
}

export async function runPolicyTest(opts: PolicyTestOptions): Promise<CommandResult> {
  let set: PolicySet;
  try {
    set = await loadPolicySet(opts.dir);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return { exitCode: 1, output: `smtpgate policy test: the policy set in ${opts.dir} can't be loaded:\n${err.issues.map((i) => `  ${formatIssue(i)}`).join('\n')}\n` };
  }
  return opts.all ? runAll(set, opts) : runOne(set, opts);
}

async function runAll(set: PolicySet, opts: PolicyTestOptions): Promise<CommandResult> {
  const testsDir = opts.testsDir ?? path.join(opts.dir, 'tests');
  const { cases, issues } = await loadTestCases(testsDir);
  if (issues.length > 0) {
    return { exitCode: 1, output: `smtpgate policy test: ${count(issues.length, 'problem')} in the test files:\n${issues.map((i) => `  ${formatIssue(i)}`).join('\n')}\n` };
  }
  if (cases.length === 0) return { exitCode: 1, output: `smtpgate policy test: no test cases in ${testsDir}\n` };
  const out: string[] = [];
  let passed = 0;
  for (const c of cases) {
    const result = runCase(set, c);
    const where = `${c.file}${c.line ? `:${c.line}` : ''}`;
    if (result.mismatches.length === 0) {
      out.push(`ok    ${where}  ${c.name}`);
      passed++;
      continue;
    }
    out.push(`FAIL  ${where}  ${c.name}`);
    for (const m of result.mismatches) {
      out.push(`  ${m.stage ? `at ${m.stage}${m.subject !== undefined ? ` ${m.subject}` : ''}: ` : ''}${m.message}`);
    }
    const traced = result.mismatches.find((m) => m.report)?.report;
    if (traced) out.push('  trace:', ...formatReport(traced).map((l) => `  ${l}`));
    out.push(`stopped at the first failing test (${count(passed, 'test')} passed before it)`);
    return { exitCode: 1, output: `${out.join('\n')}\n` };
  }
  out.push(`${count(cases.length, 'test')} passed`);
  return { exitCode: 0, output: `${out.join('\n')}\n` };
}

async function runOne(set: PolicySet, opts: PolicyTestOptions): Promise<CommandResult> {
  if (!opts.ip) return { exitCode: 1, output: 'smtpgate policy test: describe a session with at least --ip (or run the test files with --all)\n' };
  const problems: string[] = [];
  const attachments = opts.attachment?.map((a) => {
    const colon = a.lastIndexOf(':');
    return colon > 0 && a.slice(colon + 1).includes('/') ? { name: a.slice(0, colon), type: a.slice(colon + 1) } : { name: a };
  });
  const raw: RawSession = {
    ip: opts.ip,
    ...(opts.listener !== undefined ? { listener: opts.listener } : {}),
    ...(opts.tls !== undefined ? { tls: opts.tls } : {}),
    ...(opts.helo !== undefined ? { helo: opts.helo } : {}),
    ...(opts.user !== undefined ? { user: opts.user } : {}),
    ...(opts.group?.length ? { groups: [...opts.group] } : {}),
    ...(opts.address?.length ? { addresses: [...opts.address] } : {}),
    ...(opts.trusted !== undefined ? { trusted: opts.trusted } : {}),
    ...(opts.from !== undefined ? { from: opts.from } : {}),
    ...(opts.to?.length ? { to: [...opts.to] } : {}),
    ...(opts.size !== undefined ? { size: opts.size } : {}),
    ...(opts.messageSize !== undefined ? { messageSize: opts.messageSize } : {}),
    ...(opts.header?.length ? { headers: [...opts.header] } : {}),
    ...(attachments?.length ? { attachments } : {}),
    ...(opts.message !== undefined ? { messageFile: opts.message } : {}),
    ...(opts.time !== undefined ? { time: opts.time } : {}),
  };
  const spec = await sessionFromRaw(raw, process.cwd(), (field, message) => problems.push(`--${field}: ${message}`), opts);
  if (!spec) return { exitCode: 1, output: `smtpgate policy test:\n${problems.map((p) => `  ${p}`).join('\n')}\n` };
  const reports = simulateSession(set, spec);
  const lines = [`policy set ${opts.dir}: ${count(set.files.length, 'file')}, ${count(set.ruleCount, 'rule')}`, `session: ${describeSession(spec)}`, ''];
  for (const r of reports) lines.push(...formatReport(r), '');
  const audits = reports.flatMap((r) => r.evaluation?.audits ?? []);
  if (audits.length) lines.push(`audit (not enforced): ${audits.map((a) => `${a.rule} at ${a.stage} would ${a.action} ${a.refusal.code} ${a.refusal.enhanced}`).join('; ')}`);
  const headers = reports.flatMap((r) => r.evaluation?.headers ?? []);
  if (headers.length) lines.push(`headers added: ${headers.map((h) => `${h.name}: ${h.value} (${h.rule})`).join('; ')}`);
  const limits = reports.flatMap((r) => r.evaluation?.limits ?? []);
  if (limits.length) lines.push(`limits to count: ${limits.map((l) => `${l.rule} ${l.rateText} per ${l.per} key ${JSON.stringify(l.key)} at ${l.stage}`).join('; ')}`);
  return { exitCode: 0, output: `${lines.join('\n').trimEnd()}\n` };
}

function describeSession(s: SessionSpec): string {
  const parts = [`ip ${s.ip}`, `listener ${s.listener}`, s.tls ?? 'no TLS'];
  if (s.trusted) parts.push('trusted');
  if (s.user) parts.push(`user ${s.user.name} [groups: ${s.user.groups.join(', ') || 'none'}; addresses: ${s.user.addresses.join(', ') || 'none'}]`);
  if (s.from !== undefined) parts.push(`from ${s.from || '<>'}`);
  if (s.to.length) parts.push(`to ${s.to.join(', ')}`);
  if (s.declaredSize !== undefined) parts.push(`SIZE ${s.declaredSize}`);
  if (s.messageSize !== undefined) parts.push(`message ${s.messageSize} bytes`);
  if (s.attachments?.length) parts.push(`parts ${s.attachments.map((a) => a.filenames[0] ?? a.contentType).join(', ')}`);
  return parts.join(', ');
}

/** One stage: its decision, then each rule evaluated, whether it matched, and why. */
export function formatReport(r: StageReport): string[] {
  const head = `${r.stage}${r.subject !== undefined ? ` ${r.subject}` : ''}: ${describeDecision(r.decision)}`;
  if (!r.evaluation) return [head, '    (a requirement held since connect/auth, not met by MAIL)'];
  return [head, ...formatTrace(r.evaluation.trace)];
}

export function formatTrace(trace: readonly TraceEntry[]): string[] {
  const lines: string[] = [];
  for (const t of trace) {
    const where = t.source ? ` (${t.source.file}${t.source.line ? `:${t.source.line}` : ''})` : '';
    const mode = t.mode === 'enforce' ? '' : ` [${t.mode}]`;
    lines.push(`    - ${t.rule}${where}${mode}: ${RESULT_TEXT[t.result]}${t.outcome ? ` → ${t.outcome}` : ''}`);
    for (const w of t.why) lines.push(`        ${w}`);
  }
  return lines;
}

const RESULT_TEXT: Record<TraceEntry['result'], string> = {
  matched: 'matched',
  no_match: 'no match',
  satisfied: 'matched, requirement already met',
  audit: 'matched (audit)',
  skipped: 'skipped',
};
