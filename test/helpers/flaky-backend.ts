/**
 * A backend that fails on purpose, transaction by transaction: it drops the connection at a
 * chosen point, answers 4xx, stalls, or accepts. What it does to a transaction is decided at
 * MAIL by a `plan` function, so a test can script it (every transaction the same) or draw it
 * from a seeded PRNG keyed by the sender address, which keeps a run reproducible however the
 * concurrent sessions interleave.
 *
 * Its record of accepted mail is exactly "the messages it answered 250 to": a message whose
 * final dot arrived but got no reply (dropped, stalled) is not accepted — the proxy must then
 * have told its client 4xx — and one that got its 250 is accepted even if the connection is
 * dropped right after. The parser is strict (CRLF lines, RFC 5321 §4.5.2 dot-stuffing, end of
 * data only on CRLF.CRLF) and every byte is kept, so a test can check the wire too.
 */
import net from 'node:net';

export type Fault =
  /** 250 to everything. */
  | 'accept'
  /** The final dot's 250 comes after `delayMs` (a slow but healthy backend). */
  | 'delay-dot'
  /** The connection is dropped when MAIL arrives, unanswered. */
  | 'drop-at-mail'
  /** 250 to MAIL, then the connection is dropped. */
  | 'drop-after-mail'
  /** Dropped once `dropAfterBytes` bytes of message data have arrived. */
  | 'drop-mid-data'
  /** The final dot arrives and the connection is dropped without a reply: not accepted. */
  | 'drop-after-dot'
  /** 250 to the final dot (accepted), then the connection is closed. */
  | 'drop-after-reply'
  | 'tempfail-mail'
  /** 451 to each RCPT for which `refuseRcpt` says so (all of them unless given). */
  | 'tempfail-rcpt'
  | 'tempfail-data'
  | 'tempfail-dot'
  /** No reply to MAIL, ever (the proxy's command timeout must fire). */
  | 'stall-mail'
  | 'stall-rcpt'
  | 'stall-data'
  /** The final dot arrives and is never answered (the proxy's finalReply timeout must fire). */
  | 'stall-dot'
  /** Stops reading at DATA: the proxy's writes back up (dataIdle) or its final dot waits (finalReply). */
  | 'stall-read';

export const FAULTS: readonly Fault[] = [
  'accept',
  'delay-dot',
  'drop-at-mail',
  'drop-after-mail',
  'drop-mid-data',
  'drop-after-dot',
  'drop-after-reply',
  'tempfail-mail',
  'tempfail-rcpt',
  'tempfail-data',
  'tempfail-dot',
  'stall-mail',
  'stall-rcpt',
  'stall-data',
  'stall-dot',
  'stall-read',
];

/** Faults after which a message may still be accepted (250 to its final dot). */
export const ACCEPTING_FAULTS: ReadonlySet<Fault> = new Set(['accept', 'delay-dot', 'drop-after-reply']);

export interface Plan {
  readonly fault: Fault;
  /** 'drop-*': close (FIN) or reset (RST). The 250 of 'drop-after-reply' is always followed by a FIN. */
  readonly how?: 'close' | 'reset';
  readonly dropAfterBytes?: number;
  readonly delayMs?: number;
  /** 'tempfail-rcpt': which RCPT (0-based, in this transaction) gets the 451. */
  readonly refuseRcpt?: (index: number) => boolean;
}

export interface AcceptedMessage {
  readonly from: string;
  readonly to: string[];
  /** The message content, dot-unstuffed, with its final CRLF. */
  readonly content: Buffer;
  /** The value of its first Message-ID header, '' if none. */
  readonly messageId: string;
}

export interface FlakyConnection {
  readonly socket: net.Socket;
  /** Every byte received. */
  bytes(): Buffer;
  readonly closed: Promise<void>;
}

export interface FlakyBackend {
  readonly port: number;
  readonly accepted: AcceptedMessage[];
  readonly connections: FlakyConnection[];
  /** Transactions begun (MAIL received), per fault. */
  readonly planned: Map<Fault, number>;
  close(): Promise<void>;
}

const EHLO_REPLY = '250-flaky.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n';
const END = Buffer.from('\r\n.\r\n');

/** "Message-ID: <x>" from a header block (first match, case-insensitive). */
export function messageIdOf(content: Buffer): string {
  const head = content.toString('latin1', 0, Math.min(content.length, 8192)).split('\r\n\r\n')[0] ?? '';
  return /^message-id:[ \t]*(\S+)/im.exec(head)?.[1] ?? '';
}

/** RFC 5321 §4.5.2, receiver side: a leading dot of a line is removed. */
export function unstuff(wire: Buffer): Buffer {
  const text = wire.toString('latin1');
  return Buffer.from(text.replace(/(^|\r\n)\./g, '$1'), 'latin1');
}

export async function startFlakyBackend(plan: (from: string, tx: number) => Plan): Promise<FlakyBackend> {
  const accepted: AcceptedMessage[] = [];
  const connections: FlakyConnection[] = [];
  const planned = new Map<Fault, number>();
  const sockets = new Set<net.Socket>();
  let transactions = 0;

  const server = net.createServer((socket) => {
    sockets.add(socket);
    const chunks: Buffer[] = [];
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    connections.push({ socket, bytes: () => Buffer.concat(chunks), closed });

    /** 'waiting': a reply is due later; input is kept for then. 'dead': input is ignored. */
    let mode: 'command' | 'data' | 'waiting' | 'dead' = 'command';
    let pending = Buffer.alloc(0);
    let current: Plan | undefined;
    let from = '';
    let to: string[] = [];
    let rcptIndex = 0;
    let dataBytes = 0;

    const send = (text: string) => {
      if (!socket.destroyed) socket.write(text);
    };
    const drop = (how: 'close' | 'reset' = current?.how ?? 'close') => {
      mode = 'dead';
      if (socket.destroyed) return;
      if (how === 'reset') socket.resetAndDestroy();
      else socket.destroy();
    };
    const stall = () => {
      // Nothing is answered from here on; the proxy times out and goes away.
      mode = 'dead';
    };
    const endTransaction = () => {
      current = undefined;
      from = '';
      to = [];
      rcptIndex = 0;
    };

    const command = (line: string) => {
      const verb = (/^\S+/.exec(line)?.[0] ?? '').toUpperCase();
      switch (verb) {
        case 'EHLO':
          return send(EHLO_REPLY);
        case 'HELO':
          return send('250 flaky.test\r\n');
        case 'MAIL': {
          from = /<([^>]*)>/.exec(line)?.[1] ?? '';
          to = [];
          rcptIndex = 0;
          current = plan(from, transactions++);
          planned.set(current.fault, (planned.get(current.fault) ?? 0) + 1);
          switch (current.fault) {
            case 'drop-at-mail':
              return drop();
            case 'tempfail-mail':
              current = undefined;
              return send('451 4.3.0 MAIL temporarily refused (flaky)\r\n');
            case 'stall-mail':
              return stall();
            case 'drop-after-mail':
              send('250 2.1.0 Ok\r\n');
              return drop();
            default:
              return send('250 2.1.0 Ok\r\n');
          }
        }
        case 'RCPT': {
          if (!current) return send('503 5.5.1 Need MAIL first\r\n');
          const i = rcptIndex++;
          if (current.fault === 'stall-rcpt') return stall();
          if (current.fault === 'tempfail-rcpt' && (current.refuseRcpt?.(i) ?? true)) return send('451 4.3.0 RCPT temporarily refused (flaky)\r\n');
          to.push(/<([^>]*)>/.exec(line)?.[1] ?? '');
          return send('250 2.1.5 Ok\r\n');
        }
        case 'DATA': {
          if (!current || to.length === 0) return send('503 5.5.1 Need RCPT first\r\n');
          if (current.fault === 'stall-data') return stall();
          if (current.fault === 'tempfail-data') {
            endTransaction();
            return send('451 4.3.0 DATA temporarily refused (flaky)\r\n');
          }
          mode = 'data';
          dataBytes = 0;
          // The virtual CRLF: a "." on the very first line ends the data, as on the wire.
          pending = Buffer.concat([Buffer.from('\r\n'), pending]);
          send('354 End data with <CR><LF>.<CR><LF>\r\n');
          if (current.fault === 'stall-read') {
            socket.pause();
            mode = 'dead';
          }
          return;
        }
        case 'RSET':
          endTransaction();
          return send('250 2.0.0 Ok\r\n');
        case 'NOOP':
          return send('250 2.0.0 Ok\r\n');
        case 'QUIT':
          send('221 2.0.0 Bye\r\n');
          mode = 'dead';
          socket.end();
          return;
        default:
          return send('502 5.5.2 Error: command not recognized\r\n');
      }
    };

    const endOfData = (wire: Buffer) => {
      const plan = current!;
      const content = unstuff(wire);
      const record = () => accepted.push({ from, to: [...to], content, messageId: messageIdOf(content) });
      switch (plan.fault) {
        case 'drop-after-dot':
        case 'drop-mid-data': // the message ended before the planned drop point: never answered
          return drop();
        case 'stall-dot':
          return stall();
        case 'tempfail-dot':
          endTransaction();
          return send('451 4.3.0 Message temporarily refused (flaky)\r\n');
        case 'drop-after-reply':
          record();
          mode = 'dead';
          // FIN after the reply, so the 250 itself is never lost to a reset.
          socket.end('250 2.0.0 Ok: accepted, then closing\r\n');
          return;
        case 'delay-dot': {
          mode = 'waiting';
          setTimeout(() => {
            if (socket.destroyed || mode !== 'waiting') return; // the proxy gave up first: never answered, never accepted
            record();
            endTransaction();
            mode = 'command';
            send('250 2.0.0 Ok: accepted (slowly)\r\n');
            consume();
          }, plan.delayMs ?? 200);
          return;
        }
        default:
          record();
          endTransaction();
          return send('250 2.0.0 Ok: accepted\r\n');
      }
    };

    const consume = () => {
      for (;;) {
        if (socket.destroyed || mode === 'dead' || mode === 'waiting') return;
        if (mode === 'command') {
          const crlf = pending.indexOf('\r\n');
          if (crlf < 0) return;
          const line = pending.toString('latin1', 0, crlf);
          pending = pending.subarray(crlf + 2);
          command(line);
          continue;
        }
        const at = pending.indexOf(END);
        if (at < 0) return;
        const wire = Buffer.from(pending.subarray(2, at + 2));
        pending = pending.subarray(at + END.length);
        mode = 'command';
        endOfData(wire);
      }
    };

    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      if (mode === 'dead') return;
      if (mode === 'data' && current?.fault === 'drop-mid-data') {
        dataBytes += chunk.length;
        if (dataBytes >= (current.dropAfterBytes ?? 1)) return drop();
      }
      pending = Buffer.concat([pending, chunk]);
      consume();
    });

    send('220 flaky.test ESMTP\r\n');
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as net.AddressInfo).port,
    accepted,
    connections,
    planned,
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** mulberry32: a small, fast, seedable PRNG (uniform in [0, 1)). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A PRNG for item `index` of a run with `seed`: the same item gets the same draws every time. */
export function prngFor(seed: number, index: number, salt = 0): () => number {
  return prng((Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(index + 1, 0xc2b2ae35) ^ Math.imul(salt + 1, 0x27d4eb2f)) >>> 0);
}
