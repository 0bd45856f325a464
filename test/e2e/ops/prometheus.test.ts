/**
 * The Grafana dashboard and the alert rules against a real Prometheus scraping real gates.
 *
 * Two gates carry traffic (test/helpers/ops-traffic.ts) so every metric has series; a
 * Prometheus from Debian's package scrapes both every second and loads deploy/prometheus/
 * alerts.yml. Then every PromQL expression of deploy/grafana/smtpgate.json and every alert
 * expression is sent to its HTTP API: each must be valid PromQL, each dashboard expression
 * must return data, and every metric name either uses must be one smtpgate exports, so a
 * dashboard or alert naming a metric smtpgate doesn't have fails here. The alerts that the
 * troubled gate should raise (store down, certificate expiring, backend down) and the reload
 * failure alert must become active; the healthy gate must raise none of them. The exposition
 * itself must pass `promtool check metrics`.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { parseExposition } from '../../helpers/exposition.js';
import { REPO, driveTraffic, failUsersReload, scrape, sendFromTrustedApp, startOpsGates, type OpsGates } from '../../helpers/ops-traffic.js';
import { describeWith } from '../../helpers/programs.js';
import { promtoolCheckMetrics, startPrometheus, type Prometheus } from '../../helpers/prometheus.js';
import { dashboardExpressions, metricNames, substituteVariables } from '../../helpers/promql.js';
import { eventually } from '../../helpers/sessions.js';

const ALERTS_FILE = path.join(REPO, 'deploy/prometheus/alerts.yml');
const DASHBOARD = JSON.parse(readFileSync(path.join(REPO, 'deploy/grafana/smtpgate.json'), 'utf8')) as unknown;
const RULES = (parseYaml(readFileSync(ALERTS_FILE, 'utf8')) as { groups: { rules: { alert: string; expr: string }[] }[] }).groups.flatMap((g) => g.rules);
/** Series Prometheus makes itself, not smtpgate. */
const PROMETHEUS_SERIES = new Set(['up', 'scrape_duration_seconds', 'scrape_samples_scraped']);

describeWith(['prometheus', 'promtool'], 'the dashboard and the alerts, queried in a real Prometheus', () => {
  let gates: OpsGates;
  let prom: Prometheus;
  /** Metric names (TYPE lines) the gates export. */
  let exported: Set<string>;
  /** When Prometheus had scraped the trusted app's message (Unix seconds): rate() over 1m sees it then. */
  let trustedAppSeenAt: number;
  const JOB = 'smtpgate';
  const instance = (port: number) => `127.0.0.1:${port}`;

  beforeAll(async () => {
    gates = await startOpsGates();
    await driveTraffic(gates);
    prom = await startPrometheus({ job: JOB, targets: [instance(gates.healthy.metricsPort), instance(gates.troubled.metricsPort)], ruleFiles: [ALERTS_FILE] });
    // Both targets up, each scraped a few times, so rate() over 1m has samples to work with.
    await eventually(async () => {
      const r = await prom.query(`count_over_time(up{job="${JOB}"}[1m]) >= 3 and up{job="${JOB}"} == 1`);
      return r.status === 'success' && r.data.result.length === 2;
    }, 'both gates scraped by Prometheus three times', 30_000);
    // A reload failure and the trusted app's cleartext message only now, after Prometheus has
    // seen the gate without them: increase() sees them.
    await failUsersReload(gates);
    await sendFromTrustedApp(gates);
    await eventually(async () => {
      const r = await prom.query('smtpgate_config_last_reload_successful{component="users"} == 0');
      return r.status === 'success' && r.data.result.length > 0;
    }, 'the reload failure scraped', 15_000);
    await eventually(async () => {
      const r = await prom.query('smtpgate_messages_total{listener="apps", result="relayed", auth="trusted", tls="no"} == 1');
      return r.status === 'success' && r.data.result.length > 0;
    }, "the trusted app's message scraped", 15_000);
    trustedAppSeenAt = Date.now() / 1000;
    const texts = await Promise.all([scrape(gates.healthy), scrape(gates.troubled)]);
    exported = new Set(texts.flatMap((t) => [...parseExposition(t).types.keys()]));
  }, 90_000);

  afterAll(async () => {
    await prom?.stop();
    await gates?.close();
  });

  test('the /metrics of both gates passes promtool check metrics', async () => {
    for (const gate of [gates.healthy, gates.troubled]) expect(await promtoolCheckMetrics(await scrape(gate))).toEqual({ code: 0, output: '' });
  });

  /** A metric name an expression uses is exported, as itself or as a histogram's series. */
  const isExported = (name: string) => exported.has(name) || exported.has(name.replace(/_(bucket|sum|count)$/, ''));

  test('the dashboard has expressions to check, and only known Grafana variables', () => {
    const exprs = dashboardExpressions(DASHBOARD);
    expect(exprs.length).toBeGreaterThan(30);
    for (const { panel, expr } of exprs) expect(substituteVariables(expr), panel).not.toContain('$');
  });

  test('every dashboard expression is valid PromQL and returns data', async () => {
    const problems: string[] = [];
    for (const { panel, refId, expr } of dashboardExpressions(DASHBOARD)) {
      const q = substituteVariables(expr);
      const r = await prom.query(q);
      if (r.status !== 'success') problems.push(`"${panel}" ${refId}: ${r.errorType}: ${r.error}\n    ${q}`);
      else if (r.data.result.length === 0) problems.push(`"${panel}" ${refId}: no data\n    ${q}`);
    }
    expect(problems, `Prometheus log:\n${prom.log().slice(-2000)}`).toEqual([]);
  });

  test('every metric the dashboard names is one smtpgate exports', () => {
    const missing = new Set<string>();
    for (const { panel, expr } of dashboardExpressions(DASHBOARD)) {
      for (const name of metricNames(substituteVariables(expr))) if (!isExported(name)) missing.add(`${name} (panel "${panel}")`);
    }
    expect([...missing]).toEqual([]);
  });

  test("the instance variable's query finds both gates", async () => {
    const variable = (DASHBOARD as { templating: { list: { name: string; definition?: string }[] } }).templating.list.find((v) => v.name === 'instance');
    const metric = /^label_values\((\w+), instance\)$/.exec(variable?.definition ?? '')?.[1];
    expect(metric && isExported(metric)).toBe(true);
    const r = await prom.api<string[]>(`label/instance/values?match[]=${metric}`);
    expect(r.data.sort()).toEqual([instance(gates.healthy.metricsPort), instance(gates.troubled.metricsPort)].sort());
  });

  // Counters are created at zero for their known label sets (initSeries), so rate() and
  // increase() see the first event.
  test('a first reload failure shows in the dashboard\'s "Reload failures" stat', async () => {
    const stat = dashboardExpressions(DASHBOARD).find((e) => e.panel === 'Reload failures');
    expect(stat).toBeDefined();
    const r = await prom.query(substituteVariables(stat!.expr));
    expect(Number(r.data.result[0]?.value[1] ?? 0)).toBeGreaterThanOrEqual(1);
  });

  test('"Mail without AUTH" and "Mail without TLS" show the trusted app\'s message on its listener, and nothing else', async () => {
    for (const title of ['Mail without AUTH', 'Mail without TLS']) {
      const panel = dashboardExpressions(DASHBOARD).find((e) => e.panel === title);
      expect(panel, title).toBeDefined();
      const r = await prom.query(substituteVariables(panel!.expr), trustedAppSeenAt);
      const sending = r.data.result.filter((s) => Number(s.value[1]) > 0).map((s) => s.metric);
      expect(sending, title).toEqual([{ listener: 'apps', auth: 'trusted' }]);
    }
  });

  test('"Listener enforcement" lists what each listener of each gate requires', async () => {
    const panel = dashboardExpressions(DASHBOARD).find((e) => e.panel === 'Listener enforcement');
    expect(panel).toBeDefined();
    const r = await prom.query(substituteVariables(panel!.expr));
    const apps = r.data.result.filter((s) => s.metric.listener === 'apps');
    expect(apps.map((s) => s.metric)).toEqual([
      { instance: instance(gates.healthy.metricsPort), listener: 'apps', tls_mode: 'starttls', require_tls: 'true', require_auth: 'true', trusted_networks: 'true', trusted_require_tls: 'false', client_certs: 'none' },
    ]);
    expect(r.data.result).toHaveLength(4 + 3);
  });

  // The alert's other side (it fires on mail a listener refuses) is in enforcement-alert.promtool.yml.
  test('SmtpgateEnforcementBypassed: the trusted app\'s cleartext mail is in its input, and the listener\'s trusted.requireTls: false keeps it quiet', async () => {
    const rule = RULES.find((r) => r.alert === 'SmtpgateEnforcementBypassed');
    expect(rule).toBeDefined();
    const seen = await prom.query('sum by (instance, listener) (increase(smtpgate_messages_total{result="relayed", auth!="user", tls="no"}[10m])) > 0', trustedAppSeenAt);
    expect(seen.data.result.map((s) => s.metric)).toEqual([{ instance: instance(gates.healthy.metricsPort), listener: 'apps' }]);
    const fired = await prom.query(rule!.expr, trustedAppSeenAt);
    expect(fired.status).toBe('success');
    expect(fired.data.result).toEqual([]);
  });

  test('every alert expression is valid PromQL over metrics smtpgate exports', async () => {
    expect(RULES.length).toBeGreaterThan(5);
    const problems: string[] = [];
    for (const rule of RULES) {
      const r = await prom.query(rule.expr);
      if (r.status !== 'success') problems.push(`${rule.alert}: ${r.errorType}: ${r.error}`);
      for (const name of metricNames(rule.expr)) if (!PROMETHEUS_SERIES.has(name) && !isExported(name)) problems.push(`${rule.alert}: ${name} is not exported by smtpgate`);
    }
    expect(problems).toEqual([]);
  });

  test('Prometheus loaded every alert rule and evaluates each without error', async () => {
    type Rules = { groups: { rules: { name: string; health: string; lastError?: string; lastEvaluation: string }[] }[] };
    let rules: Rules['groups'][number]['rules'] = [];
    await eventually(async () => {
      rules = (await prom.api<Rules>('rules')).data.groups.flatMap((g) => g.rules);
      return rules.length === RULES.length && rules.every((r) => !r.lastEvaluation.startsWith('0001-'));
    }, 'every rule evaluated once', 10_000);
    expect(rules.map((r) => r.name).sort()).toEqual(RULES.map((r) => r.alert).sort());
    expect(rules.filter((r) => r.health !== 'ok').map((r) => `${r.name}: ${r.health} ${r.lastError ?? ''}`)).toEqual([]);
  });

  test('the troubled gate raises its alerts, the healthy gate none of them', async () => {
    type Alerts = { alerts: { labels: Record<string, string>; state: string }[] };
    const healthy = instance(gates.healthy.metricsPort);
    const troubled = instance(gates.troubled.metricsPort);
    const want: Record<string, string>[] = [
      { alertname: 'SmtpgateLimiterStoreDown', instance: troubled },
      { alertname: 'SmtpgateCertificateExpiringSoon', instance: troubled, certificate: 'default' },
      { alertname: 'SmtpgateBackendDown', instance: troubled, backend: gates.deadBackend },
      { alertname: 'SmtpgateReloadFailed', instance: healthy, component: 'users' },
    ];
    let active: Alerts['alerts'] = [];
    const has = (w: Record<string, string>) => active.some((a) => Object.entries(w).every(([k, v]) => a.labels[k] === v));
    await eventually(async () => {
      active = (await prom.api<Alerts>('alerts')).data.alerts;
      return want.every(has);
    }, `alerts pending or firing: ${want.map((w) => w.alertname).join(', ')}`, 20_000).catch((err: Error) => {
      throw new Error(`${err.message}; active: ${JSON.stringify(active.map((a) => a.labels))}`);
    });
    // The certificate has 5 days left: the 14-day warning, not the 3-day one.
    expect(has({ alertname: 'SmtpgateCertificateExpiryCritical' })).toBe(false);
    // One backend of the troubled gate answers: not "no backend".
    expect(has({ alertname: 'SmtpgateNoBackend' })).toBe(false);
    for (const alertname of ['SmtpgateLimiterStoreDown', 'SmtpgateCertificateExpiringSoon', 'SmtpgateBackendDown', 'SmtpgateDown']) {
      expect(has({ alertname, instance: healthy }), `${alertname} on the healthy gate`).toBe(false);
    }
    // The trusted app's cleartext mail is what its listener allows it.
    expect(has({ alertname: 'SmtpgateEnforcementBypassed' })).toBe(false);
  });
});
