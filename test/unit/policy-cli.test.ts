/**
 * `smtpgate policy check` and `smtpgate policy test`, as the lead's CLI will call them; the
 * shipped policies/ must check clean and pass their own tests.
 */
import { cp, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { Registry } from 'prom-client';
import { runPolicyCheck, runPolicyTest } from '../../src/policy/cli.js';
import { evaluate } from '../../src/policy/evaluate.js';
import { lintPolicySet } from '../../src/policy/lint.js';
import { loadPolicySet } from '../../src/policy/load.js';
import { createPolicyMetrics } from '../../src/policy/metrics.js';
import { facts, policySet, writePolicyDir } from '../fixtures/policy/load-set.js';

const SHIPPED = path.resolve(import.meta.dirname, '../../policies');
const SHIPPED_GROUPS = new Set(['staff', 'interns', 'marketing']);

async function shippedCopy(extra: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-policies-'));
  await cp(SHIPPED, dir, { recursive: true });
  for (const [name, text] of Object.entries(extra)) await writeFile(path.join(dir, name), text);
  return dir;
}

describe('the shipped policies/', () => {
  test('passes policy check with zero findings', async () => {
    const r = await runPolicyCheck({ dir: SHIPPED, knownGroups: SHIPPED_GROUPS });
    expect(r.output).toMatch(/no findings/);
    expect(r.exitCode).toBe(0);
  });

  test('passes its own tests with policy test --all', async () => {
    const r = await runPolicyTest({ dir: SHIPPED, all: true });
    expect(r.output).toMatch(/^\d+ tests passed$/m);
    expect(r.output).not.toMatch(/FAIL/);
    expect(r.exitCode).toBe(0);
  });
});

describe('policy test --all', () => {
  test('a wrong expectation fails with the file, line, test, stage, what was expected and got, and the trace', async () => {
    const dir = await shippedCopy({
      'tests/zz-wrong.yaml': `tests:
  - name: bob's address is fine, surely
    session:
      ip: 198.51.100.7
      user: alice
      addresses: [alice@corp.example]
      from: bob@corp.example
      to: x@example.net
    expect:
      mail: accept
  - name: never reached
    session: { ip: 198.51.100.7 }
    expect:
      connect: reject
`,
    });
    const r = await runPolicyTest({ dir, all: true });
    expect(r.exitCode).toBe(1);
    const file = path.join(dir, 'tests/zz-wrong.yaml');
    expect(r.output).toContain(`FAIL  ${file}:2  bob's address is fine, surely`);
    expect(r.output).toContain('  at mail bob@corp.example: expected accept, got reject 553 5.7.1 Sender address not owned by the authenticated user (rule "sender-binding")');
    expect(r.output).toContain('sender_binding: MAIL FROM "bob@corp.example" is not among "alice"\'s addresses ["alice@corp.example"]');
    // It stops at the first failure.
    expect(r.output).not.toContain('never reached');
    expect(r.output).toMatch(/stopped at the first failing test \(17 tests passed before it\)/);
  });

  test('a wrong rule name in an expectation is a mismatch too', async () => {
    const dir = await shippedCopy({
      'tests/zz-rule.yaml': 'tests:\n  - name: r\n    session: { ip: 192.0.2.1 }\n    expect:\n      connect: { decision: reject, rule: some-other-rule }\n',
    });
    const r = await runPolicyTest({ dir, all: true });
    expect(r.exitCode).toBe(1);
    expect(r.output).toContain('at connect: expected reject by rule "some-other-rule", got reject 554 5.7.1 Your network is not allowed to use this service (rule "blocked-networks")');
  });

  test('problems in a test file are reported with file and line', async () => {
    const dir = await shippedCopy({ 'tests/zz-bad.yaml': 'tests:\n  - name: t\n    session: { ip: 1.2.3.4, usr: alice }\n    expect: { mail: accept }\n' });
    const r = await runPolicyTest({ dir, all: true });
    expect(r.exitCode).toBe(1);
    expect(r.output).toContain(`${path.join(dir, 'tests/zz-bad.yaml')}:3: tests[0].session.usr: test "t": unknown key "usr"; did you mean "user"?`);
  });

  test('no test cases is a failure, not a silent pass', async () => {
    const r = await runPolicyTest({ dir: await writePolicyDir({ 'r.yaml': 'rules: []\n', 'tests/.keep': '' }), all: true });
    expect(r.exitCode).toBe(1);
    expect(r.output).toMatch(/no test cases/);
  });
});

describe('policy test (one session)', () => {
  test('prints the decision at each stage and the trace: rules evaluated, matched or not, and why', async () => {
    const r = await runPolicyTest({ dir: SHIPPED, ip: '10.1.2.3', user: 'alice', address: ['alice@corp.example'], from: 'alice@corp.example', to: ['x@gmail.com', 'y@corp.example'], size: '2MB' });
    expect(r.exitCode).toBe(0);
    const out = r.output;
    expect(out).toContain('session: ip 10.1.2.3, listener submission, TLSv1.3, user alice [groups: none; addresses: alice@corp.example], from alice@corp.example, to x@gmail.com, y@corp.example, SIZE 2000000');
    expect(out).toContain('connect: accept (no rule decided: default)');
    expect(out).toMatch(/ {4}- blocked-networks \(.*10-connect\.yaml:6\): no match\n {8}clientIp: 10\.1\.2\.3 is not in \[file:lists\/blocked-networks\.txt \(2 entries\)\]/);
    expect(out).toContain('mail alice@corp.example: accept (no rule decided: default)');
    expect(out).toContain('sender_binding: MAIL FROM "alice@corp.example" matches "alice@corp.example" of "alice"');
    expect(out).toContain('rcpt x@gmail.com: accept (no rule decided: default)');
    expect(out).toContain('    - builtin:relay_protection (built in): no match\n        relay_protection: client is authenticated');
    expect(out).toContain('data: accept (no rule decided: default)');
  });

  test('shows a refusal, the rule that made it, and that the session stops there', async () => {
    const r = await runPolicyTest({ dir: SHIPPED, ip: '203.0.113.5', tls: false, from: 'x@example.org', to: ['v@example.net'] });
    expect(r.output).toContain('rcpt v@example.net: reject 554 5.7.1 Relay access denied (rule "builtin:relay_protection")');
    expect(r.output).toContain('relay_protection: "v@example.net" domain "example.net" is not internal, and the client is neither authenticated nor trusted');
    expect(r.output).not.toMatch(/^data:/m);
  });

  test('attachments and headers reach the data stage; audit hits and limits are listed', async () => {
    const r = await runPolicyTest({
      dir: SHIPPED,
      ip: '198.51.100.10',
      user: 'mona',
      group: ['marketing'],
      address: ['mona@corp.example'],
      from: 'mona@corp.example',
      to: ['a@example.net'],
      header: ['From: mona@corp.example', 'X-Mailer: PHPMailer 6'],
      attachment: ['setup.exe:application/octet-stream'],
    });
    expect(r.output).toContain('data: reject 550 5.7.1 Executable attachments are not accepted; share the file through the file server (rule "blocked-attachments")');
    expect(r.output).toContain('attachmentName: "setup.exe" matches "*.exe"');
    expect(r.output).toContain('headers added: X-Corp-Class: bulk (tag-bulk)');
    expect(r.output).toContain('limits to count: marketing-hourly 500/1h per user key "mona" at mail');
  });

  test('needs at least --ip, and refuses a user without TLS', async () => {
    expect((await runPolicyTest({ dir: SHIPPED })).exitCode).toBe(1);
    const r = await runPolicyTest({ dir: SHIPPED, ip: '1.2.3.4', user: 'alice', tls: false });
    expect(r.exitCode).toBe(1);
    expect(r.output).toContain('--tls: smtpgate never accepts AUTH without TLS');
  });
});

describe('policy check findings', () => {
  test('unreachable rules: after a catch-all, and after a rule with the same conditions', async () => {
    const set = await policySet(`
rules:
  - name: by-ip
    stage: mail
    when: { clientIp: 10.0.0.0/8 }
    action: reject
  - name: same-ip
    stage: mail
    when: { clientIp: 10.0.0.0/8 }
    action: accept
  - name: everyone
    stage: mail
    action: accept
  - name: never
    stage: mail
    when: { user: bob }
    action: reject
  - name: other-stage
    stage: rcpt
    when: { user: bob }
    action: reject
`);
    const findings = lintPolicySet(set);
    expect(findings.map((f) => [f.kind, f.rule, f.line])).toEqual([
      ['unreachable', 'same-ip', 7],
      ['unreachable', 'never', 14],
    ]);
    expect(findings[1]!.message).toMatch(/^rule "never" can never run at mail: rule "everyone" \(.*rules\.yaml:11\) has no conditions, so it matches every session and decides \(accept\) first$/);
  });

  test('audit, add_header, limit and met requirements don\'t make later rules unreachable', async () => {
    const set = await policySet(`
rules:
  - name: a
    stage: mail
    mode: audit
    action: reject
  - name: b
    stage: mail
    action: require_tls
  - name: c
    stage: mail
    action: add_header
    header: "X-A: 1"
  - name: d
    stage: mail
    action: reject
`);
    expect(lintPolicySet(set)).toEqual([]);
  });

  test('unknown groups, when the known groups are given', async () => {
    const set = await policySet('rules:\n  - name: r\n    stage: mail\n    when: { group: [staff, internz] }\n    action: reject\n');
    expect(lintPolicySet(set)).toEqual([]);
    const findings = lintPolicySet(set, { knownGroups: new Set(['staff', 'interns']) });
    expect(findings).toEqual([
      expect.objectContaining({ kind: 'unknown_group', rule: 'r', line: 4, message: 'rule "r": no user is in group "internz" (known groups: interns, staff)' }),
    ]);
  });

  test('relay protection turned off', async () => {
    const set = await policySet({ '00.yaml': 'relayProtection: off\n' });
    expect(lintPolicySet(set)).toEqual([expect.objectContaining({ kind: 'open_relay' })]);
  });

  test('bad CIDRs and unknown fields come back as findings with exit code 1', async () => {
    const dir = await writePolicyDir({ 'r.yaml': 'rules:\n  - name: r\n    stage: connect\n    when: { clientIp: 300.1.1.1 }\n    action: reject\n  - name: s\n    stage: mail\n    acton: reject\n' });
    const r = await runPolicyCheck({ dir });
    expect(r.exitCode).toBe(1);
    expect(r.output).toContain('2 problems');
    expect(r.output).toContain(`${path.join(dir, 'r.yaml')}:8: rules[1].acton: rule "s": unknown key "acton"; did you mean "action"? [unknown_field]`);
    expect(r.output).toContain(`${path.join(dir, 'r.yaml')}:4: rules[0].when.clientIp: rule "r": expected an address or CIDR such as 10.0.0.0/8 or 2001:db8::/32, found "300.1.1.1" [bad_cidr]`);
  });

  test('lint findings are listed with the unknown-group check skipped without attributes', async () => {
    const dir = await writePolicyDir({ 'r.yaml': 'rules:\n  - name: all\n    stage: mail\n    action: accept\n  - name: dead\n    stage: mail\n    action: reject\n' });
    const r = await runPolicyCheck({ dir });
    expect(r.exitCode).toBe(1);
    expect(r.output).toMatch(/1 finding:\n {2}.*r\.yaml:5: rule "dead" can never run at mail: .* \[unreachable\]/);
    expect(r.output).toContain('(groups not checked: no user attributes given)');
  });
});

describe('metrics', () => {
  test('every decision counts by rule, stage and action; audits count as would-reject', async () => {
    const registry = new Registry();
    const metrics = createPolicyMetrics(registry);
    const set = await loadPolicySet(SHIPPED);
    metrics.setPolicySet(set);
    const alice = facts({ user: { name: 'alice', groups: ['marketing'], addresses: ['alice@corp.example'] } });
    metrics.record(evaluate(set, 'mail', alice));
    metrics.record(evaluate(set, 'mail', facts({ from: 'bob@corp.example' })));
    metrics.record(evaluate(set, 'rcpt', facts({ authenticated: false, user: undefined, recipient: 'v@example.net' })));
    metrics.record(evaluate(set, 'data', facts({ headers: [{ name: 'x-mailer', value: 'PHPMailer', decoded: 'PHPMailer' }], recipients: ['a@example.net'] })));
    const text = await registry.metrics();
    expect(text).toContain('smtpgate_policy_decisions_total{rule="default",stage="mail",action="continue"} 1');
    expect(text).toContain('smtpgate_policy_decisions_total{rule="tag-bulk",stage="mail",action="add_header"} 1');
    expect(text).toContain('smtpgate_policy_decisions_total{rule="marketing-hourly",stage="mail",action="limit"} 1');
    expect(text).toContain('smtpgate_policy_decisions_total{rule="sender-binding",stage="mail",action="reject"} 1');
    expect(text).toContain('smtpgate_policy_decisions_total{rule="builtin:relay_protection",stage="rcpt",action="reject"} 1');
    expect(text).toContain('smtpgate_policy_audit_total{rule="phpmailer-audit",stage="data"} 1');
    expect(text).toMatch(/smtpgate_policy_rules \d+/);
  });
});
