/**
 * The `limits:` config section: defaults an admin would expect, and mistakes reported with the
 * path and what was found.
 */
import { describe, expect, test } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { defaultLimitsConfig, limitsConfigSchema, limitsSection } from '../../src/limits/config.js';

function limits(yaml: string) {
  return limitsConfigSchema.parse(parseYaml(yaml) ?? {});
}

function problems(yaml: string): string[] {
  const r = limitsConfigSchema.safeParse(parseYaml(yaml) ?? {});
  if (r.success) throw new Error('expected the section to be refused');
  return r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
}

describe('limits defaults', () => {
  test('an absent section means every default', () => {
    expect(limitsSection.parse(undefined)).toEqual(defaultLimitsConfig());
  });

  test('AUTH lockout is on, message quotas are off, recipients per message is 100', () => {
    const d = defaultLimitsConfig();
    expect(d.maxMessageBytes).toBe(25_000_000);
    expect(d.store).toMatchObject({ kind: 'memory', keyPrefix: 'smtpgate', commandTimeout: 300, tls: false });
    expect(d.onStoreFailure).toBe('memory');
    expect(d.ipv6Prefix).toBe(64);
    expect(d.connectionRate).toEqual({ amount: 60, windowMs: 60_000 });
    expect(d.concurrentPerIp).toBe(20);
    expect(d.concurrentPerListener).toBe(1000);
    expect(d.auth).toEqual({
      failuresPerUserIp: { amount: 5, windowMs: 900_000 },
      failuresPerIp: { amount: 20, windowMs: 900_000 },
      lockFor: 900_000,
      refusalsBeforeDisconnect: 3,
    });
    expect([d.messagesPerUser, d.messagesPerSender, d.messagesPerIp, d.recipientsPerUser, d.bytesPerUser]).toEqual([null, null, null, null, null]);
    expect(d.recipientsPerMessage).toBe(100);
    expect(d.brake).toEqual({ quotaHits: 3, window: 3_600_000, suspendFor: null });
    expect(d.overrides).toEqual([]);
  });

  test('the old section (only maxMessageBytes) still parses', () => {
    expect(limits('maxMessageBytes: 10MB').maxMessageBytes).toBe(10_000_000);
  });
});

describe('limits values', () => {
  test('rates, sizes and "off" are read in human units', () => {
    const c = limits(`
messagesPerUser: 100/1h
messagesPerSender: 50/1h
recipientsPerUser: 1000/1d
bytesPerUser: 500MB/1d
connectionRate: off
concurrentPerIp: off
auth:
  failuresPerUserIp: 3/10m
  lockFor: 1h
brake:
  quotaHits: 2
  window: 6h
  suspendFor: 24h
`);
    expect(c.messagesPerUser).toEqual({ amount: 100, windowMs: 3_600_000 });
    expect(c.bytesPerUser).toEqual({ amount: 500_000_000, windowMs: 86_400_000 });
    expect(c.connectionRate).toBeNull();
    expect(c.concurrentPerIp).toBeNull();
    expect(c.auth.failuresPerUserIp).toEqual({ amount: 3, windowMs: 600_000 });
    expect(c.auth.failuresPerIp).toEqual({ amount: 20, windowMs: 900_000 });
    expect(c.auth.lockFor).toBe(3_600_000);
    expect(c.brake).toEqual({ quotaHits: 2, window: 21_600_000, suspendFor: 86_400_000 });
  });

  test('YAML 1.1 booleans and empty values also mean off', () => {
    const c = limits('messagesPerIp: false\nrecipientsPerMessage:\nbrake: { quotaHits: off }');
    expect(c.messagesPerIp).toBeNull();
    expect(c.recipientsPerMessage).toBeNull();
    expect(c.brake.quotaHits).toBeNull();
  });

  test('a bad rate names its path, the expected shape and what was found', () => {
    expect(problems('messagesPerUser: 100 per hour')).toEqual([
      'messagesPerUser: expected a rate such as "100/1h" or "5/15m", found "100 per hour"; write "off" to disable this limit',
    ]);
    expect(problems('auth: { lockFor: 500ms }')[0]).toMatch(/^auth\.lockFor: expected a duration of whole seconds/);
    expect(problems('recipientsPerMessage: 0')[0]).toMatch(/^recipientsPerMessage: expected a whole number of at least 1, or "off", found 0/);
    expect(problems('messagesPerUsr: 1/1h')[0]).toMatch(/messagesPerUsr/);
  });
});

describe('limits.store', () => {
  test('redis by URL, by Sentinel or by Cluster', () => {
    expect(limits('store: { kind: redis, url: "redis://10.0.0.7:6379/2" }').store).toMatchObject({ kind: 'redis', url: 'redis://10.0.0.7:6379/2' });
    expect(limits('store: { kind: redis, sentinels: ["10.0.0.1:26379", "10.0.0.2:26379"], name: mymaster }').store).toMatchObject({
      sentinels: [
        { host: '10.0.0.1', port: 26379 },
        { host: '10.0.0.2', port: 26379 },
      ],
      name: 'mymaster',
    });
    expect(limits('store: { kind: redis, cluster: ["10.0.0.1:7000"] }').store.cluster).toEqual([{ host: '10.0.0.1', port: 7000 }]);
  });

  test('redis needs exactly one way to reach it; sentinels need a name', () => {
    expect(problems('store: { kind: redis }')).toEqual(['store.kind: kind: redis needs exactly one of url, sentinels (with name) or cluster']);
    expect(problems('store: { kind: redis, url: "redis://a:1", cluster: ["b:2"] }')).toHaveLength(1);
    expect(problems('store: { kind: redis, sentinels: ["a:1"] }')).toEqual(['store.name: sentinels need the master group name, e.g. name: mymaster']);
    expect(problems('store: { kind: redis, url: "http://a:1" }')[0]).toMatch(/redis:\/\/ or rediss:\/\//);
  });

  test('redis settings on a memory store are a mistake, not silently ignored', () => {
    expect(problems('store: { url: "redis://a:1" }')).toEqual(['store.url: url only applies to kind: redis']);
  });

  test('the Redis password may come from a file, and is given once', () => {
    expect(limits('store: { kind: redis, url: "redis://10.0.0.7:6379", passwordFile: /run/secrets/redis }').store.passwordFile).toBe('/run/secrets/redis');
    expect(problems('store: { kind: redis, url: "redis://a:1", password: x, passwordFile: /p }')).toEqual([
      'store.passwordFile: give the Redis password once: password or passwordFile, not both',
    ]);
    for (const url of ['redis://:x@a:1', 'redis://user:x@a:1', 'rediss://:x@a:1/2']) {
      expect(problems(`store: { kind: redis, url: "${url}", passwordFile: /p }`), url).toEqual([
        'store.passwordFile: the url already carries a password: remove it from the url (redis://host:port) or drop passwordFile',
      ]);
    }
    expect(limits('store: { kind: redis, url: "redis://user@a:1", passwordFile: /p }').store.passwordFile).toBe('/p');
    expect(problems('store: { passwordFile: /p }')).toEqual(['store.passwordFile: passwordFile only applies to kind: redis']);
  });

  test('the sentinels\' password may come from a file too, given once, and only with sentinels', () => {
    expect(limits('store: { kind: redis, sentinels: ["a:1"], name: m, sentinelPasswordFile: /s }').store.sentinelPasswordFile).toBe('/s');
    expect(problems('store: { kind: redis, sentinels: ["a:1"], name: m, sentinelPassword: x, sentinelPasswordFile: /s }')).toEqual([
      "store.sentinelPasswordFile: give the sentinels' password once: sentinelPassword or sentinelPasswordFile, not both",
    ]);
    for (const k of ['sentinelPassword: x', 'sentinelPasswordFile: /s']) {
      expect(problems(`store: { kind: redis, url: "redis://a:1", ${k} }`), k).toEqual([`store.${k.split(':')[0]}: ${k.split(':')[0]} only applies together with sentinels`]);
    }
  });

  test('a command timeout that could stall a session for a second is refused', () => {
    expect(problems('store: { kind: redis, url: "redis://a:1", commandTimeout: 2s }')[0]).toMatch(/at most 800ms/);
  });
});

describe('limits.overrides', () => {
  test('an override selects by users, groups or CIDRs and changes only what it sets', () => {
    const c = limits(`
messagesPerUser: 100/1h
overrides:
  - name: payroll
    users: [payroll@example.com]
    cidrs: [192.0.2.0/24, "2001:db8::/32"]
    messagesPerUser: 5000/1d
    connectionRate: off
`);
    const o = c.overrides[0]!;
    expect(o.name).toBe('payroll');
    expect(o.cidrs?.map((x) => x.text)).toEqual(['192.0.2.0/24', '2001:db8::/32']);
    expect(o.messagesPerUser).toEqual({ amount: 5000, windowMs: 86_400_000 });
    expect(o.connectionRate).toBeNull();
    expect(o.recipientsPerUser).toBeUndefined();
  });

  test('an override must say whom it applies to', () => {
    expect(problems('overrides: [{ messagesPerUser: 1/1h }]')).toEqual(['overrides.0: an override needs at least one of users, groups or cidrs to say whom it applies to']);
  });

  test('connection limits are decided before AUTH, so only CIDRs can override them', () => {
    expect(problems('overrides: [{ users: [a], concurrentPerIp: 50 }]')).toEqual([
      'overrides.0.concurrentPerIp: concurrentPerIp is decided at connect time, before AUTH, so it can only be overridden by cidrs',
    ]);
  });

  test('a bad CIDR is named', () => {
    expect(problems('overrides: [{ cidrs: ["10.0.0.0/33"], messagesPerIp: 1/1h }]')[0]).toMatch(/^overrides\.0\.cidrs\.0: expected an address or network/);
  });
});
