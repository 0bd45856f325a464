/**
 * `smtpgate credential add|list|revoke`, as an operator or a script runs it: the real built
 * binary (`npm run build` first), a credentials file the proxy's own parser must accept
 * afterwards, and last use read the two ways `list` reads it: from the shared Redis directly,
 * and from a running instance's admin address (a real admin server holding the memory store's
 * table).
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, lstat, mkdir, mkdtemp, readFile, readdir, stat, symlink, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Registry } from 'prom-client';
import { afterAll, beforeEach, describe, expect, onTestFinished, test } from 'vitest';
import { credentialUsageAdminRoute } from '../../../src/auth/admin.js';
import { CREDENTIAL_USE_TABLE, CredentialUsage, usageField } from '../../../src/auth/credential-usage.js';
import { generateSecret, hashSecret, parseCredentialsFile, secretMatches, type Credential } from '../../../src/auth/credentials-file.js';
import { LimiterStore, MemoryBackend } from '../../../src/limits/limiter-store.js';
import { limitsConfigSchema } from '../../../src/limits/config.js';
import { createRedisClient, RedisBackend } from '../../../src/limits/redis-store.js';
import { boundPort, startAdminServer } from '../../../src/metrics/http-server.js';
import { CLI } from '../../helpers/child-gate.js';
import { runCli, type CliResult } from '../../helpers/cli.js';
import { describeWith } from '../../helpers/programs.js';
import { dropPrefix, SHARED_REDIS_URL, uniquePrefix } from '../../helpers/redis.js';
import { deadPort } from '../../helpers/sessions.js';

const SECRET_SHAPE = /^sgap[a-z2-7]{26}$/;
const OTHER = `bob:phone:${hashSecret(generateSecret())}:created=2026-01-01T00:00:00Z`;
const USERS_ALICE = 'alice@corp.example:$2b$04$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234\n';

let dir: string;
let creds: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-credential-'));
  creds = path.join(dir, 'credentials');
});

const credential = (...args: string[]) => runCli(['credential', ...args]);

/** The file's credentials, as the proxy would read them; the test fails if the file is refused. */
async function credentialsIn(file: string): Promise<Credential[]> {
  const parsed = parseCredentialsFile(await readFile(file, 'utf8'), file);
  if (!parsed.ok) throw new Error(`credentials file refused: ${JSON.stringify(parsed.issues)}`);
  return parsed.credentials.all();
}

/** A config in `dir` (JSON is YAML) naming `credentials` and `users` beside it. */
async function writeConfig(opts: { store?: object; metricsPort?: number; adminTokenFile?: string; auth?: Record<string, unknown> } = {}): Promise<string> {
  const file = path.join(dir, 'smtpgate.yaml');
  const config = {
    listeners: [
      { name: 'submission', address: '127.0.0.1:587' },
      { name: 'smtps', address: '127.0.0.1:465', tls: 'implicit' },
    ],
    tls: { cert: 'cert.pem', key: 'key.pem' },
    auth: { backend: ['file'], users: 'users', credentials: 'credentials', reloadInterval: '2s', ...opts.auth },
    backend: { address: '10.0.0.5:25' },
    metrics: { address: `127.0.0.1:${opts.metricsPort ?? (await deadPort())}`, ...(opts.adminTokenFile ? { adminTokenFile: opts.adminTokenFile } : {}) },
    ...(opts.store ? { limits: { store: opts.store } } : {}),
  };
  await writeFile(file, JSON.stringify(config, null, 2));
  return file;
}

describe('credential add', () => {
  test('prints the secret alone on stdout, once; the file gets a line that parses and whose hash matches it; mode 0640', async () => {
    const before = Math.floor(Date.now() / 1000) * 1000;
    const r = await credential('add', 'alice@corp.example', '--label', 'printer-3rd-floor', '--file', creds);
    const after = Date.now();
    expect(r.code).toBe(0);
    const secret = r.stdout.slice(0, -1);
    expect(r.stdout).toBe(`${secret}\n`);
    expect(secret).toMatch(SECRET_SHAPE);
    expect(r.stderr).not.toContain(secret);
    const text = await readFile(creds, 'utf8');
    expect(text).not.toContain(secret);
    const [c, ...rest] = await credentialsIn(creds);
    expect(rest).toEqual([]);
    expect(c).toMatchObject({ user: 'alice@corp.example', label: 'printer-3rd-floor' });
    expect(secretMatches(secret, c!.hash)).toBe(true);
    expect(c!.created!.getTime()).toBeGreaterThanOrEqual(before);
    expect(c!.created!.getTime()).toBeLessThanOrEqual(after);
    expect(c!.expires).toBeUndefined();
    expect((await stat(creds)).mode & 0o7777).toBe(0o640);
    expect(await readdir(dir)).toEqual(['credentials']);
  });

  test('stderr says for whom, that it is shown once, its restrictions, and when a running smtpgate picks it up', async () => {
    const r = await credential('add', 'alice@corp.example', '--label', 'printer', '--networks', '10.1.3.0/24,2001:db8:3::/48', '--listeners', 'submission', '--expires', '2999-01-01', '--file', creds);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`app password "printer" for alice@corp.example added to ${creds}`);
    expect(r.stderr).toContain('shown once: store it in the device now');
    expect(r.stderr).toContain('networks:  10.1.3.0/24, 2001:db8:3::/48');
    expect(r.stderr).toContain('listeners: submission');
    expect(r.stderr).toContain('expires:   2999-01-01T00:00:00Z');
    expect(r.stderr).toContain('(a running smtpgate picks it up within auth.reloadInterval)');
  });

  test('secret=$(smtpgate credential add …) captures the secret and nothing else', async () => {
    const { stdout, stderr } = await promisify(execFile)('sh', ['-c', 'secret=$("$@") || exit 1; printf "<%s>" "$secret"', 'sh', process.execPath, CLI, 'credential', 'add', 'alice', '--label', 'phone', '--file', creds]);
    const secret = /^<(.*)>$/.exec(stdout)?.[1] ?? '';
    expect(secret).toMatch(SECRET_SHAPE);
    expect(stderr).toContain('shown once');
    const [c] = await credentialsIn(creds);
    expect(secretMatches(secret, c!.hash)).toBe(true);
  });

  test('each add makes a different secret', async () => {
    const a = await credential('add', 'alice', '--label', 'one', '--file', creds);
    const b = await credential('add', 'alice', '--label', 'two', '--file', creds);
    expect(a.stdout).not.toBe(b.stdout);
    const [one, two] = await credentialsIn(creds);
    expect(secretMatches(a.stdout.trim(), one!.hash) && secretMatches(b.stdout.trim(), two!.hash)).toBe(true);
    expect(secretMatches(a.stdout.trim(), two!.hash)).toBe(false);
  });

  test("the restrictions are written as given: networks (IPv6 too), listeners, and --expires as a duration from now", async () => {
    const before = Date.now();
    const r = await credential('add', 'alice', '--label', 'printer', '--networks', '10.1.3.0/24, 2001:db8:3::/48', '--listeners', 'submission,smtps', '--expires', '365d', '--file', creds);
    expect(r.code).toBe(0);
    const [c] = await credentialsIn(creds);
    expect(c!.networks).toEqual(['10.1.3.0/24', '2001:db8:3::/48']);
    expect(c!.listeners).toEqual(['submission', 'smtps']);
    const year = 365 * 86_400_000;
    expect(c!.expires!.getTime()).toBeGreaterThanOrEqual(Math.floor((before + year) / 1000) * 1000);
    expect(c!.expires!.getTime()).toBeLessThanOrEqual(Date.now() + year);
  });

  test('--expires takes an ISO date (midnight UTC) or a time with its zone', async () => {
    expect((await credential('add', 'alice', '--label', 'a', '--expires', '2999-06-30', '--file', creds)).code).toBe(0);
    expect((await credential('add', 'alice', '--label', 'b', '--expires', '2999-06-30T18:00:00+02:00', '--file', creds)).code).toBe(0);
    const [a, b] = await credentialsIn(creds);
    expect(a!.expires!.toISOString()).toBe('2999-06-30T00:00:00.000Z');
    expect(b!.expires!.toISOString()).toBe('2999-06-30T16:00:00.000Z');
  });

  test.each([
    ['a date in the past', '2020-01-01', '--expires 2020-01-01: 2020-01-01T00:00:00Z is not in the future'],
    ['a duration of nothing', '0d', 'is not in the future'],
    ['a time without a zone', '2999-01-01T10:00:00', 'expected a duration from now such as 365d or 12h, or an ISO 8601 date or time'],
    ['a bare number', '90', 'expected a duration from now'],
    ['a day that does not exist', '2999-02-30', 'expected a duration from now'],
    ['a duration past the year 9999', '3000000d', 'too far ahead; give a time before the year 10000'],
  ])('--expires with %s is refused and nothing is written', async (_name, expires, message) => {
    const r = await credential('add', 'alice', '--label', 'phone', '--expires', expires, '--file', creds);
    expect(r).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toContain(`smtpgate: `);
    expect(r.stderr).toContain(message);
    await expect(stat(creds)).rejects.toThrow('ENOENT');
  });

  test('a network with host bits set is refused with the two ways to write it', async () => {
    const r = await credential('add', 'alice', '--label', 'printer', '--networks', '10.1.3.5/24', '--file', creds);
    expect(r).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toBe('smtpgate: --networks: 10.1.3.5/24 has host bits set, so it means 10.1.3.0/24; write 10.1.3.0/24, or 10.1.3.5/32 for the one address\n');
    const v6 = await credential('add', 'alice', '--label', 'printer', '--networks', '2001:db8:3::7/48', '--file', creds);
    expect(v6.stderr).toContain('2001:db8:3::7/48 has host bits set, so it means 2001:db8:3::/48; write 2001:db8:3::/48, or 2001:db8:3::7/128 for the one address');
    await expect(stat(creds)).rejects.toThrow('ENOENT');
  });

  test.each([
    ['not a network', ['--networks', '10.1.3/24'], '--networks: "10.1.3/24" is not an address or CIDR network'],
    ['an empty network', ['--networks', '10.1.3.0/24,'], '--networks: "" is not an address or CIDR network'],
    ['a bad label', ['--label', 'my phone'], '--label "my phone": use 1-64 letters, digits and ._-'],
    ['a bad listener name', ['--listeners', 'smtp/587'], 'listeners: "smtp/587" is not a listener name'],
  ])('%s is refused and nothing is written', async (_name, extra, message) => {
    const r = await credential('add', 'alice', '--label', 'phone', '--file', creds, ...extra);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(message);
    await expect(stat(creds)).rejects.toThrow('ENOENT');
  });

  test('an invalid user name is refused', async () => {
    const r = await credential('add', 'al:ice', '--label', 'phone', '--file', creds);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('user name "al:ice" is not valid');
  });

  test('an existing file keeps its mode (0600), its other lines byte for byte, and its CRLF line endings', async () => {
    const before = `# app passwords\r\n\r\n${OTHER}\r\n  # printers below\r\n`;
    await writeFile(creds, before);
    await chmod(creds, 0o600);
    const r = await credential('add', 'alice', '--label', 'printer', '--file', creds);
    expect(r.code).toBe(0);
    expect((await stat(creds)).mode & 0o7777).toBe(0o600);
    const after = await readFile(creds, 'utf8');
    expect(after.startsWith(before)).toBe(true);
    expect(after.slice(before.length)).toMatch(/^alice:printer:\$sgap1\$[^\r\n]+\r\n$/);
  });

  test('a label the user already has is refused, pointing to revoke, and the file is unchanged', async () => {
    await credential('add', 'alice', '--label', 'phone', '--file', creds);
    const before = await readFile(creds, 'utf8');
    const r = await credential('add', 'alice', '--label', 'phone', '--file', creds);
    expect(r).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toContain('smtpgate credential revoke alice phone');
    expect(await readFile(creds, 'utf8')).toBe(before);
  });

  test('a symlinked file stays a symlink; the file it points to gets the line', async () => {
    await mkdir(path.join(dir, 'real'));
    const real = path.join(dir, 'real', 'credentials');
    await writeFile(real, `${OTHER}\n`);
    await symlink('real/credentials', creds);
    expect((await credential('add', 'alice', '--label', 'phone', '--file', creds)).code).toBe(0);
    expect((await lstat(creds)).isSymbolicLink()).toBe(true);
    expect((await credentialsIn(real)).map((c) => c.label)).toEqual(['phone', 'phone']);
  });
});

describe('credential add --config', () => {
  test('writes the file auth.credentials names, and says the reload interval', async () => {
    await writeFile(path.join(dir, 'users'), USERS_ALICE);
    const r = await credential('add', 'alice@corp.example', '--label', 'phone', '--config', await writeConfig());
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('(a running smtpgate picks it up within auth.reloadInterval, 2s)');
    expect(r.stderr).not.toContain('warning');
    expect((await credentialsIn(creds)).map((c) => c.user)).toEqual(['alice@corp.example']);
  });

  test('warns (and still adds) when auth.backend is file only and the users file lacks the user', async () => {
    await writeFile(path.join(dir, 'users'), USERS_ALICE);
    const config = await writeConfig();
    const r = await credential('add', 'carol', '--label', 'phone', '--config', config);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^sgap[a-z2-7]{26}\n$/);
    expect(r.stderr).toContain(`warning: carol is not in the users file ${path.join(dir, 'users')}, and auth.backend is file only: this app password can't sign in until the user is added (smtpgate user add carol --config ${config})`);
    expect(await credentialsIn(creds)).toHaveLength(1);
  });

  test('no warning when another source may know the user', async () => {
    await writeFile(path.join(dir, 'users'), USERS_ALICE);
    const config = await writeConfig({ auth: { backend: ['file', 'http'], http: { url: 'https://auth.corp.example/smtp' } } });
    const r = await credential('add', 'carol', '--label', 'phone', '--config', config);
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain('warning');
  });

  test('a listener the config does not have is refused, naming the ones it has', async () => {
    const config = await writeConfig();
    const r = await credential('add', 'alice', '--label', 'phone', '--listeners', 'submision', '--config', config);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`smtpgate: --listeners: ${config} has no listener "submision" (its listeners: submission, smtps)\n`);
    await expect(stat(creds)).rejects.toThrow('ENOENT');
  });

  test('a config without auth.credentials, both --file and --config, or neither, is a clear refusal', async () => {
    const config = await writeConfig({ auth: { credentials: undefined } });
    const none = await credential('add', 'alice', '--label', 'phone', '--config', config);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain(`${config} names no credentials file (auth.credentials)`);
    const both = await credential('add', 'alice', '--label', 'phone', '--config', config, '--file', creds);
    expect(both.stderr).toContain('give either --file or --config, not both');
    const neither = await credential('list');
    expect(neither.code).toBe(1);
    expect(neither.stderr).toContain('which credentials file? Pass --file PATH');
  });
});

describe('a broken file is refused by every command and left as it was', () => {
  const broken = `${OTHER}\nalice:phone:$2b$12$notanappasswordhash\nno colons here\n`;

  test.each([
    ['add', ['add', 'carol', '--label', 'phone']],
    ['list', ['list']],
    ['revoke', ['revoke', 'bob', 'phone']],
  ])('%s', async (_name, args) => {
    await writeFile(creds, broken);
    const r = await credential(...args, '--file', creds);
    expect(r).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toContain(`smtpgate: ${creds} has 2 problems; fix them first`);
    expect(r.stderr).toContain(`  ${creds}:2: alice/phone: the hash is not an app password hash`);
    expect(r.stderr).toContain(`  ${creds}:3: expected "USER:LABEL:HASH[:OPTIONS]"`);
    expect(await readFile(creds, 'utf8')).toBe(broken);
  });
});

describe('credential list', () => {
  const lines = [
    '# app passwords',
    `alice@corp.example:printer:${hashSecret(generateSecret())}:created=2026-12-07T10:00:00Z expires=2999-12-07T10:00:00Z networks=10.1.3.0/24,2001:db8:3::/48 listeners=submission`,
    `alice@corp.example:old-phone:${hashSecret(generateSecret())}:created=2025-01-01T00:00:00Z expires=2026-01-01T00:00:00Z`,
    OTHER,
    '',
  ].join('\n');

  test('one line per app password with its networks, listeners, created, expires ("expired" once past); last use unknown with --file, said once', async () => {
    await writeFile(creds, lines);
    const r = await credential('list', '--file', creds);
    expect(r.code).toBe(0);
    const out = r.stdout.split('\n');
    expect(out[0]).toMatch(/^USER\s+LABEL\s+NETWORKS\s+LISTENERS\s+CREATED\s+EXPIRES\s+LAST USED$/);
    expect(out[1]).toMatch(/^alice@corp\.example\s+printer\s+10\.1\.3\.0\/24,2001:db8:3::\/48\s+submission\s+2026-12-07T10:00:00Z\s+2999-12-07T10:00:00Z\s+unknown$/);
    expect(out[2]).toMatch(/^alice@corp\.example\s+old-phone\s+any\s+any\s+2025-01-01T00:00:00Z\s+2026-01-01T00:00:00Z \(expired\)\s+unknown$/);
    expect(out[3]).toMatch(/^bob\s+phone\s+any\s+any\s+2026-01-01T00:00:00Z\s+never\s+unknown$/);
    expect(out.slice(4)).toEqual(['']);
    expect(r.stderr.match(/last used: unknown/g)).toHaveLength(1);
    expect(r.stderr).toContain('with --file alone there is no limits store');
  });

  test('USER narrows the list to that user', async () => {
    await writeFile(creds, lines);
    const r = await credential('list', 'bob', '--file', creds);
    expect(r.stdout.trim().split('\n').slice(1).map((l) => l.split(/\s+/)[1])).toEqual(['phone']);
  });

  test('--json gives times in ISO 8601, null where not set, and says last use is unknown and why', async () => {
    await writeFile(creds, lines);
    const r = await credential('list', 'alice@corp.example', '--json', '--file', creds);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.file).toBe(creds);
    expect(out.lastUse).toMatchObject({ known: false, reason: expect.stringContaining('--file alone') });
    expect(out.credentials).toEqual([
      { user: 'alice@corp.example', label: 'printer', created: '2026-12-07T10:00:00Z', expires: '2999-12-07T10:00:00Z', expired: false, networks: ['10.1.3.0/24', '2001:db8:3::/48'], listeners: ['submission'] },
      { user: 'alice@corp.example', label: 'old-phone', created: '2025-01-01T00:00:00Z', expires: '2026-01-01T00:00:00Z', expired: true, networks: null, listeners: null },
    ]);
  });

  test('a user without app passwords: nothing on stdout ([] with --json), a note on stderr, exit 0', async () => {
    await writeFile(creds, lines);
    expect(await credential('list', 'carol', '--file', creds)).toEqual({ code: 0, stdout: '', stderr: `no app passwords: ${creds} holds none for carol\n` });
    const json = await credential('list', 'carol', '--json', '--file', creds);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout).credentials).toEqual([]);
  });

  test('a file that does not exist yet lists nothing and exits 0', async () => {
    expect(await credential('list', '--file', creds)).toEqual({ code: 0, stdout: '', stderr: `no app passwords: ${creds} does not exist (yet)\n` });
  });
});

describe('credential revoke', () => {
  test('removes exactly that line; comments, blank lines and the others stay byte for byte', async () => {
    const add = await credential('add', 'alice', '--label', 'phone', '--file', creds);
    const phone = (await readFile(creds, 'utf8')).trimEnd();
    const before = `# app passwords\r\n${OTHER}\r\n\r\n${phone}\r\n# alice:phone was the old one\r\nalice:phone2:${hashSecret(add.stdout.trim())}`;
    await writeFile(creds, before);
    await chmod(creds, 0o600);
    const r = await credential('revoke', 'alice', 'phone', '--file', creds);
    expect(r).toEqual({ code: 0, stdout: `revoked app password phone of alice in ${creds} (a running smtpgate refuses it within auth.reloadInterval)\n`, stderr: '' });
    expect(await readFile(creds, 'utf8')).toBe(before.replace(`${phone}\r\n`, ''));
    expect((await stat(creds)).mode & 0o7777).toBe(0o600);
  });

  test('a label the user does not have, or a file that does not exist, is refused and nothing changes', async () => {
    await writeFile(creds, `${OTHER}\n`);
    const r = await credential('revoke', 'bob', 'tablet', '--file', creds);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`bob has no credential labelled tablet in ${creds}; see smtpgate credential list bob`);
    expect(await readFile(creds, 'utf8')).toBe(`${OTHER}\n`);
    const missing = await credential('revoke', 'bob', 'phone', '--file', path.join(dir, 'nope'));
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`${path.join(dir, 'nope')} does not exist; nothing was changed`);
  });
});

/**
 * Another smtpgate command holding the edit lock of `target`: a process that took it (with
 * smtpgate's own code) and waits. release() lets it go; kill() ends the process holding it.
 */
async function lockHolder(target: string): Promise<{ pid: number; release: () => Promise<void>; kill: () => Promise<void> }> {
  const script = `
    const { takeEditLock } = await import(process.argv[1]);
    const lock = await takeEditLock(process.argv[2], 'the file');
    process.stdin.once('data', () => lock.release().then(() => process.exit(0)));
    process.stdout.write('locked\\n');`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script, path.join(path.dirname(CLI), 'edit-lock.js'), target], { stdio: ['pipe', 'pipe', 'inherit'] });
  onTestFinished(() => void child.kill('SIGKILL'));
  const exited = once(child, 'exit');
  const [line] = (await Promise.race([once(child.stdout, 'data'), exited.then(() => [Buffer.from('exited')])])) as Buffer[];
  if (String(line) !== 'locked\n') throw new Error(`the lock holder did not take the lock (${String(line)})`);
  return {
    pid: child.pid!,
    release: async () => {
      child.stdin.end('release\n');
      await exited;
    },
    kill: async () => {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** `smtpgate ARGS` started; heard(text) resolves once its stderr holds the text. */
function startCli(args: readonly string[]): { heard: (text: string) => Promise<void>; done: Promise<CliResult> } {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const done = once(child, 'close').then(([code]) => ({ code: code as number, stdout, stderr }));
  const heard = (text: string) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (!stderr.includes(text)) return;
        child.stderr.off('data', check);
        resolve();
      };
      child.stderr.on('data', check);
      check();
      void done.then((r) => reject(new Error(`exited ${r.code} before saying ${JSON.stringify(text)}; stderr: ${r.stderr}`)));
    });
  return { heard, done };
}

describe('commands at once on one file take turns (the file\'s edit lock)', () => {
  test('revokes and adds run all at once: every revoked app password stays revoked, every added one is there', { timeout: 120_000 }, async () => {
    // Without the lock each command read, edited and renamed its own copy over the others': a
    // revoked app password came back, an added one vanished.
    const n = 5;
    const labels = Array.from({ length: n }, (_, i) => i);
    await writeFile(creds, labels.map((i) => `alice:stolen-${i}:${hashSecret(generateSecret())}\n`).join(''));
    const runs = await Promise.all(
      labels.flatMap((i) => [
        runCli(['credential', 'revoke', 'alice', `stolen-${i}`, '--file', creds], CLI, 0),
        runCli(['credential', 'add', 'bob', '--label', `new-${i}`, '--file', creds], CLI, 0),
      ]),
    );
    expect(runs.filter((r) => r.code !== 0)).toEqual([]);
    const left = (await credentialsIn(creds)).map((c) => `${c.user}:${c.label}`);
    expect(left.filter((c) => c.startsWith('alice:'))).toEqual([]);
    expect(left.toSorted()).toEqual(labels.map((i) => `bob:new-${i}`).toSorted());
  });

  test('a command finding the lock held waits, says so, and edits once the holder lets go', async () => {
    await writeFile(creds, `${OTHER}\n`);
    const holder = await lockHolder(creds);
    const revoke = startCli(['credential', 'revoke', 'bob', 'phone', '--file', creds]);
    await revoke.heard(`smtpgate: ${creds} is being edited by another smtpgate command (pid ${holder.pid}); waiting\n`);
    expect(await readFile(creds, 'utf8')).toBe(`${OTHER}\n`);
    await holder.release();
    expect(await revoke.done).toMatchObject({ code: 0, stdout: expect.stringContaining('revoked app password phone of bob') });
    // The last one gone: no credential left, and a comment keeps the file from being empty (a
    // running gate takes a file found empty only at its next check: config/file-watch.ts).
    expect(await credentialsIn(creds)).toEqual([]);
    expect(await readFile(creds, 'utf8')).toMatch(/^#[^\n]*\n$/);
    expect(await readdir(dir)).toEqual(['credentials']);
  });

  test('a lock left by a command that was killed while editing is taken over, with a line on stderr', async () => {
    await writeFile(creds, `${OTHER}\n`);
    const holder = await lockHolder(creds);
    await holder.kill();
    const r = await credential('add', 'alice', '--label', 'phone', '--file', creds);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`smtpgate: taking over ${creds}.lock: pid ${holder.pid}, which took it, is no longer running\n`);
    expect((await credentialsIn(creds)).map((c) => `${c.user}:${c.label}`)).toEqual(['bob:phone', 'alice:phone']);
    expect(await readdir(dir)).toEqual(['credentials']);
  });
});

describe('last use with the memory store: asked of the running instance over its admin address', () => {
  const TOKEN = 'a-long-enough-admin-token-0123456789';

  /** An admin server serving the memory store's table, as the instance does (app.ts wires the same route). */
  async function instance(usage: CredentialUsage, token?: string): Promise<number> {
    const server: Server = await startAdminServer({
      host: '127.0.0.1',
      port: 0,
      registry: new Registry(),
      readiness: () => ({ ready: true, reasons: [] }),
      routes: [credentialUsageAdminRoute(() => usage.list(), token ? { token } : {})],
    });
    onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
    return boundPort(server);
  }

  test('list shows the time and client of the last use, "never" for one not used; the token from metrics.adminTokenFile is sent', async () => {
    const phone = await credential('add', 'alice', '--label', 'phone', '--file', creds);
    await credential('add', 'alice', '--label', 'tablet', '--file', creds);
    expect(phone.code).toBe(0);
    const [used] = await credentialsIn(creds);
    const usage = new CredentialUsage(new LimiterStore({ backend: new MemoryBackend(), onFailure: 'deny', keyPrefix: 'smtpgate' }));
    await usage.record(used!, '10.1.3.7', new Date('2026-12-07T10:11:12.345Z'));
    await writeFile(path.join(dir, 'admin-token'), `${TOKEN}\n`);
    const config = await writeConfig({ metricsPort: await instance(usage, TOKEN), adminTokenFile: 'admin-token' });

    const r = await credential('list', '--config', config);
    expect(r).toMatchObject({ code: 0, stderr: '' });
    const [, phoneLine, tabletLine] = r.stdout.split('\n');
    expect(phoneLine).toMatch(/\s2026-12-07T10:11:12Z from 10\.1\.3\.7$/);
    expect(tabletLine).toMatch(/\snever$/);
    const json = JSON.parse((await credential('list', '--json', '--config', config)).stdout);
    expect(json.lastUse).toEqual({ known: true, from: 'instance' });
    expect(json.credentials.map((c: { lastUsed: unknown }) => c.lastUsed)).toEqual([{ at: '2026-12-07T10:11:12.345Z', client: '10.1.3.7' }, null]);
  });

  test('with no instance running, list still lists, shows "unknown", and says why once', async () => {
    await credential('add', 'alice', '--label', 'phone', '--file', creds);
    await credential('add', 'alice', '--label', 'tablet', '--file', creds);
    const port = await deadPort();
    const r = await credential('list', '--config', await writeConfig({ metricsPort: port }));
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split('\n').slice(1).map((l) => l.split(/\s+/).at(-1))).toEqual(['unknown', 'unknown']);
    expect(r.stderr.match(/last used: unknown/g)).toHaveLength(1);
    expect(r.stderr).toContain(`could not ask the running smtpgate at http://127.0.0.1:${port} (metrics.address`);
  });
});

describeWith(['redis-server'], 'last use with a Redis store: read from Redis directly', () => {
  const prefix = uniquePrefix('credential-cli');
  afterAll(() => dropPrefix(SHARED_REDIS_URL, prefix));

  /** The store an instance with this config writes to. */
  async function instanceStore(keyPrefix: string): Promise<LimiterStore> {
    const config = limitsConfigSchema.parse({ store: { kind: 'redis', url: SHARED_REDIS_URL, keyPrefix } });
    const backend = new RedisBackend(createRedisClient(config.store));
    expect(await backend.ready(2000)).toBe(true);
    const store = new LimiterStore({ backend, onFailure: 'deny', keyPrefix });
    onTestFinished(() => store.close());
    return store;
  }

  test('list shows what the instances recorded; revoke removes the revoked one\'s record and says so', async () => {
    const keyPrefix = `${prefix}-a`;
    const config = await writeConfig({ store: { kind: 'redis', url: SHARED_REDIS_URL, keyPrefix } });
    await credential('add', 'alice', '--label', 'phone', '--file', creds);
    await credential('add', 'alice', '--label', 'tablet', '--file', creds);
    const [phone, tablet] = await credentialsIn(creds);
    const store = await instanceStore(keyPrefix);
    const usage = new CredentialUsage(store);
    await usage.record(phone!, '2001:db8:3::7', new Date('2026-12-07T10:11:12Z'));
    await usage.record(tablet!, '10.1.3.8', new Date('2026-12-07T11:00:00Z'));

    const r = await credential('list', '--json', '--config', config);
    expect(r).toMatchObject({ code: 0, stderr: '' });
    const json = JSON.parse(r.stdout);
    expect(json.lastUse).toEqual({ known: true, from: 'redis' });
    expect(json.credentials.map((c: { lastUsed: unknown }) => c.lastUsed)).toEqual([
      { at: '2026-12-07T10:11:12.000Z', client: '2001:db8:3::7' },
      { at: '2026-12-07T11:00:00.000Z', client: '10.1.3.8' },
    ]);

    const revoke = await credential('revoke', 'alice', 'phone', '--config', config);
    expect(revoke.code).toBe(0);
    expect(revoke.stderr).toBe('its last-use record was removed from the limits store (redis)\n');
    expect([...(await store.notes(CREDENTIAL_USE_TABLE)).keys()]).toEqual([usageField(tablet!)]);
  });

  test('with Redis down, list still lists and says why; revoke still revokes and says the record stayed', async () => {
    const config = await writeConfig({ store: { kind: 'redis', url: `redis://127.0.0.1:${await deadPort()}`, keyPrefix: `${prefix}-b` } });
    await credential('add', 'alice', '--label', 'phone', '--file', creds);
    const list = await credential('list', '--config', config);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/\sunknown\n$/);
    expect(list.stderr).toBe("last used: unknown: the limiter store (redis) can't be reached\n");
    const revoke = await credential('revoke', 'alice', 'phone', '--config', config);
    expect(revoke.code).toBe(0);
    expect(revoke.stderr).toContain('its last-use record could not be removed from the limits store (redis)');
    expect(await credentialsIn(creds)).toEqual([]);
  });
});

/** Whether this process may make a mount namespace (root, or CAP_SYS_ADMIN), to mount a read-only directory. */
function canMountReadOnly(): boolean {
  try {
    const probe = os.tmpdir();
    execFileSync('unshare', ['-m', 'sh', '-c', 'mount --bind -o ro "$1" "$1"', 'sh', probe], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const MOUNTS = canMountReadOnly();
const describeReadOnly = MOUNTS || process.env.SMTPGATE_REQUIRE_ALL === '1' ? describe : describe.skip;
if (!MOUNTS) process.stderr.write(`\n*** ${process.env.SMTPGATE_REQUIRE_ALL === '1' ? 'FAILING' : 'SKIPPING'} "a credentials file on a read-only mount": unshare -m with a read-only bind mount is not allowed here (needs root)\n\n`);

describeReadOnly('a credentials file on a read-only mount (a Kubernetes Secret volume)', () => {
  // The edit lock is the first thing created beside the file, so its failure is what says this.
  test.each([
    ['add', ['add', 'alice', '--label', 'phone']],
    ['revoke', ['revoke', 'bob', 'phone']],
  ])('%s is refused with a clear message, and nothing changes or is left behind', async (_name, args) => {
    if (!MOUNTS) throw new Error('SMTPGATE_REQUIRE_ALL=1 and unshare -m with a read-only bind mount is not allowed here (run as root)');
    // The kubelet's layout: credentials → ..data/credentials, ..data → ..<timestamp>/.
    const mount = path.join(dir, 'secret');
    const version = path.join(mount, '..2026_12_07_10_00_00.123456789');
    await mkdir(version, { recursive: true });
    await writeFile(path.join(version, 'credentials'), `${OTHER}\n`);
    await symlink('..2026_12_07_10_00_00.123456789', path.join(mount, '..data'));
    await symlink('..data/credentials', path.join(mount, 'credentials'));
    const file = path.join(mount, 'credentials');
    const script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"';
    const r = await promisify(execFile)('unshare', ['-m', 'sh', '-c', script, 'sh', mount, process.execPath, CLI, 'credential', ...args, '--file', file]).then(
      () => ({ code: 0, stdout: '', stderr: '' }),
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(
      `smtpgate: cannot write ${file}: its directory ${version} is on a read-only filesystem (EROFS); nothing was changed. It is a Kubernetes Secret or ConfigMap volume, which only the kubelet writes: edit a copy (--file ./copy) and update the Secret from it\n`,
    );
    expect(await readFile(file, 'utf8')).toBe(`${OTHER}\n`);
    expect(await readdir(version)).toEqual(['credentials']);
  });
});

test('credential --help shows the printer example', async () => {
  const r = await credential('--help');
  expect(r.code).toBe(0);
  expect(r.stdout).toContain('--networks 10.1.3.0/24 --expires 365d');
});
