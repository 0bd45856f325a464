/**
 * Just enough PromQL reading for the operations tests: the metric names an expression selects,
 * and Grafana's variables replaced by values Prometheus accepts.
 */

const KEYWORDS = new Set(['and', 'or', 'unless', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'offset', 'bool', 'inf', 'nan', 'atan2']);

/** Metric names selected by a PromQL expression (not functions, keywords or label names). */
export function metricNames(expr: string): string[] {
  let e = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  e = e.replace(/\{[^}]*\}/g, ' ');
  e = e.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  e = e.replace(/\[[^\]]*\]/g, ' ');
  const names = new Set<string>();
  for (const m of e.matchAll(/(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const rest = e.slice(m.index + m[0].length).trimStart();
    if (rest.startsWith('(')) continue; // a function or an aggregation
    if (KEYWORDS.has(m[0].toLowerCase())) continue;
    names.add(m[0]);
  }
  return [...names];
}

/** Grafana's built-in and dashboard variables, with values that make sense at a 1 s scrape. */
export const GRAFANA_VARIABLES: Readonly<Record<string, string>> = {
  $__rate_interval: '1m',
  $__interval: '15s',
  $__range: '5m',
  '${datasource}': '',
  $datasource: '',
  '${instance}': '.*',
  $instance: '.*',
};

export function substituteVariables(expr: string): string {
  let out = expr;
  // Longest names first, so $__rate_interval isn't taken for $__range or similar.
  for (const name of Object.keys(GRAFANA_VARIABLES).sort((a, b) => b.length - a.length)) out = out.split(name).join(GRAFANA_VARIABLES[name]!);
  return out;
}

/** Every target.expr in a Grafana dashboard (panels, rows and nested panels), with its panel title. */
export function dashboardExpressions(dashboard: unknown): { panel: string; refId: string; expr: string }[] {
  const out: { panel: string; refId: string; expr: string }[] = [];
  const walk = (panels: unknown): void => {
    if (!Array.isArray(panels)) return;
    for (const p of panels as { title?: string; targets?: { expr?: string; refId?: string }[]; panels?: unknown }[]) {
      for (const t of p.targets ?? []) if (typeof t.expr === 'string') out.push({ panel: p.title ?? '?', refId: t.refId ?? '?', expr: t.expr });
      walk(p.panels);
    }
  };
  walk((dashboard as { panels?: unknown }).panels);
  return out;
}
