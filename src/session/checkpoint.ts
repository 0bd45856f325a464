/**
 * One checkpoint per client session: at every stage it asks, in this order,
 *
 *   built-in limits (MAIL, RCPT) → held requirements (MAIL) → policy rules → the rules' own limits
 *
 * and collects the headers the rules add, returning one verdict. The first "no" wins; a refusal
 * carries the rule that made it, when a rule made it.
 *
 * A checkpoint belongs to one session: it keeps the policy set the session started with (a
 * reload never changes the rules mid-session), the require_tls/require_auth decisions held from
 * connect and auth until MAIL, and the add_header results (from connect/auth for the whole
 * session, from MAIL/RCPT for the transaction).
 */
import type { Refusal } from '../reply.js';
import type { Logger } from '../logging/logger.js';
import type { ClientFacts, Limits } from '../limits/limits.js';
import { limiterUnavailableRefusal } from '../limits/replies.js';
import { evaluate, unmetRequirement } from '../policy/evaluate.js';
import type { PolicyMetrics } from '../policy/metrics.js';
import { limitRefusal } from '../policy/replies.js';
import type { Decision, EvaluateOptions, HeaderToAdd, PolicySet, PolicyStage, SessionFacts } from '../policy/types.js';
import { policyView, type SessionSnapshot } from './snapshot.js';
import { clientKind } from '../policy/client-kind.js';

/** A stage's answer: go on, or the refusal (and the policy rule behind it, if one). */
export type Verdict = { readonly ok: true; readonly refusal?: undefined; readonly rule?: undefined } | Refused;
export type Refused = { readonly ok?: undefined; readonly refusal: Refusal; readonly rule?: string };

/** The one "go on" verdict: shared, so the accepting path allocates nothing for it. */
export const OK: Verdict = Object.freeze({ ok: true });

/**
 * What a stage has learnt on top of the session snapshot: the sender and its SIZE= at MAIL, the
 * recipient at RCPT, the user being logged in at AUTH, the message at DATA. Given as a function
 * when it costs something to build (the MIME scan's result): it is called only when a rule
 * needs it.
 */
export type StageFacts = Partial<SessionFacts>;

/**
 * What the checkpoint asks the session about the client, when (and only when) it needs it. The
 * built-in limits, asked at every MAIL and RCPT, need only the client they count; the whole
 * snapshot (the clock, the recipient list, the user's attributes) is built when a policy rule
 * at the stage can act.
 */
export interface SnapshotSource {
  /** The authenticated user, if any, and whether the listener trusts the client: the plans' client kind. */
  readonly user: string | undefined;
  readonly trusted: boolean;
  /** Who the limits count (snapshot.ts `limitsView`). */
  limitsFacts(): ClientFacts;
  /** Recipients accepted so far in the transaction: RCPT's per-message limit. */
  recipientCount(): number;
  snapshot(): SessionSnapshot;
}

export interface CheckpointDeps {
  readonly limits: Pick<Limits, 'plan' | 'mailFrom' | 'rcptTo' | 'recipientCap' | 'policyLimit'>;
  readonly metrics: Pick<PolicyMetrics, 'record'>;
  /** The policy set in force when the session started. */
  readonly policy: PolicySet;
  /** The session's logger. */
  readonly log: Logger;
}

const TRACED: EvaluateOptions = { trace: true };
const UNTRACED: EvaluateOptions = { trace: false };
const NO_FACTS: StageFacts = Object.freeze({});

export class Checkpoint {
  readonly #limits: CheckpointDeps['limits'];
  readonly #metrics: CheckpointDeps['metrics'];
  readonly #log: Logger;
  readonly policy: PolicySet;
  /** require_tls / require_auth decided at connect or auth, checked at MAIL. */
  readonly #requirements: Decision[] = [];
  /** add_header results from connect and auth: every message of the session gets them. */
  readonly #sessionHeaders: HeaderToAdd[] = [];
  /** add_header results from MAIL and RCPT: this transaction's message only. */
  #txHeaders: HeaderToAdd[] = [];

  constructor(deps: CheckpointDeps) {
    this.#limits = deps.limits;
    this.#metrics = deps.metrics;
    this.#log = deps.log;
    this.policy = deps.policy;
  }

  /** A new MAIL starts a new transaction: the previous one's headers are forgotten. */
  startTransaction(): void {
    this.#txHeaders = [];
  }

  /** The headers the rules asked for, session ones first, for the message being relayed. */
  headers(): readonly HeaderToAdd[] {
    return this.#sessionHeaders.length === 0 ? this.#txHeaders : [...this.#sessionHeaders, ...this.#txHeaders];
  }

  /**
   * Asks the stage's limits, requirements and policy. `facts` is what the stage adds to the
   * snapshot (at MAIL, `from` and `declaredSize` are also what the sender quotas count).
   * Synchronous when the plans say nothing can act on this client at this stage (`#settled`).
   */
  at(stage: PolicyStage, source: SnapshotSource, facts: StageFacts | (() => StageFacts) = NO_FACTS): Verdict | Promise<Verdict> {
    return this.#settled(stage, source) ?? this.#check(stage, source, facts);
  }

  /**
   * The fast path, decided by plans made when the config and the policy set were loaded: when
   * no limit can count this client at this stage (limits/plan.ts), no requirement is held, and
   * no rule at the stage can match a client of its kind (policy/client-kind.ts), the verdict is
   * the stage's default, counted like any evaluation, with no facts built and no rule evaluated.
   * At RCPT a client without a user meets only the recipients-per-message cap, asked here.
   * Undefined: the full check must run. With debug logging the full check runs, for its trace.
   */
  #settled(stage: PolicyStage, source: SnapshotSource): Verdict | undefined {
    // At auth the stage's facts are the user who has just logged in.
    const authenticated = stage === 'auth' || source.user !== undefined;
    if (stage === 'mail' && (authenticated || this.#limits.plan.anonymousMail || this.#requirements.length > 0)) return undefined;
    if (stage === 'rcpt' && authenticated) return undefined;
    const plan = this.policy.plan[stage];
    if (!plan.idle[clientKind(source.trusted, authenticated)] || this.#log.isLevelEnabled('debug')) return undefined;
    if (stage === 'rcpt') {
      const capped = this.#limits.recipientCap(Object.assign(source.limitsFacts(), { recipientsSoFar: source.recipientCount() }));
      if (capped) return { refusal: capped };
    }
    const ev = plan.untraced;
    this.#metrics.record(ev);
    const d = ev.decision;
    return d.kind === 'refuse' ? { refusal: d.refusal, rule: d.rule } : OK;
  }

  async #check(stage: PolicyStage, source: SnapshotSource, facts: StageFacts | (() => StageFacts)): Promise<Verdict> {
    let built: StageFacts | undefined = typeof facts === 'function' ? undefined : facts;
    const stageFacts = (): StageFacts => (built ??= (facts as () => StageFacts)());
    // The stage's facts are laid over a fresh projection with Object.assign, not a spread: on
    // V8 11 (Node 20) an object literal that adds properties after a spread gets a hidden class
    // of its own every time (~1.5 µs each, and every read of it downstream goes megamorphic).
    if (stage === 'mail') {
      const { from, declaredSize } = stageFacts();
      const limited = await this.#limits.mailFrom(Object.assign(source.limitsFacts(), { sender: from ?? '', size: declaredSize }));
      if (limited) return { refusal: limited };
    } else if (stage === 'rcpt') {
      const limited = await this.#limits.rcptTo(Object.assign(source.limitsFacts(), { recipientsSoFar: source.recipientCount() }));
      if (limited) return { refusal: limited };
    }
    // Built once, at the first rule or held requirement that looks.
    let sessionFacts: SessionFacts | undefined;
    const policyFacts = (): SessionFacts => (sessionFacts ??= Object.assign(policyView(source.snapshot()), stageFacts()));
    if (stage === 'mail' && this.#requirements.length > 0) {
      const known = policyFacts();
      for (const held of this.#requirements) {
        const unmet = unmetRequirement(held, known);
        if (unmet) return { refusal: unmet, rule: held.rule };
      }
    }
    return this.#policy(stage, policyFacts);
  }

  /**
   * Evaluates one stage of the session's policy set: counts the decision, logs audit hits
   * ("would have refused") and the trace, applies the rules' own limits and collects the
   * headers to add.
   */
  async #policy(stage: PolicyStage, facts: () => SessionFacts): Promise<Verdict> {
    // The trace (a line per rule, with why it matched) is built only when it will be logged.
    const debug = this.#log.isLevelEnabled('debug');
    const ev = evaluate(this.policy, stage, facts, debug ? TRACED : UNTRACED);
    this.#metrics.record(ev);
    if (debug) this.#log.debug({ stage, decision: ev.decision.kind, rule: ev.decision.rule, trace: ev.trace }, 'policy evaluated');
    for (const a of ev.audits) {
      this.#log.warn({ stage, rule: a.rule, code: a.refusal.code, enhanced: a.refusal.enhanced }, `policy audit: would have refused: ${a.refusal.text}`);
    }
    const d = ev.decision;
    if (d.kind === 'refuse') return { refusal: d.refusal, rule: d.rule };
    if (d.kind === 'require_tls' || d.kind === 'require_auth') this.#requirements.push(d);
    for (const req of ev.limits) {
      const r = await this.#limits.policyLimit({ bucket: req.bucket, amount: req.rate.amount, windowMs: req.rate.windowMs });
      if (r === 'unavailable') return { refusal: limiterUnavailableRefusal(stage), rule: req.rule };
      if (r.limited) return { refusal: limitRefusal(req, r.msBeforeNext), rule: req.rule };
    }
    const target = stage === 'connect' || stage === 'auth' ? this.#sessionHeaders : this.#txHeaders;
    for (const h of ev.headers) {
      if (!target.some((t) => t.rule === h.rule && t.name === h.name)) target.push(h);
    }
    return OK;
  }
}
