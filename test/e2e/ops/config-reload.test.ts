/**
 * SIGHUP re-reads the config: an invalid file changes nothing; of a valid one, the parts that
 * can change live are applied and every other change is reported as needing a restart.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { metricValue, startGate, type Gate } from '../../helpers/gate.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
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
