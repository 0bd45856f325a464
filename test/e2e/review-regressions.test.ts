/**
 * Findings of the security review, pinned: AUTH inside a transaction, sessions that leave
 * mid-AUTH, and IDN (A-label) addresses.
 */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { ALICE, OPEN_LISTENER_YAML, startGate, type Gate } from '../helpers/gate.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/backends.js';
import { SmtpTalk } from '../helpers/smtp-talk.js';
import { eventually } from '../helpers/sessions.js';
import { startRawBackend } from '../helpers/raw-backend.js';

let backend: RecordingBackend;
let gate: Gate;

beforeAll(async () => {
  backend = await startRecordingBackend();
  gate = await startGate({
    backendPort: backend.port,
    listenersYaml:
      OPEN_LISTENER_YAML +
      '  - name: relay\n    address: 127.0.0.1:0\n    tls: implicit\n    requireAuth: false\n    trusted:\n      networks: [127.0.0.0/8]\n  - name: smtps\n    address: 127.0.0.1:0\n    tls: implicit\n',
  });
});
afterAll(async () => {
  await gate?.stop();
  await backend?.close();
});

test('AUTH inside a mail transaction gets 503 5.5.1 (RFC 4954 §4), so a MAIL judged unauthenticated is never relayed as the user', async () => {
  const c = await SmtpTalk.connect(gate.port('relay'), { implicitTls: true });
  await c.read();
  await c.cmd('EHLO client.test');
  expect((await c.cmd('MAIL FROM:<ceo@corp.test>')).code).toBe(250);
  expect((await c.authPlain(ALICE.name, ALICE.password)).raw).toMatch(/^503 5\.5\.1 /);
  expect((await c.cmd('RSET')).code).toBe(250);
  expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
  c.close();
});

test('clients that hang up while their AUTH is being checked leave no limiter state behind', async () => {
  for (let i = 0; i < 10; i++) {
    const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true });
    await c.read();
    await c.cmd('EHLO client.test');
    c.write(`AUTH PLAIN ${Buffer.from('\0alice\0wrong').toString('base64')}\r\n`);
    c.close();
  }
  await eventually(() => gate.app.limits.openSessions === 0, 'every session to be released');
  // bcrypt finishes after the close: give the last checks time to come back, then look again.
  await new Promise((r) => setTimeout(r, 300));
  expect(gate.app.limits.openSessions).toBe(0);
});

test('an IDN domain in its ASCII form needs no SMTPUTF8 and reaches the backend in that form', async () => {
  // A raw backend, to see the exact bytes: smtp-server would decode the domain again.
  const raw = await startRawBackend({});
  const g = await startGate({ backendPort: raw.port, listenersYaml: OPEN_LISTENER_YAML });
  try {
    const c = await SmtpTalk.connect(g.port('open'));
    await c.read();
    await c.cmd('EHLO client.test');
    expect((await c.cmd('MAIL FROM:<app@xn--bcher-kva.example>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<bob@xn--bcher-kva.example>')).code).toBe(250);
    const wire = raw.connections[0]!.commands.join('\n');
    expect(wire).toContain('MAIL FROM:<app@xn--bcher-kva.example>');
    expect(wire).toContain('RCPT TO:<bob@xn--bcher-kva.example>');
    c.close();
  } finally {
    await g.stop();
    await raw.close();
  }
});
