/**
 * App passwords (`auth.credentials`): per-device secrets that smtpgate makes and checks itself,
 * in front of the user's own account source (the users file, LDAP, Dovecot, the HTTP hook).
 *
 * A sign-in whose password has an app password's shape (`sgap` + 26 base32 characters) is
 * decided here and never reaches the account source as a password:
 * 1. the secret must match one of the user's credentials (a keyed hash per credential: a few
 *    microseconds, not a bcrypt verification);
 * 2. that credential must not have expired, and the client must be on one of its networks and
 *    listeners, if it names any;
 * 3. the account must still exist and be enabled where it lives: the source is asked to look
 *    the user up, without a password (an LDAP search with the service account, no bind).
 * Any "no" is a failed sign-in (535, counted toward the lockout like a wrong password); an
 * account source that can't answer is 454, as for a password.
 *
 * Any other password goes to the account source as before, unless the user must use app
 * passwords (`auth.requireAppPassword`, by login or group): then it is refused with a 535 that
 * says so, without being checked, so the directory password gives an attacker no answer over
 * SMTP. Groups come from the account source's lookup and the attributes file.
 *
 * This sits in front of the auth cache: an app password's own checks are made every time (a
 * revoked one stops working at the next reload of the file), and only the account lookup may be
 * remembered.
 */
import type { Logger } from '../logging/logger.js';
import type { AuthContext, AuthOutcome, AuthRequest, Authenticator, LookupRequest } from './authenticator.js';
import type { CredentialUsage } from './credential-usage.js';
import { appPasswordIn, credentialRefusal, secretMatches, type CredentialIndex } from './credentials-file.js';
import type { UserAttributes } from './user-attributes.js';
import { printable } from '../logging/printable.js';

/** Who must sign in with an app password (auth.requireAppPassword). */
export interface AppPasswordRequirement {
  readonly users: readonly string[];
  readonly groups: readonly string[];
}

export interface AppPasswordDeps {
  /** The credentials file as last (re)loaded. */
  readonly credentials: () => CredentialIndex;
  readonly requirement: () => AppPasswordRequirement | undefined;
  /** The attributes file's groups and addresses for a user. */
  readonly attributes: (user: string) => UserAttributes;
  readonly usage: CredentialUsage | undefined;
  readonly log: Logger;
  readonly now?: () => Date;
}

/** A hash no secret matches, checked for users without credentials so that they take as long. */
const DUMMY_HASH = '$sgap1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';

export class AppPasswords implements Authenticator {
  readonly kind = 'app-password';
  readonly inner: Authenticator;
  readonly #deps: AppPasswordDeps;

  constructor(inner: Authenticator, deps: AppPasswordDeps) {
    this.inner = inner;
    this.#deps = deps;
  }

  authenticate(req: AuthRequest, ctx: AuthContext): Promise<AuthOutcome> {
    const secret = appPasswordIn(req.password);
    if (secret !== undefined) return this.#withAppPassword(req, secret);
    const requirement = this.#deps.requirement();
    return requirement ? this.#withOwnPassword(req, ctx, requirement) : this.inner.authenticate(req, ctx);
  }

  lookup(req: LookupRequest): Promise<AuthOutcome> {
    return this.#lookup(req, req.username);
  }

  close(): Promise<void> {
    return this.inner.close?.() ?? Promise.resolve();
  }

  async #withAppPassword(req: AuthRequest, secret: string): Promise<AuthOutcome> {
    const credentials = this.#deps.credentials();
    if (credentials.of(req.username).length === 0) secretMatches(secret, DUMMY_HASH);
    const credential = credentials.match(req.username, secret);
    if (!credential) {
      return { ok: false, reason: 'bad_credentials', source: this.kind, detail: `no app password of ${printable(req.username)} matches (revoked, mistyped, or made for another user)` };
    }
    const now = this.#deps.now?.() ?? new Date();
    const refused = credentialRefusal(credential, { remoteAddress: req.remoteAddress, listener: req.listener, now });
    if (refused) return { ok: false, reason: 'bad_credentials', source: this.kind, detail: refused, credential: credential.label };
    // The account the credential was made for, as the file spells it: a login typed in another
    // case must not reach a different account that a case-sensitive source keeps apart.
    const account = await this.#lookup(req, credential.user);
    if (!account.ok) {
      // The app password alone doesn't let a removed or disabled account in.
      const label = credential.label;
      if (account.reason === 'unavailable' || account.reason === 'disabled') {
        return { ok: false, reason: account.reason, source: account.source, credential: label, detail: `app password ${label} is right, but ${account.detail ?? `the account is ${account.reason}`}` };
      }
      return { ok: false, reason: 'bad_credentials', source: account.source, credential: label, detail: `app password ${label} is right, but no auth source knows ${credential.user}${account.detail ? ` (${account.detail})` : ''}` };
    }
    void this.#deps.usage?.record(credential, req.remoteAddress, now);
    return { ok: true, user: account.user, source: account.source, credential: credential.label, ...(account.cached ? { cached: true } : {}) };
  }

  /**
   * Any other password, when some users must use app passwords. Who the login is, is asked of
   * the account source first (a directory may take "Alice " or another attribute for alice):
   * the rule is checked against the account's own name and groups, and the password is checked
   * only for someone it doesn't cover. Whatever the lookup can't settle (a directory that is
   * down, a hook that doesn't answer lookups) fails closed. After the password is checked the
   * rule is checked once more, against the account the sign-in reached.
   */
  async #withOwnPassword(req: AuthRequest, ctx: AuthContext, requirement: AppPasswordRequirement): Promise<AuthOutcome> {
    const account = await this.#lookup(req, req.username);
    if (!account.ok && account.reason !== 'unknown_user') {
      return account.reason === 'unavailable'
        ? account
        : { ok: false, reason: 'bad_credentials', source: account.source, detail: `requireAppPassword: the account of ${printable(req.username)} could not be looked up (${account.detail ?? account.reason}); the password given was not checked` };
    }
    const names = [req.username, ...(account.ok ? [account.user.username] : [])];
    const covered = this.#covered(requirement, names, account.ok ? account.user.attributes?.groups : undefined);
    if (covered) return required(`${covered}, which must use app passwords`);
    const outcome = await this.inner.authenticate(req, ctx);
    if (!outcome.ok) return outcome;
    const reached = this.#covered(requirement, [outcome.user.username], outcome.user.attributes?.groups);
    if (!reached) return outcome;
    // The lookup and the sign-in disagree on who this is. Refused like a wrong password: the
    // client must not learn that the password was right.
    this.#deps.log.warn({ session: req.sessionId, user: printable(req.username), account: outcome.user.username }, `requireAppPassword: the sign-in reached ${reached}; refused`);
    return { ok: false, reason: 'bad_credentials', source: outcome.source, detail: `requireAppPassword: the sign-in reached ${reached}` };
  }

  /** Which requirement covers these names (login and account name) and groups, said for the log; undefined when none does. */
  #covered(requirement: AppPasswordRequirement, names: readonly string[], sourceGroups: readonly string[] | undefined): string | undefined {
    const keys = names.map((n) => n.trim().toLowerCase());
    const user = requirement.users.find((u) => keys.includes(u.trim().toLowerCase()));
    if (user !== undefined) return `${printable(names.at(-1)!)} is listed`;
    if (requirement.groups.length === 0) return undefined;
    const groups = new Set((sourceGroups ?? []).map((g) => g.toLowerCase()));
    for (const n of names) for (const g of this.#deps.attributes(n.trim()).groups) groups.add(g.toLowerCase());
    const group = requirement.groups.find((g) => groups.has(g.toLowerCase()));
    return group === undefined ? undefined : `${printable(names.at(-1)!)} is in group ${group}`;
  }

  #lookup(req: LookupRequest, username: string): Promise<AuthOutcome> {
    const lookup = { username, sessionId: req.sessionId, remoteAddress: req.remoteAddress, listener: req.listener };
    return this.inner.lookup ? this.inner.lookup(lookup) : Promise.resolve({ ok: false, reason: 'unknown_user' });
  }
}

function required(detail: string): AuthOutcome {
  return { ok: false, reason: 'app_password_required', source: 'app-password', detail: `${detail}; the password given was not checked` };
}
