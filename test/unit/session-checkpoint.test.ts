/**
 * The checkpoint with fakes: built-in limits, then held requirements, then policy, then the
 * rules' own limits, and the headers collected — one verdict per stage.
 */
import { Writable } from 'node:stream';
import { describe, expect, test } from 'vitest';
import { pino } from 'pino';
import { Checkpoint, OK, type SnapshotSource } from '../../src/session/checkpoint.js';
import { limitsView, type SessionSnapshot } from '../../src/session/snapshot.js';
import type { ClientFacts, MailFacts, RcptFacts } from '../../src/limits/limits.js';
import type { LimitsPlan } from '../../src/limits/plan.js';
import type { Evaluation, PolicySet } from '../../src/policy/types.js';
import { emptyPolicySet } from '../../src/policy/load.js';
import type { Refusal } from '../../src/reply.js';
import { policySet } from '../fixtures/policy/load-set.js';

type PolicyLimitAnswer = { limited: false } | { limited: true; msBeforeNext: number } | 'unavailable';

/** Limits that record what they are asked and answer what the test scripted. */
class FakeLimits {
  readonly asked: string[] = [];
  mailFacts?: MailFacts;
  rcptFacts?: RcptFacts;
  buckets: string[] = [];
  /** Every limit possible unless a test says otherwise: the full check runs. */
  plan: LimitsPlan = { connect: true, anonymousMail: true };
  constructor(readonly answers: { mail?: Refusal; rcpt?: Refusal; policy?: PolicyLimitAnswer } = {}) {}
  recipientCap(f: RcptFacts): Refusal | undefined {
    this.asked.push('recipientCap');
    this.rcptFacts = f;
    return this.answers.rcpt;
  }
  async mailFrom(f: MailFacts): Promise<Refusal | undefined> {
    this.asked.push('mailFrom');
    this.mailFacts = f;
    return this.answers.mail;
  }
  async rcptTo(f: RcptFacts): Promise<Refusal | undefined> {
    this.asked.push('rcptTo');
    this.rcptFacts = f;
    return this.answers.rcpt;
  }
  async policyLimit(req: { bucket: string; amount: number; windowMs: number }): Promise<PolicyLimitAnswer> {
    this.asked.push('policyLimit');
    this.buckets.push(req.bucket);
    return this.answers.policy ?? { limited: false };
  }
}

class FakePolicyMetrics {
  readonly recorded: Evaluation[] = [];
  record(ev: Evaluation): void {
    this.recorded.push(ev);
  }
}

const base: SessionSnapshot = {
  id: 'sess1',
  listener: 'submission',
  ip: '192.0.2.7',
  port: 40000,
  tls: undefined,
  trusted: false,
  helo: 'client.example',
  greeting: 'EHLO',
  user: undefined,
  authMethod: undefined,
  attributes: undefined,
  recipients: [],
  now: new Date('2026-01-02T03:04:05Z'),
};

/** A snapshot source that counts how often it was asked for the whole snapshot. */
class Source implements SnapshotSource {
  taken = 0;
  constructor(public current: SessionSnapshot = base) {}
  get user(): string | undefined {
    return this.current.user;
  }
  get trusted(): boolean {
    return this.current.trusted;
  }
  limitsFacts(): ClientFacts {
    return limitsView(this.current);
  }
  recipientCount(): number {
    return this.current.recipients.length;
  }
  snapshot(): SessionSnapshot {
    this.taken++;
    return this.current;
  }
}

function checkpointWith(policy: PolicySet, limits = new FakeLimits()) {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  const metrics = new FakePolicyMetrics();
  const log = pino({ level: 'info' }, sink).child({ session: 'sess1' });
  return { checkpoint: new Checkpoint({ limits, metrics, policy, log }), limits, metrics, lines };
}

const alice = { ...base, tls: 'TLSv1.3', user: 'alice', attributes: { addresses: ['alice@corp.example'], groups: ['sales'] } };

describe('built-in limits', () => {
  test('at MAIL the sender quotas count the snapshot’s client with the sender and its SIZE, before any policy rule', async () => {
    const { checkpoint, limits, metrics } = checkpointWith(await policySet('rules:\n  - { name: tag, stage: mail, action: add_header, header: ["X-A: 1"] }\n'));
    const verdict = await checkpoint.at('mail', new Source(alice), { from: 'alice@corp.example', declaredSize: 1234 });
    expect(verdict).toBe(OK);
    expect(limits.mailFacts).toEqual({ session: 'sess1', ip: '192.0.2.7', listener: 'submission', user: 'alice', groups: ['sales'], addresses: ['alice@corp.example'], sender: 'alice@corp.example', size: 1234 });
    expect(metrics.recorded.map((e) => e.stage)).toEqual(['mail']);
  });

  test('a built-in limit’s refusal is the verdict, with no rule, and policy is not asked', async () => {
    const limited: Refusal = { code: 451, enhanced: '4.7.1', text: 'Too many messages', reason: 'rate_limited' };
    for (const stage of ['mail', 'rcpt'] as const) {
      const { checkpoint, metrics } = checkpointWith(await policySet(`rules:\n  - { name: r, stage: ${stage}, action: reject }\n`), new FakeLimits({ mail: limited, rcpt: limited }));
      const verdict = await checkpoint.at(stage, new Source(), { from: '', recipient: 'bob@corp.example' });
      expect(verdict).toEqual({ refusal: limited });
      expect(metrics.recorded).toEqual([]);
    }
  });

  test('at RCPT the recipient limit counts the recipients accepted so far', async () => {
    const { checkpoint, limits } = checkpointWith(emptyPolicySet('UTC'));
    await checkpoint.at('rcpt', new Source({ ...base, recipients: ['a@corp.example', 'b@corp.example'] }), { from: '', recipient: 'c@corp.example' });
    expect(limits.rcptFacts).toMatchObject({ session: 'sess1', recipientsSoFar: 2 });
  });

  test('the built-in limits take no whole snapshot: MAIL and RCPT without a rule that can act build none', async () => {
    const { checkpoint, limits } = checkpointWith(await policySet('relayProtection: off\nrules:\n  - { name: r, stage: connect, action: reject }\n'));
    const source = new Source(alice);
    expect(await checkpoint.at('mail', source, { from: 'alice@corp.example' })).toBe(OK);
    expect(await checkpoint.at('rcpt', source, { from: 'alice@corp.example', recipient: 'bob@corp.example' })).toBe(OK);
    expect(limits.asked).toEqual(['mailFrom', 'rcptTo']);
    expect(source.taken).toBe(0);
  });

  test('connect, auth and data ask no built-in limit', async () => {
    const { checkpoint, limits } = checkpointWith(emptyPolicySet('UTC'));
    for (const stage of ['connect', 'auth', 'data'] as const) expect(await checkpoint.at(stage, new Source())).toBe(OK);
    expect(limits.asked).toEqual([]);
  });
});

describe('policy', () => {
  test('a refusing rule is the verdict, with the rule’s name, at every stage', async () => {
    for (const stage of ['connect', 'auth', 'mail', 'rcpt', 'data'] as const) {
      const { checkpoint } = checkpointWith(await policySet(`rules:\n  - { name: no-${stage}, stage: ${stage}, action: reject }\n`));
      const verdict = await checkpoint.at(stage, new Source(alice), { from: 'alice@corp.example', recipient: 'bob@corp.example' });
      expect(verdict.refusal).toMatchObject({ code: expect.any(Number), reason: 'policy' });
      expect(verdict.rule).toBe(`no-${stage}`);
    }
  });

  test('the stage’s facts are laid over the snapshot: AUTH judges the user being logged in', async () => {
    const { checkpoint } = checkpointWith(await policySet('rules:\n  - { name: no-bob, stage: auth, when: { user: bob }, action: reject }\n'));
    const bob = () => ({ authenticated: true, user: { name: 'bob', groups: [], addresses: [] } });
    expect((await checkpoint.at('auth', new Source(), bob)).rule).toBe('no-bob');
    expect(await checkpoint.at('auth', new Source(), () => ({ authenticated: true, user: { name: 'carol', groups: [], addresses: [] } }))).toBe(OK);
  });

  test('a stage without rules builds no facts: the snapshot and the stage facts are not asked for', async () => {
    const { checkpoint } = checkpointWith(await policySet('rules:\n  - { name: r, stage: rcpt, action: reject }\n'));
    const source = new Source();
    let built = 0;
    for (const stage of ['connect', 'auth', 'data'] as const) {
      expect(
        await checkpoint.at(stage, source, () => {
          built++;
          return {};
        }),
      ).toBe(OK);
    }
    expect(source.taken).toBe(0);
    expect(built).toBe(0);
  });

  test('an audit rule that would refuse is logged with the session id and does not refuse', async () => {
    const { checkpoint, lines } = checkpointWith(await policySet('rules:\n  - { name: would-block, stage: connect, mode: audit, action: reject }\n'));
    expect(await checkpoint.at('connect', new Source())).toBe(OK);
    expect(lines).toContainEqual(expect.objectContaining({ session: 'sess1', stage: 'connect', rule: 'would-block', msg: expect.stringMatching(/^policy audit: would have refused/) }));
  });
});

describe('held requirements', () => {
  test('require_tls decided at connect is held and refuses the MAIL of a session without TLS, naming the rule; with TLS it is met', async () => {
    const set = await policySet('rules:\n  - { name: tls-for-all, stage: connect, action: require_tls }\n');
    const plain = checkpointWith(set);
    expect(await plain.checkpoint.at('connect', new Source())).toBe(OK);
    const refused = await plain.checkpoint.at('mail', new Source(), { from: 'a@corp.example' });
    expect(refused).toMatchObject({ refusal: { code: 530, enhanced: '5.7.0', reason: 'tls_required' }, rule: 'tls-for-all' });
    // Built-in limits come first.
    expect(plain.limits.asked).toEqual(['mailFrom']);

    const secured = checkpointWith(set);
    expect(await secured.checkpoint.at('connect', new Source())).toBe(OK);
    expect(await secured.checkpoint.at('mail', new Source({ ...base, tls: 'TLSv1.3' }), { from: 'a@corp.example' })).toBe(OK);
  });
});

describe('policy limits', () => {
  const limitSet = (stage: string) => policySet(`rules:\n  - { name: per-ip, stage: ${stage}, action: limit, rate: 5/1m, per: ip }\n`);

  test('a matching limit rule consumes its bucket; over it, the verdict is its refusal with the rule', async () => {
    const ok = checkpointWith(await limitSet('mail'));
    expect(await ok.checkpoint.at('mail', new Source(), { from: '' })).toBe(OK);
    expect(ok.limits.asked).toEqual(['mailFrom', 'policyLimit']);
    expect(ok.limits.buckets).toEqual(['policy:per-ip|192.0.2.7']);

    const over = checkpointWith(await limitSet('mail'), new FakeLimits({ policy: { limited: true, msBeforeNext: 30_000 } }));
    expect(await over.checkpoint.at('mail', new Source(), { from: '' })).toMatchObject({ refusal: { code: 451, enhanced: '4.7.1', reason: 'rate_limited' }, rule: 'per-ip' });
  });

  test('an unavailable limiter answers each stage’s temporary code: 421 at connect, 454 at AUTH, 451 at MAIL, RCPT and DATA', async () => {
    const expected = { connect: 421, auth: 454, mail: 451, rcpt: 451, data: 451 } as const;
    for (const stage of ['connect', 'auth', 'mail', 'rcpt', 'data'] as const) {
      const { checkpoint } = checkpointWith(await limitSet(stage), new FakeLimits({ policy: 'unavailable' }));
      // alice is authenticated: the built-in relay protection lets her RCPT through to the limit.
      const verdict = await checkpoint.at(stage, new Source(alice), { from: '', recipient: 'b@corp.example' });
      expect(verdict).toMatchObject({ refusal: { code: expected[stage], enhanced: '4.3.0', reason: 'limiter_unavailable' }, rule: 'per-ip' });
    }
  });
});

describe('headers', () => {
  test('connect and auth headers stay for the session; MAIL and RCPT headers only for the transaction; a rule adds a header once', async () => {
    const { checkpoint } = checkpointWith(
      await policySet(`rules:
  - { name: s, stage: connect, action: add_header, header: ["X-Session: 1"] }
  - { name: m, stage: mail, action: add_header, header: ["X-Mail: 1"] }
  - { name: r, stage: rcpt, action: add_header, header: ["X-Rcpt: 1"] }
`),
    );
    const source = new Source(alice);
    await checkpoint.at('connect', source);
    expect(checkpoint.headers().map((h) => h.name)).toEqual(['X-Session']);
    checkpoint.startTransaction();
    await checkpoint.at('mail', source, { from: '' });
    await checkpoint.at('rcpt', source, { from: '', recipient: 'a@corp.example' });
    await checkpoint.at('rcpt', source, { from: '', recipient: 'b@corp.example' });
    expect(checkpoint.headers().map((h) => h.name)).toEqual(['X-Session', 'X-Mail', 'X-Rcpt']);
    checkpoint.startTransaction();
    expect(checkpoint.headers().map((h) => h.name)).toEqual(['X-Session']);
  });
});

describe('fast path: a stage nothing can act on (issue 20)', () => {
  /** A trusted relay client (smtp-source's kind in the bench): no user, trusted by the listener. */
  const relayClient = { ...base, trusted: true };
  const nothingOn = (): FakeLimits => {
    const limits = new FakeLimits();
    limits.plan = { connect: false, anonymousMail: false };
    return limits;
  };
  const asked = (n: { value: number }) => () => {
    n.value++;
    return { from: 'a@corp.example', recipient: 'b@corp.example' };
  };

  test('with no policy folder and no quota for the client, every stage answers at once: no limit asked, no snapshot, no stage facts, no evaluation; the default is still counted', async () => {
    const { checkpoint, limits, metrics } = checkpointWith(emptyPolicySet('UTC'), nothingOn());
    const source = new Source(relayClient);
    const built = { value: 0 };
    for (const stage of ['connect', 'mail', 'rcpt', 'data'] as const) {
      const verdict = checkpoint.at(stage, source, asked(built));
      // Synchronous: the session awaits no promise for it.
      expect(verdict, stage).toBe(OK);
    }
    // RCPT asks the recipients-per-message cap only: it needs no store.
    expect(limits.asked).toEqual(['recipientCap']);
    expect(limits.rcptFacts).toMatchObject({ session: 'sess1', recipientsSoFar: 0 });
    expect(source.taken).toBe(0);
    expect(built.value).toBe(0);
    expect(metrics.recorded.map((e) => [e.stage, e.decision.kind, e.decision.rule])).toEqual([
      ['connect', 'continue', 'default'],
      ['mail', 'continue', 'default'],
      ['rcpt', 'continue', 'default'],
      ['data', 'continue', 'default'],
    ]);
  });

  test('the recipients-per-message cap still refuses on the fast path', async () => {
    const full: Refusal = { code: 452, enhanced: '4.5.3', text: 'Too many recipients', reason: 'too_many_recipients' };
    const limits = nothingOn();
    limits.answers.rcpt = full;
    const { checkpoint, metrics } = checkpointWith(emptyPolicySet('UTC'), limits);
    expect(await checkpoint.at('rcpt', new Source(relayClient), { from: '', recipient: 'x@elsewhere.example' })).toEqual({ refusal: full });
    expect(metrics.recorded).toEqual([]);
  });

  test('relay protection still runs for an untrusted client without a user, and refuses a foreign recipient', async () => {
    const { checkpoint, limits } = checkpointWith(emptyPolicySet('UTC'), nothingOn());
    const source = new Source();
    const verdict = await checkpoint.at('rcpt', source, { from: '', recipient: 'x@elsewhere.example' });
    expect(verdict).toMatchObject({ refusal: { code: 554, reason: 'relay_denied' }, rule: 'builtin:relay_protection' });
    expect(limits.asked).toEqual(['rcptTo']);
    expect(source.taken).toBe(1);
  });

  test('a quota that can count a client without a user (per sender, per address) is asked at MAIL', async () => {
    const limits = nothingOn();
    limits.plan = { connect: false, anonymousMail: true };
    const { checkpoint } = checkpointWith(emptyPolicySet('UTC'), limits);
    await checkpoint.at('mail', new Source(relayClient), { from: 'a@corp.example' });
    expect(limits.asked).toEqual(['mailFrom']);
  });

  test('an authenticated client takes the full path at MAIL and RCPT (its account may be suspended)', async () => {
    const { checkpoint, limits } = checkpointWith(await policySet('relayProtection: off\n'), nothingOn());
    const source = new Source({ ...alice, trusted: true });
    await checkpoint.at('mail', source, { from: 'alice@corp.example' });
    await checkpoint.at('rcpt', source, { from: 'alice@corp.example', recipient: 'x@elsewhere.example' });
    expect(limits.asked).toEqual(['mailFrom', 'rcptTo']);
  });

  test('a rule the client could meet, or a held requirement, takes the full path', async () => {
    const tagged = checkpointWith(await policySet('rules:\n  - { name: tag, stage: mail, action: add_header, header: ["X-A: 1"] }\n'), nothingOn());
    const built = { value: 0 };
    expect(await tagged.checkpoint.at('mail', new Source(relayClient), asked(built))).toBe(OK);
    expect(built.value).toBe(1);
    expect(tagged.checkpoint.headers().map((h) => h.name)).toEqual(['X-A']);

    const held = checkpointWith(await policySet('rules:\n  - { name: tls-for-all, stage: connect, action: require_tls }\n'), nothingOn());
    expect(await held.checkpoint.at('connect', new Source(relayClient))).toBe(OK);
    expect(await held.checkpoint.at('mail', new Source(relayClient), { from: '' })).toMatchObject({ refusal: { reason: 'tls_required' }, rule: 'tls-for-all' });
  });

  test('a stage whose default refuses answers its refusal on the fast path too', async () => {
    const { checkpoint } = checkpointWith(await policySet('relayProtection: off\ndefault: { data: reject }\n'), nothingOn());
    expect(await checkpoint.at('data', new Source(relayClient))).toMatchObject({ refusal: { code: expect.any(Number) }, rule: 'default' });
  });

  test('with debug logging the full path runs, for its trace', async () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    const checkpoint = new Checkpoint({ limits: nothingOn(), metrics: new FakePolicyMetrics(), policy: emptyPolicySet('UTC'), log: pino({ level: 'debug' }, sink) });
    expect(await checkpoint.at('connect', new Source(relayClient))).toBe(OK);
    expect(lines).toContainEqual(expect.objectContaining({ msg: 'policy evaluated', stage: 'connect', decision: 'continue' }));
  });
});
