/**
 * Is this config, with this policy set, an open relay? Pure: (listeners, policy) → the
 * listeners through which anyone may send to any domain.
 *
 * A client that authenticated, or that is in a trusted network, may relay by design (Postfix's
 * permit_sasl_authenticated, permit_mynetworks). Everyone else reaches RCPT only on a listener
 * with `requireAuth: false`, and there the relay_protection rule is what keeps the recipients
 * internal. Without it enforced, that listener is an open relay: Postfix refuses to start
 * without reject_unauth_destination for the same reason, and so do `check` and `run` here,
 * unless `iUnderstandThisIsAnOpenRelay: true` says the backend refuses relaying itself.
 */
import { lintPolicySet } from './lint.js';
import type { PolicySet } from './types.js';
import type { Config } from '../config/schema.js';
import type { ConfigIssue, ConfigOrigin } from '../parsing/errors.js';

export interface OpenRelay {
  /** Listeners that take mail without AUTH, with their index in `listeners`. */
  readonly listeners: readonly { readonly name: string; readonly index: number }[];
  /** Why relay protection does not run: the policy file (and line) that turns it off. */
  readonly because: string;
}

export function findOpenRelay(config: Pick<Config, 'listeners'>, policy: PolicySet): OpenRelay | undefined {
  const listeners = config.listeners.flatMap((l, index) => (l.requireAuth ? [] : [{ name: l.name, index }]));
  if (listeners.length === 0) return undefined;
  const finding = lintPolicySet(policy).find((f) => f.kind === 'open_relay');
  if (!finding) return undefined;
  return { listeners, because: `${finding.file}${finding.line ? `:${finding.line}` : ''}: ${finding.message}` };
}

/**
 * The open relay as config problems (one per listener, at its requireAuth line), or, when
 * acknowledged, as warnings that every start repeats.
 */
export function openRelayProblems(config: Pick<Config, 'listeners' | 'iUnderstandThisIsAnOpenRelay'>, policy: PolicySet, origin: ConfigOrigin): { issues: ConfigIssue[]; warnings: string[] } {
  const open = findOpenRelay(config, policy);
  if (!open) return { issues: [], warnings: [] };
  const what = (name: string) => `listener ${JSON.stringify(name)} takes mail without AUTH and relay protection is not enforced (${open.because})`;
  if (config.iUnderstandThisIsAnOpenRelay === true) {
    return { issues: [], warnings: open.listeners.map((l) => `OPEN RELAY: ${what(l.name)}; anyone who reaches it may send to any domain, and iUnderstandThisIsAnOpenRelay: true says the backend refuses relaying itself`) };
  }
  return {
    issues: open.listeners.map((l) => {
      const segments = ['listeners', l.index, 'requireAuth'];
      return {
        file: origin.file,
        path: `listeners[${l.index}].requireAuth`,
        line: origin.lineOf(segments) ?? origin.lineOf(['listeners', l.index]),
        message: `${what(l.name)}: anyone who reaches it may send to any domain (an open relay). Set requireAuth: true, or turn relay protection on (relayProtection: on, or a relay_protection rule in mode: enforce); only if the backend itself refuses relaying (Postfix reject_unauth_destination), set iUnderstandThisIsAnOpenRelay: true`,
      };
    }),
    warnings: [],
  };
}
