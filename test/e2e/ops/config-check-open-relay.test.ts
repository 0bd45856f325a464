/**
 * `smtpgate check` and `smtpgate run` refuse an open relay, as Postfix refuses to run without
 * reject_unauth_destination: a listener that takes mail without AUTH while relay protection is
 * not enforced lets anyone send to any domain. Only the loudly named acknowledgement
 * `iUnderstandThisIsAnOpenRelay: true` (for a backend that refuses relaying itself) lets it
 * start, and then every start says so. The real binary, on real files.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { startGate, writeGateFiles, type StartGateOptions } from '../../helpers/gate.js';
import { runCli } from '../../helpers/cli.js';
import { forThisTest, stopGate } from '../../helpers/sessions.js';

/** A port-25 style listener: no AUTH required, no trusted networks. */
const MX = `
  - name: mx
    address: 127.0.0.1:0
    tls: starttls
    requireTls: false
    requireAuth: false
`;
/** AUTH required everywhere; only trusted networks send without it. */
const AUTH_ONLY = `
  - name: submission
    address: 127.0.0.1:0
    requireAuth: true
    trusted:
      networks: [10.20.0.0/16]
`;

/** The ways relay protection ends up not enforced: each makes an MX listener an open relay. */
const RELAY_PROTECTION_OFF: Record<string, string> = {
  'relayProtection: off': 'relayProtection: off\n',
  'relayProtection: false': 'relayProtection: false\n',
  'a relay_protection rule in mode: audit': 'rules:\n  - name: no-relay\n    type: relay_protection\n    mode: audit\n',
  'a relay_protection rule in mode: off': 'rules:\n  - name: no-relay\n    type: relay_protection\n    mode: off\n',
};

function files(listeners: string, policy: string, extra = ''): StartGateOptions {
  return {
    backendPort: 2,
    listenersYaml: listeners,
    extraYaml: `policies: policies\n${extra}`,
    beforeStart: async (dir) => {
      await mkdir(path.join(dir, 'policies'));
      await writeFile(path.join(dir, 'policies', '00-settings.yaml'), `internalDomains: [corp.example]\n${policy}`);
    },
  };
}

async function written(opts: StartGateOptions): Promise<string> {
  const f = await writeGateFiles(opts);
  await opts.beforeStart?.(f.dir);
  return f.configFile;
}

describe('an open relay is refused', () => {
  test.each(Object.keys(RELAY_PROTECTION_OFF))('check exits 1 on a listener without AUTH and %s, naming the listener line and the fix', async (name) => {
    const config = await written(files(MX, RELAY_PROTECTION_OFF[name]!));
    const res = await runCli(['check', '--config', config]);
    expect(res.code).toBe(1);
    // The requireAuth line of the listener (line 6 of the config writeGateFiles writes).
    expect(res.stderr).toMatch(new RegExp(`${config.replaceAll('.', '\\.')}:\\d+: listeners\\[0\\]\\.requireAuth: listener "mx" takes mail without AUTH and relay protection is not enforced`));
    expect(res.stderr).toContain('open relay');
    expect(res.stderr).toContain('iUnderstandThisIsAnOpenRelay: true');
    expect(res.stdout).not.toContain('OK');
  });

  test('run exits 1 on the same config without opening a port', async () => {
    const config = await written(files(MX, 'relayProtection: off\n'));
    const res = await runCli(['run', '--config', config]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('nothing was started');
    expect(res.stderr).toContain('listeners[0].requireAuth: listener "mx" takes mail without AUTH');
    expect(res.stdout).not.toContain('listening');
  });

  test('relay protection on (the default) with a listener without AUTH passes', async () => {
    const config = await written(files(MX, ''));
    const res = await runCli(['check', '--config', config]);
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    expect(res.stdout).toContain('OK');
  });

  test('relayProtection: off where every listener requires AUTH passes: trusted networks are exempt from it anyway', async () => {
    const config = await written(files(AUTH_ONLY, 'relayProtection: off\n'));
    const res = await runCli(['check', '--config', config]);
    expect(res.code).toBe(0);
    expect(res.stdout).toContain('OK');
  });
});

describe('the acknowledgement', () => {
  test('iUnderstandThisIsAnOpenRelay: true lets check pass, with a warning naming the listener', async () => {
    const config = await written(files(MX, 'relayProtection: off\n', 'iUnderstandThisIsAnOpenRelay: true\n'));
    const res = await runCli(['check', '--config', config]);
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/warning: OPEN RELAY: listener "mx" takes mail without AUTH/);
    expect(res.stdout).toContain('OK');
  });

  test('every start with the acknowledgement logs the open relay as a warning', async () => {
    const gate = await forThisTest(startGate({ ...files(MX, 'relayProtection: off\n', 'iUnderstandThisIsAnOpenRelay: true\n'), logLevel: 'info' }), stopGate);
    const warnings = gate.logs.filter((l) => l.level === 'warn').map((l) => String(l.msg));
    expect(warnings.some((m) => m.startsWith('OPEN RELAY: listener "mx"'))).toBe(true);
  });

  test('must be true: false is the same as absent', async () => {
    const config = await written(files(MX, 'relayProtection: off\n', 'iUnderstandThisIsAnOpenRelay: false\n'));
    expect((await runCli(['check', '--config', config])).code).toBe(1);
  });
});

describe('a policy reload that would open the relay', () => {
  test('is refused whole: the rules in force stay, the failure is counted and logged', async () => {
    const gate = await forThisTest(startGate({ ...files(MX, ''), logLevel: 'info' }), stopGate);
    const before = gate.app.policy;
    await writeFile(path.join(gate.dir, 'policies', '00-settings.yaml'), 'internalDomains: [corp.example]\nrelayProtection: off\n');
    expect(await gate.app.reloadPolicies()).toBe(false);
    expect(gate.app.policy).toBe(before);
    expect(await gate.app.metrics.registry.getSingleMetricAsString('smtpgate_reloads_total')).toMatch(/component="policy",result="failure"} 1/);
    expect(gate.logs.some((l) => l.level === 'error' && JSON.stringify(l).includes('takes mail without AUTH'))).toBe(true);
  });
});

describe('check runs the policy lint', () => {
  test('a rule that can never run is printed as a warning; check still exits 0', async () => {
    const config = await written({
      ...files(MX, ''),
      beforeStart: async (dir) => {
        await mkdir(path.join(dir, 'policies'));
        await writeFile(path.join(dir, 'policies', '00-settings.yaml'), 'internalDomains: [corp.example]\n');
        await writeFile(
          path.join(dir, 'policies', '10-rules.yaml'),
          '- name: everyone\n  stage: mail\n  action: accept\n- name: never\n  stage: mail\n  when: { sender: "*@spam.test" }\n  action: reject\n',
        );
      },
    });
    const res = await runCli(['check', '--config', config]);
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/warning: .*10-rules\.yaml:4: rule "never" can never run at mail.*\[unreachable\]/);
  });
});
