/**
 * The policy engine's vocabulary: what the listener knows about a session (`SessionFacts`),
 * what the admin wrote (`Rule`, `PolicySet`, compiled from the YAML files by load.ts), and
 * what the engine answers (`Decision`, `Evaluation`, `TraceEntry`).
 *
 * Everything here is plain data. `evaluate()` is a pure function of (PolicySet, stage, facts).
 */
import type { CidrSet } from '../parsing/cidr.js';
import type { Refusal, RefusalReason } from '../reply.js';
import type { Stage } from '../stage.js';
import type { Rate } from '../limits/rate.js';
import type { PatternList } from './patterns.js';

/** The stages policy rules run at: every stage but `tls` (a TLS handshake has no rule of its own). */
export const POLICY_STAGES = ['connect', 'auth', 'mail', 'rcpt', 'data'] as const satisfies readonly Stage[];
export type PolicyStage = (typeof POLICY_STAGES)[number];

/** The order in which facts become known: a condition may be used from its stage on. */
export const STAGE_ORDER: Readonly<Record<PolicyStage, number>> = { connect: 0, auth: 1, mail: 2, rcpt: 3, data: 4 };

/** The reasons the policy engine gives its refusals (a subset of REFUSAL_REASONS, src/reply.ts). */
export const POLICY_REFUSAL_REASONS = [
  'policy',
  'sender_binding',
  'relay_denied',
  'too_many_recipients',
  'message_too_big',
  'tls_required',
  'auth_required',
  'rate_limited',
] as const satisfies readonly RefusalReason[];
export type PolicyRefusalReason = (typeof POLICY_REFUSAL_REASONS)[number];

export function policyRefusal(code: number, enhanced: string, text: string, reason: PolicyRefusalReason): Refusal {
  return { code, enhanced, text, reason };
}

// ── facts ─────────────────────────────────────────────────────────────────────────────────

/** How a session signed in: a password (checked by the auth source), an app password, a client certificate. */
export const AUTH_METHODS = ['password', 'app_password', 'certificate'] as const;
export type AuthMethod = (typeof AUTH_METHODS)[number];

export interface UserFacts {
  /** The login name. */
  readonly name: string;
  /** Groups from the user attributes file. */
  readonly groups: readonly string[];
  /** Addresses (or wildcards such as "*@sales.example") the user may send as. */
  readonly addresses: readonly string[];
}

/** One header of a header block: name lower-cased, value unfolded. */
export interface Header {
  /** Lower-cased field name, e.g. "subject". */
  readonly name: string;
  /** The unfolded value as sent (leading white space removed), decoded as UTF-8. */
  readonly value: string;
  /** The value with RFC 2047 encoded-words decoded. */
  readonly decoded: string;
}

/** A leaf MIME part (anything but a multipart container), as the attachment scanner saw it. */
export interface MimePart {
  /** Lower-cased "type/subtype"; "text/plain" when the part has no Content-Type (RFC 2045 §5.2). */
  readonly contentType: string;
  /**
   * File names from Content-Disposition `filename` and Content-Type `name` (RFC 2231 and
   * RFC 2047 decoded, path and trailing dots/spaces stripped). Usually zero or one; two when
   * the headers disagree (a classic evasion: "invoice.pdf" in one, "invoice.exe" in the other).
   */
  readonly filenames: readonly string[];
  /** Lower-cased Content-Disposition type ("attachment", "inline"), if any. */
  readonly disposition?: string;
  /** Nesting depth: 0 for a single-part message's body, 1 for parts of the top multipart, … */
  readonly depth: number;
}

/**
 * What the listener knows about a session when it asks the engine. Facts that are not known
 * yet at a stage are absent; the loader refuses conditions on facts that a stage can't have.
 */
export interface SessionFacts {
  /** The client's address (after PROXY protocol). */
  readonly ip: string;
  /** The listener's name from the config. */
  readonly listener: string;
  /** Present once TLS is up. `version` as node reports it: "TLSv1.2", "TLSv1.3". */
  readonly tls: { readonly version: string } | undefined;
  readonly authenticated: boolean;
  /** How the user signed in; absent when not authenticated. */
  readonly authMethod?: AuthMethod;
  readonly user?: UserFacts;
  /** The client is in the listener's trusted networks. The policy's `trustedNetworks` add to this. */
  readonly trusted: boolean;
  /** The EHLO/HELO name. */
  readonly helo?: string;
  /** MAIL FROM address; "" for the null sender <>. */
  readonly from?: string;
  /** At rcpt: the recipient being decided. */
  readonly recipient?: string;
  /** Recipients accepted so far in this transaction (at data: all of them). */
  readonly recipients: readonly string[];
  /** SIZE= from MAIL FROM, if the client declared one. */
  readonly declaredSize?: number;
  /** At data: the message's size in bytes as received. */
  readonly messageSize?: number;
  /** At data: the message's top-level header block. */
  readonly headers?: readonly Header[];
  /** At data: the scan stopped at a limit before the end of the header block, so `headers` lacks fields. */
  readonly headersTruncated?: boolean;
  /** At data: the message's leaf MIME parts. */
  readonly attachments?: readonly MimePart[];
  /** At data: the MIME scanner hit one of its limits, so `attachments` may be missing parts. */
  readonly scanIncomplete?: boolean;
  readonly now: Date;
}

// ── rules ─────────────────────────────────────────────────────────────────────────────────

/** Where a rule (or one of its conditions) was written. */
export interface SourceRef {
  readonly file: string;
  readonly line?: number;
}

export type SizeFact = 'declaredSize' | 'messageSize';

/** A compiled condition. Leaves carry their matcher and a text for the trace. */
export type Condition =
  | { readonly kind: 'all'; readonly of: readonly Condition[] }
  | { readonly kind: 'any'; readonly of: readonly Condition[] }
  | { readonly kind: 'not'; readonly of: Condition }
  | { readonly kind: 'clientIp'; readonly set: CidrSet; readonly text: string }
  | { readonly kind: 'listener'; readonly names: readonly string[] }
  | { readonly kind: 'tls'; readonly value: boolean }
  | { readonly kind: 'tlsVersion'; readonly versions: readonly string[] }
  | { readonly kind: 'authenticated'; readonly value: boolean }
  | { readonly kind: 'authMethod'; readonly methods: readonly AuthMethod[] }
  | { readonly kind: 'trusted'; readonly value: boolean }
  | { readonly kind: 'user'; readonly list: PatternList }
  | { readonly kind: 'group'; readonly groups: readonly string[]; readonly source: SourceRef }
  | { readonly kind: 'helo'; readonly list: PatternList }
  | { readonly kind: 'sender'; readonly list: PatternList }
  | { readonly kind: 'senderDomain'; readonly list: PatternList }
  | { readonly kind: 'senderInternal'; readonly value: boolean }
  | { readonly kind: 'recipient'; readonly list: PatternList }
  | { readonly kind: 'recipientDomain'; readonly list: PatternList }
  | { readonly kind: 'recipientInternal'; readonly value: boolean }
  | { readonly kind: 'recipientsOver'; readonly max: number }
  | { readonly kind: 'sizeOver'; readonly fact: SizeFact; readonly max: number }
  | { readonly kind: 'header'; readonly name: string; readonly patterns: readonly RegExp[] }
  | { readonly kind: 'attachmentName'; readonly list: PatternList }
  | { readonly kind: 'attachmentType'; readonly list: PatternList }
  | { readonly kind: 'scanIncomplete'; readonly value: boolean }
  | { readonly kind: 'time'; readonly ranges: readonly TimeRange[]; readonly text: string }
  | { readonly kind: 'days'; readonly days: ReadonlySet<number>; readonly text: string }
  | { readonly kind: 'builtin'; readonly check: BuiltinCheck };

/** Minutes since midnight; `to` < `from` wraps past midnight. */
export interface TimeRange {
  readonly from: number;
  readonly to: number;
}

export const BUILTIN_TYPES = ['sender_binding', 'relay_protection', 'trusted_networks', 'recipient_domains', 'max_recipients', 'max_size'] as const;
export type BuiltinType = (typeof BUILTIN_TYPES)[number];

/** The check a built-in rule type adds to the rule's own `when`. */
export type BuiltinCheck =
  | { readonly type: 'sender_binding'; readonly allowNullSender: boolean }
  | { readonly type: 'relay_protection' }
  | { readonly type: 'trusted_networks'; readonly networks: CidrSet | undefined }
  | { readonly type: 'recipient_domains'; readonly allow: PatternList; readonly allowInternal: boolean }
  | { readonly type: 'max_recipients'; readonly max: number }
  | { readonly type: 'max_size'; readonly max: number };

export const ACTIONS = ['accept', 'reject', 'tempfail', 'require_tls', 'require_auth', 'add_header', 'limit'] as const;
export type ActionName = (typeof ACTIONS)[number];

export const LIMIT_KEYS = ['user', 'ip', 'sender'] as const;
export type LimitKey = (typeof LIMIT_KEYS)[number];

export interface HeaderField {
  readonly name: string;
  readonly value: string;
}

export type RuleAction =
  | { readonly kind: 'accept' }
  | { readonly kind: 'reject' | 'tempfail' | 'require_tls' | 'require_auth'; readonly refusal: Refusal }
  | { readonly kind: 'add_header'; readonly headers: readonly HeaderField[] }
  | { readonly kind: 'limit'; readonly rate: Rate; readonly rateText: string; readonly per: LimitKey };

export type RuleMode = 'enforce' | 'audit' | 'off';

/**
 * One rule at one stage. A rule written with several stages (`stage: [mail, data]`, or a
 * built-in type that covers two) becomes one `Rule` per stage, with the same name, so that
 * each can carry the reply that suits its stage.
 */
export interface Rule {
  readonly name: string;
  readonly stage: PolicyStage;
  /** All the stages the rule was written for. */
  readonly stages: readonly PolicyStage[];
  /** The built-in rule type, if any; its check is part of `when`. */
  readonly type?: BuiltinType;
  readonly mode: RuleMode;
  /** Undefined: the rule matches every session at its stages (a catch-all). */
  readonly when: Condition | undefined;
  readonly action: RuleAction;
  readonly description?: string;
  readonly source: SourceRef;
  /** The `when` map as written, for the linter's "same conditions as an earlier rule" check. */
  readonly whenText?: string;
}

export type DefaultAction = 'accept' | 'reject' | 'tempfail';

export interface PolicySettings {
  /** Domains (globs, list files) that are ours: relay protection lets anyone send to them. */
  readonly internalDomains: PatternList;
  /** Clients treated like the listener's trusted networks (exempt from relay protection). */
  readonly trustedNetworks: CidrSet;
  /** IANA time zone for `time` and `days` conditions. */
  readonly timezone: string;
  /** What happens at a stage where no rule decides. */
  readonly defaults: Readonly<Record<PolicyStage, DefaultAction>>;
  /**
   * The implicit relay-protection rule that runs first at rcpt. On unless `relayProtection:
   * off`, and replaced by an explicit `type: relay_protection` rule when the set has one.
   */
  readonly relayProtection: boolean;
}

export interface PolicySet {
  /** The folder the set was read from; '' for the built-in empty set. */
  readonly dir: string;
  readonly files: readonly string[];
  readonly settings: PolicySettings;
  /** Every rule at every stage, in order (files by name, rules in file order), including mode: off. */
  readonly rules: readonly Rule[];
  /** The number of rules as written (a two-stage rule counts once). */
  readonly ruleCount: number;
  /** The rules evaluated at each stage, in order, with the implicit relay rule where it applies. */
  readonly byStage: Readonly<Record<PolicyStage, readonly Rule[]>>;
  /**
   * By kind of client (client-kind.ts): some data-stage rule such a client could meet reads the
   * message's headers or parts, so its message is scanned.
   */
  readonly scans: readonly boolean[];
  /** What `evaluate()` works out once per set instead of on every call (built by `planStages`). */
  readonly plan: Readonly<Record<PolicyStage, StagePlan>>;
}

/**
 * One stage of a set, prepared for `evaluate()`. Everything in it is frozen and shared by the
 * evaluations that return it: callers must not mutate an `Evaluation`.
 */
export interface StagePlan {
  /** `byStage[stage]`, each rule with what it decides or collects when it matches. */
  readonly steps: readonly RuleStep[];
  /** The stage's default, for when no rule decides. */
  readonly fallback: Decision;
  readonly fallbackTrace: TraceEntry;
  /** The answer without a trace when no rule decides and nothing was collected. */
  readonly untraced: Evaluation;
  /**
   * By kind of client (client-kind.ts `clientKind`: trusted by the listener, authenticated):
   * no rule at the stage can match such a client, so without a trace the answer is `untraced`
   * whatever the other facts are.
   */
  readonly idle: readonly boolean[];
  /**
   * When no rule at the stage can act (none, or all mode: off), the answer doesn't depend on
   * the facts: both forms, ready.
   */
  readonly fixed: { readonly traced: Evaluation; readonly untraced: Evaluation } | undefined;
}

/** A rule at its stage with the parts of its answer that don't depend on the facts. */
export interface RuleStep {
  readonly rule: Rule;
  /**
   * What the rule decides when it matches and decides: accept, or (mode: enforce) a refusal,
   * or a require_tls / require_auth held from connect or auth. Undefined for add_header, limit
   * and audit-mode rules.
   */
  readonly decision: Decision | undefined;
  /** `decision` as a whole answer, for when nothing was collected before it. */
  readonly decided: Evaluation | undefined;
  /** mode: audit: the hit it records when it would refuse. */
  readonly audit: AuditHit | undefined;
  /** add_header: the headers it asks for. */
  readonly headers: readonly HeaderToAdd[];
}

export interface EvaluateOptions {
  /**
   * Build the trace (default true): what `smtpgate policy test` prints and the listener logs
   * at debug level. With false the evaluation builds no trace and no texts at all, and returns
   * `trace: []`; the decision, headers, limits and audits are the same.
   */
  readonly trace?: boolean;
}

// ── answers ───────────────────────────────────────────────────────────────────────────────

/** The rule name used when no rule decided. Admins can't name a rule this. */
export const DEFAULT_RULE = 'default';
/** The implicit relay-protection rule's name. The colon keeps it apart from admin names. */
export const IMPLICIT_RELAY_RULE = 'builtin:relay_protection';

export type RefusingAction = 'reject' | 'tempfail' | 'require_tls' | 'require_auth';

/**
 * What a stage's evaluation decided.
 *
 * - accept: a rule accepted; stop evaluating this stage and go on (limits, backend).
 * - continue: no rule decided and the default is accept: go on as if there were no policy.
 * - refuse: answer the client with `refusal` (reject, tempfail, or an unmet require_tls /
 *   require_auth at mail, rcpt or data; or a non-accept default).
 * - require_tls / require_auth: only at connect and auth, where TLS and AUTH may still come.
 *   The listener remembers the requirement and, at MAIL, refuses with `refusal` if the session
 *   still has no TLS / no AUTH (see `unmetRequirement`).
 */
export type Decision =
  | { readonly kind: 'accept'; readonly rule: string }
  | { readonly kind: 'continue'; readonly rule: typeof DEFAULT_RULE }
  | { readonly kind: 'refuse'; readonly rule: string; readonly action: RefusingAction; readonly refusal: Refusal }
  | { readonly kind: 'require_tls' | 'require_auth'; readonly rule: string; readonly refusal: Refusal };

/** A header an add_header rule asks the listener to prepend to the message. */
export interface HeaderToAdd extends HeaderField {
  readonly rule: string;
}

/**
 * A limit rule matched: the listener consumes one point of `rate` under `bucket` (or, at data,
 * may consume the message size for a byte rate; policy rates are counts) and refuses with
 * `limitRefusal(request, msBeforeNext)` when over.
 */
export interface LimitRequest {
  readonly rule: string;
  readonly stage: PolicyStage;
  readonly rate: Rate;
  /** As written, e.g. "50/1h". */
  readonly rateText: string;
  readonly per: LimitKey;
  /** The normalized key value: "alice", "192.0.2.1", "2001:db8::/64", "bob@corp.example". */
  readonly key: string;
  /** A store key unique to this rule and key: "policy:<rule>|<key>". */
  readonly bucket: string;
}

/** An audit-mode rule that would have refused. Never enforced. */
export interface AuditHit {
  readonly rule: string;
  readonly stage: PolicyStage;
  readonly action: RefusingAction;
  readonly refusal: Refusal;
}

export type TraceResult = 'matched' | 'no_match' | 'satisfied' | 'audit' | 'skipped';

export interface TraceEntry {
  readonly rule: string;
  readonly source?: SourceRef;
  readonly mode: RuleMode;
  readonly result: TraceResult;
  /** What the rule did, e.g. "reject 550 5.7.1 …", "add header X-…", "limit 50/1h per user". */
  readonly outcome?: string;
  /** Why it matched or not: one line per condition that was looked at. */
  readonly why: readonly string[];
}

/** May be shared by several calls (frozen, from the set's plan): read it, don't change it. */
export interface Evaluation {
  readonly stage: PolicyStage;
  readonly decision: Decision;
  /** From add_header rules that matched (empty when the decision refuses). */
  readonly headers: readonly HeaderToAdd[];
  /** From limit rules that matched (empty when the decision refuses). */
  readonly limits: readonly LimitRequest[];
  readonly audits: readonly AuditHit[];
  readonly trace: readonly TraceEntry[];
}
