/**
 * Several smtpgate instances sharing one Redis, through the real proxy: a per-user quota of N
 * is N in total over every instance, and an account the compromised-account brake suspended
 * on one instance is suspended on all of them until `smtpgate limits clear` lifts it.
 *
 * Uses the shared Redis on 127.0.0.1:6379, under a key prefix unique to each test.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { expect, onTestFinished, test } from 'vitest';
import { ALICE, metricValue, startGate, writeGateFiles, type Gate } from '../../helpers/gate.js';
import type { ConfigInput, LimitsInput } from '../../helpers/config.js';
import { startRecordingBackend } from '../../helpers/backends.js';
import { closeBackend, eventually, forThisTest, stopGate } from '../../helpers/sessions.js';
import { describeWith } from '../../helpers/programs.js';
import { dropPrefix, SHARED_REDIS_URL, uniquePrefix } from '../../helpers/redis.js';
import { SmtpTalk, type Reply } from '../../helpers/smtp-talk.js';

const execFileP = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../../..');
const CLI = path.join(ROOT, 'dist/cli/main.js');

function cli(...args: string[]) {
  return execFileP(process.execPath, [CLI, ...args], { timeout: 15_000 });
}

/** A key prefix for this test only, dropped from the shared Redis when the test ends. */
function testPrefix(tag: string): string {
  const prefix = uniquePrefix(tag);
  onTestFinished(() => dropPrefix(SHARED_REDIS_URL, prefix));
  return prefix;
}

interface GateProcess {
  readonly child: ChildProcess;
  /** Listener name → bound port, from the "listening" log lines. */
  readonly ports: Record<string, number>;
  readonly logs: Record<string, unknown>[];
}

/** `smtpgate run --config FILE` as its own process; resolves at its "smtpgate ready" log line. */
async function spawnGate(configFile: string): Promise<GateProcess> {
  const child = spawn(process.execPath, [CLI, 'run', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  onTestFinished(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGINT');
    await exited;
  });
  const ports: Record<string, number> = {};
  const logs: Record<string, unknown>[] = [];
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "smtpgate ready" within 15 s:\n${stderr}`)), 15_000);
    child.once('exit', (code) => reject(new Error(`smtpgate exited (${code}) before it was ready:\n${stderr}`)));
    createInterface({ input: child.stdout! }).on('line', (text) => {
      const line = JSON.parse(text) as Record<string, unknown>;
      logs.push(line);
      if (line.msg === 'listening') ports[String(line.listener)] = Number(String(line.address).split(':').at(-1));
      if (line.msg === 'smtpgate ready') {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return { child, ports, logs };
}

/** One message on its own implicit-TLS session: the reply to MAIL, and the final reply if MAIL was accepted. */
async function sendOne(port: number, n: number): Promise<{ mail: Reply; final?: Reply }> {
  const c = await SmtpTalk.connect(port, { implicitTls: true });
  onTestFinished(() => c.close());
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
  const mail = await c.cmd('MAIL FROM:<alice@corp.test>');
  if (mail.code !== 250) return { mail };
  expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
  expect((await c.cmd('DATA')).code).toBe(354);
  const final = await c.cmd(`Subject: message ${n}\r\n\r\nbody\r\n.`);
  await c.cmd('QUIT');
  return { mail, final };
}

/** A new session's answer to AUTH with the right password. */
async function authReply(port: number): Promise<Reply> {
  const c = await SmtpTalk.connect(port, { implicitTls: true });
  onTestFinished(() => c.close());
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  const reply = await c.authPlain(ALICE.name, ALICE.password);
  c.close();
  return reply;
}

describeWith(['redis-server'], 'limits across smtpgate instances sharing Redis', () => {
  test('two smtpgate processes on one Redis relay exactly 5 of 8 messages for messagesPerUser 5/1h, sent alternately and in parallel; the others get 451 4.7.1', async () => {
    const backend = await forThisTest(startRecordingBackend(), closeBackend);
    const prefix = testPrefix('gate-procs');
    const limits: LimitsInput = { store: { kind: 'redis', url: SHARED_REDIS_URL, keyPrefix: prefix }, messagesPerUser: '5/1h' };
    const files = await Promise.all([0, 1].map(() => writeGateFiles({ backendPort: backend.port, logLevel: 'info', config: { limits } })));
    const [a, b] = await Promise.all(files.map((f) => spawnGate(f.configFile)));
    const ports = [a!.ports.smtps!, b!.ports.smtps!];

    const results: { mail: Reply; final?: Reply }[] = [];
    // Four one after another, alternating A, B, A, B ...
    for (let n = 0; n < 4; n++) results.push(await sendOne(ports[n % 2]!, n));
    // ... then four at once, two on each.
    results.push(...(await Promise.all([4, 5, 6, 7].map((n) => sendOne(ports[n % 2]!, n)))));

    expect(results.slice(0, 4).map((r) => r.final?.code)).toEqual([250, 250, 250, 250]);
    expect(results.filter((r) => r.final?.code === 250)).toHaveLength(5);
    const refused = results.filter((r) => r.mail.code !== 250).map((r) => r.mail.raw);
    expect(refused).toHaveLength(3);
    for (const raw of refused) expect(raw).toMatch(/^451 4\.7\.1 Message limit for your account reached \(5 per 1h\); try again in \d+ seconds$/);
    expect(backend.messages).toHaveLength(5);
    // Both processes counted in Redis, neither in its insurance memory.
    for (const p of [a!, b!]) expect(p.logs.filter((l) => String(l.msg).startsWith('limiter store unavailable'))).toEqual([]);
  });

  test('an account the brake suspends on one instance gets 535 5.7.8 at AUTH on both; `limits list` shows it and `limits clear` lifts it everywhere', async () => {
    const backend = await forThisTest(startRecordingBackend(), closeBackend);
    const prefix = testPrefix('gate-brake');
    // The brake counts one quota hit per quota and window (the first refusal in it, not the
    // retries), so two hits within the hour take two quotas: recipients, then messages.
    const config = {
      limits: {
        store: { kind: 'redis', url: SHARED_REDIS_URL, keyPrefix: prefix },
        messagesPerUser: '1/1h',
        recipientsPerUser: '1/1h',
        brake: { quotaHits: 2, window: '1h' },
      },
    } satisfies Partial<ConfigInput>;
    const a: Gate = await forThisTest(startGate({ backendPort: backend.port, config }), stopGate);
    const b: Gate = await forThisTest(startGate({ backendPort: backend.port, config }), stopGate);

    // Quota hit 1, on instance A: the second recipient is over recipientsPerUser.
    const onA = await SmtpTalk.connect(a.port('smtps'), { implicitTls: true });
    onTestFinished(() => onA.close());
    await onA.read();
    await onA.cmd('EHLO client.test');
    expect((await onA.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    expect((await onA.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
    expect((await onA.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
    expect((await onA.cmd('RCPT TO:<carol@corp.test>')).raw).toMatch(/^451 4\.7\.1 Recipient limit for your account reached \(1 per 1h\); try again in \d+ seconds$/);
    expect((await onA.cmd('DATA')).code).toBe(354);
    expect((await onA.cmd('Subject: one\r\n\r\nbody\r\n.')).code).toBe(250);

    // Quota hit 2, on instance B: the second message is over messagesPerUser → suspended.
    const onB = await sendOne(b.port('smtps'), 2);
    expect(onB.mail.raw).toBe('550 5.7.1 Account suspended after repeatedly exceeding its sending quota; nothing is relayed, contact your administrator');
    expect(await metricValue(b, 'smtpgate_account_suspensions_total')).toBe(1);
    await eventually(() => b.logs.some((l) => String(l.msg).startsWith('account suspended: 2 quota hits') && l.user === 'alice'), 'the suspension is logged');

    // The right password, on either instance: refused, and told whom to ask.
    for (const g of [a, b]) {
      expect((await authReply(g.port('smtps'))).raw).toBe('535 5.7.8 Account suspended after repeatedly exceeding its sending quota; contact your administrator');
    }
    // Instance A's open session is refused too: nothing more is relayed.
    expect((await onA.cmd('MAIL FROM:<alice@corp.test>')).raw).toMatch(/^550 5\.7\.1 Account suspended/);
    expect(backend.messages).toHaveLength(1);

    const configA = path.join(a.dir, 'smtpgate.yaml');
    const listed = await cli('limits', 'list', '--config', configA);
    expect(listed.stdout).toMatch(/\(store: redis, up\)/);
    expect(listed.stdout).toMatch(/suspended users:\n {2}alice {2}since \S+ {2}until cleared\n/);

    const cleared = JSON.parse((await cli('limits', 'clear', 'alice', '--json', '--config', path.join(b.dir, 'smtpgate.yaml'))).stdout) as { removed: unknown[] };
    expect(cleared).toMatchObject({ target: 'alice', kind: 'user', removed: expect.arrayContaining([{ limiter: 'suspension', key: 'alice' }]) });

    for (const g of [a, b]) expect((await authReply(g.port('smtps'))).raw).toMatch(/^235 /);
  });
});
