/**
 * The policy engine as a specification: every condition, every action, the combinators,
 * first-match semantics, the default, the built-in rule types and audit mode.
 */
import { describe, expect, test } from 'vitest';
import { evaluate, unmetRequirement } from '../../src/policy/evaluate.js';
import { emptyPolicySet } from '../../src/policy/load.js';
import { buildUserFacts, dataFacts } from '../../src/policy/facts.js';
import { scanMessage } from '../../src/policy/mime.js';
import { limitRefusal } from '../../src/policy/replies.js';
import type { Decision, PolicySet, PolicyStage, SessionFacts } from '../../src/policy/types.js';
import { facts, policySet } from '../fixtures/policy/load-set.js';

/** A one-rule set: the rule refuses with 550 at `stage` when `when` holds. */
async function rejectWhen(stage: PolicyStage, when: string): Promise<PolicySet> {
  return policySet(`
rules:
  - name: r
    stage: ${stage}
    when:
${when.replace(/^/gm, '      ')}
    action: reject
`);
}

function matches(set: PolicySet, stage: PolicyStage, f: SessionFacts): boolean {
  const d = evaluate(set, stage, f).decision;
  return d.kind === 'refuse' && d.rule === 'r';
}

function refusalOf(d: Decision) {
  if (d.kind === 'accept' || d.kind === 'continue') throw new Error(`expected a refusal, got ${d.kind}`);
  return d.refusal;
}

const noUser = { authenticated: false, user: undefined } as const;

describe('conditions', () => {
  test('clientIp matches CIDRs, bare addresses, IPv6 and IPv4-mapped clients', async () => {
    const set = await rejectWhen('connect', 'clientIp: [10.0.0.0/8, 192.0.2.7, "2001:db8::/32"]');
    expect(matches(set, 'connect', facts({ ip: '10.1.2.3' }))).toBe(true);
    expect(matches(set, 'connect', facts({ ip: '192.0.2.7' }))).toBe(true);
    expect(matches(set, 'connect', facts({ ip: '192.0.2.8' }))).toBe(false);
    expect(matches(set, 'connect', facts({ ip: '2001:db8:1::5' }))).toBe(true);
    expect(matches(set, 'connect', facts({ ip: '::ffff:10.9.9.9' }))).toBe(true);
  });

  test('clientIp reads a list file, one CIDR per line with comments', async () => {
    const set = await policySet({
      'rules.yaml': 'rules:\n  - name: r\n    stage: connect\n    when: { clientIp: file:lists/nets.txt }\n    action: reject\n',
      'lists/nets.txt': '# blocked\n203.0.113.0/24   # spam source\n\n198.18.0.1\n',
    });
    expect(matches(set, 'connect', facts({ ip: '203.0.113.50' }))).toBe(true);
    expect(matches(set, 'connect', facts({ ip: '198.18.0.1' }))).toBe(true);
    expect(matches(set, 'connect', facts({ ip: '198.18.0.2' }))).toBe(false);
  });

  test('listener matches listener names', async () => {
    const set = await rejectWhen('connect', 'listener: [mx, relay]');
    expect(matches(set, 'connect', facts({ listener: 'mx' }))).toBe(true);
    expect(matches(set, 'connect', facts({ listener: 'submission' }))).toBe(false);
  });

  test('tls: true/false tells sessions with and without TLS apart', async () => {
    const withTls = await rejectWhen('mail', 'tls: false');
    expect(matches(withTls, 'mail', facts({ tls: undefined }))).toBe(true);
    expect(matches(withTls, 'mail', facts())).toBe(false);
  });

  test('tlsVersion matches the negotiated version; no TLS never matches', async () => {
    const set = await rejectWhen('mail', 'tlsVersion: TLSv1.2');
    expect(matches(set, 'mail', facts({ tls: { version: 'TLSv1.2' } }))).toBe(true);
    expect(matches(set, 'mail', facts({ tls: { version: 'TLSv1.3' } }))).toBe(false);
    expect(matches(set, 'mail', facts({ tls: undefined }))).toBe(false);
  });

  test('authenticated: true/false', async () => {
    const set = await rejectWhen('mail', 'authenticated: false');
    expect(matches(set, 'mail', facts(noUser))).toBe(true);
    expect(matches(set, 'mail', facts())).toBe(false);
  });

  test('authMethod: how the session signed in; false without AUTH', async () => {
    const set = await rejectWhen('mail', 'authMethod: [app_password, certificate]');
    expect(matches(set, 'mail', facts({ authMethod: 'app_password' }))).toBe(true);
    expect(matches(set, 'mail', facts({ authMethod: 'certificate' }))).toBe(true);
    expect(matches(set, 'mail', facts({ authMethod: 'password' }))).toBe(false);
    expect(matches(set, 'mail', facts(noUser))).toBe(false);
    const trace = evaluate(set, 'mail', facts({ authMethod: 'password' })).trace.flatMap((t) => t.why ?? []);
    expect(trace).toContain('authMethod: password is not one of app_password, certificate');
  });

  test('trusted: the listener says so, or the client is in trustedNetworks', async () => {
    const set = await policySet({
      '00-settings.yaml': 'trustedNetworks: [10.20.0.0/16]\n',
      'rules.yaml': 'rules:\n  - name: r\n    stage: mail\n    when: { trusted: true }\n    action: reject\n',
    });
    expect(matches(set, 'mail', facts({ trusted: true }))).toBe(true);
    expect(matches(set, 'mail', facts({ ip: '10.20.3.4' }))).toBe(true);
    expect(matches(set, 'mail', facts())).toBe(false);
  });

  test('user matches login names, exactly or by glob, case-insensitively', async () => {
    const set = await rejectWhen('mail', 'user: [bob, "svc-*"]');
    const as = (name: string) => facts({ user: { name, groups: [], addresses: [] } });
    expect(matches(set, 'mail', as('BOB'))).toBe(true);
    expect(matches(set, 'mail', as('svc-backup'))).toBe(true);
    expect(matches(set, 'mail', as('alice'))).toBe(false);
    expect(matches(set, 'mail', facts(noUser))).toBe(false);
  });

  test("group matches any of the user's groups", async () => {
    const set = await rejectWhen('mail', 'group: [interns, contractors]');
    expect(matches(set, 'mail', facts({ user: { name: 'ivan', groups: ['staff', 'interns'], addresses: [] } }))).toBe(true);
    expect(matches(set, 'mail', facts())).toBe(false);
    expect(matches(set, 'mail', facts(noUser))).toBe(false);
  });

  test('helo matches the EHLO name by glob', async () => {
    const set = await rejectWhen('mail', 'helo: "*.dyn.example"');
    expect(matches(set, 'mail', facts({ helo: 'host-1.dyn.example' }))).toBe(true);
    expect(matches(set, 'mail', facts({ helo: 'mail.corp.example' }))).toBe(false);
  });

  test('sender matches the MAIL FROM address: exact, glob, <> and list file', async () => {
    const set = await policySet({
      'rules.yaml': 'rules:\n  - name: r\n    stage: mail\n    when: { sender: ["Boss@Corp.Example", "*@spam.example", "<>", file:senders.txt] }\n    action: reject\n',
      'senders.txt': 'x?@listed.example\n',
    });
    expect(matches(set, 'mail', facts({ from: 'boss@corp.example' }))).toBe(true);
    expect(matches(set, 'mail', facts({ from: 'anyone@spam.example' }))).toBe(true);
    expect(matches(set, 'mail', facts({ from: '' }))).toBe(true);
    expect(matches(set, 'mail', facts({ from: 'x1@listed.example' }))).toBe(true);
    expect(matches(set, 'mail', facts({ from: 'x12@listed.example' }))).toBe(false);
    expect(matches(set, 'mail', facts({ from: 'alice@corp.example' }))).toBe(false);
  });

  test('senderDomain matches the domain, exact or glob, anchored', async () => {
    const set = await rejectWhen('mail', 'senderDomain: [example.org, "*.bad.example"]');
    expect(matches(set, 'mail', facts({ from: 'a@EXAMPLE.org' }))).toBe(true);
    expect(matches(set, 'mail', facts({ from: 'a@x.bad.example' }))).toBe(true);
    expect(matches(set, 'mail', facts({ from: 'a@bad.example' }))).toBe(false);
    expect(matches(set, 'mail', facts({ from: 'a@example.org.evil' }))).toBe(false);
    expect(matches(set, 'mail', facts({ from: '' }))).toBe(false);
  });

  test('senderInternal: the sender domain is one of internalDomains', async () => {
    const set = await policySet({
      '00-settings.yaml': 'internalDomains: [corp.example]\n',
      'rules.yaml': 'rules:\n  - name: r\n    stage: mail\n    when: { senderInternal: false }\n    action: reject\n',
    });
    expect(matches(set, 'mail', facts({ from: 'x@example.org' }))).toBe(true);
    expect(matches(set, 'mail', facts({ from: 'x@corp.example' }))).toBe(false);
  });

  test('recipient at rcpt is the recipient being decided; at data any recipient', async () => {
    const set = await policySet('rules:\n  - name: r\n    stage: [rcpt, data]\n    when: { recipient: "ceo@corp.example" }\n    action: reject\n');
    expect(matches(set, 'rcpt', facts({ recipient: 'CEO@corp.example', recipients: [] }))).toBe(true);
    expect(matches(set, 'rcpt', facts({ recipient: 'bob@corp.example', recipients: ['ceo@corp.example'] }))).toBe(false);
    expect(matches(set, 'data', facts({ recipients: ['bob@corp.example', 'ceo@corp.example'] }))).toBe(true);
  });

  test('recipientDomain matches the recipient domain', async () => {
    const set = await rejectWhen('rcpt', 'recipientDomain: "*.example.net"');
    expect(matches(set, 'rcpt', facts({ recipient: 'x@mx.example.net' }))).toBe(true);
    expect(matches(set, 'rcpt', facts({ recipient: 'x@example.net' }))).toBe(false);
  });

  test('recipientInternal: true/false at rcpt, and "some recipient is (not) internal" at data', async () => {
    const set = await policySet({
      '00-settings.yaml': 'internalDomains: [corp.example, "*.corp.example"]\n',
      'rules.yaml': 'rules:\n  - name: r\n    stage: [rcpt, data]\n    when: { recipientInternal: false }\n    action: reject\n',
    });
    expect(matches(set, 'rcpt', facts({ recipient: 'x@gmail.example' }))).toBe(true);
    expect(matches(set, 'rcpt', facts({ recipient: 'x@hr.corp.example' }))).toBe(false);
    expect(matches(set, 'data', facts({ recipients: ['a@corp.example', 'b@gmail.example'] }))).toBe(true);
    expect(matches(set, 'data', facts({ recipients: ['a@corp.example'] }))).toBe(false);
  });

  test('recipientsOver counts the recipient being decided at rcpt', async () => {
    const set = await rejectWhen('rcpt', 'recipientsOver: 2');
    expect(matches(set, 'rcpt', facts({ recipient: 'c@x.example', recipients: ['a@x.example'] }))).toBe(false);
    expect(matches(set, 'rcpt', facts({ recipient: 'c@x.example', recipients: ['a@x.example', 'b@x.example'] }))).toBe(true);
  });

  test('declaredSizeOver compares SIZE=, and an undeclared size never matches', async () => {
    const set = await rejectWhen('mail', 'declaredSizeOver: 10MB');
    expect(matches(set, 'mail', facts({ declaredSize: 10_000_001 }))).toBe(true);
    expect(matches(set, 'mail', facts({ declaredSize: 10_000_000 }))).toBe(false);
    expect(matches(set, 'mail', facts())).toBe(false);
  });

  test('messageSizeOver compares the real size at data', async () => {
    const set = await rejectWhen('data', 'messageSizeOver: 1KiB');
    expect(matches(set, 'data', facts({ messageSize: 1025 }))).toBe(true);
    expect(matches(set, 'data', facts({ messageSize: 1024 }))).toBe(false);
  });

  test('header matches a header by regex, case-insensitively, raw or RFC 2047 decoded', async () => {
    const set = await rejectWhen('data', 'header: { X-Mailer: "^phpmailer", Subject: "invoice|rechnung" }');
    const h = (name: string, value: string, decoded = value) => ({ name, value, decoded });
    expect(matches(set, 'data', facts({ headers: [h('x-mailer', 'PHPMailer 6'), h('subject', 'Your Invoice')] }))).toBe(true);
    // Both headers must match (keys of one map are all required).
    expect(matches(set, 'data', facts({ headers: [h('x-mailer', 'PHPMailer 6'), h('subject', 'Hello')] }))).toBe(false);
    expect(matches(set, 'data', facts({ headers: [h('x-mailer', 'PHPMailer'), h('subject', '=?utf-8?q?Rechnung?=', 'Rechnung')] }))).toBe(true);
    expect(matches(set, 'data', facts({ headers: [] }))).toBe(false);
  });

  test('attachmentName matches any part file name by glob', async () => {
    const set = await rejectWhen('data', 'attachmentName: ["*.exe", "*.iso"]');
    const part = (filenames: string[]) => ({ contentType: 'application/octet-stream', filenames, depth: 1 });
    expect(matches(set, 'data', facts({ attachments: [part(['report.pdf']), part(['SETUP.EXE'])] }))).toBe(true);
    expect(matches(set, 'data', facts({ attachments: [part(['disk.iso'])] }))).toBe(true);
    expect(matches(set, 'data', facts({ attachments: [part(['report.pdf']), part([])] }))).toBe(false);
  });

  test('attachmentType matches any leaf part content type by glob', async () => {
    const set = await rejectWhen('data', 'attachmentType: ["application/x-msdownload", "video/*"]');
    const part = (contentType: string) => ({ contentType, filenames: [], depth: 1 });
    expect(matches(set, 'data', facts({ attachments: [part('text/plain'), part('application/x-msdownload')] }))).toBe(true);
    expect(matches(set, 'data', facts({ attachments: [part('video/mp4')] }))).toBe(true);
    expect(matches(set, 'data', facts({ attachments: [part('text/plain')] }))).toBe(false);
  });

  test('scanIncomplete matches a message the MIME scanner could not finish', async () => {
    const set = await rejectWhen('data', 'scanIncomplete: true');
    expect(matches(set, 'data', facts({ scanIncomplete: true }))).toBe(true);
    expect(matches(set, 'data', facts({ scanIncomplete: false }))).toBe(false);
  });

  test('time matches the time of day in the set time zone, also across midnight', async () => {
    const office = await policySet({ '00.yaml': 'timezone: Europe/Berlin\n', 'rules.yaml': 'rules:\n  - name: r\n    stage: connect\n    when: { time: "08:00-18:00" }\n    action: reject\n' });
    // 12:00 UTC is 13:00 in Berlin (CET).
    expect(matches(office, 'connect', facts({ now: new Date('2025-03-10T12:00:00Z') }))).toBe(true);
    expect(matches(office, 'connect', facts({ now: new Date('2025-03-10T17:30:00Z') }))).toBe(false);
    const night = await rejectWhen('connect', 'time: "22:00-06:00"');
    expect(matches(night, 'connect', facts({ now: new Date('2025-03-10T23:10:00Z') }))).toBe(true);
    expect(matches(night, 'connect', facts({ now: new Date('2025-03-10T05:59:00Z') }))).toBe(true);
    expect(matches(night, 'connect', facts({ now: new Date('2025-03-10T06:00:00Z') }))).toBe(false);
  });

  test('days matches weekdays and ranges', async () => {
    const set = await rejectWhen('connect', 'days: [sat, sun]');
    expect(matches(set, 'connect', facts({ now: new Date('2025-03-08T12:00:00Z') }))).toBe(true); // Saturday
    expect(matches(set, 'connect', facts({ now: new Date('2025-03-10T12:00:00Z') }))).toBe(false); // Monday
    const week = await rejectWhen('connect', 'days: "mon-fri"');
    expect(matches(week, 'connect', facts({ now: new Date('2025-03-14T12:00:00Z') }))).toBe(true); // Friday
    expect(matches(week, 'connect', facts({ now: new Date('2025-03-09T12:00:00Z') }))).toBe(false); // Sunday
  });
});

describe('combinators', () => {
  test('several conditions in one map must all hold', async () => {
    const set = await rejectWhen('mail', 'group: interns\nsenderDomain: corp.example');
    expect(matches(set, 'mail', facts({ user: { name: 'i', groups: ['interns'], addresses: [] }, from: 'i@corp.example' }))).toBe(true);
    expect(matches(set, 'mail', facts({ user: { name: 'i', groups: ['interns'], addresses: [] }, from: 'i@else.example' }))).toBe(false);
  });

  test('not, any and all nest', async () => {
    const set = await rejectWhen(
      'rcpt',
      `any:
  - all:
      - group: interns
      - not: { recipientDomain: [corp.example, partner.example] }
  - recipientDomain: blocked.example`,
    );
    const intern = { user: { name: 'i', groups: ['interns'], addresses: [] } };
    expect(matches(set, 'rcpt', facts({ ...intern, recipient: 'x@gmail.example' }))).toBe(true);
    expect(matches(set, 'rcpt', facts({ ...intern, recipient: 'x@partner.example' }))).toBe(false);
    expect(matches(set, 'rcpt', facts({ recipient: 'x@gmail.example' }))).toBe(false);
    expect(matches(set, 'rcpt', facts({ recipient: 'x@blocked.example' }))).toBe(true);
  });

  test('not of a missing fact holds: a session without a user is "not in group interns"', async () => {
    const set = await rejectWhen('mail', 'not: { group: interns }');
    expect(matches(set, 'mail', facts(noUser))).toBe(true);
  });
});

describe('first match and the default', () => {
  test('the first matching rule decides; later rules are not evaluated', async () => {
    const set = await policySet(`
rules:
  - name: allow-boss
    stage: mail
    when: { user: boss }
    action: accept
  - name: no-external-senders
    stage: mail
    when: { senderInternal: false }
    action: reject
`);
    const ev = evaluate(set, 'mail', facts({ user: { name: 'boss', groups: [], addresses: [] }, from: 'boss@gmail.example' }));
    expect(ev.decision).toEqual({ kind: 'accept', rule: 'allow-boss' });
    expect(ev.trace.map((t) => t.rule)).toEqual(['allow-boss']);
    const other = evaluate(set, 'mail', facts({ from: 'alice@gmail.example' }));
    expect(other.decision).toMatchObject({ kind: 'refuse', rule: 'no-external-senders' });
    expect(other.trace.map((t) => [t.rule, t.result])).toEqual([
      ['allow-boss', 'no_match'],
      ['no-external-senders', 'matched'],
    ]);
  });

  test('rules of other stages are not evaluated', async () => {
    const set = await rejectWhen('data', 'messageSizeOver: 1');
    expect(evaluate(set, 'mail', facts()).trace.map((t) => t.rule)).toEqual(['default']);
  });

  test('no rule matching falls through to the default: continue', async () => {
    const set = await rejectWhen('mail', 'user: nobody');
    const ev = evaluate(set, 'mail', facts());
    expect(ev.decision).toEqual({ kind: 'continue', rule: 'default' });
    expect(ev.trace.at(-1)).toMatchObject({ rule: 'default', outcome: 'no rule decided: default accept' });
  });

  test('a per-stage default of reject refuses with the stage reply', async () => {
    const set = await policySet({ '00.yaml': 'default: { rcpt: reject }\n', 'rules.yaml': 'rules:\n  - name: ok-internal\n    stage: rcpt\n    when: { recipientDomain: corp.example }\n    action: accept\n' });
    expect(evaluate(set, 'rcpt', facts({ recipient: 'a@corp.example' })).decision.kind).toBe('accept');
    const d = evaluate(set, 'rcpt', facts({ recipient: 'a@gmail.example' })).decision;
    expect(d).toMatchObject({ kind: 'refuse', rule: 'default', action: 'reject' });
    expect(refusalOf(d)).toMatchObject({ code: 550, enhanced: '5.7.1', text: 'Recipient refused by policy' });
    expect(evaluate(set, 'mail', facts()).decision.kind).toBe('continue');
  });

  test('mode: off skips a rule', async () => {
    const set = await policySet('rules:\n  - name: r\n    stage: mail\n    mode: off\n    action: reject\n');
    const ev = evaluate(set, 'mail', facts());
    expect(ev.decision.kind).toBe('continue');
    expect(ev.trace[0]).toMatchObject({ rule: 'r', result: 'skipped' });
  });
});

describe('actions', () => {
  test('accept stops the stage', async () => {
    const set = await policySet('rules:\n  - name: a\n    stage: mail\n    action: accept\n  - name: b\n    stage: mail\n    action: reject\n', );
    expect(evaluate(set, 'mail', facts()).decision).toEqual({ kind: 'accept', rule: 'a' });
  });

  test('reject uses the stage default reply, or the one written', async () => {
    const set = await policySet(`
rules:
  - name: plain
    stage: [connect, mail, data]
    when: { listener: mx }
    action: reject
  - name: custom
    stage: mail
    action: reject
    reply: "553 5.7.1 Not from here"
`);
    const mx = facts({ listener: 'mx' });
    expect(refusalOf(evaluate(set, 'connect', mx).decision)).toEqual({ code: 554, enhanced: '5.7.1', text: 'Access denied by policy', reason: 'policy' });
    expect(refusalOf(evaluate(set, 'data', mx).decision)).toMatchObject({ code: 550, enhanced: '5.7.1', text: 'Message refused by policy' });
    const d = evaluate(set, 'mail', facts()).decision;
    expect(d).toMatchObject({ kind: 'refuse', rule: 'custom', action: 'reject' });
    expect(refusalOf(d)).toEqual({ code: 553, enhanced: '5.7.1', text: 'Not from here', reason: 'policy' });
  });

  test('a reply with only text keeps the default code; with only a code, the enhanced class follows it', async () => {
    const set = await policySet(`
rules:
  - name: t
    stage: rcpt
    when: { recipient: "a@x.example" }
    action: tempfail
    reply: "Mailbox migration in progress"
  - name: c
    stage: rcpt
    action: reject
    reply: "554 Go away"
`);
    expect(refusalOf(evaluate(set, 'rcpt', facts({ recipient: 'a@x.example' })).decision)).toMatchObject({ code: 451, enhanced: '4.7.1', text: 'Mailbox migration in progress' });
    expect(refusalOf(evaluate(set, 'rcpt', facts({ recipient: 'b@x.example' })).decision)).toMatchObject({ code: 554, enhanced: '5.7.1', text: 'Go away' });
  });

  test('tempfail refuses with a 4xx per stage', async () => {
    const set = await policySet('rules:\n  - name: t\n    stage: [connect, auth]\n    action: tempfail\n');
    expect(refusalOf(evaluate(set, 'connect', facts()).decision)).toMatchObject({ code: 421, enhanced: '4.7.0' });
    expect(refusalOf(evaluate(set, 'auth', facts()).decision)).toMatchObject({ code: 454, enhanced: '4.7.0' });
  });

  test('require_tls at connect is held until MAIL; at mail it refuses at once; with TLS it is met and evaluation goes on', async () => {
    const set = await policySet(`
rules:
  - name: tls-for-all
    stage: [connect, mail]
    action: require_tls
  - name: later
    stage: mail
    action: reject
`);
    const plain = facts({ tls: undefined });
    const held = evaluate(set, 'connect', plain).decision;
    expect(held).toMatchObject({ kind: 'require_tls', rule: 'tls-for-all', refusal: { code: 530, enhanced: '5.7.0', reason: 'tls_required' } });
    expect(unmetRequirement(held, plain)).toMatchObject({ code: 530 });
    expect(unmetRequirement(held, facts())).toBeUndefined();
    expect(evaluate(set, 'mail', plain).decision).toMatchObject({ kind: 'refuse', action: 'require_tls', rule: 'tls-for-all' });
    const met = evaluate(set, 'mail', facts());
    expect(met.trace[0]).toMatchObject({ rule: 'tls-for-all', result: 'satisfied' });
    expect(met.decision).toMatchObject({ kind: 'refuse', rule: 'later' });
  });

  test('require_auth refuses unauthenticated sessions with 530 5.7.0 and lets authenticated ones on', async () => {
    const set = await policySet('rules:\n  - name: auth-please\n    stage: [connect, rcpt]\n    when: { listener: submission }\n    action: require_auth\n');
    expect(evaluate(set, 'connect', facts(noUser)).decision).toMatchObject({ kind: 'require_auth' });
    // Trusted, so relay protection (which runs first at rcpt) lets it through to this rule.
    expect(evaluate(set, 'rcpt', facts({ ...noUser, trusted: true, recipient: 'a@b.example' })).decision).toMatchObject({ kind: 'refuse', action: 'require_auth', refusal: { code: 530, reason: 'auth_required' } });
    expect(evaluate(set, 'rcpt', facts({ recipient: 'a@b.example' })).decision.kind).toBe('continue');
  });

  test('add_header collects headers and evaluation goes on; a refusal drops them', async () => {
    const set = await policySet(`
rules:
  - name: tag
    stage: rcpt
    when: { recipientInternal: false }
    action: add_header
    header: ["X-Corp-External: yes", "X-Corp-Policy: v1"]
  - name: block
    stage: rcpt
    when: { recipientDomain: blocked.example }
    action: reject
`);
    const ev = evaluate(set, 'rcpt', facts({ recipient: 'x@gmail.example' }));
    expect(ev.decision.kind).toBe('continue');
    expect(ev.headers).toEqual([
      { rule: 'tag', name: 'X-Corp-External', value: 'yes' },
      { rule: 'tag', name: 'X-Corp-Policy', value: 'v1' },
    ]);
    const refused = evaluate(set, 'rcpt', facts({ recipient: 'x@blocked.example' }));
    expect(refused.decision.kind).toBe('refuse');
    expect(refused.headers).toEqual([]);
  });

  test('limit asks the caller to count, keyed by user, ip or sender, and evaluation goes on', async () => {
    const set = await policySet(`
rules:
  - name: per-user
    stage: mail
    action: limit
    rate: 50/1h
    per: user
  - name: per-ip
    stage: mail
    action: limit
    rate: 10/1m
    per: ip
  - name: per-sender
    stage: mail
    action: limit
    rate: 5/1d
    per: sender
`);
    const ev = evaluate(set, 'mail', facts({ user: { name: 'Alice', groups: [], addresses: [] }, ip: '2001:db8:1:2:3::4', from: 'Alice@Corp.Example' }));
    expect(ev.decision.kind).toBe('continue');
    expect(ev.limits).toEqual([
      { rule: 'per-user', stage: 'mail', rate: { amount: 50, windowMs: 3_600_000 }, rateText: '50/1h', per: 'user', key: 'alice', bucket: 'policy:per-user|alice' },
      { rule: 'per-ip', stage: 'mail', rate: { amount: 10, windowMs: 60_000 }, rateText: '10/1m', per: 'ip', key: '2001:db8:1:2::/64', bucket: 'policy:per-ip|2001:db8:1:2::/64' },
      { rule: 'per-sender', stage: 'mail', rate: { amount: 5, windowMs: 86_400_000 }, rateText: '5/1d', per: 'sender', key: 'alice@corp.example', bucket: 'policy:per-sender|alice@corp.example' },
    ]);
    // No user, null sender: nothing to count under.
    const anon = evaluate(set, 'mail', facts({ ...noUser, from: '' }));
    expect(anon.limits.map((l) => l.rule)).toEqual(['per-ip']);
  });
});

describe('sender_binding', () => {
  const binding = () => policySet('rules:\n  - name: sender-binding\n    type: sender_binding\n');
  const alice = (addresses: string[]) => ({ user: { name: 'alice', groups: [], addresses } });

  test('an authenticated user may use their own MAIL FROM address', async () => {
    const set = await binding();
    expect(evaluate(set, 'mail', facts({ ...alice(['alice@corp.example']), from: 'Alice@corp.example' })).decision.kind).toBe('continue');
  });

  test('another MAIL FROM address is refused with 553 5.7.1 and reason sender_binding', async () => {
    const set = await binding();
    const d = evaluate(set, 'mail', facts({ ...alice(['alice@corp.example']), from: 'bob@corp.example' })).decision;
    expect(d).toMatchObject({ kind: 'refuse', rule: 'sender-binding' });
    expect(refusalOf(d)).toEqual({ code: 553, enhanced: '5.7.1', text: 'Sender address not owned by the authenticated user', reason: 'sender_binding' });
  });

  test('wildcards such as *@sales.example allow a whole domain', async () => {
    const set = await binding();
    const f = alice(['alice@corp.example', '*@sales.example']);
    expect(evaluate(set, 'mail', facts({ ...f, from: 'offers@sales.example' })).decision.kind).toBe('continue');
    expect(evaluate(set, 'mail', facts({ ...f, from: 'offers@x.sales.example' })).decision.kind).toBe('refuse');
  });

  test('the null sender is refused for authenticated users unless allowNullSender', async () => {
    expect(evaluate(await binding(), 'mail', facts({ from: '' })).decision.kind).toBe('refuse');
    const lenient = await policySet('rules:\n  - name: sb\n    type: sender_binding\n    allowNullSender: true\n');
    expect(evaluate(lenient, 'mail', facts({ from: '' })).decision.kind).toBe('continue');
  });

  test('unauthenticated sessions are not bound', async () => {
    expect(evaluate(await binding(), 'mail', facts({ ...noUser, from: 'anyone@example.org' })).decision.kind).toBe('continue');
  });

  test('at data, every From: header address must be allowed', async () => {
    const set = await binding();
    const h = (value: string) => [{ name: 'from', value, decoded: value }];
    const f = alice(['alice@corp.example', '*@sales.example']);
    expect(evaluate(set, 'data', facts({ ...f, headers: h('"Alice (Corp)" <alice@corp.example>') })).decision.kind).toBe('continue');
    expect(evaluate(set, 'data', facts({ ...f, headers: h('Sales <team@sales.example>') })).decision.kind).toBe('continue');
    const forged = evaluate(set, 'data', facts({ ...f, headers: h('"alice@corp.example" <ceo@corp.example>') })).decision;
    expect(forged).toMatchObject({ kind: 'refuse', rule: 'sender-binding' });
    expect(refusalOf(forged)).toMatchObject({ code: 553, enhanced: '5.7.1', text: 'From: header address not owned by the authenticated user' });
    expect(evaluate(set, 'data', facts({ ...f, headers: h('alice@corp.example, ceo@corp.example') })).decision.kind).toBe('refuse');
    expect(evaluate(set, 'data', facts({ ...f, headers: h('undisclosed') })).decision.kind).toBe('refuse');
  });

  test('a second From: header is checked too', async () => {
    const set = await binding();
    const headers = [
      { name: 'from', value: 'alice@corp.example', decoded: 'alice@corp.example' },
      { name: 'from', value: 'ceo@corp.example', decoded: 'ceo@corp.example' },
    ];
    expect(evaluate(set, 'data', facts({ headers })).decision.kind).toBe('refuse');
  });

  describe('From: as sent through the scanner: encoded-words, display names, groups, repeats', () => {
    const f = alice(['alice@corp.example']);
    const judge = async (...from: string[]) => {
      const message = `${from.map((v) => `From: ${v}\r\n`).join('')}Subject: x\r\n\r\nbody\r\n`;
      return evaluate(await binding(), 'data', facts({ ...f, ...dataFacts(scanMessage(message)) })).decision.kind;
    };

    test('an encoded-word that decodes to the user\'s address is not an address (RFC 2047 §5)', async () => {
      expect(await judge('=?utf-8?B?YWxpY2VAY29ycC5leGFtcGxl?=')).toBe('refuse');
      expect(await judge('=?utf-8?Q?alice=40corp.example?=')).toBe('refuse');
    });

    test('the trace names the entry and why it was not vouched for', async () => {
      const message = 'From: =?utf-8?Q?ceo?=@corp.example\r\n\r\nbody\r\n';
      const ev = evaluate(await binding(), 'data', facts({ ...f, ...dataFacts(scanMessage(message)) }));
      expect(ev.trace.flatMap((t) => t.why ?? [])).toContain('sender_binding: From: "=?utf-8?Q?ceo?=@corp.example" is not an address smtpgate can vouch for (an encoded-word in the address)');
    });

    test('an encoded display name is fine unless it shows another address', async () => {
      expect(await judge('=?utf-8?Q?Alice_M=C3=BCller?= <alice@corp.example>')).toBe('continue');
      expect(await judge('=?utf-8?B?Y2VvQGNvcnAuZXhhbXBsZQ==?= <alice@corp.example>')).toBe('refuse');
    });

    test('groups and folded lists pass when every address is owned', async () => {
      expect(await judge('Me: alice@corp.example;')).toBe('continue');
      expect(await judge('Alice <alice@corp.example>,\r\n Me <Alice@Corp.Example>')).toBe('continue');
      expect(await judge('Team: alice@corp.example, ceo@corp.example;')).toBe('refuse');
    });

    test('two addresses in one entry and a second From: header are refused', async () => {
      expect(await judge('alice@corp.example ceo@corp.example')).toBe('refuse');
      expect(await judge('Alice <alice@corp.example>', 'ceo@corp.example')).toBe('refuse');
      expect(await judge('Alice <alice@corp.example>', 'alice@corp.example')).toBe('continue');
    });
  });

  describe('a header block the scan could not read to its end is refused, not passed (issue 14, item 3)', () => {
    // The set has sender_binding and nothing else: no scanIncomplete rule is needed for this.
    const f = alice(['alice@corp.example']);
    const judge = async (message: string) => evaluate(await binding(), 'data', facts({ ...f, ...dataFacts(scanMessage(message)) })).decision;
    const filler = (n: number, value = 'x') => Array.from({ length: n }, (_, i) => `X-Filler-${i}: ${value}\r\n`).join('');
    const FROM_ALICE = 'From: alice@corp.example\r\n';
    const FORGED = 'From: ceo@corp.example\r\n';

    test('a forged From: after the header count limit (1000 fields)', async () => {
      const d = await judge(FROM_ALICE + filler(1000) + FORGED + '\r\nbody\r\n');
      expect(d).toMatchObject({ kind: 'refuse', rule: 'sender-binding' });
      expect(refusalOf(d)).toMatchObject({ code: 553, enhanced: '5.7.1', reason: 'sender_binding' });
    });

    test('a forged From: after the header byte limit (256 KiB)', async () => {
      // 40 fields of 7 KiB: few fields, many bytes.
      const d = await judge(FROM_ALICE + filler(40, 'y'.repeat(7 * 1024)) + FORGED + '\r\nbody\r\n');
      expect(d).toMatchObject({ kind: 'refuse', rule: 'sender-binding' });
    });

    test('a forged address beyond the cut of a From: line longer than the line limit (8 KiB)', async () => {
      // The kept part ends right after a comma: alone it would read as alice's address only.
      const head = 'From: alice@corp.example,';
      const line = head + ' '.repeat(8 * 1024 - head.length) + 'ceo@corp.example\r\n';
      const d = await judge(line + '\r\nbody\r\n');
      expect(d).toMatchObject({ kind: 'refuse', rule: 'sender-binding' });
    });

    test('a header block with no blank line, cut off by the count limit, is refused too', async () => {
      expect((await judge(FROM_ALICE + filler(1001))).kind).toBe('refuse');
    });

    test('many headers, still under the limits, with every From: seen, pass', async () => {
      expect((await judge(filler(998) + FROM_ALICE + '\r\nbody\r\n')).kind).toBe('continue');
      expect((await judge(FROM_ALICE + filler(999) + '\r\nbody\r\n')).kind).toBe('continue');
      // A body longer than every limit changes nothing: only the header block counts.
      expect((await judge(FROM_ALICE + '\r\n' + filler(2000, 'z'.repeat(200)))).kind).toBe('continue');
    });

    test('a part header block over its limit does not hide a From: (only the top block has one that counts)', async () => {
      const part = 'Content-Type: text/plain\r\n' + filler(150) + '\r\nhello\r\n';
      const message = FROM_ALICE + 'Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n' + part + '--b--\r\n';
      expect((await judge(message)).kind).toBe('continue');
    });

    test('an unauthenticated session is still not bound', async () => {
      const d = evaluate(await binding(), 'data', facts({ ...noUser, ...dataFacts(scanMessage(filler(1001) + FORGED + '\r\n')) })).decision;
      expect(d.kind).toBe('continue');
    });
  });
});

describe('relay protection', () => {
  const anon = (recipient: string, over: Partial<SessionFacts> = {}) => facts({ ...noUser, from: 'x@example.org', recipient, ...over });

  test('an empty policy set is never an open relay: 554 5.7.1 relay_denied', () => {
    const d = evaluate(emptyPolicySet('UTC'), 'rcpt', anon('victim@example.net')).decision;
    expect(d).toMatchObject({ kind: 'refuse', rule: 'builtin:relay_protection', action: 'reject' });
    expect(refusalOf(d)).toEqual({ code: 554, enhanced: '5.7.1', text: 'Relay access denied', reason: 'relay_denied' });
  });

  test('an empty policy folder is no open relay either', async () => {
    const set = await policySet({});
    expect(evaluate(set, 'rcpt', anon('victim@example.net')).decision.kind).toBe('refuse');
  });

  test('internal domains, authenticated and trusted clients pass', async () => {
    const set = await policySet({ '00.yaml': 'internalDomains: [corp.example]\ntrustedNetworks: [10.0.0.0/8]\n' });
    expect(evaluate(set, 'rcpt', anon('alice@corp.example')).decision.kind).toBe('continue');
    expect(evaluate(set, 'rcpt', anon('alice@example.net', { authenticated: true, user: { name: 'a', groups: [], addresses: [] } })).decision.kind).toBe('continue');
    expect(evaluate(set, 'rcpt', anon('alice@example.net', { trusted: true })).decision.kind).toBe('continue');
    expect(evaluate(set, 'rcpt', anon('alice@example.net', { ip: '10.1.1.1' })).decision.kind).toBe('continue');
  });

  test('sender-specified routing in an internal address is still relaying', async () => {
    const set = await policySet({ '00.yaml': 'internalDomains: [corp.example]\n' });
    for (const r of ['victim%example.net@corp.example', 'example.net!victim@corp.example', '"victim@example.net"@corp.example', '@corp.example:victim@example.net']) {
      expect(evaluate(set, 'rcpt', anon(r)).decision.kind, r).toBe('refuse');
    }
  });

  test('it runs before the rcpt rules, so an accept rule can\'t open the relay', async () => {
    const set = await policySet('rules:\n  - name: everything\n    stage: rcpt\n    action: accept\n');
    expect(evaluate(set, 'rcpt', anon('victim@example.net')).decision).toMatchObject({ kind: 'refuse', rule: 'builtin:relay_protection' });
  });

  test('an explicit relay_protection rule takes its place, position and reply', async () => {
    const set = await policySet(`
rules:
  - name: partners
    stage: rcpt
    when: { clientIp: 192.0.2.0/24 }
    action: accept
  - name: no-relay
    type: relay_protection
    reply: "550 5.7.1 We are not a relay"
`);
    expect(evaluate(set, 'rcpt', anon('v@example.net', { ip: '192.0.2.5' })).decision).toEqual({ kind: 'accept', rule: 'partners' });
    const d = evaluate(set, 'rcpt', anon('v@example.net')).decision;
    expect(d).toMatchObject({ kind: 'refuse', rule: 'no-relay' });
    expect(refusalOf(d)).toEqual({ code: 550, enhanced: '5.7.1', text: 'We are not a relay', reason: 'relay_denied' });
  });

  test('relayProtection: off removes it', async () => {
    const set = await policySet({ '00.yaml': 'relayProtection: off\n' });
    expect(evaluate(set, 'rcpt', anon('victim@example.net')).decision.kind).toBe('continue');
  });
});

describe('other built-in rule types', () => {
  test('trusted_networks accepts trusted clients (Postfix permit_mynetworks)', async () => {
    const set = await policySet(`
rules:
  - name: mynetworks
    type: trusted_networks
    stage: mail
  - name: printers
    type: trusted_networks
    stage: mail
    networks: [10.9.0.0/16]
  - name: nobody-else
    stage: mail
    action: reject
`);
    expect(evaluate(set, 'mail', facts({ trusted: true })).decision).toEqual({ kind: 'accept', rule: 'mynetworks' });
    expect(evaluate(set, 'mail', facts({ ip: '10.9.1.1' })).decision).toEqual({ kind: 'accept', rule: 'printers' });
    expect(evaluate(set, 'mail', facts()).decision).toMatchObject({ kind: 'refuse', rule: 'nobody-else' });
  });

  test('recipient_domains: a group may only write to listed (and internal) domains', async () => {
    const set = await policySet({
      '00.yaml': 'internalDomains: [corp.example]\n',
      'rules.yaml': 'rules:\n  - name: interns\n    type: recipient_domains\n    when: { group: interns }\n    allow: [partner.example, "*.partner.example"]\n',
    });
    const intern = { user: { name: 'ivan', groups: ['interns'], addresses: [] } };
    expect(evaluate(set, 'rcpt', facts({ ...intern, recipient: 'a@corp.example' })).decision.kind).toBe('continue');
    expect(evaluate(set, 'rcpt', facts({ ...intern, recipient: 'a@eu.partner.example' })).decision.kind).toBe('continue');
    const d = evaluate(set, 'rcpt', facts({ ...intern, recipient: 'a@gmail.example' })).decision;
    expect(refusalOf(d)).toMatchObject({ code: 550, enhanced: '5.7.1', text: 'Recipient domain not allowed for your account' });
    expect(evaluate(set, 'rcpt', facts({ recipient: 'a@gmail.example' })).decision.kind).toBe('continue');
  });

  test('recipient_domains with allowInternal: false allows only the list', async () => {
    const set = await policySet({
      '00.yaml': 'internalDomains: [corp.example]\n',
      'rules.yaml': 'rules:\n  - name: r\n    type: recipient_domains\n    allow: partner.example\n    allowInternal: false\n',
    });
    expect(evaluate(set, 'rcpt', facts({ recipient: 'a@corp.example' })).decision.kind).toBe('refuse');
  });

  test('max_recipients refuses the recipient past the limit with 452 4.5.3', async () => {
    const set = await policySet('rules:\n  - name: max-rcpt\n    type: max_recipients\n    max: 2\n');
    expect(evaluate(set, 'rcpt', facts({ recipient: 'b@x.example', recipients: ['a@x.example'] })).decision.kind).toBe('continue');
    const d = evaluate(set, 'rcpt', facts({ recipient: 'c@x.example', recipients: ['a@x.example', 'b@x.example'] })).decision;
    expect(d).toMatchObject({ kind: 'refuse', action: 'tempfail', rule: 'max-rcpt' });
    expect(refusalOf(d)).toEqual({ code: 452, enhanced: '4.5.3', text: 'Too many recipients', reason: 'too_many_recipients' });
  });

  test('max_size per group: the declared SIZE at mail and the real size at data, 552 5.3.4', async () => {
    const set = await policySet('rules:\n  - name: interns-size\n    type: max_size\n    when: { group: interns }\n    max: 5MB\n');
    const intern = { user: { name: 'ivan', groups: ['interns'], addresses: [] } };
    const atMail = evaluate(set, 'mail', facts({ ...intern, declaredSize: 6_000_000 })).decision;
    expect(refusalOf(atMail)).toEqual({ code: 552, enhanced: '5.3.4', text: 'Message size exceeds the limit for your account', reason: 'message_too_big' });
    expect(evaluate(set, 'mail', facts({ ...intern })).decision.kind).toBe('continue');
    expect(evaluate(set, 'data', facts({ ...intern, messageSize: 5_000_001 })).decision.kind).toBe('refuse');
    expect(evaluate(set, 'data', facts({ ...intern, messageSize: 5_000_000 })).decision.kind).toBe('continue');
    expect(evaluate(set, 'data', facts({ messageSize: 9_000_000 })).decision.kind).toBe('continue');
  });
});

describe('audit mode', () => {
  test('an audit rule is evaluated and reported as "would refuse", but not enforced', async () => {
    const set = await policySet(`
rules:
  - name: would-block
    stage: data
    mode: audit
    when: { header: { X-Mailer: PHPMailer } }
    action: reject
    reply: "550 5.7.1 No scripts"
  - name: tag-data
    stage: data
    when: { messageSizeOver: 1MB }
    action: tempfail
`);
    const headers = [{ name: 'x-mailer', value: 'PHPMailer 6', decoded: 'PHPMailer 6' }];
    const ev = evaluate(set, 'data', facts({ headers, messageSize: 10 }));
    expect(ev.decision.kind).toBe('continue');
    expect(ev.audits).toEqual([{ rule: 'would-block', stage: 'data', action: 'reject', refusal: { code: 550, enhanced: '5.7.1', text: 'No scripts', reason: 'policy' } }]);
    expect(ev.trace[0]).toMatchObject({ rule: 'would-block', result: 'audit', mode: 'audit' });
    // Evaluation goes on after an audit hit: a later rule still decides.
    expect(evaluate(set, 'data', facts({ headers, messageSize: 2_000_000 })).decision).toMatchObject({ kind: 'refuse', rule: 'tag-data' });
  });

  test('an audit require_tls that is met is no audit hit', async () => {
    const set = await policySet('rules:\n  - name: r\n    stage: mail\n    mode: audit\n    action: require_tls\n');
    expect(evaluate(set, 'mail', facts()).audits).toEqual([]);
    expect(evaluate(set, 'mail', facts({ tls: undefined })).audits).toHaveLength(1);
  });
});

describe('the trace', () => {
  test('names each rule evaluated, where it is, whether it matched and why', async () => {
    const set = await policySet('rules:\n  - name: interns-only-internal\n    stage: rcpt\n    when:\n      group: interns\n      recipientDomain: "*.example.net"\n    action: reject\n');
    const ev = evaluate(set, 'rcpt', facts({ user: { name: 'ivan', groups: ['interns'], addresses: [] }, recipient: 'x@mx.example.net' }));
    const entry = ev.trace.find((t) => t.rule === 'interns-only-internal')!;
    expect(entry.result).toBe('matched');
    expect(entry.source?.file).toMatch(/rules\.yaml$/);
    expect(entry.source?.line).toBe(2);
    expect(entry.why).toEqual(['group: "ivan" is in "interns"', 'recipientDomain: "mx.example.net" matches "*.example.net"']);
    expect(entry.outcome).toBe('reject: 550 5.7.1 Recipient refused by policy');
  });
});

describe('helpers for the listener', () => {
  test('limitRefusal: 451 4.7.1 naming the rule, the rate and the wait; 421 at connect', async () => {
    const set = await policySet('rules:\n  - name: hourly\n    stage: [connect, mail]\n    action: limit\n    rate: 50/1h\n    per: ip\n');
    const [atMail] = evaluate(set, 'mail', facts()).limits;
    expect(limitRefusal(atMail!, 1500)).toEqual({ code: 451, enhanced: '4.7.1', text: 'Policy limit "hourly" reached (50 per 1h, counted per ip); try again in 2 seconds', reason: 'rate_limited' });
    const [atConnect] = evaluate(set, 'connect', facts()).limits;
    expect(limitRefusal(atConnect!, 1000)).toMatchObject({ code: 421, enhanced: '4.7.0' });
  });

  test('buildUserFacts: attributes as given; a login that is an address owns itself when none are listed', () => {
    expect(buildUserFacts('alice', { addresses: ['alice@corp.example'], groups: ['staff'] })).toEqual({ name: 'alice', groups: ['staff'], addresses: ['alice@corp.example'] });
    expect(buildUserFacts('Carol@Corp.Example', undefined)).toEqual({ name: 'Carol@Corp.Example', groups: [], addresses: ['carol@corp.example'] });
    expect(buildUserFacts('dave', { addresses: [], groups: [] }).addresses).toEqual([]);
  });

  test('dataFacts: what a finished scan gives the data stage', () => {
    const scan = scanMessage('From: a@corp.example\r\nContent-Type: application/x-msdownload; name=a.exe\r\n\r\nMZ\r\n');
    expect(dataFacts(scan)).toEqual({
      headers: scan.headers,
      headersTruncated: false,
      attachments: [{ contentType: 'application/x-msdownload', filenames: ['a.exe'], depth: 0 }],
      scanIncomplete: false,
      messageSize: scan.size,
    });
  });
});
