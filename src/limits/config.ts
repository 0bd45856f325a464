/**
 * The `limits:` section of the config file. It replaces the old section wholesale and keeps
 * its one key, `maxMessageBytes`.
 *
 * Rates are written "100/1h"; "off" (or false, or an empty value) disables a limit. Message
 * and recipient quotas are off unless configured; the AUTH lockout, the recipients-per-message
 * cap and the connection limits are on by default.
 */
import path from 'node:path';
import { z } from 'zod';
import { parseDuration, parseHostPort, parseSize } from '../parsing/units.js';
import { parseCidr, type Cidr } from './keys.js';
import { parseRate, type Rate, type RateUnit } from './rate.js';

const OFF = new Set(['off', 'none', 'false', 'no', 'unlimited']);

function isOff(v: unknown): boolean {
  return v === null || v === false || (typeof v === 'string' && OFF.has(v.trim().toLowerCase()));
}

/** A rate, or null when the limit is off. */
function rateSchema(unit: RateUnit) {
  return z.union([z.string(), z.null(), z.literal(false)]).transform((value, ctx): Rate | null => {
    if (isOff(value)) return null;
    const parsed = parseRate(value as string, unit);
    if (!parsed.ok) {
      ctx.addIssue({ code: 'custom', message: `${parsed.message}; write "off" to disable this limit` });
      return z.NEVER;
    }
    return parsed.rate;
  });
}

const countRate = rateSchema('count');
const byteRate = rateSchema('bytes');

/** A whole number ≥ 1, or null when the limit is off. */
const countLimit = z.union([z.number(), z.string(), z.null(), z.literal(false)]).transform((value, ctx): number | null => {
  if (isOff(value)) return null;
  const n = typeof value === 'number' ? value : /^\s*\d+\s*$/.test(String(value)) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < 1) {
    ctx.addIssue({ code: 'custom', message: `expected a whole number of at least 1, or "off", found ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return n;
});

/** A duration of whole seconds (Redis expiries are in seconds). */
const seconds = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined || ms < 1000 || ms % 1000 !== 0) {
    ctx.addIssue({ code: 'custom', message: `expected a duration of whole seconds such as "15m" or "1h", found ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return ms;
});

/** A duration in milliseconds (timeouts). */
const millis = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const ms = parseDuration(value);
  if (ms === undefined || ms < 1) {
    ctx.addIssue({ code: 'custom', message: `expected a duration such as "300ms" or "1s", found ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return ms;
});

/** A size such as "25MB" or "512KiB", in bytes. */
export const size = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const bytes = parseSize(value);
  if (bytes === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected a size such as "25MB" or "512KiB", found ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return bytes;
});

const redisNode = z.string().transform((value, ctx) => {
  const hp = parseHostPort(value);
  if (!hp) {
    ctx.addIssue({ code: 'custom', message: `expected "host:port" (e.g. 10.0.0.7:26379), found ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return hp;
});

const cidr = z.string().transform((value, ctx): Cidr => {
  const c = parseCidr(value);
  if (!c) {
    ctx.addIssue({ code: 'custom', message: `expected an address or network such as "192.0.2.0/24" or "2001:db8::/48", found ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return c;
});

const KEY_PREFIX = /^[A-Za-z0-9_.-]{1,64}$/;

/** redis://user:pass@host or redis://:pass@host. */
function urlHasPassword(url: string): boolean {
  try {
    return new URL(url).password !== '';
  } catch {
    return false;
  }
}

/** The store's files that hold secrets: field name and the path, as written. */
export function storeSecretFiles(store: StoreConfig): { field: 'passwordFile' | 'sentinelPasswordFile'; file: string }[] {
  return (['passwordFile', 'sentinelPasswordFile'] as const).flatMap((field) => (store[field] !== undefined ? [{ field, file: store[field] }] : []));
}

/** The store section with its password files made absolute against the config file's folder. */
export function resolveStorePaths<T extends { store: StoreConfig }>(limits: T, baseDir: string): T {
  const files = storeSecretFiles(limits.store).filter((f) => !path.isAbsolute(f.file));
  if (files.length === 0) return limits;
  return { ...limits, store: { ...limits.store, ...Object.fromEntries(files.map((f) => [f.field, path.resolve(baseDir, f.file)])) } };
}

export const storeConfigSchema = z
  .object({
    /** memory: this process only. redis: shared by every instance (url, Sentinel or Cluster). */
    kind: z.enum(['memory', 'redis']).default('memory'),
    /** redis://[user:pass@]host:port[/db] or rediss:// for TLS. */
    url: z.string().regex(/^rediss?:\/\//, 'expected a redis:// or rediss:// URL').optional(),
    /** Sentinel: the sentinels' addresses plus the master group `name`. */
    sentinels: z.array(redisNode).min(1, 'expected at least one sentinel').optional(),
    name: z.string().min(1).optional(),
    /** Redis Cluster: seed nodes. */
    cluster: z.array(redisNode).min(1, 'expected at least one cluster node').optional(),
    username: z.string().min(1).optional(),
    password: z.string().optional(),
    /**
     * A file holding the Redis password (one line; a final newline is ignored), e.g. a
     * Kubernetes Secret or a systemd credential, so the password need not sit in the config.
     * Relative to the config file's folder. Read at start.
     */
    passwordFile: z.string().min(1).optional(),
    sentinelPassword: z.string().optional(),
    /** The sentinels' password from a file, as passwordFile. */
    sentinelPasswordFile: z.string().min(1).optional(),
    db: z.number().int().min(0).max(15).optional(),
    tls: z.boolean().default(false),
    /** Every key smtpgate writes starts with this, so one Redis can serve several deployments. */
    keyPrefix: z.string().regex(KEY_PREFIX, 'expected letters, digits, "_", "-" or "." (up to 64)').default('smtpgate'),
    /** How long one Redis command may take before the fallback answers. Keep it well under 1s. */
    commandTimeout: millis.default(300),
  })
  .strict()
  .superRefine((s, ctx) => {
    const redisKeys = (['url', 'sentinels', 'name', 'cluster', 'username', 'password', 'passwordFile', 'sentinelPassword', 'sentinelPasswordFile', 'db'] as const).filter((k) => s[k] !== undefined);
    if (s.kind === 'memory') {
      for (const k of redisKeys) ctx.addIssue({ code: 'custom', path: [k], message: `${k} only applies to kind: redis` });
      return;
    }
    const modes = [s.url !== undefined, s.sentinels !== undefined, s.cluster !== undefined].filter(Boolean).length;
    if (modes !== 1) {
      ctx.addIssue({ code: 'custom', path: ['kind'], message: 'kind: redis needs exactly one of url, sentinels (with name) or cluster' });
    }
    if (s.sentinels && !s.name) ctx.addIssue({ code: 'custom', path: ['name'], message: 'sentinels need the master group name, e.g. name: mymaster' });
    if (s.name && !s.sentinels) ctx.addIssue({ code: 'custom', path: ['name'], message: 'name only applies together with sentinels' });
    if (s.passwordFile !== undefined && s.password !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['passwordFile'], message: 'give the Redis password once: password or passwordFile, not both' });
    }
    if (s.sentinelPasswordFile !== undefined && s.sentinelPassword !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['sentinelPasswordFile'], message: 'give the sentinels\' password once: sentinelPassword or sentinelPasswordFile, not both' });
    }
    for (const k of ['sentinelPassword', 'sentinelPasswordFile'] as const) {
      if (s[k] !== undefined && !s.sentinels) ctx.addIssue({ code: 'custom', path: [k], message: `${k} only applies together with sentinels` });
    }
    if (s.passwordFile !== undefined && s.url !== undefined && urlHasPassword(s.url)) {
      ctx.addIssue({ code: 'custom', path: ['passwordFile'], message: 'the url already carries a password: remove it from the url (redis://host:port) or drop passwordFile' });
    }
    if (s.commandTimeout > 800) {
      ctx.addIssue({ code: 'custom', path: ['commandTimeout'], message: `must be at most 800ms so that no SMTP command waits a second for Redis, found ${s.commandTimeout}ms` });
    }
  });

const authLockoutSchema = z
  .object({
    /** Failed logins for one username from one client before that user is locked out there. */
    failuresPerUserIp: countRate.prefault('5/15m'),
    /** Failed logins from one client, any username, before the client is locked out. */
    failuresPerIp: countRate.prefault('20/15m'),
    /** How long a lockout lasts. */
    lockFor: seconds.prefault('15m'),
    /** AUTH attempts answered 454 during a lockout before the connection is closed with 421. */
    refusalsBeforeDisconnect: z.number().int().min(0).max(100).default(3),
  })
  .strict();

const brakeSchema = z
  .object({
    /** Quota exhaustions (per-user messages, recipients or bytes) that suspend the account; off disables the brake. */
    quotaHits: countLimit.default(3),
    /** ...within this window. */
    window: seconds.prefault('1h'),
    /** off: until an admin clears it. */
    suspendFor: z
      .union([z.string(), z.number(), z.null(), z.literal(false)])
      .transform((v, ctx): number | null => {
        if (isOff(v)) return null;
        const ms = parseDuration(v as string | number);
        if (ms === undefined || ms < 1000 || ms % 1000 !== 0) {
          ctx.addIssue({ code: 'custom', message: `expected a duration of whole seconds such as "24h", or "off" (until cleared), found ${JSON.stringify(v)}` });
          return z.NEVER;
        }
        return ms;
      })
      .default(null),
  })
  .strict();

/** The limits an override may change. Unset = inherit; "off" = lifted for whoever matches. */
const overridableShape = {
  connectionRate: countRate.optional(),
  concurrentPerIp: countLimit.optional(),
  messagesPerUser: countRate.optional(),
  messagesPerSender: countRate.optional(),
  messagesPerIp: countRate.optional(),
  recipientsPerUser: countRate.optional(),
  recipientsPerMessage: countLimit.optional(),
  bytesPerUser: byteRate.optional(),
};

export const OVERRIDABLE_KEYS = Object.keys(overridableShape) as (keyof typeof overridableShape)[];

/** Limits known when a client connects, before any AUTH: only a CIDR can select them. */
const CONNECT_KEYS = ['connectionRate', 'concurrentPerIp'] as const;

const overrideSchema = z
  .object({
    /** A label for logs. */
    name: z.string().min(1).optional(),
    users: z.array(z.string().min(1)).min(1).optional(),
    groups: z.array(z.string().min(1)).min(1).optional(),
    cidrs: z.array(cidr).min(1).optional(),
    ...overridableShape,
  })
  .strict()
  .superRefine((o, ctx) => {
    if (!o.users && !o.groups && !o.cidrs) {
      ctx.addIssue({ code: 'custom', message: 'an override needs at least one of users, groups or cidrs to say whom it applies to' });
    }
    for (const k of CONNECT_KEYS) {
      if (o[k] !== undefined && !o.cidrs) {
        ctx.addIssue({ code: 'custom', path: [k], message: `${k} is decided at connect time, before AUTH, so it can only be overridden by cidrs` });
      }
    }
  });

export const limitsConfigSchema = z
  .object({
    /** Advertised as SIZE and enforced while streaming (552 5.3.4). */
    maxMessageBytes: size.default(25_000_000),
    store: storeConfigSchema.default(() => storeConfigSchema.parse({})),
    /** While the store is unreachable: memory (per-process insurance), allow (fail open) or deny (451 4.3.0). */
    onStoreFailure: z.enum(['memory', 'allow', 'deny']).default('memory'),
    /** IPv6 clients are counted per network of this prefix length. */
    ipv6Prefix: z.number().int().min(32).max(128).default(64),
    /** New connections per client address. */
    connectionRate: countRate.prefault('60/1m'),
    /** Open connections per client address (per smtpgate process). */
    concurrentPerIp: countLimit.default(20),
    /** Open connections per listener (per smtpgate process). */
    concurrentPerListener: countLimit.default(1000),
    auth: authLockoutSchema.default(() => authLockoutSchema.parse({})),
    messagesPerUser: countRate.default(null),
    messagesPerSender: countRate.default(null),
    messagesPerIp: countRate.default(null),
    recipientsPerUser: countRate.default(null),
    recipientsPerMessage: countLimit.default(100),
    bytesPerUser: byteRate.default(null),
    brake: brakeSchema.default(() => brakeSchema.parse({})),
    /** First match wins, per key: put the most specific overrides first. */
    overrides: z.array(overrideSchema).default([]),
  })
  .strict();

/** The section as the top-level config uses it: absent means every default. */
export const limitsSection = limitsConfigSchema.default(() => limitsConfigSchema.parse({}));

export type LimitsConfig = z.output<typeof limitsConfigSchema>;
export type StoreConfig = LimitsConfig['store'];
export type LimitOverride = LimitsConfig['overrides'][number];
export type OverridableKey = (typeof OVERRIDABLE_KEYS)[number];
export type StoreFailureMode = LimitsConfig['onStoreFailure'];

/** The full default section: handy for tests and for `smtpgate check` output. */
export function defaultLimitsConfig(): LimitsConfig {
  return limitsConfigSchema.parse({});
}
