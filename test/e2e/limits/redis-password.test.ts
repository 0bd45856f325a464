/**
 * `limits.store.passwordFile` (and `.sentinelPasswordFile`): the Redis password read from a file
 * (a Kubernetes Secret, a systemd credential) instead of written into the config (issue 14,
 * item 16). Checked against a
 * real redis-server that requires the password; a file smtpgate can't use is refused by
 * `smtpgate check` and `run`, naming the file and the field.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, test } from 'vitest';
import { checkConfigFile } from '../../../src/app.js';
import { ConfigError } from '../../../src/parsing/errors.js';
import { makeTestCert } from '../../helpers/pki.js';
import { describeWith } from '../../helpers/programs.js';
import { limitsHarness, startRedisServer, startSentinel, type LimitsHarness, type RedisProcess } from '../../helpers/redis.js';

const PASSWORD = 'redis-Secret_with:odd@chars';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function tempDir(tag: string): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), `smtpgate-${tag}-`));
  dirs.push(d);
  return d;
}

describeWith(['redis-server'], 'limits.store.passwordFile against a Redis that requires a password', () => {
  let redis: RedisProcess | undefined;
  let direct: Redis | undefined;
  const harnesses: LimitsHarness[] = [];

  afterAll(async () => {
    await Promise.all(harnesses.map((h) => h.close()));
    direct?.disconnect();
    await redis?.kill();
  });

  async function harnessWith(fileText: string, tag: string): Promise<LimitsHarness> {
    const dir = await tempDir('redis-password');
    const file = path.join(dir, 'password');
    await writeFile(file, fileText);
    const h = limitsHarness(`
store:
  kind: redis
  url: redis://127.0.0.1:${redis!.port}
  passwordFile: ${file}
  keyPrefix: pwfile-${tag}
messagesPerUser: 10/1h
`);
    harnesses.push(h);
    return h;
  }

  test.each([
    ['the bare password', PASSWORD, 'bare'],
    ['the password and a newline', `${PASSWORD}\n`, 'lf'],
    ['the password and CRLF', `${PASSWORD}\r\n`, 'crlf'],
  ])('counts in Redis with the password from a file holding %s', async (_what, text, tag) => {
    redis ??= await startRedisServer({ args: ['--requirepass', PASSWORD] });
    direct ??= new Redis(redis.port, '127.0.0.1', { password: PASSWORD, maxRetriesPerRequest: 1 });
    const h = await harnessWith(text, tag);
    expect(await h.limits.start(3000)).toBe(true);
    expect(await h.limits.mailFrom({ session: 's1', ip: '192.0.2.1', listener: 'submission', user: 'alice', sender: 'alice@example.com' })).toBeUndefined();
    expect(await direct.get(`pwfile-${tag}:messages_user:c:alice`)).toBe('1');
  });

  test('a wrong password in the file leaves the store down: onStoreFailure answers, nothing is counted in Redis', async () => {
    redis ??= await startRedisServer({ args: ['--requirepass', PASSWORD] });
    direct ??= new Redis(redis.port, '127.0.0.1', { password: PASSWORD, maxRetriesPerRequest: 1 });
    const h = await harnessWith('not-the-password\n', 'wrong');
    expect(await h.limits.start(1500)).toBe(false);
    expect(h.limits.storeUp).toBe(false);
    expect(await direct.keys('pwfile-wrong:*')).toEqual([]);
  });
});

describe('smtpgate check: limits.store.passwordFile', () => {
  async function configWith(passwordFile: string | undefined, store = ['url: redis://127.0.0.1:6379']): Promise<{ dir: string; file: string }> {
    const dir = await tempDir('check-redis-password');
    const cert = await makeTestCert('mail.test');
    await writeFile(path.join(dir, 'cert.pem'), cert.cert);
    await writeFile(path.join(dir, 'key.pem'), cert.key);
    await writeFile(path.join(dir, 'users'), 'alice:$2y$05$abcdefghijklmnopqrstuu5Zx0Nq6PzGQy4Qb0fxVt7bLqfJ0mB1e\n');
    const file = path.join(dir, 'smtpgate.yaml');
    await writeFile(
      file,
      `
listeners:
  - name: submission
    address: 127.0.0.1:0
tls:
  cert: cert.pem
  key: key.pem
auth:
  users: users
backend:
  address: 127.0.0.1:25
limits:
  store:
    kind: redis
${store.map((l) => `    ${l}`).join('\n')}
${passwordFile === undefined ? '' : `    passwordFile: ${passwordFile}`}
`,
    );
    return { dir, file };
  }

  /** What `smtpgate check` reports, one issue a line; [] when it passes. */
  const problems = (file: string): Promise<string[]> =>
    checkConfigFile(file, 'check').then(
      () => [],
      (err: unknown) => (err instanceof ConfigError ? err.message.split('\n') : Promise.reject(err)),
    );

  test('a password file next to the config, named relative to it, passes', async () => {
    const { dir, file } = await configWith('redis-password');
    await writeFile(path.join(dir, 'redis-password'), `${PASSWORD}\n`);
    expect(await problems(file)).toEqual([]);
  });

  test('a missing password file is refused, naming the file and limits.store.passwordFile', async () => {
    const { dir, file } = await configWith('redis-password');
    const p = await problems(file);
    expect(p).toHaveLength(1);
    expect(p[0]).toMatch(new RegExp(`^${dir}/redis-password: limits\\.store\\.passwordFile: cannot read the Redis password file: .*ENOENT`));
  });

  test('a sentinel password file is checked the same way, against limits.store.sentinelPasswordFile', async () => {
    const { dir, file } = await configWith(undefined, ['sentinels: ["127.0.0.1:26379"]', 'name: m', 'sentinelPasswordFile: sentinel-password']);
    await writeFile(path.join(dir, 'sentinel-password'), 'two\nlines\n');
    expect(await problems(file)).toEqual([
      `${dir}/sentinel-password: limits.store.sentinelPasswordFile: the Redis password file must hold the password on one line (no CR, LF or NUL inside, not empty)`,
    ]);
  });

  test.each([
    ['empty', ''],
    ['only a newline', '\n'],
    ['two lines', `${PASSWORD}\nsecond\n`],
    ['a CR inside', 'pass\rword'],
    ['a NUL', 'pass\0word'],
  ])('a password file that is %s is refused with the fix', async (_what, text) => {
    const { dir, file } = await configWith('redis-password');
    await writeFile(path.join(dir, 'redis-password'), text);
    expect(await problems(file)).toEqual([
      `${dir}/redis-password: limits.store.passwordFile: the Redis password file must hold the password on one line (no CR, LF or NUL inside, not empty)`,
    ]);
  });
});

describeWith(['redis-server'], 'limits.store.sentinelPasswordFile against sentinels that require a password', () => {
  const procs: RedisProcess[] = [];
  let h: LimitsHarness | undefined;

  afterAll(async () => {
    await h?.close();
    await Promise.all(procs.map((p) => p.kill()));
  });

  test('finds the master through sentinels that require the password from the file', async () => {
    const dir = await tempDir('sentinel-password');
    const master = await startRedisServer();
    procs.push(master);
    const sentinel = await startSentinel({ dir, masterPort: master.port, name: 'm', quorum: 1, extraConfig: [`requirepass ${PASSWORD}`] });
    procs.push(sentinel);
    await writeFile(path.join(dir, 'sentinel-password'), `${PASSWORD}\n`);
    h = limitsHarness(`
store:
  kind: redis
  sentinels: ["127.0.0.1:${sentinel.port}"]
  name: m
  sentinelPasswordFile: ${path.join(dir, 'sentinel-password')}
  keyPrefix: sentinel-pwfile
messagesPerUser: 10/1h
`);
    expect(await h.limits.start(3000)).toBe(true);
    expect(await h.limits.mailFrom({ session: 's1', ip: '192.0.2.1', listener: 'submission', user: 'alice', sender: 'alice@example.com' })).toBeUndefined();
    const direct = new Redis(master.port, '127.0.0.1', { maxRetriesPerRequest: 1 });
    try {
      expect(await direct.get('sentinel-pwfile:messages_user:c:alice')).toBe('1');
    } finally {
      direct.disconnect();
    }
  });
});
