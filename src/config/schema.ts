/**
 * The config file's shape. One zod schema; `smtpgate check`, `run` and reload all validate
 * through it, so a config that passes here is one the app can start with.
 *
 * Relative paths are resolved against the config file's folder, which is why the schema is
 * built per file by `configSchema(baseDir)`.
 */
import os from 'node:os';
import { z } from 'zod';
import { parseDuration, parseHostPort } from '../parsing/units.js';
import { CidrSet, isLoopbackHost, parseCidr, type Cidr } from '../parsing/cidr.js';

export { isLoopbackHost } from '../parsing/cidr.js';
import { describeBind, findBindConflicts, type Bind } from './bind-conflicts.js';
import { limitsSection, resolveStorePaths } from '../limits/config.js';
import { authSection } from './auth-section.js';
import { backendAuthSection } from './backend-auth-section.js';
import { logSection } from './log-section.js';
import { dkimSection } from './dkim-section.js';
import { filePathIn } from './file-path.js';

/** Mozilla "intermediate" profile for TLS 1.2: ECDHE key exchange with AES-GCM or ChaCha20 only. */
export const DEFAULT_TLS12_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

const hostPort = z.string().transform((value, ctx) => {
  const hp = parseHostPort(value);
  if (!hp) {
    ctx.addIssue({ code: 'custom', message: `expected "host:port" (e.g. 0.0.0.0:587 or [::1]:25), found ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return hp;
});

/** Like hostPort, but port 0 (pick a free port) is allowed: handy for tests and side services. */
const bindAddress = z.string().transform((value, ctx) => {
  const hp = parseHostPort(value.replace(/:0$/, ':1'));
  if (!hp) {
    ctx.addIssue({ code: 'custom', message: `expected "host:port" (e.g. 127.0.0.1:9464), found ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return /:0$/.test(value) ? { host: hp.host, port: 0 } : hp;
});

const duration = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected a duration such as "30s", "5m" or "1h", found ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return ms;
});


/**
 * Fields a message can't do without: RFC 5322 §3.6 requires From and Date, and without its
 * MIME headers the body can no longer be read (RFC 2045 §3).
 */
const UNSTRIPPABLE_HEADERS = ['from', 'date', 'mime-version', 'content-type', 'content-transfer-encoding'];

/** A name for data.stripHeaders: a header field name as messages spell it, without the colon. */
const strippableHeader = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'expected a header name such as X-Originating-IP (letters, digits, "-", "_" or "."; no colon)')
  .refine((name) => !UNSTRIPPABLE_HEADERS.includes(name.toLowerCase()), { error: (issue) => `${String(issue.input)} can't be stripped: the message needs it` });

const cidr = z.string().transform((value, ctx): Cidr => {
  const c = parseCidr(value);
  if (!c) {
    ctx.addIssue({ code: 'custom', message: `expected an address or CIDR such as 10.0.0.0/8 or 2001:db8::/32, found ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return c;
});

/**
 * A plain address (RFC 5321 dot-atom local part, ASCII): no display name, comment or list, so a
 * value can't become two recipients or carry a header.
 */
export const PLAIN_ADDRESS = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$/;

const mailbox = z.string().regex(PLAIN_ADDRESS, 'expected a plain address such as postmaster@corp.example (no display name, no list)');

const HOST_NAME = /^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/;

const LISTENER_NAME = /^[a-z][a-z0-9_-]{0,31}$/;

/**
 * Postfix postscreen's greet wait is 6s. A longer pause only holds sockets open, uncounted: the
 * connection caps and rate run in onConnect, after the pause.
 */
const MAX_GREETING_DELAY_MS = 30_000;

export function configSchema(baseDir: string) {
  const filePath = filePathIn(baseDir);

  /** Credentials smtpgate itself presents to a server (the backend, the notifications relay). */
  const smtpAuth = z
    .object({
      user: z.string().min(1).regex(/^[^\r\n\0]+$/, 'must not contain CR, LF or NUL'),
      password: z.string().regex(/^[^\r\n\0]*$/, 'must not contain CR, LF or NUL').optional(),
      passwordFile: filePath.optional(),
      mechanism: z.enum(['PLAIN', 'LOGIN']).default('PLAIN'),
    })
    .strict()
    .refine((a) => (a.password === undefined) !== (a.passwordFile === undefined), {
      message: 'give exactly one of password or passwordFile',
    });

  const listener = z
    .object({
      name: z.string().regex(LISTENER_NAME, 'expected a short lower-case label such as "submission" (it becomes a metric label)'),
      address: bindAddress,
      tls: z.enum(['starttls', 'implicit', 'none']).default('starttls'),
      requireTls: z.boolean().default(true),
      requireAuth: z.boolean().default(true),
      /** Clients in these networks may send without AUTH (internal apps, printers). */
      trusted: z
        .object({
          networks: z.array(cidr).min(1),
          /** Trusted clients must still use TLS; defaults to the listener's requireTls. */
          requireTls: z.boolean().optional(),
        })
        .strict()
        .optional(),
      /**
       * How long a client waits for the 220 greeting; one that talks first gets 421 (an early
       * talker, usually a spam bot). Clients in `trusted.networks` are greeted at once.
       */
      greetingDelay: duration
        .superRefine((ms, ctx) => {
          if (ms > MAX_GREETING_DELAY_MS) ctx.addIssue({ code: 'custom', message: `expected at most 30s, found ${ms / 1000}s (a bare number counts seconds: write 100ms, not 100)` });
        })
        .default(100),
      /** Behind HAProxy or a load balancer: take the client address from a PROXY v1/v2 header. */
      proxyProtocol: z
        .object({
          /** Only these peers may (and must) send the header; any other peer is disconnected. */
          trusted: z.array(cidr).min(1),
          timeout: duration.default(5_000),
        })
        .strict()
        .optional(),
      /** Ask for client certificates; a verified one can authenticate the session. */
      clientCerts: z
        .object({
          ca: filePath,
          required: z.boolean().default(false),
          /** Certificate → user: by SHA-256 fingerprint ("AB:CD:…") or subject common name. */
          users: z
            .array(
              z
                .object({ fingerprint: z.string().regex(/^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$/, 'expected a SHA-256 fingerprint like AB:CD:…(32 pairs)').optional(), subjectCN: z.string().min(1).optional(), user: z.string().min(1) })
                .strict()
                .refine((m) => (m.fingerprint === undefined) !== (m.subjectCN === undefined), { message: 'give exactly one of fingerprint or subjectCN' }),
            )
            .default([]),
        })
        .strict()
        .optional(),
    })
    .strict();

  const tls = z
    .object({
      cert: filePath,
      key: filePath,
      minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
      ciphers: z.string().min(1).default(DEFAULT_TLS12_CIPHERS),
      /** Extra certificates picked by SNI; an unknown name gets the default pair above. */
      sni: z
        .array(
          z
            .object({
              names: z.array(z.string().regex(HOST_NAME, 'expected a host name such as mail.example.com or *.example.com')).min(1),
              cert: filePath,
              key: filePath,
            })
            .strict(),
        )
        .default([]),
      /** How often the certificate files are checked for changes (ACME renewals). */
      reloadInterval: duration.default(5_000),
    })
    .strict();

  const auth = authSection(baseDir);
  const backendAuth = backendAuthSection(baseDir);

  const backend = z
    .object({
      /** One server, or a list tried according to `strategy`. */
      address: z.union([hostPort, z.array(hostPort).min(1, 'expected at least one backend address')]).transform((a) => (Array.isArray(a) ? a : [a])),
      strategy: z.enum(['failover', 'round-robin']).default('failover'),
      /** How long a backend that refused or timed out is skipped. */
      markDownFor: duration.default(30_000),
      /** How often each backend is probed (connect, EHLO, QUIT) for /readyz and smtpgate_backend_up. */
      healthCheckInterval: duration.default(15_000),
      /**
       * Whether /readyz fails while no backend answered a recent health check. `false` where
       * every instance shares the backend (Kubernetes, a load balancer): an outage would make
       * them all unready at once, which refuses every connection (instead of 451 4.4.1) and
       * stalls a rolling update that waits for a new pod to be ready.
       */
      requiredForReadiness: z.boolean().default(true),
      tls: z.enum(['none', 'starttls', 'implicit']).default('none'),
      tlsVerify: z.boolean().default(true),
      ca: filePath.optional(),
      servername: z.string().optional(),
      identity: z.enum(['xclient', 'xforward', 'none']).default('xclient'),
      /**
       * A backend whose health-check EHLO doesn't advertise the `identity` command makes /readyz
       * 503; false: only the warning and smtpgate_backend_identity_advertised.
       */
      requireIdentity: z.boolean().default(true),
      heloName: z.string().regex(/^[A-Za-z0-9.-]+$/, 'expected a host name').optional(),
      /** How smtpgate itself signs in to a backend that demands AUTH: a password, or OAuth2 (backend-auth-section.ts). */
      auth: backendAuth.optional(),
      timeouts: z
        .object({
          connect: duration.default(10_000),
          greeting: duration.default(30_000),
          command: duration.default(60_000),
          dataIdle: duration.default(60_000),
          finalReply: duration.default(300_000),
        })
        .strict()
        .default({ connect: 10_000, greeting: 30_000, command: 60_000, dataIdle: 60_000, finalReply: 300_000 }),
    })
    .strict();

  const data = z
    .object({
      /** What to do with a bare CR, bare LF or NUL in a message (SMTP smuggling). */
      bareLineEndings: z.enum(['reject', 'normalize']).default('reject'),
      /**
       * full: the Received: header names the client (EHLO, address); private: smtpgate's hop
       * only (relay/received-header.ts); off: none. true and false, from configs written before
       * private existed, mean full and off.
       */
      receivedHeader: z
        .union([z.boolean(), z.enum(['full', 'private', 'off'])])
        .transform((v) => (v === true ? ('full' as const) : v === false ? ('off' as const) : v))
        .default('full'),
      /** Add "X-Authenticated-User: <login>" for the backend's filters. */
      authenticatedUserHeader: z.boolean().default(false),
      /**
       * Header fields removed from the client's top-level header block (relay/header-stripper.ts),
       * e.g. X-Originating-IP; names are matched without regard to case.
       */
      stripHeaders: z.array(strippableHeader).default([]),
    })
    .strict();


  /**
   * Suspension notices (src/notifications/): mail smtpgate writes itself, to the suspended user
   * and the admins, through nodemailer's SMTP transport straight to the backend (or `relay`),
   * never through smtpgate's own listeners.
   */
  const notifications = z
    .object({
      from: mailbox,
      admins: z.array(mailbox).default([]),
      /** Also tell the user, at their own address (see notifications/recipients.ts). */
      notifyUser: z.boolean().default(true),
      /** The notice's text: a Subject: line, a blank line, the body, with {{placeholders}}. */
      template: filePath,
      /** Where the notices go instead of the backend (default: backend.address, tls, auth). */
      relay: z
        .object({
          address: hostPort,
          tls: z.enum(['none', 'starttls', 'implicit']).default('none'),
          tlsVerify: z.boolean().default(true),
          ca: filePath.optional(),
          servername: z.string().optional(),
          auth: smtpAuth.optional(),
        })
        .strict()
        .optional(),
      /** Attempts after the first that failed, each after twice the delay of the one before. */
      retries: z.number().int().min(0).max(10).default(3),
      retryDelay: duration.default(60_000),
    })
    .strict()
    .refine((n) => n.notifyUser || n.admins.length > 0, { message: 'nobody would be notified: list addresses in admins, or set notifyUser: true', path: ['admins'] });

  const demo = z
    .object({
      /** Generate a self-signed certificate at tls.cert/tls.key when they don't exist. */
      generateCertificate: z.boolean().default(false),
      /** Start the embedded capture backend: it writes every message it receives to `dir`. */
      captureBackend: z.object({ address: hostPort, dir: filePath }).strict().optional(),
    })
    .strict();

  return z
    .object({
      hostname: z
        .string()
        .regex(/^[A-Za-z0-9.-]+$/, 'expected a host name such as mail.example.com')
        .default(os.hostname()),
      listeners: z.array(listener).min(1, 'expected at least one listener'),
      tls: tls.optional(),
      auth: auth.optional(),
      backend,
      /** Folder of policy rule files (docs/policies.md); without it, only relay protection applies. */
      policies: filePath.optional(),
      data: data.default({ bareLineEndings: 'reject', receivedHeader: 'full', authenticatedUserHeader: false, stripHeaders: [] }),
      /** DKIM-sign mail for these From: domains (README "DKIM signing"); off without it. */
      dkim: dkimSection(baseDir).optional(),
      limits: limitsSection.transform((l) => resolveStorePaths(l, baseDir)),
      notifications: notifications.optional(),
      metrics: z
        .object({
          address: bindAddress,
          /**
           * A file holding a bearer token for the admin routes (/limits, /limits/clear). Without
           * it they answer anyone who reaches the address: keep it on loopback then.
           */
          adminTokenFile: filePath.optional(),
        })
        .strict()
        .default({ address: { host: '127.0.0.1', port: 9464 } }),
      log: logSection(baseDir),
      /** Processes serving connections: one per core with "auto" (node cluster). */
      workers: z.union([z.literal('auto'), z.number().int().min(1).max(256)]).default(1),
      /** How long and how badly a client may behave (slow, silent or broken clients). */
      client: z
        .object({
          timeouts: z
            .object({
              /** Idle time allowed between commands (RFC 5321 §4.5.3.2: at least 5 minutes). */
              command: duration.default(300_000),
              /**
               * One command line, from its first byte to its CRLF, however steadily it trickles
               * in (each byte resets the idle timer). Postfix: smtpd_per_record_deadline.
               */
              commandLine: duration.default(300_000),
              /** A STARTTLS handshake must finish within this. */
              tlsHandshake: duration.default(30_000),
              /** The whole DATA phase, from 354 to the final dot. */
              data: duration.default(600_000),
              /** The whole session, however busy. */
              session: duration.default(3_600_000),
            })
            .strict()
            .default({ command: 300_000, commandLine: 300_000, tlsHandshake: 30_000, data: 600_000, session: 3_600_000 }),
          /** Bytes per second a command line must arrive at once it has taken minCommandRateGrace; 0 turns it off. */
          minCommandRate: z.number().int().min(0).default(10),
          /** How long a command line may take before minCommandRate applies. */
          minCommandRateGrace: duration.default(10_000),
          /** Bytes per second a client must keep up during DATA (after the grace); 0 turns it off. Like Postfix's smtpd_min_data_rate. */
          minDataRate: z.number().int().min(0).default(500),
          /** How long a DATA phase runs before minDataRate is enforced. */
          minDataRateGrace: duration.default(10_000),
          /** Syntax and sequence errors a session may make before it gets 421 and is closed. */
          maxProtocolErrors: z.number().int().min(1).max(1000).default(10),
        })
        .strict()
        .default({
          timeouts: { command: 300_000, commandLine: 300_000, tlsHandshake: 30_000, data: 600_000, session: 3_600_000 },
          minCommandRate: 10,
          minCommandRateGrace: 10_000,
          minDataRate: 500,
          minDataRateGrace: 10_000,
          maxProtocolErrors: 10,
        }),
      shutdown: z
        .object({
          /** On SIGTERM, how long mail transactions under way may take to finish. */
          drainSeconds: z.number().int().min(0).max(3600).default(30),
        })
        .strict()
        .default({ drainSeconds: 30 }),
      demo: demo.optional(),
      /**
       * A listener with requireAuth: false while relay protection is not enforced is an open
       * relay; check and run refuse it unless this is true (only for a backend that refuses
       * relaying itself, as Postfix's reject_unauth_destination does). See policy/open-relay.ts.
       */
      iUnderstandThisIsAnOpenRelay: z.boolean().optional(),
    })
    .strict()
    .superRefine((cfg, ctx) => {
      if (resolveWorkers(cfg.workers) > 1 && cfg.limits.store.kind === 'memory') {
        ctx.addIssue({
          code: 'custom',
          path: ['workers'],
          message: `${cfg.workers} workers need limits.store.kind: redis: the memory store counts per process, so every limit would silently multiply by the number of workers`,
        });
      }
      if (!cfg.metrics.adminTokenFile && !isLoopbackHost(cfg.metrics.address.host)) {
        const a = cfg.metrics.address;
        ctx.addIssue({
          code: 'custom',
          path: ['metrics', 'adminTokenFile'],
          message: `metrics.address ${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port} is not loopback, so the admin routes (/limits, /limits/clear, which lift lockouts) need a token: write one (e.g. openssl rand -hex 32 > /etc/smtpgate/admin-token) and set metrics.adminTokenFile to that file, or bind metrics.address to 127.0.0.1`,
        });
      }
      const binds: Bind[] = [
        ...cfg.listeners.map((l, i) => ({ label: `listener ${JSON.stringify(l.name)}`, segments: ['listeners', i, 'address'], ...l.address })),
        { label: 'metrics.address', segments: ['metrics', 'address'], ...cfg.metrics.address },
        ...(cfg.demo?.captureBackend ? [{ label: 'demo.captureBackend.address', segments: ['demo', 'captureBackend', 'address'], ...cfg.demo.captureBackend.address }] : []),
      ];
      for (const c of findBindConflicts(binds)) {
        ctx.addIssue({
          code: 'custom',
          path: [...c.bind.segments],
          message: `${describeBind(c.bind)} and ${describeBind(c.other)} cannot both bind port ${c.bind.port}: ${c.why}. Use another port, or one address for both`,
        });
      }
      const relay = cfg.notifications?.relay?.address;
      const loop = relay && cfg.listeners.find((l) => l.address.port === relay.port && (l.address.host === relay.host || ['0.0.0.0', '::'].includes(l.address.host)));
      if (loop) {
        ctx.addIssue({
          code: 'custom',
          path: ['notifications', 'relay', 'address'],
          message: `${relay.host}:${relay.port} is smtpgate's own listener ${JSON.stringify(loop.name)}: notices would come back through the limits that suspended the account. Name the backend or another relay, or leave relay out (notices then go to the backend)`,
        });
      }
      const names = new Set<string>();
      cfg.listeners.forEach((l, i) => {
        if (names.has(l.name)) {
          ctx.addIssue({ code: 'custom', path: ['listeners', i, 'name'], message: `duplicate listener name ${JSON.stringify(l.name)}; names must be unique` });
        }
        names.add(l.name);
        if (l.tls === 'none' && l.requireTls) {
          ctx.addIssue({
            code: 'custom',
            path: ['listeners', i, 'requireTls'],
            message: 'a "tls: none" listener cannot require TLS; set requireTls: false, or use tls: starttls',
          });
        }
        if (l.tls !== 'none' && !cfg.tls) {
          ctx.addIssue({
            code: 'custom',
            path: ['tls'],
            message: `listener ${JSON.stringify(l.name)} uses tls: ${l.tls}, so tls.cert and tls.key are required (smtpgate never falls back to a built-in certificate)`,
          });
        }
        if (l.requireAuth && !cfg.auth) {
          ctx.addIssue({
            code: 'custom',
            path: ['auth'],
            message: `listener ${JSON.stringify(l.name)} has requireAuth: true, so an auth section (auth.users) is required`,
          });
        }
      });
      if (cfg.backend.auth?.mechanism === 'XOAUTH2' && cfg.notifications && !cfg.notifications.relay) {
        ctx.addIssue({ code: 'custom', path: ['notifications', 'relay'], message: 'backend.auth signs in with XOAUTH2, which suspension notices can\'t: give notifications.relay (a relay that takes them with a password or from smtpgate\'s address)' });
      }
      // One backend session holds one login: smtpgate's own would come first, and the client's
      // passthrough AUTH after it gets 503 (already authenticated), whatever the mechanism.
      if (cfg.backend.auth && cfg.auth?.backend.includes('backend')) {
        ctx.addIssue({ code: 'custom', path: ['backend', 'auth', 'mechanism'], message: `auth.backend lists backend (passthrough), which signs each session in to the backend with the client's own password: smtpgate can't also sign in there with its own backend.auth (${cfg.backend.auth.mechanism}); the backend would refuse the second AUTH. Check passwords at smtpgate (file, ldap, dovecot, http), or remove backend.auth` });
      }
      cfg.backend.auth?.mailboxes.forEach((r, i) => {
        if (r.listener !== undefined && !names.has(r.listener)) {
          ctx.addIssue({ code: 'custom', path: ['backend', 'auth', 'mailboxes', i, 'listener'], message: `no listener is named ${JSON.stringify(r.listener)}; expected one of ${[...names].join(', ')}` });
        }
      });
    });
}

/** "auto" is one worker per core. */
export function resolveWorkers(workers: 'auto' | number): number {
  return workers === 'auto' ? os.availableParallelism() : workers;
}

export type Config = z.output<ReturnType<typeof configSchema>>;
export type ListenerConfig = Config['listeners'][number];
export type BackendConfig = Config['backend'];
export type TlsConfig = NonNullable<Config['tls']>;
export type NotificationsConfig = NonNullable<Config['notifications']>;
