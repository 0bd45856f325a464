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
  finish(end: { relayed: { reply: string; queueId: string | undefined } } | { refused: Refusal; stage: Stage; rule?: string } | { abandoned: true }, now: number): Record<string, unknown> {
    const c = this.#client;
    const line: Record<string, unknown> = { port: c.port };
    if (c.helo !== undefined) line.helo = c.helo;
    if (c.tls) line.tls = c.tls;
    if (c.auth) line.auth = c.auth;
    if (c.trusted) line.trusted = true;
    line.from = this.#from;
    line.rcpt = this.#rcpt;
    if (this.#size !== undefined) line.size = this.#size;
    if (this.#messageId !== undefined) line.messageId = this.#messageId;
    if (this.#backend !== undefined) line.backend = this.#backend;
    if (this.#dkim !== undefined) line.dkim = this.#dkim;
    if ('relayed' in end) {
      if (end.relayed.queueId !== undefined) line.queueId = end.relayed.queueId;
      line.reply = end.relayed.reply;
    }
    line.durationMs = now - this.#startedAt;
    if ('relayed' in end) {
      line.outcome = 'relayed';
    } else if ('refused' in end) {
      const r = end.refused;
      line.outcome = r.reason === 'client_aborted' ? 'aborted' : BACKEND_FAILURES.has(r.reason) ? 'backend_failure' : 'refused';
      Object.assign(line, { stage: end.stage, code: r.code, enhanced: r.enhanced, reason: r.reason });
      if (end.rule !== undefined) line.rule = end.rule;
      line.reply = `${r.code} ${r.enhanced} ${r.text}`;
    } else {
      const last = this.#rcpt.at(-1);
      const allRefused = last !== undefined && this.#rcpt.every((x) => x.code >= 400);
      line.stage = this.#rcpt.length > 0 ? 'rcpt' : 'mail';
      line.outcome = allRefused ? 'refused' : 'aborted';
      if (allRefused) {
        Object.assign(line, { code: last.code, enhanced: last.enhanced, reason: last.reason });
        if (last.rule !== undefined) line.rule = last.rule;
      }
    }
    return line;
  }
}
