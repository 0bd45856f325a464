/**
 * The counts of cluster workers that have died, kept so the totals the primary serves never go
 * down. The primary adds up its live workers' registries; without this, a worker's counts
 * vanish with it and Prometheus reads the smaller sum as a counter reset, so rate() and
 * increase() count everything since the start once more.
 *
 * Only cumulative values are kept: counters and histograms (buckets, sum and count). A dead
 * worker's gauges (open connections, backend up...) describe nothing any more and go with it.
 */
import type { MetricObjectWithValues, MetricValue } from 'prom-client';

/** One registry's metrics as `registry.getMetricsAsJSON()` gives them (and IPC carries them). */
export type MetricsJson = MetricObjectWithValues<MetricValue<string>>[];

type Value = MetricValue<string> & { metricName?: string };

const CUMULATIVE = new Set(['counter', 'histogram']);

/** A series' identity: its sample name (histograms have _bucket/_sum/_count) and its labels. */
function seriesKey(v: Value): string {
  const labels = Object.entries(v.labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return JSON.stringify([v.metricName ?? '', labels]);
}

/**
 * `retained` plus the counters and histograms of `dead` (a worker's last report), series by
 * series. Pure: neither argument is changed.
 */
export function addCumulative(retained: MetricsJson, dead: MetricsJson): MetricsJson {
  const byName = new Map<string, { metric: MetricsJson[number]; series: Map<string, Value> }>();
  const add = (m: MetricsJson[number]) => {
    let into = byName.get(m.name);
    if (!into) byName.set(m.name, (into = { metric: m, series: new Map() }));
    for (const v of m.values as Value[]) {
      const key = seriesKey(v);
      const had = into.series.get(key);
      into.series.set(key, had ? { ...had, value: had.value + v.value } : { ...v });
    }
  };
  for (const m of retained) add(m);
  for (const m of dead) if (CUMULATIVE.has(String(m.type))) add(m);
  return [...byName.values()].map(({ metric, series }) => ({ ...metric, values: [...series.values()] }));
}
