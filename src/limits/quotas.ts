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

/**
 * resolveQuotas for one config, without its work for clients no override can select: with no
 * overrides, or with only user and group overrides and no user (a trusted relay client), the
 * answer is the defaults every time. A new config gets a new resolver (Limits.reconfigure).
 */
export class QuotaResolver {
  readonly config: LimitsConfig;
  /** The configured limits with no override applied. */
  readonly defaults: Quotas;
  readonly #byUser: boolean;
  readonly #byGroup: boolean;
  readonly #byCidr: boolean;

  constructor(config: LimitsConfig) {
    this.config = config;
    this.defaults = Object.freeze(resolveQuotas({ ...config, overrides: [] }, {}).quotas);
    this.#byUser = config.overrides.some((o) => o.users !== undefined);
    this.#byGroup = config.overrides.some((o) => o.groups !== undefined);
    this.#byCidr = config.overrides.some((o) => o.cidrs !== undefined);
  }

  /** Same as `resolveQuotas(config, who).quotas`. */
  resolve(who: Who): Quotas {
    return this.mayOverride(who) ? resolveQuotas(this.config, who).quotas : this.defaults;
  }

  /** False when no override has a selector `who` could match (overrideMatches is then false for all). */
  mayOverride(who: Who): boolean {
    if (this.#byUser && who.user !== undefined) return true;
    if (this.#byGroup && who.groups !== undefined && who.groups.length > 0) return true;
    return this.#byCidr && who.ip !== undefined;
  }
}
