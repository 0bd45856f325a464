/**
 * The policy engine's metrics. The app calls `createPolicyMetrics(registry)` with its own
 * registry (no globals) and `record(evaluation)` after each `evaluate()`. Counts reach the
 * counters when the registry is read (a scrape, `registry.metrics()`, `counter.get()`).
 *
 * Labels: `rule` (rule names from the policy files: a small set the admin controls; rule
 * names are restricted to letters, digits, "_", "." and "-"), `stage`, `action`. Never an IP,
 * user or address: those go in the log line.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Decision, Evaluation, PolicySet } from './types.js';
import { PendingCounts } from '../counters/pending-counts.js';

/** The `action` label of a decision: accept, continue (no rule decided), reject, tempfail, require_tls, require_auth. */
export function decisionAction(d: Decision): string {
  return d.kind === 'refuse' ? d.action : d.kind;
}

/** An add_header rule counts once, however many headers it adds. */
function isFirstOfRule(headers: Evaluation['headers'], i: number): boolean {
  for (let j = 0; j < i; j++) if (headers[j]!.rule === headers[i]!.rule) return false;
  return true;
}

export function createPolicyMetrics(registry: Registry) {
  const registers = [registry];
  const decisionCounts = new PendingCounts(['rule', 'stage', 'action']);
  const auditCounts = new PendingCounts(['rule', 'stage']);
  const decisions: Counter<'rule' | 'stage' | 'action'> = new Counter({
    name: 'smtpgate_policy_decisions_total',
    help: 'Policy decisions by rule, stage and action (accept, continue = no rule decided, reject, tempfail, require_tls, require_auth, add_header, limit).',
    labelNames: ['rule', 'stage', 'action'] as const,
    registers,
    collect: () => decisionCounts.flushInto(decisions),
  });
  const audits: Counter<'rule' | 'stage'> = new Counter({
    name: 'smtpgate_policy_audit_total',
    help: 'Audit-mode rules that would have refused (not enforced), by rule and stage.',
    labelNames: ['rule', 'stage'] as const,
    registers,
    collect: () => auditCounts.flushInto(audits),
  });
  const rules = new Gauge({
    name: 'smtpgate_policy_rules',
    // Across cluster workers: every worker loads the same folder.
    aggregator: 'max',
    help: 'Rules in the policy set in force.',
    registers,
  });

  return {
    decisions,
    audits,
    rules,
    /** Counts one evaluation: its decision, each add_header and limit rule that matched, each audit hit. */
    record(ev: Evaluation): void {
      decisionCounts.add(ev.decision.rule, ev.stage, decisionAction(ev.decision));
      for (let i = 0; i < ev.headers.length; i++) {
        if (isFirstOfRule(ev.headers, i)) decisionCounts.add(ev.headers[i]!.rule, ev.stage, 'add_header');
      }
      for (const l of ev.limits) decisionCounts.add(l.rule, ev.stage, 'limit');
      for (const a of ev.audits) auditCounts.add(a.rule, a.stage);
    },
    /** After a (re)load: the rule count, and every rule's audit series at zero so alerts see it. */
    setPolicySet(set: PolicySet): void {
      rules.set(set.ruleCount);
      for (const r of set.rules) if (r.mode === 'audit') audits.inc({ rule: r.name, stage: r.stage }, 0);
    },
  };
}

export type PolicyMetrics = ReturnType<typeof createPolicyMetrics>;
