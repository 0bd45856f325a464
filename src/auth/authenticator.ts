import type { Backend, ClientIdentity } from '../relay/backend.js';

/**
 * The auth interface. Each backend (users file, passthrough to the legacy server, and later
 * LDAP bind or an HTTP hook) is one file implementing `Authenticator`; the listener only
 * talks to this interface.
 */

export interface AuthRequest {
  readonly username: string;
  readonly password: string;
  readonly mechanism: 'PLAIN' | 'LOGIN';
  readonly sessionId: string;
  readonly remoteAddress: string;
}

export interface AuthenticatedUser {
  readonly username: string;
}

export type AuthOutcome =
  | { readonly ok: true; readonly user: AuthenticatedUser }
  /** `unavailable`: the backend could not decide (e.g. unreachable); the client gets a 454 and may retry. */
  | { readonly ok: false; readonly reason: 'bad_credentials' | 'unavailable' };

/**
 * What the session offers an authenticator beyond the credentials: passthrough auth uses the
 * session's own backend connection, so the login sticks to the connection that relays mail.
 */
export interface AuthContext {
  readonly backend: Backend;
  readonly identity: ClientIdentity;
}

export interface Authenticator {
  readonly kind: string;
  authenticate(req: AuthRequest, ctx: AuthContext): Promise<AuthOutcome>;
}
