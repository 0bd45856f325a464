/**
 * XCLIENT against the real thing: a Postfix smtpd as the legacy server. What Postfix logs is
 * what its operators see, so that is what is checked: the client's own address and login, not
 * smtpgate's.
 */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { ALICE, startGate, type Gate } from '../../helpers/gate.js';
import { startPostfix, type Postfix } from '../../helpers/postfix.js';
import { describeWith } from '../../helpers/programs.js';
import { authenticatedSession, envelope } from '../../helpers/sessions.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

/** A valid users-file name whose xtext form (258 octets) is over Postfix's 255-octet limit. */
const PLUS = { name: '+'.repeat(86), password: 'plus password' };

describeWith(['postfix'], 'XCLIENT to a real Postfix smtpd', () => {
  let postfix: Postfix;
  let gate: Gate;
  beforeAll(async () => {
    postfix = await startPostfix();
    gate = await startGate({ backendPort: postfix.port, users: [ALICE, PLUS] });
  });
  afterAll(async () => {
    await gate?.stop();
    await postfix?.stop();
  });

  /** Sends one message on a session ready for MAIL; returns Postfix's "client=" line for it. */
  async function relayedClientLine(c: SmtpTalk): Promise<string> {
    const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    const final = await c.cmd('Subject: identity\r\n\r\nhello\r\n.');
    const id = /queued as ([0-9A-Za-z]+)/.exec(final.raw)?.[1];
    expect(id, final.raw).toBeDefined();
    return postfix.logLine(new RegExp(`: ${id}: client=`), `the client= line of ${id}`);
  }

  test("Postfix logs the client's own address (127.0.0.2) and its login (sasl_username=alice), and the client gets Postfix's own 250", async () => {
    // The client comes from 127.0.0.2; smtpgate itself connects to Postfix from 127.0.0.1.
    const c = await authenticatedSession(gate, { localAddress: '127.0.0.2' });
    const { mail, rcpt, data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(mail.code).toBe(250);
    expect(rcpt[0]!.code).toBe(250);
    expect(data?.code).toBe(354);
    const final = await c.cmd('Subject: via smtpgate\r\n\r\nhello Postfix\r\n.');
    const queued = /^250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)$/.exec(final.raw);
    expect(queued, final.raw).not.toBeNull();
    const id = queued![1]!;
    await c.cmd('QUIT');

    const client = await postfix.logLine(new RegExp(`postfix/smtpd\\[\\d+\\]: ${id}: client=`), `the client= line of ${id}`);
    expect(client).toMatch(new RegExp(`: ${id}: client=unknown\\[127\\.0\\.0\\.2\\], sasl_method=XCLIENT, sasl_username=alice$`));
    // The proxy's own connection is the only trace of 127.0.0.1.
    expect(postfix.log()).toMatch(/postfix\/smtpd\[\d+\]: connect from \S+\[127\.0\.0\.1\]/);
    // And the message went nowhere: the discard transport took it.
    const delivery = await postfix.logLine(new RegExp(`postfix/discard\\[\\d+\\]: ${id}: to=<bob@corp\\.test>`), `the discard of ${id}`);
    expect(delivery).toMatch(/relay=none, .*status=sent/);
  });

  test("an EHLO name with Postfix's quoting characters (\" < \\) does not cost the client its address or login at Postfix", async () => {
    // Unencoded, the '"' made Postfix read the rest of the XCLIENT line as part of HELO: no
    // ADDR, no LOGIN, and the session judged as smtpgate's own 127.0.0.1 (issue 14, item 2).
    const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true, localAddress: '127.0.0.2' });
    try {
      expect((await c.read()).code).toBe(220);
      expect((await c.cmd('EHLO odd"name<x>\\')).code).toBe(250);
      expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
      expect(await relayedClientLine(c)).toMatch(/: client=unknown\[127\.0\.0\.2\], sasl_method=XCLIENT, sasl_username=alice$/);
    } finally {
      c.close();
    }
  });

  test('a login Postfix cannot hold unchanged (over 255 octets encoded) reaches it as no login, never altered, with the address intact, and smtpgate logs it for the session', async () => {
    const c = await authenticatedSession(gate, { user: PLUS, localAddress: '127.0.0.2' });
    // Before: Postfix refused the whole XCLIENT (501 attribute value too long) and the client got 451.
    expect(await relayedClientLine(c)).toMatch(/: client=unknown\[127\.0\.0\.2\]$/);
    const logged = gate.logs.find((l) => l.msg === 'identity attributes sent to the backend as [UNAVAILABLE]: it could not hold them unchanged');
    expect(logged).toMatchObject({ level: 'warn', backend: `127.0.0.1:${postfix.port}`, attributes: ['LOGIN'] });
    expect(typeof logged!.session).toBe('string');
  });
});
