/**
 * The policy engine: (policy set, stage, facts) → decision + trace. Pure and synchronous.
 *
 * At a stage the rules run in order; the first one that matches and decides (accept, reject,
 * tempfail, an unmet require_tls/require_auth) ends the stage. add_header and limit rules
 * don't decide: what they ask for is collected and evaluation goes on. Audit-mode rules that
 * would refuse are collected as audits and evaluation goes on. When nothing decides, the
 * stage's default applies (accept unless configured otherwise).
 *
 * This runs for every command of every session, so what doesn't depend on the facts is worked
 * out once per set (`planStages`, called by the loader), and the trace, with its texts, is only
 * built when asked for (`{ trace: false }` is the listener's path unless it logs at debug).
 */
import type { Refusal } from '../reply.js';
import { ipKey, senderKey, userKey } from '../limits/keys.js';
import { CLIENT_KINDS, staticValue } from './client-kind.js';
import { holds } from './conditions.js';
import { defaultRefusal, formatRefusal } from './replies.js';
import {
  DEFAULT_RULE,
  POLICY_STAGES,
  type AuditHit,
  type Decision,
  type EvaluateOptions,
  type Evaluation,
  type HeaderToAdd,
  type LimitKey,
  type LimitRequest,
  type PolicySet,
  type PolicySettings,
  type PolicyStage,
  type Rule,
  type RuleStep,
  type SessionFacts,
  type StagePlan,
  type TraceEntry,
  type TraceResult,
} from './types.js';

const NONE: readonly never[] = Object.freeze([]);
const SKIPPED_WHY: readonly string[] = Object.freeze(['mode: off']);
const CATCH_ALL_WHY = 'no conditions: matches every session';

/**
 * `facts` may be a function that builds them: it is called only when some rule at the stage
 * can act, so a caller pays nothing for facts at a stage without rules.
 */
export function evaluate(set: PolicySet, stage: PolicyStage, factsOrBuild: SessionFacts | (() => SessionFacts), options?: EvaluateOptions): Evaluation {
  const plan = set.plan[stage];
  const tracing = options?.trace !== false;
  if (plan.fixed) return tracing ? plan.fixed.traced : plan.fixed.untraced;
  const facts = typeof factsOrBuild === 'function' ? factsOrBuild() : factsOrBuild;

  const trace: TraceEntry[] | undefined = tracing ? [] : undefined;
  // Allocated when a rule first adds to them.
  let headers: HeaderToAdd[] | undefined;
  let limits: LimitRequest[] | undefined;
  let audits: AuditHit[] | undefined;

  for (const step of plan.steps) {
    const rule = step.rule;
    if (rule.mode === 'off') {
      if (trace) trace.push(entry(rule, 'skipped', undefined, SKIPPED_WHY));
      continue;
    }
    const why: string[] | undefined = trace && [];
    if (rule.when === undefined) why?.push(CATCH_ALL_WHY);
    else if (!holds(rule.when, stage, facts, set.settings, why)) {
      if (trace) trace.push(entry(rule, 'no_match', undefined, why!));
      continue;
    }
    const action = rule.action;
    switch (action.kind) {
      case 'accept':
        if (trace) trace.push(entry(rule, 'matched', 'accept', why!));
        return answer(stage, step.decision!, step.decided!, headers, limits, audits, trace);
      case 'add_header':
        headers ??= [];
        for (const h of step.headers) headers.push(h);
        if (trace) trace.push(entry(rule, 'matched', action.headers.map((h) => `add header ${h.name}: ${h.value}`).join('; '), why!));
        continue;
      case 'limit': {
        const key = limitKey(action.per, facts);
        if (key === undefined) {
          if (trace) trace.push(entry(rule, 'matched', `limit ${action.rateText} per ${action.per}: no ${action.per} to count, not applied`, why!));
          continue;
        }
        (limits ??= []).push({ rule: rule.name, stage, rate: action.rate, rateText: action.rateText, per: action.per, key, bucket: `policy:${rule.name}|${key}` });
        if (trace) trace.push(entry(rule, 'matched', `limit ${action.rateText} per ${action.per} (key ${JSON.stringify(key)})`, why!));
        continue;
      }
      case 'require_tls':
      case 'require_auth': {
        const met = action.kind === 'require_tls' ? facts.tls !== undefined : facts.authenticated;
        if (met) {
          if (trace) trace.push(entry(rule, 'satisfied', `${action.kind}: ${requirementText(action.kind)} in place`, why!));
          continue;
        }
        if (step.audit) {
          (audits ??= []).push(step.audit);
          if (trace) trace.push(entry(rule, 'audit', `would ${action.kind} (${formatRefusal(action.refusal)}); audit mode, not enforced`, why!));
          continue;
        }
        if (trace) {
          // Before MAIL, TLS and AUTH may still come: the listener holds the requirement until then.
          const outcome = isHeld(stage)
            ? `${action.kind}: MAIL will be refused with ${formatRefusal(action.refusal)} unless ${requirementText(action.kind)} happens first`
            : `${action.kind} not met: ${formatRefusal(action.refusal)}`;
          trace.push(entry(rule, 'matched', outcome, why!));
        }
        return answer(stage, step.decision!, step.decided!, headers, limits, audits, trace);
      }
      case 'reject':
      case 'tempfail':
        if (step.audit) {
          (audits ??= []).push(step.audit);
          if (trace) trace.push(entry(rule, 'audit', `would ${action.kind}: ${formatRefusal(action.refusal)}; audit mode, not enforced`, why!));
          continue;
        }
        if (trace) trace.push(entry(rule, 'matched', `${action.kind}: ${formatRefusal(action.refusal)}`, why!));
        return answer(stage, step.decision!, step.decided!, headers, limits, audits, trace);
    }
  }

  if (trace) trace.push(plan.fallbackTrace);
  return answer(stage, plan.fallback, plan.untraced, headers, limits, audits, trace);
}

/**
 * The evaluation for `decision`: `ready` (the plan's, shared) when there is nothing else to
 * say, else a new one with what was collected.
 */
function answer(
  stage: PolicyStage,
  decision: Decision,
  ready: Evaluation,
  headers: readonly HeaderToAdd[] | undefined,
  limits: readonly LimitRequest[] | undefined,
  audits: readonly AuditHit[] | undefined,
  trace: readonly TraceEntry[] | undefined,
): Evaluation {
  // A refused command adds nothing and counts against no limit.
  const passes = decision.kind !== 'refuse';
  if (!trace && !audits && (!passes || (!headers && !limits))) return ready;
  return { stage, decision, headers: (passes && headers) || NONE, limits: (passes && limits) || NONE, audits: audits ?? NONE, trace: trace ?? NONE };
}

/** A require_tls / require_auth at connect or auth is held until MAIL, since TLS and AUTH may still come. */
const isHeld = (stage: PolicyStage) => stage === 'connect' || stage === 'auth';
const requirementText = (kind: 'require_tls' | 'require_auth') => (kind === 'require_tls' ? 'TLS' : 'authentication');

function entry(rule: Rule, result: TraceResult, outcome: string | undefined, why: readonly string[]): TraceEntry {
  return outcome === undefined
    ? { rule: rule.name, source: rule.source, mode: rule.mode, result, why }
    : { rule: rule.name, source: rule.source, mode: rule.mode, result, outcome, why };
}

/** The limit key for a session, normalized as the limits module does; undefined when there is none. */
function limitKey(per: LimitKey, facts: SessionFacts): string | undefined {
  switch (per) {
    case 'user':
      return facts.user ? userKey(facts.user.name) : undefined;
    case 'ip':
      return ipKey(facts.ip);
    case 'sender':
      return senderKey(facts.from);
  }
}

/**
 * A require_tls / require_auth decision made at connect or auth, checked at MAIL: the refusal
 * if the session still lacks TLS / authentication, else undefined.
 */
export function unmetRequirement(decision: Decision, facts: Pick<SessionFacts, 'tls' | 'authenticated'>): Refusal | undefined {
  if (decision.kind === 'require_tls' && facts.tls === undefined) return decision.refusal;
  if (decision.kind === 'require_auth' && !facts.authenticated) return decision.refusal;
  return undefined;
}

// ── the plan: what doesn't depend on the facts, worked out when the set is loaded ──────────

/** For the loader: every stage's plan, from the rules evaluated at each stage. */
export function planStages(byStage: Readonly<Record<PolicyStage, readonly Rule[]>>, settings: PolicySettings): Record<PolicyStage, StagePlan> {
  return Object.fromEntries(POLICY_STAGES.map((stage) => [stage, planStage(stage, byStage[stage], settings)])) as Record<PolicyStage, StagePlan>;
}

function planStage(stage: PolicyStage, rules: readonly Rule[], settings: PolicySettings): StagePlan {
  const def = settings.defaults[stage];
  let fallback: Decision;
  let fallbackTrace: TraceEntry;
  if (def === 'accept') {
    fallback = { kind: 'continue', rule: DEFAULT_RULE };
    fallbackTrace = { rule: DEFAULT_RULE, mode: 'enforce', result: 'matched', outcome: 'no rule decided: default accept', why: NONE };
  } else {
    const refusal = defaultRefusal(stage, def);
    fallback = { kind: 'refuse', rule: DEFAULT_RULE, action: def, refusal };
    fallbackTrace = { rule: DEFAULT_RULE, mode: 'enforce', result: 'matched', outcome: `no rule decided: default ${def}: ${formatRefusal(refusal)}`, why: NONE };
  }
  Object.freeze(fallback);
  Object.freeze(fallbackTrace);
  const untraced = settled(stage, fallback, NONE);
  const skipped = rules.every((r) => r.mode === 'off') ? rules.map((r) => Object.freeze(entry(r, 'skipped', undefined, SKIPPED_WHY))) : undefined;
  // Per kind of client: no rule is on whose conditions such a client could meet.
  const idle = CLIENT_KINDS.map((kind) => rules.every((r) => r.mode === 'off' || (r.when !== undefined && staticValue(r.when, kind) === false)));
  return Object.freeze({
    steps: Object.freeze(rules.map((r) => planRule(stage, r))),
    fallback,
    fallbackTrace,
    untraced,
    idle: Object.freeze(idle),
    fixed: skipped && Object.freeze({ traced: settled(stage, fallback, Object.freeze([...skipped, fallbackTrace])), untraced }),
  });
}

function planRule(stage: PolicyStage, rule: Rule): RuleStep {
  const action = rule.action;
  let decision: Decision | undefined;
  let audit: AuditHit | undefined;
  let headers: readonly HeaderToAdd[] = NONE;
  if (rule.mode !== 'off') {
    switch (action.kind) {
      case 'accept':
        decision = { kind: 'accept', rule: rule.name };
        break;
      case 'add_header':
        headers = action.headers.map((h) => Object.freeze({ rule: rule.name, name: h.name, value: h.value }));
        break;
      case 'limit':
        break;
      case 'require_tls':
      case 'require_auth':
      case 'reject':
      case 'tempfail':
        if (rule.mode === 'audit') audit = Object.freeze({ rule: rule.name, stage, action: action.kind, refusal: action.refusal });
        else if ((action.kind === 'require_tls' || action.kind === 'require_auth') && isHeld(stage)) decision = { kind: action.kind, rule: rule.name, refusal: action.refusal };
        else decision = { kind: 'refuse', rule: rule.name, action: action.kind, refusal: action.refusal };
        break;
    }
  }
  if (decision) Object.freeze(decision);
  return Object.freeze({ rule, decision, decided: decision && settled(stage, decision, NONE), audit, headers: Object.freeze(headers) });
}

/** A whole answer with nothing collected, shared by the evaluations that return it. */
function settled(stage: PolicyStage, decision: Decision, trace: readonly TraceEntry[]): Evaluation {
  return Object.freeze({ stage, decision, headers: NONE, limits: NONE, audits: NONE, trace });
}
