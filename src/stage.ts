/**
 * The one stage vocabulary. A client session goes through these stages in this order; every
 * refusal is counted (`stage` label of smtpgate_refusals_total) and logged at one of them, and
 * policy rules and limits are asked at them.
 *
 *   connect → tls → auth → mail → rcpt → data
 *
 * `connect` also stands for the session as a whole: commands outside a transaction stage
 * (EHLO, NOOP, RSET, QUIT) and the session cap between transactions.
 */
export const STAGES = ['connect', 'tls', 'auth', 'mail', 'rcpt', 'data'] as const;
export type Stage = (typeof STAGES)[number];
