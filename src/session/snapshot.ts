/**
 * What smtpgate knows about one client session, in one shape, and what each consumer is shown
 * of it: the limits (`ClientFacts`), the policy engine (`SessionFacts`) and the backend's
 * XCLIENT/XFORWARD identity (`ClientIdentity`). Each projection is pure, so every consumer sees
 * the same client through the same fields. Stage facts (the sender, a recipient, the message)
 * are added by the stage that learns them.
 *
 * The limits and the backend identity are asked at every MAIL and RCPT, so their projections
 * take only the fields they read (`LimitsSubject`, `IdentitySubject`): the session gives those
 * without building a whole snapshot, whose clock reading and recipient list only the policy uses.
 */
import type { ClientFacts } from '../limits/limits.js';
import { buildUserFacts, type UserAttributesLike } from '../policy/facts.js';
import type { AuthMethod, SessionFacts } from '../policy/types.js';
import type { ClientIdentity } from '../relay/backend-session.js';

export interface SessionSnapshot {
  /** smtp-server's session id: in every log line, and the key of the session's limits. */
  readonly id: string;
  /** The listener's name from the config. */
  readonly listener: string;
  /** The client's address and port (after PROXY protocol). */
  readonly ip: string;
  readonly port: number;
  /** TLS version in use ("TLSv1.3"), or undefined before TLS. */
  readonly tls: string | undefined;
  /** The client is in the listener's trusted networks. */
  readonly trusted: boolean;
  /** The EHLO/HELO name, once given. */
  readonly helo: string | undefined;
  /** HELO (RFC 821) or EHLO: the protocol the backend is told about. */
  readonly greeting: 'HELO' | 'EHLO' | undefined;
  /** The authenticated user (password or client certificate), and their attributes. */
  readonly user: string | undefined;
  /** How the user signed in. */
  readonly authMethod: AuthMethod | undefined;
  readonly attributes: UserAttributesLike | undefined;
  /** Recipients accepted so far in the transaction. */
  readonly recipients: readonly string[];
  readonly now: Date;
}

/** What the limits read of a snapshot. */
export type LimitsSubject = Pick<SessionSnapshot, 'id' | 'ip' | 'listener' | 'user' | 'attributes'>;

/** What the backend identity reads of a snapshot. */
export type IdentitySubject = Pick<SessionSnapshot, 'ip' | 'port' | 'helo' | 'greeting' | 'user'>;

/** For the limits: who to count. */
export function limitsView(s: LimitsSubject): ClientFacts {
  return { session: s.id, ip: s.ip, listener: s.listener, user: s.user, groups: s.user ? s.attributes?.groups : undefined, addresses: s.user ? s.attributes?.addresses : undefined };
}

/** For the policy engine, at any stage; stage facts are added by the caller. */
export function policyView(s: SessionSnapshot): SessionFacts {
  return {
    ip: s.ip,
    listener: s.listener,
    tls: s.tls ? { version: s.tls } : undefined,
    authenticated: s.user !== undefined,
    authMethod: s.user !== undefined ? s.authMethod : undefined,
    user: s.user ? buildUserFacts(s.user, s.attributes) : undefined,
    trusted: s.trusted,
    helo: s.helo,
    recipients: s.recipients,
    now: s.now,
  };
}

/** For the backend: the client as XCLIENT/XFORWARD present it (Postfix XCLIENT_README). */
export function backendIdentity(s: IdentitySubject): ClientIdentity {
  return { addr: s.ip, port: s.port, helo: s.helo, proto: s.greeting === 'HELO' ? 'SMTP' : 'ESMTP', login: s.user };
}
