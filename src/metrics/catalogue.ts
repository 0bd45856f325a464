/**
 * Every metric smtpgate exports, in one place. One registry per app instance (no globals), so
 * two instances in one process (tests) don't collide.
 *
 * Labels come only from small, fixed sets: listener (from config), stage, result, reason
 * (REFUSAL_REASONS), code class, mechanism, auth (MESSAGE_AUTH), tls (MESSAGE_TLS), backend
 * (from config). Never an IP, user, address or EHLO name: those go in logs.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BuildInfo } from '../build-info.js';
import type { ListenerConfig } from '../config/schema.js';
import { createLimitMetrics } from '../limits/metrics.js';
import { createPolicyMetrics } from '../policy/metrics.js';
import { createAuthMetrics } from './auth-metrics.js';
import { SIGNING_RESULTS } from '../dkim/outcome.js';

/** What SIGHUP and the file watchers reload, each on its own. */
export const RELOAD_COMPONENTS = ['certificate', 'users', 'credentials', 'config', 'policy', 'dkim'] as const;
export type ReloadComponent = (typeof RELOAD_COMPONENTS)[number];

const MESSAGE_RESULTS = ['relayed', 'refused', 'aborted'] as const;
/** smtpgate_backend_oauth_token_total's results (relay/upstream-tokens.ts). */
export const TOKEN_RESULTS = ['issued', 'failed', 'backoff', 'rejected'] as const;
export type TokenResult = (typeof TOKEN_RESULTS)[number];
/** smtpgate_notifications_total{result}: a notice the relay took, an attempt to be made again, a notice given up. */
export const NOTIFICATION_RESULTS = ['sent', 'retried', 'failed'] as const;
/**
 * How a message's session was let send: a signed-in `user` (password, app password or client
 * certificate), a client in the listener's `trusted` networks that did not sign in, or `none`
 * (a listener with requireAuth: false). A trusted client that signs in counts as `user`: the
 * mail is someone's.
 */
export const MESSAGE_AUTH = ['user', 'trusted', 'none'] as const;
/**
 * Whether the session was under TLS when the message came: yes or no. The version is left to
 * smtpgate_tls_handshakes_total; here it would triple the series for no question anyone asks.
 */
export const MESSAGE_TLS = ['yes', 'no'] as const;
export type MessageAuth = (typeof MESSAGE_AUTH)[number];
export type MessageTls = (typeof MESSAGE_TLS)[number];

/**
 * prom-client's gauges of the same counts as nodejs_active_{handles,requests,resources}{type},
 * summed; their _total suffix makes them look like counters, which `promtool check metrics`
 * refuses. `sum(nodejs_active_handles)` gives the same number.
 */
const GAUGES_NAMED_LIKE_COUNTERS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

export function createMetrics(build: BuildInfo) {
  const registry = new Registry();
  // No prefix: generic Node.js and process dashboards and alerts query process_cpu_seconds_total,
  // nodejs_heap_size_used_bytes and the like under these standard names.
  collectDefaultMetrics({ register: registry });
  for (const name of GAUGES_NAMED_LIKE_COUNTERS) registry.removeSingleMetric(name);
  const registers = [registry];

  const buildInfo = new Gauge({
    name: 'smtpgate_build_info',
    // Across cluster workers: every worker runs the same build.
    aggregator: 'max',
    help: 'Always 1; its labels name the smtpgate version and the Node.js version running it.',
    labelNames: ['version', 'node_version'] as const,
    registers,
  });
  buildInfo.set({ version: build.version, node_version: build.node }, 1);

  const notifications = new Counter({
    name: 'smtpgate_notifications_total',
    help: 'Suspension notices (notifications): sent (the relay took the message), retried (an attempt failed and will be made again), failed (given up).',
    labelNames: ['result'] as const,
    registers,
  });
  // At zero from the start, with notifications configured or not: an alert on failures needs the series.
  for (const result of NOTIFICATION_RESULTS) notifications.inc({ result }, 0);

  return {
    registry,
    buildInfo,
    notifications,
    /** Limiter decisions, lockouts, suspensions and the store's health (src/limits/metrics.ts). */
    limits: createLimitMetrics(registry),
    /** Policy decisions by rule, stage and action, and audit hits (src/policy/metrics.ts). */
    policy: createPolicyMetrics(registry),
    /** Auth sources' latency, errors and health, and the auth cache (src/auth/metrics.ts). */
    auth: createAuthMetrics(registry),
    connectionsOpened: new Counter({
      name: 'smtpgate_connections_opened_total',
      help: 'Client connections greeted or refused by connect-stage policy, per listener: those past the connection limits and the greeting wait. Connections refused by the limits are in smtpgate_refusals_total{stage="connect"} only.',
      labelNames: ['listener'] as const,
      registers,
    }),
    connectionsClosed: new Counter({
      name: 'smtpgate_connections_closed_total',
      help: 'Client connections closed, per listener.',
      labelNames: ['listener'] as const,
      registers,
    }),
    connectionsActive: new Gauge({
      name: 'smtpgate_connections_active',
      help: 'Client connections open now, per listener, from their greeting on (the connection limits also count those still waiting for it).',
      labelNames: ['listener'] as const,
      registers,
    }),
    tlsHandshakes: new Counter({
      name: 'smtpgate_tls_handshakes_total',
      help: 'Completed client TLS handshakes by listener, kind (starttls|implicit) and protocol version.',
      labelNames: ['listener', 'kind', 'version'] as const,
      registers,
    }),
    authAttempts: new Counter({
      name: 'smtpgate_auth_attempts_total',
      help: 'SMTP AUTH attempts by listener, mechanism, credential kind (password|app_password|certificate) and result (success|failure|error|refused).',
      labelNames: ['listener', 'mechanism', 'credential', 'result'] as const,
      registers,
    }),
    refusals: new Counter({
      name: 'smtpgate_refusals_total',
      help: 'Commands refused by smtpgate or the backend, by stage, reason and reply class.',
      labelNames: ['listener', 'stage', 'reason', 'code_class'] as const,
      registers,
    }),
    messages: new Counter({
      name: 'smtpgate_messages_total',
      help: 'Messages by final outcome (relayed: backend said 2xx at the final dot; refused; aborted), how the session was let send (auth: user signed in, trusted network, none) and whether it was under TLS (tls: yes|no).',
      labelNames: ['listener', 'result', 'auth', 'tls'] as const,
      registers,
    }),
    listenerInfo: new Gauge({
      name: 'smtpgate_listener_info',
      // Across cluster workers: every worker runs the same listeners.
      aggregator: 'max',
      help: 'Always 1, one series per listener; its labels are what the listener enforces: tls_mode (starttls|implicit|none), require_tls and require_auth (untrusted clients), trusted_networks, trusted_require_tls (clients in trusted.networks), client_certs (none|optional|required).',
      labelNames: ['listener', 'tls_mode', 'require_tls', 'require_auth', 'trusted_networks', 'trusted_require_tls', 'client_certs'] as const,
      registers,
    }),
    messageBytes: new Histogram({
      name: 'smtpgate_message_size_bytes',
      help: 'Size of relayed messages, in bytes as received from the client.',
      buckets: [1e3, 1e4, 1e5, 1e6, 5e6, 1e7, 2.5e7, 5e7],
      registers,
    }),
    recipientsPerMessage: new Histogram({
      name: 'smtpgate_message_recipients',
      help: 'Accepted recipients per relayed message.',
      buckets: [1, 2, 5, 10, 20, 50, 100],
      registers,
    }),
    backendConnectSeconds: new Histogram({
      name: 'smtpgate_backend_connect_seconds',
      help: 'Time to open a backend session: TCP, TLS, greeting, EHLO and identity.',
      labelNames: ['backend'] as const,
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers,
    }),
    backendFinalReplySeconds: new Histogram({
      name: 'smtpgate_backend_final_reply_seconds',
      help: 'Time from the final "." to the backend reply.',
      labelNames: ['backend'] as const,
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
      registers,
    }),
    backendUp: new Gauge({
      name: 'smtpgate_backend_up',
      // Across cluster workers: up only if every worker reaches it.
      aggregator: 'min',
      help: 'Whether the last health check of each configured backend succeeded (1) or not (0).',
      labelNames: ['backend'] as const,
      registers,
    }),
    backendIdentityAdvertised: new Gauge({
      name: 'smtpgate_backend_identity_advertised',
      // Across cluster workers: advertised only if every worker's check saw it.
      aggregator: 'min',
      help: 'Whether the last successful health check of each backend saw its EHLO advertise the command backend.identity names (XCLIENT or XFORWARD): 1 yes, 0 no (the backend then judges smtpgate\'s address, not the client\'s). Absent with backend.identity none or health checks off.',
      labelNames: ['backend'] as const,
      registers,
    }),
    backendErrors: new Counter({
      name: 'smtpgate_backend_errors_total',
      help: 'Backend failures by kind (connect|timeout|closed|tls|protocol). Connections smtpgate drops on purpose (a refused or abandoned message, a client gone) are not counted.',
      labelNames: ['backend', 'kind'] as const,
      registers,
    }),
    backendOAuthTokens: new Counter({
      name: 'smtpgate_backend_oauth_token_total',
      help: 'OAuth2 tokens for signing in to the backend (backend.auth mechanism XOAUTH2), by result: issued (the token endpoint gave one), failed (it refused, or could not be reached), backoff (a session refused without asking, after a recent failure), rejected (the backend refused the token). Sessions refused for want of a token get 454 4.7.0.',
      labelNames: ['result'] as const,
      registers,
    }),
    smugglingRejections: new Counter({
      name: 'smtpgate_smuggling_rejections_total',
      help: 'Messages refused by the smuggling guard, by what it found (bare_cr|bare_lf|nul).',
      labelNames: ['listener', 'kind'] as const,
      registers,
    }),
    reloads: new Counter({
      name: 'smtpgate_reloads_total',
      help: 'Reloads by component (certificate|users|credentials|config|policy|dkim) and result (success|failure). A failure keeps the old one in force; for credentials (app passwords) the lines that fail are dropped instead.',
      labelNames: ['component', 'result'] as const,
      registers,
    }),
    // Prometheus's own names for the same thing (prometheus_config_last_reload_successful), per
    // component: a broken users file stays visible after a good policy reload.
    lastReloadSuccessful: new Gauge({
      name: 'smtpgate_config_last_reload_successful',
      // Across cluster workers: 0 when any worker's last reload failed.
      aggregator: 'min',
      help: 'Whether the last reload of each component (certificate|users|credentials|config|policy|dkim) succeeded (1) or failed (0: the previous one stays in force; for credentials, the lines that failed are dropped). Loading at start counts as a success.',
      labelNames: ['component'] as const,
      registers,
    }),
    lastReloadSuccessTimestamp: new Gauge({
      name: 'smtpgate_config_last_reload_success_timestamp_seconds',
      // Across cluster workers: the oldest of their last successes.
      aggregator: 'min',
      help: 'When each component (certificate|users|credentials|config|policy|dkim) was last loaded successfully (Unix time): at start, or by a reload.',
      labelNames: ['component'] as const,
      registers,
    }),
    certificateExpiry: new Gauge({
      name: 'smtpgate_tls_certificate_expiry_timestamp_seconds',
      // Across cluster workers: the earliest expiry any worker serves.
      aggregator: 'min',
      help: 'When each served certificate expires (Unix time), by certificate label ("default" or its first SNI name).',
      labelNames: ['certificate'] as const,
      registers,
    }),
    smugglingNormalized: new Counter({
      name: 'smtpgate_smuggling_normalized_total',
      help: 'Stray CR, LF or NUL bytes replaced by a space in normalize mode.',
      labelNames: ['listener'] as const,
      registers,
    }),
    logSyslogDropped: new Counter({
      name: 'smtpgate_log_syslog_dropped_total',
      help: 'Log lines the syslog server (log.syslog) never got: its buffer (bufferSize) was full while the server was unreachable or slow, or the system refused a datagram.',
      registers,
    }),
    dkimSignatures: new Counter({
      name: 'smtpgate_dkim_signatures_total',
      help: `Messages handed to the backend with dkim: configured, by result (${SIGNING_RESULTS.join('|')}): signed, or why not.`,
      labelNames: ['result'] as const,
      registers,
    }),
    readBufferCollections: new Counter({
      name: 'smtpgate_read_buffer_collections_total',
      help: 'Young-generation collections smtpgate asked V8 for, one per 8 MiB read from clients at most, to free relayed socket buffers.',
      registers,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

/** Counts a reload of one component and records whether the last one worked, and when it last did. */
export function recordReload(m: Metrics, component: ReloadComponent, ok: boolean, at = new Date()): void {
  m.reloads.inc({ component, result: ok ? 'success' : 'failure' });
  m.lastReloadSuccessful.set({ component }, ok ? 1 : 0);
  if (ok) m.lastReloadSuccessTimestamp.set({ component }, at.getTime() / 1000);
}

/**
 * Creates the series whose label values are known up front at zero, so Prometheus sees them
 * before their first event: rate() and increase() can't count an event on a series that
 * first appears already at 1.
 */
export function initSeries(m: Metrics, known: { listeners: readonly string[]; backends: readonly string[]; loadedAt: Date }): void {
  for (const result of SIGNING_RESULTS) m.dkimSignatures.inc({ result }, 0);
  for (const component of RELOAD_COMPONENTS) {
    for (const result of ['success', 'failure']) m.reloads.inc({ component, result }, 0);
    // What the app started with loaded successfully, as Prometheus counts its own start.
    m.lastReloadSuccessful.set({ component }, 1);
    m.lastReloadSuccessTimestamp.set({ component }, known.loadedAt.getTime() / 1000);
  }
  for (const backend of known.backends) {
    for (const kind of ['connect', 'timeout', 'closed', 'tls', 'protocol']) m.backendErrors.inc({ backend, kind }, 0);
  }
  for (const result of TOKEN_RESULTS) m.backendOAuthTokens.inc({ result }, 0);
  for (const listener of known.listeners) {
    m.connectionsOpened.inc({ listener }, 0);
    m.connectionsClosed.inc({ listener }, 0);
    m.connectionsActive.inc({ listener }, 0);
    m.smugglingNormalized.inc({ listener }, 0);
    // Every combination, those the listener's settings refuse too: the enforcement alert must see
    // the first such message, and increase() can't on a series that first appears at 1.
    for (const result of MESSAGE_RESULTS) {
      for (const auth of MESSAGE_AUTH) {
        for (const tls of MESSAGE_TLS) m.messages.inc({ listener, result, auth, tls }, 0);
      }
    }
    for (const kind of ['bare_cr', 'bare_lf', 'nul']) m.smugglingRejections.inc({ listener, kind }, 0);
    for (const mechanism of ['PLAIN', 'LOGIN']) {
      for (const credential of ['password', 'app_password']) {
        for (const result of ['success', 'failure', 'error', 'refused']) m.authAttempts.inc({ listener, mechanism, credential, result }, 0);
      }
    }
  }
}

/**
 * The `auth` and `tls` labels of a message, from what its session knows at DATA, read as the
 * MAIL FROM checks read it (ClientSession.mail): `none` is what requireAuth refuses, `no` what
 * requireTls refuses.
 */
export function howSent(session: { readonly user: string | undefined; readonly trusted: boolean; readonly secure: boolean }): { auth: MessageAuth; tls: MessageTls } {
  return { auth: session.user ? 'user' : session.trusted ? 'trusted' : 'none', tls: session.secure ? 'yes' : 'no' };
}

/**
 * The labels of a listener's smtpgate_listener_info series: its enforcement settings as the
 * running listener applies them (trusted.requireTls defaults to requireTls; without trusted
 * networks it is that default, and no client is trusted). Booleans read as in the config file.
 */
export function listenerInfoLabels(l: ListenerConfig) {
  return {
    listener: l.name,
    tls_mode: l.tls,
    require_tls: String(l.requireTls),
    require_auth: String(l.requireAuth),
    trusted_networks: String(l.trusted !== undefined),
    trusted_require_tls: String(l.trusted?.requireTls ?? l.requireTls),
    client_certs: l.clientCerts === undefined ? 'none' : l.clientCerts.required ? 'required' : 'optional',
  };
}

/**
 * Sets smtpgate_listener_info for the listeners the app runs. Listener settings change only
 * with a restart (config/diff.ts), so the app sets it once at start: set again from a reloaded
 * file, it would show an edit that is not in force.
 */
export function describeListeners(m: Metrics, listeners: readonly ListenerConfig[]): void {
  m.listenerInfo.reset();
  for (const l of listeners) m.listenerInfo.set(listenerInfoLabels(l), 1);
}
