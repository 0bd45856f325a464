/**
 * The shortcuts Limits takes on the per-message path must not change a decision:
 *
 * - quotas are resolved once per config (and per session and client), so a reload, an AUTH or
 *   a change of groups must still take effect at the next check;
 * - MAIL and RCPT skip the store when there is nothing to count, and must still count (and
 *   refuse at exactly N+1) when there is;
 * - decisions are counted between scrapes and reach the counter when it is read.
 */
import { afterEach, describe, expect, test } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import type { Refusal } from '../../src/reply.js';
import { Limits, type ClientFacts } from '../../src/limits/limits.js';
import { limitsConfigSchema, type LimitsConfig } from '../../src/limits/config.js';
import { parseIp } from '../../src/limits/keys.js';
import { LimiterStore, type StoreBackend } from '../../src/limits/limiter-store.js';
import { createLimitMetrics } from '../../src/limits/metrics.js';
import { QuotaResolver, resolveQuotas, type Who } from '../../src/limits/quotas.js';
import { LIMITER_NAMES } from '../../src/limits/replies.js';
import { limitsHarness, type LimitsHarness } from '../helpers/redis.js';

let h: LimitsHarness | undefined;
let sessions = 0;

afterEach(async () => {
  await h?.close();
  h = undefined;
});

function setup(yaml: string): LimitsHarness {
  h = limitsHarness(yaml);
  return h;
}

function config(yaml: string): LimitsConfig {
  return limitsConfigSchema.parse(parseYaml(yaml) ?? {});
}

function client(ip: string, extra: Partial<ClientFacts> = {}): ClientFacts {
  return { session: `f${++sessions}`, ip, listener: 'submission', ...extra };
}

function code(r: Refusal | undefined): string | undefined {
  return r && `${r.code} ${r.enhanced}`;
}

/** MAILs allowed in a row on this connection before the first refusal (at most 20). */
async function allowedMessages(limits: Limits, facts: ClientFacts, sender = 'x@example.com'): Promise<number> {
  let n = 0;
  while (n < 20 && (await limits.mailFrom({ ...facts, sender })) === undefined) n++;
  return n;
}

const QUIET = 'connectionRate: off\nconcurrentPerIp: off\nconcurrentPerListener: off\n';

describe('resolved quotas follow the config and the client', () => {
  test('an override added by reconfigure() applies at the next MAIL of a connection already open, and goes with the next reload', async () => {
    // Three quota hits would suspend alice: the brake is not what this is about.
    const BASE = `${QUIET}brake: { quotaHits: off }\n`;
    const { limits } = setup(`${BASE}messagesPerUser: 2/1h`);
    const alice = client('192.0.2.1', { user: 'alice' });
    expect(await limits.connectionOpened(alice)).toBeUndefined();
    expect(await allowedMessages(limits, alice)).toBe(2);

    limits.reconfigure(config(`${BASE}messagesPerUser: 2/1h\noverrides:\n  - users: [Alice]\n    messagesPerUser: 5/1h\n`));
    // Her count stays (2 sent and the refused third): 2 more of the override's 5; bob keeps the default.
    expect(await allowedMessages(limits, alice)).toBe(2);
    expect(await allowedMessages(limits, client('192.0.2.1', { user: 'bob' }))).toBe(2);

    limits.reconfigure(config(`${BASE}messagesPerUser: 2/1h\noverrides:\n  - users: [alice]\n    messagesPerUser: 8/1h\n`));
    expect(await allowedMessages(limits, alice)).toBe(2);

    limits.reconfigure(config(`${BASE}messagesPerUser: 2/1h`));
    // Back on the default, which her count is far past.
    expect(code(await limits.mailFrom({ ...alice, sender: 'x@example.com' }))).toBe('451 4.7.1');
  });

  test('a CIDR override added by reconfigure() applies to a connection already open; one removed stops applying', async () => {
    const { limits } = setup(`${QUIET}messagesPerIp: 1/1h`);
    const relay = client('198.51.100.7');
    expect(await limits.connectionOpened(relay)).toBeUndefined();
    expect(await allowedMessages(limits, relay)).toBe(1);
    limits.reconfigure(config(`${QUIET}messagesPerIp: 1/1h\noverrides:\n  - cidrs: [198.51.100.0/24]\n    messagesPerIp: 4/1h\n`));
    // The count stays (1 sent, 1 refused): 2 more of the override's 4.
    expect(await allowedMessages(limits, relay)).toBe(2);
    limits.reconfigure(config(`${QUIET}messagesPerIp: 1/1h`));
    expect(await allowedMessages(limits, relay)).toBe(0);
  });

  test('within one connection, the quota follows the user after AUTH and the groups after an attributes reload', async () => {
    const { limits } = setup(`${QUIET}messagesPerUser: 1/1h\noverrides:\n  - users: [payroll]\n    messagesPerUser: 4/1h\n  - groups: [bulk]\n    messagesPerUser: 3/1h\n`);
    const conn = client('192.0.2.1');
    expect(await limits.connectionOpened(conn)).toBeUndefined();
    expect(await limits.mailFrom({ ...conn, sender: 'x@example.com' })).toBeUndefined();
    expect(await allowedMessages(limits, { ...conn, user: 'payroll' })).toBe(4);
    expect(await allowedMessages(limits, { ...conn, user: 'erin' })).toBe(1);
    expect(await allowedMessages(limits, { ...conn, user: 'carol', groups: [] })).toBe(1);
    expect(await allowedMessages(limits, { ...conn, user: 'dave', groups: ['staff'] })).toBe(1);
    // Same user, same session: the groups changed (a new array with other contents). Dave's
    // count stays (1 sent, 1 refused), so 1 more of the group's 3.
    expect(await allowedMessages(limits, { ...conn, user: 'dave', groups: ['bulk'] })).toBe(1);
  });

  test('a connection-time override is decided by the address only, also for a client that says who it is', async () => {
    const { limits } = setup(`connectionRate: off\nconcurrentPerIp: 1\noverrides:\n  - users: [alice]\n    cidrs: [203.0.113.0/24]\n    concurrentPerIp: 3\n`);
    const open = (ip: string) => limits.connectionOpened(client(ip, { user: 'alice' }));
    expect([await open('192.0.2.1'), await open('192.0.2.1')].map(code)).toEqual([undefined, '421 4.7.0']);
    expect([await open('203.0.113.1'), await open('203.0.113.1'), await open('203.0.113.1'), await open('203.0.113.1')].map(code)).toEqual([
      undefined,
      undefined,
      undefined,
      '421 4.7.0',
    ]);
  });
});

describe('QuotaResolver', () => {
  const OVERRIDES = config(`messagesPerUser: 2/1h
recipientsPerMessage: 50
overrides:
  - name: payroll
    users: [Payroll]
    messagesPerUser: 5/1h
  - name: bulk
    groups: [Bulk]
    recipientsPerMessage: 500
  - name: office
    cidrs: [198.51.100.0/24]
    messagesPerUser: 3/1h
    concurrentPerIp: 1
`);
  const WHO: Who[] = [
    {},
    { user: 'payroll' },
    { user: 'PAYROLL', groups: ['bulk'] },
    { user: 'erin', groups: [] },
    { user: 'erin', groups: ['staff', 'BULK'] },
    { groups: ['bulk'] },
    { ip: parseIp('198.51.100.9') },
    { ip: parseIp('192.0.2.1') },
    { user: 'payroll', ip: parseIp('198.51.100.9') },
    { ip: parseIp('::ffff:198.51.100.200'), groups: ['bulk'] },
  ];

  test('answers what resolveQuotas answers, for every kind of selector and client', () => {
    for (const cfg of [OVERRIDES, config(''), config('overrides:\n  - users: [a]\n    messagesPerUser: 1/1m\n')]) {
      const resolver = new QuotaResolver(cfg);
      WHO.forEach((who, i) => expect(resolver.resolve(who), `WHO[${i}], ${cfg.overrides.length} overrides`).toEqual(resolveQuotas(cfg, who).quotas));
    }
  });

  test('a client no override can select gets the one defaults object: no overrides, or user overrides and no user', () => {
    const none = new QuotaResolver(config('messagesPerIp: 7/1h'));
    expect(none.resolve({ user: 'x', groups: ['g'], ip: parseIp('192.0.2.1') })).toBe(none.defaults);
    expect(none.defaults.messagesPerIp).toEqual({ amount: 7, windowMs: 3_600_000 });
    const byUser = new QuotaResolver(config('overrides:\n  - users: [a]\n    messagesPerUser: 1/1m\n'));
    expect(byUser.resolve({ ip: parseIp('192.0.2.1'), groups: ['g'] })).toBe(byUser.defaults);
    expect(byUser.resolve({ user: 'A' }).messagesPerUser).toEqual({ amount: 1, windowMs: 60_000 });
    expect(Object.isFrozen(byUser.defaults)).toBe(true);
  });
});

describe('nothing to count, and something to count', () => {
  test('a client without AUTH and no message quotas is never counted: no decision besides recipients per message', async () => {
    const { limits, registry } = setup(QUIET);
    const relay = client('127.0.0.1');
    expect(await limits.connectionOpened(relay)).toBeUndefined();
    for (let i = 0; i < 50; i++) {
      expect(await limits.mailFrom({ ...relay, sender: 'foo@source.test', size: 4096 })).toBeUndefined();
      expect(await limits.rcptTo({ ...relay, recipientsSoFar: 0 })).toBeUndefined();
      await limits.messageBytes(relay, 4096);
    }
    const counted = (await registry.getSingleMetric('smtpgate_limiter_decisions_total')!.get()).values.filter((v) => v.value > 0);
    expect(counted).toEqual([{ labels: { limiter: 'recipients_message', result: 'allowed' }, value: 50 }]);
  });

  test('with no connection limit a connection is admitted synchronously, and still registered for the AUTH lockout’s disconnect count', async () => {
    const { limits } = setup(QUIET);
    const relay = client('127.0.0.1');
    const admitted = limits.connectionOpened(relay);
    expect(admitted).toBeUndefined();
    expect(limits.openSessions).toBe(1);
    limits.connectionClosed(relay);
    expect(limits.openSessions).toBe(0);
  });

  test('the connection counters answer synchronously too, a refusal included; only a connection rate waits for the store', async () => {
    const counters = setup('connectionRate: off\nconcurrentPerIp: 1\nconcurrentPerListener: off\n').limits;
    expect(counters.connectionOpened(client('192.0.2.1'))).toBeUndefined();
    expect(code(counters.connectionOpened(client('192.0.2.1')) as Refusal | undefined)).toBe('421 4.7.0');
    await h!.close();
    const rated = setup('connectionRate: 1/1m\nconcurrentPerIp: off\nconcurrentPerListener: off\n').limits;
    const first = rated.connectionOpened(client('192.0.2.1'));
    expect(first).toBeInstanceOf(Promise);
    expect(await first).toBeUndefined();
    expect(code(await rated.connectionOpened(client('192.0.2.1')))).toBe('421 4.7.0');
  });

  test('the plan follows a reload: a connection rate switched on applies to the next connection', async () => {
    const { limits } = setup(QUIET);
    expect(limits.plan).toEqual({ connect: false, anonymousMail: false });
    limits.reconfigure(config('connectionRate: 1/1m\nconcurrentPerIp: off\nconcurrentPerListener: off\nmessagesPerIp: 5/1h\n'));
    expect(limits.plan).toEqual({ connect: true, anonymousMail: true });
    expect(await limits.connectionOpened(client('192.0.2.1'))).toBeUndefined();
    expect(code(await limits.connectionOpened(client('192.0.2.1')))).toBe('421 4.7.0');
  });

  test('without AUTH, an address quota still refuses at exactly N+1', async () => {
    const { limits } = setup(`${QUIET}messagesPerIp: 3/1h`);
    const relay = client('127.0.0.1');
    expect(await limits.connectionOpened(relay)).toBeUndefined();
    const results = [];
    for (let i = 0; i < 5; i++) results.push(code(await limits.mailFrom({ ...relay, sender: i % 2 ? '' : 'foo@source.test' })));
    expect(results).toEqual([undefined, undefined, undefined, '451 4.7.1', '451 4.7.1']);
  });

  test('without AUTH, a sender quota refuses at exactly N+1; the null sender is not counted', async () => {
    const { limits, metric } = setup(`${QUIET}messagesPerSender: 2/1h`);
    const relay = client('127.0.0.1');
    expect(await limits.connectionOpened(relay)).toBeUndefined();
    for (let i = 0; i < 5; i++) expect(await limits.mailFrom({ ...relay, sender: '' })).toBeUndefined();
    expect(await metric('smtpgate_limiter_decisions_total', { limiter: 'messages_sender', result: 'allowed' })).toBe(0);
    const results = [];
    for (let i = 0; i < 3; i++) results.push(code(await limits.mailFrom({ ...relay, sender: 'Boss@Example.com' })));
    expect(results).toEqual([undefined, undefined, '451 4.7.1']);
  });

  test('for an authenticated user without a per-user quota, the sender and address quotas still refuse at exactly N+1', async () => {
    const { limits } = setup(`${QUIET}messagesPerSender: 2/1h\nmessagesPerIp: 3/1h`);
    const mail = (ip: string, sender: string) => limits.mailFrom({ ...client(ip, { user: 'alice' }), sender });
    expect([await mail('192.0.2.1', 'a@example.com'), await mail('192.0.2.1', 'a@example.com'), await mail('192.0.2.1', 'a@example.com')].map(code)).toEqual([
      undefined,
      undefined,
      '451 4.7.1',
    ]);
    // The refused MAIL gave its address point back: one more from this address, then 451.
    expect([await mail('192.0.2.1', 'b@example.com'), await mail('192.0.2.1', 'c@example.com')].map(code)).toEqual([undefined, '451 4.7.1']);
  });

  test('an authenticated user with no quotas is still checked for a suspension at MAIL and RCPT', async () => {
    const { limits, metric } = setup(`${QUIET}messagesPerUser: 1/1m\nbrake: { quotaHits: 1, window: 1h }`);
    const alice = client('192.0.2.1', { user: 'alice' });
    expect(await limits.connectionOpened(alice)).toBeUndefined();
    expect(await limits.mailFrom({ ...alice, sender: 'a@example.com' })).toBeUndefined();
    expect(code(await limits.mailFrom({ ...alice, sender: 'a@example.com' }))).toBe('550 5.7.1'); // the hit that suspends
    // The quota is lifted; the suspension is not.
    limits.reconfigure(config(`${QUIET}recipientsPerMessage: 100`));
    expect(code(await limits.mailFrom({ ...alice, sender: 'a@example.com' }))).toBe('550 5.7.1');
    expect(code(await limits.rcptTo({ ...alice, recipientsSoFar: 0 }))).toBe('550 5.7.1');
    expect(await limits.mailFrom({ ...client('192.0.2.1', { user: 'bob' }), sender: 'b@example.com' })).toBeUndefined();
    expect(await metric('smtpgate_limiter_decisions_total', { limiter: 'suspension', result: 'limited' })).toBe(2);
  });

  test('with the store away and onStoreFailure: deny, a user with no quotas is refused 4.3.0 (the suspension is unknown); a client without AUTH is not', async () => {
    const cfg = config(`${QUIET}store: { kind: redis, url: "redis://127.0.0.1:1" }\nonStoreFailure: deny`);
    const registry = new Registry();
    const limits = new Limits({
      config: cfg,
      store: new LimiterStore({ backend: downBackend(), onFailure: 'deny', keyPrefix: 'test' }),
      metrics: createLimitMetrics(registry),
      log: pino({ level: 'silent' }),
    });
    const alice = client('192.0.2.1', { user: 'alice' });
    expect(await limits.connectionOpened(alice)).toBeUndefined();
    expect(await limits.mailFrom({ ...alice, sender: 'a@example.com' })).toMatchObject({ code: 451, enhanced: '4.3.0', reason: 'limiter_unavailable' });
    expect(await limits.rcptTo({ ...alice, recipientsSoFar: 0 })).toMatchObject({ code: 451, enhanced: '4.3.0' });
    const relay = client('127.0.0.1');
    expect(await limits.mailFrom({ ...relay, sender: 'foo@source.test' })).toBeUndefined();
    expect(await limits.rcptTo({ ...relay, recipientsSoFar: 0 })).toBeUndefined();
    const metric = (await registry.getSingleMetric('smtpgate_limiter_decisions_total')!.get()).values;
    expect(metric.find((v) => v.labels.limiter === 'suspension' && v.labels.result === 'store_error')?.value).toBe(2);
  });
});

describe('policy rule limits', () => {
  test('a rule limit allows N per bucket and refuses N+1 with the wait; each bucket and each rate counts on its own', async () => {
    const { limits, metric } = setup(QUIET);
    const hit = (bucket: string, amount = 2) => limits.policyLimit({ bucket, amount, windowMs: 3_600_000 });
    expect([await hit('rule:a|alice'), await hit('rule:a|alice')]).toEqual([{ limited: false }, { limited: false }]);
    const third = await hit('rule:a|alice');
    expect(third).toMatchObject({ limited: true });
    expect(third !== 'unavailable' && third.limited && third.msBeforeNext).toBeGreaterThan(3_590_000);
    expect(await hit('rule:a|bob')).toEqual({ limited: false });
    // A rule whose amount changed on reload keeps its count (2 allowed, 1 refused): the 4th fits 4.
    expect(await hit('rule:a|alice', 4)).toEqual({ limited: false });
    expect(await hit('rule:a|alice', 4)).toMatchObject({ limited: true });
    expect(await metric('smtpgate_limiter_decisions_total', { limiter: 'policy', result: 'allowed' })).toBe(4);
    expect(await metric('smtpgate_limiter_decisions_total', { limiter: 'policy', result: 'limited' })).toBe(2);
  });
});

describe('decision metrics', () => {
  test('every limiter × result series exists at 0 before any check', async () => {
    const registry = new Registry();
    createLimitMetrics(registry);
    const values = (await registry.getSingleMetric('smtpgate_limiter_decisions_total')!.get()).values;
    expect(values).toHaveLength(LIMITER_NAMES.length * 3);
    expect(values.every((v) => v.value === 0)).toBe(true);
  });

  test('counts reach /metrics exactly, however often it is read', async () => {
    const { limits, registry } = setup(`${QUIET}messagesPerIp: 2/1h`);
    const relay = client('192.0.2.1');
    const line = async (labels: string) => (await registry.metrics()).split('\n').find((l) => l.startsWith(`smtpgate_limiter_decisions_total{${labels}}`));
    for (let i = 0; i < 3; i++) await limits.rcptTo({ ...relay, recipientsSoFar: 0 });
    expect(await line('limiter="recipients_message",result="allowed"')).toBe('smtpgate_limiter_decisions_total{limiter="recipients_message",result="allowed"} 3');
    expect(await line('limiter="recipients_message",result="allowed"')).toBe('smtpgate_limiter_decisions_total{limiter="recipients_message",result="allowed"} 3');
    await limits.rcptTo({ ...relay, recipientsSoFar: 100 });
    for (let i = 0; i < 3; i++) await limits.mailFrom({ ...relay, sender: 'a@example.com' });
    expect(await line('limiter="recipients_message",result="allowed"')).toBe('smtpgate_limiter_decisions_total{limiter="recipients_message",result="allowed"} 3');
    expect(await line('limiter="recipients_message",result="limited"')).toBe('smtpgate_limiter_decisions_total{limiter="recipients_message",result="limited"} 1');
    expect(await line('limiter="messages_ip",result="allowed"')).toBe('smtpgate_limiter_decisions_total{limiter="messages_ip",result="allowed"} 2');
    expect(await line('limiter="messages_ip",result="limited"')).toBe('smtpgate_limiter_decisions_total{limiter="messages_ip",result="limited"} 1');
  });
});

/** A shared store that is down from the start: every operation goes to onStoreFailure. */
function downBackend(): StoreBackend {
  const fail = () => Promise.reject(new Error('the store is down'));
  return {
    kind: 'redis',
    usable: false,
    createLimiter: () => {
      throw new Error('no limiter while the store is down');
    },
    reportFailure: () => {},
    onHealthChange: () => {},
    ready: async () => false,
    expire: fail,
    giveBack: fail,
    entries: fail,
    remove: fail,
    marker: fail,
    setNote: fail,
    notes: fail,
    removeNotes: fail,
    close: async () => {},
  };
}
