/**
 * Client sessions against a running gate, ready for MAIL: the steps every relay test repeats
 * before the part it is about.
 */
import net from 'node:net';
import { expect, onTestFinished } from 'vitest';
import { ALICE, type Gate, type GateUser } from './gate.js';
import { SmtpTalk, type Reply } from './smtp-talk.js';

/**
 * Implicit TLS on the `smtps` listener, EHLO and AUTH PLAIN: the shortest way to a client
 * allowed to send. The connection is dropped when the test ends, pass or fail, so that a
 * failed assertion never leaves the gate's stop() waiting for an open session. Register the
 * gate's and backend's cleanup with onTestFinished *before* opening sessions: those hooks run
 * last-registered first.
 */
export async function authenticatedSession(gate: Gate, opts: { user?: GateUser; localAddress?: string } = {}): Promise<SmtpTalk> {
  const user = opts.user ?? ALICE;
  const c = await readyForAuth(gate, opts);
  expect((await c.authPlain(user.name, user.password)).code).toBe(235);
  return c;
}

/** Implicit TLS on the `smtps` listener, greeting and EHLO: ready for AUTH. Closed when the test ends. */
export async function readyForAuth(gate: Gate, opts: { localAddress?: string } = {}): Promise<SmtpTalk> {
  const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true, localAddress: opts.localAddress });
  // Registered after the gate's stop, so it runs before it (hooks run last-registered first).
  onTestFinished(() => c.close());
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  return c;
}

/** A plain TCP session on a listener without TLS or AUTH (`openListener()` in config.ts), after EHLO. */
export async function openSession(gate: Gate, listener = 'open'): Promise<SmtpTalk> {
  const c = await SmtpTalk.connect(gate.port(listener));
  onTestFinished(() => c.close());
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  return c;
}

/** MAIL, each RCPT and DATA; returns every reply so the caller can check the ones it is about. */
export async function envelope(c: SmtpTalk, from: string, to: string[]): Promise<{ mail: Reply; rcpt: Reply[]; data: Reply | undefined }> {
  const mail = await c.cmd(`MAIL FROM:<${from}>`);
  const rcpt: Reply[] = [];
  if (mail.code !== 250) return { mail, rcpt, data: undefined };
  for (const r of to) rcpt.push(await c.cmd(`RCPT TO:<${r}>`));
  const data = rcpt.some((r) => r.code === 250) ? await c.cmd('DATA') : undefined;
  return { mail, rcpt, data };
}

/**
 * Polls `probe` until it returns true, for state that announces no event (a metric, a log
 * line written after the reply). Bounded: fails after `timeoutMs`.
 */
export async function eventually(probe: () => boolean | Promise<boolean>, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A port on 127.0.0.1 where nothing listens (bound, then released). */
export async function deadPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/**
 * Awaits a resource (gate, backend) for this test only and releases it when the test ends,
 * pass or fail. Hooks run last-registered first, so sessions opened afterwards are closed
 * before the gate is stopped.
 */
export async function forThisTest<T>(start: Promise<T>, release: (r: T) => Promise<unknown>): Promise<T> {
  const resource = await start;
  onTestFinished(async () => {
    await release(resource);
  });
  return resource;
}

/** Releasers for forThisTest. */
export const stopGate = (g: Gate): Promise<void> => g.stop();
export const closeBackend = (b: { close(): Promise<void> }): Promise<void> => b.close();
