/**
 * `AuthChain` (src/auth/chain.ts) as a specification: which source's answer is final, what
 * the chain says when nobody decides, what it measures, and how it keeps each source's health.
 *
 * The sources are small in-test classes that answer what they are told; the metrics are the
 * real ones on a fresh prom-client registry; the log is read back line by line.
 */
import { EventEmitter, once } from 'node:events';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/logging/logger.js';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, test, vi } from 'vitest';
import type { AuthContext, AuthFailureReason, AuthOutcome, AuthRequest, Authenticator } from '../../src/auth/authenticator.js';
import { AuthChain } from '../../src/auth/chain.js';
import { createAuthMetrics } from '../../src/metrics/auth-metrics.js';

const REQ: AuthRequest = {
  username: 'alice',
  password: 'correct horse',
  mechanism: 'PLAIN',
  sessionId: 's1',
  remoteAddress: '192.0.2.7',
  listener: 'submission',
  tls: { version: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256' },
};
/** The chain hands the context to its sources untouched; these sources never look at it. */
const CTX = {} as AuthContext;

type Answer = 'accept' | AuthFailureReason | 'throw';

/** A source that gives the answer it is set to, and counts how often it was asked. */
class Source implements Authenticator {
  calls = 0;
  closed = false;
  constructor(
    readonly kind: string,
    public answer: Answer,
  ) {}

  async authenticate(req: AuthRequest): Promise<AuthOutcome> {
    this.calls++;
    switch (this.answer) {
      case 'accept':
        return { ok: true, user: { username: req.username, attributes: { addresses: [`${req.username}@${this.kind}.test`], groups: [] } } };
      case 'unavailable':
        return { ok: false, reason: 'unavailable', detail: `${this.kind}: connect ETIMEDOUT` };
      case 'throw':
        throw new Error(`${this.kind} blew up`);
      default:
        return { ok: false, reason: this.answer };
    }
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

/** A source with a background check: `probe()` answers as `reachable` says, and each call is an event. */
class ProbedSource extends Source {
  reachable = false;
  probes = 0;
  readonly probed = new EventEmitter();

  probe(): Promise<string> {
    this.probes++;
    this.probed.emit('probe');
    return this.reachable ? Promise.resolve(`${this.kind}: reachable`) : Promise.reject(new Error(`${this.kind}: still refused`));
  }
}

interface Harness {
  chain: AuthChain;
  registry: Registry;
  logs: Record<string, unknown>[];
  /** Resolves with the next log line whose msg is `msg`. */
  nextLog(msg: string): Promise<Record<string, unknown>>;
}

let open: AuthChain | undefined;
afterEach(async () => {
  vi.useRealTimers();
  await open?.close();
  open = undefined;
});

function chainOf(sources: Authenticator[], recheckIntervalMs?: number): Harness {
  const registry = new Registry();
  const logs: Record<string, unknown>[] = [];
  const lines = new EventEmitter();
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      const line = JSON.parse(chunk.toString()) as Record<string, unknown>;
      logs.push(line);
      lines.emit('line', line);
      done();
    },
  });
  const chain = new AuthChain(sources, { metrics: createAuthMetrics(registry), log: createLogger({ level: 'debug', format: 'json', destination: sink }), recheckIntervalMs });
  open = chain;
  const nextLog = (msg: string) =>
    new Promise<Record<string, unknown>>((resolve) => {
      const on = (line: Record<string, unknown>) => {
        if (line.msg !== msg) return;
        lines.off('line', on);
        resolve(line);
      };
      lines.on('line', on);
    });
  return { chain, registry, logs, nextLog };
}

/** One sample's value; a histogram's series are read by their own name (`…_count`). */
async function sample(registry: Registry, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const metric = registry.getSingleMetric(name.replace(/_count$/, ''));
  if (!metric) throw new Error(`no metric ${name}`);
  const values = (await metric.get()).values;
  return values.find((v) => ('metricName' in v ? v.metricName : name) === name && Object.entries(labels).every(([k, want]) => v.labels[k] === want))?.value;
}

describe('which answer is final', () => {
  test.each<{ name: string; answers: Answer[]; outcome: Record<string, unknown>; asked: number[] }>([
    { name: 'the first source accepts: signed in by it, the second is not asked', answers: ['accept', 'accept'], outcome: { ok: true, source: 'file' }, asked: [1, 0] },
    { name: 'the first does not know the user, the second accepts: signed in by the second', answers: ['unknown_user', 'accept'], outcome: { ok: true, source: 'ldap' }, asked: [1, 1] },
    {
      name: "the first knows the user and refuses the password: bad_credentials is final, even though the second would accept",
      answers: ['bad_credentials', 'accept'],
      outcome: { ok: false, reason: 'bad_credentials', source: 'file' },
      asked: [1, 0],
    },
    { name: 'the first says the account is disabled: final', answers: ['disabled', 'accept'], outcome: { ok: false, reason: 'disabled', source: 'file' }, asked: [1, 0] },
    { name: 'the first is down, the second accepts: signed in by the second', answers: ['unavailable', 'accept'], outcome: { ok: true, source: 'ldap' }, asked: [1, 1] },
    {
      name: "the first is down, the second doesn't know the user: unavailable (the first may have known them), naming the first and why",
      answers: ['unavailable', 'unknown_user'],
      outcome: { ok: false, reason: 'unavailable', source: 'file', detail: 'file: connect ETIMEDOUT' },
      asked: [1, 1],
    },
    {
      name: 'the first is down, the second knows the user and refuses: bad_credentials from the second',
      answers: ['unavailable', 'bad_credentials'],
      outcome: { ok: false, reason: 'bad_credentials', source: 'ldap' },
      asked: [1, 1],
    },
    { name: 'nobody knows the user: unknown_user, and no source is named', answers: ['unknown_user', 'unknown_user', 'unknown_user'], outcome: { ok: false, reason: 'unknown_user' }, asked: [1, 1, 1] },
    {
      name: 'two sources down and a third that does not know the user: the first unavailable answer is the one reported',
      answers: ['unavailable', 'unavailable', 'unknown_user'],
      outcome: { ok: false, reason: 'unavailable', source: 'file', detail: 'file: connect ETIMEDOUT' },
      asked: [1, 1, 1],
    },
  ])('$name', async ({ answers, outcome, asked }) => {
    const kinds = ['file', 'ldap', 'http'];
    const sources = answers.map((a, i) => new Source(kinds[i]!, a));
    const { chain } = chainOf(sources);
    const got = await chain.authenticate(REQ, CTX);
    expect(got).toMatchObject(outcome);
    if (!('source' in outcome)) expect(got.source).toBeUndefined();
    expect(sources.map((s) => s.calls)).toEqual(asked);
  });

  test("the answering source's user comes back whole (its directory attributes too)", async () => {
    const { chain } = chainOf([new Source('file', 'unknown_user'), new Source('ldap', 'accept')]);
    expect(await chain.authenticate(REQ, CTX)).toEqual({ ok: true, source: 'ldap', user: { username: 'alice', attributes: { addresses: ['alice@ldap.test'], groups: [] } } });
  });

  test('a source that throws counts as unavailable (the next source is still asked) and is logged as an error with its source and session', async () => {
    const { chain, logs } = chainOf([new Source('http', 'throw'), new Source('file', 'unknown_user')]);
    expect(await chain.authenticate(REQ, CTX)).toEqual({ ok: false, reason: 'unavailable', source: 'http', detail: 'http blew up' });
    const line = logs.find((l) => l.msg === 'auth source failed');
    expect(line).toMatchObject({ level: 'error', source: 'http', session: 's1', err: { message: 'http blew up' } });
    // The password never reaches the log.
    expect(JSON.stringify(logs)).not.toContain(REQ.password);
  });

  test('a source that throws after a later one could have accepted: the later one signs the user in', async () => {
    const { chain } = chainOf([new Source('http', 'throw'), new Source('file', 'accept')]);
    expect(await chain.authenticate(REQ, CTX)).toMatchObject({ ok: true, source: 'file' });
  });

  test('a chain of no sources is refused when it is built', () => {
    expect(() => chainOf([])).toThrow(/at least one source/);
  });
});

describe('metrics', () => {
  test('every source asked is timed by source and result; the ones that could not answer are counted as errors', async () => {
    const file = new Source('file', 'unavailable');
    const ldap = new Source('ldap', 'accept');
    const { chain, registry } = chainOf([file, ldap]);
    await chain.authenticate(REQ, CTX);
    ldap.answer = 'bad_credentials';
    await chain.authenticate(REQ, CTX);

    const count = (source: string, result: string) => sample(registry, 'smtpgate_auth_source_seconds_count', { source, result });
    expect(await count('file', 'unavailable')).toBe(2);
    expect(await count('ldap', 'success')).toBe(1);
    expect(await count('ldap', 'bad_credentials')).toBe(1);
    expect(await sample(registry, 'smtpgate_auth_source_errors_total', { source: 'file' })).toBe(2);
    expect(await sample(registry, 'smtpgate_auth_source_errors_total', { source: 'ldap' })).toBeUndefined();
  });

  test('a source never asked (an earlier one decided) is not timed', async () => {
    const { chain, registry } = chainOf([new Source('file', 'accept'), new Source('ldap', 'accept')]);
    await chain.authenticate(REQ, CTX);
    expect(await sample(registry, 'smtpgate_auth_source_seconds_count', { source: 'ldap' })).toBeUndefined();
  });
});

describe('health', () => {
  test('an unavailable answer marks the source down: down() names it with the detail, smtpgate_auth_source_up is 0, a warning is logged once', async () => {
    const ldap = new Source('ldap', 'unavailable');
    const { chain, registry, logs } = chainOf([new Source('file', 'unknown_user'), ldap]);
    expect(chain.down()).toEqual([]);
    await chain.authenticate(REQ, CTX);
    await chain.authenticate(REQ, CTX);
    expect(chain.down()).toEqual([{ source: 'ldap', detail: 'ldap: connect ETIMEDOUT' }]);
    expect(await sample(registry, 'smtpgate_auth_source_up', { source: 'ldap' })).toBe(0);
    expect(logs.filter((l) => l.msg === 'auth source down')).toEqual([expect.objectContaining({ level: 'warn', source: 'ldap', detail: 'ldap: connect ETIMEDOUT' })]);
  });

  test('down() keeps the latest reason while the source stays down', async () => {
    const http = new Source('http', 'unavailable');
    const { chain } = chainOf([http]);
    await chain.authenticate(REQ, CTX);
    http.answer = 'throw';
    await chain.authenticate(REQ, CTX);
    expect(chain.down()).toEqual([{ source: 'http', detail: 'http blew up' }]);
  });

  test.each<Answer>(['accept', 'bad_credentials', 'disabled', 'unknown_user'])('a definite answer (%s) brings a source that was down up again', async (answer) => {
    const ldap = new Source('ldap', 'unavailable');
    const { chain, registry, logs } = chainOf([ldap]);
    await chain.authenticate(REQ, CTX);
    expect(chain.down()).toHaveLength(1);
    ldap.answer = answer;
    await chain.authenticate(REQ, CTX);
    expect(chain.down()).toEqual([]);
    expect(await sample(registry, 'smtpgate_auth_source_up', { source: 'ldap' })).toBe(1);
    expect(logs.some((l) => l.msg === 'auth source up again' && l.source === 'ldap')).toBe(true);
  });

  test('a source that is down is checked with probe() every recheckIntervalMs while it is down, and is up again once a check reaches it', async () => {
    const ldap = new ProbedSource('ldap', 'unavailable');
    const { chain, registry, nextLog } = chainOf([ldap], 10);
    await chain.authenticate(REQ, CTX);
    expect(ldap.probes).toBe(0);

    // The first check fails: still down, with the check's reason, and checked again.
    await once(ldap.probed, 'probe');
    await once(ldap.probed, 'probe');
    expect(chain.down()).toEqual([{ source: 'ldap', detail: 'ldap: still refused' }]);

    ldap.reachable = true;
    const up = nextLog('auth source up again');
    await once(ldap.probed, 'probe');
    expect(await up).toMatchObject({ source: 'ldap' });
    expect(chain.down()).toEqual([]);
    expect(await sample(registry, 'smtpgate_auth_source_up', { source: 'ldap' })).toBe(1);
  });

  test('checkAll() checks every source that has a probe once at start; one that fails is marked down with the reason and rechecked', async () => {
    const ldap = new ProbedSource('ldap', 'accept');
    const { chain, nextLog } = chainOf([new Source('file', 'unknown_user'), ldap], 10);
    const down = nextLog('auth source down');
    chain.checkAll();
    expect(await down).toMatchObject({ source: 'ldap', detail: 'ldap: still refused' });
    expect(chain.down()).toEqual([{ source: 'ldap', detail: 'ldap: still refused' }]);
    await once(ldap.probed, 'probe');
    expect(ldap.probes).toBe(2);
  });

  test('a source without probe() stays down until it answers again (nothing to recheck it with)', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const { chain } = chainOf([new Source('ldap', 'unavailable')], 10);
    await chain.authenticate(REQ, CTX);
    expect(vi.getTimerCount()).toBe(0);
    expect(chain.down()).toHaveLength(1);
  });

  test('close() stops the rechecks and closes every source', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const ldap = new ProbedSource('ldap', 'unavailable');
    const file = new Source('file', 'unknown_user');
    const { chain } = chainOf([ldap, file], 10);
    await chain.authenticate(REQ, CTX);
    expect(vi.getTimerCount()).toBe(1);
    await chain.close();
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(ldap.probes).toBe(0);
    expect([ldap.closed, file.closed]).toEqual([true, true]);
  });

  test('a check that was under way when the chain closed changes nothing', async () => {
    const ldap = new ProbedSource('ldap', 'unavailable');
    let answer!: (v: string) => void;
    ldap.probe = () => new Promise<string>((resolve) => (answer = resolve));
    const { chain, registry } = chainOf([ldap]);
    await chain.authenticate(REQ, CTX);
    chain.checkAll();
    await chain.close();
    answer('ldap: reachable');
    await new Promise((r) => setImmediate(r));
    expect(chain.down()).toHaveLength(1);
    expect(await sample(registry, 'smtpgate_auth_source_up', { source: 'ldap' })).toBe(0);
  });
});
