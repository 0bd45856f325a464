/**
 * The counts a dead cluster worker leaves behind: counters and histograms are kept and added
 * series by series, gauges are dropped.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { describe, expect, test } from 'vitest';
import { addCumulative, type MetricsJson } from '../../src/cluster/retained-counts.js';

/** A worker's report: one registry with a counter, a histogram and a gauge. */
async function workerReport(events: { relayed: number; refused: number; sizes: number[]; open: number }): Promise<MetricsJson> {
  const registry = new Registry();
  const registers = [registry];
  const messages = new Counter({ name: 'm_total', help: 'h', labelNames: ['listener', 'result'] as const, registers });
  const sizes = new Histogram({ name: 'size_bytes', help: 'h', buckets: [10, 100], registers });
  const open = new Gauge({ name: 'open', help: 'h', registers });
  messages.inc({ listener: 'a', result: 'relayed' }, events.relayed);
  if (events.refused) messages.inc({ result: 'refused', listener: 'a' }, events.refused);
  for (const s of events.sizes) sizes.observe(s);
  open.set(events.open);
  return registry.getMetricsAsJSON();
}

const value = (m: MetricsJson, name: string, labels: Record<string, string | number>, metricName?: string) =>
  m.find((x) => x.name === name)?.values.find((v) => (metricName === undefined || (v as { metricName?: string }).metricName === metricName) && JSON.stringify(Object.entries(v.labels).sort()) === JSON.stringify(Object.entries(labels).sort()))?.value;

describe('addCumulative', () => {
  test('keeps a dead worker\'s counters and histograms, series by series, and drops its gauges', async () => {
    const retained = addCumulative([], await workerReport({ relayed: 3, refused: 0, sizes: [5, 50], open: 2 }));
    expect(value(retained, 'm_total', { listener: 'a', result: 'relayed' })).toBe(3);
    expect(value(retained, 'size_bytes', { le: 10 }, 'size_bytes_bucket')).toBe(1);
    expect(value(retained, 'size_bytes', { le: '+Inf' }, 'size_bytes_bucket')).toBe(2);
    expect(value(retained, 'size_bytes', {}, 'size_bytes_count')).toBe(2);
    expect(value(retained, 'size_bytes', {}, 'size_bytes_sum')).toBe(55);
    expect(retained.find((m) => m.name === 'open')).toBeUndefined();
  });

  test('adds a second dead worker to the first, whatever the order of the label names, and keeps series only one of them had', async () => {
    const first = await workerReport({ relayed: 3, refused: 0, sizes: [5], open: 1 });
    const second = await workerReport({ relayed: 4, refused: 2, sizes: [500], open: 1 });
    const retained = addCumulative(addCumulative([], first), second);
    expect(value(retained, 'm_total', { listener: 'a', result: 'relayed' })).toBe(7);
    expect(value(retained, 'm_total', { listener: 'a', result: 'refused' })).toBe(2);
    expect(value(retained, 'size_bytes', { le: 10 }, 'size_bytes_bucket')).toBe(1);
    expect(value(retained, 'size_bytes', { le: '+Inf' }, 'size_bytes_bucket')).toBe(2);
    expect(value(retained, 'size_bytes', {}, 'size_bytes_sum')).toBe(505);
    expect(retained.find((m) => m.name === 'm_total')!.values).toHaveLength(2);
  });

  test('changes neither argument', async () => {
    const report = await workerReport({ relayed: 1, refused: 1, sizes: [1], open: 1 });
    const base = addCumulative([], report);
    const before = [JSON.stringify(base), JSON.stringify(report)];
    addCumulative(base, report);
    expect([JSON.stringify(base), JSON.stringify(report)]).toEqual(before);
  });
});
