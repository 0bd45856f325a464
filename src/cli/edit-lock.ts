/**
 * The edit lock of a file the CLI edits: `<file>.lock` beside it, created with O_EXCL, so that
 * smtpgate commands editing one file take turns. Without it each command read the file, edited
 * its copy and renamed it into place, and the later rename won with a stale copy: a revoked app
 * password came back, an added one vanished.
 *
 * The lock is advisory: only smtpgate commands take it. An editor or a configuration manager
 * that writes the file meanwhile is caught by the check before the rename (edited-file.ts).
 *
 * The lock file holds who took it (pid, host, boot and pid namespace, time) and a random token.
 * A command that finds it waits while its holder keeps it at most PATIENCE_MS, and gives up
 * with the holder's pid after that. A lock whose holder can't be editing any more is taken over
 * with a line on stderr: its pid is not running here, it was taken before this host last
 * started, or it is older than STALE_AFTER_MS (a holder on another host, or pid reuse).
 */
import { createHash, randomBytes } from 'node:crypto';
import { open, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { CommandRefusal } from './command-refusal.js';

/** How long one holder may keep a command waiting. An edit holds the lock for milliseconds. */
export const PATIENCE_MS = 10_000;
/** A lock this old is taken over whoever holds it: no edit takes that long. */
export const STALE_AFTER_MS = 10 * 60_000;
const FIRST_RETRY_MS = 10;
const LAST_RETRY_MS = 200;

/** Where a process runs: a pid can be checked only from the same host, boot and pid namespace. */
export interface ProcessPlace {
  readonly host: string;
  /** Linux's boot id; another one means the host restarted since. */
  readonly boot?: string;
  /** Linux's pid namespace (containers); pids of another one can't be checked from here. */
  readonly pidns?: string;
}

/** What a lock file says of whoever took it. */
export interface LockHolder extends ProcessPlace {
  readonly pid: number;
  readonly since: string;
  readonly token: string;
}

export interface LockOptions {
  /** PATIENCE_MS unless a test needs less. */
  readonly patienceMs?: number;
  /** Where the waiting and taking-over lines go: stderr. */
  readonly say?: (line: string) => void;
}

/** A lock this command holds. */
export interface EditLock {
  /** Removes the lock file, if it is still this command's (see releaseLock). */
  release(): Promise<void>;
}

/**
 * Takes the edit lock of `target` (a file's real path, so every link to it shares one lock),
 * waiting for another command's edit to end. Refuses when one holder keeps it past the
 * patience. An error creating the lock file (a read-only directory) is thrown as it came, for
 * the caller to word as it words the same error for its temporary file.
 */
export async function takeEditLock(target: string, shownAs: string, options: LockOptions = {}): Promise<EditLock> {
  const lock = `${target}.lock`;
  const say = options.say ?? ((line: string) => process.stderr.write(`${line}\n`));
  const place = await processPlace();
  const me: LockHolder = { pid: process.pid, ...place, since: new Date().toISOString(), token: randomBytes(16).toString('hex') };
  const content = `${JSON.stringify(me)}\n`;
  // One holder may keep us waiting PATIENCE_MS; a queue of commands each editing in turn may take longer.
  let waitingFor: string | undefined;
  let giveUpAt = 0;
  let retryMs = FIRST_RETRY_MS;
  for (;;) {
    if (await createLockFile(lock, content)) return { release: () => releaseLock(lock, content) };
    const found = await readLockFile(lock);
    if (!found) continue;
    const stale = staleness(found.holder, Date.now() - found.mtimeMs, place, isRunning);
    if (stale !== undefined && (await removeStaleLock(lock, found.identity))) {
      say(`smtpgate: taking over ${lock}: ${stale}`);
      continue;
    }
    if (found.identity !== waitingFor) {
      if (waitingFor === undefined) say(`smtpgate: ${shownAs} is being edited by another smtpgate command (${holderName(found.holder, place)}); waiting`);
      waitingFor = found.identity;
      giveUpAt = Date.now() + (options.patienceMs ?? PATIENCE_MS);
    } else if (Date.now() >= giveUpAt) {
      throw new CommandRefusal(
        `${shownAs} is being edited by another smtpgate command (${holderName(found.holder, place)}); nothing was changed; try again. If no smtpgate command is running, remove ${lock}`,
      );
    }
    await sleep(retryMs);
    retryMs = Math.min(retryMs * 2, LAST_RETRY_MS);
  }
}

/**
 * Why a lock's holder can't be editing any more, or undefined while it may be. A lock that
 * can't be read (being written this instant, or not smtpgate's) is waited for until it is old.
 */
export function staleness(holder: LockHolder | undefined, ageMs: number, here: ProcessPlace, running: (pid: number) => boolean): string | undefined {
  if (ageMs > STALE_AFTER_MS) return `it was taken ${Math.round(ageMs / 60_000)} minutes ago, and no edit takes that long`;
  if (!holder || holder.host !== here.host) return undefined;
  if (holder.boot !== undefined && here.boot !== undefined && holder.boot !== here.boot) return `pid ${holder.pid} took it before this host last started`;
  if (holder.pidns !== here.pidns) return undefined;
  return running(holder.pid) ? undefined : `pid ${holder.pid}, which took it, is no longer running`;
}

function holderName(holder: LockHolder | undefined, here: ProcessPlace): string {
  if (!holder) return 'its lock file does not say which';
  return holder.host === here.host ? `pid ${holder.pid}` : `pid ${holder.pid} on ${holder.host}`;
}

/** Whether a process with this pid exists here; EPERM: it does, as another user. */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function processPlace(): Promise<ProcessPlace> {
  const boot = await readFile('/proc/sys/kernel/random/boot_id', 'utf8').then((s) => s.trim(), () => undefined);
  const pidns = await readlink('/proc/self/ns/pid').catch(() => undefined);
  return { host: os.hostname(), ...(boot ? { boot } : {}), ...(pidns ? { pidns } : {}) };
}

/** True when this command created the lock file; false when it exists. */
async function createLockFile(lock: string, content: string): Promise<boolean> {
  let fh;
  try {
    // Readable by all: whoever waits names the holder from it.
    fh = await open(lock, 'wx', 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    await fh.writeFile(content, 'utf8');
    await fh.close();
    return true;
  } catch (err) {
    await fh.close().catch(() => undefined);
    await rm(lock, { force: true });
    throw err;
  }
}

interface FoundLock {
  readonly holder: LockHolder | undefined;
  readonly mtimeMs: number;
  /** This lock file and no later one at the same name: its inode, time and bytes. */
  readonly identity: string;
}

/** The lock file as it is now; undefined when it is gone. */
async function readLockFile(file: string): Promise<FoundLock | undefined> {
  let fh;
  try {
    fh = await open(file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const stats = await fh.stat();
    const text = await fh.readFile('utf8');
    return { holder: parseHolder(text), mtimeMs: stats.mtimeMs, identity: `${stats.ino}:${stats.mtimeMs}:${text}` };
  } finally {
    await fh.close();
  }
}

function parseHolder(text: string): LockHolder | undefined {
  try {
    const h = JSON.parse(text) as Partial<LockHolder>;
    return Number.isInteger(h.pid) && h.pid! > 0 && typeof h.host === 'string' && typeof h.token === 'string' ? (h as LockHolder) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Removes a stale lock, unless it was replaced meanwhile. Several commands may find one stale
 * lock at once, and the one that removes it first may take the next lock at once: whoever
 * removed "the stale lock" after that would remove the new one. So each first creates a marker
 * named after that stale lock (O_EXCL), looks again, and removes it only if it is still there;
 * one at a time, and none after it is gone. False when another command is at it, or it was
 * replaced.
 */
async function removeStaleLock(lock: string, identity: string): Promise<boolean> {
  const marker = `${lock}.takeover-${createHash('sha256').update(identity).digest('hex').slice(0, 16)}`;
  try {
    await writeFile(marker, `${process.pid}\n`, { flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    if ((await readLockFile(lock))?.identity !== identity) return false;
    await rm(lock);
    return true;
  } finally {
    await rm(marker, { force: true });
  }
}

/**
 * Removes the lock file if it still holds this command's token: a command that looked stale
 * (stopped for STALE_AFTER_MS) may have lost it to another, whose lock stays.
 */
async function releaseLock(lock: string, content: string): Promise<void> {
  const now = await readFile(lock, 'utf8').catch(() => undefined);
  if (now === content) await rm(lock, { force: true });
}
