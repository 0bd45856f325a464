/**
 * The Dovecot source's lookup without a password (for app passwords), against a real Dovecot
 * (Debian's dovecot-core, started by the test in a temp dir) over its auth-userdb socket, unix
 * and inet: what each account becomes (ok, unknown_user, disabled by nologin or by a deny
 * passdb, unavailable), that no secret from the passdb reaches an outcome or a log line,
 * Dovecot crashing, hanging and coming back, and `probe`. A fake server on loopback covers what
 * a real Dovecot won't send: garbled, over-long and misaddressed lines, replies out of order,
 * a failed passdb lookup. And the config: auth.dovecot.lookupSocket and the start-up check for
 * app passwords.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { authSection, dovecotLookupProblem } from '../../../src/config/auth-section.js';
import type { AuthOutcome, LookupRequest } from '../../../src/auth/authenticator.js';
import { FAKE_MASTER_HANDSHAKE, dovecotSource, startDovecot, startFakeDovecot, type TestDovecot } from '../../helpers/dovecot.js';
import { describeWith } from '../../helpers/programs.js';

const USERS = {
  alice: { password: 'alice-pw' },
  bob: { password: 'bob-pw', scheme: 'SHA512-CRYPT' },
  dave: { password: 'dave-pw', nologin: true },
  erin: { password: 'erin-pw' },
  // A proxied account: Dovecot hands its passdb fields to a PASS lookup, pass= among them.
  frank: { password: 'frank-pw', fields: 'proxy host=192.0.2.55 pass=frank-proxy-secret' },
} as const;

function lookupOf(username: string, more: Partial<LookupRequest> = {}): LookupRequest {
  return { username, sessionId: 'sess-1', remoteAddress: '192.0.2.7', listener: 'submission', ...more };
}

/** A source with these sockets (the auth-client one is unused by lookups); its log lines are kept. */
function source(dovecot: { socket?: string; lookupSocket?: string; timeout?: string }) {
  return dovecotSource({ socket: dovecot.socket ?? '127.0.0.1:1', timeout: dovecot.timeout ?? '3s', ...(dovecot.lookupSocket ? { lookupSocket: dovecot.lookupSocket } : {}) });
}

const said = (o: AuthOutcome) => (o.ok ? `ok:${o.user.username}` : o.reason);

describeWith(['dovecot', 'doveadm'], 'dovecot lookups against a real Dovecot with a userdb', () => {
  let dovecot: TestDovecot;
  beforeAll(async () => {
    dovecot = await startDovecot({ users: USERS, disabled: ['erin'], tempFail: ['flaky'], userdb: true });
  });
  afterAll(async () => {
    await dovecot?.stop();
  });

  for (const kind of ['unix', 'inet'] as const) {
    describe(`over the ${kind} auth-userdb socket`, () => {
      const at = () => (kind === 'unix' ? dovecot.userdbSocketPath : `127.0.0.1:${dovecot.userdbPort}`);

      test('an existing user is ok, named as Dovecot spells them (auth_username_format lower-cases)', async () => {
        const { source: s } = source({ lookupSocket: at() });
        expect(await s.lookup(lookupOf('alice'))).toEqual({ ok: true, user: { username: 'alice' } });
        expect(await s.lookup(lookupOf('Bob'))).toEqual({ ok: true, user: { username: 'bob' } });
      });

      test('an unknown user is unknown_user', async () => {
        const { source: s } = source({ lookupSocket: at() });
        expect(await s.lookup(lookupOf('mallory'))).toEqual({ ok: false, reason: 'unknown_user' });
      });

      test('an account with nologin is disabled, with its reason', async () => {
        const { source: s } = source({ lookupSocket: at() });
        expect(await s.lookup(lookupOf('dave'))).toEqual({ ok: false, reason: 'disabled', detail: `dovecot lookups at ${at()}: nologin: moved` });
      });

      test('an account in the deny passdb is disabled: the passdb says NOTFOUND, the userdb knows them', async () => {
        const { source: s } = source({ lookupSocket: at() });
        expect(await s.lookup(lookupOf('erin'))).toMatchObject({ ok: false, reason: 'disabled', detail: expect.stringContaining('the passdb refuses this login, which the userdb knows') });
      });

      test("a passdb's temporary failure is unavailable, and the detail names the socket", async () => {
        const { source: s } = source({ lookupSocket: at() });
        expect(await s.lookup(lookupOf('flaky'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringMatching(new RegExp(`^dovecot lookups at ${at()}: passdb lookup failed`)) });
      });

      test('40 lookups at once each get their own answer', async () => {
        const { source: s } = source({ lookupSocket: at() });
        const names = Array.from({ length: 40 }, (_, i) => (['alice', 'bob', 'dave', 'erin', 'mallory'] as const)[i % 5]!);
        const outcomes = await Promise.all(names.map((n, i) => s.lookup(lookupOf(n, { sessionId: `sess-${i}` }))));
        const expected = { alice: 'ok:alice', bob: 'ok:bob', dave: 'disabled', erin: 'disabled', mallory: 'unknown_user' };
        expect(outcomes.map(said)).toEqual(names.map((n) => expected[n]));
      });

      test('probe reports both sockets, and that passdb lookups are allowed', async () => {
        const { source: s } = source({ socket: dovecot.socketPath, lookupSocket: at() });
        expect(await s.probe()).toMatch(new RegExp(`; lookups at ${at().replace(/[.]/g, '\\.')}: protocol 1\\.\\d+, auth process \\d+, passdb lookups allowed$`));
      });
    });
  }

  test('neither the password hash nor any other passdb field reaches an outcome or a log line', async () => {
    const { source: s, logs } = source({ lookupSocket: dovecot.userdbSocketPath });
    const stored = (await readFile(path.join(dovecot.dir, 'users'), 'utf8')).split('\n').filter(Boolean).map((l) => l.split(':')[1]!);
    const bobHash = stored.find((h) => h.startsWith('{SHA512-CRYPT}') || h.startsWith('$6$'))!;
    expect(bobHash).toBeDefined();
    const outcomes = await Promise.all(['alice', 'bob', 'dave', 'erin', 'frank', 'mallory', 'flaky'].map((n) => s.lookup(lookupOf(n))));
    expect(outcomes.map(said)).toEqual(['ok:alice', 'ok:bob', 'disabled', 'disabled', 'ok:frank', 'unknown_user', 'unavailable']);
    const text = `${logs()} ${JSON.stringify(outcomes)}`;
    for (const secret of [...stored, bobHash.replace(/^\{[^}]+\}/, ''), 'frank-proxy-secret', '192.0.2.55', 'alice-pw', 'bob-pw']) {
      expect(text).not.toContain(secret);
    }
    expect(text).toContain('dovecot: looked up');
  });

  test('a login with a NUL is unknown_user without asking Dovecot (it would look up the name cut at the NUL)', async () => {
    const { source: s } = source({ lookupSocket: dovecot.userdbSocketPath });
    expect(await s.lookup(lookupOf('alice\0x'))).toMatchObject({ ok: false, reason: 'unknown_user', detail: expect.stringContaining('NUL') });
  });

  test('lookupSocket pointing at the auth-client socket: unavailable, and probe names the socket to use', async () => {
    const { source: s } = source({ socket: dovecot.socketPath, lookupSocket: dovecot.socketPath });
    expect(await s.lookup(lookupOf('alice'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('protocol error: MECH during the handshake: this is an auth-client socket') });
    await expect(s.probe()).rejects.toThrow(/protocol error.*is this Dovecot's auth-userdb socket, not auth-client/);
  });
});

describeWith(['dovecot', 'doveadm'], 'dovecot lookups against a real Dovecot without a userdb of its own', () => {
  let dovecot: TestDovecot;
  beforeAll(async () => {
    dovecot = await startDovecot({ users: USERS, disabled: ['erin'] });
  });
  afterAll(async () => {
    await dovecot?.stop();
  });

  test('nologin still reads as disabled, but a denied account reads as unknown_user: the default static userdb asks the passdb too', async () => {
    const { source: s } = source({ lookupSocket: dovecot.userdbSocketPath });
    expect(said(await s.lookup(lookupOf('alice')))).toBe('ok:alice');
    expect(said(await s.lookup(lookupOf('dave')))).toBe('disabled');
    expect(said(await s.lookup(lookupOf('erin')))).toBe('unknown_user');
  });
});

describeWith(['dovecot', 'doveadm'], 'dovecot lookups when Dovecot fails', () => {
  let dovecot: TestDovecot;
  beforeAll(async () => {
    dovecot = await startDovecot({ users: { alice: USERS.alice } });
  });
  afterAll(async () => {
    await dovecot?.stop();
  });

  test('killed with a lookup in flight: unavailable at once; stopped: unavailable; restarted: the next lookup works', async () => {
    const { source: s } = source({ lookupSocket: dovecot.userdbSocketPath, timeout: '10s' });
    expect(said(await s.lookup(lookupOf('alice')))).toBe('ok:alice');

    dovecot.freeze();
    const inFlight = s.lookup(lookupOf('alice'));
    await new Promise((r) => setImmediate(r)); // the PASS line is written before the crash
    await dovecot.kill();
    const lost = await inFlight;
    expect(lost).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringMatching(new RegExp(`^dovecot lookups at ${dovecot.userdbSocketPath}: `)) });
    // The closed socket answered it, not the 10 s timeout (no wall-clock bound: the machine may be slow).
    expect(lost.ok ? '' : lost.detail).not.toMatch(/no reply within/);

    expect(await s.lookup(lookupOf('alice'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringMatching(/ECONNREFUSED|ENOENT/) });
    await expect(s.probe()).rejects.toThrow();

    await dovecot.start();
    expect(await s.lookup(lookupOf('alice'))).toEqual({ ok: true, user: { username: 'alice' } });
  });

  test('hung (no answer): unavailable when the timeout runs out, and lookups work again once it thaws', async () => {
    const { source: s } = source({ lookupSocket: `127.0.0.1:${dovecot.userdbPort}`, timeout: '700ms' });
    expect(said(await s.lookup(lookupOf('alice')))).toBe('ok:alice');
    dovecot.freeze();
    const started = Date.now();
    const outcome = await s.lookup(lookupOf('alice'));
    const took = Date.now() - started;
    dovecot.thaw();
    expect(took).toBeGreaterThanOrEqual(690);
    // The time left of the 700 ms when the PASS line went out.
    expect(outcome).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringMatching(new RegExp(`^dovecot lookups at 127\\.0\\.0\\.1:${dovecot.userdbPort}: no reply within \\d+ ms$`)) });
    expect(await s.lookup(lookupOf('alice'))).toEqual({ ok: true, user: { username: 'alice' } });
  });

  test('a missing lookup socket: unavailable naming it, and probe names the fix', async () => {
    const missing = `${dovecot.dir}/no-such-socket`;
    const { source: s } = source({ socket: dovecot.socketPath, lookupSocket: missing });
    expect(await s.lookup(lookupOf('alice'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringMatching(new RegExp(`^dovecot lookups at ${missing}: .*ENOENT`)) });
    await expect(s.probe()).rejects.toThrow(/no-such-socket: .*ENOENT.*unix_listener auth-userdb/);
  });

  test('without lookupSocket, a lookup is unavailable and says which setting is missing; sign-ins still work', async () => {
    const { source: s } = source({ socket: dovecot.socketPath });
    expect(await s.lookup(lookupOf('alice'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringMatching(/^auth\.dovecot: a lookup without the user's password needs lookupSocket/) });
    const signIn = { username: 'alice', password: 'alice-pw', mechanism: 'PLAIN', sessionId: 's', remoteAddress: '192.0.2.7', listener: 'l', tls: undefined } as const;
    expect(await s.authenticate(signIn)).toEqual({ ok: true, user: { username: 'alice' } });
  });
});

describe('dovecot lookups against a misbehaving server', () => {
  const fields = (line: string) => line.split('\t');

  async function fake(onLookup?: (id: string, line: string, sock: import('node:net').Socket) => void, handshake = FAKE_MASTER_HANDSHAKE) {
    const server = await startFakeDovecot({ handshake, onLookup });
    onTestFinished(() => server.close());
    return server;
  }

  test('greets with VERSION 1 0, asks PASS with service, session and rip, and USER only after NOTFOUND', async () => {
    const server = await fake((id, _line, sock) => sock.write(`NOTFOUND\t${id}\n`));
    const { source: s } = source({ lookupSocket: `127.0.0.1:${server.port}` });
    expect(await s.lookup(lookupOf('al\tice', { remoteAddress: '::ffff:198.51.100.4', sessionId: 'a\tb' }))).toEqual({ ok: false, reason: 'unknown_user' });
    expect(server.received).toEqual(['VERSION\t1\t0', 'PASS\t1\tal\x01tice\tservice=smtp\tsession=a\x01tb\trip=198.51.100.4', 'USER\t2\tal\x01tice\tservice=smtp\tsession=a\x01tb\trip=198.51.100.4']);
  });

  test('replies out of order are matched by id over one connection', async () => {
    const waiting: { id: string; line: string }[] = [];
    const server = await fake((id, line, sock) => {
      waiting.push({ id, line });
      if (waiting.length < 30) return;
      for (const w of waiting.reverse()) {
        const login = fields(w.line)[2]!;
        sock.write(Number(login.slice(1)) % 3 ? `PASS\t${w.id}\tuser=${login.toUpperCase()}\n` : `PASS\t${w.id}\tuser=${login}\tnologin\n`);
      }
    });
    const { source: s } = source({ lookupSocket: `127.0.0.1:${server.port}` });
    const outcomes = await Promise.all(Array.from({ length: 30 }, (_, i) => s.lookup(lookupOf(`u${i}`))));
    expect(outcomes.map(said)).toEqual(Array.from({ length: 30 }, (_, i) => (i % 3 ? `ok:U${i}` : 'disabled')));
    expect(server.connections).toBe(1);
  });

  test('a reply to an id nobody asked about is ignored; the right one still answers', async () => {
    const server = await fake((id, _line, sock) => sock.write(`PASS\t${Number(id) + 100}\tuser=mallory\nPASS\t${id}\tuser=alice\n`));
    const { source: s } = source({ lookupSocket: `127.0.0.1:${server.port}` });
    expect(await s.lookup(lookupOf('alice'))).toEqual({ ok: true, user: { username: 'alice' } });
  });

  test('extra fields in a reply are dropped: a secret in them reaches neither the outcome nor the log', async () => {
    const server = await fake((id, line, sock) => {
      const user = fields(line)[2]!;
      sock.write(`PASS\t${id}\tuser=${user}\tpassword={BLF-CRYPT}$2y$05$s3cr3th4sh\t${user === 'dave' ? 'nologin\treason=moved\t' : ''}pass=proxy-s3cret\tunknown\tuser_extra=x\n`);
    });
    const { source: s, logs } = source({ lookupSocket: `127.0.0.1:${server.port}` });
    const outcomes = [await s.lookup(lookupOf('alice')), await s.lookup(lookupOf('dave'))];
    expect(outcomes).toEqual([
      { ok: true, user: { username: 'alice' } },
      { ok: false, reason: 'disabled', detail: `dovecot lookups at 127.0.0.1:${server.port}: nologin: moved` },
    ]);
    expect(`${logs()} ${JSON.stringify(outcomes)}`).not.toMatch(/s3cr3t|s3cret/);
  });

  test('a reply without an id is a protocol error that quotes nothing of it; the next lookup reconnects', async () => {
    let n = 0;
    const server = await fake((id, _line, sock) => sock.write(n++ === 0 ? 'PASS\tpassword=s3cret\n' : `PASS\t${id}\tuser=alice\n`));
    const { source: s, logs } = source({ lookupSocket: `127.0.0.1:${server.port}` });
    const outcome = await s.lookup(lookupOf('alice'));
    expect(outcome).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('protocol error: a PASS reply without a valid id') });
    expect(`${logs()} ${JSON.stringify(outcome)}`).not.toContain('s3cret');
    expect(said(await s.lookup(lookupOf('alice')))).toBe('ok:alice');
    expect(server.connections).toBe(2);
  });

  test('an over-long line (no LF within 64 KiB) is a protocol error, not a crash or a buffer without end', async () => {
    const server = await fake((id, _line, sock) => sock.write(`PASS\t${id}\tuser=${'a'.repeat(70 * 1024)}`));
    const { source: s } = source({ lookupSocket: `127.0.0.1:${server.port}` });
    expect(await s.lookup(lookupOf('alice'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('protocol error: a line longer than 65536 bytes') });
  });

  test('FAIL without a reason is unavailable and points at the socket permissions; probe says how to grant them', async () => {
    const server = await fake((id, _line, sock) => sock.write(`FAIL\t${id}\n`));
    const { source: s } = source({ lookupSocket: `127.0.0.1:${server.port}` });
    expect(await s.lookup(lookupOf('alice'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('may not make passdb lookups on this socket') });
    // The probe opens the auth-client socket first: a second fake stands in for it.
    const client = await startFakeDovecot();
    onTestFinished(() => client.close());
    const { source: probing } = source({ socket: `127.0.0.1:${client.port}`, lookupSocket: `127.0.0.1:${server.port}` });
    await expect(probing.probe()).rejects.toThrow(/a passdb lookup failed: .*unix_listener auth-userdb \{ mode = 0660/);
  });

  test('USER in reply to PASS is unavailable, not a sign-in', async () => {
    const server = await fake((id, _line, sock) => sock.write(`USER\t${id}\talice\n`));
    const { source: s } = source({ lookupSocket: `127.0.0.1:${server.port}` });
    expect(await s.lookup(lookupOf('alice'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('answered a PASS lookup with USER') });
  });

  test('a server that never finishes the handshake: unavailable after the timeout', async () => {
    const server = await fake(undefined, 'VERSION\t1\t1\n');
    const { source: s } = source({ lookupSocket: `127.0.0.1:${server.port}`, timeout: '300ms' });
    expect(await s.lookup(lookupOf('alice'))).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('no handshake within 300 ms') });
  });

  test('a login too long for the server\'s 1 KiB request buffer is unknown_user without asking', async () => {
    const server = await fake((id, _line, sock) => sock.write(`PASS\t${id}\tuser=x\n`));
    const { source: s } = source({ lookupSocket: `127.0.0.1:${server.port}` });
    expect(await s.lookup(lookupOf('a'.repeat(1000)))).toMatchObject({ ok: false, reason: 'unknown_user', detail: expect.stringContaining('1024-byte request limit') });
    expect(server.connections).toBe(0);
  });

  test('close() fails what is in flight and stops lookups', async () => {
    const server = await fake();
    const { source: s } = source({ lookupSocket: `127.0.0.1:${server.port}` });
    const inFlight = s.lookup(lookupOf('alice'));
    await expect.poll(() => server.received.length).toBe(2);
    await s.close();
    expect(await inFlight).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringContaining('closed') });
    expect(await s.lookup(lookupOf('alice'))).toMatchObject({ ok: false, reason: 'unavailable' });
  });
});

describe('auth.dovecot.lookupSocket in the config', () => {
  const parse = (auth: Record<string, unknown>) => authSection('/etc/smtpgate').safeParse(auth);

  test('is a unix path (relative to the config file) or host:port, like socket', () => {
    const unix = parse({ backend: 'dovecot', dovecot: { socket: '/run/dovecot/auth-client', lookupSocket: './dovecot/auth-userdb' } });
    expect(unix.success && unix.data.dovecot?.lookupSocket).toEqual({ kind: 'unix', path: '/etc/smtpgate/dovecot/auth-userdb' });
    const inet = parse({ backend: 'dovecot', dovecot: { socket: '/run/dovecot/auth-client', lookupSocket: '[::1]:12346' } });
    expect(inet.success && inet.data.dovecot?.lookupSocket).toEqual({ kind: 'inet', host: '::1', port: 12346 });
    const bad = parse({ backend: 'dovecot', dovecot: { socket: '/run/dovecot/auth-client', lookupSocket: 'auth-userdb' } });
    expect(bad.error?.issues).toEqual([expect.objectContaining({ path: ['dovecot', 'lookupSocket'], message: 'expected a unix socket path (/run/dovecot/auth-userdb) or host:port, found "auth-userdb"' })]);
  });

  test('without lookupSocket, a lookup without the password is impossible, and the problem names the field and the fix', () => {
    const dovecot = (section: Record<string, unknown>) => authSection('/').parse({ backend: 'dovecot', dovecot: section }).dovecot!;
    expect(dovecotLookupProblem(dovecot({ socket: '/run/dovecot/auth-client' }))).toMatch(
      /^auth\.dovecot: .*needs lookupSocket, Dovecot's auth-userdb socket .*set lookupSocket: \/run\/dovecot\/auth-userdb.*unix_listener auth-userdb \{ mode = 0660/,
    );
    expect(dovecotLookupProblem(dovecot({ socket: '/run/dovecot/auth-client', lookupSocket: '/run/dovecot/auth-userdb' }))).toBeUndefined();
  });
});
