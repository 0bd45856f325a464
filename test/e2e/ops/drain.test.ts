/**
 * Graceful drain (SIGTERM): readiness drops at once, idle sessions are told 421 4.3.2, a
 * transaction under way may finish, and at the deadline whatever is left is closed — a message
 * still in DATA is aborted without the final dot, never half-sent.
 */
import net from 'node:net';
import { afterEach, expect, test } from 'vitest';
import { ALICE, startGate, type Gate } from '../../helpers/gate.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

let backend: RecordingBackend | undefined;
let gate: Gate | undefined;
afterEach(async () => {
  await gate?.stop();
  await backend?.close();
  gate = undefined;
  backend = undefined;
});

async function setup(drainSeconds: number) {
  backend = await startRecordingBackend();
  gate = await startGate({ backendPort: backend.port, config: { shutdown: { drainSeconds } } });
  return { backend, gate };
}

async function authenticated(g: Gate): Promise<SmtpTalk> {
  const c = await SmtpTalk.connect(g.port('smtps'), { implicitTls: true });
  await c.read();
  await c.cmd('EHLO client.test');
  expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
  return c;
}

test('readiness turns 503 at once, idle sessions get 421 4.3.2, new connections are refused', async () => {
  const { gate: g } = await setup(5);
  expect((await fetch(`http://127.0.0.1:${g.metricsPort}/readyz`)).status).toBe(200);
  const idle = await authenticated(g);
  // A session in a transaction keeps the drain going while we look.
  const busy = await authenticated(g);
  expect((await busy.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
  const port = g.port('smtps');
  const stopping = g.app.stop({ drain: true });
  expect((await idle.read()).raw).toMatch(/^421 4\.3\.2 /);
  await idle.closed;
  const ready = await fetch(`http://127.0.0.1:${g.metricsPort}/readyz`);
  expect(ready.status).toBe(503);
  expect(await ready.json()).toMatchObject({ status: 'not_ready', reasons: ['shutting down'] });
  await expect(
    new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => resolve(s.destroy()));
      s.once('error', reject);
    }),
  ).rejects.toThrow(/ECONNREFUSED/);
  expect((await busy.cmd('QUIT')).code).toBe(221);
  await stopping;
});

test('a transaction under way finishes with 250; the next MAIL is told 421 4.3.2', async () => {
  const { gate: g, backend: b } = await setup(5);
  const c = await authenticated(g);
  expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
  const stopping = g.app.stop({ drain: true });
  expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
  expect((await c.cmd('DATA')).code).toBe(354);
  expect((await c.cmd('Subject: during drain\r\n\r\nstill delivered\r\n.')).code).toBe(250);
  expect(b.messages).toHaveLength(1);
  expect((await c.cmd('MAIL FROM:<alice@corp.test>')).raw).toMatch(/^421 4\.3\.2 /);
  await c.closed;
  await stopping;
});

test('at the deadline a message still in DATA is aborted without the final dot', async () => {
  const { gate: g, backend: b } = await setup(1);
  const c = await authenticated(g);
  await c.cmd('MAIL FROM:<alice@corp.test>');
  await c.cmd('RCPT TO:<bob@corp.test>');
  expect((await c.cmd('DATA')).code).toBe(354);
  c.write('Subject: never finished\r\n\r\npart of a body');
  await g.app.stop({ drain: true });
  await c.closed;
  expect(b.messages).toHaveLength(0);
});

test("a client that never closes its side after the drain's 421 is cut off by smtp-server's half-close deadline: the drain still ends", async () => {
  const { gate: g } = await setup(1);
  // allowHalfOpen: this client does not answer the server's FIN with its own, as a stuck or
  // hostile one might. smtp-server then waits up to 5 s (its HALF_CLOSE_TIMEOUT) before it
  // destroys its socket, so a drain takes up to drainSeconds + 5 s (docs/deployment.md).
  const socket = net.connect({ port: g.port('plain'), host: '127.0.0.1', allowHalfOpen: true });
  try {
    let received = '';
    const greeted = new Promise<void>((resolve) => socket.on('data', (d: Buffer) => (received += d.toString()).includes('\r\n') && resolve()));
    const ended = new Promise<void>((resolve) => socket.once('end', () => resolve()));
    await greeted;
    // stop() resolves once the listening socket is closed, i.e. once every connection is gone.
    await g.app.stop({ drain: true });
    await ended;
    expect(received).toMatch(/^220 [\s\S]*\r\n421 4\.3\.2 /);
    expect(socket.writableEnded, 'the client never ended its side').toBe(false);
  } finally {
    socket.destroy();
  }
});
