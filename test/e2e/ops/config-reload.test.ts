/**
 * SIGHUP re-reads the config: an invalid file changes nothing; of a valid one, the parts that
 * can change live are applied and every other change is reported as needing a restart.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { metricValue, startGate, type Gate } from '../../helpers/gate.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { authenticatedSession, envelope, eventually } from '../../helpers/sessions.js';
import type { SmtpTalk } from '../../helpers/smtp-talk.js';
import { diffConfig } from '../../../src/config/diff.js';
import { parseConfig } from '../../../src/config/load.js';

let backend: RecordingBackend;
let gate: Gate;
let original: string;
const configFile = () => path.join(gate.dir, 'smtpgate.yaml');

beforeAll(async () => {
  backend = await startRecordingBackend();
  gate = await startGate({ backendPort: backend.port, config: { limits: { recipientsPerMessage: 50 } } });
  original = await readFile(configFile(), 'utf8');
});
afterAll(async () => {
  await gate?.stop();
  await backend?.close();
});

test('diffConfig sorts changes into live and restart-only', () => {
  const base = 'listeners:\n  - name: a\n    address: 127.0.0.1:2500\n    tls: none\n    requireTls: false\n    requireAuth: false\nbackend:\n  address: 127.0.0.1:25\n';
  const a = parseConfig(base, '/x/a.yaml');
  const b = parseConfig(base.replace('2500', '2501') + 'log:\n  level: debug\nlimits:\n  recipientsPerMessage: 5\n  store:\n    kind: redis\n    url: redis://127.0.0.1:6379\n', '/x/a.yaml');
  expect(diffConfig(a, b)).toEqual({ applied: ['limits', 'log.level'], needRestart: ['limits.store', 'listeners'] });
  expect(diffConfig(a, a)).toEqual({ applied: [], needRestart: [] });
});

test('a valid change applies the live parts and reports the rest as needing a restart', async () => {
  await writeFile(configFile(), original.replace('recipientsPerMessage: 50', 'recipientsPerMessage: 7').replace('hostname: gate.test', 'hostname: other.test').replace('level: debug', 'level: info'));
  const diff = await gate.app.reloadConfig();
  expect(diff).toEqual({ applied: ['limits', 'log.level'], needRestart: ['hostname'] });
  expect(gate.app.config.limits.recipientsPerMessage).toBe(7);
  expect(gate.app.limits.config.recipientsPerMessage).toBe(7);
  expect(gate.app.config.hostname).toBe('gate.test');
  expect(gate.logs.some((l) => l.msg === 'changed settings take effect only after a restart: hostname')).toBe(true);
});

test('an invalid config changes nothing, is logged and counted', async () => {
  const before = await metricValue(gate, 'smtpgate_reloads_total', { component: 'config', result: 'failure' });
  await writeFile(configFile(), original.replace('recipientsPerMessage: 50', 'recipientsPerMessag: 1'));
  expect(await gate.app.reloadConfig()).toBeUndefined();
  expect(gate.app.config.limits.recipientsPerMessage).toBe(7);
  expect(await metricValue(gate, 'smtpgate_reloads_total', { component: 'config', result: 'failure' })).toBe(before + 1);
  expect(gate.logs.some((l) => l.msg === 'config reload failed; the running config stays in force' && String(l.problems).includes('did you mean "recipientsPerMessage"'))).toBe(true);
});

test('smtpgate_config_last_reload_successful and its timestamp follow the last config reload: 0 after a failure, 1 again after the next good one', async () => {
  const labels = { component: 'config' };
  const successful = () => metricValue(gate, 'smtpgate_config_last_reload_successful', labels);
  const lastSuccess = () => metricValue(gate, 'smtpgate_config_last_reload_success_timestamp_seconds', labels);
  const started = Date.now() / 1000;
  await writeFile(configFile(), original);
  expect(await gate.app.reloadConfig()).toBeDefined();
  expect(await successful()).toBe(1);
  const good = await lastSuccess();
  expect(good).toBeGreaterThanOrEqual(Math.floor(started));

  await writeFile(configFile(), original.replace('recipientsPerMessage: 50', 'recipientsPerMessag: 1'));
  expect(await gate.app.reloadConfig()).toBeUndefined();
  expect(await successful()).toBe(0);
  expect(await lastSuccess()).toBe(good);

  await writeFile(configFile(), original);
  expect(await gate.app.reloadConfig()).toBeDefined();
  expect(await successful()).toBe(1);
  expect(await lastSuccess()).toBeGreaterThanOrEqual(good);
});

test('a log level reload reaches the connections already open: a session begun at warn gets transaction records once info is reloaded, and none after warn again', async () => {
  const reloadLevel = async (level: string) => {
    await writeFile(configFile(), original.replace('level: debug', `level: ${level}`));
    expect((await gate.app.reloadConfig())?.applied).toContain('log.level');
  };
  const send = async (c: SmtpTalk, id: string) => {
    const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    expect((await c.cmd(`Message-ID: <${id}@client.test>\r\n\r\nhello\r\n.`)).code).toBe(250);
  };
  // The session's records, by the client's port: at warn there is no connect line to name it.
  const records = (c: SmtpTalk) => gate.logs.filter((l) => l.msg === 'transaction' && l.port === c.localPort).map((l) => l.messageId);

  await reloadLevel('warn');
  const c = await authenticatedSession(gate);
  await send(c, 'at-warn-1');
  await reloadLevel('info');
  await send(c, 'at-info-1');
  await eventually(() => records(c).length >= 1, 'the record of the message sent at info');
  await reloadLevel('warn');
  await send(c, 'at-warn-2');
  await reloadLevel('info');
  await send(c, 'at-info-2');
  await eventually(() => records(c).length >= 2, 'the record of the second message sent at info');
  expect(records(c)).toEqual(['<at-info-1@client.test>', '<at-info-2@client.test>']);
  await writeFile(configFile(), original);
  await gate.app.reloadConfig();
});
