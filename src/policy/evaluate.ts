/**
 * The policy engine: (policy set, stage, facts) → decision + trace. Pure and synchronous.
 *
 * At a stage the rules run in order; the first one that matches and decides (accept, reject,
 * tempfail, an unmet require_tls/require_auth) ends the stage. add_header and limit rules
 * don't decide: what they ask for is collected and evaluation goes on. Audit-mode rules that
 * would refuse are collected as audits and evaluation goes on. When nothing decides, the
 * stage's default applies (accept unless configured otherwise).
 */
import type { Refusal } from '../reply.js';
import { ipKey, senderKey, userKey } from '../limits/keys.js';
import { evaluateCondition, type ConditionContext } from './conditions.js';
import { defaultRefusal, formatRefusal } from './replies.js';
import {
  DEFAULT_RULE,
  type AuditHit,
  type Decision,
  type Evaluation,
  type HeaderToAdd,
  type LimitKey,
  type LimitRequest,
  type PolicySet,
  type PolicyStage,
  type SessionFacts,
  type TraceEntry,
} from './types.js';

export function evaluate(set: PolicySet, stage: PolicyStage, facts: SessionFacts): Evaluation {
  const ctx: ConditionContext = { stage, facts, settings: set.settings };
  const trace: TraceEntry[] = [];
  const headers: HeaderToAdd[] = [];
  const limits: LimitRequest[] = [];
  const audits: AuditHit[] = [];
  const done = (decision: Decision): Evaluation => {
    // A refused command adds nothing and counts against no limit.
    const passes = decision.kind !== 'refuse';
    return { stage, decision, headers: passes ? headers : [], limits: passes ? limits : [], audits, trace };
  };

  for (const rule of set.byStage[stage]) {
    const base = { rule: rule.name, source: rule.source, mode: rule.mode };
    if (rule.mode === 'off') {
      trace.push({ ...base, result: 'skipped', why: ['mode: off'] });
      continue;
    }
    const cond = rule.when ? evaluateCondition(rule.when, ctx) : { ok: true, why: ['no conditions: matches every session'] };
    if (!cond.ok) {
      trace.push({ ...base, result: 'no_match', why: cond.why });
      continue;
    }
    const action = rule.action;
    switch (action.kind) {
      case 'accept':
        trace.push({ ...base, result: 'matched', outcome: 'accept', why: cond.why });
        return done({ kind: 'accept', rule: rule.name });
      case 'add_header':
        for (const h of action.headers) headers.push({ rule: rule.name, name: h.name, value: h.value });
        trace.push({ ...base, result: 'matched', outcome: action.headers.map((h) => `add header ${h.name}: ${h.value}`).join('; '), why: cond.why });
        continue;
      case 'limit': {
        const key = limitKey(action.per, facts);
        if (key === undefined) {
          trace.push({ ...base, result: 'matched', outcome: `limit ${action.rateText} per ${action.per}: no ${action.per} to count, not applied`, why: cond.why });
          continue;
        }
        limits.push({ rule: rule.name, stage, rate: action.rate, rateText: action.rateText, per: action.per, key, bucket: `policy:${rule.name}|${key}` });
        trace.push({ ...base, result: 'matched', outcome: `limit ${action.rateText} per ${action.per} (key ${JSON.stringify(key)})`, why: cond.why });
        continue;
      }
      case 'require_tls':
      case 'require_auth': {
        const met = action.kind === 'require_tls' ? facts.tls !== undefined : facts.authenticated;
        const what = action.kind === 'require_tls' ? 'TLS' : 'authentication';
        if (met) {
          trace.push({ ...base, result: 'satisfied', outcome: `${action.kind}: ${what} in place`, why: cond.why });
          continue;
        }
        if (rule.mode === 'audit') {
          audits.push({ rule: rule.name, stage, action: action.kind, refusal: action.refusal });
          trace.push({ ...base, result: 'audit', outcome: `would ${action.kind} (${formatRefusal(action.refusal)}); audit mode, not enforced`, why: cond.why });
          continue;
        }
        // Before MAIL, TLS and AUTH may still come: the listener holds the requirement until then.
        if (stage === 'connect' || stage === 'auth') {
          trace.push({ ...base, result: 'matched', outcome: `${action.kind}: MAIL will be refused with ${formatRefusal(action.refusal)} unless ${what} happens first`, why: cond.why });
          return done({ kind: action.kind, rule: rule.name, refusal: action.refusal });
        }
        trace.push({ ...base, result: 'matched', outcome: `${action.kind} not met: ${formatRefusal(action.refusal)}`, why: cond.why });
        return done({ kind: 'refuse', rule: rule.name, action: action.kind, refusal: action.refusal });
      }
      case 'reject':
      case 'tempfail':
        if (rule.mode === 'audit') {
          audits.push({ rule: rule.name, stage, action: action.kind, refusal: action.refusal });
          trace.push({ ...base, result: 'audit', outcome: `would ${action.kind}: ${formatRefusal(action.refusal)}; audit mode, not enforced`, why: cond.why });
          continue;
        }
        trace.push({ ...base, result: 'matched', outcome: `${action.kind}: ${formatRefusal(action.refusal)}`, why: cond.why });
        return done({ kind: 'refuse', rule: rule.name, action: action.kind, refusal: action.refusal });
    }
  }

  const def = set.settings.defaults[stage];
  if (def === 'accept') {
    trace.push({ rule: DEFAULT_RULE, mode: 'enforce', result: 'matched', outcome: 'no rule decided: default accept', why: [] });
    return done({ kind: 'continue', rule: DEFAULT_RULE });
  }
  const refusal = defaultRefusal(stage, def);
  trace.push({ rule: DEFAULT_RULE, mode: 'enforce', result: 'matched', outcome: `no rule decided: default ${def}: ${formatRefusal(refusal)}`, why: [] });
  return done({ kind: 'refuse', rule: DEFAULT_RULE, action: def, refusal });
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

