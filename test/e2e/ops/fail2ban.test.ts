/**
 * The shipped fail2ban filter (deploy/fail2ban/filter.d/smtpgate.conf) read by the real
 * fail2ban-regex, against the log a real smtpgate (dist/) writes while real clients (swaks)
 * fail to sign in over IPv4 and IPv6: each failed AUTH is matched exactly once, with the
 * client's address; a lockout's own lines add nothing; a successful sign-in and relayed mail
 * match nothing; and a user name written to look like another client's address can't make
 * the filter name that address. The shipped jails pass fail2ban-client's configuration test.
 */
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { startChildGate, type ChildGate } from '../../helpers/child-gate.js';
import { listener } from '../../helpers/config.js';
import { ALICE } from '../../helpers/gate.js';
import { REPO } from '../../helpers/ops-traffic.js';
import { describeWith } from '../../helpers/programs.js';
import { eventually } from '../../helpers/sessions.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

const run = promisify(execFile);
const FILTER = path.join(REPO, 'deploy/fail2ban/filter.d/smtpgate.conf');
const JAILS = path.join(REPO, 'deploy/fail2ban/jail.d');
/** A user name that spells the JSON of another client address (log injection). */
const HOSTILE_USER = 'x","client":"10.9.9.9';

/** swaks's exit code says how the session went; the log is what these tests read. */
async function swaks(args: string[]): Promise<string> {
  return run('swaks', ['--quit-after', 'AUTH', '--tls', '--auth', 'PLAIN', ...args], { timeout: 20_000 }).then(
    (r) => r.stdout,
    (e: { stdout: string }) => e.stdout,
  );
}

/** The addresses fail2ban-regex matches in `logFile`, one per matched line. */
async function matchedAddresses(logFile: string, mode: 'normal' | 'aggressive'): Promise<string[]> {
  const { stdout } = await run('fail2ban-regex', ['--out', 'ip', logFile, `${FILTER}[mode=${mode}]`], { timeout: 60_000 });
  return stdout.split('\n').filter(Boolean).sort();
}

describeWith(['fail2ban-regex', 'fail2ban-client', 'swaks'], 'fail2ban: the shipped filter on the log smtpgate writes', () => {
  let backend: RecordingBackend;
  let gate: ChildGate;
  let logFile: string;
  let dir: string;

  beforeAll(async () => {
    backend = await startRecordingBackend();
    gate = await startChildGate({
      backendPort: backend.port,
      listeners: [listener('submission', { tls: 'starttls' }), listener('v6', { address: '[::1]:0', tls: 'starttls' })],
      users: [ALICE],
      config: { limits: { auth: { failuresPerUserIp: '3/15m', failuresPerIp: '50/15m', lockFor: '15m' } } },
    });
    const v4 = ['--server', `127.0.0.1:${gate.port('submission')}`];
    const v6 = ['--server', '::1', '--port', String(gate.port('v6'))];
    // Allowed: a sign-in and a relayed message, from the address that fails below.
    const sent = await run('swaks', [...v4, '--tls', '--auth', 'PLAIN', '--auth-user', ALICE.name, '--auth-password', ALICE.password, '--from', 'alice@corp.test', '--to', 'bob@corp.test'], { timeout: 20_000 });
    expect(sent.stdout).toMatch(/<- {2}250 /);
    // Three wrong passwords (the third starts alice's lockout), the right one during the lockout,
    // an unknown user, the hostile user name: six refused AUTHs from 127.0.0.1.
    for (let i = 0; i < 3; i++) expect(await swaks([...v4, '--auth-user', ALICE.name, '--auth-password', `wrong-${i}`])).toMatch(/<~\* 535 5\.7\.8 /);
    expect(await swaks([...v4, '--auth-user', ALICE.name, '--auth-password', ALICE.password])).toMatch(/<~\* 454 4\.7\.0 /);
    expect(await swaks([...v4, '--auth-user', 'nobody', '--auth-password', 'guess-1'])).toMatch(/<~\* 535 5\.7\.8 /);
    expect(await swaks([...v4, '--auth-user', HOSTILE_USER, '--auth-password', 'guess-2'])).toMatch(/<~\* 535 5\.7\.8 /);
    // Two wrong passwords from ::1.
    for (let i = 0; i < 2; i++) expect(await swaks([...v6, '--auth-user', ALICE.name, '--auth-password', `wrong-v6-${i}`])).toMatch(/<~\* 535 5\.7\.8 /);
    // Other abuse, for mode=aggressive: AUTH in cleartext, and a user name with a line break.
    const plain = await SmtpTalk.connect(gate.port('submission'));
    await plain.read();
    await plain.cmd('EHLO client.test');
    expect((await plain.cmd(`AUTH PLAIN ${Buffer.from('\0alice\0guess-3').toString('base64')}`)).code).toBe(538);
    plain.close();
    const broken = await SmtpTalk.connect(gate.port('submission'));
    await broken.read();
    await broken.cmd('EHLO client.test');
    await broken.starttls();
    await broken.cmd('EHLO client.test');
    const newline = Buffer.from('\0x\n{"client":"10.9.9.8","stage":"auth","code":535,"enhanced":"5.7.8","reason":"auth_failed"}\0pw').toString('base64');
    expect((await broken.cmd(`AUTH PLAIN ${newline}`)).code).toBe(501);
    broken.close();

    const refusedAuth = () => gate.logs.filter((l) => String(l.msg).startsWith('refused: ') && l.stage === 'auth');
    await eventually(() => refusedAuth().length >= 10, 'the ten AUTH refusals in the log');
    dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-fail2ban-'));
    logFile = path.join(dir, 'smtpgate.log');
    // The log exactly as smtpgate wrote it to stdout.
    await writeFile(logFile, gate.output().split('\n').filter((l) => l.startsWith('{')).join('\n') + '\n');
  }, 120_000);

  afterAll(async () => {
    await gate?.stop();
    await backend?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('mode=normal matches each failed sign-in once (wrong password, unknown user, AUTH during a lockout), with the client address, IPv4 and IPv6; the sign-in and the relayed message match nothing', async () => {
    const lines = (await readFile(logFile, 'utf8')).split('\n');
    // The lockout was logged, and a relayed message too: the filter sees both and counts neither.
    expect(lines.some((l) => l.includes('"msg":"AUTH lockout: too many failed logins for this user from this address"'))).toBe(true);
    expect(lines.some((l) => l.includes('"msg":"transaction"') && l.includes('"outcome":"relayed"'))).toBe(true);
    expect(lines.some((l) => l.includes('"msg":"authenticated"'))).toBe(true);
    expect(await matchedAddresses(logFile, 'normal')).toEqual(['127.0.0.1', '127.0.0.1', '127.0.0.1', '127.0.0.1', '127.0.0.1', '127.0.0.1', '::1', '::1']);
  });

  test('a user name spelling another address (x","client":"10.9.9.9) or a line break with JSON behind it is matched as its own client, never as the address it spells', async () => {
    const lines = (await readFile(logFile, 'utf8')).split('\n');
    expect(lines.some((l) => l.includes('10.9.9.9')), 'the hostile user name is in the log').toBe(true);
    const aggressive = await matchedAddresses(logFile, 'aggressive');
    expect(aggressive.filter((a) => a.startsWith('10.9.9.'))).toEqual([]);
    expect(new Set(aggressive)).toEqual(new Set(['127.0.0.1', '::1']));
  });

  test('mode=aggressive adds AUTH before STARTTLS and malformed AUTH, once each', async () => {
    const aggressive = await matchedAddresses(logFile, 'aggressive');
    expect(aggressive.filter((a) => a === '127.0.0.1')).toHaveLength(8);
    expect(aggressive.filter((a) => a === '::1')).toHaveLength(2);
  });

  test('the shipped jails (journal and log file) pass fail2ban-client\'s configuration test with the shipped filter', async () => {
    for (const jail of await readdir(JAILS)) {
      const conf = path.join(dir, `etc-${jail}`);
      await cp('/etc/fail2ban', conf, { recursive: true });
      await rm(path.join(conf, 'jail.d'), { recursive: true, force: true });
      await mkdir(path.join(conf, 'jail.d'));
      await cp(FILTER, path.join(conf, 'filter.d/smtpgate.conf'));
      // The log file jail names /var/log/smtpgate/smtpgate.log: point it at this test's log.
      const text = (await readFile(path.join(JAILS, jail), 'utf8')).replace(/^logpath\s*=.*$/m, `logpath  = ${logFile}`);
      await writeFile(path.join(conf, 'jail.d/smtpgate.conf'), text);
      const { stdout, stderr } = await run('fail2ban-client', ['-c', conf, '--test'], { timeout: 30_000 });
      expect(`${stdout}${stderr}`, jail).toMatch(/OK: configuration test is successful/);
    }
  });
});
