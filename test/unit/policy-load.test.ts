/**
 * Loading a policy folder: the whole set is validated or refused, and every problem names the
 * file, the line, the rule and the field, with what was expected and what was found.
 */
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { ConfigError } from '../../src/parsing/errors.js';
import { loadPolicySet } from '../../src/policy/load.js';
import type { PolicyIssue } from '../../src/parsing/yaml-source.js';
import { writePolicyDir } from '../fixtures/policy/load-set.js';

async function problems(files: Record<string, string>): Promise<{ dir: string; issues: PolicyIssue[]; message: string }> {
  const dir = await writePolicyDir(files);
  try {
    await loadPolicySet(dir);
  } catch (err) {
    if (err instanceof ConfigError) return { dir, issues: err.issues as PolicyIssue[], message: err.message };
    throw err;
  }
  throw new Error('expected the policy set to be refused');
}

describe('loading a policy folder', () => {
  test('reads .yaml and .yml files in name order, skips sub-folders, and keeps rule order', async () => {
    const dir = await writePolicyDir({
      '20-b.yml': 'rules:\n  - name: b1\n    stage: mail\n    action: accept\n',
      '10-a.yaml': '- name: a1\n  stage: mail\n  action: accept\n- name: a2\n  stage: mail\n  action: accept\n',
      'tests/not-rules.yaml': 'tests: []\n',
      'README.txt': 'not yaml',
    });
    const set = await loadPolicySet(dir);
    expect(set.files).toEqual([path.join(dir, '10-a.yaml'), path.join(dir, '20-b.yml')]);
    expect(set.byStage.mail.map((r) => r.name)).toEqual(['a1', 'a2', 'b1']);
    expect(set.ruleCount).toBe(3);
  });

  test('a rule at two stages is one rule per stage, each with its own default reply', async () => {
    const set = await loadPolicySet(await writePolicyDir({ 'r.yaml': 'rules:\n  - name: sb\n    type: sender_binding\n' }));
    expect(set.byStage.mail.map((r) => r.name)).toEqual(['sb']);
    expect(set.byStage.data.map((r) => r.name)).toEqual(['sb']);
    expect(set.ruleCount).toBe(1);
    // Sender binding reads From: of a signed-in client's message only (kinds: untrusted/trusted × anonymous/signed in).
    expect(set.scans).toEqual([false, true, false, true]);
  });

  test('a folder that can\'t be read is a ConfigError naming it', async () => {
    await expect(loadPolicySet('/nonexistent/policies')).rejects.toThrow(/\/nonexistent\/policies: cannot read the policy folder/);
  });
});

describe('problems name file, line, rule and field', () => {
  test('an unknown rule field, with a suggestion', async () => {
    const { dir, issues, message } = await problems({ 'r.yaml': 'rules:\n  - name: block-exe\n    stgae: data\n    action: reject\n' });
    expect(issues).toEqual([
      {
        kind: 'unknown_field',
        file: path.join(dir, 'r.yaml'),
        path: 'rules[0].stgae',
        line: 3,
        rule: 'block-exe',
        message: 'rule "block-exe": unknown key "stgae"; did you mean "stage"?',
      },
    ]);
    expect(message).toBe(`${path.join(dir, 'r.yaml')}:3: rules[0].stgae: rule "block-exe": unknown key "stgae"; did you mean "stage"?`);
  });

  test('an unknown condition, with a suggestion', async () => {
    const { issues } = await problems({ 'r.yaml': 'rules:\n  - name: r\n    stage: connect\n    when:\n      clientIP: 10.0.0.0/8\n    action: reject\n' });
    expect(issues[0]).toMatchObject({ kind: 'unknown_field', path: 'rules[0].when.clientIP', line: 5, message: 'rule "r": unknown key "clientIP"; did you mean "clientIp"?' });
  });

  test('an unknown setting at the top of a file', async () => {
    const { issues } = await problems({ 's.yaml': 'internalDomain: corp.example\n' });
    expect(issues[0]).toMatchObject({ kind: 'unknown_field', path: 'internalDomain', line: 1, message: 'unknown key "internalDomain"; did you mean "internalDomains"?' });
  });

  test('a bad CIDR, inline', async () => {
    const { issues } = await problems({ 'r.yaml': 'rules:\n  - name: nets\n    stage: connect\n    when:\n      clientIp:\n        - 10.0.0.0/8\n        - 10.0.0.0/33\n    action: reject\n' });
    expect(issues).toEqual([
      expect.objectContaining({
        kind: 'bad_cidr',
        path: 'rules[0].when.clientIp[1]',
        line: 7,
        rule: 'nets',
        message: 'rule "nets": expected an address or CIDR such as 10.0.0.0/8 or 2001:db8::/32, found "10.0.0.0/33"',
      }),
    ]);
  });

  test('a bad CIDR in a list file names the list file and line, and where it is used', async () => {
    const { dir, issues } = await problems({
      'r.yaml': 'rules:\n  - name: nets\n    stage: connect\n    when: { clientIp: file:lists/nets.txt }\n    action: reject\n',
      'lists/nets.txt': '# ok\n10.0.0.0/8\nnot-a-net\n',
    });
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatchObject({ kind: 'bad_cidr', file: path.join(dir, 'lists/nets.txt'), line: 3, rule: 'nets' });
    expect(issues[0]!.message).toBe(`expected an address or CIDR such as 10.0.0.0/8 or 2001:db8::/32, found "not-a-net" (list file used at ${path.join(dir, 'r.yaml')}:4 rules[0].when.clientIp in rule "nets")`);
  });

  test('a missing list file', async () => {
    const { issues } = await problems({ 'r.yaml': 'rules:\n  - name: r\n    stage: mail\n    when: { sender: file:nope.txt }\n    action: reject\n' });
    expect(issues[0]).toMatchObject({ path: 'rules[0].when.sender', line: 4 });
    expect(issues[0]!.message).toMatch(/^rule "r": cannot read list file "nope.txt": ENOENT/);
  });

  test('a condition the stage can\'t know yet', async () => {
    const { issues } = await problems({ 'r.yaml': 'rules:\n  - name: early\n    stage: connect\n    when:\n      sender: "*@spam.example"\n    action: reject\n' });
    expect(issues[0]).toMatchObject({ path: 'rules[0].when.sender', line: 5, message: 'rule "early": sender is not known yet at stage connect; it is known from stage mail on' });
  });

  test('a value of the wrong type', async () => {
    const { issues } = await problems({ 'r.yaml': 'rules:\n  - name: r\n    stage: mail\n    when:\n      authenticated: "yes"\n    action: reject\n' });
    expect(issues[0]).toMatchObject({ path: 'rules[0].when.authenticated', line: 5, message: 'rule "r": expected boolean, found string "yes"' });
  });

  test('authMethod takes password, app_password or certificate, from the auth stage on', async () => {
    const bad = await problems({ 'r.yaml': 'rules:\n  - name: r\n    stage: mail\n    when:\n      authMethod: apppassword\n    action: reject\n' });
    expect(bad.issues[0]).toMatchObject({ path: 'rules[0].when.authMethod', line: 5 });
    expect(bad.issues[0]!.message).toContain('expected one of "password" | "app_password" | "certificate", found "apppassword"');
    const early = await problems({ 'r.yaml': 'rules:\n  - name: r\n    stage: connect\n    when: { authMethod: password }\n    action: reject\n' });
    expect(early.issues[0]!.message).toMatch(/authMethod.*auth/);
  });

  test('an unknown stage or action', async () => {
    const { issues } = await problems({ 'r.yaml': 'rules:\n  - name: r\n    stage: helo\n    action: deny\n' });
    expect(issues.map((i) => [i.path, i.message])).toEqual([
      ['rules[0].stage', 'rule "r": expected one of "connect" | "auth" | "mail" | "rcpt" | "data", found string "helo"'],
      ['rules[0].action', 'rule "r": expected one of "accept" | "reject" | "tempfail" | "require_tls" | "require_auth" | "add_header" | "limit", found string "deny"'],
    ]);
  });

  test('a reply code that doesn\'t suit the action, and a mismatched enhanced code', async () => {
    const { issues } = await problems({
      'r.yaml': 'rules:\n  - name: a\n    stage: mail\n    action: reject\n    reply: "451 4.7.1 later"\n  - name: b\n    stage: mail\n    action: tempfail\n    reply: "451 5.7.1 later"\n',
    });
    expect(issues.map((i) => [i.path, i.line, i.message])).toEqual([
      ['rules[0].reply', 5, 'rule "a": reject needs a 5xx code, found 451; use tempfail for a 4xx; write it as "550 5.7.1 Text"'],
      ['rules[1].reply', 9, 'rule "b": the enhanced code 5.7.1 must start with 4 to go with 451 (RFC 3463); write it as "550 5.7.1 Text"'],
    ]);
  });

  test('a field that belongs to another action', async () => {
    const { issues } = await problems({ 'r.yaml': 'rules:\n  - name: r\n    stage: mail\n    action: accept\n    reply: "250 fine"\n' });
    expect(issues[0]).toMatchObject({ path: 'rules[0].reply', message: 'rule "r": "reply" only goes with action reject, tempfail, require_tls or require_auth; this rule has action: accept' });
  });

  test('add_header refuses line breaks, message-changing names, and the data stage', async () => {
    const { issues } = await problems({
      'r.yaml': [
        'rules:',
        '  - name: inject',
        '    stage: mail',
        '    action: add_header',
        '    header: "X-Tag: a\\r\\nBcc: victim@example.net"',
        '  - name: from',
        '    stage: mail',
        '    action: add_header',
        '    header: "From: ceo@corp.example"',
        '  - name: late',
        '    stage: data',
        '    action: add_header',
        '    header: "X-Late: yes"',
        '',
      ].join('\n'),
    });
    expect(issues.map((i) => [i.rule, i.path])).toEqual([
      ['inject', 'rules[0].header'],
      ['from', 'rules[1].header'],
      ['late', 'rules[2].stage'],
    ]);
    expect(issues[0]!.message).toMatch(/one line of printable ASCII \(no CR, LF or control characters\)/);
    expect(issues[1]!.message).toMatch(/won't add From/);
    expect(issues[2]!.message).toMatch(/add_header can't run at data/);
  });

  test('a limit with a bad rate, or keyed by something the stage doesn\'t know', async () => {
    const { issues } = await problems({
      'r.yaml': 'rules:\n  - name: a\n    stage: mail\n    action: limit\n    rate: 50 per hour\n    per: user\n  - name: b\n    stage: connect\n    action: limit\n    rate: 5/1m\n    per: user\n',
    });
    expect(issues.map((i) => [i.path, i.message])).toEqual([
      ['rules[0].rate', 'rule "a": expected a rate such as "100/1h" or "5/15m", found "50 per hour"'],
      ['rules[1].per', 'rule "b": per: user is not known at stage connect; use a stage from auth on, or per: ip'],
    ]);
  });

  test('mode: audit on a rule that never refuses', async () => {
    const { issues } = await problems({ 'r.yaml': 'rules:\n  - name: r\n    stage: mail\n    mode: audit\n    action: accept\n' });
    expect(issues[0]).toMatchObject({ path: 'rules[0].mode', message: expect.stringContaining('mode: audit is for rules that refuse') });
  });

  test('a rule name used twice, even across files, and the reserved name "default"', async () => {
    const { dir, issues } = await problems({
      '10.yaml': 'rules:\n  - name: dup\n    stage: mail\n    action: accept\n',
      '20.yaml': 'rules:\n  - name: dup\n    stage: rcpt\n    action: accept\n  - name: default\n    stage: rcpt\n    action: accept\n',
    });
    expect(issues.map((i) => [i.file, i.line, i.message])).toEqual([
      [path.join(dir, '20.yaml'), 2, `rule "dup": the name is already used by the rule at ${path.join(dir, '10.yaml')}:2; names must be unique (they label metrics and log lines)`],
      [path.join(dir, '20.yaml'), 5, 'rule "default": "default" is reserved for the fall-through decision; choose another name'],
    ]);
  });

  test('a rule without action or stage', async () => {
    const { issues } = await problems({ 'r.yaml': 'rules:\n  - name: a\n    stage: mail\n  - name: b\n    action: reject\n' });
    expect(issues.map((i) => [i.line, i.message])).toEqual([
      [2, 'rule "a": required: an action (accept, reject, tempfail, require_tls, require_auth, add_header, limit) or a type (sender_binding, relay_protection, …)'],
      [4, 'rule "b": required: stage (connect, auth, mail, rcpt or data), the point in the session where the rule runs'],
    ]);
  });

  test('a built-in type at a stage it can\'t run at, or without its parameter', async () => {
    const { issues } = await problems({ 'r.yaml': 'rules:\n  - name: m\n    type: max_recipients\n    stage: mail\n    max: 10\n  - name: s\n    type: max_size\n' });
    expect(issues.map((i) => i.message)).toEqual([
      'rule "m": a type: max_recipients rule runs at rcpt, found mail',
      'rule "s": required: max, the largest message allowed (e.g. max: 10MB)',
    ]);
  });

  test('a regular expression that doesn\'t compile, a bad time range, a bad time zone', async () => {
    const { issues } = await problems({
      '00.yaml': 'timezone: Mars/Olympus\n',
      'r.yaml': 'rules:\n  - name: r\n    stage: data\n    when:\n      header: { Subject: "([a-z" }\n      time: "25:00-26:00"\n    action: reject\n',
    });
    expect(issues.map((i) => [i.path, i.line])).toEqual([
      ['timezone', 1],
      ['rules[0].when.header.Subject', 5],
      ['rules[0].when.time', 6],
    ]);
    expect(issues[0]!.message).toBe('unknown time zone "Mars/Olympus"; expected an IANA name such as "Europe/Berlin" or "UTC"');
    expect(issues[1]!.message).toMatch(/^rule "r": not a valid regular expression/);
  });

  test('a setting given in two files', async () => {
    const { dir, issues } = await problems({ '00.yaml': 'internalDomains: [a.example]\n', '10.yaml': '\ninternalDomains: [b.example]\n' });
    expect(issues[0]).toMatchObject({ file: path.join(dir, '10.yaml'), line: 2, message: `internalDomains is already set at ${path.join(dir, '00.yaml')}:1; set each setting in one file only` });
  });

  test('YAML syntax errors name the line', async () => {
    const { issues } = await problems({ 'r.yaml': 'rules:\n  - name: a\n    stage: [mail\n' });
    expect(issues[0]!.message).toMatch(/^not valid YAML/);
    expect(issues[0]!.line).toBeGreaterThanOrEqual(3);
  });

  test('problems in several files are all reported at once', async () => {
    const { issues } = await problems({
      'a.yaml': 'rules:\n  - name: a\n    stage: mail\n    action: nope\n',
      'b.yaml': 'rules:\n  - name: b\n    stage: mail\n    when: { senderDomain: "bad@domain" }\n    action: reject\n',
    });
    expect(issues.map((i) => i.rule)).toEqual(['a', 'b']);
  });

  test('a file that is a bare list of rules gives lines in that file', async () => {
    const { issues } = await problems({ 'r.yaml': '- name: ok\n  stage: mail\n  action: accept\n- name: bad\n  stage: mail\n  action: reject\n  bogus: 1\n' });
    expect(issues[0]).toMatchObject({ path: 'rules[1].bogus', line: 7, rule: 'bad' });
  });
});
