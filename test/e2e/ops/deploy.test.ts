/**
 * The deployment files in deploy/ read as specifications: every file parses, and the pieces
 * agree with each other and with the config they ship (deploy/smtpgate.yaml): listener and
 * metrics ports, the /etc/smtpgate paths, the probe paths, the drain time against the grace
 * periods, the config path in the image's CMD against the mounts. The files Docker, Compose,
 * Kubernetes and systemd would read can't all be run here (no Docker engine, no cluster);
 * what can be run is: promtool, systemd-analyze, and smtpgate's own config loading on the
 * files exactly as they would be mounted.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { cp, mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { checkConfigFile, readAdminToken } from '../../../src/app.js';
import { parseUserAttributes } from '../../../src/auth/user-attributes.js';
import { parseUsersFile } from '../../../src/auth/users-file.js';
import { parseConfig } from '../../../src/config/load.js';
import type { Config } from '../../../src/config/schema.js';
import { parseDuration } from '../../../src/parsing/units.js';
import { loadPolicySet } from '../../../src/policy/load.js';
import { REPO } from '../../helpers/ops-traffic.js';
import { makeTestCert } from '../../helpers/pki.js';
import { describeWith, findProgram } from '../../helpers/programs.js';
import { parseNoticeTemplate } from '../../../src/notifications/template.js';
import { SEMI_SPACE_FLAG } from '../../../src/cluster/process-options.js';

const DEPLOY = path.join(REPO, 'deploy');
const ETC = '/etc/smtpgate';
const CONFIG_PATH = `${ETC}/smtpgate.yaml`;
const read = (rel: string) => readFileSync(path.join(DEPLOY, rel), 'utf8');
const CONFIG_TEXT = read('smtpgate.yaml');
const CONFIG: Config = parseConfig(CONFIG_TEXT, CONFIG_PATH);
const LISTENER_PORTS = CONFIG.listeners.map((l) => l.address.port).sort((a, b) => a - b);
const METRICS_PORT = CONFIG.metrics.address.port;
const DRAIN_SECONDS = CONFIG.shutdown.drainSeconds;
/**
 * After the drain deadline's 421, smtp-server gives a client that doesn't close its side up to
 * 5 s (HALF_CLOSE_TIMEOUT) before it destroys the socket: a drain takes up to drainSeconds + 5
 * (pinned in ops/drain.test.ts).
 */
const DRAIN_BOUND_SECONDS = DRAIN_SECONDS + 5;

// Manifests are checked field by field below; their shapes are too many to type here.
type Doc = Record<string, any>;

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

/** Dockerfile instructions, continuation lines joined, comments dropped. */
function dockerfile(): { instruction: string; args: string }[] {
  const text = read('Dockerfile').replace(/\\\n/g, ' ');
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const [instruction, ...rest] = l.split(/\s+/);
      return { instruction: instruction!.toUpperCase(), args: rest.join(' ') };
    });
}

/** A systemd unit: key → every value given (keys may repeat). */
function unitFile(text: string): Map<string, string[]> {
  const keys = new Map<string, string[]>();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const s = /^\[(\w+)\]$/.exec(line);
    if (s) {
      section = s[1]!;
      continue;
    }
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (!kv) throw new Error(`not a systemd unit line: ${line}`);
    const key = `${section}.${kv[1]}`;
    keys.set(key, [...(keys.get(key) ?? []), kv[2]!]);
  }
  return keys;
}

const DOCKER = dockerfile();
const dockerUid = Number(/^(\d+)/.exec(DOCKER.filter((d) => d.instruction === 'USER').at(-1)?.args ?? '')?.[1]);
const dockerCmd = JSON.parse(DOCKER.filter((d) => d.instruction === 'CMD').at(-1)?.args ?? '[]') as string[];
const cmdConfig = dockerCmd[dockerCmd.indexOf('--config') + 1];

const COMPOSE = parseYaml(read('docker-compose.yml')) as Doc;
const K8S: Doc[] = readdirSync(path.join(DEPLOY, 'k8s'))
  .filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml')
  .flatMap((f) => parseAllDocuments(read(`k8s/${f}`)).map((d) => ({ ...(d.toJS() as Doc), __file: f })));
const k8s = (kind: string, name: string): Doc => {
  const found = K8S.find((d) => d.kind === kind && d.metadata?.name === name);
  if (!found) throw new Error(`no ${kind} ${name} in deploy/k8s`);
  return found;
};

/** Compose short volume syntax: "source:target[:mode]". */
function composeMounts(service: string): { source: string; target: string; readOnly: boolean }[] {
  return ((COMPOSE.services[service].volumes ?? []) as string[]).map((v) => {
    const [source, target, mode] = v.split(':');
    return { source: source!, target: target!, readOnly: mode === 'ro' };
  });
}

/** The host file (or named volume) a path inside the compose smtpgate container comes from. */
function composeSourceOf(file: string): { source: string; target: string } | undefined {
  const m = composeMounts('smtpgate').filter((v) => file === v.target || file.startsWith(v.target + '/'));
  return m.sort((a, b) => b.target.length - a.target.length)[0];
}

describe('every file in deploy/ parses', () => {
  const files = filesUnder(DEPLOY).map((f) => path.relative(DEPLOY, f));

  test.each(files)('%s', (rel) => {
    const text = read(rel);
    const base = path.basename(rel);
    if (/\.ya?ml$/.test(rel)) {
      const docs = parseAllDocuments(text);
      for (const d of docs) expect(d.errors.map((e) => e.message), rel).toEqual([]);
      expect(docs.length).toBeGreaterThan(0);
    } else if (rel.endsWith('.json')) {
      expect(() => JSON.parse(text)).not.toThrow();
    } else if (base === 'Dockerfile') {
      const known = ['FROM', 'WORKDIR', 'COPY', 'RUN', 'ENV', 'USER', 'EXPOSE', 'HEALTHCHECK', 'STOPSIGNAL', 'CMD', 'ENTRYPOINT', 'LABEL', 'ARG'];
      for (const d of DOCKER) expect(known, d.instruction).toContain(d.instruction);
    } else if (base.endsWith('.dockerignore')) {
      expect(text.split('\n').every((l) => !l.trim().startsWith('/'))).toBe(true);
    } else if (rel.endsWith('.service')) {
      expect(unitFile(text).size).toBeGreaterThan(5);
    } else if (rel.startsWith('fail2ban/') && rel.endsWith('.conf')) {
      // fail2ban's INI: sections, `key = value`, indented continuations, # and ; comments
      // (fail2ban-regex and fail2ban-client read them for real in fail2ban.test.ts).
      const lines = text.split('\n').filter((l) => l.trim() && !/^[#;]/.test(l.trim()));
      for (const l of lines) expect(l, rel).toMatch(/^\[[\w-]+\]$|^[\w-]+\s*=|^\s+\S/);
      expect(lines.some((l) => /^\[[\w-]+\]$/.test(l)), rel).toBe(true);
    } else if (rel.startsWith('notifications/') && rel.endsWith('.txt')) {
      expect(parseNoticeTemplate(text, rel).subject).not.toBe('');
    } else if (base === 'users') {
      const parsed = parseUsersFile(text, rel);
      expect(parsed.ok, JSON.stringify(parsed)).toBe(true);
    } else {
      throw new Error(`${rel}: no parser check for this kind of file; add one to this test`);
    }
  });
});

describe('deploy/smtpgate.yaml', () => {
  test('passes the config schema (parseConfig), with every file under /etc/smtpgate', () => {
    const paths = [CONFIG.tls?.cert, CONFIG.tls?.key, CONFIG.auth?.users, CONFIG.auth?.attributes, CONFIG.policies];
    for (const p of paths) expect(p?.startsWith(`${ETC}/`), String(p)).toBe(true);
    expect(LISTENER_PORTS).toEqual([25, 465, 587]);
    expect(CONFIG.limits.store.kind).toBe('redis');
    expect(CONFIG.log.format).toBe('auto'); // journal under systemd, json in a container; the images have no pino-pretty
  });

  test('binds the metrics endpoint to 0.0.0.0 (containers), and says why', () => {
    expect(CONFIG.metrics.address.host).toBe('0.0.0.0');
    expect(CONFIG_TEXT).toMatch(/0\.0\.0\.0 because this config runs in containers/);
  });

  test('so the admin routes need a token, kept under /etc/smtpgate', () => {
    expect(CONFIG.metrics.adminTokenFile).toBe(`${ETC}/admin/token`);
  });

  // smtpgate check, on the files as docker-compose.yml and deploy/k8s mount them.
  // The admin token is never shipped: tls-init (compose) or kubectl (k8s) makes a random one.
  const TOKEN = { 'admin/token': `${randomBytes(32).toString('hex')}\n` };
  const MOUNTED: Record<string, () => Promise<Record<string, string>>> = {
    'docker-compose.yml': async () => ({ users: read('compose/users'), 'users.yaml': read('compose/users.yaml'), ...TOKEN }),
    'deploy/k8s (secret-users.yaml)': async () => ({ ...(k8s('Secret', 'smtpgate-users').stringData as Record<string, string>), ...TOKEN }),
  };
  test.each(Object.keys(MOUNTED))('loads with everything it names, as %s provides it (like smtpgate check)', async (source) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-deploy-'));
    const cert = await makeTestCert('mail.corp.example');
    await mkdir(path.join(dir, 'tls'));
    await cp(cert.certFile, path.join(dir, 'tls', 'fullchain.pem'));
    await cp(cert.keyFile, path.join(dir, 'tls', 'privkey.pem'));
    await mkdir(path.join(dir, 'admin'));
    for (const [name, text] of Object.entries(await MOUNTED[source]!())) await writeFile(path.join(dir, name), text);
    await cp(path.join(REPO, 'policies'), path.join(dir, 'policies'), { recursive: true });
    const file = path.join(dir, 'smtpgate.yaml');
    await writeFile(file, CONFIG_TEXT.split(ETC).join(dir));
    const { material } = await checkConfigFile(file, 'check');
    expect(material.certs?.length).toBe(1);
    expect(material.policy.ruleCount).toBeGreaterThan(0);
  });
});

describe('deploy/Dockerfile', () => {
  test('two stages from node:24-bookworm-slim: npm ci + build, then npm ci --omit=dev and dist/', () => {
    const from = DOCKER.filter((d) => d.instruction === 'FROM').map((d) => d.args);
    expect(from).toEqual(['node:24-bookworm-slim AS build', 'node:24-bookworm-slim AS runtime']);
    const runs = DOCKER.filter((d) => d.instruction === 'RUN').map((d) => d.args);
    expect(runs.some((r) => /^npm ci( |$)/.test(r) && !r.includes('--omit=dev'))).toBe(true);
    expect(runs).toContain('npm run build');
    expect(runs.some((r) => r.startsWith('npm ci --omit=dev'))).toBe(true);
    expect(DOCKER.some((d) => d.instruction === 'COPY' && d.args === '--from=build /src/dist ./dist')).toBe(true);
    // Everything it copies from the repository exists.
    for (const d of DOCKER.filter((x) => x.instruction === 'COPY' && !x.args.startsWith('--from'))) {
      for (const src of d.args.split(/\s+/).slice(0, -1)) expect(existsSync(path.join(REPO, src)), src).toBe(true);
    }
  });

  test("the image runs Node 24 LTS, @types/node is 24, and engines admit 22.12 and later", () => {
    const pkg = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as {
      engines: { node: string };
      devDependencies: Record<string, string>;
    };
    const majors = DOCKER.filter((d) => d.instruction === 'FROM').map((d) => Number(/^node:(\d+)-/.exec(d.args)?.[1]));
    expect(new Set(majors)).toEqual(new Set([24]));
    expect(Number(pkg.devDependencies['@types/node']!.split('.')[0])).toBe(24);
    // Node 20 reached its end of life on 30 April 2026; 22 (from 22.12, vitest 4's floor) still works.
    expect(pkg.engines.node).toBe('>=22.12');
  });

  test('npm ci --omit=dev runs no lifecycle script that would need a devDependency', () => {
    const scripts = (JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { scripts?: Record<string, string> }).scripts ?? {};
    for (const s of ['preinstall', 'install', 'postinstall', 'prepare']) expect(scripts[s], s).toBeUndefined();
  });

  test('runs as a non-root user, exposes the listener and metrics ports, checks /healthz', () => {
    expect(dockerUid).toBeGreaterThan(0);
    const exposed = DOCKER.filter((d) => d.instruction === 'EXPOSE').flatMap((d) => d.args.split(/\s+/).map(Number));
    expect(exposed.sort((a, b) => a - b)).toEqual([...LISTENER_PORTS, METRICS_PORT].sort((a, b) => a - b));
    const health = DOCKER.find((d) => d.instruction === 'HEALTHCHECK')?.args ?? '';
    expect(health).toContain(`http://127.0.0.1:${METRICS_PORT}/healthz`);
    expect(health).toContain('"node"');
  });

  // docs/deployment.md, "Node's young generation": the image's processes get smtpgate's semi-space.
  test('sets NODE_OPTIONS to smtpgate\'s semi-space', () => {
    expect(DOCKER.filter((d) => d.instruction === 'ENV').map((d) => d.args)).toContain(`NODE_OPTIONS=${SEMI_SPACE_FLAG}`);
  });

  test('CMD runs the built CLI with the config at /etc/smtpgate/smtpgate.yaml', () => {
    expect(dockerCmd.slice(0, 3)).toEqual(['node', 'dist/cli/main.js', 'run']);
    expect(cmdConfig).toBe(CONFIG_PATH);
    // dist/cli/main.js is what tsconfig.build.json makes of src/cli/main.ts.
    const build = JSON.parse(readFileSync(path.join(REPO, 'tsconfig.build.json'), 'utf8')) as { compilerOptions: { rootDir: string; outDir: string } };
    expect(build.compilerOptions).toMatchObject({ rootDir: 'src', outDir: 'dist' });
    expect(existsSync(path.join(REPO, 'src/cli/main.ts'))).toBe(true);
  });
});

describe('deploy/docker-compose.yml', () => {
  const smtpgate = COMPOSE.services.smtpgate as Doc;

  test('has smtpgate, redis, prometheus, grafana and a backend to try it with', () => {
    expect(Object.keys(COMPOSE.services)).toEqual(expect.arrayContaining(['smtpgate', 'redis', 'prometheus', 'grafana', 'mailpit']));
    expect(smtpgate.build).toEqual({ context: '..', dockerfile: 'deploy/Dockerfile' });
  });

  test("mounts deploy/smtpgate.yaml where the image's CMD reads it", () => {
    const m = composeSourceOf(cmdConfig!);
    expect(m?.target).toBe(CONFIG_PATH);
    expect(path.resolve(DEPLOY, m!.source)).toBe(path.join(DEPLOY, 'smtpgate.yaml'));
  });

  test('mounts every file the config names, read-only, from files that exist', () => {
    const named = [CONFIG.tls!.cert, CONFIG.tls!.key, CONFIG.auth!.users!, CONFIG.auth!.attributes!, CONFIG.policies!, CONFIG.metrics.adminTokenFile!];
    for (const file of named) {
      const m = composeSourceOf(file);
      expect(m, file).toBeDefined();
      expect(composeMounts('smtpgate').find((v) => v.target === m!.target)?.readOnly, file).toBe(true);
      if (m!.source.startsWith('.')) expect(existsSync(path.resolve(DEPLOY, m!.source, path.relative(m!.target, file))), file).toBe(true);
      else expect(Object.keys(COMPOSE.volumes), file).toContain(m!.source);
    }
  });

  test('tls-init writes the certificate and key the config names, owned by the image user', () => {
    const volume = composeSourceOf(CONFIG.tls!.cert)!;
    const init = COMPOSE.services['tls-init'] as Doc;
    const initMount = (init.volumes as string[]).map((v) => v.split(':')).find(([src]) => src === volume.source)!;
    const script = (init.command as string[]).join('\n');
    for (const file of [CONFIG.tls!.cert, CONFIG.tls!.key]) expect(script).toContain(path.join(initMount[1]!, path.relative(volume.target, file)));
    expect(script).toContain(`chown ${dockerUid}:${dockerUid}`);
    expect(smtpgate.depends_on['tls-init'].condition).toBe('service_completed_successfully');
  });

  test('tls-init writes a random admin token where metrics.adminTokenFile points, readable only by the image user', () => {
    const volume = composeSourceOf(CONFIG.metrics.adminTokenFile!)!;
    const init = COMPOSE.services['tls-init'] as Doc;
    const initMount = (init.volumes as string[]).map((v) => v.split(':')).find(([src]) => src === volume.source)!;
    const token = path.join(initMount[1]!, path.relative(volume.target, CONFIG.metrics.adminTokenFile!));
    const script = (init.command as string[]).join('\n');
    expect(script).toContain(`openssl rand -hex 32 > ${token}`);
    expect(script).toContain(`chown ${dockerUid}:${dockerUid} ${token}`);
    expect(script).toContain(`chmod 0400 ${token}`);
  });

  test('publishes the listener ports (container side) and keeps the metrics port internal', () => {
    const published = (smtpgate.ports as string[]).map((p) => Number(p.split(':').at(-1)));
    expect(published.sort((a, b) => a - b)).toEqual(LISTENER_PORTS);
    expect(smtpgate.expose.map(Number)).toEqual([METRICS_PORT]);
    // Ports below 1024 as a non-root user, with every capability dropped.
    expect(smtpgate.sysctls['net.ipv4.ip_unprivileged_port_start']).toBe(0);
    expect(smtpgate.cap_drop).toEqual(['ALL']);
    expect(smtpgate.read_only).toBe(true);
  });

  test('gives the drain more time than shutdown.drainSeconds plus smtp-server\'s 5 s half-close deadline', () => {
    expect(smtpgate.stop_signal).toBe('SIGTERM');
    expect(parseDuration(smtpgate.stop_grace_period as string)! / 1000).toBeGreaterThan(DRAIN_BOUND_SECONDS);
  });

  test('the names the config uses resolve: redis for limits, the backend alias on Mailpit', () => {
    const redis = new URL(CONFIG.limits.store.url!);
    expect(Object.keys(COMPOSE.services)).toContain(redis.hostname);
    expect(Number(redis.port || 6379)).toBe(6379);
    const backend = CONFIG.backend.address[0]!;
    const mailpit = COMPOSE.services.mailpit as Doc;
    expect(mailpit.networks.default.aliases).toContain(backend.host);
    expect(Number(String(mailpit.environment.MP_SMTP_BIND_ADDR).split(':').at(-1))).toBe(backend.port);
  });

  test('Prometheus scrapes smtpgate on the metrics port and loads alerts.yml', () => {
    const prometheus = COMPOSE.services.prometheus as Doc;
    const mounts = composeMounts('prometheus');
    const confDir = mounts.find((m) => m.source === './prometheus')!.target;
    expect(prometheus.command).toContain(`--config.file=${confDir}/prometheus.yml`);
    const conf = parseYaml(read('prometheus/prometheus.yml')) as Doc;
    const job = (conf.scrape_configs as Doc[]).find((j) => j.job_name === 'smtpgate')!;
    expect(job.static_configs[0].targets).toEqual([`smtpgate:${METRICS_PORT}`]);
    for (const f of conf.rule_files as string[]) expect(existsSync(path.join(DEPLOY, 'prometheus', f)), f).toBe(true);
    expect(conf.rule_files).toContain('alerts.yml');
  });

  test('Grafana is provisioned with the Prometheus data source and the dashboard', () => {
    const mounts = composeMounts('grafana');
    expect(mounts.find((m) => m.source === './grafana/provisioning')?.target).toBe('/etc/grafana/provisioning');
    const ds = parseYaml(read('grafana/provisioning/datasources/prometheus.yml')) as Doc;
    expect(ds.datasources[0]).toMatchObject({ type: 'prometheus', url: 'http://prometheus:9090' });
    const provider = (parseYaml(read('grafana/provisioning/dashboards/smtpgate.yml')) as Doc).providers[0];
    const dashboard = mounts.find((m) => m.source === './grafana/smtpgate.json');
    expect(path.dirname(dashboard!.target)).toBe(provider.options.path);
  });
});

describe('deploy/k8s', () => {
  const kustomization = parseYaml(read('k8s/kustomization.yaml')) as Doc;
  const deployment = k8s('Deployment', 'smtpgate');
  const pod = deployment.spec.template.spec as Doc;
  const container = (pod.containers as Doc[]).find((c) => c.name === 'smtpgate')!;
  const portByName = new Map((container.ports as Doc[]).map((p) => [p.name as string, p.containerPort as number]));
  const projected = (pod.volumes as Doc[]).find((v) => v.projected)!;
  const mount = (container.volumeMounts as Doc[]).find((m) => m.name === projected.name)!;
  /** Absolute path in the container → the ConfigMap/Secret key it comes from. */
  const items = new Map<string, { kind: string; name: string; key: string }>();
  for (const src of projected.projected.sources as Doc[]) {
    const kind = src.configMap ? 'ConfigMap' : 'Secret';
    const ref = src.configMap ?? src.secret;
    for (const it of ref.items as Doc[]) items.set(path.posix.join(mount.mountPath, it.path), { kind, name: ref.name, key: it.key });
  }

  test('kustomization lists every manifest except the Secret templates, and they exist', () => {
    const files = readdirSync(path.join(DEPLOY, 'k8s')).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
    expect([...kustomization.resources].sort()).toEqual(files.filter((f) => !f.startsWith('secret-')).sort());
    expect(kustomization.namespace).toBe('smtpgate');
  });

  test("the config ConfigMap is deploy/smtpgate.yaml, mounted where the image's CMD reads it", () => {
    expect(container.command).toBeUndefined();
    expect(container.args).toBeUndefined();
    const src = items.get(cmdConfig!);
    expect(src).toMatchObject({ kind: 'ConfigMap', name: 'smtpgate-config' });
    expect(k8s('ConfigMap', 'smtpgate-config').data[src!.key]).toBe(CONFIG_TEXT);
  });

  test('every file the config names is in the projected volume, from a ConfigMap or Secret that has the key', () => {
    const named = [CONFIG.tls!.cert, CONFIG.tls!.key, CONFIG.auth!.users!, CONFIG.auth!.attributes!, CONFIG.metrics.adminTokenFile!];
    for (const file of named) {
      const src = items.get(file);
      expect(src, file).toBeDefined();
      const obj = k8s(src!.kind, src!.name);
      expect({ ...obj.data, ...obj.stringData }, file).toHaveProperty([src!.key]);
    }
    const tls = k8s('Secret', items.get(CONFIG.tls!.cert)!.name);
    expect(tls.type).toBe('kubernetes.io/tls');
    expect(items.get(CONFIG.tls!.cert)!.key).toBe('tls.crt');
    expect(items.get(CONFIG.tls!.key)!.key).toBe('tls.key');
    expect(mount.readOnly).toBe(true);
  });

  test('the policies ConfigMap, mounted as the Deployment maps it, is a valid policy set', async () => {
    const cm = k8s('ConfigMap', 'smtpgate-policies');
    const policyItems = [...items].filter(([, s]) => s.name === 'smtpgate-policies');
    expect(policyItems.map(([, s]) => s.key).sort()).toEqual(Object.keys(cm.data).sort());
    const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-k8s-policies-'));
    for (const [file, s] of policyItems) {
      expect(file.startsWith(CONFIG.policies! + '/'), file).toBe(true);
      const dest = path.join(dir, path.relative(CONFIG.policies!, file));
      await mkdir(path.dirname(dest), { recursive: true });
      await writeFile(dest, cm.data[s.key] as string);
    }
    const set = await loadPolicySet(dir);
    expect(set.ruleCount).toBeGreaterThan(0);
  });

  test('the Secret templates hold a users file and an attributes file smtpgate accepts', () => {
    const users = k8s('Secret', 'smtpgate-users').stringData as Record<string, string>;
    expect(parseUsersFile(users.users!, 'users').ok).toBe(true);
    expect(() => parseUserAttributes(users['users.yaml']!, 'users.yaml')).not.toThrow();
  });

  test('the admin token Secret template holds no usable token: applied unchanged, smtpgate refuses to start', async () => {
    const token = (k8s('Secret', 'smtpgate-admin-token').stringData as Record<string, string>).token!;
    const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-k8s-token-'));
    await writeFile(path.join(dir, 'token'), token);
    await expect(readAdminToken(path.join(dir, 'token'))).rejects.toThrow(/at least 16 characters/);
  });

  test('container ports are the listener ports and the metrics port', () => {
    expect([...portByName.values()].sort((a, b) => a - b)).toEqual([...LISTENER_PORTS, METRICS_PORT].sort((a, b) => a - b));
    expect(deployment.spec.template.metadata.annotations['prometheus.io/port']).toBe(String(METRICS_PORT));
  });

  test('readiness is /readyz and liveness /healthz, on the metrics port', () => {
    const port = (probe: Doc) => (typeof probe.httpGet.port === 'string' ? portByName.get(probe.httpGet.port) : probe.httpGet.port);
    expect(container.readinessProbe.httpGet.path).toBe('/readyz');
    expect(container.livenessProbe.httpGet.path).toBe('/healthz');
    expect(port(container.readinessProbe)).toBe(METRICS_PORT);
    expect(port(container.livenessProbe)).toBe(METRICS_PORT);
  });

  test('terminationGracePeriodSeconds covers the preStop pause, shutdown.drainSeconds and the 5 s half-close deadline', () => {
    const preStop = container.lifecycle?.preStop?.exec?.command as string[] | undefined;
    const pause = preStop?.[0] === 'sleep' ? Number(preStop[1]) : 0;
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(DRAIN_BOUND_SECONDS + pause);
  });

  test('runs as the image user, non-root, read-only root, no privilege escalation, no capabilities', () => {
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: dockerUid, runAsGroup: dockerUid, fsGroup: dockerUid });
    expect(container.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, runAsNonRoot: true, capabilities: { drop: ['ALL'] } });
    expect(pod.securityContext.sysctls).toContainEqual({ name: 'net.ipv4.ip_unprivileged_port_start', value: '0' });
    expect(container.resources.requests.cpu).toBeDefined(); // the HPA's utilization needs it
  });

  test('the Service publishes the listener ports with externalTrafficPolicy: Local', () => {
    const svc = k8s('Service', 'smtpgate');
    expect(svc.spec.type).toBe('LoadBalancer');
    expect(svc.spec.externalTrafficPolicy).toBe('Local');
    expect(svc.spec.selector).toEqual(deployment.spec.selector.matchLabels);
    for (const p of svc.spec.ports as Doc[]) expect(portByName.get(p.targetPort)).toBe(p.port);
    expect((svc.spec.ports as Doc[]).map((p) => p.port).sort((a: number, b: number) => a - b)).toEqual(LISTENER_PORTS);
    const metrics = k8s('Service', 'smtpgate-metrics');
    expect(metrics.spec.type).toBe('ClusterIP');
    expect(portByName.get(metrics.spec.ports[0].targetPort)).toBe(METRICS_PORT);
  });

  test('PodDisruptionBudget and HorizontalPodAutoscaler point at the Deployment', () => {
    expect(k8s('PodDisruptionBudget', 'smtpgate').spec.selector.matchLabels).toEqual(deployment.spec.selector.matchLabels);
    const hpa = k8s('HorizontalPodAutoscaler', 'smtpgate');
    expect(hpa.spec.scaleTargetRef).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: 'smtpgate' });
    expect(hpa.spec.metrics[0].resource.name).toBe('cpu');
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(2);
  });

  test('the NetworkPolicy admits the SMTP ports and the metrics port', () => {
    const ingress = k8s('NetworkPolicy', 'smtpgate').spec.ingress as Doc[];
    const ports = ingress.flatMap((r) => (r.ports as Doc[]).map((p) => p.port as number));
    expect(ports.sort((a, b) => a - b)).toEqual([...LISTENER_PORTS, METRICS_PORT].sort((a, b) => a - b));
  });

  test('every backend the config names is a Service the kustomization provides', () => {
    for (const { host } of CONFIG.backend.address) {
      const svc = k8s('Service', host);
      expect(kustomization.resources).toContain(svc.__file);
      // ExternalName: a CNAME to the real server, named in one place.
      expect(svc.spec.type).toBe('ExternalName');
      expect(svc.spec.externalName).toMatch(/^[a-z0-9.-]+$/);
    }
  });

  test('the HorizontalPodAutoscaler alone sets the replica count: the Deployment has none to reset it to on apply', () => {
    expect(k8s('HorizontalPodAutoscaler', 'smtpgate').spec.scaleTargetRef.name).toBe(deployment.metadata.name);
    expect(deployment.spec).not.toHaveProperty('replicas');
  });

  test('a rolling update (maxUnavailable: 0) never waits for the backend: readiness does not depend on the backend every pod shares', () => {
    expect(deployment.spec.strategy.rollingUpdate.maxUnavailable).toBe(0);
    expect(container.readinessProbe.httpGet.path).toBe('/readyz');
    expect(CONFIG.backend.requiredForReadiness).toBe(false);
  });

  test('limits.store.url names the redis Service and its port', () => {
    const redis = new URL(CONFIG.limits.store.url!);
    const svc = k8s('Service', redis.hostname);
    expect(svc.spec.ports[0].port).toBe(Number(redis.port || 6379));
  });
});

describe('deploy/systemd/smtpgate.service', () => {
  const unit = unitFile(read('systemd/smtpgate.service'));
  const one = (key: string) => unit.get(key)?.at(-1);

  test('runs the CLI with /etc/smtpgate/smtpgate.yaml; SIGHUP reloads, SIGTERM drains within TimeoutStopSec', () => {
    expect(one('Service.ExecStart')).toMatch(new RegExp(`dist/cli/main\\.js run --config ${CONFIG_PATH}$`));
    expect(one('Service.ExecReload')).toBe('/bin/kill -HUP $MAINPID');
    expect(one('Service.KillSignal')).toBe('SIGTERM');
    expect(Number(one('Service.TimeoutStopSec'))).toBeGreaterThan(DRAIN_BOUND_SECONDS);
  });

  test('sets NODE_OPTIONS to smtpgate\'s semi-space (a drop-in replaces it)', () => {
    expect(unit.get('Service.Environment')).toContain(`NODE_OPTIONS=${SEMI_SPACE_FLAG}`);
  });

  test('is hardened: unprivileged, only CAP_NET_BIND_SERVICE, read-only system and /etc/smtpgate', () => {
    expect(one('Service.DynamicUser')).toBe('yes');
    expect(one('Service.CapabilityBoundingSet')).toBe('CAP_NET_BIND_SERVICE');
    expect(one('Service.AmbientCapabilities')).toBe('CAP_NET_BIND_SERVICE');
    expect(one('Service.NoNewPrivileges')).toBe('yes');
    expect(one('Service.ProtectSystem')).toBe('strict');
    expect(one('Service.ProtectHome')).toBe('yes');
    expect(one('Service.PrivateTmp')).toBe('yes');
    expect(one('Service.ReadOnlyPaths')?.split(/\s+/)).toContain(ETC);
    expect(unit.get('Service.SystemCallFilter')).toContain('@system-service');
    expect(one('Service.RestrictAddressFamilies')?.split(/\s+/)).toEqual(expect.arrayContaining(['AF_INET', 'AF_INET6']));
  });
});

describe('deploy/prometheus/alerts.yml', () => {
  const rules = (parseYaml(read('prometheus/alerts.yml')) as Doc).groups.flatMap((g: Doc) => g.rules) as Doc[];

  test('every alert has a for:, a severity and a summary and description that tell the admin what to do', () => {
    expect(rules.length).toBeGreaterThan(5);
    for (const r of rules) {
      expect(r.for, r.alert).toMatch(/^\d+[smh]$/);
      expect(['warning', 'critical'], r.alert).toContain(r.labels?.severity);
      expect(r.annotations?.summary?.length, r.alert).toBeGreaterThan(10);
      expect(r.annotations?.description?.length, r.alert).toBeGreaterThan(80);
    }
  });

  test('covers the operational failures that need an admin', () => {
    const exprs = rules.map((r) => r.expr as string).join('\n');
    for (const needle of ['smtpgate_backend_up', 'smtpgate_backend_errors_total', 'smtpgate_auth_attempts_total{result="failure"}', 'smtpgate_auth_lockouts_total', 'smtpgate_limiter_store_up == 0', 'smtpgate_tls_certificate_expiry_timestamp_seconds - time() < 14 * 86400', 'smtpgate_config_last_reload_successful == 0', 'smtpgate_refusals_total', 'smtpgate_messages_total', 'smtpgate_listener_info', 'smtpgate_backend_oauth_token_total']) {
      expect(exprs).toContain(needle);
    }
  });
});

describe('deploy/grafana/smtpgate.json', () => {
  const dash = JSON.parse(read('grafana/smtpgate.json')) as Doc;
  const panels = (dash.panels as Doc[]).flatMap((p) => [p, ...((p.panels as Doc[] | undefined) ?? [])]);
  const CORE_PANELS = ['row', 'timeseries', 'stat', 'gauge', 'bargauge', 'table', 'piechart', 'state-timeline', 'text', 'heatmap'];

  test('schemaVersion 39, a uid, and a ${datasource} variable of Prometheus data sources', () => {
    expect(dash.schemaVersion).toBe(39);
    expect(dash.uid).toBe('smtpgate');
    expect(dash.templating.list.find((v: Doc) => v.name === 'datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
  });

  test('only core panel types; every panel and query uses ${datasource}', () => {
    for (const p of panels) {
      expect(CORE_PANELS, p.title).toContain(p.type);
      if (p.type === 'row') continue;
      expect(p.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
      for (const t of p.targets as Doc[]) expect(t.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
    }
  });

  test('has the rows an operator looks for', () => {
    const rows = panels.filter((p) => p.type === 'row').map((p) => p.title);
    expect(rows).toEqual(expect.arrayContaining(['Traffic', 'Security', 'Limits', 'Backend', 'TLS and certificates']));
  });

  test('panel ids are unique and panels fit the 24-column grid without overlapping', () => {
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const boxes = panels.map((p) => ({ title: p.title as string, ...(p.gridPos as { x: number; y: number; w: number; h: number }) }));
    for (const b of boxes) expect(b.x + b.w, b.title).toBeLessThanOrEqual(24);
    for (const [i, a] of boxes.entries()) {
      for (const b of boxes.slice(i + 1)) {
        const overlap = a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
        expect(overlap, `${a.title} / ${b.title}`).toBe(false);
      }
    }
  });
});

describeWith(['promtool'], 'promtool', () => {
  const promtool = findProgram('promtool')!;
  const run = (args: string[]) => execFileSync(promtool, args, { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

  test('promtool check rules deploy/prometheus/alerts.yml passes', () => {
    expect(run(['check', 'rules', 'deploy/prometheus/alerts.yml'])).toMatch(/SUCCESS: \d+ rules found/);
  });

  // Unit tests for the alert that real gates can't raise: the series are made up there.
  test('promtool test rules: SmtpgateEnforcementBypassed fires on mail a listener refuses, not on what its trusted networks may send', () => {
    const r = spawnSync(promtool, ['test', 'rules', 'test/e2e/ops/enforcement-alert.promtool.yml'], { cwd: REPO, encoding: 'utf8' });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/SUCCESS/);
  });

  test('promtool test rules: SmtpgateBackendOAuthFailing fires when OAuth2 sign-in keeps failing, not on one failed renewal', () => {
    const r = spawnSync(promtool, ['test', 'rules', 'test/e2e/ops/oauth-alert.promtool.yml'], { cwd: REPO, encoding: 'utf8' });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/SUCCESS/);
  });

  test('promtool test rules: SmtpgateNotificationsFailing fires on a notice given up, SmtpgateDkimSigningFailed on a key that did not sign; neither on what senders cause', () => {
    const r = spawnSync(promtool, ['test', 'rules', 'test/e2e/ops/notice-dkim-alerts.promtool.yml'], { cwd: REPO, encoding: 'utf8' });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/SUCCESS/);
  });

  test('promtool check config deploy/prometheus/prometheus.yml passes, with the alert rules', () => {
    const out = run(['check', 'config', 'deploy/prometheus/prometheus.yml']);
    expect(out).toMatch(/SUCCESS: 1 rule files found/);
    expect(out).toMatch(/is valid prometheus config file syntax/);
  });
});

describeWith(['systemd-analyze'], 'systemd-analyze', () => {
  test('systemd-analyze verify finds nothing wrong with the unit', async () => {
    // verify checks that ExecStart's program exists: point it at this machine's node.
    const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-unit-'));
    const unit = path.join(dir, 'smtpgate.service');
    await writeFile(unit, read('systemd/smtpgate.service').split('/usr/bin/node ').join(`${process.execPath} `));
    const r = spawnSync(findProgram('systemd-analyze')!, ['verify', unit], { encoding: 'utf8' });
    expect(`${r.stdout}${r.stderr}`.trim()).toBe('');
    expect(r.status).toBe(0);
  });
});
