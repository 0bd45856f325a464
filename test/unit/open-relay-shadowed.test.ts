/**
 * `check` and `run` refuse an open relay (issue 14 item 7). Relay protection counts as
 * enforced only where it guards every unauthenticated recipient: an enforced relay_protection
 * rule that never runs (a catch-all accept decides first) or that runs only under conditions of
 * its own (`when:`) leaves every other client free to relay, which a real session confirms
 * (250 to RCPT TO:<victim@elsewhere.test> from an unauthenticated client).
 */
import { describe, expect, test } from 'vitest';
import { findOpenRelay } from '../../src/policy/open-relay.js';
import { lintPolicySet } from '../../src/policy/lint.js';
import { policySet } from '../fixtures/policy/load-set.js';

const MX = { listeners: [{ name: 'mx', requireAuth: false }] } as unknown as Parameters<typeof findOpenRelay>[0];

const SHADOWED: Record<string, string> = {
  'after a catch-all accept at rcpt': 'rules:\n  - name: everyone\n    stage: rcpt\n    action: accept\n  - name: no-relay\n    type: relay_protection\n',
  'narrowed by its own when': 'rules:\n  - name: no-relay\n    type: relay_protection\n    when: { clientIp: 192.0.2.1 }\n',
  'narrowed by a negated when': 'rules:\n  - name: no-relay\n    type: relay_protection\n    when: { not: { clientIp: 198.51.100.0/24 } }\n',
};

describe('an enforced relay_protection rule that does not guard every recipient is an open relay', () => {
  test.each(Object.keys(SHADOWED))('%s', async (name) => {
    const set = await policySet({ '00.yaml': `internalDomains: [corp.example]\n${SHADOWED[name]}` });
    const open = findOpenRelay(MX, set);
    expect(open?.listeners).toEqual([{ name: 'mx', index: 0 }]);
    expect(open?.because).toMatch(/no-relay/);
    expect(lintPolicySet(set).filter((f) => f.kind === 'open_relay')).toHaveLength(1);
  });

  test('across files: a catch-all accept in an earlier file', async () => {
    const set = await policySet({
      '00.yaml': 'internalDomains: [corp.example]\nrules:\n  - name: everyone\n    stage: rcpt\n    action: accept\n',
      '10.yaml': 'rules:\n  - name: no-relay\n    type: relay_protection\n',
    });
    expect(findOpenRelay(MX, set)?.because).toMatch(/no-relay.*can never run/);
  });
});

describe('relay protection that guards every recipient is not', () => {
  test.each(Object.entries({
    'the built-in rule': 'internalDomains: [corp.example]\n',
    'an explicit rule without conditions': 'internalDomains: [corp.example]\nrules:\n  - name: no-relay\n    type: relay_protection\n',
    'a partner accept before it (docs/policies.md)':
      'internalDomains: [corp.example]\nrules:\n  - name: partners-may-relay\n    stage: rcpt\n    when: { clientIp: 198.51.100.0/24 }\n    action: accept\n  - name: no-relay\n    type: relay_protection\n',
    'a catch-all reject before it (nothing is relayed at all)': 'internalDomains: [corp.example]\nrules:\n  - name: closed\n    stage: rcpt\n    action: reject\n  - name: no-relay\n    type: relay_protection\n',
    'a catch-all accept after it': 'internalDomains: [corp.example]\nrules:\n  - name: no-relay\n    type: relay_protection\n  - name: everyone\n    stage: rcpt\n    action: accept\n',
    'a narrowed audit copy beside an unconditional one':
      'internalDomains: [corp.example]\nrules:\n  - name: watch\n    type: relay_protection\n    mode: audit\n    when: { clientIp: 192.0.2.1 }\n  - name: no-relay\n    type: relay_protection\n',
  }))('%s', async (_name, policy) => {
    expect(findOpenRelay(MX, await policySet({ '00.yaml': policy }))).toBeUndefined();
  });
});
