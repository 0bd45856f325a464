/**
 * Soak: many messages through a gate whose backend fails at random (DESIGN.md: "It never tells
 * a client 250 before the backend has said 250"; "If the backend fails … the client gets a
 * 4xx, never a 250"). About 20 client sessions at once send several messages each, with RSET
 * after every failure, to a backend that for each transaction accepts, drops the connection
 * (at MAIL, after MAIL, mid-DATA, after the final dot, after its 250), answers 4xx (MAIL, RCPT,
 * DATA, final dot) or stalls (MAIL, RCPT, DATA, final dot, reading).
 *
 * The invariant, message by message: a message the client got 250 for is at the backend exactly
 * once, byte for byte (after smtpgate's own Received header) and for exactly the recipients the
 * client got 250 for; a message the client did not get 250 for is not at the backend at all.
 * The backend's record is "the messages it answered 250 to", so a final dot left unanswered
 * (dropped or stalled) must have been a 4xx for the client.
 *
 * Sizes: 500 messages by default (`npm test`, well under a minute). A longer soak:
 *   SMTPGATE_SOAK=10000 npx vitest run test/e2e/resilience/soak.test.ts
 * The seed is printed; SMTPGATE_SOAK_SEED=<seed> replays a run (each message's fault and
 * content derive from the seed and its number alone, whatever the interleaving).
 */
import { expect, test } from 'vitest';
import { startGate } from '../../helpers/gate.js';
import { openListener } from '../../helpers/config.js';
import { ACCEPTING_FAULTS, FAULTS, prngFor, startFlakyBackend, type Fault, type Plan } from '../../helpers/flaky-backend.js';
import { hasBareCrOrLf } from '../../helpers/raw-backend.js';
import { closeBackend, forThisTest, stopGate } from '../../helpers/sessions.js';
import { SmtpTalk, type Reply } from '../../helpers/smtp-talk.js';

const MESSAGES = Number(process.env.SMTPGATE_SOAK ?? 500);
const SEED = Number(process.env.SMTPGATE_SOAK_SEED ?? Math.floor(Math.random() * 2 ** 31));
const SESSIONS = 20;

/** How often each fault is drawn (relative weights); 'accept' is the common case. */
const WEIGHTS: Record<Fault, number> = {
  accept: 40,
  'delay-dot': 4,
  'drop-at-mail': 4,
  'drop-after-mail': 4,
  'drop-mid-data': 5,
  'drop-after-dot': 5,
  'drop-after-reply': 5,
  'tempfail-mail': 4,
  'tempfail-rcpt': 5,
  'tempfail-data': 4,
  'tempfail-dot': 5,
  'stall-mail': 2,
  'stall-rcpt': 2,
  'stall-data': 2,
  'stall-dot': 2,
  'stall-read': 2,
};

/** The sender address carries the message number, so the backend can look its plan up. */
const senderOf = (i: number) => `soak-${i}@client.test`;
const indexOf = (sender: string) => Number(/^soak-(\d+)@/.exec(sender)?.[1] ?? -1);

function planFor(i: number): Plan {
  const r = prngFor(SEED, i, 1);
  const total = FAULTS.reduce((n, f) => n + WEIGHTS[f], 0);
  let x = r() * total;
  let fault: Fault = 'accept';
  for (const f of FAULTS) {
    x -= WEIGHTS[f];
    if (x < 0) {
      fault = f;
      break;
    }
  }
  const how = r() < 0.5 ? 'close' : 'reset';
  // Mid-DATA means mid-DATA: the Received header alone is longer than 150 bytes.
  const dropAfterBytes = 1 + Math.floor(r() * 150);
  const refuse = [r() < 0.5, r() < 0.5, r() < 0.5];
  return { fault, how, dropAfterBytes, delayMs: 20 + Math.floor(r() * 80), refuseRcpt: (k) => refuse[k % 3]! };
}

interface SoakMessage {
  readonly index: number;
  readonly messageId: string;
  readonly recipients: string[];
  /** The message as the client means it (CRLF lines, the final one included). */
  readonly content: Buffer;
}

const LINE_CHARS = 'abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:-_=+!?()<>"\'';

function messageFor(i: number): SoakMessage {
  const r = prngFor(SEED, i, 2);
  const messageId = `<soak-${SEED}-${i}@client.test>`;
  const recipients = Array.from({ length: 1 + Math.floor(r() * 3) }, (_, k) => `rcpt${k}-${i}@corp.test`);
  const lines = [`Message-ID: ${messageId}`, `From: ${senderOf(i)}`, `To: ${recipients.join(', ')}`, `Subject: soak message ${i}`, ''];
  const n = Math.floor(r() * 120);
  for (let k = 0; k < n; k++) {
    const kind = r();
    if (kind < 0.05) lines.push('.');
    else if (kind < 0.1) lines.push('..' + 'x'.repeat(Math.floor(r() * 10)));
    else if (kind < 0.15) lines.push('');
    else {
      let line = kind < 0.3 ? '.' : '';
      const len = Math.floor(r() * 100);
      for (let c = 0; c < len; c++) line += r() < 0.02 ? String.fromCharCode(0xa0 + Math.floor(r() * 0x60)) : LINE_CHARS[Math.floor(r() * LINE_CHARS.length)];
      lines.push(line);
    }
  }
  return { index: i, messageId, recipients, content: Buffer.from(lines.map((l) => l + '\r\n').join(''), 'latin1') };
}

/** RFC 5321 §4.5.2, sender side. */
function dotStuff(content: Buffer): Buffer {
  return Buffer.from(content.toString('latin1').replace(/(^|\r\n)\./g, '$1..'), 'latin1');
}

interface Outcome {
  /** The reply that decided the message's fate: the final dot's, or the refusal before it. */
  final: Reply | 'connection closed';
  /** Recipients the client got 250 for. */
  accepted: string[];
}

class Session {
  constructor(readonly talk: SmtpTalk) {}
  static async open(port: number): Promise<Session> {
    const talk = await SmtpTalk.connect(port);
    const greeting = await talk.read();
    if (greeting.code !== 220) throw new Error(`greeting: ${greeting.raw}`);
    const ehlo = await talk.cmd('EHLO soak.client.test');
    if (ehlo.code !== 250) throw new Error(`EHLO: ${ehlo.raw}`);
    return new Session(talk);
  }
}

async function send(s: Session, m: SoakMessage): Promise<Outcome> {
  const c = s.talk;
  const accepted: string[] = [];
  const mail = await c.cmd(`MAIL FROM:<${senderOf(m.index)}>`);
  if (mail.code !== 250) return { final: mail, accepted };
  let lastRefusal: Reply | undefined;
  for (const r of m.recipients) {
    const reply = await c.cmd(`RCPT TO:<${r}>`);
    if (reply.code === 250) accepted.push(r);
    else lastRefusal = reply;
  }
  if (accepted.length === 0) return { final: lastRefusal!, accepted };
  const data = await c.cmd('DATA');
  if (data.code !== 354) return { final: data, accepted };
  c.write(Buffer.concat([dotStuff(m.content), Buffer.from('.\r\n')]));
  return { final: await c.read(), accepted };
}

test(`soak: ${MESSAGES} messages through a flaky backend; each one is at the backend exactly once, byte for byte, if and only if its client got 250`, { timeout: Math.max(120_000, MESSAGES * 100) }, async () => {
  console.log(`resilience soak: ${MESSAGES} messages, ${SESSIONS} sessions, seed ${SEED} (replay with SMTPGATE_SOAK_SEED=${SEED})`);
  const backend = await forThisTest(
    startFlakyBackend((from) => planFor(indexOf(from))),
    closeBackend,
  );
  const gate = await forThisTest(
    startGate({
      backend: {
        address: `127.0.0.1:${backend.port}`,
        identity: 'none',
        markDownFor: '0s',
        timeouts: { command: '300ms', finalReply: '500ms', dataIdle: '500ms' },
      },
      listeners: [openListener()],
      logLevel: 'warn',
      config: { limits: { connectionRate: 'off', concurrentPerIp: 1000 } },
    }),
    stopGate,
  );
  const port = gate.port('open');
  const outcomes = new Map<number, Outcome>();
  const messages = new Map<number, SoakMessage>();
  const started = Date.now();
  let next = 0;
  let sessionsOpened = 0;

  const worker = async (w: number) => {
    const r = prngFor(SEED, w, 3);
    let s: Session | undefined;
    let left = 0;
    while (next < MESSAGES) {
      const i = next++;
      const m = messageFor(i);
      messages.set(i, m);
      if (!s || left <= 0) {
        if (s) await s.talk.cmd('QUIT').catch(() => undefined);
        s?.talk.close();
        s = await Session.open(port);
        sessionsOpened++;
        left = 2 + Math.floor(r() * 8);
      }
      left--;
      let outcome: Outcome;
      try {
        outcome = await send(s, m);
      } catch {
        outcome = { final: 'connection closed', accepted: [] };
      }
      outcomes.set(i, outcome);
      if (outcome.final === 'connection closed' || outcome.final.code !== 250) {
        // RSET between failures; a session the gate closed is replaced.
        const rset = await s.talk.cmd('RSET').catch(() => undefined);
        if (rset?.code !== 250) {
          s.talk.close();
          s = undefined;
        }
      }
    }
    if (s) await s.talk.cmd('QUIT').catch(() => undefined);
    s?.talk.close();
  };
  await Promise.all(Array.from({ length: SESSIONS }, (_, w) => worker(w)));
  const elapsed = Date.now() - started;

  // ── the invariant ──────────────────────────────────────────────────────────────────────
  const atBackend = new Map<string, Buffer[]>();
  const toAtBackend = new Map<string, string[]>();
  for (const a of backend.accepted) {
    atBackend.set(a.messageId, [...(atBackend.get(a.messageId) ?? []), a.content]);
    toAtBackend.set(a.messageId, a.to);
  }
  const problems: string[] = [];
  const byFault = new Map<Fault, { total: number; got250: number }>();
  const unexpected: string[] = [];
  let got250 = 0;
  for (let i = 0; i < MESSAGES; i++) {
    const m = messages.get(i)!;
    const o = outcomes.get(i)!;
    const fault = planFor(i).fault;
    const ok = o.final !== 'connection closed' && o.final.code === 250;
    const stat = byFault.get(fault) ?? { total: 0, got250: 0 };
    stat.total++;
    if (ok) stat.got250++;
    byFault.set(fault, stat);
    const copies = atBackend.get(m.messageId) ?? [];
    const what = `message ${i} (${fault}, client got ${o.final === 'connection closed' ? o.final : JSON.stringify(o.final.raw)})`;
    if (ok) {
      got250++;
      if (copies.length !== 1) {
        problems.push(`${what}: at the backend ${copies.length} times, expected exactly once`);
        continue;
      }
      const stored = copies[0]!;
      const start = stored.indexOf(`Message-ID: ${m.messageId}\r\n`);
      if (start < 0 || !stored.subarray(0, start).toString('latin1').startsWith('Received: ')) {
        problems.push(`${what}: stored message does not start with smtpgate's Received header followed by the client's headers`);
      } else if (!stored.subarray(start).equals(m.content)) {
        problems.push(`${what}: stored bytes differ from what the client sent (${stored.length - start} vs ${m.content.length} bytes)`);
      }
      const to = toAtBackend.get(m.messageId) ?? [];
      if (JSON.stringify(to) !== JSON.stringify(o.accepted)) problems.push(`${what}: backend recipients ${JSON.stringify(to)}, client got 250 for ${JSON.stringify(o.accepted)}`);
    } else if (copies.length !== 0) {
      problems.push(`${what}: NOT 250 for the client, yet at the backend ${copies.length} time(s)`);
    }
    // A 4xx for a transaction the backend would have accepted is not a safety problem, but is
    // worth seeing; a 250 for one it would not have accepted is caught above.
    const healthy = ACCEPTING_FAULTS.has(fault) || (fault === 'tempfail-rcpt' && m.recipients.some((_, k) => !planFor(i).refuseRcpt!(k)));
    if (healthy && !ok) unexpected.push(what);
    if (ok && !healthy) problems.push(`${what}: 250 although the backend was planned to fail`);
  }
  const wire = backend.connections.filter((c) => hasBareCrOrLf(c.bytes()));
  if (wire.length) problems.push(`${wire.length} backend connection(s) received a bare CR or LF`);

  const table = [...byFault.entries()]
    .sort(([a], [b]) => FAULTS.indexOf(a) - FAULTS.indexOf(b))
    .map(([f, s]) => `  ${f.padEnd(17)} ${String(s.total).padStart(5)} planned, ${String(s.got250).padStart(5)} got 250`)
    .join('\n');
  console.log(
    `resilience soak: seed ${SEED}: ${MESSAGES} messages in ${(elapsed / 1000).toFixed(1)} s over ${sessionsOpened} client sessions and ` +
      `${backend.connections.length} backend connections; ${got250} got 250, ${backend.accepted.length} accepted by the backend\n${table}` +
      (unexpected.length ? `\n  ${unexpected.length} healthy transaction(s) failed anyway, e.g. ${unexpected.slice(0, 3).join('; ')}` : ''),
  );
  expect(problems, `seed ${SEED}`).toEqual([]);
  expect(backend.accepted.length, `seed ${SEED}: the backend accepted only messages whose client got 250`).toBe(got250);
  // Most transactions are healthy; the soak is worthless if the gate refused them wholesale.
  expect(got250).toBeGreaterThan(MESSAGES * 0.3);
});
