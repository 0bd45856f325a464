/**
 * `smtpgate check` catches what would make `smtpgate run` fail, and both say it the same way,
 * naming the config file, line and field: they share one validation path. The real binary on
 * real files.
 */
import { execFileSync } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { writeGateFiles, type StartGateOptions } from '../../helpers/gate.js';
import { runCli } from '../../helpers/cli.js';
import { freePort } from '../../helpers/redis.js';
import { makeTestCert } from '../../helpers/pki.js';

async function configFile(opts: Omit<StartGateOptions, 'backendPort'>): Promise<{ file: string; dir: string }> {
  const f = await writeGateFiles({ backendPort: 2, ...opts });
  await opts.beforeStart?.(f.dir);
  return { file: f.configFile, dir: f.dir };
}

/** The line of the first line of `file` that contains `text`. */
async function lineOf(file: string, text: string): Promise<number> {
  const n = (await readFile(file, 'utf8')).split('\n').findIndex((l) => l.includes(text));
  if (n < 0) throw new Error(`${text} not in ${file}`);
  return n + 1;
}

/** check and run both refuse the config, with `expected` among the problems; run binds nothing. */
async function bothRefuse(file: string, expected: string, cli?: string): Promise<void> {
  for (const command of ['check', 'run']) {
    const res = await runCli([command, '--config', file], cli);
    expect(res.code, `${command}: ${res.stderr}`).toBe(1);
    expect(res.stderr, command).toContain('nothing was started');
    expect(res.stderr, command).toContain(expected);
    expect(res.stderr, command).not.toMatch(/EADDRINUSE|ENOENT|EACCES|EISDIR/);
  }
}

describe('addresses that cannot all be bound', () => {
  test('a wildcard and a specific address on one port: check and run both refuse it, naming the line', async () => {
    const port = await freePort();
    const { file } = await configFile({
      listenersYaml: `\n  - name: mx\n    address: 0.0.0.0:${port}\n  - name: internal\n    address: 127.0.0.1:${port}\n`,
    });
    const line = await lineOf(file, `127.0.0.1:${port}`);
    await bothRefuse(file, `${file}:${line}: listeners[1].address: listener "internal" (127.0.0.1:${port}) and listener "mx" (0.0.0.0:${port}) cannot both bind port ${port}`);
  });

  test('the metrics port equal to a listener port: check and run both refuse it', async () => {
    const port = await freePort();
    const { file } = await configFile({ listenersYaml: `\n  - name: mx\n    address: 127.0.0.1:${port}\n`, metricsAddress: `127.0.0.1:${port}` });
    await bothRefuse(file, `metrics.address: metrics.address (127.0.0.1:${port}) and listener "mx" (127.0.0.1:${port}) cannot both bind port ${port}: the same address`);
  });
});

/** Replaces the line containing `from` (exactly one) in the config. */
async function edit(file: string, from: string, to: string): Promise<void> {
  const text = await readFile(file, 'utf8');
  if (text.split(from).length !== 2) throw new Error(`expected ${from} once in ${file}`);
  await writeFile(file, text.replace(from, to));
}

describe('a file the config names that cannot be read is reported at the config line that names it', () => {
  // Each case: how to break the config, the field, the line text that names the file.
  const CASES: Record<string, { opts?: Omit<StartGateOptions, 'backendPort'>; breakIt?: (file: string) => Promise<void>; field: string; named: string }> = {
    'tls.cert': { breakIt: (f) => edit(f, '  cert: /', '  cert: missing-cert.pem\n  #'), field: 'tls.cert', named: 'missing-cert.pem' },
    'tls.key': { breakIt: (f) => edit(f, '  key: /', '  key: missing-key.pem\n  #'), field: 'tls.key', named: 'missing-key.pem' },
    'auth.users': { opts: { authYaml: 'auth:\n  users: missing-users' }, field: 'auth.users', named: 'missing-users' },
    'auth.attributes': { opts: { authYaml: 'auth:\n  users: users\n  attributes: missing-attributes.yaml' }, field: 'auth.attributes', named: 'missing-attributes.yaml' },
    policies: { opts: { extraYaml: 'policies: missing-policies\n' }, field: 'policies', named: 'missing-policies' },
    'listeners[].clientCerts.ca': {
      opts: { listenersYaml: '\n  - name: submission\n    address: 127.0.0.1:0\n    clientCerts:\n      ca: missing-ca.pem\n' },
      field: 'listeners[0].clientCerts.ca',
      named: 'missing-ca.pem',
    },
    'backend.ca': { opts: { backendYaml: 'backend:\n  address: 127.0.0.1:2\n  tls: starttls\n  ca: missing-backend-ca.pem' }, field: 'backend.ca', named: 'missing-backend-ca.pem' },
    'backend.auth.passwordFile': {
      opts: { backendYaml: 'backend:\n  address: 127.0.0.1:2\n  auth:\n    user: gate\n    passwordFile: missing-password' },
      field: 'backend.auth.passwordFile',
      named: 'missing-password',
    },
    'metrics.adminTokenFile': { opts: { adminTokenFile: 'missing-token' }, field: 'metrics.adminTokenFile', named: 'missing-token' },
  };

  test.each(Object.keys(CASES))('%s: the config line, the field, the path and "does not exist" in words', async (name) => {
    const c = CASES[name]!;
    const { file, dir } = await configFile(c.opts ?? {});
    await c.breakIt?.(file);
    const line = await lineOf(file, c.named);
    const res = await runCli(['check', '--config', file]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(`${file}:${line}: ${c.field}: cannot read `);
    expect(res.stderr).toContain(`${dir}/${c.named}: it does not exist`);
    expect(res.stderr).not.toMatch(/ENOENT|EACCES|EISDIR|ENOTDIR|scandir/);
  });

  test('run refuses the same way (a missing policy folder)', async () => {
    const { file, dir } = await configFile({ extraYaml: 'policies: missing-policies\n' });
    await bothRefuse(file, `${file}:${await lineOf(file, 'missing-policies')}: policies: cannot read the policy folder ${dir}/missing-policies: it does not exist`);
  });

  test('a folder where a file belongs, and a file where the policy folder belongs', async () => {
    const { file, dir } = await configFile({ authYaml: 'auth:\n  users: .', extraYaml: 'policies: users\n' });
    const res = await runCli(['check', '--config', file]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(`${file}:${await lineOf(file, 'users: .')}: auth.users: cannot read the users file ${dir}: it is a folder, not a file`);
    expect(res.stderr).toContain(`${file}:${await lineOf(file, 'policies: users')}: policies: cannot read the policy folder ${dir}/users: it is a file, not a folder`);
    expect(res.stderr).not.toMatch(/EISDIR|ENOTDIR/);
  });
});

describe('a problem inside a file the config names', () => {
  test('the attributes file: its own line and a "did you mean", then the config line that names it', async () => {
    const { file, dir } = await configFile({
      authYaml: 'auth:\n  users: users\n  attributes: users.yaml',
      beforeStart: (d) => writeFile(`${d}/users.yaml`, 'alice:\n  addresses: [alice@corp.example]\nbob:\n  adresses: [bob@corp.example]\n'),
    });
    const res = await runCli(['check', '--config', file]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(`${dir}/users.yaml:4: bob.adresses: unknown key "adresses"; did you mean "addresses"? (named by ${file}:${await lineOf(file, 'attributes: users.yaml')} auth.attributes)`);
  });

  test('a policy file: its own line, then the config line that names the folder', async () => {
    const { file, dir } = await configFile({
      extraYaml: 'policies: policies\n',
      beforeStart: async (d) => {
        await mkdir(`${d}/policies`);
        await writeFile(`${d}/policies/00.yaml`, 'rules: 5\n');
      },
    });
    const res = await runCli(['check', '--config', file]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(`${dir}/policies/00.yaml:1: rules: expected array, found number 5 (named by ${file}:${await lineOf(file, 'policies: policies')} policies)`);
  });
});

describe('a certificate outside its validity period', () => {
  const DAY = 86_400_000;
  const CERTS = {
    'expired (the default pair)': { notBefore: new Date(Date.now() - 40 * DAY), days: 30, field: 'tls.cert', why: 'expired on' },
    'not yet valid (the default pair)': { notBefore: new Date(Date.now() + 2 * DAY), days: 30, field: 'tls.cert', why: 'is not valid before' },
  };

  test.each(Object.keys(CERTS))('%s: check and run refuse it at the tls.cert line', async (name) => {
    const c = CERTS[name as keyof typeof CERTS];
    const cert = await makeTestCert('localhost', { notBefore: c.notBefore, days: c.days });
    const { file } = await configFile({ cert });
    const line = await lineOf(file, `cert: ${cert.certFile}`);
    await bothRefuse(file, `${file}:${line}: ${c.field}: the certificate ${cert.certFile} (CN=localhost) ${c.why} `);
  });

  test('an SNI certificate that expired is refused at its own line', async () => {
    const sni = await makeTestCert('old.test', { notBefore: new Date(Date.now() - 40 * DAY), days: 30 });
    const { file } = await configFile({ tlsYaml: `  sni:\n    - names: [old.test]\n      cert: ${sni.certFile}\n      key: ${sni.keyFile}` });
    const res = await runCli(['check', '--config', file]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(`${file}:${await lineOf(file, `cert: ${sni.certFile}`)}: tls.sni[0].cert: the certificate ${sni.certFile} (CN=old.test) expired on `);
  });

  test('a certificate that expires soon is a warning: check exits 0', async () => {
    const cert = await makeTestCert('localhost', { days: 5 });
    const res = await runCli(['check', '--config', (await configFile({ cert })).file]);
    expect(res.code).toBe(0);
    expect(res.stdout).toMatch(/warning: tls\.cert .* expires in \d days/);
  });
});

describe('log.format: pretty where pino-pretty is not installed', () => {
  /**
   * An install as after `npm ci --omit=dev`: the built dist/ and package.json beside a
   * node_modules without the development dependency pino-pretty. Hard links where the file
   * system allows (same files, but their real paths are in the copy, so nothing resolves back
   * into the repository), a plain copy otherwise.
   */
  let install: string;
  let cli: string;
  beforeAll(async () => {
    const root = path.resolve(import.meta.dirname, '../../..');
    install = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-prod-install-'));
    await cp(path.join(root, 'dist'), path.join(install, 'dist'), { recursive: true });
    await cp(path.join(root, 'package.json'), path.join(install, 'package.json'));
    const modules = [path.join(root, 'node_modules'), path.join(install, 'node_modules')];
    try {
      execFileSync('cp', ['-al', ...modules], { stdio: 'ignore' });
    } catch {
      await rm(modules[1]!, { recursive: true, force: true });
      execFileSync('cp', ['-a', ...modules]);
    }
    await rm(path.join(install, 'node_modules', 'pino-pretty'), { recursive: true });
    cli = path.join(install, 'dist', 'cli', 'main.js');
  });
  afterAll(() => rm(install, { recursive: true, force: true }));

  test('check and run refuse it at the log.format line, with the fix', async () => {
    const { file } = await configFile({ logFormat: 'pretty' });
    const line = await lineOf(file, 'format: pretty');
    await bothRefuse(file, `${file}:${line}: log.format: "pretty" needs the package pino-pretty, which is not installed here (it is a development dependency, left out by npm ci --omit=dev); use format: json, or npm install pino-pretty`, cli);
  });

  test('the same install passes with log.format: json', async () => {
    const res = await runCli(['check', '--config', (await configFile({ logFormat: 'json' })).file], cli);
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
  });

  test('where pino-pretty is installed, pretty passes', async () => {
    const res = await runCli(['check', '--config', (await configFile({ logFormat: 'pretty' })).file]);
    expect(res.code).toBe(0);
  });
});

describe('a CIDR with host bits set', () => {
  test('is a warning naming the line and the network it means; check exits 0', async () => {
    const { file } = await configFile({
      listenersYaml: `
  - name: relay
    address: 127.0.0.1:0
    trusted:
      networks: [10.0.0.0/8, 10.20.0.1, 10.1.2.3/8]
    proxyProtocol:
      trusted: [2001:db8::1/32]
`,
      extraYaml: 'limits:\n  overrides:\n    - cidrs: [192.168.1.7/24]\n      connectionRate: 100/1m\n',
    });
    const res = await runCli(['check', '--config', file]);
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    const warnings = res.stdout.split('\n').filter((l) => l.includes('host bits'));
    expect(warnings).toEqual([
      `warning: ${file}:${await lineOf(file, 'networks:')}: listeners[0].trusted.networks[2]: 10.1.2.3/8 has host bits set, so it means 10.0.0.0/8; write 10.0.0.0/8, or 10.1.2.3/32 for the one address`,
      `warning: ${file}:${await lineOf(file, '2001:db8::1/32')}: listeners[0].proxyProtocol.trusted[0]: 2001:db8::1/32 has host bits set, so it means 2001:db8::/32; write 2001:db8::/32, or 2001:db8::1/128 for the one address`,
      `warning: ${file}:${await lineOf(file, '192.168.1.7/24')}: limits.overrides[0].cidrs[0]: 192.168.1.7/24 has host bits set, so it means 192.168.1.0/24; write 192.168.1.0/24, or 192.168.1.7/32 for the one address`,
    ]);
  });
});
