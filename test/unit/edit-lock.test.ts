/**
 * The edit lock that makes smtpgate commands on one file take turns (src/cli/edit-lock.ts), and
 * the check before the rename that catches writers taking no lock (editFile in
 * src/cli/edited-file.ts): which locks are stale (pure), then real lock files in a temp
 * directory, taken by several callers in this process. The same between processes, with the
 * real binary, is in test/e2e/auth/credential-cli.test.ts and test/e2e/session/user-cli.test.ts.
 */
import { writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { beforeEach, describe, expect, test } from 'vitest';
import { CommandRefusal } from '../../src/cli/command-refusal.js';
import { staleness, STALE_AFTER_MS, takeEditLock, type LockHolder, type ProcessPlace } from '../../src/cli/edit-lock.js';
import { editFile } from '../../src/cli/edited-file.js';

const HERE: ProcessPlace = { host: 'mail1', boot: 'boot-a', pidns: 'pid:[1]' };
const holder = (over: Partial<LockHolder> = {}): LockHolder => ({ ...HERE, pid: 4242, since: '2026-12-07T10:00:00.000Z', token: 't', ...over });
const running = (...pids: number[]) => (pid: number) => pids.includes(pid);

describe('which lock is stale (pure)', () => {
  test('a holder still running here is not', () => {
    expect(staleness(holder(), 1000, HERE, running(4242))).toBeUndefined();
  });

  test('a holder no longer running here is, naming its pid', () => {
    expect(staleness(holder(), 1000, HERE, running())).toBe('pid 4242, which took it, is no longer running');
  });

  test('one taken before this host last started is, even if its pid runs again', () => {
    expect(staleness(holder({ boot: 'boot-b' }), 1000, HERE, running(4242))).toBe('pid 4242 took it before this host last started');
  });

  test("a holder on another host or in another pid namespace (a container) can't be checked: not stale until old", () => {
    expect(staleness(holder({ host: 'mail2' }), 1000, HERE, running())).toBeUndefined();
    expect(staleness(holder({ pidns: 'pid:[2]' }), 1000, HERE, running())).toBeUndefined();
    expect(staleness(holder({ host: 'mail2' }), STALE_AFTER_MS + 1, HERE, running())).toMatch(/^it was taken 10 minutes ago/);
  });

  test('one that can\'t be read (being written this instant) is not, until old', () => {
    expect(staleness(undefined, 1000, HERE, running())).toBeUndefined();
    expect(staleness(undefined, STALE_AFTER_MS + 1, HERE, running())).toMatch(/^it was taken 10 minutes ago/);
  });

  test('one older than STALE_AFTER_MS is, whoever holds it', () => {
    expect(staleness(holder(), STALE_AFTER_MS + 60_000, HERE, running(4242))).toBe('it was taken 11 minutes ago, and no edit takes that long');
  });
});

let dir: string;
let target: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-edit-lock-'));
  target = path.join(dir, 'credentials');
});

/** Lines said by a taker, and a promise for the first one that matches. */
function listener() {
  const lines: string[] = [];
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  const say = (line: string) => {
    lines.push(line);
    for (const w of waiters.filter((w) => w.pattern.test(line))) w.resolve(line);
  };
  const next = (pattern: RegExp) => new Promise<string>((resolve) => waiters.push({ pattern, resolve }));
  return { lines, say, next };
}

describe('the lock file', () => {
  test('is <file>.lock while held, says who holds it, and is gone once released', async () => {
    const lock = await takeEditLock(target, 'credentials');
    const holder = JSON.parse(await readFile(`${target}.lock`, 'utf8'));
    expect(holder).toMatchObject({ pid: process.pid, host: os.hostname(), token: expect.stringMatching(/^[0-9a-f]{32}$/) });
    expect(Date.parse(holder.since)).not.toBeNaN();
    await lock.release();
    expect(await readdir(dir)).toEqual([]);
  });

  test('a second taker waits while it is held, says so once, and gets it once it is released', async () => {
    const first = await takeEditLock(target, 'credentials');
    const heard = listener();
    let second: { release(): Promise<void> } | undefined;
    const taking = takeEditLock(target, 'credentials', { say: heard.say }).then((l) => (second = l));
    expect(await heard.next(/waiting/)).toBe(`smtpgate: credentials is being edited by another smtpgate command (pid ${process.pid}); waiting`);
    expect(second).toBeUndefined();
    await first.release();
    await taking;
    expect(heard.lines).toHaveLength(1);
    expect(JSON.parse(await readFile(`${target}.lock`, 'utf8')).pid).toBe(process.pid);
    await second!.release();
    expect(await readdir(dir)).toEqual([]);
  });

  test('a holder that keeps it past the patience gets a refusal naming its pid and the lock file; its lock stays', async () => {
    const first = await takeEditLock(target, 'credentials');
    const before = await readFile(`${target}.lock`, 'utf8');
    const heard = listener();
    const refusal = await takeEditLock(target, 'credentials', { patienceMs: 50, say: heard.say }).catch((e: unknown) => e);
    expect(refusal).toBeInstanceOf(CommandRefusal);
    expect((refusal as Error).message).toBe(
      `credentials is being edited by another smtpgate command (pid ${process.pid}); nothing was changed; try again. If no smtpgate command is running, remove ${target}.lock`,
    );
    expect(await readFile(`${target}.lock`, 'utf8')).toBe(before);
    await first.release();
  });

  test('a release leaves a lock that is no longer its own (taken over while it looked stale)', async () => {
    const mine = await takeEditLock(target, 'credentials');
    const theirs = `${JSON.stringify(holder({ host: os.hostname(), token: 'theirs' }))}\n`;
    await writeFile(`${target}.lock`, theirs);
    await mine.release();
    expect(await readFile(`${target}.lock`, 'utf8')).toBe(theirs);
  });

  test('several takers finding one stale lock at once: one takes it over, and all still take turns', async () => {
    // A lock whose holder can't be running: taken on this host before it last started (Linux's boot id).
    await writeFile(`${target}.lock`, `${JSON.stringify(holder({ host: os.hostname(), boot: 'a boot long gone' }))}\n`);
    const heard = listener();
    let holding = 0;
    let overlaps = 0;
    const turn = async () => {
      const lock = await takeEditLock(target, 'credentials', { say: heard.say });
      holding += 1;
      if (holding > 1) overlaps += 1;
      await new Promise((resolve) => setImmediate(resolve));
      holding -= 1;
      await lock.release();
    };
    await Promise.all(Array.from({ length: 6 }, turn));
    expect(overlaps).toBe(0);
    expect(heard.lines.filter((l) => l.startsWith('smtpgate: taking over'))).toEqual([`smtpgate: taking over ${target}.lock: pid 4242 took it before this host last started`]);
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('an edit under the lock (editFile)', () => {
  test('replaces the file with what the edit returns, and leaves no lock or temp file', async () => {
    await writeFile(target, 'one\n');
    await editFile(target, 'credentials', (current) => `${current.text}two\n`);
    expect(await readFile(target, 'utf8')).toBe('one\ntwo\n');
    expect(await readdir(dir)).toEqual(['credentials']);
  });

  test('is refused, keeping the other change, when something that takes no lock (an editor) writes the file meanwhile', async () => {
    await writeFile(target, 'one\n');
    const refusal = await editFile(target, 'credentials', (current) => {
      // vi saving its buffer while the command edits.
      writeFileSync(target, 'one\nfrom vi\n');
      return `${current.text}two\n`;
    }).catch((e: unknown) => e);
    expect(refusal).toBeInstanceOf(CommandRefusal);
    expect((refusal as Error).message).toBe('credentials changed while being edited by something else; nothing was changed; run the command again');
    expect(await readFile(target, 'utf8')).toBe('one\nfrom vi\n');
    expect(await readdir(dir)).toEqual(['credentials']);
  });

  test('is refused when a file that did not exist was created meanwhile', async () => {
    const refusal = await editFile(target, 'credentials', () => {
      writeFileSync(target, '');
      return 'two\n';
    }).catch((e: unknown) => e);
    expect((refusal as Error).message).toContain('changed while being edited by something else');
    expect(await readFile(target, 'utf8')).toBe('');
  });

  test('an edit that refuses writes nothing and releases the lock', async () => {
    await writeFile(target, 'one\n');
    const refusal = await editFile(target, 'credentials', () => {
      throw new CommandRefusal('no such label');
    }).catch((e: unknown) => e);
    expect((refusal as Error).message).toBe('no such label');
    expect(await readdir(dir)).toEqual(['credentials']);
  });

  test('a directory that does not exist: the lock file is what cannot be created', async () => {
    const missing = path.join(dir, 'nope', 'credentials');
    const refusal = await editFile(missing, 'nope/credentials', () => 'x\n').catch((e: unknown) => e);
    expect((refusal as Error).message).toMatch(new RegExp(`^cannot write nope/credentials: cannot create its lock file in ${path.join(dir, 'nope')}: ENOENT.*; nothing was changed$`));
    await mkdir(path.join(dir, 'nope'));
    expect(await readdir(path.join(dir, 'nope'))).toEqual([]);
  });
});
