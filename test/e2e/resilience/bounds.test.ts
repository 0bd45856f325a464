/**
 * Resource bounds. An idle connection must be cheap: 5,000 of them at once to `smtpgate run`
 * (a child process, so its memory is measured apart from the test's), and the growth of its
 * resident memory per connection stays under 64 KB; after STARTTLS, under 128 KB (measured:
 * 64–77 KiB on Node 24, 46–53 KiB on Node 20). And the per-address cap holds exactly: with
 * limits.concurrentPerIp: 3, the 4th and 5th connections from one address get
 * `421 4.7.0` and are closed, while the first three work normally.
 *
 * The 5,000 client sockets live in a helper process started with enough open files (through
 * `prlimit` when this process has fewer), so the test needs no special `ulimit -n` itself.
 */
import { spawn } from 'node:child_process';
import { rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect, test } from 'vitest';
import { startGate } from '../../helpers/gate.js';
import { openListener, type ListenerInput } from '../../helpers/config.js';
import { rssBytes, startChildGate, withOpenFiles } from '../../helpers/child-gate.js';
import { startRecordingBackend } from '../../helpers/backends.js';
import { closeBackend, envelope, eventually, forThisTest, stopGate } from '../../helpers/sessions.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

const IDLE_CONNECTIONS = 5_000;
const MAX_RSS_PER_CONNECTION = 64 * 1024;
const NOFILE = 20_000;
/** After STARTTLS each connection also holds its TLS state (OpenSSL buffers, the TLSSocket). */
const TLS_IDLE_CONNECTIONS = 1_000;
const MAX_RSS_PER_TLS_CONNECTION = 128 * 1024;

/**
 * The client side, as a plain script: opens N connections in batches, reports when each has
 * its greeting (with "starttls": when each has finished EHLO, STARTTLS and the TLS handshake),
 * keeps them open until told "close" on stdin.
 */
const CLIENT_SCRIPT = `
import net from 'node:net';
import tls from 'node:tls';
const [port, total, batch] = process.argv.slice(2, 5).map(Number);
const starttls = process.argv[5] === 'starttls';
const sockets = [];
let greeted = 0, refused = 0, errors = 0, closedEarly = 0;
function open() {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    sockets.push(s);
    let text = '';
    let done = false;
    const finish = () => { if (!done) { done = true; resolve(); } };
    const secure = () => {
      s.removeAllListeners('data');
      const t = tls.connect({ socket: s, rejectUnauthorized: false }, () => { greeted++; finish(); });
      sockets.push(t);
      t.on('error', () => { errors++; finish(); });
    };
    s.on('data', (d) => {
      text += d;
      if (starttls && !done) {
        if (/^220 [^\\n]*\\r\\n$/.test(text)) s.write('EHLO idle.test\\r\\n');
        else if (/\\r\\n250 [^\\n]*\\r\\n$/.test(text)) s.write('STARTTLS\\r\\n');
        else if (/\\r\\n220 [^\\n]*\\r\\n$/.test(text)) secure();
        else if (!/^220 /.test(text)) { refused++; finish(); }
        return;
      }
      if (!done && text.includes('\\r\\n')) {
        if (text.startsWith('220 ')) greeted++; else refused++;
        finish();
      }
    });
    s.on('error', () => { errors++; finish(); });
    s.on('close', () => { if (!done) closedEarly++; finish(); });
  });
}
for (let i = 0; i < total; i += batch) {
  await Promise.all(Array.from({ length: Math.min(batch, total - i) }, open));
}
process.stdout.write(JSON.stringify({ greeted, refused, errors, closedEarly }) + '\\n');
process.stdin.on('data', () => {
  for (const s of sockets) s.destroy();
  process.stdout.write('closed\\n');
  process.exit(0);
});
`;

async function openIdleConnections(port: number, n: number, mode: 'plain' | 'starttls' = 'plain') {
  const script = path.join(os.tmpdir(), `smtpgate-idle-clients-${process.pid}.mjs`);
  await writeFile(script, CLIENT_SCRIPT);
  const { cmd, args } = withOpenFiles(NOFILE, [script, String(port), String(n), '250', mode]);
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await eventually(() => out.includes('\n') || child.exitCode !== null, 'all idle connections greeted', 120_000);
  if (!out.includes('\n')) throw new Error(`idle client exited early (${child.exitCode}): ${err}`);
  const counts = JSON.parse(out.split('\n')[0]!) as { greeted: number; refused: number; errors: number; closedEarly: number };
  return {
    counts,
    async close() {
      if (child.exitCode === null) child.stdin.write('close\n');
      await exited;
      await rm(script, { force: true });
    },
  };
}

/** `smtpgate run` as a child process, with room for thousands of connections from loopback. */
async function gateForManyConnections(listeners?: ListenerInput[]) {
  const backend = await forThisTest(startRecordingBackend(), closeBackend);
  return forThisTest(
    startChildGate({
      backendPort: backend.port,
      ...(listeners ? { listeners } : {}),
      nofile: NOFILE,
      config: { limits: { connectionRate: 'off', concurrentPerIp: 10000, concurrentPerListener: 10000 } },
    }),
    (g) => g.stop(),
  );
}

test(`${IDLE_CONNECTIONS} idle connections to \`smtpgate run\` cost at most ${MAX_RSS_PER_CONNECTION / 1024} KB of RSS each`, { timeout: 180_000 }, async () => {
  const gate = await gateForManyConnections([openListener()]);
  const port = gate.port('open');
  // Warm up: the first sessions load and compile code paths that every later one shares.
  const warm = await openIdleConnections(port, 200);
  expect(warm.counts.greeted).toBe(200);
  await warm.close();
  await eventually(() => gate.logs.filter((l) => l.msg === 'session closed').length >= 200, 'warm-up sessions closed', 10_000);

  const before = rssBytes(gate.pid);
  const started = Date.now();
  const idle = await openIdleConnections(port, IDLE_CONNECTIONS);
  try {
    const openedIn = Date.now() - started;
    expect(idle.counts).toEqual({ greeted: IDLE_CONNECTIONS, refused: 0, errors: 0, closedEarly: 0 });
    const after = rssBytes(gate.pid);
    const perConnection = (after - before) / IDLE_CONNECTIONS;
    console.log(
      `resilience bounds: ${IDLE_CONNECTIONS} idle connections greeted in ${(openedIn / 1000).toFixed(1)} s; ` +
        `RSS ${(before / 2 ** 20).toFixed(1)} MiB → ${(after / 2 ** 20).toFixed(1)} MiB: ${(perConnection / 1024).toFixed(1)} KiB per connection`,
    );
    expect(gate.alive).toBe(true);
    expect(perConnection).toBeLessThanOrEqual(MAX_RSS_PER_CONNECTION);
  } finally {
    await idle.close();
  }
  // All of them go away cleanly, and the gate still serves.
  await eventually(() => gate.logs.filter((l) => l.msg === 'session closed').length >= 200 + IDLE_CONNECTIONS, 'all idle sessions closed', 30_000);
  const c = await SmtpTalk.connect(port);
  try {
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO after.test')).code).toBe(250);
    const { data } = await envelope(c, 'a@client.test', ['b@corp.test']);
    expect(data?.code).toBe(354);
    expect((await c.cmd('Subject: after\r\n\r\nok\r\n.')).code).toBe(250);
  } finally {
    c.close();
  }
});

test(`${TLS_IDLE_CONNECTIONS} idle connections after STARTTLS cost at most ${MAX_RSS_PER_TLS_CONNECTION / 1024} KB of RSS each`, { timeout: 180_000 }, async () => {
  const gate = await gateForManyConnections();
  const port = gate.port('submission');
  const warm = await openIdleConnections(port, 100, 'starttls');
  expect(warm.counts.greeted).toBe(100);
  await warm.close();
  await eventually(() => gate.logs.filter((l) => l.msg === 'session closed').length >= 100, 'warm-up sessions closed', 10_000);

  const before = rssBytes(gate.pid);
  const idle = await openIdleConnections(port, TLS_IDLE_CONNECTIONS, 'starttls');
  try {
    expect(idle.counts).toEqual({ greeted: TLS_IDLE_CONNECTIONS, refused: 0, errors: 0, closedEarly: 0 });
    const perConnection = (rssBytes(gate.pid) - before) / TLS_IDLE_CONNECTIONS;
    console.log(`resilience bounds: ${TLS_IDLE_CONNECTIONS} idle connections after STARTTLS: ${(perConnection / 1024).toFixed(1)} KiB of RSS per connection`);
    expect(gate.alive).toBe(true);
    expect(perConnection).toBeLessThanOrEqual(MAX_RSS_PER_TLS_CONNECTION);
  } finally {
    await idle.close();
  }
});

test('limits.concurrentPerIp: 3 — of 5 connections from 127.0.0.1 exactly 2 get 421 4.7.0 and are closed; the 3 others work, and a freed slot is reusable', async () => {
  const backend = await forThisTest(startRecordingBackend(), closeBackend);
  const gate = await forThisTest(
    startGate({
      backendPort: backend.port,
      listeners: [openListener()],
      config: { limits: { connectionRate: 'off', concurrentPerIp: 3 } },
    }),
    stopGate,
  );
  const port = gate.port('open');
  const clients = await Promise.all(Array.from({ length: 5 }, () => SmtpTalk.connect(port)));
  try {
    const first = await Promise.all(clients.map((c) => c.read()));
    const admitted = clients.filter((_, i) => first[i]!.code === 220);
    const refused = clients.filter((_, i) => first[i]!.code !== 220);
    expect(admitted).toHaveLength(3);
    expect(refused).toHaveLength(2);
    for (const [i, r] of first.entries()) if (r.code !== 220) expect(r.raw, `client ${i}`).toMatch(/^421 4\.7\.0 Too many open connections from your address \(limit 3\)/);
    // Refused connections are closed by the gate, not left hanging.
    await Promise.all(refused.map((c) => c.closed));

    for (const [i, c] of admitted.entries()) {
      expect((await c.cmd('EHLO admitted.test')).code).toBe(250);
      const { data } = await envelope(c, `a${i}@client.test`, ['b@corp.test']);
      expect(data?.code).toBe(354);
      expect((await c.cmd(`Subject: ${i}\r\n\r\nadmitted\r\n.`)).code).toBe(250);
    }
    expect(backend.messages).toHaveLength(3);

    // One leaves: its slot is free again (the refused ones never held one) once the gate has
    // seen its connection close, a moment after the client has.
    const closedSessions = () => gate.logs.filter((l) => l.msg === 'session closed').length;
    const closedBefore = closedSessions();
    expect((await admitted[0]!.cmd('QUIT')).code).toBe(221);
    await admitted[0]!.closed;
    await eventually(() => closedSessions() > closedBefore, 'the gate closes the session that said QUIT');
    const late = await SmtpTalk.connect(port);
    clients.push(late);
    expect((await late.read()).code).toBe(220);
    const extra = await SmtpTalk.connect(port);
    clients.push(extra);
    expect((await extra.read()).raw).toMatch(/^421 4\.7\.0 /);
  } finally {
    for (const c of clients) c.close();
  }
});
