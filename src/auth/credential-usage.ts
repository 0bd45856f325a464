/**
 * When and from where each app password was last used, for `smtpgate credential list`.
 *
 * Kept in the limits store beside the counters (limits.store): with Redis every instance writes
 * to one table and any of them (or the CLI, directly) reads it; with the memory store it lives
 * in the running process and the CLI asks it over the admin address. The table holds one field
 * per credential ("USER LABEL SALT" → "ISO-TIME CLIENT"), never the secret. The salt (from the
 * stored hash) makes the field the credential's own: a new credential given the label of a
 * revoked one starts with no use, whatever an instance or the store still remembers.
 *
 * Writing is best effort and cheap: a sign-in never waits for it, and a credential used again
 * from the same address within `REFRESH_MS` is not written again, so a printer signing in for
 * every page doesn't cost a store write each.
 */
import type { LimiterStore } from '../limits/limiter-store.js';
import type { Credential } from './credentials-file.js';

export const CREDENTIAL_USE_TABLE = 'credential-used';
/** How stale "last used" may be for a credential used again from the same address. */
export const REFRESH_MS = 60_000;
/** Credentials remembered as written lately, at most (the oldest go first). */
const MAX_REMEMBERED = 10_000;

export interface CredentialUse {
  /** ISO 8601 time of the sign-in. */
  readonly at: string;
  /** The client's address (after PROXY protocol). */
  readonly client: string;
}

export type NoteStore = Pick<LimiterStore, 'setNote' | 'notes' | 'removeNotes'>;

export type CredentialKey = Pick<Credential, 'user' | 'label' | 'hash'>;

export const usageField = (c: CredentialKey): string => `${c.user} ${c.label} ${c.hash.split('$')[2] ?? ''}`;

export class CredentialUsage {
  readonly #store: NoteStore;
  /** What this process wrote last per field, and when: the throttle. */
  readonly #written = new Map<string, { at: number; client: string }>();

  constructor(store: NoteStore) {
    this.#store = store;
  }

  /** Notes a sign-in; resolves when written (or skipped), never rejects. */
  async record(credential: CredentialKey, client: string, now: Date): Promise<void> {
    const field = usageField(credential);
    const last = this.#written.get(field);
    if (last && last.client === client && now.getTime() - last.at < REFRESH_MS) return;
    this.#written.delete(field);
    this.#written.set(field, { at: now.getTime(), client });
    if (this.#written.size > MAX_REMEMBERED) this.#written.delete(this.#written.keys().next().value!);
    if (!(await this.#store.setNote(CREDENTIAL_USE_TABLE, field, `${now.toISOString()} ${client}`))) this.#written.delete(field);
  }

  /** Every recorded use, by `usageField`. Throws StoreUnavailableError when the store is down. */
  async list(): Promise<Map<string, CredentialUse>> {
    const out = new Map<string, CredentialUse>();
    for (const [field, value] of await this.#store.notes(CREDENTIAL_USE_TABLE)) {
      const space = value.indexOf(' ');
      if (space > 0) out.set(field, { at: value.slice(0, space), client: value.slice(space + 1) });
    }
    return out;
  }

  /** Forgets a revoked credential's last use (tidiness: a new credential never reads it). */
  async forget(credential: CredentialKey): Promise<void> {
    this.#written.delete(usageField(credential));
    await this.#store.removeNotes(CREDENTIAL_USE_TABLE, [usageField(credential)]);
  }
}
