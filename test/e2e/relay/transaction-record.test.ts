/**
 * The mail log's transaction record, as a mail admin reads it: one `"msg":"transaction"` line
 * per MAIL command, written when the transaction ends however it ends, saying who sent what to
 * whom, from where, and how it ended. Checked against a real Postfix smtpd as the legacy
 * server, whose queue id and per-recipient refusals the record must carry.
 */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { ALICE, startGate, type Gate } from '../../helpers/gate.js';
import { startPostfix, type Postfix } from '../../helpers/postfix.js';
import { describeWith } from '../../helpers/programs.js';
import { authenticatedSession, envelope, eventually, readyForAuth } from '../../helpers/sessions.js';
import type { SmtpTalk } from '../../helpers/smtp-talk.js';

type Line = Record<string, unknown>;

describeWith(['postfix'], 'the transaction record, with a real Postfix behind', () => {
  let postfix: Postfix;
  let gate: Gate;
  beforeAll(async () => {
    // Postfix refuses one mailbox at RCPT, as a legacy server with its own recipient checks does.
    postfix = await startPostfix({
      mainCf: 'smtpd_recipient_restrictions = check_recipient_access texthash:$CONFIG/recipients, permit_mynetworks, reject\n',
      files: { recipients: 'gone@corp.test 550 5.1.1 <gone@corp.test>: Recipient address rejected: User unknown\n' },
    });
    gate = await startGate({ backendPort: postfix.port, users: [ALICE] });
  });
  afterAll(async () => {
    await gate?.stop();
    await postfix?.stop();
  });

  /** The session's transaction records, once `n` of them have been written. */
  async function records(c: SmtpTalk | string, n: number): Promise<Line[]> {
    const session = typeof c === 'string' ? c : await sessionOf(c);
    const mine = () => gate.logs.filter((l) => l.msg === 'transaction' && l.session === session);
    await eventually(() => mine().length >= n, `${n} transaction record(s) of ${session}`);
    return mine();
  }

  /** The session id the gate logged for the connection `c` came from (its local port). */
  async function sessionOf(c: SmtpTalk): Promise<string> {
    const port = c.localPort;
    let line: Line | undefined;
    await eventually(() => (line = gate.logs.find((l) => l.msg === 'connect' && l.port === port)) !== undefined, `the connect line of port ${port}`);
    return String(line!.session);
  }

  test('one message to three recipients, one refused by Postfix: exactly one record, with each recipient\'s code and Postfix\'s queue id', async () => {
    const c = await authenticatedSession(gate);
    const { rcpt, data } = await envelope(c, 'alice@corp.test', ['bob@corp.test', 'gone@corp.test', 'carol@corp.test']);
    expect(rcpt.map((r) => r.code)).toEqual([250, 550, 250]);
    expect(data?.code).toBe(354);
    const final = await c.cmd('Message-ID: <rec-1@client.test>\r\nSubject: three\r\n\r\nhello\r\n.');
    const queueId = /queued as ([0-9A-Za-z]+)$/.exec(final.raw)?.[1];
    expect(queueId, final.raw).toBeDefined();
    await c.cmd('QUIT');
    const session = await sessionOf(c);
    c.close();
    await eventually(() => gate.logs.some((l) => l.msg === 'session closed' && l.session === session), 'the session to close');

    const [record, ...more] = await records(session, 1);
    expect(more, 'exactly one record').toEqual([]);
    expect(record).toMatchObject({
      level: expect.anything(),
      listener: 'smtps',
      client: '127.0.0.1',
      tls: { version: expect.stringMatching(/^TLSv1\.[23]$/), cipher: expect.any(String), sni: 'localhost' },
      auth: { method: 'password', user: 'alice' },
      from: 'alice@corp.test',
      rcpt: [
        { to: 'bob@corp.test', code: 250, by: 'backend' },
        { to: 'gone@corp.test', code: 550, enhanced: '5.1.1', by: 'backend', reason: 'backend_refused' },
        { to: 'carol@corp.test', code: 250, by: 'backend' },
      ],
      messageId: '<rec-1@client.test>',
      backend: `127.0.0.1:${postfix.port}`,
      queueId,
      reply: final.raw,
      outcome: 'relayed',
    });
    expect(record!.size).toBeGreaterThan(30);
    expect(record!.durationMs).toBeGreaterThanOrEqual(0);
    // The queue id is Postfix's own: its log has the message under it.
    await postfix.logLine(new RegExp(`: ${queueId}: message-id=<rec-1@client\\.test>`), `Postfix's message-id line of ${queueId}`);
  });

  test('a refused MAIL is a record too: refused at mail, with the code, the reason and the reply', async () => {
    const c = await readyForAuth(gate);
    // Not signed in: the submission listener requires AUTH.
    const mail = await c.cmd('MAIL FROM:<alice@corp.test>');
    expect(mail.code).toBe(530);
    const [record] = await records(c, 1);
    expect(record).toMatchObject({ from: 'alice@corp.test', rcpt: [], outcome: 'refused', stage: 'mail', code: 530, enhanced: '5.7.0', reason: 'auth_required', reply: mail.raw });
    expect(record).not.toHaveProperty('auth');
  });

  test('RSET, a new MAIL and QUIT: the first transaction is aborted at rcpt, the second refused at rcpt when every recipient was refused', async () => {
    const c = await authenticatedSession(gate);
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
    expect((await c.cmd('RSET')).code).toBe(250);
    // Written at the RSET, not at the next MAIL.
    const [reset] = await records(c, 1);
    expect(reset).toMatchObject({ outcome: 'aborted', stage: 'rcpt' });
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<gone@corp.test>')).code).toBe(550);
    await c.cmd('QUIT');
    const [first, second] = await records(c, 2);
    expect(first).toMatchObject({ rcpt: [{ to: 'bob@corp.test', code: 250 }], outcome: 'aborted', stage: 'rcpt' });
    expect(first).not.toHaveProperty('queueId');
    expect(second).toMatchObject({ rcpt: [{ to: 'gone@corp.test', code: 550 }], outcome: 'refused', stage: 'rcpt', code: 550, enhanced: '5.1.1', reason: 'backend_refused' });
  });

  test('a message refused at DATA (a bare LF: SMTP smuggling) is refused at data, and nothing reached Postfix', async () => {
    const c = await authenticatedSession(gate);
    const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    const final = await c.cmd('Message-ID: <smuggle@client.test>\r\nSubject: x\r\n\r\nline\n.\r\nMAIL FROM:<evil@x>\r\n.');
    expect(final.code).toBe(550);
    const [record] = await records(c, 1);
    expect(record).toMatchObject({ outcome: 'refused', stage: 'data', code: 550, reason: 'smuggling', messageId: '<smuggle@client.test>' });
    expect(record).not.toHaveProperty('queueId');
  });

  test('a failed sign-in\'s refusal line names the client address, the user and the reason', async () => {
    const c = await readyForAuth(gate, { localAddress: '127.0.0.3' });
    expect((await c.authPlain('alice', 'not her password')).code).toBe(535);
    let line: Line | undefined;
    await eventually(() => (line = gate.logs.find((l) => l.stage === 'auth' && l.client === '127.0.0.3')) !== undefined, 'the refusal line');
    expect(line).toMatchObject({ client: '127.0.0.3', user: 'alice', stage: 'auth', code: 535, enhanced: '5.7.8', reason: 'auth_failed' });
  });
});
