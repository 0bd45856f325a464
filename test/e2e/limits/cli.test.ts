/**
 * `smtpgate limits clear` and `limits list` through the real CLI against a Redis store: a CIDR
 * clears every address in its range, clearing what isn't there exits 1 and says so, and both
 * commands print the same report format (text, and JSON with --json).
 *
 * The counts are made by a `Limits` on the same Redis and key prefix, as a running instance
 * would make them.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect, onTestFinished, test } from 'vitest';
import { CLI } from '../../helpers/child-gate.js';
import { writeGateFiles } from '../../helpers/gate.js';
import { describeWith } from '../../helpers/programs.js';
import { dropPrefix, failedLogin, limitsHarness, SHARED_REDIS_URL, uniquePrefix, type LimitsHarness } from '../../helpers/redis.js';

const run = promisify(execFile);

interface Outcome {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the CLI; resolves with the exit code whatever it is. */
async function cli(...args: string[]): Promise<Outcome> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { timeout: 20_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw err;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

const LIMITS = 'auth: { failuresPerUserIp: 3/15m, failuresPerIp: 10/15m }';

/** A config file for the CLI and a Limits counting in the same Redis keys. */
async function setup(tag: string): Promise<{ configFile: string; limits: LimitsHarness['limits'] }> {
  const prefix = uniquePrefix(tag);
  onTestFinished(() => dropPrefix(SHARED_REDIS_URL, prefix));
  const store = `store: { kind: redis, url: "${SHARED_REDIS_URL}", keyPrefix: "${prefix}" }`;
  const h = limitsHarness(`${store}\n${LIMITS}`);
  onTestFinished(() => h.close());
  expect(await h.limits.start(2000)).toBe(true);
  const { configFile } = await writeGateFiles({ backendPort: 1, extraYaml: `limits:\n  ${store}\n  ${LIMITS}\n` });
  return { configFile, limits: h.limits };
}

async function fail(limits: LimitsHarness['limits'], ip: string, username: string, times: number): Promise<void> {
  for (let i = 0; i < times; i++) await failedLogin(limits, { session: `c-${ip}-${i}`, ip, listener: 'submission', username });
}

/** The report's rows with the seconds left blanked: they tick between two commands. */
function rows(report: string): string[] {
  return report
    .split('\n')
    .filter((l) => l.startsWith('  ') && l.trim() !== '(none)')
    .map((l) => l.trim().replace(/\d+s\b/g, 'Ns'));
}

describeWith(['redis-server'], 'limits CLI on a Redis store', () => {
  test('`limits clear 10.0.0.0/24` clears every address in the range, and only those; list shows what is left', async () => {
    const { configFile, limits } = await setup('cli-cidr');
    await fail(limits, '10.0.0.1', 'alice', 3);
    await fail(limits, '10.0.0.200', 'bob', 1);
    await fail(limits, '10.0.0.255', 'carol', 2);
    await fail(limits, '10.0.1.1', 'dave', 3);

    const cleared = await cli('limits', 'clear', '10.0.0.0/24', '--config', configFile);
    expect(cleared.code).toBe(0);
    expect(cleared.stdout).toMatch(/^cleared 6 entries for 10\.0\.0\.0\/24 \(ip 10\.0\.0\.0\/24\)/);
    expect(rows(cleared.stdout).sort()).toEqual(
      [
        'alice from 10.0.0.1  3 failures  Ns left',
        '10.0.0.1  3/10 failures  window ends in Ns',
        '10.0.0.255  2/10 failures  window ends in Ns',
        'carol from 10.0.0.255  2/3 failures  window ends in Ns',
        '10.0.0.200  1/10 failures  window ends in Ns',
        'bob from 10.0.0.200  1/3 failures  window ends in Ns',
      ].sort(),
    );
    const left = await cli('limits', 'list', '--config', configFile);
    expect(left.code).toBe(0);
    expect(rows(left.stdout).sort()).toEqual(['dave from 10.0.1.1  3 failures  Ns left', '10.0.1.1  3/10 failures  window ends in Ns'].sort());
  });

  test('an IPv6 range clears the /64 networks clients are counted in', async () => {
    const { configFile, limits } = await setup('cli-v6');
    await fail(limits, '2001:db8:0:1::5', 'alice', 1);
    await fail(limits, '2001:db8:0:2::5', 'bob', 1);
    await fail(limits, '2001:db9::5', 'carol', 1);
    const cleared = await cli('limits', 'clear', '2001:db8::/32', '--json', '--config', configFile);
    expect(cleared.code).toBe(0);
    const removed = (JSON.parse(cleared.stdout) as { removed: { limiter: string; key: string }[] }).removed.map((r) => `${r.limiter} ${r.key}`).sort();
    expect(removed).toEqual(['auth_ip 2001:db8:0:1::/64', 'auth_ip 2001:db8:0:2::/64', 'auth_user_ip alice|2001:db8:0:1::/64', 'auth_user_ip bob|2001:db8:0:2::/64']);
  });

  test('clearing what has nothing stored exits 1 and says so, for an address, a range and a user', async () => {
    const { configFile, limits } = await setup('cli-nothing');
    await fail(limits, '192.0.2.1', 'alice', 1);
    for (const target of ['192.0.2.99', '198.51.100.0/24', 'nobody']) {
      const r = await cli('limits', 'clear', target, '--config', configFile);
      expect(r.code, target).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(new RegExp(`^smtpgate: nothing to clear for ${target.replace(/[./]/g, '\\$&')} \\((ip|user) [^)]+\\): the store holds no lockout, count or suspension for it`));
    }
    // What is there is still there.
    expect(rows((await cli('limits', 'list', '--config', configFile)).stdout)).toContain('alice from 192.0.2.1  1/3 failures  window ends in Ns');
  });

  test('`clear` prints what it removed in the same rows as `list`, in text and in JSON', async () => {
    const { configFile, limits } = await setup('cli-format');
    await fail(limits, '192.0.2.7', 'alice', 3);
    await fail(limits, '192.0.2.7', 'bob', 1);
    const listed = await cli('limits', 'list', '--config', configFile);
    const listedJson = JSON.parse((await cli('limits', 'list', '--json', '--config', configFile)).stdout) as Record<string, unknown>;
    const cleared = await cli('limits', 'clear', '192.0.2.7', '--config', configFile);
    expect(rows(cleared.stdout).sort()).toEqual(rows(listed.stdout).sort());
    // The same section headings, in the same order.
    const headings = (text: string) => text.split('\n').filter((l) => /^\S.*:$/.test(l));
    expect(headings(cleared.stdout)).toEqual(headings(listed.stdout));

    await fail(limits, '192.0.2.8', 'carol', 3);
    const clearedJson = JSON.parse((await cli('limits', 'clear', '192.0.2.8', '--json', '--config', configFile)).stdout) as { cleared: Record<string, unknown> };
    expect(Object.keys(clearedJson.cleared).sort()).toEqual(Object.keys(listedJson).sort());
    expect(clearedJson.cleared.lockedUsers).toEqual([{ user: 'carol', ip: '192.0.2.8', failures: 3, retryAfterSeconds: expect.any(Number) }]);
  });
});
