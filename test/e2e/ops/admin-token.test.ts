/**
 * The admin routes (/limits, /limits/clear) can lift lockouts, so with metrics.adminTokenFile
 * they answer only a bearer of the token; /metrics, /healthz and /readyz stay open for probes.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startGate, type Gate } from '../../helpers/gate.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';

const TOKEN = 'a-long-enough-admin-token-0123456789';
let backend: RecordingBackend;
let gate: Gate;

beforeAll(async () => {
  backend = await startRecordingBackend();
  gate = await startGate({
    backendPort: backend.port,
    adminTokenFile: 'admin-token',
    beforeStart: (dir) => writeFile(path.join(dir, 'admin-token'), `${TOKEN}\n`),
  });
});
afterAll(async () => {
  await gate?.stop();
  await backend?.close();
});

test('/limits refuses a request without the token and answers one with it', async () => {
  const base = `http://127.0.0.1:${gate.metricsPort}`;
  expect((await fetch(`${base}/limits`)).status).toBe(401);
  expect((await fetch(`${base}/limits`, { headers: { authorization: 'Bearer wrong' } })).status).toBe(401);
  const ok = await fetch(`${base}/limits`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(ok.status).toBe(200);
  expect(await ok.json()).toHaveProperty('lockedIps');
  expect((await fetch(`${base}/metrics`)).status).toBe(200);
  expect((await fetch(`${base}/healthz`)).status).toBe(200);
});
