/**
 * Reloading the policy folder under a running proxy: a session keeps the rules it started
 * with, new sessions get the new ones, and a broken change is refused whole, with the old
 * rules left in force and the problem logged with file, rule and field.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { expect, test } from 'vitest';
import { metricValue, startGate, type Gate } from '../../helpers/gate.js';
import { startRecordingBackend } from '../../helpers/backends.js';
import { authenticatedSession, closeBackend, eventually, forThisTest, stopGate } from '../../helpers/sessions.js';

const SETTINGS = 'internalDomains: [corp.example]\n';

const BLOCK_ALICE = `rules:
  - name: block-alice
    stage: mail
    when:
      sender: alice@corp.example
    action: reject
    reply: "550 5.7.1 Alice is blocked by the new rules"
`;

/** A gate whose policies/ folder holds only the settings; returns the folder too. */
async function gateWithPolicyFolder(): Promise<{ gate: Gate; policies: string }> {
  const backend = await forThisTest(startRecordingBackend(), closeBackend);
  const gate = await forThisTest(
    startGate({
      backendPort: backend.port,
      config: { policies: 'policies' },
      beforeStart: async (dir) => {
        await mkdir(path.join(dir, 'policies'));
        await writeFile(path.join(dir, 'policies', '00-settings.yaml'), SETTINGS);
      },
    }),
    stopGate,
  );
  return { gate, policies: path.join(gate.dir, 'policies') };
}

async function mailFrom(gate: Gate, from = 'alice@corp.example'): Promise<string> {
  const c = await authenticatedSession(gate);
  const reply = await c.cmd(`MAIL FROM:<${from}>`);
  c.close();
  return reply.raw;
}

test('a session opened before a policy change keeps the old rules; new sessions get the new ones', async () => {
  const { gate, policies } = await gateWithPolicyFolder();
  const old = await authenticatedSession(gate);
  expect(await mailFrom(gate)).toMatch(/^250 /);

  await writeFile(path.join(policies, '20-block.yaml'), BLOCK_ALICE);
  expect(await gate.app.reloadPolicies()).toBe(true);
  expect(gate.app.policy.byStage.mail.map((r) => r.name)).toContain('block-alice');

  // Connected, greeted and authenticated under the old set: its MAIL is judged by it.
  expect((await old.cmd('MAIL FROM:<alice@corp.example>')).code).toBe(250);
  await old.cmd('QUIT');
  expect(await mailFrom(gate)).toBe('550 5.7.1 Alice is blocked by the new rules');
});

test('the folder watcher picks up a changed rule file without a reload call', async () => {
  const { gate, policies } = await gateWithPolicyFolder();
  const reloadsBefore = await metricValue(gate, 'smtpgate_reloads_total', { component: 'policy', result: 'success' });
  await writeFile(path.join(policies, '20-block.yaml'), BLOCK_ALICE);
  // The folder is polled every 2 s.
  await eventually(async () => (await metricValue(gate, 'smtpgate_reloads_total', { component: 'policy', result: 'success' })) > reloadsBefore, 'the watcher reloads the policies', 8_000);
  expect(await mailFrom(gate)).toBe('550 5.7.1 Alice is blocked by the new rules');
});

test('an invalid change (unknown field, YAML syntax error) is refused whole: reloadPolicies() is false, the old rules stay in force, the failure is counted and logged with file, rule and field', async () => {
  const { gate, policies } = await gateWithPolicyFolder();
  const file = path.join(policies, '20-block.yaml');
  await writeFile(file, BLOCK_ALICE);
  expect(await gate.app.reloadPolicies()).toBe(true);
  expect(await mailFrom(gate)).toBe('550 5.7.1 Alice is blocked by the new rules');
  const failures = () => metricValue(gate, 'smtpgate_reloads_total', { component: 'policy', result: 'failure' });
  const failuresBefore = await failures();

  // A misspelled field: the rule would lose its condition and block everyone.
  await writeFile(file, BLOCK_ALICE.replace('    when:\n', '    whne:\n'));
  expect(await gate.app.reloadPolicies()).toBe(false);
  expect(await failures()).toBeGreaterThan(failuresBefore);
  const unknownField = gate.logs.findLast((l) => l.msg === 'policy reload failed; the previous rules stay in force');
  expect(unknownField, 'the reload failure log line').toMatchObject({ level: 'error' });
  expect(String(unknownField!.problems)).toContain(`${file}:`);
  expect(String(unknownField!.problems)).toMatch(/rules\[0\]\.whne: rule "block-alice": unknown key "whne"; did you mean "when"\?/);
  // Old rules in force: alice is still blocked, bob is still fine.
  expect(await mailFrom(gate)).toBe('550 5.7.1 Alice is blocked by the new rules');
  expect(await mailFrom(gate, 'bob@corp.example')).toMatch(/^250 /);

  const failuresMid = await failures();
  await writeFile(file, 'rules:\n  - name: broken\n    stage: [mail\n');
  expect(await gate.app.reloadPolicies()).toBe(false);
  expect(await failures()).toBeGreaterThan(failuresMid);
  const syntax = gate.logs.findLast((l) => l.msg === 'policy reload failed; the previous rules stay in force');
  expect(String(syntax!.problems)).toMatch(new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+: not valid YAML`));
  expect(await mailFrom(gate)).toBe('550 5.7.1 Alice is blocked by the new rules');
  expect(gate.app.policy.byStage.mail.map((r) => r.name)).toContain('block-alice');
});
