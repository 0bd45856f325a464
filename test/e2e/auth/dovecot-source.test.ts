/**
 * The Dovecot auth source against a real Dovecot (Debian's dovecot-core, started by the test
 * in a temp dir), over its unix auth-client socket and over an inet_listener: what each of
 * Dovecot's answers becomes, many sign-ins sharing one connection, Dovecot crashing, hanging
 * and coming back, and `probe`. A fake server on loopback covers what a real Dovecot won't
 * send: garbled and over-long lines, another protocol version, CONT, answers out of order.
 */
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import type { AuthOutcome, AuthRequest } from '../../../src/auth/authenticator.js';
import { dovecotSource, startDovecot, startFakeDovecot, FAKE_HANDSHAKE, type TestDovecot } from '../../helpers/dovecot.js';
import { describeWith } from '../../helpers/programs.js';

const USERS = {
  alice: { password: 'alice-pw' },
  bob: { password: 'bob-pw: with spaces & ütf-8', scheme: 'SHA512-CRYPT' },
  carol: { password: 'carol-pw', scheme: 'BLF-CRYPT' },
  dave: { password: 'dave-pw', nologin: true },
  erin: { password: 'erin-pw' },
} as const;

function signIn(username: string, password: string, more: Partial<AuthRequest> = {}): AuthRequest {
  return {
    username,
    password,
    mechanism: 'PLAIN',
    sessionId: 'sess-1',
    remoteAddress: '192.0.2.7',
    listener: 'submission',
    tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' },
    ...more,
  };
}

/** A source on `socket`; its log lines are kept. */
const source = (socket: string, timeout = '3s') => dovecotSource({ socket, timeout });

const failed = (o: AuthOutcome) => (o.ok ? 'ok' : o.reason);

describeWith(['dovecot', 'doveadm'], 'dovecot source against a real Dovecot', () => {
  let dovecot: TestDovecot;
  beforeAll(async () => {
    dovecot = await startDovecot({ users: USERS, disabled: ['erin'], tempFail: ['flaky'] });
  });
  afterAll(async () => {
    await dovecot?.stop();
  });

  for (const kind of ['unix', 'inet'] as const) {
    describe(`over the ${kind} socket`, () => {
      const at = () => (kind === 'unix' ? dovecot.socketPath : `127.0.0.1:${dovecot.port}`);

      test('the right password signs in, whatever scheme the passdb stores it in', async () => {
        const { source: s } = source(at());
        for (const name of ['alice', 'bob', 'carol'] as const) {
          expect(await s.authenticate(signIn(name, USERS[name].password))).toEqual({ ok: true, user: { username: name } });
        }
      });

      test('the user is named as Dovecot spells it (auth_username_format lower-cases)', async () => {
        const { source: s } = source(at());
        expect(await s.authenticate(signIn('Alice', 'alice-pw'))).toEqual({ ok: true, user: { username: 'alice' } });
      });

      test('a wrong password is bad_credentials', async () => {
        const { source: s } = source(at());
        expect(failed(await s.authenticate(signIn('alice', 'wrong')))).toBe('bad_credentials');
        expect(failed(await s.authenticate(signIn('carol', 'alice-pw')))).toBe('bad_credentials');
      });

      test('an unknown user is bad_credentials too: Dovecot does not tell them apart', async () => {
        const { source: s } = source(at());
        expect(failed(await s.authenticate(signIn('mallory', 'whatever')))).toBe('bad_credentials');
      });

      test('a denied account (deny passdb) is disabled, even with its right password', async () => {
        const { source: s } = source(at());
        const outcome = await s.authenticate(signIn('erin', 'erin-pw'));
        expect(outcome).toMatchObject({ ok: false, reason: 'disabled' });
        expect(outcome.ok ? '' : outcome.detail).toContain('user_disabled');
      });

      test('an account with nologin is disabled', async () => {
        const { source: s } = source(at());
        expect(await s.authenticate(signIn('dave', 'dave-pw'))).toMatchObject({ ok: false, reason: 'disabled', detail: expect.stringContaining('nologin') });
      });

      test("a passdb's temporary failure is unavailable, and the detail names the socket", async () => {
        const { source: s } = source(at());
        const outcome = await s.authenticate(signIn('flaky', 'x'));
        expect(outcome).toMatchObject({ ok: false, reason: 'unavailable' });
        expect(outcome.ok ? '' : outcome.detail).toBe(`dovecot auth at ${at()}: temporary failure (temp_fail)`);
      });

      test('50 sign-ins at once share the connection and each gets its own answer', async () => {
        const { source: s } = source(at());
        const tries = Array.from({ length: 50 }, (_, i) => {
          const name = (['alice', 'bob', 'carol', 'mallory', 'erin'] as const)[i % 5]!;
          const right = i % 2 === 0;
          const password = name in USERS ? USERS[name as keyof typeof USERS].password : 'x';
          return { name, right, promise: s.authenticate(signIn(name, right ? password : `${password}-not`, { sessionId: `sess-${i}` })) };
        });
        const outcomes = await Promise.all(tries.map((t) => t.promise));
        const expected = tries.map((t) => (t.name === 'erin' ? 'disabled' : t.name === 'mallory' || !t.right ? 'bad_credentials' : 'ok'));
        expect(outcomes.map(failed)).toEqual(expected);
        outcomes.forEach((o, i) => o.ok && expect(o.user.username).toBe(tries[i]!.name));
      });

      test('probe reports the protocol and the mechanisms', async () => {
        const { source: s } = source(at());
        expect(await s.probe()).toMatch(new RegExp(`^dovecot auth at ${at().replace(/[.]/g, '\\.')}: protocol 1\\.\\d+, auth process \\d+, mechanisms PLAIN LOGIN$`));
      });
    });
  }

  test('no password reaches a log line or a detail', async () => {
    const { source: s, logs } = source(dovecot.socketPath);
    const outcomes = await Promise.all([
      s.authenticate(signIn('alice', 'alice-pw')),
      s.authenticate(signIn('alice', 'secret-wrong-1')),
      s.authenticate(signIn('erin', 'erin-pw')),
      s.authenticate(signIn('flaky', 'secret-flaky-2')),
    ]);
    const text = `${logs()} ${JSON.stringify(outcomes)}`;
    for (const password of ['alice-pw', 'secret-wrong-1', 'erin-pw', 'secret-flaky-2', Buffer.from('\0alice\0alice-pw').toString('base64')]) {
      expect(text).not.toContain(password);
    }
    expect(text).toContain('dovecot: signed in');
  });
});

describeWith(['dovecot', 'doveadm'], 'dovecot source when Dovecot fails', () => {
  let dovecot: TestDovecot;
  beforeAll(async () => {
    dovecot = await startDovecot({ users: { alice: USERS.alice } });
  });
  afterAll(async () => {
    await dovecot?.stop();
  });

  test('killed with a sign-in in flight: unavailable at once; while down: unavailable; restarted: the next sign-in works', async () => {
    const { source: s } = source(dovecot.socketPath, '10s');
    expect((await s.authenticate(signIn('alice', 'alice-pw'))).ok).toBe(true);

    // Frozen, it holds the request; killed, its socket closes under the request.
    dovecot.freeze();
    const inFlight = s.authenticate(signIn('alice', 'alice-pw'));
    await new Promise((r) => setImmediate(r)); // the AUTH line is written before the crash
    await dovecot.kill();
    const lost = await inFlight;
    expect(lost).toMatchObject({ ok: false, reason: 'unavailable' });
    expect(lost.ok ? '' : lost.detail).toMatch(new RegExp(`^dovecot auth at ${dovecot.socketPath}: `));
    // The closed socket answered it, not the 10 s timeout (no wall-clock bound: the machine may be slow).
    expect(lost.ok ? '' : lost.detail).not.toMatch(/no reply within/);

    const down = await s.authenticate(signIn('alice', 'alice-pw'));
    expect(down).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringMatching(/ECONNREFUSED|ENOENT/) });
    await expect(s.probe()).rejects.toThrow(/ECONNREFUSED.*is Dovecot running\?/);

    await dovecot.start();
    expect(await s.authenticate(signIn('alice', 'alice-pw'))).toEqual({ ok: true, user: { username: 'alice' } });
  });

  test('restarted between sign-ins: the next sign-in reconnects by itself', async () => {
    const { source: s } = source(`127.0.0.1:${dovecot.port}`);
    expect((await s.authenticate(signIn('alice', 'alice-pw'))).ok).toBe(true);
    await dovecot.kill();
    await dovecot.start();
    expect(await s.authenticate(signIn('alice', 'alice-pw'))).toEqual({ ok: true, user: { username: 'alice' } });
  });

  test('hung (no answer): unavailable when the timeout runs out, and sign-ins work again once it thaws', async () => {
    const { source: s } = source(dovecot.socketPath, '700ms');
    expect((await s.authenticate(signIn('alice', 'alice-pw'))).ok).toBe(true);
    dovecot.freeze();
    const started = Date.now();
    const outcome = await s.authenticate(signIn('alice', 'alice-pw'));
    const took = Date.now() - started;
    dovecot.thaw();
    expect(outcome).toMatchObject({ ok: false, reason: 'unavailable', detail: `dovecot auth at ${dovecot.socketPath}: no reply within 700 ms` });
    expect(took).toBeGreaterThanOrEqual(690);
    expect(await s.authenticate(signIn('alice', 'alice-pw'))).toEqual({ ok: true, user: { username: 'alice' } });
  });

  test('probe names the missing socket and the fix', async () => {
    const { source: s } = source(`${dovecot.dir}/no-such-socket`);
    await expect(s.probe()).rejects.toThrow(/no-such-socket: .*ENOENT.*unix_listener auth-client/);
    expect(await s.authenticate(signIn('alice', 'alice-pw'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('ENOENT') });
  });

  test('a Dovecot without PLAIN: probe says to set auth_mechanisms, sign-ins are unavailable', async () => {
    const loginOnly = await startDovecot({ users: { alice: USERS.alice }, mechanisms: 'login' });
    onTestFinished(() => loginOnly.stop());
    const { source: s } = source(loginOnly.socketPath);
    await expect(s.probe()).rejects.toThrow(/offers no PLAIN mechanism \(offers LOGIN\): add plain to auth_mechanisms/);
    expect(await s.authenticate(signIn('alice', 'alice-pw'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('no PLAIN') });
  });
});

describe('dovecot source against a misbehaving server', () => {
  const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
  const resp = (line: string) => Buffer.from(/\tresp=([^\t]*)$/.exec(line)![1]!, 'base64').toString('utf8');

  test('sends one strict AUTH line: PLAIN, service, secured, no-penalty, session, rip, resp last', async () => {
    const fake = await startFakeDovecot({ onAuth: (id, _line, sock) => sock.write(`OK\t${id}\tuser=alice\n`) });
    onTestFinished(() => fake.close());
    const { source: s } = source(`127.0.0.1:${fake.port}`);
    expect(await s.authenticate(signIn('alice', 'pässword', { remoteAddress: '::ffff:198.51.100.4', sessionId: 'a\tb' }))).toEqual({ ok: true, user: { username: 'alice' } });
    expect(fake.received[0]).toBe('VERSION\t1\t1');
    expect(fake.received[1]).toBe(`CPID\t${process.pid}`);
    expect(fake.received[2]).toBe(`AUTH\t1\tPLAIN\tservice=smtp\tsecured=tls\tno-penalty\tsession=a\x01tb\trip=198.51.100.4\tresp=${b64('\0alice\0pässword')}`);
  });

  test('answers out of order are matched by id over one connection', async () => {
    const waiting: { id: string; line: string }[] = [];
    const fake = await startFakeDovecot({
      onAuth: (id, line, sock) => {
        waiting.push({ id, line });
        if (waiting.length < 30) return;
        for (const w of waiting.reverse()) {
          const [, login, password] = resp(w.line).split('\0');
          sock.write(password === `${login}-pw` ? `OK\t${w.id}\tuser=${login}\n` : `FAIL\t${w.id}\tuser=${login}\n`);
        }
      },
    });
    onTestFinished(() => fake.close());
    const { source: s } = source(`127.0.0.1:${fake.port}`);
    const outcomes = await Promise.all(Array.from({ length: 30 }, (_, i) => s.authenticate(signIn(`u${i}`, i % 3 ? `u${i}-pw` : 'nope'))));
    expect(outcomes.map((o) => (o.ok ? o.user.username : o.reason))).toEqual(Array.from({ length: 30 }, (_, i) => (i % 3 ? `u${i}` : 'bad_credentials')));
    expect(fake.connections).toBe(1);
  });

  test('a garbled line drops the connection: the sign-in is unavailable, and the next one reconnects', async () => {
    let n = 0;
    const fake = await startFakeDovecot({ onAuth: (id, _l, sock) => sock.write(n++ === 0 ? 'HELLO\tthere\n' : `OK\t${id}\tuser=alice\n`) });
    onTestFinished(() => fake.close());
    const { source: s } = source(`127.0.0.1:${fake.port}`);
    expect(await s.authenticate(signIn('alice', 'pw'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('protocol error: unexpected "HELLO" line') });
    expect((await s.authenticate(signIn('alice', 'pw'))).ok).toBe(true);
    expect(fake.connections).toBe(2);
  });

  test('an over-long line (no LF within 64 KiB) is a protocol error, not a crash or a buffer without end', async () => {
    const fake = await startFakeDovecot({ onAuth: (id, _l, sock) => sock.write(`OK\t${id}\tuser=${'a'.repeat(70 * 1024)}`) });
    onTestFinished(() => fake.close());
    const { source: s } = source(`127.0.0.1:${fake.port}`);
    expect(await s.authenticate(signIn('alice', 'pw'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('protocol error: a line longer than 65536 bytes') });
  });

  test('a reply id with garbage in it is a protocol error', async () => {
    const fake = await startFakeDovecot({ onAuth: (id, _l, sock) => sock.write(`OK\t${id}x\tuser=alice\n`) });
    onTestFinished(() => fake.close());
    const { source: s } = source(`127.0.0.1:${fake.port}`);
    expect(await s.authenticate(signIn('alice', 'pw'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('protocol error: OK id') });
  });

  test('another major protocol version is refused by probe and sign-ins', async () => {
    const fake = await startFakeDovecot({ handshake: FAKE_HANDSHAKE.replace('VERSION\t1\t2', 'VERSION\t2\t0') });
    onTestFinished(() => fake.close());
    const { source: s } = source(`127.0.0.1:${fake.port}`);
    await expect(s.probe()).rejects.toThrow(/protocol error: Dovecot speaks auth protocol 2\.0; smtpgate speaks 1\.x/);
    expect(await s.authenticate(signIn('alice', 'pw'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('auth protocol 2.0') });
  });

  test('a server that never finishes the handshake: unavailable after the timeout', async () => {
    const fake = await startFakeDovecot({ handshake: 'VERSION\t1\t2\nMECH\tPLAIN\n' });
    onTestFinished(() => fake.close());
    const { source: s } = source(`127.0.0.1:${fake.port}`, '300ms');
    expect(await s.authenticate(signIn('alice', 'pw'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('no handshake within 300 ms') });
  });

  test('CONT for a complete PLAIN sign-in is refused as bad_credentials, the request cancelled and logged', async () => {
    const fake = await startFakeDovecot({ onAuth: (id, _l, sock) => sock.write(`CONT\t${id}\t\n`) });
    onTestFinished(() => fake.close());
    const { source: s, logs } = source(`127.0.0.1:${fake.port}`);
    expect(await s.authenticate(signIn('alice', 'pw'))).toMatchObject({ ok: false, reason: 'bad_credentials', detail: expect.stringContaining('CONT') });
    await expect.poll(() => fake.received.at(-1)).toBe('CANCEL\t1');
    expect(logs()).toContain('CONT for a complete PLAIN sign-in');
  });

  test('a NUL in the login or password is refused without asking Dovecot', async () => {
    const fake = await startFakeDovecot({ onAuth: (id, _l, sock) => sock.write(`OK\t${id}\n`) });
    onTestFinished(() => fake.close());
    const { source: s } = source(`127.0.0.1:${fake.port}`);
    expect(failed(await s.authenticate(signIn('alice', 'pw\0admin')))).toBe('bad_credentials');
    expect(failed(await s.authenticate(signIn('alice\0bob', 'pw')))).toBe('bad_credentials');
    expect(fake.connections).toBe(0);
  });

  test('close() fails what is in flight and stops the source', async () => {
    const fake = await startFakeDovecot();
    onTestFinished(() => fake.close());
    const { source: s } = source(`127.0.0.1:${fake.port}`);
    const inFlight = s.authenticate(signIn('alice', 'pw'));
    await expect.poll(() => fake.received.length).toBe(3);
    await s.close();
    expect(await inFlight).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('closed') });
    expect(await s.authenticate(signIn('alice', 'pw'))).toMatchObject({ ok: false, reason: 'unavailable' });
  });
});
