/**
 * Counts per label set, kept between scrapes and added to a prom-client counter when the
 * registry reads it (its `collect` hook: a scrape, `registry.metrics()`, `counter.get()`, the
 * cluster aggregation), so what a reader sees is the same as with `inc()` on every event.
 *
 * Why: the policy and the limits count a decision at every stage of every message, and
 * prom-client's `inc()` builds and looks up a key from the label object on every call (a
 * `labels()` child only binds the object). Here an event is a few Map lookups. Label sets must
 * be bounded, as for any counter.
 */
import type { Counter } from 'prom-client';

export class PendingCounts<L extends string> {
  readonly #names: readonly L[];
  readonly #counts = new Map<string, Map<string, Map<string, { readonly labels: Record<L, string>; n: number }>>>();

  /** The counter's label names, in the order `add()` takes their values (two or three). */
  constructor(names: readonly L[]) {
    this.#names = names;
  }

  /** One more for these label values (the third is '' when there are two labels). */
  add(a: string, b: string, c = ''): void {
    let byB = this.#counts.get(a);
    if (!byB) this.#counts.set(a, (byB = new Map()));
    let byC = byB.get(b);
    if (!byC) byB.set(b, (byC = new Map()));
    let pending = byC.get(c);
    if (!pending) {
      const values = [a, b, c];
      byC.set(c, (pending = { labels: Object.fromEntries(this.#names.map((name, i) => [name, values[i]!])) as Record<L, string>, n: 0 }));
    }
    pending.n++;
  }

  /** Adds what was counted since the last read to `counter`; call it from the counter's `collect`. */
  flushInto(counter: Counter<L>): void {
    for (const byB of this.#counts.values()) {
      for (const byC of byB.values()) {
        for (const pending of byC.values()) {
          if (pending.n === 0) continue;
          counter.inc(pending.labels, pending.n);
          pending.n = 0;
        }
      }
    }
  }
}
