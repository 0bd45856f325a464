/**
 * What a listener is built from (app.ts gives it), and what every ClientSession of the
 * listener shares, derived from it.
 */
import type { Authenticator } from '../auth/authenticator.js';
import type { UserAttributes } from '../auth/user-attributes.js';
import type { ListenerConfig } from '../config/schema.js';
import type { Limits } from '../limits/limits.js';
import type { Logger } from '../logging/logger.js';
import type { Metrics } from '../metrics/catalogue.js';
import type { PolicySet } from '../policy/types.js';
import type { BackendSession, BareLineEndingMode, DkimSettings } from '../relay/backend.js';
import type { ReceivedHeaderMode } from '../relay/received-header.js';
import type { ClientSessionDeps } from '../session/client-session.js';
import type { ReadBufferReclaimer } from '../transport/read-buffer-reclaimer.js';
import type { WriteBatcher } from '../transport/write-batcher.js';
import type { TlsManager } from './tls-manager.js';

export interface ListenerTls {
  readonly manager: TlsManager;
  /** CA bundle for client certificates, when the listener asks for them. */
  readonly clientCa?: Buffer;
}

export interface ClientSettings {
  readonly timeouts: { readonly command: number; readonly commandLine: number; readonly tlsHandshake: number; readonly data: number; readonly session: number };
  readonly minCommandRate: number;
  readonly minCommandRateGrace: number;
  readonly minDataRate: number;
  readonly minDataRateGrace: number;
  readonly maxProtocolErrors: number;
}

export interface DataSettings {
  readonly bareLineEndings: BareLineEndingMode;
  readonly receivedHeader: ReceivedHeaderMode;
  readonly authenticatedUserHeader: boolean;
  readonly stripHeaders: readonly string[];
  readonly maxMessageBytes: number;
  /** DKIM signing (dkim:); undefined when off. */
  readonly dkim?: DkimSettings;
}

export interface ListenerDeps {
  readonly config: ListenerConfig;
  /** Rate limits, lockouts and the compromised-account brake. */
  readonly limits: Limits;
  /** Groups and allowed addresses of a user (auth.attributes). */
  readonly attributes: (user: string) => UserAttributes;
  /** The policy set in force now; a session keeps the one it started with. */
  readonly policy: () => PolicySet;
  readonly hostname: string;
  readonly tls: ListenerTls | undefined;
  readonly authenticator: Authenticator | undefined;
  /** Creates the (lazy) backend session for one client session, which logs with `log`. */
  readonly openBackend: (log: Logger) => BackendSession;
  readonly data: DataSettings;
  readonly client: ClientSettings;
  /** Holds the replies of one event-loop turn so they leave together (optional: tests may write directly). */
  readonly writes?: WriteBatcher;
  /** Collects the read buffers relayed client data leaves behind (optional: tests may leave it to V8). */
  readonly reclaimer?: ReadBufferReclaimer;
  readonly metrics: Metrics;
  readonly log: Logger;
}

/** What every session of the listener shares; `hangUp` ends a session at a deadline. */
export function sessionDeps(deps: ListenerDeps, hangUp: ClientSessionDeps['hangUp']): ClientSessionDeps {
  const { config, client } = deps;
  return {
    listener: config.name,
    limits: deps.limits,
    attributes: deps.attributes,
    authenticator: deps.authenticator,
    clientCerts: config.clientCerts,
    timeouts: client.timeouts,
    requireTls: { untrusted: config.requireTls, trusted: config.trusted?.requireTls ?? config.requireTls },
    requireAuth: config.requireAuth,
    hostname: deps.hostname,
    data: deps.data,
    dataPace: { deadline: client.timeouts.data, minRate: client.minDataRate, grace: client.minDataRateGrace },
    metrics: deps.metrics,
    clock: Date.now,
    hangUp,
  };
}
