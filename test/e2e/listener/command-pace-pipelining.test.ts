/**
 * The command-line watch (client.timeouts.commandLine, client.minCommandRate; issue 14 item 5)
 * times a client's line, not smtpgate's own work. A pipelining client (RFC 2920) whose batch
 * is split inside a line by TCP hands smtpgate the line's head with the commands before it;
 * smtp-server reads the rest only once those commands are answered, which waits on the backend.
 * Those seconds are the backend's: a slow backend must not get a well-behaved client cut off
 * with 421 in the middle of its transaction.
 */
import { expect, test } from 'vitest';
import { OPEN_LISTENER_YAML, startGate } from '../../helpers/gate.js';
import { startRawBackend } from '../../helpers/raw-backend.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';
import { closeBackend, forThisTest, stopGate } from '../../helpers/sessions.js';

test.each([
  { what: 'the line deadline', client: '  timeouts:\n    commandLine: 500ms\n  minCommandRate: 0\n' },
  { what: 'the minimum rate', client: '  minCommandRate: 100\n  minCommandRateGrace: 500ms\n' },
])('a pipelined line split by TCP while the backend takes longer than $what to answer is not cut off', async ({ client }) => {
  // Each RCPT waits 1.5 s on the backend: three times the line's allowance.
  const backend = await forThisTest(startRawBackend({ rcptReplyDelayMs: 1_500 }), closeBackend);
  const gate = await forThisTest(startGate({ backendPort: backend.port, listenersYaml: OPEN_LISTENER_YAML, extraYaml: `client:\n${client}` }), stopGate);
  const c = await SmtpTalk.connect(gate.port('open'));
  await c.read();
  expect((await c.cmd('EHLO pipelining.test')).code).toBe(250);
  c.write('MAIL FROM:<alice@corp.test>\r\nRCPT TO:<bob@corp.test>\r\nRCPT TO:<carol@co');
  const mail = await c.read();
  // The rest of the line, at once: smtp-server takes it only once the first RCPT is answered.
  c.write('rp.test>\r\n');
  const replies = [mail.raw];
  for (let i = 0; i < 2; i++) replies.push((await c.read().catch(() => undefined))?.raw ?? '(connection closed)');
  expect(replies.map((r) => r.slice(0, 3))).toEqual(['250', '250', '250']);
  expect((await c.cmd('NOOP')).code).toBe(250);
  await c.cmd('QUIT');
});

test.each([
  { what: 'a command', before: [] as string[], line: 'NOOP and on and on and on and on and on and on' },
  { what: 'an AUTH LOGIN continuation line', before: ['AUTH LOGIN'], line: Buffer.from('alice-with-a-long-name@corp.test').toString('base64') },
])('$what trickled in after STARTTLS is still cut off at its deadline: pausing the clock while smtpgate works never switches the watch off', async ({ before, line }) => {
  const backend = await forThisTest(startRawBackend(), closeBackend);
  const gate = await forThisTest(
    startGate({
      backendPort: backend.port,
      listenersYaml: '\n  - name: submission\n    address: 127.0.0.1:0\n    tls: starttls\n',
      extraYaml: 'client:\n  timeouts:\n    commandLine: 500ms\n  minCommandRate: 0\n',
    }),
    stopGate,
  );
  const c = await SmtpTalk.connect(gate.port('submission'));
  await c.read();
  await c.cmd('EHLO slow.test');
  expect((await c.starttls()).code).toBe(220);
  expect((await c.cmd('EHLO slow.test')).code).toBe(250);
  for (const cmd of before) expect((await c.cmd(cmd)).code).toBe(334);
  let closed = false;
  void c.closed.then(() => (closed = true));
  const reply = c.read();
  for (const ch of `${line}\r\n`) {
    if (closed) break;
    c.write(ch);
    await new Promise((r) => setTimeout(r, 50));
  }
  expect((await reply).raw).toMatch(/^421 4\.4\.2 Command line not completed within /);
  await c.closed;
});
