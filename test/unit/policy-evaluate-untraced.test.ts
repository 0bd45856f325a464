/**
 * `evaluate(set, stage, facts, { trace: false })`, the listener's path: it builds no trace and
 * no texts, and must decide exactly as the traced evaluation does (decision, headers, limits,
 * audits), for the shipped policies' own test sessions and for generated sessions against sets
 * that use every condition, action, mode and built-in rule type.
 */
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { loadTestCases } from '../../src/policy/cases.js';
import { evaluate } from '../../src/policy/evaluate.js';
import { emptyPolicySet, loadPolicySet } from '../../src/policy/load.js';
import { simulateSession, type StageReport } from '../../src/policy/simulate.js';
import { POLICY_STAGES, type Evaluation, type PolicySet, type SessionFacts } from '../../src/policy/types.js';
import { facts, policySet } from '../fixtures/policy/load-set.js';

const SHIPPED = path.resolve(import.meta.dirname, '../../policies');

/** What an evaluation decides, without the trace. */
function decided(ev: Evaluation) {
  return { stage: ev.stage, decision: ev.decision, headers: ev.headers, limits: ev.limits, audits: ev.audits };
}

function withoutTraces(reports: readonly StageReport[]) {
  return reports.map((r) => ({ stage: r.stage, subject: r.subject, decision: r.decision, evaluation: r.evaluation && decided(r.evaluation) }));
}

/** Every condition, action, mode and built-in type, in orders where one rule's collecting meets another's deciding. */
const KITCHEN_SINK = {
  '00-settings.yaml': `internalDomains: [corp.example, "*.corp.example", file:lists/internal.txt]
trustedNetworks: [10.20.0.0/16]
timezone: Europe/Berlin
default: { auth: tempfail }
relayProtection: on
`,
  'lists/internal.txt': '# more of ours\nsubsidiary.example\n',
  '10-connect.yaml': `rules:
  - { name: off-at-connect, stage: connect, mode: off, action: reject }
  - { name: conn-limit, stage: connect, action: limit, rate: 100/1m, per: ip }
  - name: tag-plain
    stage: connect
    when: { tls: false }
    action: add_header
    header: ["X-Plain: yes", "X-Plain-Too: yes"]
  - name: blocked
    stage: connect
    when: { clientIp: [192.0.2.0/24, "2001:db8:dead::/48"] }
    action: reject
  - name: tls-for-mx
    stage: connect
    when: { listener: mx, not: { trusted: true } }
    action: require_tls
  - name: office-hours
    stage: connect
    mode: audit
    when: { listener: relay, time: ["08:00-12:00", "22:00-06:00"], days: mon-fri }
    action: tempfail
  - name: old-tls-weekend
    stage: connect
    mode: audit
    when: { days: [sat, sun], tlsVersion: TLSv1.2 }
    action: reject
  - name: auth-on-submission
    stage: connect
    when: { listener: submission, trusted: false }
    action: require_auth
`,
  '20-auth.yaml': `rules:
  - name: tag-auth
    stage: auth
    when: { authenticated: true }
    action: add_header
    header: "X-Authenticated: yes"
  - { name: ban-bob, stage: auth, when: { user: [bob, "b*z"] }, action: reject }
  - { name: staff, stage: auth, when: { group: [Staff, marketing] }, action: accept }
  - { name: interns-audit, stage: auth, mode: audit, when: { group: interns }, action: require_tls }
`,
  '30-mail.yaml': `rules:
  - { name: sender-binding, type: sender_binding, allowNullSender: true }
  - { name: office-net, type: trusted_networks, stage: mail, networks: [10.9.0.0/16] }
  - { name: helo-check, stage: mail, when: { helo: ["*.bad.example", localhost] }, action: reject, reply: "550 5.7.1 Bad HELO" }
  - name: spammy
    stage: mail
    when: { any: [{ sender: "*@gmail.example" }, { senderDomain: spam.example }, { sender: "<>" }] }
    action: tempfail
  - name: external-sender
    stage: [mail, rcpt]
    when: { not: { senderInternal: true }, authenticated: true }
    action: add_header
    header: "X-External-Sender: yes"
  - { name: user-limit, stage: mail, when: { authenticated: true }, action: limit, rate: 10/1h, per: user }
  - { name: sender-limit, stage: [mail, data], action: limit, rate: 10/1h, per: sender }
  - { name: big-declared, stage: mail, mode: audit, when: { declaredSizeOver: 10MB }, action: reject }
  - { name: max-size, type: max_size, max: 20MB }
  - { name: auth-at-mail, stage: mail, when: { listener: relay }, action: require_auth }
  - { name: tls-at-mail-audit, stage: mail, mode: audit, action: require_tls }
`,
  '40-rcpt.yaml': `rules:
  - { name: partners, stage: rcpt, when: { clientIp: 198.51.100.0/24, recipientDomain: "*.partner.example" }, action: accept }
  - { name: relay, type: relay_protection }
  - { name: interns-only, type: recipient_domains, when: { group: interns }, allow: [partner.example], allowInternal: false }
  - { name: max-recipients, type: max_recipients, max: 3 }
  - { name: blocked-rcpt, stage: rcpt, when: { recipient: ["*@blocked.example", ceo@corp.example] }, action: reject }
  - { name: migrating, stage: rcpt, mode: audit, when: { recipientDomain: x.example }, action: tempfail }
  - { name: outbound-tag, stage: rcpt, when: { recipientInternal: false }, action: add_header, header: "X-Outbound: yes" }
  - { name: many, stage: rcpt, when: { recipientsOver: 2 }, action: limit, rate: 5/1m, per: ip }
  - { name: off-at-rcpt, stage: rcpt, mode: off, action: reject }
`,
  '50-data.yaml': `rules:
  - name: headers
    stage: data
    when: { header: { X-Mailer: "^PHPMailer", Subject: ["viagra", "^\\\\[SPAM\\\\]"] } }
    action: reject
  - { name: exe, stage: data, when: { attachmentName: ["*.exe", "*.js"] }, action: reject }
  - { name: apps-audit, stage: data, mode: audit, when: { attachmentType: "application/*" }, action: reject }
  - { name: unscannable, stage: data, when: { scanIncomplete: true }, action: reject }
  - { name: big, stage: data, when: { messageSizeOver: 1MB }, action: limit, rate: 5/1h, per: ip }
  - name: all-internal-tls
    stage: data
    when: { all: [{ tls: true }, { recipientInternal: true }], recipient: "*@corp.example" }
    action: accept
  - { name: off-at-data, stage: data, mode: off, action: reject }
  - { name: external-data, stage: data, when: { recipientDomain: example.net, recipientsOver: 1 }, action: tempfail }
`,
};

/** Only a rule that is off at connect, and a default that refuses there. */
const ONLY_OFF = `default: { connect: reject }
rules:
  - { name: off, stage: connect, mode: off, action: accept }
`;

const pick = <T>(...values: T[]) => fc.constantFrom(...values);
const maybe = <T>(arb: fc.Arbitrary<T>) => fc.option(arb, { nil: undefined });
const address = pick('alice@corp.example', 'Alice@Corp.Example.', 'bob@corp.example', 'x@gmail.example', 'a%b@corp.example', '"u@v"@corp.example', 'offers@sales.corp.example', 'v@example.net', 'p@eu.partner.example', 'q@partner.example', 'r@x.example', 'ceo@corp.example', 'z@blocked.example', 'local', 'w@subsidiary.example', 's@spam.example');
const header = fc.oneof(
  fc.record({ name: pick('from'), value: pick('Alice <alice@corp.example>', 'alice@corp.example, ceo@corp.example', 'undisclosed', '"Team" <team@sales.corp.example>', 'x@gmail.example') }),
  fc.record({ name: pick('x-mailer'), value: pick('PHPMailer 6.0', 'Thunderbird') }),
  fc.record({ name: pick('subject'), value: pick('Lunch?', '[SPAM] offer', 'cheap VIAGRA', 'line\u0001break') }),
);

const sessionFacts: fc.Arbitrary<SessionFacts> = fc
  .record({
    ip: pick('198.51.100.7', '192.0.2.5', '10.20.1.1', '10.9.3.4', '::ffff:10.9.9.9', '2001:db8:dead::1', '2001:db8::1', '203.0.113.5', '127.0.0.1'),
    listener: pick('submission', 'mx', 'relay'),
    tls: maybe(fc.record({ version: pick('TLSv1.2', 'TLSv1.3') })),
    user: maybe(
      fc.record({
        name: pick('alice', 'Alice', 'bob', 'buzz', 'ivan', 'boss'),
        groups: fc.subarray(['staff', 'interns', 'Marketing', 'sales']),
        addresses: fc.subarray(['alice@corp.example', '*@sales.corp.example', '@corp.example', 'boss@gmail.example']),
      }),
    ),
    trusted: fc.boolean(),
    helo: maybe(pick('mail.corp.example', 'host.bad.example', 'localhost')),
    from: maybe(fc.oneof(pick(''), address)),
    recipient: maybe(address),
    recipients: fc.array(address, { maxLength: 4 }),
    declaredSize: maybe(pick(0, 4096, 1_048_577, 10_485_761, 20_971_521)),
    messageSize: maybe(pick(0, 4096, 1_048_577, 20_971_520, 20_971_521)),
    headers: maybe(fc.array(header.map((h) => ({ ...h, decoded: h.value })), { maxLength: 4 })),
    attachments: maybe(
      fc.array(fc.record({ contentType: pick('text/plain', 'application/pdf', 'application/x-msdownload', 'image/png'), filenames: fc.subarray(['a.pdf', 'setup.EXE', 'x.js', 'notes.txt']), depth: pick(0, 1) }), { maxLength: 3 }),
    ),
    scanIncomplete: maybe(fc.boolean()),
    now: fc.date({ min: new Date('2025-01-01T00:00:00Z'), max: new Date('2026-12-31T23:59:59Z'), noInvalidDate: true }),
  })
  .map((f) => ({ ...f, authenticated: f.user !== undefined }));

describe('evaluate without the trace', () => {
  test('every session of the shipped policies/tests decides as with the trace, stage by stage', async () => {
    const set = await loadPolicySet(SHIPPED);
    const { cases, issues } = await loadTestCases(path.join(SHIPPED, 'tests'));
    expect(issues).toEqual([]);
    expect(cases.length).toBeGreaterThan(10);
    for (const c of cases) {
      const traced = simulateSession(set, c.session);
      const untraced = simulateSession(set, c.session, { trace: false });
      expect(withoutTraces(untraced), c.name).toEqual(withoutTraces(traced));
      for (const r of untraced) expect(r.evaluation?.trace ?? [], c.name).toEqual([]);
    }
  });

  test.each([
    ['the shipped policies/', () => loadPolicySet(SHIPPED)],
    ['a set with every condition, action, mode and built-in type', () => policySet(KITCHEN_SINK)],
    ['the empty set (relay protection only)', async () => emptyPolicySet('UTC')],
    ['a set whose only rule is off', () => policySet(ONLY_OFF)],
  ])('%s: generated sessions decide the same at every stage, and build no trace', async (_name, load) => {
    const set: PolicySet = await load();
    fc.assert(
      fc.property(sessionFacts, pick(...POLICY_STAGES), (f, stage) => {
        const traced = evaluate(set, stage, f);
        const untraced = evaluate(set, stage, f, { trace: false });
        expect(decided(untraced)).toEqual(decided(traced));
        expect(untraced.trace).toEqual([]);
        expect(traced.trace.length).toBeGreaterThan(0);
      }),
      { numRuns: 2000 },
    );
  });

  test('the generated sessions reach every kind of decision and collect every kind of answer in the kitchen-sink set', async () => {
    // Guards the property above against sessions that never get past the first rule.
    const set = await policySet(KITCHEN_SINK);
    const seen = new Set<string>();
    fc.assert(
      fc.property(sessionFacts, pick(...POLICY_STAGES), (f, stage) => {
        const ev = evaluate(set, stage, f, { trace: false });
        seen.add(`${ev.decision.kind}:${ev.decision.rule}`);
        if (ev.headers.length) seen.add('headers');
        if (ev.limits.length) seen.add('limits');
        if (ev.audits.length) seen.add('audits');
      }),
      { numRuns: 3000 },
    );
    for (const want of ['headers', 'limits', 'audits', 'continue:default', 'accept:staff', 'require_tls:tls-for-mx', 'require_auth:auth-on-submission', 'refuse:sender-binding', 'refuse:relay', 'refuse:headers', 'refuse:default']) {
      expect([...seen], want).toContain(want);
    }
  });

  test('a stage without rules answers with one shared, frozen evaluation, traced or not', () => {
    const set = emptyPolicySet('UTC');
    const a = evaluate(set, 'mail', facts(), { trace: false });
    expect(evaluate(set, 'mail', facts({ from: 'other@example.org' }), { trace: false })).toBe(a);
    expect(Object.isFrozen(a) && Object.isFrozen(a.headers) && Object.isFrozen(a.decision)).toBe(true);
    expect(a).toEqual({ stage: 'mail', decision: { kind: 'continue', rule: 'default' }, headers: [], limits: [], audits: [], trace: [] });
    const traced = evaluate(set, 'mail', facts());
    expect(traced.trace).toEqual([{ rule: 'default', mode: 'enforce', result: 'matched', outcome: 'no rule decided: default accept', why: [] }]);
  });

  test('where no rule decides and nothing is collected, the stage answers with its shared evaluation', () => {
    const set = emptyPolicySet('UTC');
    // rcpt runs the built-in relay protection, which lets authenticated and trusted clients pass.
    const a = evaluate(set, 'rcpt', facts({ recipient: 'a@example.net' }), { trace: false });
    expect(a.decision).toEqual({ kind: 'continue', rule: 'default' });
    expect(evaluate(set, 'rcpt', facts({ recipient: 'b@example.net', authenticated: false, user: undefined, trusted: true }), { trace: false })).toBe(a);
    expect(evaluate(set, 'rcpt', facts({ recipient: 'b@example.net', authenticated: false, user: undefined }), { trace: false }).decision).toMatchObject({ kind: 'refuse', rule: 'builtin:relay_protection' });
  });
});
