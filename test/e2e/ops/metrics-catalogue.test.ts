/**
 * The metric catalogue against what running gates really export. Every metric createMetrics()
 * defines (src/metrics/catalogue.ts, with src/limits/metrics.ts and src/policy/metrics.ts)
 * must show up on /metrics after ordinary traffic, with the label names it was declared with,
 * and no label value may carry an IP address, a mail address or a user name: those belong in
 * the logs (DESIGN.md, "prom-client"). This is what keeps the dashboard and the alerts honest.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { MESSAGE_AUTH, MESSAGE_TLS, NOTIFICATION_RESULTS, TOKEN_RESULTS, createMetrics } from '../../../src/metrics/catalogue.js';
import { LIMITER_NAMES } from '../../../src/limits/replies.js';
import { REFUSAL_REASONS } from '../../../src/reply.js';
import { AUTH_SOURCES } from '../../../src/config/auth-section.js';
import { SOURCE_RESULTS } from '../../../src/metrics/auth-metrics.js';
import { AUTH_METHODS } from '../../../src/policy/types.js';
import { ALICE } from '../../helpers/gate.js';
import { baseName, parseExposition, type Sample } from '../../helpers/exposition.js';
import { MALLORY, REPO, driveTraffic, scrape, sendFromTrustedApp, startOpsGates, type OpsGates } from '../../helpers/ops-traffic.js';
import { readBuildInfo } from '../../../src/build-info.js';
import { SIGNING_RESULTS } from '../../../src/dkim/outcome.js';

const PACKAGE_VERSION = (JSON.parse(readFileSync(`${REPO}/package.json`, 'utf8')) as { version: string }).version;

const IPV4 = /(^|[^0-9])\d{1,3}(\.\d{1,3}){3}([^0-9]|$)/;
const IPV6 = /(^|[^0-9a-z])[0-9a-f]{0,4}(:[0-9a-f]{0,4}){2,}/i;

/** Where a label's values must come from: fixed sets, or names from the config. */
function allowedValues(gates: OpsGates, policyRules: readonly string[]): Record<string, (v: string, metric: string) => boolean> {
  const listeners = new Set([...Object.keys(gates.healthy.app.addresses.listeners), ...Object.keys(gates.troubled.app.addresses.listeners)]);
  const oneOf = (...values: readonly string[]) => (v: string) => values.includes(v);
  const bool = oneOf('true', 'false');
  return {
    listener: (v) => listeners.has(v),
    stage: oneOf('connect', 'tls', 'auth', 'mail', 'rcpt', 'data'),
    reason: (v) => (REFUSAL_REASONS as readonly string[]).includes(v),
    code_class: (v) => /^[2-5]xx$/.test(v) || v === 'none',
    mechanism: oneOf('PLAIN', 'LOGIN', 'certificate', 'other'),
    credential: (v) => (AUTH_METHODS as readonly string[]).includes(v),
    auth: oneOf(...MESSAGE_AUTH),
    tls: (v, metric) => metric === 'smtpgate_messages_total' && (MESSAGE_TLS as readonly string[]).includes(v),
    tls_mode: oneOf('starttls', 'implicit', 'none'),
    require_tls: bool,
    require_auth: bool,
    trusted_networks: bool,
    trusted_require_tls: bool,
    client_certs: oneOf('none', 'optional', 'required'),
    result: (v, metric) =>
      ({
        smtpgate_auth_attempts_total: ['success', 'failure', 'error', 'refused'],
        smtpgate_messages_total: ['relayed', 'refused', 'aborted'],
        smtpgate_reloads_total: ['success', 'failure'],
        smtpgate_limiter_decisions_total: ['allowed', 'limited', 'store_error'],
        smtpgate_auth_source_seconds: [...SOURCE_RESULTS] as string[],
        smtpgate_backend_oauth_token_total: [...TOKEN_RESULTS] as string[],
        smtpgate_dkim_signatures_total: [...SIGNING_RESULTS] as string[],
        smtpgate_notifications_total: [...NOTIFICATION_RESULTS] as string[],
      })[metric]?.includes(v) ?? false,
    source: (v) => (AUTH_SOURCES as readonly string[]).includes(v),
    outcome: oneOf('success', 'failure'),
    kind: (v, metric) =>
      ({
        smtpgate_tls_handshakes_total: ['starttls', 'implicit'],
        smtpgate_backend_errors_total: ['connect', 'timeout', 'closed', 'tls', 'protocol'],
        smtpgate_smuggling_rejections_total: ['bare_cr', 'bare_lf', 'nul'],
      })[metric]?.includes(v) ?? false,
    version: (v, metric) => (metric === 'smtpgate_build_info' ? v === PACKAGE_VERSION : /^TLSv1\.[23]$/.test(v)),
    node_version: (v) => v === process.version,
    component: oneOf('certificate', 'users', 'credentials', 'config', 'policy', 'dkim'),
    // "default" or the first name of an SNI entry: host names from the config.
    certificate: (v) => v === 'default' || /^(\*\.)?[a-z0-9.-]+$/i.test(v),
    // host:port of a configured backend (bounded, from the config; see the test below).
    backend: (v) => gates.backendLabels.includes(v),
    limiter: (v) => (LIMITER_NAMES as readonly string[]).includes(v),
    scope: oneOf('ip', 'user_ip'),
    rule: (v) => v === 'default' || policyRules.includes(v),
    action: oneOf('accept', 'continue', 'reject', 'tempfail', 'require_tls', 'require_auth', 'add_header', 'limit'),
    le: (v) => v === '+Inf' || Number.isFinite(Number(v)),
  };
}

describe('metric catalogue vs /metrics of running gates', () => {
  let gates: OpsGates;
  let types: Map<string, string>;
  let samples: Sample[];
  /** Each gate's own samples: both have listeners of the same names. */
  let samplesOf: Record<'healthy' | 'troubled', Sample[]>;
  const catalogue = createMetrics(readBuildInfo());

  beforeAll(async () => {
    gates = await startOpsGates();
    await driveTraffic(gates);
    await sendFromTrustedApp(gates);
    const [a, b] = await Promise.all([scrape(gates.healthy), scrape(gates.troubled)]);
    const pa = parseExposition(a);
    const pb = parseExposition(b);
    types = new Map([...pa.types, ...pb.types]);
    samples = [...pa.samples, ...pb.samples];
    samplesOf = { healthy: pa.samples, troubled: pb.samples };
  }, 60_000);

  afterAll(async () => {
    await gates?.close();
  });

  test('every metric of the catalogue is exported, with at least one series after traffic', async () => {
    const defined = await catalogue.registry.getMetricsAsJSON();
    expect(defined.length).toBeGreaterThan(20);
    const withSamples = new Set(samples.map((s) => baseName(s.name, types)));
    const problems: string[] = [];
    for (const m of defined) {
      if (types.get(m.name) !== String(m.type)) problems.push(`${m.name}: declared ${m.type}, /metrics says ${types.get(m.name) ?? 'nothing'}`);
      // Node.js's own metrics (prom-client's defaults) depend on the moment (active requests).
      else if (!withSamples.has(m.name) && !isNodeDefault(m.name)) problems.push(`${m.name}: exported without a single series after the traffic`);
    }
    expect(problems).toEqual([]);
  });

  test('/metrics exports nothing the catalogue does not define', async () => {
    const defined = new Set((await catalogue.registry.getMetricsAsJSON()).map((m) => m.name));
    expect([...types.keys()].filter((n) => !defined.has(n))).toEqual([]);
  });

  test('every series carries exactly the label names its metric was declared with', () => {
    const problems = new Set<string>();
    for (const s of samples) {
      const name = baseName(s.name, types);
      const metric = catalogue.registry.getSingleMetric(name) as unknown as { labelNames?: readonly string[] } | undefined;
      const declared = [...(metric?.labelNames ?? [])];
      if (s.name.endsWith('_bucket') && types.get(name) === 'histogram') declared.push('le');
      if (types.get(name) === 'summary' && 'quantile' in s.labels) declared.push('quantile');
      const got = Object.keys(s.labels).sort();
      if (got.join(',') !== declared.sort().join(',')) problems.add(`${s.name}: labels [${got}] but declared [${declared}]`);
    }
    expect([...problems]).toEqual([]);
  });

  test('label values come from small fixed sets or the config', async () => {
    const policyRules = gates.healthy.app.policy.rules.map((r) => r.name);
    const allowed = allowedValues(gates, policyRules);
    const problems = new Set<string>();
    for (const s of samples) {
      const name = baseName(s.name, types);
      // Node.js's own metrics (prom-client's defaults) have their own labels: space, version...
      if (isNodeDefault(name)) continue;
      for (const [k, v] of Object.entries(s.labels)) {
        const check = allowed[k];
        if (!check) problems.add(`${name}: label ${k} has no known value set (value ${JSON.stringify(v)})`);
        else if (!check(v, name)) problems.add(`${name}{${k}=${JSON.stringify(v)}}: not an allowed value`);
      }
    }
    expect([...problems]).toEqual([]);
  });

  test('no label value is an IP address, a mail address, a user name or an EHLO name', () => {
    const people = [ALICE.name, MALLORY.name, 'client.test', 'corp.example'];
    const problems = new Set<string>();
    for (const s of samples) {
      for (const [k, v] of Object.entries(s.labels)) {
        // The backend label is the configured backend's host:port (asserted just below).
        if (k === 'backend') continue;
        const where = `${s.name}{${k}=${JSON.stringify(v)}}`;
        if (v.includes('@')) problems.add(`${where}: looks like a mail address`);
        if (IPV4.test(v) || IPV6.test(v)) problems.add(`${where}: looks like an IP address`);
        if (people.some((p) => v.toLowerCase().includes(p))) problems.add(`${where}: carries a user, domain or EHLO name`);
      }
    }
    expect([...problems]).toEqual([]);
  });

  test('the backend label only ever names a configured backend (host:port from backend.address), never a client', () => {
    const values = new Set(samples.flatMap((s) => (s.labels.backend === undefined ? [] : [s.labels.backend])));
    expect(values.size).toBeGreaterThan(0);
    for (const v of values) expect(gates.backendLabels).toContain(v);
    // The dead first backend of the list was tried and failed.
    expect(samples.some((s) => s.name === 'smtpgate_backend_errors_total' && s.labels.backend === gates.deadBackend && s.labels.kind === 'connect')).toBe(true);
  });

  test('names follow the conventions: smtpgate_ prefix, counters and only counters end in _total, base units', async () => {
    const problems: string[] = [];
    for (const m of await catalogue.registry.getMetricsAsJSON()) {
      if (!m.name.startsWith('smtpgate_') && !isNodeDefault(m.name)) problems.push(`${m.name}: no smtpgate_ prefix`);
      if (String(m.type) === 'counter' && !m.name.endsWith('_total')) problems.push(`${m.name}: a counter not ending in _total`);
      if (String(m.type) !== 'counter' && m.name.endsWith('_total')) problems.push(`${m.name}: a ${m.type} ending in _total`);
      if (/_(milliseconds|ms|kilobytes|kb|mb|minutes)(_|$)/.test(m.name)) problems.push(`${m.name}: not in base units`);
    }
    expect(problems).toEqual([]);
  });

  // Generic Node.js and process dashboards query these names; a prefix would hide them.
  test('the standard process and Node.js metrics keep their unprefixed names', () => {
    for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'process_open_fds', 'process_start_time_seconds', 'nodejs_heap_size_used_bytes', 'nodejs_eventloop_lag_p99_seconds', 'nodejs_gc_duration_seconds']) {
      expect(types.has(name), name).toBe(true);
    }
    expect([...types.keys()].filter((n) => n.startsWith('smtpgate_process_') || n.startsWith('smtpgate_nodejs_'))).toEqual([]);
  });

  test('smtpgate_build_info is 1 and names the package version and the Node.js version', () => {
    const info = samples.filter((s) => s.name === 'smtpgate_build_info');
    expect(info.length).toBeGreaterThan(0);
    for (const s of info) expect(s).toEqual({ name: 'smtpgate_build_info', labels: { version: PACKAGE_VERSION, node_version: process.version }, value: '1' });
  });

  test('smtpgate_listener_info is 1 per listener and says what each enforces', () => {
    const info = (gate: 'healthy' | 'troubled') => samplesOf[gate].filter((s) => s.name === 'smtpgate_listener_info').map((s) => ({ ...s.labels, value: s.value }));
    const row = (listener: string, tls_mode: string, require_tls: string, trusted_networks: string, trusted_require_tls: string) => ({
      listener,
      tls_mode,
      require_tls,
      require_auth: 'true',
      trusted_networks,
      trusted_require_tls,
      client_certs: 'none',
      value: '1',
    });
    const usual = [row('submission', 'starttls', 'true', 'false', 'true'), row('smtps', 'implicit', 'true', 'false', 'true'), row('plain', 'none', 'false', 'false', 'false')];
    // Clients in its trusted network may send in cleartext and without AUTH; others may not.
    expect(info('healthy')).toEqual(expect.arrayContaining([...usual, row('apps', 'starttls', 'true', 'true', 'false')]));
    expect(info('healthy')).toHaveLength(4);
    expect(info('troubled')).toEqual(expect.arrayContaining(usual));
    expect(info('troubled')).toHaveLength(3);
  });

  test('messages are counted by how their session was let send: signed in or trusted, under TLS or not', () => {
    const counted = (gate: 'healthy' | 'troubled') =>
      samplesOf[gate].filter((s) => s.name === 'smtpgate_messages_total' && s.value !== '0').map((s) => `${s.labels.listener} ${s.labels.result} auth=${s.labels.auth} tls=${s.labels.tls}: ${s.value}`);
    expect(counted('healthy').sort()).toEqual(
      [
        'smtps relayed auth=user tls=yes: 2',
        // The bare LF, refused by the smuggling guard.
        'smtps refused auth=user tls=yes: 1',
        'submission relayed auth=user tls=yes: 1',
        // The trusted app, without AUTH or TLS.
        'apps relayed auth=trusted tls=no: 1',
      ].sort(),
    );
    expect(counted('troubled')).toEqual(['smtps relayed auth=user tls=yes: 1']);
  });

  test('each reload component reports its last reload as successful, with when', () => {
    const now = Date.now() / 1000;
    for (const component of ['certificate', 'users', 'credentials', 'config', 'policy', 'dkim']) {
      const ok = samples.filter((s) => s.name === 'smtpgate_config_last_reload_successful' && s.labels.component === component);
      const at = samples.filter((s) => s.name === 'smtpgate_config_last_reload_success_timestamp_seconds' && s.labels.component === component);
      expect(ok.map((s) => s.value), component).toEqual(['1', '1']);
      expect(at).toHaveLength(2);
      for (const s of at) expect(Number(s.value)).toBeGreaterThan(now - 600);
    }
  });

  // prom-client's defaults already start with process_ or nodejs_: a prefix of
  // 'smtpgate_process_' would give smtpgate_process_process_cpu_seconds_total, the repeated
  // subsystem STYLE.md warns about (maddy's smtp_smtp_).
  test('no metric name repeats a segment (smtpgate_process_process_...)', async () => {
    const repeated = (await catalogue.registry.getMetricsAsJSON()).map((m) => m.name).filter((n) => /(^|_)([a-z]+)_\2(_|$)/.test(n));
    expect(repeated).toEqual([]);
  });
});

/** Node.js's own metrics (prom-client's defaults, under their standard names). */
function isNodeDefault(name: string): boolean {
  return name.startsWith('process_') || name.startsWith('nodejs_');
}
