/**
 * Two running gates with traffic behind them, for the operations tests (dashboard, alerts,
 * metric catalogue): every metric smtpgate exports ends up with at least one series.
 *
 * - `healthy`: the shipped policies, a user attributes file, a backend list whose first
 *   address is dead (so backend errors exist), reject mode for bare line endings, and next to
 *   the usual three listeners `apps`, which requires STARTTLS and AUTH except of its trusted
 *   network (TRUSTED_APP, in cleartext: trusted.requireTls false). Traffic: relayed messages
 *   over both TLS kinds, plaintext attempts, AUTH failures up to a lockout, a sender-binding
 *   refusal, a backend refusal, a smuggling rejection, an audit hit, reloads, and (on its own,
 *   sendFromTrustedApp) a trusted app's message without AUTH or TLS.
 * - `troubled`: normalize mode (one stray LF replaced), a certificate that expires in 5 days,
 *   a Redis limiter store nobody listens on, and backend health checks that find the dead
 *   first backend down, so the alerts about them have something to find.
 */
import { cp, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { listener } from './config.js';
import { ALICE, startGate, type Gate } from './gate.js';
import { startRecordingBackend, type RecordingBackend } from './backends.js';
import { makeTestCert } from './pki.js';
import { deadPort } from './sessions.js';
import { SmtpTalk, type Reply } from './smtp-talk.js';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface OpsGates {
  readonly healthy: Gate;
  readonly troubled: Gate;
  readonly backend: RecordingBackend;
  /** The dead first backend address of `healthy` ("127.0.0.1:port"). */
  readonly deadBackend: string;
  /** Label values that name configured backends (host:port): bounded, from the config. */
  readonly backendLabels: readonly string[];
  close(): Promise<void>;
}

/** A user that doesn't exist: wrong logins as this user lead to a user_ip lockout. */
export const MALLORY = { name: 'mallory', password: 'not the password' };

/** The address of an internal app in the healthy gate's `apps` listener's trusted network. */
export const TRUSTED_APP = '127.0.0.3';

export async function startOpsGates(): Promise<OpsGates> {
  const backend = await startRecordingBackend({ refuseRcpt: { 'nobody@corp.example': '550 5.1.1 No such user here' } });
  const dead = await deadPort();
  const deadRedis = await deadPort();
  const started: Gate[] = [];
  try {
    const healthy = await startGate({
      backend: { address: [`127.0.0.1:${dead}`, `127.0.0.1:${backend.port}`], strategy: 'failover' },
      auth: { users: 'users', attributes: 'users.yaml', cache: { ttl: '10m' } },
      listeners: [
        listener('submission', { tls: 'starttls' }),
        listener('smtps', { tls: 'implicit' }),
        listener('plain', { tls: 'none', requireTls: false }),
        listener('apps', { tls: 'starttls', trusted: { networks: [`${TRUSTED_APP}/32`], requireTls: false } }),
      ],
      config: { policies: 'policies' },
      logLevel: 'warn',
      beforeStart: async (dir) => {
        await cp(path.join(REPO, 'policies'), path.join(dir, 'policies'), { recursive: true });
        await writeFile(path.join(dir, 'users.yaml'), 'alice:\n  addresses: [alice@corp.example]\n  groups: [staff]\n');
      },
    });
    started.push(healthy);
    const troubled = await startGate({
      backend: { address: [`127.0.0.1:${dead}`, `127.0.0.1:${backend.port}`], healthCheckInterval: '1s' },
      cert: await makeTestCert('localhost', { days: 5 }),
      logLevel: 'error',
      config: {
        data: { bareLineEndings: 'normalize' },
        limits: { store: { kind: 'redis', url: `redis://127.0.0.1:${deadRedis}`, commandTimeout: '200ms' } },
      },
    });
    started.push(troubled);
    return {
      healthy,
      troubled,
      backend,
      deadBackend: `127.0.0.1:${dead}`,
      backendLabels: [`127.0.0.1:${dead}`, `127.0.0.1:${backend.port}`],
      close: async () => {
        await Promise.all(started.map((g) => g.stop()));
        await backend.close();
      },
    };
  } catch (err) {
    await Promise.all(started.map((g) => g.stop()));
    await backend.close();
    throw err;
  }
}

function expectCode(what: string, reply: Reply, ...codes: number[]): Reply {
  if (!codes.includes(reply.code)) throw new Error(`${what}: expected ${codes.join('|')}, got ${reply.raw}`);
  return reply;
}

async function session(port: number, opts: { implicitTls?: boolean; localAddress?: string } = {}): Promise<SmtpTalk> {
  const c = await SmtpTalk.connect(port, opts);
  expectCode('greeting', await c.read(), 220);
  expectCode('EHLO', await c.cmd('EHLO client.test'), 250);
  return c;
}

async function login(c: SmtpTalk, user = ALICE.name, password = ALICE.password): Promise<void> {
  expectCode(`AUTH ${user}`, await c.authPlain(user, password), 235);
}

const message = (extraHeaders = '', body = 'Hello from the operations test.\r\n') =>
  `From: Alice <alice@corp.example>\r\nTo: bob@corp.example\r\nSubject: ops test\r\n${extraHeaders}\r\n${body}.\r\n`;

/** MAIL, RCPTs, DATA and the message; returns the final reply. */
async function send(c: SmtpTalk, from: string, to: string[], text: string): Promise<Reply> {
  expectCode('MAIL', await c.cmd(`MAIL FROM:<${from}>`), 250);
  for (const r of to) expectCode(`RCPT ${r}`, await c.cmd(`RCPT TO:<${r}>`), 250);
  expectCode('DATA', await c.cmd('DATA'), 354);
  c.write(text);
  return c.read();
}

async function quit(c: SmtpTalk): Promise<void> {
  await c.cmd('QUIT').catch(() => undefined);
  c.close();
}

/** The traffic described at the top. Throws on any reply other than the expected one. */
export async function driveTraffic(g: OpsGates): Promise<void> {
  const { healthy, troubled } = g;

  // Relayed mail over implicit TLS; the first backend session meets the dead backend first.
  const a = await session(healthy.port('smtps'), { implicitTls: true });
  try {
    await login(a);
    expectCode('message 1', await send(a, 'alice@corp.example', ['bob@corp.example'], message('X-Mailer: PHPMailer 6.9\r\n')), 250);
    expectCode('message 2', await send(a, 'alice@corp.example', ['bob@corp.example', 'carol@corp.example'], message()), 250);
    // Policy: sender binding (alice may only send as alice@corp.example).
    expectCode('MAIL as bob', await a.cmd('MAIL FROM:<bob@corp.example>'), 553);
    // The backend refuses one recipient; then the message carries a bare LF (smuggling).
    expectCode('MAIL', await a.cmd('MAIL FROM:<alice@corp.example>'), 250);
    expectCode('RCPT nobody', await a.cmd('RCPT TO:<nobody@corp.example>'), 550);
    expectCode('RCPT bob', await a.cmd('RCPT TO:<bob@corp.example>'), 250);
    expectCode('DATA', await a.cmd('DATA'), 354);
    a.write(message('', 'line one\nline two\r\n'));
    expectCode('smuggling', await a.read(), 550);
  } finally {
    await quit(a);
  }

  // Plaintext attempts on the STARTTLS listener, then the same client does it right.
  const b = await session(healthy.port('submission'));
  try {
    expectCode('AUTH before STARTTLS', await b.authPlain(ALICE.name, ALICE.password), 538);
    expectCode('MAIL before STARTTLS', await b.cmd('MAIL FROM:<alice@corp.example>'), 530);
    expectCode('STARTTLS', await b.starttls(), 220);
    expectCode('EHLO', await b.cmd('EHLO client.test'), 250);
    await login(b);
    expectCode('message 3', await send(b, 'alice@corp.example', ['bob@corp.example'], message()), 250);
  } finally {
    await quit(b);
  }

  // No AUTH on the cleartext listener: MAIL needs authentication.
  const p = await session(healthy.port('plain'));
  try {
    expectCode('MAIL without AUTH', await p.cmd('MAIL FROM:<alice@corp.example>'), 530);
  } finally {
    await quit(p);
  }

  // Wrong passwords from another address, until the user_ip lockout answers 454.
  const m = await session(healthy.port('smtps'), { implicitTls: true, localAddress: '127.0.0.2' });
  try {
    expectCode('wrong password', await m.authPlain(ALICE.name, 'wrong password'), 535);
    let locked = false;
    for (let i = 0; i < 7 && !locked; i++) {
      locked = expectCode('mallory', await m.authPlain(MALLORY.name, MALLORY.password), 535, 454).code === 454;
    }
    if (!locked) throw new Error('no lockout after 7 wrong logins as mallory');
  } finally {
    await quit(m);
  }

  // Reloads that work, so smtpgate_reloads_total has series.
  if (!(await healthy.app.reloadUsers())) throw new Error('users reload failed');
  if (!(await healthy.app.reloadPolicies())) throw new Error('policy reload failed');

  // The troubled gate: a stray LF becomes a space (normalize mode); the message is relayed.
  const t = await session(troubled.port('smtps'), { implicitTls: true });
  try {
    await login(t);
    expectCode('normalized message', await send(t, 'alice@corp.example', ['bob@corp.example'], message('', 'one\ntwo\r\n')), 250);
  } finally {
    await quit(t);
  }
}

/**
 * An internal app in the `apps` listener's trusted network sends one message without AUTH or
 * TLS, which that listener allows it; a client outside that network gets 530 for the same MAIL.
 * On its own, so a test can send it after Prometheus has seen the counters at 0.
 */
export async function sendFromTrustedApp(g: OpsGates): Promise<void> {
  const outsider = await session(g.healthy.port('apps'));
  try {
    expectCode('MAIL in cleartext from outside the trusted network', await outsider.cmd('MAIL FROM:<app@corp.example>'), 530);
  } finally {
    await quit(outsider);
  }
  const app = await session(g.healthy.port('apps'), { localAddress: TRUSTED_APP });
  try {
    expectCode('trusted app message', await send(app, 'app@corp.example', ['bob@corp.example'], message()), 250);
  } finally {
    await quit(app);
  }
}

/** Breaks the healthy gate's users file and reloads it: one users reload failure. */
export async function failUsersReload(g: OpsGates): Promise<void> {
  await writeFile(path.join(g.healthy.dir, 'users'), 'this line is not an htpasswd entry\n');
  if (await g.healthy.app.reloadUsers()) throw new Error('a broken users file was accepted');
}

/** GET /metrics of a gate. */
export async function scrape(gate: Gate): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${gate.metricsPort}/metrics`);
  if (!res.ok) throw new Error(`/metrics answered ${res.status}`);
  return res.text();
}
