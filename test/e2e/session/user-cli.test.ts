/**
 * `smtpgate user add|passwd|del`, as an operator or a script runs it: the real built binary,
 * the password on stdin (or typed at a real terminal, through `script`), and a users file that
 * the proxy's own parser must accept afterwards. The line-wise edit underneath is pinned down
 * first, as pure functions.
 */
import { spawn } from 'node:child_process';
import { chmod, lstat, mkdtemp, readFile, readdir, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { hash, verify } from '@node-rs/bcrypt';
import { beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { applyUsersFileEdit } from '../../../src/auth/users-file-edit.js';
import { parseUsersFile } from '../../../src/auth/users-file.js';
import { describeWith } from '../../helpers/programs.js';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const CLI = path.join(ROOT, 'dist/cli/main.js');
const FILE = '/etc/smtpgate/users';

let H1: string;
let H2: string;
let H3: string;
beforeAll(async () => {
  [H1, H2, H3] = await Promise.all([hash('alice-password', 4), hash('bob-password', 4), hash('carol-password', 4)]);
});

describe('line-wise edit of the users file (pure)', () => {
  const sample = () => `# smtpgate users\nalice:${H1}\n\n# the shared mailbox\nbob:${H2}\n`;

  test('add appends the user at the end and keeps every other byte', () => {
    const result = applyUsersFileEdit(sample(), FILE, { op: 'add', username: 'carol', hash: H3 });
    expect(result).toEqual({ ok: true, text: `${sample()}carol:${H3}\n` });
  });

  test('add to an empty (new) file writes one line', () => {
    expect(applyUsersFileEdit('', FILE, { op: 'add', username: 'carol', hash: H3 })).toEqual({ ok: true, text: `carol:${H3}\n` });
  });

  test('add ends an unterminated last line first, and follows a CRLF file\'s line endings', () => {
    expect(applyUsersFileEdit(`alice:${H1}`, FILE, { op: 'add', username: 'carol', hash: H3 })).toEqual({ ok: true, text: `alice:${H1}\ncarol:${H3}\n` });
    expect(applyUsersFileEdit(`alice:${H1}\r\n`, FILE, { op: 'add', username: 'carol', hash: H3 })).toEqual({ ok: true, text: `alice:${H1}\r\ncarol:${H3}\r\n` });
  });

  test('passwd replaces only the target line, keeping its place and line ending', () => {
    const text = `# users\r\nalice:${H1}\r\nbob:${H2}\r\n`;
    expect(applyUsersFileEdit(text, FILE, { op: 'passwd', username: 'alice', hash: H3 })).toEqual({ ok: true, text: `# users\r\nalice:${H3}\r\nbob:${H2}\r\n` });
  });

  test('passwd finds an indented line the way the parser reads it, and never a user whose name merely starts the same', () => {
    const text = `alice2:${H2}\n  alice:${H1}\n# alice:${H1}\n`;
    expect(applyUsersFileEdit(text, FILE, { op: 'passwd', username: 'alice', hash: H3 })).toEqual({ ok: true, text: `alice2:${H2}\nalice:${H3}\n# alice:${H1}\n` });
  });

  test('del removes only the target line, with its line ending', () => {
    expect(applyUsersFileEdit(sample(), FILE, { op: 'del', username: 'alice' })).toEqual({ ok: true, text: `# smtpgate users\n\n# the shared mailbox\nbob:${H2}\n` });
    expect(applyUsersFileEdit(`alice:${H1}\nbob:${H2}`, FILE, { op: 'del', username: 'bob' })).toEqual({ ok: true, text: `alice:${H1}\n` });
  });

  test('add of an existing user is refused, pointing to passwd', () => {
    const result = applyUsersFileEdit(sample(), FILE, { op: 'add', username: 'alice', hash: H3 });
    expect(result).toMatchObject({ ok: false, reason: 'user_exists' });
    expect(!result.ok && result.message).toContain('smtpgate user passwd alice');
  });

  test('passwd and del of a missing user are refused', () => {
    expect(applyUsersFileEdit(sample(), FILE, { op: 'passwd', username: 'carol', hash: H3 })).toMatchObject({ ok: false, reason: 'no_such_user' });
    expect(applyUsersFileEdit(sample(), FILE, { op: 'del', username: 'carol' })).toMatchObject({ ok: false, reason: 'no_such_user' });
  });

  test('an invalid user name is refused', () => {
    expect(applyUsersFileEdit(sample(), FILE, { op: 'add', username: 'carol:x', hash: H3 })).toMatchObject({ ok: false, reason: 'invalid_username' });
    expect(applyUsersFileEdit(sample(), FILE, { op: 'add', username: '', hash: H3 })).toMatchObject({ ok: false, reason: 'invalid_username' });
  });

  test('a file with any problem is refused with the parser\'s issues, whatever the edit', () => {
    const text = `alice:${H1}\nbob:$apr1$abc$def\n`;
    for (const edit of [
      { op: 'add', username: 'carol', hash: H3 },
      { op: 'passwd', username: 'alice', hash: H3 },
      { op: 'del', username: 'alice' },
    ] as const) {
      const result = applyUsersFileEdit(text, FILE, edit);
      expect(result).toMatchObject({ ok: false, reason: 'file_has_problems', issues: [{ file: FILE, line: 2 }] });
    }
  });
});

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built binary with `input` as its stdin (a pipe, so not a terminal). */
function cli(args: string[], input = ''): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    // The binary stops reading after the first line, or never reads (del): ignore EPIPE.
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

async function hashOf(file: string, username: string): Promise<string> {
  const parsed = parseUsersFile(await readFile(file, 'utf8'), file);
  if (!parsed.ok) throw new Error(`users file refused: ${JSON.stringify(parsed.issues)}`);
  const record = parsed.users.get(username);
  if (!record) throw new Error(`no user ${username} in ${file}`);
  return record.hash;
}

describe('smtpgate user (the real binary, password on stdin)', () => {
  let dir: string;
  let users: string;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-user-'));
    users = path.join(dir, 'users');
  });

  test('add creates a users file the proxy accepts, with a bcrypt hash that verifies, mode 0640', async () => {
    const r = await cli(['user', 'add', 'alice', '--file', users, '--cost', '4'], 'correct horse\n');
    expect(r).toEqual({ code: 0, stdout: `added user alice to ${users} (a running smtpgate picks it up on reload)\n`, stderr: '' });
    const h = await hashOf(users, 'alice');
    expect(h).toMatch(/^\$2b\$04\$/);
    expect(await verify('correct horse', h)).toBe(true);
    expect((await stat(users)).mode & 0o777).toBe(0o640);
    // No temp file is left behind.
    expect(await readdir(dir)).toEqual(['users']);
  });

  test('a CRLF after the password on stdin is not part of it', async () => {
    await cli(['user', 'add', 'alice', '--file', users, '--cost', '4'], 'correct horse\r\nsecond line\n');
    expect(await verify('correct horse', await hashOf(users, 'alice'))).toBe(true);
  });

  test('without --cost the hash has cost 12', async () => {
    expect((await cli(['user', 'add', 'alice', '--file', users], 'correct horse\n')).code).toBe(0);
    expect(await hashOf(users, 'alice')).toMatch(/^\$2b\$12\$/);
  });

  test('add of an existing user fails with exit 1, suggests passwd, and leaves the file as it was', async () => {
    const before = `alice:${H1}\n`;
    await writeFile(users, before);
    const r = await cli(['user', 'add', 'alice', '--file', users, '--cost', '4'], 'another password\n');
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('already exists');
    expect(r.stderr).toContain('smtpgate user passwd alice');
    expect(await readFile(users, 'utf8')).toBe(before);
  });

  test('passwd changes the hash: the new password verifies, the old one no longer does, and nothing else moves', async () => {
    await writeFile(users, `# team\nalice:${H1}\nbob:${H2}\n`);
    const r = await cli(['user', 'passwd', 'alice', '--file', users, '--cost', '4'], 'a new password\n');
    expect(r).toMatchObject({ code: 0, stdout: `changed the password of user alice in ${users} (a running smtpgate picks it up on reload)\n` });
    const h = await hashOf(users, 'alice');
    expect(await verify('a new password', h)).toBe(true);
    expect(await verify('alice-password', h)).toBe(false);
    expect(await readFile(users, 'utf8')).toBe(`# team\nalice:${h}\nbob:${H2}\n`);
  });

  test('passwd and del of a user that is not there fail with exit 1', async () => {
    await writeFile(users, `alice:${H1}\n`);
    const passwd = await cli(['user', 'passwd', 'carol', '--file', users, '--cost', '4'], 'a new password\n');
    expect(passwd.code).toBe(1);
    expect(passwd.stderr).toContain(`user carol is not in ${users}`);
    expect((await cli(['user', 'del', 'carol', '--file', users])).code).toBe(1);
    expect(await readFile(users, 'utf8')).toBe(`alice:${H1}\n`);
  });

  test('del removes only that user; comments, blank lines and other users stay byte-identical', async () => {
    await writeFile(users, `# smtpgate users\r\n\r\nalice:${H1}\r\n  # shared\r\nbob:${H2}\r\ncarol:${H3}`);
    const r = await cli(['user', 'del', 'bob', '--file', users]);
    expect(r).toMatchObject({ code: 0, stdout: `removed user bob from ${users} (a running smtpgate picks it up on reload)\n` });
    expect(await readFile(users, 'utf8')).toBe(`# smtpgate users\r\n\r\nalice:${H1}\r\n  # shared\r\ncarol:${H3}`);
  });

  test('a malformed file is refused with every problem listed, and left untouched', async () => {
    const before = `alice:${H1}\nbob:$apr1$xyz$abc\nno colon here\n`;
    await writeFile(users, before);
    const r = await cli(['user', 'add', 'carol', '--file', users, '--cost', '4'], 'carol password\n');
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${users} has 2 problems`);
    expect(r.stderr).toContain(`${users}:2: user "bob": an MD5 ($apr1$) hash`);
    expect(r.stderr).toContain(`${users}:3: expected "NAME:HASH"`);
    expect(await readFile(users, 'utf8')).toBe(before);
  });

  test('--config edits the file named by its auth.users, relative to the config', async () => {
    const config = path.join(dir, 'smtpgate.yaml');
    await writeFile(
      config,
      ['listeners:', '  - name: submission', '    address: 127.0.0.1:587', 'tls:', '  cert: cert.pem', '  key: key.pem', 'auth:', '  users: users', 'backend:', '  address: 10.0.0.5:25', ''].join('\n'),
    );
    const r = await cli(['user', 'add', 'alice', '--config', config, '--cost', '4'], 'correct horse\n');
    expect(r).toMatchObject({ code: 0, stdout: `added user alice to ${users} (a running smtpgate picks it up on reload)\n` });
    expect(await verify('correct horse', await hashOf(users, 'alice'))).toBe(true);
  });

  test('a config without an auth section, a broken config, or neither --file nor --config is a clear error', async () => {
    const config = path.join(dir, 'smtpgate.yaml');
    await writeFile(config, ['listeners:', '  - name: plain', '    address: 127.0.0.1:25', '    tls: none', '    requireTls: false', '    requireAuth: false', 'backend:', '  address: 10.0.0.5:25', ''].join('\n'));
    const noAuth = await cli(['user', 'add', 'alice', '--config', config], 'correct horse\n');
    expect(noAuth.code).toBe(1);
    expect(noAuth.stderr).toContain(`${config} names no users file (auth.users): it has no auth section`);

    await writeFile(config, 'backend:\n  adress: 10.0.0.5:25\n');
    const broken = await cli(['user', 'add', 'alice', '--config', config], 'correct horse\n');
    expect(broken.code).toBe(1);
    expect(broken.stderr).toContain('did you mean "address"?');

    const neither = await cli(['user', 'add', 'alice'], 'correct horse\n');
    expect(neither.code).toBe(1);
    expect(neither.stderr).toContain('--file PATH');
    expect(neither.stderr).toContain('--config FILE');
  });

  test.each([
    ['a short password', 'short1\n', 'too short (6 characters); use at least 8'],
    ['an empty password', '\n', 'the password is empty'],
    ['an empty stdin', '', 'stdin is not a terminal and is empty'],
    ['a password with NUL', 'pass\0word123\n', 'NUL, CR or LF'],
    ['a password with a CR inside', 'pass\rword123\n', 'NUL, CR or LF'],
    ['a password bcrypt would truncate', `${'x'.repeat(73)}\n`, 'bcrypt ignores everything after byte 72'],
  ])('%s is refused and nothing is written', async (_name, input, message) => {
    await writeFile(users, `alice:${H1}\n`);
    const r = await cli(['user', 'passwd', 'alice', '--file', users, '--cost', '4'], input);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(message);
    expect(await readFile(users, 'utf8')).toBe(`alice:${H1}\n`);
  });

  test('an invalid name or --cost outside 4-15 is refused before anything else', async () => {
    const name = await cli(['user', 'add', 'al ice', '--file', users, '--cost', '4'], 'correct horse\n');
    expect(name.code).toBe(1);
    expect(name.stderr).toContain('user name "al ice" is not valid');
    for (const cost of ['3', '16', 'x']) {
      const r = await cli(['user', 'add', 'alice', '--file', users, '--cost', cost], 'correct horse\n');
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('--cost: expected a whole number from 4 to 15');
    }
    await expect(stat(users)).rejects.toThrow();
  });

  test('a symlinked users file stays a symlink; the file it points to is edited', async () => {
    const real = path.join(dir, 'users.real');
    await writeFile(real, `alice:${H1}\n`);
    await symlink('users.real', users);
    expect((await cli(['user', 'del', 'alice', '--file', users])).code).toBe(0);
    expect((await lstat(users)).isSymbolicLink()).toBe(true);
    // alice gone from the file the link points to; a comment keeps it from being empty (a running
    // gate takes a file found empty only at its next check: config/file-watch.ts).
    expect(await readFile(real, 'utf8')).toMatch(/^#[^\n]*\n$/);
  });

  test('dels and adds run all at once on one file: every removed user stays removed, every added one is there', { timeout: 120_000 }, async () => {
    // Each takes the file's edit lock in turn; without it the later rename won with a stale copy.
    const n = 4;
    const names = Array.from({ length: n }, (_, i) => i);
    await writeFile(users, names.map((i) => `old-${i}:${H1}\n`).join(''));
    const runs = await Promise.all(
      names.flatMap((i) => [cli(['user', 'del', `old-${i}`, '--file', users]), cli(['user', 'add', `new-${i}`, '--file', users, '--cost', '4'], 'correct horse\n')]),
    );
    expect(runs.filter((r) => r.code !== 0)).toEqual([]);
    const parsed = parseUsersFile(await readFile(users, 'utf8'), users);
    if (!parsed.ok) throw new Error(`users file refused: ${JSON.stringify(parsed.issues)}`);
    expect([...parsed.users.keys()].toSorted()).toEqual(names.map((i) => `new-${i}`).toSorted());
    expect(await readdir(dir)).toEqual(['users']);
  });

  test("the file's mode is kept across passwd and del", async () => {
    await writeFile(users, `alice:${H1}\nbob:${H2}\n`);
    await chmod(users, 0o600);
    expect((await cli(['user', 'passwd', 'alice', '--file', users, '--cost', '4'], 'a new password\n')).code).toBe(0);
    expect((await stat(users)).mode & 0o7777).toBe(0o600);
    await chmod(users, 0o644);
    expect((await cli(['user', 'del', 'bob', '--file', users])).code).toBe(0);
    expect((await stat(users)).mode & 0o7777).toBe(0o644);
  });
});

describeWith(['script'], 'smtpgate user at a terminal (through script(1))', () => {
  /** Runs the binary on a pseudo-terminal, typing each answer once its prompt has appeared. */
  function atTerminal(args: string[], answers: string[]): Promise<CliResult> {
    const command = [process.execPath, CLI, ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
    return new Promise((resolve, reject) => {
      const child = spawn('script', ['-qec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let prompts = 0;
      child.stdout.on('data', (c: Buffer) => {
        stdout += c.toString();
        const seen = (stdout.match(/Password for \S+: |Again: /g) ?? []).length;
        while (prompts < seen) child.stdin.write(`${answers[prompts++] ?? ''}\r`);
      });
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr: '' }));
    });
  }

  test('prompts twice without echoing the password, and adds the user', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-user-tty-'));
    const users = path.join(dir, 'users');
    const r = await atTerminal(['user', 'add', 'alice', '--file', users, '--cost', '4'], ['typed secret', 'typed secret']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('Password for alice: ');
    expect(r.stdout).toContain('Again: ');
    expect(r.stdout).not.toContain('typed secret');
    expect(r.stdout).toContain(`added user alice to ${users}`);
    expect(await verify('typed secret', await hashOf(users, 'alice'))).toBe(true);
  });

  test('refuses two different answers and writes nothing', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-user-tty-'));
    const users = path.join(dir, 'users');
    const r = await atTerminal(['user', 'add', 'alice', '--file', users, '--cost', '4'], ['typed secret', 'typed secreT']);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('the passwords do not match');
    await expect(stat(users)).rejects.toThrow();
  });
});
