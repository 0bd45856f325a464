/**
 * The ClientSession driven stage by stage with fakes: a fake connection (plain values), fake
 * limits and authenticator, a fake clock and fake timers; real metrics, read back.
 */
import { PassThrough, Readable, Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { createLogger } from '../../src/logging/logger.js';
import { ClientSession, type ClientConnection, type ClientSessionDeps, type PeerCertificate } from '../../src/session/client-session.js';
import { OK } from '../../src/session/checkpoint.js';
import { createMetrics } from '../../src/metrics/catalogue.js';
import { readBuildInfo } from '../../src/build-info.js';
import { emptyPolicySet } from '../../src/policy/load.js';
import type { Authenticator, AuthOutcome } from '../../src/auth/authenticator.js';
import type { AuthFacts, AuthReservation } from '../../src/limits/limits.js';
import type { LimitsPlan } from '../../src/limits/plan.js';
import type { Backend, Transaction } from '../../src/relay/backend.js';
import type { PolicySet } from '../../src/policy/types.js';
import type { Refusal } from '../../src/reply.js';
import type { Stage } from '../../src/stage.js';
import { DATA_TOO_LONG, AUTH_REQUIRED, NON_ASCII_WITHOUT_SMTPUTF8, STARTTLS_REQUIRED, AUTH_CREDENTIALS_INVALID, AUTH_IN_TRANSACTION, AUTH_TEMPORARY_FAILURE, AUTH_WITHOUT_TLS, SESSION_TIME_LIMIT, TLS_HANDSHAKE_TIMEOUT } from '../../src/refusals.js';
import { policySet } from '../fixtures/policy/load-set.js';

class FakeConnection implements ClientConnection {
  readonly id = 'sess1';
  readonly remoteAddress = '192.0.2.7';
  readonly remotePort = 40000;
  isSecure = false;
  version: string | undefined;
  heloName: string | undefined;
  transaction = false;
  rcpts: string[] = [];
  secure(): boolean {
    return this.isSecure;
  }
  tlsVersion(): string | undefined {
    return this.version;
  }
  tlsCipher(): string | undefined {
    return this.version ? 'TLS_AES_256_GCM_SHA384' : undefined;
  }
  tlsServername(): string | undefined {
    return this.version ? 'mail.corp.example' : undefined;
  }
  helo(): string | undefined {
    return this.heloName;
  }
  greeting(): 'HELO' | 'EHLO' | undefined {
    return this.heloName ? 'EHLO' : undefined;
  }
  inTransaction(): boolean {
    return this.transaction;
  }
  recipients(): readonly string[] {
    return this.rcpts;
  }
  recipientCount(): number {
    return this.rcpts.length;
  }
  /** What a finished STARTTLS handshake leaves. */
  handshake(): void {
    this.isSecure = true;
    this.version = 'TLSv1.3';
  }
}

const RESERVATION: AuthReservation = { held: [] };

/** Limits that record the AUTH calls and answer what the test scripted. */
class FakeLimits {
  readonly calls: string[] = [];
  locked: Refusal | undefined;
  suspended: Refusal | undefined;
  readonly plan: LimitsPlan = { connect: true, anonymousMail: true };
  async mailFrom(): Promise<Refusal | undefined> {
    return undefined;
  }
  recipientCap(): Refusal | undefined {
    return undefined;
  }
  async rcptTo(): Promise<Refusal | undefined> {
    return undefined;
  }
  async policyLimit(): Promise<{ limited: false }> {
    return { limited: false };
  }
  async authAllowed(f: AuthFacts) {
    this.calls.push(`allowed:${f.username}`);
    return this.locked ? { refusal: this.locked } : { reservation: RESERVATION };
  }
  async authFailed() {
    this.calls.push('failed');
    return { lockedOut: false };
  }
  async authSucceeded(f: AuthFacts) {
    this.calls.push(`succeeded:${f.username}`);
    return this.suspended;
  }
  async authAbandoned() {
    this.calls.push('abandoned');
  }
  async messageBytes() {}
}

/** One auth source answering as the chain passes its answers on: with its kind as `source`. */
class FakeAuthenticator implements Authenticator {
  readonly asked: string[] = [];
  constructor(
    readonly kind: string,
    readonly answer: (username: string, password: string) => AuthOutcome | Error,
  ) {}
  async authenticate(req: { username: string; password: string }): Promise<AuthOutcome> {
    this.asked.push(req.username);
    const a = this.answer(req.username, req.password);
    if (a instanceof Error) throw a;
    return { ...a, source: this.kind };
  }
}

const rightPassword = (u: string, p: string): AuthOutcome => (p === 'secret' ? { ok: true, user: { username: u } } : { ok: false, reason: 'bad_credentials' });

interface Options {
  policy?: PolicySet;
  authenticator?: Authenticator;
  clientCerts?: ClientSessionDeps['clientCerts'];
  requireTls?: boolean;
  requireAuth?: boolean;
  /** The client is in the listener's trusted networks. */
  trusted?: boolean;
}

let now = 1_000_000;
beforeEach(() => {
  vi.useFakeTimers();
  now = 1_000_000;
});
afterEach(() => {
  vi.useRealTimers();
});

function sessionWith(opts: Options = {}) {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  const log = createLogger({ level: 'debug', format: 'json', destination: sink }).child({ session: 'sess1', listener: 'submission', client: '192.0.2.7' });
  const metrics = createMetrics(readBuildInfo());
  const limits = new FakeLimits();
  const hungUp: { refusal: Refusal; stage: Stage; reply: boolean }[] = [];
  const backend = { closed: 0, aborted: 0, released: 0, mails: [] as string[], mailAnswer: undefined as Refusal | undefined };
  const fakeBackend = {
    close: async () => void backend.closed++,
    abort: () => void backend.aborted++,
    releaseIdentity: () => void backend.released++,
    // Only refusals here: an accepted MAIL (a Transaction) is the relay's, covered by its own tests.
    mail: async (from: { address: string }) => {
      backend.mails.push(from.address);
      return backend.mailAnswer ?? { code: 451, enhanced: '4.4.1', text: 'no backend in this test', reason: 'backend_unavailable' };
    },
  } as unknown as Backend;
  const deps: ClientSessionDeps = {
    listener: 'submission',
    limits,
    attributes: (user) => ({ addresses: [`${user}@corp.example`], groups: ['staff'] }),
    authenticator: opts.authenticator,
    clientCerts: opts.clientCerts,
    timeouts: { session: 60_000, tlsHandshake: 5_000 },
    requireTls: { untrusted: opts.requireTls ?? false, trusted: false },
    requireAuth: opts.requireAuth ?? false,
    hostname: 'gate.test',
    data: { receivedHeader: 'full', authenticatedUserHeader: false, bareLineEndings: 'reject' },
    dataPace: { deadline: 600_000, minRate: 0, grace: 30_000 },
    metrics,
    clock: () => now,
    hangUp: (_s, refusal, stage, reply) => hungUp.push({ refusal, stage, reply }),
  };
  const connection = new FakeConnection();
  const session = new ClientSession(deps, { connection, log, backend: fakeBackend, policy: opts.policy ?? emptyPolicySet('UTC'), trusted: opts.trusted ?? false });
  return { session, connection, limits, metrics, lines, hungUp, backend };
}

async function refusals(metrics: ReturnType<typeof createMetrics>) {
  return (await metrics.refusals.get()).values.filter((v) => v.value > 0).map((v) => ({ stage: v.labels.stage, reason: v.labels.reason, value: v.value }));
}

async function authAttempts(metrics: ReturnType<typeof createMetrics>) {
  return (await metrics.authAttempts.get()).values.filter((v) => v.value > 0).map((v) => `${v.labels.mechanism}/${v.labels.result}`);
}

describe('connect', () => {
  test('counts the connection, logs it with the session id, and accepts when no rule refuses', async () => {
    const { session, metrics, lines } = sessionWith();
    expect(await session.connect()).toBe(OK);
    expect((await metrics.connectionsActive.get()).values[0]?.value).toBe(1);
    expect(lines).toContainEqual(expect.objectContaining({ session: 'sess1', msg: 'connect', client: '192.0.2.7', trusted: false }));
  });

  test('a connect-stage rule’s refusal is the verdict, counted and logged at stage connect with the rule', async () => {
    const { session, metrics, lines } = sessionWith({ policy: await policySet('rules:\n  - { name: go-away, stage: connect, action: reject }\n') });
    const verdict = await session.connect();
    expect(verdict).toMatchObject({ refusal: { code: 554, reason: 'policy' }, rule: 'go-away' });
    expect(await refusals(metrics)).toEqual([{ stage: 'connect', reason: 'policy', value: 1 }]);
    expect(lines).toContainEqual(expect.objectContaining({ session: 'sess1', stage: 'connect', rule: 'go-away', code: 554 }));
    expect(session.lastRefusal).toBe(verdict.refusal);
  });
});

describe('deadlines', () => {
  test('the session cap hangs up with 421 4.4.2 at the stage the session is in when it passes', async () => {
    const { session, hungUp } = sessionWith();
    await session.connect();
    session.stage = 'data';
    vi.advanceTimersByTime(59_999);
    expect(hungUp).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(hungUp).toEqual([{ refusal: SESSION_TIME_LIMIT, stage: 'data', reply: true }]);
  });

  test('a STARTTLS handshake that does not finish in time is cut off at stage tls without a reply', async () => {
    const { session, hungUp } = sessionWith();
    await session.connect();
    session.startingTls();
    vi.advanceTimersByTime(5_000);
    expect(hungUp).toEqual([{ refusal: TLS_HANDSHAKE_TIMEOUT, stage: 'tls', reply: false }]);
  });

  test('a finished handshake ends its deadline; close ends every deadline', async () => {
    const { session, connection, hungUp } = sessionWith();
    await session.connect();
    session.startingTls();
    connection.handshake();
    expect(session.secured('starttls', undefined)).toBe(OK);
    vi.advanceTimersByTime(10_000);
    expect(hungUp).toEqual([]);
    session.close();
    vi.advanceTimersByTime(120_000);
    expect(hungUp).toEqual([]);
  });
});

describe('secured', () => {
  const cert = (over: Partial<PeerCertificate> = {}): PeerCertificate => ({ fingerprint256: 'AB:CD', subjectCN: 'printer', authorized: true, authorizationError: 'null', ...over });

  test('records the TLS version and forgets a user established before the handshake (RFC 3207 §4.2)', async () => {
    const { session, connection, metrics } = sessionWith();
    await session.connect();
    session.user = 'mallory';
    connection.handshake();
    session.secured('starttls', undefined);
    expect(session.user).toBeUndefined();
    expect(session.tlsVersion).toBe('TLSv1.3');
    expect((await metrics.tlsHandshakes.get()).values).toContainEqual(expect.objectContaining({ labels: { listener: 'submission', kind: 'starttls', version: 'TLSv1.3' }, value: 1 }));
  });

  test('a verified client certificate that maps to a user logs the user in', async () => {
    const { session, connection } = sessionWith({ clientCerts: { required: false, users: [{ subjectCN: 'printer', user: 'scanner' }] } as ClientSessionDeps['clientCerts'] });
    connection.handshake();
    expect(session.secured('implicit', cert())).toBe(OK);
    expect(session.user).toBe('scanner');
    expect(session.authMethod).toBe('certificate');
  });

  test('a required client certificate that is missing or untrusted is refused at stage tls', async () => {
    for (const [given, why] of [
      [cert({ fingerprint256: '' }), 'a client certificate is required'],
      [cert({ authorized: false, authorizationError: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' }), 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'],
    ] as const) {
      const { session, connection, metrics } = sessionWith({ clientCerts: { required: true, users: [] } as unknown as ClientSessionDeps['clientCerts'] });
      connection.handshake();
      const verdict = session.secured('implicit', given);
      expect(verdict.refusal?.text).toContain(why);
      expect((await refusals(metrics)).map((r) => r.stage)).toEqual(['tls']);
      expect(session.user).toBeUndefined();
    }
  });
});

describe('auth', () => {
  async function securedSession(opts: Options = {}) {
    const s = sessionWith({ authenticator: new FakeAuthenticator('file', rightPassword), ...opts });
    await s.session.connect();
    s.connection.handshake();
    s.session.secured('starttls', undefined);
    return s;
  }

  test('the right password logs the user in: success is counted, the reservation given back', async () => {
    const { session, limits, metrics, backend } = await securedSession();
    expect(await session.auth({ method: 'PLAIN', username: 'alice', password: 'secret' })).toBe(OK);
    expect(session.user).toBe('alice');
    expect(session.authMethod).toBe('password');
    // A backend connection opened before the sign-in is given up: the next MAIL opens one as alice.
    expect(backend.released).toBe(1);
    expect(session.stage).toBe('auth');
    expect(limits.calls).toEqual(['allowed:alice', 'succeeded:alice']);
    expect(await authAttempts(metrics)).toEqual(['PLAIN/success']);
  });

  test('a wrong password, or an authorization identity other than the user, is 535 5.7.8 and counted as a failure', async () => {
    for (const creds of [
      { method: 'LOGIN', username: 'alice', password: 'guess' },
      { method: 'PLAIN', username: 'alice', password: 'secret', authzid: 'bob' },
    ]) {
      const { session, limits, metrics } = await securedSession();
      expect((await session.auth(creds)).refusal).toBe(AUTH_CREDENTIALS_INVALID);
      expect(session.user).toBeUndefined();
      expect(limits.calls).toEqual(['allowed:alice', 'failed']);
      expect(await refusals(metrics)).toEqual([{ stage: 'auth', reason: 'auth_failed', value: 1 }]);
    }
  });

  test('without TLS, or inside a mail transaction, AUTH is refused before any password is checked', async () => {
    const authenticator = new FakeAuthenticator('file', rightPassword);
    const plain = sessionWith({ authenticator });
    expect((await plain.session.auth({ method: 'PLAIN', username: 'alice', password: 'secret' })).refusal).toBe(AUTH_WITHOUT_TLS);
    const inTx = await securedSession({ authenticator });
    inTx.connection.transaction = true;
    expect((await inTx.session.auth({ method: 'PLAIN', username: 'alice', password: 'secret' })).refusal).toBe(AUTH_IN_TRANSACTION);
    expect(authenticator.asked).toEqual([]);
  });

  test('a lockout is answered before the password is checked', async () => {
    const authenticator = new FakeAuthenticator('file', rightPassword);
    const { session, limits } = await securedSession({ authenticator });
    const locked: Refusal = { code: 454, enhanced: '4.7.0', text: 'Too many failed logins', reason: 'locked_out' };
    limits.locked = locked;
    expect((await session.auth({ method: 'PLAIN', username: 'alice', password: 'secret' })).refusal).toBe(locked);
    expect(authenticator.asked).toEqual([]);
  });

  test('an authenticator that fails or is unavailable is 454 4.7.0, and the attempt is given back', async () => {
    for (const answer of [() => new Error('boom'), (): AuthOutcome => ({ ok: false, reason: 'unavailable' })]) {
      const { session, limits, metrics } = await securedSession({ authenticator: new FakeAuthenticator('file', answer) });
      expect((await session.auth({ method: 'PLAIN', username: 'alice', password: 'secret' })).refusal).toBe(AUTH_TEMPORARY_FAILURE);
      expect(limits.calls).toEqual(['allowed:alice', 'abandoned']);
      expect(await authAttempts(metrics)).toEqual(['PLAIN/error']);
    }
  });

  test('a refusal after the right password (auth rule) drops a passthrough login from the backend connection', async () => {
    const { session, backend } = await securedSession({
      authenticator: new FakeAuthenticator('backend', rightPassword),
      policy: await policySet('rules:\n  - { name: no-bob, stage: auth, when: { user: bob }, action: reject }\n'),
    });
    const verdict = await session.auth({ method: 'PLAIN', username: 'bob', password: 'secret' });
    expect(verdict).toMatchObject({ rule: 'no-bob', refusal: { reason: 'policy' } });
    expect(session.user).toBeUndefined();
    expect(backend.aborted).toBe(1);
  });
});

describe('mail', () => {
  const address = (a: string, args: Record<string, string | boolean> | false = false) => ({ address: a, args }) as Parameters<ClientSession['mail']>[0];

  test('without TLS or AUTH where the listener requires them, MAIL is refused at stage mail before the backend is asked', async () => {
    for (const [opts, expected] of [
      [{ requireTls: true }, STARTTLS_REQUIRED],
      [{ requireAuth: true }, AUTH_REQUIRED],
    ] as const) {
      const { session, backend, metrics } = sessionWith(opts);
      expect((await session.mail(address('alice@corp.example'))).refusal).toBe(expected);
      expect(session.stage).toBe('mail');
      expect(backend.mails).toEqual([]);
      expect((await refusals(metrics)).map((r) => r.stage)).toEqual(['mail']);
    }
  });

  test('a non-ASCII sender without SMTPUTF8 is refused before limits, policy and the backend (RFC 6531 §3.4); with it, it goes on', async () => {
    const { session, backend, lines } = sessionWith();
    expect((await session.mail(address('jörg@corp.example'))).refusal).toBe(NON_ASCII_WITHOUT_SMTPUTF8);
    expect(backend.mails).toEqual([]);
    expect(lines).toContainEqual(expect.objectContaining({ stage: 'mail', from: 'jörg@corp.example' }));
    await session.mail(address('jörg@corp.example', { SMTPUTF8: true }));
    expect(backend.mails).toEqual(['jörg@corp.example']);
  });

  test('a mail-stage rule’s refusal carries the rule; the backend’s own refusal is the client’s, and no transaction is kept', async () => {
    const ruled = sessionWith({ policy: await policySet('rules:\n  - { name: no-mail, stage: mail, action: reject }\n') });
    expect(await ruled.session.mail(address('alice@corp.example'))).toMatchObject({ rule: 'no-mail' });
    expect(ruled.backend.mails).toEqual([]);

    const refused = sessionWith();
    const backendSays: Refusal = { code: 550, enhanced: '5.1.8', text: 'Sender rejected', reason: 'backend_refused' };
    refused.backend.mailAnswer = backendSays;
    expect(await refused.session.mail(address('alice@corp.example'))).toEqual({ refusal: backendSays });
    expect(refused.backend.mails).toEqual(['alice@corp.example']);
    expect(refused.session.transaction).toBeUndefined();
    expect(refused.session.sender).toBeUndefined();
  });
});

describe('rcpt', () => {
  function fakeTransaction(answer?: Refusal) {
    const asked: string[] = [];
    const tx = { reply: { code: 250, lines: ['2.1.5 OK'] }, rcpt: async (to: { address: string }) => {
        asked.push(to.address);
        return answer;
      },
    } as unknown as Transaction;
    return { tx, asked };
  }
  const address = (a: string) => ({ address: a, args: false }) as Parameters<ClientSession['rcpt']>[0];

  test('a recipient the backend accepts is accepted, and the backend’s reply is the one the client gets', async () => {
    const { session } = sessionWith();
    session.user = 'alice';
    const { tx, asked } = fakeTransaction();
    expect(await session.rcpt(address('bob@corp.example'), tx)).toBe(OK);
    expect(asked).toEqual(['bob@corp.example']);
    expect(session.acceptedReply).toBe(tx.reply);
  });

  test('a rcpt-stage refusal (relay protection here) is counted at stage rcpt and the backend is not asked', async () => {
    const { session, metrics, lines } = sessionWith();
    const { tx, asked } = fakeTransaction();
    const verdict = await session.rcpt(address('someone@elsewhere.example'), tx);
    expect(verdict).toMatchObject({ refusal: { code: 554, reason: 'relay_denied' }, rule: 'builtin:relay_protection' });
    expect(asked).toEqual([]);
    expect(await refusals(metrics)).toEqual([{ stage: 'rcpt', reason: 'relay_denied', value: 1 }]);
    expect(lines).toContainEqual(expect.objectContaining({ stage: 'rcpt', to: 'someone@elsewhere.example', rule: 'builtin:relay_protection' }));
  });

  test('a recipient the backend refuses is refused to the client with the backend’s code', async () => {
    const { session } = sessionWith();
    session.user = 'alice';
    const backendSays: Refusal = { code: 550, enhanced: '5.1.1', text: 'No such user', reason: 'backend_refused' };
    const { tx } = fakeTransaction(backendSays);
    expect(await session.rcpt(address('nobody@corp.example'), tx)).toEqual({ refusal: backendSays });
    expect(session.acceptedReply).toBeUndefined();
  });
});

describe('data', () => {
  /** A backend transaction past its 354 whose message sink records what it is given. */
  function fakeMessageTransaction() {
    const seen = { prepended: '', body: '', committed: 0, aborted: 0 };
    let bytesIn = 0;
    const sink = {
      get bytesIn() {
        return bytesIn;
      },
      reply: undefined as { code: number; text: string } | undefined,
      prepend: (h: Buffer) => void (seen.prepended += h.toString('latin1')),
      write: (c: Buffer) => {
        seen.body += c.toString('latin1');
        bytesIn += c.length;
        return true;
      },
      onDrain: () => undefined,
      end: () => undefined,
      commit: async () => {
        seen.committed++;
        sink.reply = { code: 250, text: '2.0.0 queued as ABC' };
        return undefined;
      },
    };
    const tx = {
      data: async () => undefined,
      message: () => sink,
      abort: () => void seen.aborted++,
      refusalFor: (): Refusal => ({ code: 451, enhanced: '4.3.0', text: 'failed', reason: 'backend_unavailable' }),
    } as unknown as Transaction;
    return { tx, seen };
  }

  async function inTransaction(opts: Options = {}) {
    const s = sessionWith(opts);
    await s.session.connect();
    s.connection.heloName = 'client.example';
    s.connection.rcpts = ['bob@corp.example'];
    s.session.user = 'alice';
    s.session.sender = { address: 'alice@corp.example', args: false } as ClientSession['sender'];
    const t = fakeMessageTransaction();
    s.session.transaction = t.tx;
    return { ...s, ...t };
  }

  test('a message goes to the sink under smtpgate’s headers and is committed; the backend’s reply is the verdict', async () => {
    const { session, seen, metrics } = await inTransaction({ policy: await policySet('rules:\n  - { name: tag, stage: connect, action: add_header, header: ["X-Tag: yes"] }\n') });
    // connect ran before the policy had headers in this helper: ask again for the tag.
    await session.checkpoint.at('connect', session);
    const verdict = await session.data(Readable.from([Buffer.from('Subject: hi\r\n\r\nbody\r\n')]));
    expect(verdict).toEqual({ ok: true, reply: { code: 250, text: '2.0.0 queued as ABC' } });
    expect(seen.prepended).toMatch(/^Received: from client\.example .*by gate\.test/s);
    expect(seen.prepended).toContain('X-Tag: yes\r\n');
    expect(seen.body).toBe('Subject: hi\r\n\r\nbody\r\n');
    expect(seen.committed).toBe(1);
    expect(session.messages).toBe(1);
    expect(session.stage).toBe('connect');
    expect((await metrics.messages.get()).values).toContainEqual(expect.objectContaining({ labels: { listener: 'submission', result: 'relayed', auth: 'user', tls: 'no' }, value: 1 }));
  });

  // The dashboard's "mail without AUTH" and "mail without TLS", and the enforcement alert, read these labels.
  test.each([
    { who: 'a signed-in user under TLS', user: 'alice', trusted: false, secure: true, auth: 'user', tls: 'yes' },
    { who: 'a signed-in user from a trusted network', user: 'alice', trusted: true, secure: true, auth: 'user', tls: 'yes' },
    { who: 'a trusted client that did not sign in, in cleartext', user: undefined, trusted: true, secure: false, auth: 'trusted', tls: 'no' },
    { who: 'an untrusted client that did not sign in, under TLS', user: undefined, trusted: false, secure: true, auth: 'none', tls: 'yes' },
    { who: 'an untrusted client that did not sign in, in cleartext', user: undefined, trusted: false, secure: false, auth: 'none', tls: 'no' },
  ])('a message from $who is counted with auth $auth and tls $tls, relayed or refused', async ({ user, trusted, secure, auth, tls }) => {
    const relayed = await inTransaction({ trusted });
    relayed.session.user = user;
    relayed.connection.isSecure = secure;
    await relayed.session.data(Readable.from([Buffer.from('Subject: hi\r\n\r\nbody\r\n')]));
    const refused = await inTransaction({ trusted, policy: await policySet('rules:\n  - { name: no-data, stage: data, action: reject }\n') });
    refused.session.user = user;
    refused.connection.isSecure = secure;
    await refused.session.data(Readable.from([Buffer.from('Subject: hi\r\n\r\nbody\r\n')]));
    const counted = async (m: ReturnType<typeof createMetrics>) => (await m.messages.get()).values.filter((v) => v.value > 0).map((v) => ({ ...v.labels }));
    expect(await counted(relayed.metrics)).toEqual([{ listener: 'submission', result: 'relayed', auth, tls }]);
    expect(await counted(refused.metrics)).toEqual([{ listener: 'submission', result: 'refused', auth, tls }]);
  });

  test('a data-stage rule’s refusal aborts the backend transaction without the final dot; it is counted at stage data with the rule', async () => {
    const { session, seen, metrics, lines } = await inTransaction({ policy: await policySet('rules:\n  - { name: no-big, stage: data, when: { messageSizeOver: 10 }, action: reject }\n') });
    const verdict = await session.data(Readable.from([Buffer.from('Subject: a long enough message\r\n\r\nbody\r\n')]));
    expect(verdict).toMatchObject({ refusal: { reason: 'policy' }, rule: 'no-big' });
    expect(seen.committed).toBe(0);
    expect(seen.aborted).toBe(1);
    expect(await refusals(metrics)).toEqual([{ stage: 'data', reason: 'policy', value: 1 }]);
    expect(lines).toContainEqual(expect.objectContaining({ stage: 'data', rule: 'no-big' }));
  });

  test('a client still sending at DATA’s deadline is hung up on at stage data', async () => {
    const { session, hungUp } = await inTransaction();
    const stream = new PassThrough();
    const answered = session.data(stream);
    stream.write('Subject: slow\r\n');
    // The backend's 354 is in: DATA's clock runs from here.
    await vi.advanceTimersByTimeAsync(0);
    now += 600_001;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(hungUp).toEqual([{ refusal: DATA_TOO_LONG, stage: 'data', reply: true }]);
    // The listener's 421 makes smtp-server end the stream: the message is aborted.
    stream.destroy(new Error('closed'));
    expect((await answered).refusal).toBeDefined();
  });
});

describe('snapshot and close', () => {
  test('the snapshot reads the connection as it is now, and the clock', async () => {
    const { session, connection } = sessionWith();
    connection.heloName = 'client.example';
    connection.version = 'TLSv1.3';
    // A handshake's version without TLS in place is not TLS.
    expect(session.snapshot()).toMatchObject({ id: 'sess1', listener: 'submission', helo: 'client.example', greeting: 'EHLO', tls: undefined, recipients: [], now: new Date(now) });
    connection.isSecure = true;
    connection.rcpts = ['bob@corp.example'];
    expect(session.snapshot()).toMatchObject({ tls: 'TLSv1.3', recipients: ['bob@corp.example'] });
  });

  test('close closes the backend session and logs one summary line with the duration from the clock', async () => {
    const { session, metrics, lines, backend } = sessionWith();
    await session.connect();
    session.messages = 2;
    session.bytes = 300;
    now += 1234;
    session.close();
    expect(backend.closed).toBe(1);
    expect((await metrics.connectionsActive.get()).values[0]?.value).toBe(0);
    expect(lines).toContainEqual(expect.objectContaining({ session: 'sess1', msg: 'session closed', messages: 2, bytes: 300, durationMs: 1234, tls: 'none' }));
  });
});
