/**
 * `smtpgate policy check`: what loads but is probably a mistake. The loader already refuses
 * unknown fields, bad CIDRs and the like (those come back as findings of their own kind);
 * this adds what only the whole set shows:
 *
 * - unreachable: a rule after a catch-all that decides (accept/reject/tempfail with no
 *   conditions), or after a rule with exactly the same conditions that decides, at the same
 *   stage. It can never run.
 * - unknown_group: a `group:` no user has (when the known groups are given).
 * - open_relay: relay protection is off, so unauthenticated clients may send anywhere.
 */
import type { Condition, PolicySet, Rule } from './types.js';
import type { FindingKind } from '../parsing/yaml-source.js';

export interface Finding {
  readonly kind: FindingKind;
  readonly file: string;
  readonly line?: number;
  readonly rule?: string;
  readonly message: string;
}

export interface LintOptions {
  /** Groups users have (from the user attributes); the unknown-group check is skipped without it. */
  readonly knownGroups?: ReadonlySet<string>;
}

const DECIDING = new Set(['accept', 'reject', 'tempfail']);

/** A rule that ends evaluation whenever it matches. require_* don't when already met. */
function decides(rule: Rule): boolean {
  return rule.mode === 'enforce' && DECIDING.has(rule.action.kind);
}

export function lintPolicySet(set: PolicySet, opts: LintOptions = {}): Finding[] {
  const findings: Finding[] = [];
  const where = (r: Rule) => `${r.source.file}${r.source.line ? `:${r.source.line}` : ''}`;

  /** Rules that can never run, with the rule that decides first. */
  const shadowedBy = new Map<Rule, Rule>();
  for (const [stage, rules] of Object.entries(set.byStage)) {
    let catchAll: Rule | undefined;
    const byConditions = new Map<string, Rule>();
    for (const rule of rules) {
      if (rule.mode === 'off') continue;
      const shadow = catchAll ?? (rule.whenText !== undefined ? byConditions.get(rule.whenText) : undefined);
      if (shadow) {
        shadowedBy.set(rule, shadow);
        const why = shadow === catchAll ? 'has no conditions, so it matches every session' : 'has the same conditions';
        findings.push({
          kind: 'unreachable',
          file: rule.source.file,
          line: rule.source.line,
          rule: rule.name,
          message: `rule ${JSON.stringify(rule.name)} can never run at ${stage}: rule ${JSON.stringify(shadow.name)} (${where(shadow)}) ${why} and decides (${shadow.action.kind}) first`,
        });
        continue;
      }
      if (!decides(rule) || rule.type !== undefined) continue;
      if (rule.when === undefined) catchAll = rule;
      else if (rule.whenText !== undefined && !byConditions.has(rule.whenText)) byConditions.set(rule.whenText, rule);
    }
  }

  if (opts.knownGroups) {
    const known = new Set([...opts.knownGroups].map((g) => g.toLowerCase()));
    const seen = new Set<string>();
    for (const rule of set.rules) {
      walk(rule.when, (c) => {
        if (c.kind !== 'group') return;
        for (const g of c.groups) {
          const id = `${c.source.file}:${c.source.line}:${g}`;
          if (known.has(g.toLowerCase()) || seen.has(id)) continue;
          seen.add(id);
          findings.push({
            kind: 'unknown_group',
            file: c.source.file,
            line: c.source.line,
            rule: rule.name,
            message: `rule ${JSON.stringify(rule.name)}: no user is in group ${JSON.stringify(g)} (known groups: ${[...opts.knownGroups!].sort().join(', ') || 'none'})`,
          });
        }
      });
    }
  }

  // Relay protection is enforced only by a rule that guards every recipient: one that can never
  // run (a catch-all accept decides first), or that runs only under conditions of its own, leaves
  // every other unauthenticated client free to send anywhere.
  const relayRules = set.byStage.rcpt.filter((r) => r.type === 'relay_protection');
  const enforced = relayRules.filter((r) => r.mode === 'enforce');
  // (A catch-all reject or tempfail before it shuts relaying off along with everything else.)
  const acceptedFirst = (r: Rule) => (shadowedBy.get(r)?.action.kind === 'accept' ? shadowedBy.get(r) : undefined);
  if (!enforced.some((r) => r.whenText === undefined && !acceptedFirst(r))) {
    const explicit = enforced[0] ?? relayRules[0];
    const shadow = explicit && acceptedFirst(explicit);
    findings.push({
      kind: 'open_relay',
      file: explicit?.source.file ?? set.dir,
      line: explicit?.source.line,
      ...(explicit ? { rule: explicit.name } : {}),
      message: !explicit
        ? 'relayProtection is off and no relay_protection rule runs: unauthenticated clients may send to any domain'
        : explicit.mode !== 'enforce'
          ? `relay protection is only in mode: ${explicit.mode}: unauthenticated clients may send to any domain`
          : shadow
            ? `relay protection rule ${JSON.stringify(explicit.name)} can never run: rule ${JSON.stringify(shadow.name)} (${where(shadow)}) accepts every recipient first, so unauthenticated clients may send to any domain`
            : `relay protection rule ${JSON.stringify(explicit.name)} runs only when its own conditions hold (when: ${explicit.whenText}): other unauthenticated clients may send to any domain`,
    });
  }

  // Stable order: by file, then line. A rule at two stages reports each stage.
  return findings.sort((a, b) => (a.file === b.file ? (a.line ?? 0) - (b.line ?? 0) : a.file < b.file ? -1 : 1));
}

function walk(c: Condition | undefined, visit: (c: Condition) => void): void {
  if (!c) return;
  visit(c);
  if (c.kind === 'all' || c.kind === 'any') c.of.forEach((x) => walk(x, visit));
  else if (c.kind === 'not') walk(c.of, visit);
}
