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
import { credentialRefusal, looksLikeAppPassword, secretMatches, type CredentialIndex } from './credentials-file.js';
import type { UserAttributes } from './user-attributes.js';

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
    if (looksLikeAppPassword(req.password)) return this.#withAppPassword(req);
    const requirement = this.#deps.requirement();
    return requirement ? this.#withDirectoryPassword(req, ctx, requirement) : this.inner.authenticate(req, ctx);
  }

  lookup(req: LookupRequest): Promise<AuthOutcome> {
    return this.#lookup(req);
  }

  close(): Promise<void> {
    return this.inner.close?.() ?? Promise.resolve();
  }

  async #withAppPassword(req: AuthRequest): Promise<AuthOutcome> {
    const credentials = this.#deps.credentials();
    const candidates = credentials.of(req.username);
    if (candidates.length === 0) secretMatches(req.password, DUMMY_HASH);
    const credential = credentials.match(req.username, req.password);
    if (!credential) {
      return { ok: false, reason: 'bad_credentials', source: this.kind, detail: `no app password of ${req.username} matches (revoked, mistyped, or made for another user)` };
    }
    const now = this.#deps.now?.() ?? new Date();
    const refused = credentialRefusal(credential, { remoteAddress: req.remoteAddress, listener: req.listener, now });
    if (refused) return { ok: false, reason: 'bad_credentials', source: this.kind, detail: refused, credential: credential.label };
    const account = await this.#lookup(req);
    if (!account.ok) {
      // The app password alone doesn't let a removed or disabled account in.
      const label = credential.label;
      if (account.reason === 'unavailable' || account.reason === 'disabled') {
        return { ok: false, reason: account.reason, source: account.source, credential: label, detail: `app password ${label} is right, but ${account.detail ?? `the account is ${account.reason}`}` };
      }
      return { ok: false, reason: 'bad_credentials', source: account.source, credential: label, detail: `app password ${label} is right, but no auth source knows ${req.username}${account.detail ? ` (${account.detail})` : ''}` };
    }
    void this.#deps.usage?.record(credential, req.remoteAddress, now);
    return { ok: true, user: account.user, source: account.source, credential: credential.label, ...(account.cached ? { cached: true } : {}) };
  }

  async #withDirectoryPassword(req: AuthRequest, ctx: AuthContext, requirement: AppPasswordRequirement): Promise<AuthOutcome> {
    const login = req.username.toLowerCase();
    const byName = requirement.users.some((u) => u.toLowerCase() === login);
    if (!byName && requirement.groups.length > 0) {
      const account = await this.#lookup(req);
      // Fail closed: while the account source can't say which groups the user is in, a group
      // that must use app passwords can't be told apart, so nobody signs in with a password.
      if (!account.ok && account.reason === 'unavailable') return account;
      const groups = new Set(this.#deps.attributes(req.username).groups.map((g) => g.toLowerCase()));
      if (account.ok) {
        for (const g of account.user.attributes?.groups ?? []) groups.add(g.toLowerCase());
        for (const g of this.#deps.attributes(account.user.username).groups) groups.add(g.toLowerCase());
      }
      const group = requirement.groups.find((g) => groups.has(g.toLowerCase()));
      if (group) return required(`${req.username} is in group ${group}, which must use app passwords`);
    }
    if (byName) return required(`${req.username} must use app passwords`);
    return this.inner.authenticate(req, ctx);
  }

  #lookup(req: LookupRequest): Promise<AuthOutcome> {
    const lookup = { username: req.username, sessionId: req.sessionId, remoteAddress: req.remoteAddress, listener: req.listener };
    return this.inner.lookup ? this.inner.lookup(lookup) : Promise.resolve({ ok: false, reason: 'unknown_user' });
  }
}

function required(detail: string): AuthOutcome {
  return { ok: false, reason: 'app_password_required', source: 'app-password', detail: `${detail}; the password given was not checked` };
}
