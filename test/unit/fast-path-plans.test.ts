/**
 * The plans behind the fast paths (issue 20): made once per config and policy set, they say
 * which stages can have work for which client. A plan that says "nothing" where something could
 * apply would drop a security decision, so every case that switches a limit or rule on is here.
 */
import { describe, expect, test } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { limitsConfigSchema } from '../../src/limits/config.js';
import { limitsPlan } from '../../src/limits/plan.js';
import { CLIENT_KINDS, clientKind, staticValue, type ClientKind } from '../../src/policy/client-kind.js';
import { holds } from '../../src/policy/conditions.js';
import { emptyPolicySet } from '../../src/policy/load.js';
import { POLICY_STAGES, type PolicyStage, type SessionFacts } from '../../src/policy/types.js';
import { facts, policySet } from '../fixtures/policy/load-set.js';

const plan = (yaml: string) => limitsPlan(limitsConfigSchema.parse(parseYaml(yaml) ?? {}));

describe('limits plan', () => {
  test('the defaults: connection limits on, nothing counts the MAIL of a client without a user', () => {
    expect(plan('')).toEqual({ connect: true, anonymousMail: false });
  });

  test('with every connection limit off (the bench’s plain config) a connection has no limit to pass', () => {
    expect(plan('connectionRate: off\nconcurrentPerIp: off\nconcurrentPerListener: off')).toEqual({ connect: false, anonymousMail: false });
  });

  test('each connection limit alone makes connect a stage with work', () => {
    for (const on of ['connectionRate: 10/1m', 'concurrentPerIp: 5', 'concurrentPerListener: 5']) {
      const others = ['connectionRate', 'concurrentPerIp', 'concurrentPerListener'].filter((k) => !on.startsWith(k)).map((k) => `${k}: off`);
      expect(plan([on, ...others].join('\n')).connect, on).toBe(true);
    }
  });

  test('a limit that is off by default counts once an override sets it; an override that lifts one adds nothing', () => {
    const off = 'connectionRate: off\nconcurrentPerIp: off\nconcurrentPerListener: off\n';
    expect(plan(`${off}overrides:\n  - { cidrs: [192.0.2.0/24], connectionRate: 5/1m }`).connect).toBe(true);
    expect(plan(`${off}overrides:\n  - { cidrs: [192.0.2.0/24], concurrentPerIp: 3 }`).connect).toBe(true);
    expect(plan(`${off}overrides:\n  - { cidrs: [192.0.2.0/24], connectionRate: off }`).connect).toBe(false);
    expect(plan('overrides:\n  - { cidrs: [192.0.2.0/24], messagesPerIp: 100/1h }').anonymousMail).toBe(true);
    expect(plan('overrides:\n  - { users: [payroll], messagesPerSender: 100/1h }').anonymousMail).toBe(true);
    expect(plan('overrides:\n  - { users: [payroll], messagesPerUser: 100/1h }').anonymousMail).toBe(false);
  });

  test('quotas per sender or per address count a client without a user', () => {
    expect(plan('messagesPerSender: 100/1h').anonymousMail).toBe(true);
    expect(plan('messagesPerIp: 100/1h').anonymousMail).toBe(true);
    // Per-user quotas need a user: an authenticated client never takes the fast path at MAIL.
    expect(plan('messagesPerUser: 100/1h\nbytesPerUser: 1GB/1h\nrecipientsPerUser: 100/1h').anonymousMail).toBe(false);
  });
});

/** Sessions of each kind that differ in everything the static value must not depend on. */
function sessionsOf(kind: ClientKind): SessionFacts[] {
  const trusted = kind >= 2;
  const authenticated = kind % 2 === 1;
  const user = authenticated ? { name: 'alice', groups: ['sales'], addresses: ['alice@corp.example'] } : undefined;
  const variants: Partial<SessionFacts>[] = [
    { ip: '198.51.100.7', recipient: 'bob@corp.example', from: 'alice@corp.example' },
    { ip: '192.0.2.1', recipient: 'someone@elsewhere.example', from: 'mallory@elsewhere.example' },
    { ip: '10.0.0.5', recipient: 'x@corp.example', from: '', tls: { version: 'TLSv1.3' } },
  ];
  return variants.map((v) => facts({ ...v, trusted, authenticated, user, authMethod: authenticated ? 'password' : undefined }));
}

describe('policy plan by kind of client', () => {
  test('clientKind numbers the four kinds', () => {
    expect([clientKind(false, false), clientKind(false, true), clientKind(true, false), clientKind(true, true)]).toEqual([0, 1, 2, 3]);
  });

  test('a static value is what holds() answers for every session of that kind (the conditions of a varied rule set)', async () => {
    const set = await policySet({
      '00-settings.yaml': 'internalDomains: [corp.example]\ntrustedNetworks: [10.0.0.0/8]\n',
      'rules.yaml': `rules:
  - { name: a, stage: rcpt, when: { authenticated: false }, action: reject }
  - { name: b, stage: rcpt, when: { group: sales }, action: reject }
  - { name: c, stage: rcpt, when: { user: alice }, action: reject }
  - { name: d, stage: rcpt, when: { trusted: true }, action: reject }
  - { name: e, stage: rcpt, when: { trusted: false }, action: reject }
  - { name: f, stage: rcpt, when: { not: { authenticated: true } }, action: reject }
  - { name: g, stage: rcpt, when: { any: [{ authenticated: true }, { clientIp: 192.0.2.0/24 }] }, action: reject }
  - { name: h, stage: rcpt, when: { all: [{ authenticated: true }, { trusted: true }] }, action: reject }
  - { name: i, stage: rcpt, when: { authMethod: password }, action: reject }
  - { name: j, type: relay_protection }
  - { name: k, type: sender_binding }
  - { name: l, type: trusted_networks, stage: rcpt, action: accept }
  - { name: m, stage: rcpt, when: { recipientDomain: corp.example }, action: reject }
`,
    });
    let decided = 0;
    for (const rule of set.rules) {
      if (!rule.when) continue;
      for (const kind of CLIENT_KINDS) {
        const value = staticValue(rule.when, kind);
        if (value === undefined) continue;
        decided++;
        for (const f of sessionsOf(kind)) expect(holds(rule.when, rule.stage, f, set.settings, undefined), `${rule.name} at ${rule.stage}, kind ${kind}`).toBe(value);
      }
    }
    expect(decided).toBeGreaterThan(20);
  });

  test('with no policy folder only the built-in relay protection is there: RCPT has work for an untrusted anonymous client only', () => {
    const set = emptyPolicySet('UTC');
    for (const stage of POLICY_STAGES) {
      const idle = set.plan[stage].idle;
      expect(idle, stage).toEqual(stage === 'rcpt' ? [false, true, true, true] : [true, true, true, true]);
    }
  });

  test('relayProtection: off leaves no work at any stage', async () => {
    const set = await policySet('relayProtection: off\n');
    for (const stage of POLICY_STAGES) expect(set.plan[stage].idle, stage).toEqual([true, true, true, true]);
  });

  test('a rule without conditions, or one the kind can meet, makes its stage work for that kind; mode: off makes none', async () => {
    const set = await policySet(`relayProtection: off
rules:
  - { name: tag-all, stage: mail, action: add_header, header: ["X-A: 1"] }
  - { name: sales-limit, stage: data, when: { group: sales }, action: reject }
  - { name: anon-audit, stage: rcpt, mode: audit, when: { authenticated: false }, action: reject }
  - { name: internal-only, stage: connect, when: { trusted: true }, action: reject }
  - { name: sleeping, stage: auth, mode: off, action: reject }
  - { name: bind, type: sender_binding }
`);
    const idle = (stage: PolicyStage) => set.plan[stage].idle;
    expect(idle('mail')).toEqual([false, false, false, false]);
    expect(idle('data')).toEqual([true, false, true, false]);
    // An untrusted listener's client may still be trusted by the policy's own trustedNetworks.
    expect(idle('connect')).toEqual([false, false, false, false]);
    expect(idle('auth')).toEqual([true, true, true, true]);
    // An audit rule acts too: its hits are logged and counted.
    expect(idle('rcpt')).toEqual([false, true, false, true]);
  });

  test('a message is scanned only for a client some data rule reading it could meet: sender binding reads an authenticated client’s From: only', async () => {
    expect(emptyPolicySet('UTC').scans).toEqual([false, false, false, false]);
    expect((await policySet('rules:\n  - { name: bind, type: sender_binding }\n')).scans).toEqual([false, true, false, true]);
    const attachments = await policySet('rules:\n  - { name: exe, stage: data, when: { attachmentName: "*.exe" }, action: reject }\n');
    expect(attachments.scans).toEqual([true, true, true, true]);
    const staffHeaders = await policySet('rules:\n  - { name: h, stage: data, when: { all: [{ group: staff }, { header: { subject: "^x" } }] }, action: reject }\n');
    expect(staffHeaders.scans).toEqual([false, true, false, true]);
  });
});
