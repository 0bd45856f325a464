/**
 * How signing one message ended: the `result` label of smtpgate_dkim_signatures_total, and
 * what the log and the transaction record say.
 */

/** Signed, or why not (a small fixed set: it is a metric label). */
export const SIGNING_RESULTS = ['signed', 'not_eligible', 'no_from', 'several_from', 'from_not_address', 'domain_not_listed', 'from_not_owned', 'header_too_large', 'sign_failed'] as const;
export type SigningResult = (typeof SIGNING_RESULTS)[number];

export type SigningOutcome =
  | { readonly signed: true; readonly domain: string; readonly selectors: readonly string[] }
  | { readonly signed: false; readonly reason: Exclude<SigningResult, 'signed'>; readonly detail: string };
