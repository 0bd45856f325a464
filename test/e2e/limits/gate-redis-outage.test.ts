/**
 * Redis dies under a running proxy with limits.onStoreFailure: deny. Mail is refused with a
 * temporary error at once (never a stall, never a 250 without limits), /readyz says why, and
 * mail flows again once Redis is back on the same port.
 */
import { expect, onTestFinished, test } from 'vitest';
import { metricValue, startGate } from '../../helpers/gate.js';
import { startRecordingBackend } from '../../helpers/backends.js';
import { authenticatedSession, closeBackend, eventually, forThisTest, stopGate } from '../../helpers/sessions.js';
import { describeWith } from '../../helpers/programs.js';
import { startRedisServer, type RedisProcess } from '../../helpers/redis.js';

/** A bound, not a speed test: DESIGN promises no SMTP command stalls a second on Redis. */
const STALL_LIMIT_MS = 1000;

async function redisForThisTest(port?: number): Promise<RedisProcess> {
  const r = await startRedisServer(port ? { port } : {});
  onTestFinished(() => r.kill());
  return r;
}

async function readyz(metricsPort: number): Promise<{ status: number; body: { status: string; reasons: string[] } }> {
  const res = await fetch(`http://127.0.0.1:${metricsPort}/readyz`);
  return { status: res.status, body: (await res.json()) as { status: string; reasons: string[] } };
}

describeWith(['redis-server'], 'the proxy when Redis goes away (onStoreFailure: deny)', () => {
  test('Redis killed mid-session: the next MAIL gets 451 4.3.0 within a second, /readyz answers 503 with the reason, and mail flows again once Redis is back', async () => {
    const redis = await redisForThisTest();
    const backend = await forThisTest(startRecordingBackend(), closeBackend);
    const gate = await forThisTest(
      startGate({
        backendPort: backend.port,
        config: {
          limits: {
            store: { kind: 'redis', url: `redis://127.0.0.1:${redis.port}`, keyPrefix: 'outage' },
            onStoreFailure: 'deny',
            messagesPerUser: '100/1h',
          },
        },
      }),
      stopGate,
    );
    expect((await readyz(gate.metricsPort)).status).toBe(200);
    const c = await authenticatedSession(gate);
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
    expect((await c.cmd('RSET')).code).toBe(250);

    await redis.kill();
    const started = performance.now();
    const refused = await c.cmd('MAIL FROM:<alice@corp.test>');
    const ms = performance.now() - started;
    expect(refused.raw).toBe('451 4.3.0 Rate limiter temporarily unavailable; try again in 60 seconds');
    expect(ms, `MAIL took ${ms.toFixed(0)} ms with Redis gone`).toBeLessThan(STALL_LIMIT_MS);
    expect(await metricValue(gate, 'smtpgate_refusals_total', { stage: 'mail', reason: 'limiter_unavailable', code_class: '4xx' })).toBe(1);

    const down = await readyz(gate.metricsPort);
    expect(down.status).toBe(503);
    expect(down.body).toEqual({ status: 'not_ready', reasons: ['limiter store unreachable and limits.onStoreFailure is deny'] });
    expect(await metricValue(gate, 'smtpgate_limiter_store_up')).toBe(0);
    expect(backend.messages).toHaveLength(0);

    // Back on the same port (empty: it ran without persistence).
    await redisForThisTest(redis.port);
    await eventually(async () => {
      const r = await c.cmd('MAIL FROM:<alice@corp.test>');
      if (r.code !== 250) expect(r.raw).toMatch(/^451 4\.3\.0 /);
      return r.code === 250;
    }, 'MAIL accepted again once Redis is back', 10_000);
    expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    expect((await c.cmd('Subject: after the outage\r\n\r\nbody\r\n.')).code).toBe(250);
    expect(backend.messages).toHaveLength(1);
    expect(await readyz(gate.metricsPort)).toEqual({ status: 200, body: { status: 'ready', reasons: [] } });
    expect(gate.logs.filter((l) => String(l.msg).startsWith('limiter store unavailable')), 'the outage is logged once').toHaveLength(1);
    await c.cmd('QUIT');
  });
});
