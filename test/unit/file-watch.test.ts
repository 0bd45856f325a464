/**
 * The users, credentials, policy, certificate and DKIM key files are watched by polling their
 * stat. A file rewritten in place (`> users`, most scripts) is cut to nothing first: a poll that
 * lands in between must not load the empty file.
 */
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileWatcher } from '../../src/config/file-watch.js';

let dir: string;
let file: string;
/** What the file held at each reload. */
let loads: string[];
let watcher: FileWatcher;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-watch-'));
  file = path.join(dir, 'users');
  await writeFile(file, 'alice:$2b$12$hash\n');
  loads = [];
  watcher = new FileWatcher(
    () => [file],
    async () => {
      loads.push(await readFile(file, 'utf8'));
    },
  );
  // Polled by hand below: the interval never fires within a test.
  await watcher.start(3_600_000);
  watcher.stop();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('FileWatcher', () => {
  it('reloads at the first poll after a change, and not again while nothing changes', async () => {
    await writeFile(file, 'bob:$2b$12$other\n');
    expect(await watcher.poll()).toBe(true);
    expect(await watcher.poll()).toBe(false);
    expect(loads).toEqual(['bob:$2b$12$other\n']);
  });

  it('does not load a file caught empty in the middle of a rewrite: the content written next is what loads', async () => {
    await truncate(file, 0);
    expect(await watcher.poll()).toBe(false);
    await writeFile(file, 'alice:not-a-bcrypt-hash\n');
    expect(await watcher.poll()).toBe(true);
    expect(loads).toEqual(['alice:not-a-bcrypt-hash\n']);
  });

  it('loads a file that was emptied on purpose once it has stayed empty for a poll', async () => {
    await truncate(file, 0);
    expect(await watcher.poll()).toBe(false);
    expect(await watcher.poll()).toBe(true);
    expect(loads).toEqual(['']);
  });
});
