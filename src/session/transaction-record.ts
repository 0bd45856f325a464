/**
 * The mail log's record of one transaction: who sent what to whom, from where, and how it
 * ended, as one log line (`"msg":"transaction"`, info) written when the transaction ends however
 * it ends: the message answered, MAIL refused, a new MAIL or RSET, the client gone, a timeout.
 * Postfix spreads this over `from=`, `to=` and `status=` lines; here it is one object, so a
 * search for a user, an address or a queue id finds everything in one line.
 *
 * The session (client-session.ts) fills a record at each stage; `finish` says how it ended and
 * writes it. The fields are the contract documented in README "Mail log".
 */
import type { AuthMethod } from '../policy/types.js';
import type { Refusal } from '../reply.js';
import type { Stage } from '../stage.js';
import { jsonNumber, jsonString } from '../logging/json-line.js';

/** One RCPT: what the client was answered, and who decided. */
export interface RecipientResult {
  readonly to: string;
  readonly code: number;
  readonly enhanced?: string;
  readonly by: 'backend' | 'smtpgate';
  readonly reason?: string;
  readonly rule?: string;
}

export type TransactionOutcome = 'relayed' | 'refused' | 'aborted' | 'backend_failure';

/** What the session knows of the client when the transaction starts. */
export interface TransactionClient {
  readonly port: number;
  readonly helo: string | undefined;
  readonly tls: { readonly version: string; readonly cipher: string; readonly sni?: string } | undefined;
  readonly auth: { readonly method: AuthMethod; readonly user: string; readonly credential?: string } | undefined;
  readonly trusted: boolean;
}

/** Refusal reasons that are the backend's failing, not a refusal: the message may be retried. */
const BACKEND_FAILURES = new Set(['backend_unavailable', 'backend_timeout', 'backend_failed']);

export class TransactionRecord {
  readonly #startedAt: number;
  readonly #client: TransactionClient;
  readonly #from: string;
  readonly #rcpt: RecipientResult[] = [];
  #size: number | undefined;
  #messageId: string | undefined;
  #backend: string | undefined;
  #dkim: { domain: string; selectors: readonly string[] } | undefined;

  constructor(from: string, client: TransactionClient, startedAt: number) {
    this.#from = from;
    this.#client = client;
    this.#startedAt = startedAt;
  }

  recipientAccepted(to: string, reply: { code: number; enhanced?: string }): void {
    this.#rcpt.push(reply.enhanced ? { to, code: reply.code, enhanced: reply.enhanced, by: 'backend' } : { to, code: reply.code, by: 'backend' });
  }

  recipientRefused(to: string, r: Refusal, rule: string | undefined): void {
    const by = r.reason.startsWith('backend_') ? 'backend' : 'smtpgate';
    this.#rcpt.push(rule === undefined ? { to, code: r.code, enhanced: r.enhanced, by, reason: r.reason } : { to, code: r.code, enhanced: r.enhanced, by, reason: r.reason, rule });
  }

  /** DATA was reached: the message's size as received, its Message-ID, the backend it went to. */
  message(size: number, messageId: string | undefined, backend: string): void {
    this.#size = size;
    this.#messageId = messageId;
    this.#backend = backend;
  }

  /** The message went to the backend DKIM-signed for `domain` (one signature per selector). */
  signed(domain: string, selectors: readonly string[]): void {
    this.#dkim = { domain, selectors };
  }

  /**
   * The line to log, for an ending: `relayed` with the backend's reply; a refusal at a stage;
   * or the client leaving (`abandoned`: a new MAIL, RSET, QUIT, the connection gone). A
   * transaction whose every RCPT was refused and that the client then gave up is `refused` at
   * rcpt, with the last recipient's refusal.
   */
  finish(end: { relayed: { reply: string; queueId: string | undefined } } | { refused: Refusal; stage: Stage; rule?: string } | { abandoned: true }, now: number): RecordLine {
    let outcome: TransactionOutcome;
    let stage: Stage | undefined;
    let refusal: { code: number; enhanced: string | undefined; reason: string | undefined; rule: string | undefined } | undefined;
    let reply: string | undefined;
    let queueId: string | undefined;
    if ('relayed' in end) {
      outcome = 'relayed';
      ({ reply, queueId } = end.relayed);
    } else if ('refused' in end) {
      const r = end.refused;
      outcome = r.reason === 'client_aborted' ? 'aborted' : BACKEND_FAILURES.has(r.reason) ? 'backend_failure' : 'refused';
      stage = end.stage;
      refusal = { code: r.code, enhanced: r.enhanced, reason: r.reason, rule: end.rule };
      reply = `${r.code} ${r.enhanced} ${r.text}`;
    } else {
      const last = this.#rcpt.at(-1);
      const allRefused = last !== undefined && this.#rcpt.every((x) => x.code >= 400);
      stage = this.#rcpt.length > 0 ? 'rcpt' : 'mail';
      outcome = allRefused ? 'refused' : 'aborted';
      if (allRefused) refusal = { code: last.code, enhanced: last.enhanced, reason: last.reason, rule: last.rule };
    }
    const c = this.#client;
    // One shape for every line, its fields in recordMembers' order; undefined ones are not written.
    return {
      port: c.port,
      helo: c.helo,
      tls: c.tls,
      auth: c.auth,
      trusted: c.trusted ? true : undefined,
      from: this.#from,
      rcpt: this.#rcpt,
      size: this.#size,
      messageId: this.#messageId,
      backend: this.#backend,
      dkim: this.#dkim,
      queueId,
      reply,
      durationMs: now - this.#startedAt,
      outcome,
      stage,
      code: refusal?.code,
      enhanced: refusal?.enhanced,
      reason: refusal?.reason,
      rule: refusal?.rule,
    };
  }
}

/** The transaction record as logged: the fields of README "Mail log", undefined ones left out. */
export interface RecordLine {
  readonly port: number;
  readonly helo: string | undefined;
  readonly tls: TransactionClient['tls'];
  readonly auth: TransactionClient['auth'];
  readonly trusted: true | undefined;
  readonly from: string;
  readonly rcpt: readonly RecipientResult[];
  readonly size: number | undefined;
  readonly messageId: string | undefined;
  readonly backend: string | undefined;
  readonly dkim: { readonly domain: string; readonly selectors: readonly string[] } | undefined;
  readonly queueId: string | undefined;
  readonly reply: string | undefined;
  readonly durationMs: number;
  readonly outcome: TransactionOutcome;
  readonly stage: Stage | undefined;
  readonly code: number | undefined;
  readonly enhanced: string | undefined;
  readonly reason: string | undefined;
  readonly rule: string | undefined;
}

/**
 * The members of `JSON.stringify(line)` (without its braces), character for character, made
 * without its call: a busy gate writes one record per message, and issue 18 holds the record to
 * 5% of W1's CPU. It knows each field and its type instead of discovering them;
 * test/unit/transaction-record.test.ts holds it to JSON.stringify for random records of every
 * ending. A field added to the record is added here too, in the same place, or that test fails.
 */
export function recordMembers(l: RecordLine): string {
  let s = `"port":${jsonNumber(l.port)}`;
  if (l.helo !== undefined) s += `,"helo":${jsonString(l.helo)}`;
  if (l.tls !== undefined) s += `,"tls":{"version":${jsonString(l.tls.version)},"cipher":${jsonString(l.tls.cipher)}${l.tls.sni === undefined ? '' : `,"sni":${jsonString(l.tls.sni)}`}}`;
  if (l.auth !== undefined) s += `,"auth":{"method":${jsonString(l.auth.method)},"user":${jsonString(l.auth.user)}${l.auth.credential === undefined ? '' : `,"credential":${jsonString(l.auth.credential)}`}}`;
  if (l.trusted !== undefined) s += ',"trusted":true';
  s += `,"from":${jsonString(l.from)},"rcpt":[`;
  for (let i = 0; i < l.rcpt.length; i++) s += (i === 0 ? '' : ',') + recipientJson(l.rcpt[i]!);
  s += ']';
  if (l.size !== undefined) s += `,"size":${jsonNumber(l.size)}`;
  if (l.messageId !== undefined) s += `,"messageId":${jsonString(l.messageId)}`;
  if (l.backend !== undefined) s += `,"backend":${jsonString(l.backend)}`;
  if (l.dkim !== undefined) s += `,"dkim":{"domain":${jsonString(l.dkim.domain)},"selectors":[${l.dkim.selectors.map(jsonString).join(',')}]}`;
  if (l.queueId !== undefined) s += `,"queueId":${jsonString(l.queueId)}`;
  if (l.reply !== undefined) s += `,"reply":${jsonString(l.reply)}`;
  s += `,"durationMs":${jsonNumber(l.durationMs)},"outcome":${jsonString(l.outcome)}`;
  if (l.stage !== undefined) s += `,"stage":${jsonString(l.stage)}`;
  if (l.code !== undefined) s += `,"code":${jsonNumber(l.code)}`;
  if (l.enhanced !== undefined) s += `,"enhanced":${jsonString(l.enhanced)}`;
  if (l.reason !== undefined) s += `,"reason":${jsonString(l.reason)}`;
  if (l.rule !== undefined) s += `,"rule":${jsonString(l.rule)}`;
  return s;
}

function recipientJson(r: RecipientResult): string {
  let s = `{"to":${jsonString(r.to)},"code":${jsonNumber(r.code)}`;
  if (r.enhanced !== undefined) s += `,"enhanced":${jsonString(r.enhanced)}`;
  s += `,"by":${jsonString(r.by)}`;
  if (r.reason !== undefined) s += `,"reason":${jsonString(r.reason)}`;
  if (r.rule !== undefined) s += `,"rule":${jsonString(r.rule)}`;
  return `${s}}`;
}
