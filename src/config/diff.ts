/**
 * What a config reload may change in place, and what needs a restart. Pure: (running config,
 * new config) → the keys that changed, split in two. A reload applies the first list and
 * reports the second; it never silently ignores a change.
 */
import type { Config } from './schema.js';

export interface ConfigDiff {
  /** Changed keys applied without a restart. */
  readonly applied: readonly string[];
  /** Changed keys that only take effect after a restart (listener addresses, TLS, backend…). */
  readonly needRestart: readonly string[];
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

export function diffConfig(running: Config, next: Config): ConfigDiff {
  const applied: string[] = [];
  const needRestart: string[] = [];
  for (const key of new Set([...Object.keys(running), ...Object.keys(next)]) as Set<keyof Config>) {
    const a = running[key];
    const b = next[key];
    if (same(a, b)) continue;
    if (key === 'log') {
      if (running.log.level !== next.log.level) applied.push('log.level');
      if (running.log.format !== next.log.format) needRestart.push('log.format');
      if (running.log.file !== next.log.file) needRestart.push('log.file');
      if (!same(running.log.syslog, next.log.syslog)) needRestart.push('log.syslog');
    } else if (key === 'limits') {
      // The store, its failure mode and the advertised SIZE are wired at start; the limit
      // numbers can change live.
      const { store: s1, onStoreFailure: f1, maxMessageBytes: m1, ...rest1 } = running.limits;
      const { store: s2, onStoreFailure: f2, maxMessageBytes: m2, ...rest2 } = next.limits;
      if (!same(rest1, rest2)) applied.push('limits');
      if (!same(s1, s2)) needRestart.push('limits.store');
      if (f1 !== f2) needRestart.push('limits.onStoreFailure');
      if (m1 !== m2) needRestart.push('limits.maxMessageBytes');
    } else if (key === 'shutdown') {
      applied.push('shutdown');
    } else {
      needRestart.push(key);
    }
  }
  return { applied: applied.sort(), needRestart: needRestart.sort() };
}

/** The running config with the live-changeable parts of `next` swapped in. */
export function applyLiveChanges(running: Config, next: Config): Config {
  return {
    ...running,
    log: { ...running.log, level: next.log.level },
    limits: { ...next.limits, store: running.limits.store, onStoreFailure: running.limits.onStoreFailure, maxMessageBytes: running.limits.maxMessageBytes },
    shutdown: next.shutdown,
  };
}
