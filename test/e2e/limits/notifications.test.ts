/**
 * Suspension notices with the real binary (dist/): when the compromised-account brake suspends
 * a user, smtpgate mails the user and the admins, through nodemailer's SMTP transport straight
 * to the backend (or notifications.relay), once per suspension, however often the brake trips
 * during it and on however many instances; and the session that tripped it is never held up.
 *
 * The brake "trips again during the suspension" the way it does in production: a message whose
 * DATA was under way when the account was suspended is relayed, and its bytes hit the bytes
 * quota, which counts toward the brake again. That leaves the suspension as it is: no second
 * suspension, so nothing to notify.
 */
import { copyFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import { ALICE } from '../../helpers/gate.js';
import type { ConfigInput } from '../../helpers/config.js';
import { startRecordingBackend, type RecordedMessage, type RecordingBackend } from '../../helpers/backends.js';
import { startChildGate, scrapeMetric, type ChildGate } from '../../helpers/child-gate.js';
import { closeBackend, deadPort, eventually, forThisTest } from '../../helpers/sessions.js';
import { describeWith } from '../../helpers/programs.js';
import { dropPrefix, SHARED_REDIS_URL, uniquePrefix } from '../../helpers/redis.js';
import { startAuthHook } from '../../helpers/auth-hook.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const SHIPPED_TEMPLATE = path.join(ROOT, 'deploy/notifications/suspension.txt');
const FROM = 'smtpgate-notices@corp.test';
const ADMINS = ['security@corp.test', 'postmaster@corp.test'];
const ATTRIBUTES = 'alice:\n  addresses: [alice@corp.test, "*@sales.corp.test"]\n';

/**
 * messagesPerUser 2/1h: the third MAIL is the quota hit, and with quotaHits 1 it suspends.
 * bytesPerUser 2000/1h: a message of 3000 bytes relayed afterwards is a second quota hit.
 */
function brakeConfig(extra: Partial<ConfigInput> = {}, notifications: Partial<NonNullable<ConfigInput['notifications']>> = {}): Partial<ConfigInput> {
  return {
    limits: { messagesPerUser: '2/1h', bytesPerUser: '2000/1h', brake: { quotaHits: 1, window: '1h' } },
    notifications: { from: FROM, admins: ADMINS, template: 'suspension.txt', ...notifications },
    ...extra,
  };
}

async function gate(backend: RecordingBackend, config: Partial<ConfigInput>, opts: { auth?: NonNullable<ConfigInput['auth']>; identity?: 'none' } = {}): Promise<ChildGate> {
  return forThisTest(
    startChildGate({
      backendPort: backend.port,
      ...(opts.identity ? { backend: { identity: opts.identity } } : {}),
      auth: opts.auth ?? { users: 'users', attributes: 'attributes.yaml' },
      config,
      beforeStart: async (dir) => {
        await copyFile(SHIPPED_TEMPLATE, path.join(dir, 'suspension.txt'));
        await writeFile(path.join(dir, 'attributes.yaml'), ATTRIBUTES);
      },
    }),
    (g) => g.stop(),
  );
}

async function signedIn(port: number, user = ALICE.name, password = ALICE.password): Promise<SmtpTalk> {
  const c = await SmtpTalk.connect(port, { implicitTls: true });
  onTestFinished(() => c.close());
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  expect((await c.authPlain(user, password)).code).toBe(235);
  return c;
}

/** A session in DATA: MAIL, RCPT and DATA answered, the message not yet sent. */
async function inData(port: number): Promise<SmtpTalk> {
  const c = await signedIn(port);
  expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
  expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
  expect((await c.cmd('DATA')).code).toBe(354);
  return c;
}

/** `small` small messages (what is left of messagesPerUser), then the MAIL one over it: its reply. */
async function tripBrake(c: SmtpTalk, small: number, from = 'alice@corp.test'): Promise<string> {
  for (let i = 0; i < small; i++) {
    expect((await c.cmd(`MAIL FROM:<${from}>`)).raw).toMatch(/^250 /);
    expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    expect((await c.cmd('Subject: small\r\n\r\nsmall\r\n.')).code).toBe(250);
  }
  return (await c.cmd(`MAIL FROM:<${from}>`)).raw;
}

const BIG_BODY = `Subject: big\r\n\r\n${'x'.repeat(70).concat('\r\n').repeat(43)}.`;

const SUSPENDED = '550 5.7.1 Account suspended after repeatedly exceeding its sending quota; nothing is relayed, contact your administrator';

function notices(backend: RecordingBackend): RecordedMessage[] {
  return backend.messages.filter((m) => m.from === FROM);
}

/** The header block of a recorded message, unfolded, as [name, value] pairs in order. */
function headers(m: RecordedMessage): [string, string][] {
  const text = m.data.toString('utf8');
  const head = text.slice(0, text.indexOf('\r\n\r\n')).replace(/\r\n[ \t]+/g, ' ');
  return head.split('\r\n').map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]);
}

function header(m: RecordedMessage, name: string): string[] {
  return headers(m)
    .filter(([n]) => n === name)
    .map(([, v]) => v);
}

/** The body as text: quoted-printable (nodemailer's choice for long lines) decoded. */
function bodyText(m: RecordedMessage): string {
  const text = m.data.toString('utf8');
  const body = text.slice(text.indexOf('\r\n\r\n') + 4);
  if (!/quoted-printable/i.test(header(m, 'content-transfer-encoding')[0] ?? '')) return body;
  return Buffer.from(body.replace(/=\r\n/g, '').replace(/=([0-9A-F]{2})/g, (_x, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1').toString('utf8');
}

function logsOf(g: ChildGate, msg: string): Record<string, unknown>[] {
  return g.logs.filter((l) => l.msg === msg || String(l.msg).startsWith(msg));
}

describe('suspension notices (real binary)', () => {
  test('a user who trips the brake gets one notice at their own address and the admins one, at the backend, even when the brake trips again during the suspension', async () => {
    const backend = await forThisTest(startRecordingBackend(), closeBackend);
    const g = await gate(backend, brakeConfig());
    const port = g.port('smtps');

    const held = await inData(port);
    const c = await signedIn(port);
    expect(await tripBrake(c, 1)).toBe(SUSPENDED);
    // The session goes on as usual: the notice is not its business.
    expect((await c.cmd('NOOP')).code).toBe(250);
    await eventually(() => notices(backend).length === 2, 'the user and the admin notice at the backend', 10_000);

    // The message that was in DATA at the suspension is relayed; its bytes are a second quota hit.
    expect((await held.cmd(BIG_BODY)).code).toBe(250);
    await eventually(() => logsOf(g, 'quota ran out while the account is suspended').length === 1, 'the brake trips again');
    expect(logsOf(g, 'account suspended')).toHaveLength(1);
    expect(logsOf(g, 'suspension notice already claimed')).toHaveLength(0);

    const sent = notices(backend);
    expect(sent.map((m) => m.to)).toEqual(expect.arrayContaining([['alice@corp.test'], ADMINS]));
    expect(sent).toHaveLength(2);
    const session = logsOf(g, 'account suspended')[0]!.session;
    for (const m of sent) {
      expect(header(m, 'from')).toEqual([FROM]);
      expect(header(m, 'subject')).toEqual(['Mail account alice suspended: it kept exceeding its sending quota']);
      expect(header(m, 'auto-submitted')).toEqual(['auto-generated']);
      expect(header(m, 'message-id')).toEqual([expect.stringMatching(/^<smtpgate\.suspension\.[0-9a-f-]+@gate\.test>$/)]);
      expect(Number.isNaN(Date.parse(header(m, 'date')[0]!))).toBe(false);
      const body = bodyText(m);
      expect(body).toContain('1 quota hit within 1h (the last: the message quota)');
      expect(body).toContain('until an administrator clears it');
      expect(body).toContain(`last client: 127.0.0.1 (session ${String(session)} in smtpgate's log)`);
      expect(body).toContain('smtpgate limits clear alice --config');
      // Not through smtpgate's listener: the backend saw smtpgate's own EHLO, no XCLIENT for a client.
      expect(m.xclient).toEqual({});
    }
    expect(header(sent.find((m) => m.to.length === 1)!, 'to')).toEqual(['alice@corp.test']);
    expect(header(sent.find((m) => m.to.length === 2)!, 'to')).toEqual([ADMINS.join(', ')]);
    expect(await scrapeMetric(g.metricsPort, 'smtpgate_notifications_total', { result: 'sent' })).toBe(2);
    expect(await scrapeMetric(g.metricsPort, 'smtpgate_account_suspensions_total')).toBe(1);
  });

  test('a relay that is down leaves the session alone: the client gets its 550 and goes on, the failure is logged with the session and counted', async () => {
    const backend = await forThisTest(startRecordingBackend(), closeBackend);
    const g = await gate(backend, brakeConfig({}, { relay: { address: `127.0.0.1:${await deadPort()}` }, retries: 0 }));
    const c = await signedIn(g.port('smtps'));
    expect(await tripBrake(c, 2)).toBe(SUSPENDED);
    expect((await c.cmd('RSET')).code).toBe(250);
    await eventually(() => logsOf(g, 'suspension notice failed: given up').length === 2, 'both notices given up', 10_000);
    const session = logsOf(g, 'account suspended')[0]!.session;
    for (const line of logsOf(g, 'suspension notice failed: given up')) {
      expect(line).toMatchObject({ session, user: 'alice', attempts: 1, err: expect.stringMatching(/ECONNREFUSED/) });
    }
    expect(await scrapeMetric(g.metricsPort, 'smtpgate_notifications_total', { result: 'failed' })).toBe(2);
    expect(await scrapeMetric(g.metricsPort, 'smtpgate_notifications_total', { result: 'sent' })).toBe(0);
    expect((await c.cmd('QUIT')).code).toBe(221);
    expect(notices(backend)).toEqual([]);
  });

  test('a relay that accepts and never answers holds up nothing: the session is answered while the notice waits', async () => {
    const backend = await forThisTest(startRecordingBackend(), closeBackend);
    const silent = net.createServer(() => {});
    const connected = new Promise<void>((resolve) => silent.once('connection', () => resolve()));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', () => resolve()));
    onTestFinished(() => new Promise<void>((resolve) => silent.close(() => resolve())));
    const g = await gate(backend, brakeConfig({}, { relay: { address: `127.0.0.1:${(silent.address() as net.AddressInfo).port}` } }));
    const c = await signedIn(g.port('smtps'));
    expect(await tripBrake(c, 2)).toBe(SUSPENDED);
    await connected;
    // The notice's connection waits for a greeting that never comes; the client is answered.
    expect((await c.cmd('NOOP')).code).toBe(250);
    expect((await c.cmd('MAIL FROM:<alice@corp.test>')).raw).toBe(SUSPENDED);
    expect((await c.cmd('QUIT')).code).toBe(221);
    await g.stop();
  });

  test('a hostile login from the directory (a line separator, "Bcc:", a placeholder, an address list) adds no header and no recipient', async () => {
    const backend = await forThisTest(startRecordingBackend(), closeBackend);
    const hostile = 'mallory\u2028Bcc: victim@elsewhere.test\u0085{{reason}}';
    const hook = await forThisTest(
      startAuthHook({ users: { mallory: { password: 'mallory password 1', canonical: hostile, addresses: ['mallory,victim@elsewhere.test'] } } }),
      (h) => h.stop(),
    );
    // (The recording backend's XCLIENT would choke on such a login; identity is not the subject here.)
    const g = await gate(backend, brakeConfig(), { auth: { backend: ['http'], http: { url: hook.url } }, identity: 'none' });
    const c = await signedIn(g.port('smtps'), 'mallory', 'mallory password 1');
    expect(await tripBrake(c, 2, 'mallory@corp.test')).toBe(SUSPENDED);
    await eventually(() => logsOf(g, 'suspension notice sent').length === 1, 'the admin notice is sent', 10_000);
    // The login is no address and the directory's "address" is a list: only the admins are told.
    expect(logsOf(g, 'suspension notice: the user has no address')).toHaveLength(1);
    const [m] = notices(backend);
    expect(notices(backend)).toHaveLength(1);
    expect(m!.to).toEqual(ADMINS);
    expect(headers(m!).map(([n]) => n)).toEqual(expect.not.arrayContaining(['bcc']));
    expect(header(m!, 'subject')).toEqual(['Mail account mallory?Bcc: victim@elsewhere.test?{{reason}} suspended: it kept exceeding its sending quota']);
    expect(m!.data.toString('utf8')).not.toContain('victim@elsewhere.test\r\n');
  });
});

describeWith(['redis-server'], 'suspension notices across instances sharing Redis (real binary)', () => {
  test('the instance whose quota hit suspends the user sends the notices; a second instance where the brake trips again sends none', async () => {
    const backend = await forThisTest(startRecordingBackend(), closeBackend);
    const prefix = uniquePrefix('notices');
    onTestFinished(() => dropPrefix(SHARED_REDIS_URL, prefix));
    const config = brakeConfig({ limits: { store: { kind: 'redis', url: SHARED_REDIS_URL, keyPrefix: prefix }, messagesPerUser: '2/1h', bytesPerUser: '2000/1h', brake: { quotaHits: 1, window: '1h' } } });
    const [a, b] = await Promise.all([gate(backend, config), gate(backend, config)]);

    const heldOnB = await inData(b!.port('smtps'));
    expect(await tripBrake(await signedIn(a!.port('smtps')), 1)).toBe(SUSPENDED);
    await eventually(() => notices(backend).length === 2, 'the notices from instance A', 10_000);

    expect((await heldOnB.cmd(BIG_BODY)).code).toBe(250);
    await eventually(() => logsOf(b!, 'quota ran out while the account is suspended').length === 1, 'the brake trips again, on instance B');
    expect(logsOf(b!, 'account suspended')).toHaveLength(0);
    expect(notices(backend)).toHaveLength(2);
    // The log goes out in batches, after the backend has the message.
    await eventually(() => logsOf(a!, 'suspension notice sent').length === 2, "A's log lines for both notices");
    expect(logsOf(b!, 'suspension notice sent')).toHaveLength(0);
  });
});
