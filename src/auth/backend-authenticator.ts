/**
 * `auth.backend: backend`: passthrough. The legacy server already has the accounts, so the
 * client's AUTH is forwarded over the session's own backend connection and the result is
 * mirrored. That authenticated connection then carries the client's mail. This is how an
 * organisation forces TLS in front of an old server without moving its users anywhere.
 */
import { BackendError } from '../relay/backend.js';
import type { AuthContext, AuthOutcome, AuthRequest, Authenticator } from './authenticator.js';

export class BackendAuthenticator implements Authenticator {
  readonly kind = 'backend';

  async authenticate(req: AuthRequest, ctx: AuthContext): Promise<AuthOutcome> {
    let code: number;
    try {
      code = (await ctx.backend.authenticate(req.username, req.password, req.mechanism, ctx.identity)).code;
    } catch (err) {
      if (err instanceof BackendError) return { ok: false, reason: 'unavailable' };
      throw err;
    }
    if (code === 235) return { ok: true, user: { username: req.username } };
    // A 4xx from the backend (e.g. its own auth store is down) is temporary for the client too.
    return { ok: false, reason: code >= 400 && code < 500 ? 'unavailable' : 'bad_credentials' };
  }
}
