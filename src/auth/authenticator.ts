import type { Logger } from '../logging/logger.js';
import type { Backend, ClientIdentity } from '../relay/backend.js';
import type { UserAttributes } from './user-attributes.js';

/**
 * The auth interface. Each source (the users file, passthrough to the legacy server, an LDAP
 * directory, Dovecot's auth service, an HTTP hook) is one file implementing `Authenticator`;
 * a list of them is tried in order by `AuthChain` (chain.ts), and `AuthCache` (cache.ts) may
 * sit in front. The session only talks to this interface.
 */

export interface AuthRequest {
  readonly username: string;
  readonly password: string;
  readonly mechanism: 'PLAIN' | 'LOGIN';
  readonly sessionId: string;
  readonly remoteAddress: string;
  /** The listener's name from the config. */
  readonly listener: string;
  /** The client's TLS (always there: AUTH is refused without it), for sources that want it. */
  readonly tls: { readonly version: string; readonly cipher: string } | undefined;
}

/**
 * A lookup without a password: does this user exist here, and may they sign in? An app
 * password (auth.credentials) proves who the client is; the source of the user's account still
 * says whether the account exists and is enabled, and what it knows of them (addresses, groups).
 */
export interface LookupRequest {
  readonly username: string;
  readonly sessionId: string;
  readonly remoteAddress: string;
  readonly listener: string;
}

export interface AuthenticatedUser {
  /** The login as the source spells it (a directory may canonicalise case). */
  readonly username: string;
  /**
   * What the source knows of the user: the addresses they may send as and their groups
   * (a directory's mail/proxyAddresses and memberOf). Undefined when the source keeps none;
   * the attributes file (auth.attributes) adds to it either way.
   */
  readonly attributes?: UserAttributes;
}

/**
 * Why a sign-in failed:
 * - `unknown_user`: this source has no such user; the next source in the chain is asked.
 * - `bad_credentials`: the source knows the user and the password is wrong. Final.
 * - `disabled`: the source knows the user and the account is disabled or locked. Final.
 * - `unavailable`: the source could not decide (unreachable, timed out, its own 4xx). The
 *   client gets 454 4.7.0 and may retry; it is never counted as a wrong password.
 * - `app_password_required`: the user may sign in with an app password only
 *   (auth.requireAppPassword) and gave another password, which was not checked. Final; the
 *   client gets 535 with a text saying so.
 * The client gets the same 535 for the first three: only the logs tell them apart.
 */
export type AuthFailureReason = 'unknown_user' | 'bad_credentials' | 'disabled' | 'unavailable' | 'app_password_required';

/**
 * One source's answer. `source` (which source answered) is filled in by the chain; `cached`
 * marks an answer the auth cache remembered; `detail` is for the log, never the client
 * ("ldaps://dc1:636: connect ETIMEDOUT"); `credential` is the label of the app password the
 * client signed in with (or that matched and was refused: expired, wrong network), never the secret.
 */
export type AuthOutcome =
  | { readonly ok: true; readonly user: AuthenticatedUser; readonly source?: string; readonly cached?: true; readonly credential?: string }
  | { readonly ok: false; readonly reason: AuthFailureReason; readonly source?: string; readonly cached?: true; readonly detail?: string; readonly credential?: string };

/**
 * What the session offers an authenticator beyond the credentials: passthrough auth uses the
 * session's own backend connection, so the login sticks to the connection that relays mail.
 */
export interface AuthContext {
  readonly backend: Backend;
  readonly identity: ClientIdentity;
}

export interface Authenticator {
  /** The source's kind, as in auth.backend ("file", "ldap", …), or "chain" / "cache". */
  readonly kind: string;
  /**
   * Checks one sign-in. Never throws for a source problem: a directory that is down is
   * `{ ok: false, reason: 'unavailable', detail }`. (A throw is a bug, and the session answers
   * it with 454 too.)
   */
  authenticate(req: AuthRequest, ctx: AuthContext): Promise<AuthOutcome>;
  /**
   * Looks the user up without checking a password (for an app password, which smtpgate has
   * already checked): `ok` with what the source knows of them when the account exists and may
   * sign in, else `unknown_user`, `disabled` or `unavailable`; never `bad_credentials`. A source
   * that cannot look users up (passthrough) has no `lookup`, and the chain treats it as not
   * knowing the user. Never throws for a source problem, like `authenticate`.
   */
  lookup?(req: LookupRequest): Promise<AuthOutcome>;
  /**
   * `smtpgate check --probe`: reaches the source once (an LDAP bind with the service account,
   * Dovecot's handshake, …) and says what it found, in a line or two for the operator. Rejects
   * with a message naming what failed and the fix.
   */
  probe?(): Promise<string>;
  /** Closes connections and timers; the source is not used after. */
  close?(): Promise<void>;
}

/** What every source is built with, besides its own config section and secrets. */
export interface SourceDeps {
  /** The app's logger; a source logs with `{ source: kind }` and never a password. */
  readonly log: Logger;
}
