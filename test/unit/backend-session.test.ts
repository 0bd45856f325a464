/**
 * BackendSession tells smtpgate's own doing from the backend's: a command that was still
 * waiting (on the limits store, say) when the client left must not count as a backend failure,
 * or any client could raise smtpgate_backend_errors_total, and the alert on it, by leaving at
 * the right moment. The real-socket cases (client gone mid-DATA, while RCPT or DATA is
 * answered) are in test/e2e/relay/failures.test.ts.
 */
import { EventEmitter } from 'node:events';
import { describe, expect, test } from 'vitest';
import { BackendPool } from '../../src/relay/backend-pool.js';
import { BackendSession, type BackendTarget } from '../../src/relay/backend-session.js';
import { BackendError, type BackendConnection } from '../../src/relay/smtp-client.js';

const TARGET: BackendTarget = {
  name: '127.0.0.1:1',
  options: { host: '127.0.0.1', port: 1, tls: 'none', heloName: 'gate.test', timeouts: { connectMs: 1, greetingMs: 1, commandMs: 1, dataIdleMs: 1, finalReplyMs: 1 } },
} as BackendTarget;

function session(connect: () => Promise<BackendConnection>) {
  const reported: BackendError[] = [];
  const s = new BackendSession(new BackendPool([TARGET], 'failover', 1000), { identity: 'none' }, { onConnected: () => undefined, onError: (_t, err) => reported.push(err) }, connect);
  return { s, reported };
}

/** Just enough of a backend connection for a session to open it, use it and close it. */
class FakeConnection extends EventEmitter {
  closed = false;
  readonly busy = false;
  readonly capabilities = new Map<string, string>();
  readonly commands: string[] = [];
  hasCapability(): boolean {
    return false;
  }
  command(line: string): Promise<{ code: number; text: string; lines: string[] }> {
    this.commands.push(line);
    return Promise.resolve({ code: 250, text: '2.0.0 Ok', lines: ['2.0.0 Ok'] });
  }
  quit(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
  abort(): void {
    this.closed = true;
  }
}

describe('after the client session is over', () => {
  test('a command that was still on its way (the client left while the limits were asked) is refused as smtpgate\'s own doing, and not reported', async () => {
    const conn = new FakeConnection();
    const { s, reported } = session(() => Promise.resolve(conn as unknown as BackendConnection));
    expect((await s.mail('MAIL FROM:<alice@corp.test>', { addr: '192.0.2.1', port: 4000, proto: 'ESMTP' })).code).toBe(250);
    // The client leaves; its RCPT was waiting on the limits store meanwhile.
    await s.close();
    expect(conn.closed).toBe(true);
    const err = await s.rcpt('RCPT TO:<bob@corp.test>').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BackendError);
    expect((err as BackendError).kind).toBe('closed');
    expect(s.droppedByUs(err)).toBe(true);
    expect(reported).toEqual([]);
    expect(conn.commands).toEqual(['MAIL FROM:<alice@corp.test>']);
  });

  test('so is a MAIL that would open a new backend connection', async () => {
    let connects = 0;
    const { s, reported } = session(() => {
      connects++;
      return Promise.reject(new Error('no connection expected'));
    });
    await s.close();
    const err = await s.mail('MAIL FROM:<alice@corp.test>', { addr: '192.0.2.1', port: 4000, proto: 'ESMTP' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(s.droppedByUs(err)).toBe(true);
    expect(connects).toBe(0);
    expect(reported).toEqual([]);
  });
});

describe('a backend that fails', () => {
  test('is reported, and its error is not taken for smtpgate\'s own', async () => {
    const refused = new BackendError('connect', 'connect ECONNREFUSED 127.0.0.1:1');
    const { s, reported } = session(() => Promise.reject(refused));
    const err = await s.mail('MAIL FROM:<alice@corp.test>', { addr: '192.0.2.1', port: 4000, proto: 'ESMTP' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBe(refused);
    expect(s.droppedByUs(err)).toBe(false);
    expect(reported).toEqual([refused]);
  });
});
