/**
 * The stray bytes that make SMTP smuggling (relay/data-encoder.ts) and what each is called: in
 * the refusal's text (refusals.ts) and in the encoder's error message. Its own module so that
 * the refusals and the relay share the words without importing each other.
 */
export type SmugglingKind = 'bare_cr' | 'bare_lf' | 'nul';

export const SMUGGLING_KIND_TEXT: Readonly<Record<SmugglingKind, string>> = {
  bare_cr: 'bare CR',
  bare_lf: 'bare LF',
  nul: 'NUL byte',
};
