/**
 * CIDRs in the config whose address has host bits set ("10.1.2.3/8"): valid, and matched as
 * the network they mean (10.0.0.0/8), but often a single host written with the wrong prefix, and
 * then far more addresses are trusted than intended. A warning, not an error: `check` prints it
 * and exits 0; `run` logs it at start. Pure.
 */
import { networkIfHostBitsSet } from '../limits/keys.js';
import { formatPath, type ConfigOrigin } from '../parsing/errors.js';
import type { Config } from './schema.js';

export function hostBitWarnings(config: Config, origin: ConfigOrigin): string[] {
  const found: { segments: PropertyKey[]; text: string }[] = [];
  config.listeners.forEach((l, i) => {
    l.trusted?.networks.forEach((c, j) => found.push({ segments: ['listeners', i, 'trusted', 'networks', j], text: `${c.address}/${c.prefix}` }));
    l.proxyProtocol?.trusted.forEach((c, j) => found.push({ segments: ['listeners', i, 'proxyProtocol', 'trusted', j], text: `${c.address}/${c.prefix}` }));
  });
  config.limits.overrides.forEach((o, i) => o.cidrs?.forEach((c, j) => found.push({ segments: ['limits', 'overrides', i, 'cidrs', j], text: c.text })));
  return found.flatMap(({ segments, text }) => {
    const advice = hostBitsAdvice(text);
    if (!advice) return [];
    const line = origin.lineOf(segments);
    return [`${origin.file}${line ? `:${line}` : ''}: ${formatPath(segments)}: ${advice}`];
  });
}

/** What is wrong with a CIDR whose address has host bits set, and the two ways to write it; undefined when it has none. */
export function hostBitsAdvice(text: string): string | undefined {
  const network = networkIfHostBitsSet(text);
  if (!network) return undefined;
  const host = `${text.split('/')[0]}/${text.includes(':') ? 128 : 32}`;
  return `${text} has host bits set, so it means ${network}; write ${network}, or ${host} for the one address`;
}
