/**
 * The admin routes (/limits, /limits/clear) can lift lockouts, so with metrics.adminTokenFile
 * they answer only a bearer of the token; /metrics, /healthz and /readyz stay open for probes.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'vitest';
import { type Gate } from '../../helpers/gate.js';
import { gateTest } from '../../helpers/fixtures.js';

const TOKEN = 'a-long-enough-admin-token-0123456789';
gateTest.override('gateOptions', {
  adminTokenFile: 'admin-token',
  beforeStart: (dir) => writeFile(path.join(dir, 'admin-token'), `${TOKEN}\n`),
});

gateTest('/limits refuses a request without the token and answers one with it', async ({ gate }) => {
  const base = `http://127.0.0.1:${gate.metricsPort}`;
  expect((await fetch(`${base}/limits`)).status).toBe(401);
  expect((await fetch(`${base}/limits`, { headers: { authorization: 'Bearer wrong' } })).status).toBe(401);
  const ok = await fetch(`${base}/limits`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(ok.status).toBe(200);
  expect(await ok.json()).toHaveProperty('lockedIps');
  expect((await fetch(`${base}/metrics`)).status).toBe(200);
  expect((await fetch(`${base}/healthz`)).status).toBe(200);
});
