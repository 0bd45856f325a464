/**
 * /readyz and smtpgate_backend_up follow the backend health checks: ready while a backend
 * answered recently, 503 with a reason once none has.
 */
import { expect, test } from 'vitest';
import { metricValue, startGate } from '../../helpers/gate.js';
import { startRecordingBackend } from '../../helpers/backends.js';
import { authenticatedSession, deadPort, eventually } from '../../helpers/sessions.js';

test('a backend that stops answering turns smtpgate_backend_up to 0 and /readyz to 503', async () => {
  const backend = await startRecordingBackend();
  const gate = await startGate({ backend: { address: `127.0.0.1:${backend.port}`, healthCheckInterval: '200ms', timeouts: { connect: '500ms' } } });
  try {
    const label = { backend: `127.0.0.1:${backend.port}` };
    expect(await metricValue(gate, 'smtpgate_backend_up', label)).toBe(1);
    const ready = await fetch(`http://127.0.0.1:${gate.metricsPort}/readyz`);
    expect(ready.status).toBe(200);
    await backend.close();
    await eventually(async () => (await metricValue(gate, 'smtpgate_backend_up', label)) === 0, 'backend_up to drop to 0');
    await eventually(async () => (await fetch(`http://127.0.0.1:${gate.metricsPort}/readyz`)).status === 503, '/readyz to turn 503');
    const body = (await (await fetch(`http://127.0.0.1:${gate.metricsPort}/readyz`)).json()) as { reasons: string[] };
    expect(body.reasons).toContain('no backend answered a recent health check');
    expect(gate.logs.some((l) => l.msg === 'backend health check: down')).toBe(true);
  } finally {
    await gate.stop();
  }
});

test.each([
  { value: 'not set', status: 503 },
  { value: 'true', status: 503 },
  { value: 'false', status: 200 },
])('no backend answering, backend.requiredForReadiness $value: /readyz is $status; the probes count it down and MAIL gets 451 4.4.1 either way', async ({ value, status }) => {
  const setting = value === 'not set' ? {} : { requiredForReadiness: value === 'true' };
  const port = await deadPort();
  const gate = await startGate({ backend: { address: `127.0.0.1:${port}`, healthCheckInterval: '200ms', ...setting } });
  try {
    // The first round of health checks runs before the listeners open.
    expect(await metricValue(gate, 'smtpgate_backend_up', { backend: `127.0.0.1:${port}` })).toBe(0);
    const ready = await fetch(`http://127.0.0.1:${gate.metricsPort}/readyz`);
    expect(ready.status).toBe(status);
    const body = (await ready.json()) as { reasons: string[] };
    expect(body.reasons.includes('no backend answered a recent health check')).toBe(status === 503);
    const c = await authenticatedSession(gate);
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).raw).toBe('451 4.4.1 Mail server temporarily unreachable, try again later');
    await c.cmd('QUIT');
  } finally {
    await gate.stop();
  }
});
