/**
 * Runs a described session through a policy set, stage by stage, the way the listener would:
 * connect → auth (if a user logs in) → mail → rcpt (each recipient) → data. Pure. Used by
 * `smtpgate policy test` and the policy test files.
 *
 * Like a real session it stops at a refused connect, AUTH or MAIL; a refused recipient is
 * left out and the others go on; data runs when at least one recipient was accepted.
 * Simplification: TLS, when the session has it, is up from the start (as with implicit TLS).
 * With STARTTLS a connect-stage require_tls would be held until MAIL and met there: the
 * outcome is the same.
 */
import { evaluate, unmetRequirement } from './evaluate.js';
import { decodeEncodedWords } from './mime.js';
import type { AuthMethod, Decision, EvaluateOptions, Evaluation, Header, MimePart, PolicySet, PolicyStage, SessionFacts, UserFacts } from './types.js';

export interface SessionSpec {
  readonly ip: string;
  readonly listener: string;
  /** TLS version in use, or undefined for none. */
  readonly tls: string | undefined;
  readonly helo?: string;
  readonly user?: UserFacts;
  /** How the user signed in (default: password). */
  readonly authMethod?: AuthMethod;
  /** In the listener's trusted networks. */
  readonly trusted: boolean;
  readonly from?: string;
  readonly to: readonly string[];
  readonly declaredSize?: number;
  readonly messageSize?: number;
  readonly headers?: readonly Header[];
  readonly attachments?: readonly MimePart[];
  readonly scanIncomplete?: boolean;
  /** The message's header block was cut short by the scan's limits (from `message`). */
  readonly headersTruncated?: boolean;
  readonly now: Date;
}

export interface StageReport {
  readonly stage: PolicyStage;
  /** What the stage was about: the user, the sender, the recipient. */
  readonly subject?: string;
  readonly decision: Decision;
  /** Absent when the stage was decided by a requirement held from connect/auth. */
  readonly evaluation?: Evaluation;
}

export function passes(d: Decision): boolean {
  return d.kind !== 'refuse';
}

/** `options` go to every `evaluate()` (`{ trace: false }`: the listener's path, without the trace). */
export function simulateSession(set: PolicySet, spec: SessionSpec, options?: EvaluateOptions): StageReport[] {
  const reports: StageReport[] = [];
  const tls = spec.tls ? { version: spec.tls } : undefined;
  let facts: SessionFacts = { ip: spec.ip, listener: spec.listener, tls, authenticated: false, trusted: spec.trusted, recipients: [], now: spec.now };
  const requirements: Decision[] = [];
  const run = (stage: PolicyStage, f: SessionFacts, subject?: string): Decision => {
    const evaluation = evaluate(set, stage, f, options);
    reports.push({ stage, ...(subject !== undefined ? { subject } : {}), decision: evaluation.decision, evaluation });
    if (evaluation.decision.kind === 'require_tls' || evaluation.decision.kind === 'require_auth') requirements.push(evaluation.decision);
    return evaluation.decision;
  };

  if (!passes(run('connect', facts))) return reports;
  if (spec.helo !== undefined) facts = { ...facts, helo: spec.helo };
  if (spec.user) {
    facts = { ...facts, authenticated: true, authMethod: spec.authMethod ?? 'password', user: spec.user };
    if (!passes(run('auth', facts, spec.user.name))) return reports;
  }
  if (spec.from === undefined) return reports;

  facts = { ...facts, from: spec.from, ...(spec.declaredSize !== undefined ? { declaredSize: spec.declaredSize } : {}) };
  const subject = spec.from === '' ? '<>' : spec.from;
  for (const req of requirements) {
    const refusal = unmetRequirement(req, facts);
    if (refusal && (req.kind === 'require_tls' || req.kind === 'require_auth')) {
      reports.push({ stage: 'mail', subject, decision: { kind: 'refuse', rule: req.rule, action: req.kind, refusal } });
      return reports;
    }
  }
  if (!passes(run('mail', facts, subject))) return reports;

  const accepted: string[] = [];
  for (const to of spec.to) {
    if (passes(run('rcpt', { ...facts, recipient: to, recipients: [...accepted] }, to))) accepted.push(to);
  }
  if (accepted.length === 0) return reports;

  const messageSize = spec.messageSize ?? spec.declaredSize;
  run('data', {
    ...facts,
    recipients: accepted,
    headers: spec.headers ?? [],
    attachments: spec.attachments ?? [],
    ...(spec.scanIncomplete !== undefined ? { scanIncomplete: spec.scanIncomplete } : {}),
    ...(spec.headersTruncated ? { headersTruncated: true } : {}),
    ...(messageSize !== undefined ? { messageSize } : {}),
  });
  return reports;
}

/** "Name: value" (as typed on a command line or in a test file) → a Header. */
export function headerFromLine(line: string): Header | undefined {
  const colon = line.indexOf(':');
  if (colon <= 0) return undefined;
  const value = line.slice(colon + 1).trim();
  return { name: line.slice(0, colon).trim().toLowerCase(), value, decoded: decodeEncodedWords(value) };
}
