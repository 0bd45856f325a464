/**
 * Open-connection counters (per client address, per listener). They live in the process:
 * a count in Redis would outlive a crashed instance and lock its clients out for good, so
 * concurrency limits are per smtpgate process. Entries at zero are dropped, so the map only
 * holds clients that are connected now.
 */
export class ConcurrencyCounter {
  readonly #counts = new Map<string, number>();

  count(key: string): number {
    return this.#counts.get(key) ?? 0;
  }

  /** Takes a slot if fewer than `limit` are taken. */
  tryAcquire(key: string, limit: number): boolean {
    const n = this.count(key);
    if (n >= limit) return false;
    this.#counts.set(key, n + 1);
    return true;
  }

  release(key: string): void {
    const n = this.count(key);
    if (n <= 1) this.#counts.delete(key);
    else this.#counts.set(key, n - 1);
  }

  get size(): number {
    return this.#counts.size;
  }
}
