/**
 * `listeners[].greetingDelay` over real sockets: how long a client waits for its 220, who is
 * greeted at once (trusted networks, as named by a PROXY header when there is one), and that
 * talking before the greeting still earns smtp-server's early-talker 421.
 *
 * Timings are bounds, not exact values: "at once" is well under the 100 ms default, "waits" is
 * at least the configured delay less a little timer slack.
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { metricValue, startGate, type Gate } from '../../helpers/gate.js';
import { listener, type ListenerInput } from '../../helpers/config.js';
import { eventually } from '../../helpers/sessions.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { SmtpTalk, type Reply } from '../../helpers/smtp-talk.js';

/** Well under the 100 ms default, with room for a busy shared CPU. */
const AT_ONCE_MS = 60;
/** Node may fire a timer a millisecond early; the rest is slack for measuring from the client. */
const SLACK_MS = 10;

let backend: RecordingBackend;
let gate: Gate;

const plain = (name: string, extra: Partial<ListenerInput>) => listener(name, { tls: 'none', requireTls: false, requireAuth: false, ...extra });

beforeAll(async () => {
  backend = await startRecordingBackend();
  gate = await startGate({
    backendPort: backend.port,
    listeners: [
      // 127.0.0.2 is trusted; the tests' own 127.0.0.1 is not.
      plain('internet', { trusted: { networks: ['127.0.0.2/32'] } }),
      plain('patient', { greetingDelay: '300ms' }),
      plain('eager', { greetingDelay: 0 }),
      plain('balanced', { trusted: { networks: ['10.0.0.0/8'] }, proxyProtocol: { trusted: ['127.0.0.1/32'] } }),
    ],
  });
});
afterAll(async () => {
  await gate?.stop();
  await backend?.close();
});

/** Milliseconds from opening the connection to the 220, and the open session. */
async function timeToGreeting(listener: string, opts: { localAddress?: string; preamble?: Buffer } = {}): Promise<{ ms: number; c: SmtpTalk }> {
  const start = performance.now();
  const c = await SmtpTalk.connect(gate.port(listener), opts);
  const greeting = await c.read();
  const ms = performance.now() - start;
  expect(greeting.code).toBe(220);
  return { ms, c };
}

const proxyV1 = (src: string) => Buffer.from(`PROXY TCP4 ${src} 192.0.2.25 40000 25\r\n`, 'latin1');

describe('the default greetingDelay (100ms)', () => {
  test('an untrusted client waits for its greeting', async () => {
    const { ms, c } = await timeToGreeting('internet');
    expect(ms).toBeGreaterThanOrEqual(100 - SLACK_MS);
    c.close();
  });

  test('a client in the trusted networks is greeted at once and can go on as usual', async () => {
    const { ms, c } = await timeToGreeting('internet', { localAddress: '127.0.0.2' });
    expect(ms).toBeLessThan(AT_ONCE_MS);
    expect((await c.cmd('EHLO app.corp.test')).code).toBe(250);
    expect((await c.cmd('QUIT')).code).toBe(221);
  });

  test('an untrusted early talker gets 421 instead of the greeting and is disconnected', async () => {
    const c = await SmtpTalk.connect(gate.port('internet'));
    c.write('EHLO early.test\r\n');
    expect((await c.read()).raw).toMatch(/^421 .*You talk too soon/);
    await c.closed;
  });
});

describe('a configured greetingDelay', () => {
  test('300ms: an untrusted client waits at least that long', async () => {
    const { ms, c } = await timeToGreeting('patient');
    expect(ms).toBeGreaterThanOrEqual(300 - SLACK_MS);
    c.close();
  });

  test('300ms: an early talker still gets 421', async () => {
    const c = await SmtpTalk.connect(gate.port('patient'));
    c.write('EHLO early.test\r\n');
    expect((await c.read()).raw).toMatch(/^421 .*You talk too soon/);
    await c.closed;
  });

  test('300ms: a client that talks after 150 ms, past the default wait but inside this one, still gets 421', async () => {
    const c = await SmtpTalk.connect(gate.port('patient'));
    // The pause is the subject here: it puts the first line inside the configured wait.
    await sleep(150);
    c.write('EHLO early.test\r\n');
    expect((await c.read()).raw).toMatch(/^421 .*You talk too soon/);
    await c.closed;
  });

  test('0: an untrusted client is greeted at once', async () => {
    const { ms, c } = await timeToGreeting('eager');
    expect(ms).toBeLessThan(AT_ONCE_MS);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    c.close();
  });
});

describe('behind a load balancer (PROXY protocol): the address in the header decides', () => {
  test('a trusted client address in the header is greeted at once, though the balancer itself is not trusted', async () => {
    const { ms, c } = await timeToGreeting('balanced', { preamble: proxyV1('10.1.2.3') });
    expect(ms).toBeLessThan(AT_ONCE_MS);
    c.close();
  });

  test('an untrusted client address in the header waits, though the balancer is on loopback', async () => {
    const { ms, c } = await timeToGreeting('balanced', { preamble: proxyV1('203.0.113.9') });
    expect(ms).toBeGreaterThanOrEqual(100 - SLACK_MS);
    c.close();
  });
});

describe('the connection limits count a client from the moment it connects, not from its greeting', () => {
  const DELAY_MS = 2000;
  let limited: Gate;
  beforeAll(async () => {
    limited = await startGate({
      backendPort: backend.port,
      listeners: [plain('slow', { greetingDelay: `${DELAY_MS}ms` })],
      config: { limits: { concurrentPerIp: 2 } },
    });
  });
  afterAll(async () => {
    await limited?.stop();
  });

  /**
   * The first reply, and whether it came within `ms` (else the client is waiting for its
   * greeting). The read stays pending either way, so the greeting is not lost.
   */
  async function firstReply(c: SmtpTalk, ms: number): Promise<{ soon: boolean; reply: Promise<Reply> }> {
    let timer: NodeJS.Timeout | undefined;
    const reply = c.read();
    const quiet = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
    const soon = await Promise.race([reply.then(() => true), quiet]);
    clearTimeout(timer);
    return { soon, reply };
  }

  test('a third connection from one address, while two wait for their greeting, is refused at once; one of the two leaving ungreeted frees its slot', { timeout: 20_000 }, async () => {
    const started = performance.now();
    const first = await SmtpTalk.connect(limited.port('slow'));
    const second = await SmtpTalk.connect(limited.port('slow'));
    const third = await SmtpTalk.connect(limited.port('slow'));
    expect((await third.read()).raw).toMatch(/^421 4\.7\.0 Too many open connections from your address \(limit 2\)/);
    // At once: the first two are still waiting for their greeting.
    expect(performance.now() - started).toBeLessThan(DELAY_MS);
    await third.closed;
    expect(await metricValue(limited, 'smtpgate_refusals_total', { listener: 'slow', stage: 'connect', reason: 'too_many_connections' })).toBe(1);
    // Never greeted, so no "connect" line: the refusal's own line says who it was.
    const line = limited.logs.find((l) => String(l.msg).startsWith('refused: Too many open connections'));
    expect(line).toMatchObject({ listener: 'slow', client: '127.0.0.1', stage: 'connect', code: 421, enhanced: '4.7.0', reason: 'too_many_connections' });
    expect(line?.session).toEqual(expect.any(String));

    first.close();
    await first.closed;
    // The gate hears of the close a moment later; until then a newcomer is still refused.
    let fourth: { c: SmtpTalk; greeting: Promise<Reply> } | undefined;
    await eventually(async () => {
      const c = await SmtpTalk.connect(limited.port('slow'));
      const { soon, reply } = await firstReply(c, 300);
      if (soon) c.close();
      else fourth = { c, greeting: reply };
      return fourth !== undefined;
    }, 'a connection that waits for its greeting instead of being refused');
    expect((await second.read()).code).toBe(220);
    expect((await fourth!.greeting).code).toBe(220);
    second.close();
    fourth!.c.close();
  });
});
