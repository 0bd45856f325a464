/**
 * Starts a real smtpgate App for a test: a temp folder with a certificate and users file, a
 * config written as YAML (so it goes through the same loader as production), and a log
 * stream the test can read back.
 */
import { cp, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { hashSync } from '@node-rs/bcrypt';
import { createLogger } from '../../src/logging/logger.js';
import { App, checkConfigFile } from '../../src/app.js';
import { makeTestCert, type TestCert } from './pki.js';
import { configYaml, listener, type AuthInput, type BackendInput, type ConfigInput, type ListenerInput, type TlsInput } from './config.js';

type LogInput = NonNullable<ConfigInput['log']>;

export interface GateUser {
  readonly name: string;
  readonly password: string;
}

export const ALICE: GateUser = { name: 'alice', password: 'correct horse battery staple' };
/** An intern: the shipped policies limit whom `interns` may write to. */
export const IVAN: GateUser = { name: 'ivan', password: 'intern password 1' };

/** An attributes file for the shipped policies/: alice is staff, ivan an intern, each with one address. */
export const SHIPPED_POLICY_ATTRIBUTES = `
alice:
  addresses: [alice@corp.example]
  groups: [staff]
ivan:
  addresses: [ivan@corp.example]
  groups: [interns]
`;

/**
 * A `beforeStart` that gives the gate the repository's policies/ folder (as `policies`) and
 * `attributes` as attributes.yaml: pair it with `config: { policies: 'policies' }` and
 * `auth.attributes: 'attributes.yaml'`.
 */
export function withShippedPolicies(attributes = SHIPPED_POLICY_ATTRIBUTES): (dir: string) => Promise<void> {
  return async (dir) => {
    await writeFile(path.join(dir, 'attributes.yaml'), attributes);
    await cp(path.resolve(import.meta.dirname, '../../policies'), path.join(dir, 'policies'), { recursive: true });
  };
}

export interface StartGateOptions {
  /** Port of a single backend on 127.0.0.1; ignored when `backend.address` or `backendYaml` is given. */
  backendPort?: number;
  /**
   * The `backend:` section, over `{ address: 127.0.0.1:<backendPort> }`: several addresses, a
   * strategy, timeouts, an identity mode or fixed credentials.
   */
  backend?: Partial<BackendInput>;
  /** The listeners; defaults to one STARTTLS, one implicit-TLS and one plaintext listener on free ports. */
  listeners?: ListenerInput[];
  /** Keys inside the `tls:` section next to the default certificate (sni, reloadInterval, ...). */
  tls?: Partial<TlsInput>;
  /** Replaces the whole `auth:` section (default: the generated users file). */
  auth?: AuthInput;
  /** Further top-level sections (limits, policies, data, client, workers, shutdown, ...). */
  config?: Partial<ConfigInput>;
  /** YAML text, only for tests about the text itself (else use `backend`): the whole `backend:` section as YAML text. */
  backendYaml?: string;
  /** YAML text, only for tests about the text itself (else use `listeners`): the listeners list as YAML text. */
  listenersYaml?: string;
  /** YAML text, only for tests about the text itself (else use `config`): extra top-level YAML. */
  extraYaml?: string;
  /** YAML text, only for tests about the text itself (else use `tls`): extra keys inside the `tls:` section, each line indented two spaces. */
  tlsYaml?: string;
  /** YAML text, only for tests about the text itself (else use `auth`): the whole `auth:` section as YAML text. */
  authYaml?: string;
  users?: GateUser[];
  /** Runs after the temp folder is written and before the app loads it (extra files). */
  beforeStart?: (dir: string) => Promise<void>;
  /** log.level; the in-process gate defaults to debug. */
  logLevel?: LogInput['level'];
  /** log.format (json unless told); only matters for a gate run as a child process. */
  logFormat?: LogInput['format'];
  /** Replaces V8's young-generation collection the gate asks for after every 8 MiB read from clients. */
  collect?: () => void;
  /** The default certificate (tls.cert/tls.key); a fresh EC one for "localhost" unless given. */
  cert?: TestCert;
  /**
   * metrics.address (default 127.0.0.1:0). Give a fixed port when a separate process must find
   * the running instance from its config alone (`smtpgate limits list` with the memory store).
   */
  metricsAddress?: string;
  /** metrics.adminTokenFile, relative to the gate's folder (write it in beforeStart). */
  adminTokenFile?: string;
}

export interface Gate {
  readonly app: App;
  readonly dir: string;
  readonly cert: TestCert;
  port(listener: string): number;
  readonly metricsPort: number;
  /** Parsed JSON log lines written so far. */
  readonly logs: Record<string, unknown>[];
  stop(): Promise<void>;
}

const DEFAULT_LISTENERS: ListenerInput[] = [
  listener('submission', { tls: 'starttls' }),
  listener('smtps', { tls: 'implicit' }),
  listener('plain', { tls: 'none', requireTls: false }),
];

/**
 * A plaintext listener for internal apps on loopback: no TLS, no AUTH, and loopback is a
 * trusted network, so relay protection lets it send anywhere (as an internal app relay does).
 * YAML text for `listenersYaml`; `openListener()` in config.ts is the typed one.
 */
export const OPEN_LISTENER_YAML = `
  - name: open
    address: 127.0.0.1:0
    tls: none
    requireTls: false
    requireAuth: false
    trusted:
      networks: [127.0.0.0/8]
`;

/** The config a gate runs with, as the file will say it; `writeGateFiles` writes it with `yaml.stringify`. */
export function gateConfig(opts: StartGateOptions, cert: TestCert): ConfigInput {
  const given: Partial<BackendInput> = { ...(opts.backendPort === undefined ? {} : { address: `127.0.0.1:${opts.backendPort}` }), ...opts.backend };
  if (given.address === undefined) throw new Error('startGate needs backendPort or backend.address');
  // Health probes would be extra connections in tests that count the backend's connections;
  // they are off unless a test turns them on.
  const backend: BackendInput = { healthCheckInterval: 0, ...given, address: given.address };
  return {
    hostname: 'gate.test',
    listeners: opts.listeners ?? DEFAULT_LISTENERS,
    tls: { cert: cert.certFile, key: cert.keyFile, ...opts.tls },
    auth: opts.auth ?? { users: 'users' },
    backend,
    metrics: { address: opts.metricsAddress ?? '127.0.0.1:0', ...(opts.adminTokenFile ? { adminTokenFile: opts.adminTokenFile } : {}) },
    log: { level: opts.logLevel ?? 'debug', format: opts.logFormat ?? 'json' },
    ...opts.config,
  };
}

const DEFAULT_LISTENERS_YAML = `
  - name: submission
    address: 127.0.0.1:0
    tls: starttls
  - name: smtps
    address: 127.0.0.1:0
    tls: implicit
  - name: plain
    address: 127.0.0.1:0
    tls: none
    requireTls: false
`;

const YAML_TEXT_OPTIONS = ['backendYaml', 'listenersYaml', 'extraYaml', 'tlsYaml', 'authYaml'] as const;
const TYPED_OPTIONS = ['backend', 'listeners', 'tls', 'auth', 'config'] as const;

/**
 * The config as YAML text pieced together, for the tests that are about the text itself (flow
 * sequences, line numbers in messages). Everything else goes through `gateConfig`.
 */
function configText(opts: StartGateOptions, cert: TestCert): string {
  const typed = TYPED_OPTIONS.filter((k) => opts[k] !== undefined);
  if (typed.length > 0) throw new Error(`startGate: give either the YAML text options or the typed ones, not both (${typed.join(', ')})`);
  if (opts.backendYaml === undefined && opts.backendPort === undefined) throw new Error('startGate needs backendPort or backendYaml');
  const given = opts.backendYaml ?? `backend:\n  address: 127.0.0.1:${opts.backendPort}`;
  const backend = given.includes('healthCheckInterval') ? given : given.replace(/^backend:\n/, 'backend:\n  healthCheckInterval: 0\n');
  return `hostname: gate.test
listeners:${opts.listenersYaml ?? DEFAULT_LISTENERS_YAML}
tls:
  cert: ${cert.certFile}
  key: ${cert.keyFile}
${opts.tlsYaml ? opts.tlsYaml.replace(/^\n+|\n+$/g, '') + '\n' : ''}${(opts.authYaml ?? 'auth:\n  users: users').trim()}
${backend.trim()}
metrics:
  address: ${opts.metricsAddress ?? '127.0.0.1:0'}${opts.adminTokenFile ? `\n  adminTokenFile: ${opts.adminTokenFile}` : ''}
log:
  level: ${opts.logLevel ?? 'debug'}
  format: ${opts.logFormat ?? 'json'}
${opts.extraYaml ?? ''}
`;
}

export interface GateFiles {
  readonly dir: string;
  readonly cert: TestCert;
  /** The YAML config, ready for `checkConfigFile` or `smtpgate run --config`. */
  readonly configFile: string;
}

/** Writes a temp folder with a certificate, a users file and the config; starts nothing. */
export async function writeGateFiles(opts: StartGateOptions): Promise<GateFiles> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-test-'));
  const cert = opts.cert ?? (await makeTestCert('localhost'));
  const users = opts.users ?? [ALICE];
  // Cost 4: fast tests; production hashes come from `htpasswd -B` (cost 5+) or smtpgate user.
  await writeFile(path.join(dir, 'users'), users.map((u) => `${u.name}:${hashSync(u.password, 4)}\n`).join(''));
  const configFile = path.join(dir, 'smtpgate.yaml');
  const text = YAML_TEXT_OPTIONS.some((k) => opts[k] !== undefined) ? configText(opts, cert) : configYaml(gateConfig(opts, cert));
  await writeFile(configFile, text);
  return { dir, cert, configFile };
}

export async function startGate(opts: StartGateOptions): Promise<Gate> {
  const { dir, cert, configFile } = await writeGateFiles(opts);
  await opts.beforeStart?.(dir);
  const { config, material } = await checkConfigFile(configFile);
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const app = new App(config, material, { log: createLogger({ level: opts.logLevel ?? 'debug', format: 'json', destination: sink }), configFile, collect: opts.collect });
  const bound = await app.start();
  return {
    app,
    dir,
    cert,
    logs,
    metricsPort: bound.metrics,
    port(name: string) {
      const p = bound.listeners[name];
      if (p === undefined) throw new Error(`no listener ${name}`);
      return p;
    },
    stop: () => app.stop(),
  };
}

/** Reads /metrics and returns the value of one sample, e.g. metric('smtpgate_messages_total', {result: 'relayed'}). */
export async function metricValue(gate: Gate, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${gate.metricsPort}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue;
    const ok = Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`));
    if (ok) total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}
