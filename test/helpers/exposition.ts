/** The Prometheus text format, read back: TYPE lines and samples. */

export interface Sample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: string;
}

export function parseExposition(text: string): { types: Map<string, string>; samples: Sample[] } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1]!, type[2]!);
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparsable /metrics line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: m[3]! });
  }
  return { types, samples };
}

/** The metric a sample belongs to: histogram samples carry _bucket, _sum and _count. */
export function baseName(sample: string, types: ReadonlyMap<string, string>): string {
  if (types.has(sample)) return sample;
  const m = /^(.*)_(bucket|sum|count)$/.exec(sample);
  return m && (types.get(m[1]!) === 'histogram' || types.get(m[1]!) === 'summary') ? m[1]! : sample;
}
