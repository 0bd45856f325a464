/**
 * Which limits apply to whom: the configured defaults with the overrides laid on top. Pure.
 *
 * An override applies when any of its selectors matches: the user is listed, one of the
 * user's groups is listed, or the client address is inside one of its CIDRs. For each limit
 * the first matching override that sets it wins, so a payroll sender can get a larger quota
 * without lifting everyone's.
 */
import type { LimitOverride, LimitsConfig, OverridableKey } from './config.js';
import { OVERRIDABLE_KEYS } from './config.js';
import { cidrContains, userKey, type ParsedIp } from './keys.js';

export type Quotas = Pick<LimitsConfig, OverridableKey>;

export interface Who {
  /** The authenticated user (or the AUTH username being tried). */
  readonly user?: string;
  readonly groups?: readonly string[];
  readonly ip?: ParsedIp;
}

export interface ResolvedQuotas {
  readonly quotas: Quotas;
  /** Names (or positions, "overrides[2]") of the overrides that contributed, for logs. */
  readonly applied: readonly string[];
}

export function overrideMatches(o: LimitOverride, who: Who): boolean {
  if (who.user !== undefined && o.users?.some((u) => userKey(u) === userKey(who.user!))) return true;
  if (who.groups && o.groups?.some((g) => who.groups!.some((h) => h.toLowerCase() === g.toLowerCase()))) return true;
  if (who.ip && o.cidrs?.some((c) => cidrContains(c, who.ip))) return true;
  return false;
}

export function resolveQuotas(config: LimitsConfig, who: Who): ResolvedQuotas {
  const quotas: Record<string, unknown> = {};
  for (const k of OVERRIDABLE_KEYS) quotas[k] = config[k];
  const decided = new Set<OverridableKey>();
  const applied: string[] = [];
  config.overrides.forEach((o, i) => {
    if (!overrideMatches(o, who)) return;
    let used = false;
    for (const k of OVERRIDABLE_KEYS) {
      if (o[k] === undefined || decided.has(k)) continue;
      quotas[k] = o[k];
      decided.add(k);
      used = true;
    }
    if (used) applied.push(o.name ?? `overrides[${i}]`);
  });
  return { quotas: quotas as Quotas, applied };
}
