/**
 * The backend's reply text reaches the client (issue 14 item 16), so it must reach it as one
 * reply line: RFC 5321 §4.2 reply text is printable characters (textstring). A bare CR, a NUL or
 * another control character in a backend's reply would otherwise go to the client as is: a
 * client that ends a line on a bare CR reads a second reply line the backend wrote (the reply
 * side of SMTP smuggling), and a terminal shows escape sequences. Today smtp-server's send()
 * masks control characters as a backstop (3.21.6); this pins that whatever writes the reply
 * (the command guard's send wrapper, a seams module) keeps doing so.
 */
import { describe, expect, test } from 'vitest';
import { startGate } from '../../helpers/gate.js';
import { startRawBackend } from '../../helpers/raw-backend.js';
import { authenticatedSession, forThisTest, stopGate, closeBackend } from '../../helpers/sessions.js';

/** Any byte that a reply line must not carry: C0 controls but TAB, and DEL. */
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;

describe("control characters in the backend's reply text never reach the client", () => {
  const controls = [
    { what: 'a bare CR followed by a forged reply', text: '\r250 2.1.0 forged' },
    { what: 'a NUL', text: '\0after' },
    { what: 'an escape sequence', text: '\x1b[2J' },
    { what: 'a DEL and a vertical tab', text: '\x7f\x0b' },
  ];
  test.each(controls)('in accepted MAIL and RCPT replies and the final reply: $what', async ({ text }) => {
    const backend = await forThisTest(
      startRawBackend({ mail: `250 2.1.0 Ok${text}`, rcpt: `250 2.1.5 Ok${text}`, final: `250 2.0.0 queued${text}` }),
      closeBackend,
    );
    const gate = await forThisTest(startGate({ backendPort: backend.port }), stopGate);
    const c = await authenticatedSession(gate);
    const mail = await c.cmd('MAIL FROM:<alice@corp.test>');
    const rcpt = await c.cmd('RCPT TO:<bob@corp.test>');
    expect((await c.cmd('DATA')).code).toBe(354);
    const final = await c.cmd('Subject: t\r\n\r\nbody\r\n.');
    for (const r of [mail, rcpt, final]) {
      expect(r.code).toBe(250);
      expect(r.raw).not.toMatch(CONTROL);
    }
    expect(mail.raw.startsWith('250 2.1.0 Ok')).toBe(true);
    // The session is still in step: the next command gets its own reply.
    expect((await c.cmd('NOOP')).code).toBe(250);
    await c.cmd('QUIT');
  });

  test.each(controls)('in refusals of MAIL and RCPT: $what', async ({ text }) => {
    const backend = await forThisTest(startRawBackend({ mail: `250 2.1.0 Ok`, rcpt: `550 5.1.1 no such user${text}` }), closeBackend);
    const gate = await forThisTest(startGate({ backendPort: backend.port }), stopGate);
    const c = await authenticatedSession(gate);
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
    const rcpt = await c.cmd('RCPT TO:<bob@corp.test>');
    expect(rcpt.code).toBe(550);
    expect(rcpt.raw).not.toMatch(CONTROL);
    expect(rcpt.raw.startsWith('550 5.1.1 no such user')).toBe(true);
    expect((await c.cmd('NOOP')).code).toBe(250);
    await c.cmd('QUIT');
  });
});
