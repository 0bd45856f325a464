/**
 * What is known of a client before any of its facts are looked at: whether the listener trusts
 * it and whether it has authenticated. Some conditions are decided by that alone (relay
 * protection never acts on a trusted or authenticated client; sender binding, user and group
 * conditions never on an anonymous one), so for each stage of a policy set the loader works out,
 * per kind of client, whether any rule could act at all (`StagePlan.idle`). When none could,
 * the checkpoint answers the stage's default without building the facts or evaluating a rule.
 *
 * `staticValue` must be sound: it answers true or false only when `holds()` (conditions.ts)
 * would answer the same for every session of that kind, and undefined otherwise.
 */
import type { Condition } from './types.js';

/** Index into `StagePlan.idle`: 0 untrusted, anonymous; 1 untrusted, authenticated; 2 trusted, anonymous; 3 trusted, authenticated. */
export type ClientKind = 0 | 1 | 2 | 3;

export const CLIENT_KINDS: readonly ClientKind[] = [0, 1, 2, 3];

export function clientKind(trusted: boolean, authenticated: boolean): ClientKind {
  return ((trusted ? 2 : 0) + (authenticated ? 1 : 0)) as ClientKind;
}

const isTrustedKind = (kind: ClientKind) => kind >= 2;
const isAuthenticatedKind = (kind: ClientKind) => kind % 2 === 1;

/** The condition's value for every session of `kind`, or undefined when it depends on more. */
export function staticValue(cond: Condition, kind: ClientKind): boolean | undefined {
  const authenticated = isAuthenticatedKind(kind);
  switch (cond.kind) {
    case 'all':
      return combined(cond.of, kind, false);
    case 'any':
      return combined(cond.of, kind, true);
    case 'not': {
      const v = staticValue(cond.of, kind);
      return v === undefined ? undefined : !v;
    }
    case 'authenticated':
      return authenticated === cond.value;
    // Each needs a user: never true for a client that has none.
    case 'authMethod':
    case 'user':
    case 'group':
      return authenticated ? undefined : false;
    // The policy's trustedNetworks can make an untrusted listener's client trusted, never the reverse.
    case 'trusted':
      return isTrustedKind(kind) ? cond.value : undefined;
    case 'builtin':
      switch (cond.check.type) {
        case 'relay_protection':
          return authenticated || isTrustedKind(kind) ? false : undefined;
        case 'sender_binding':
          return authenticated ? undefined : false;
        case 'trusted_networks':
          return cond.check.networks === undefined && isTrustedKind(kind) ? true : undefined;
        default:
          return undefined;
      }
    default:
      return undefined;
  }
}

/** `all` (a false part decides) or `any` (a true part decides); undefined parts leave it open. */
function combined(parts: readonly Condition[], kind: ClientKind, decisive: boolean): boolean | undefined {
  let value: boolean | undefined = !decisive;
  for (const c of parts) {
    const v = staticValue(c, kind);
    if (v === decisive) return decisive;
    if (v === undefined) value = undefined;
  }
  return value;
}
