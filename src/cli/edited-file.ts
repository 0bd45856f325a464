/**
 * A file the CLI edits in place while a running smtpgate reads it (the users file for
 * `smtpgate user`, the app passwords file for `smtpgate credential`): which file (`--file`, or
 * the one a `--config` names), reading it through symlinks, and replacing it atomically with
 * its mode and owner kept.
 *
 * Symlinks are followed: the file a link points to is replaced and the link stays, so the
 * proxy (which reads through the same link) sees the edit. Where that file's directory can't be
 * written, the edit is refused with nothing changed. That is the normal case for a Kubernetes
 * Secret or ConfigMap volume (read-only, and owned by the kubelet, which swaps its `..data`
 * link on every sync): the fix is to edit a copy and update the Secret, and the message says so.
 *
 * An edit (read, change, replace) holds the file's edit lock (edit-lock.ts), so two smtpgate
 * commands on one file take turns instead of the later one renaming a stale copy over the
 * other's change. Before the rename the file is read again: a change by something that takes no
 * lock (an editor, a configuration manager) refuses the edit instead of being lost.
 */
import { randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import { open, readFile, realpath, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { loadConfigFile } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../parsing/errors.js';
import { CommandRefusal } from './command-refusal.js';
import { takeEditLock, type LockOptions } from './edit-lock.js';

/**
 * What an edit that removes the last entry leaves: never an empty file. A running smtpgate takes
 * a file it finds empty only if it is still empty at its next check (a file rewritten in place
 * is empty for a moment: config/file-watch.ts), and a revoked app password or a deleted user
 * must count at the first.
 */
const EMPTIED = '# No entries left: the last one was removed. This line keeps the file from being empty.\n';

/** Mode of a file a command creates: the proxy's group may read it, nobody else. */
export const NEW_FILE_MODE = 0o640;

export interface FileOptions {
  file?: string;
  config?: string;
}

/** A file named by a config setting, for `--config`. */
export interface FileInConfig {
  /** How messages name it: "users file". */
  readonly noun: string;
  /** Its setting: "auth.users". */
  readonly setting: string;
  readonly pick: (config: Config) => string | undefined;
}

/** The file to work on: `--file` as given, or the one `--config` names (with that config). */
export async function chooseFile(opts: FileOptions, which: FileInConfig): Promise<{ file: string; config?: Config }> {
  if (opts.file !== undefined && opts.config !== undefined) throw new CommandRefusal('give either --file or --config, not both');
  if (opts.file !== undefined) return { file: opts.file };
  if (opts.config === undefined) {
    throw new CommandRefusal(`which ${which.noun}? Pass --file PATH (the ${which.noun} itself) or --config FILE (uses its ${which.setting})`);
  }
  let config;
  try {
    config = await loadConfigFile(opts.config);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    const n = err.issues.length;
    throw new CommandRefusal(`${opts.config}: ${n} problem${n === 1 ? '' : 's'} found; nothing was changed:`, err.issues);
  }
  const file = which.pick(config);
  if (file === undefined) {
    const why = config.auth ? `auth.backend is ${config.auth.backend.join(', ')}` : 'it has no auth section';
    throw new CommandRefusal(`${opts.config} names no ${which.noun} (${which.setting}): ${why}; pass --file PATH to name one anyway`);
  }
  return { file, config };
}

/** The file a symlink points to, so that replacing it keeps the link (and edits what the proxy reads). */
export async function followSymlinks(file: string): Promise<string> {
  try {
    return await realpath(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return file;
    throw new CommandRefusal(`cannot read ${file}: ${(err as Error).message}`);
  }
}

/** A file as read: its text, and its stats (none when it does not exist yet). */
export interface FileText {
  readonly text: string;
  readonly stats?: Stats;
}

/** The file's text and stats; an empty text and no stats when it does not exist yet. */
export async function readFileText(target: string, shownAs: string): Promise<FileText> {
  try {
    const stats = await stat(target);
    return { text: await readFile(target, 'utf8'), stats };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { text: '' };
    throw new CommandRefusal(`cannot read ${shownAs}: ${(err as Error).message}`);
  }
}

/**
 * Edits `target` (a real path, see followSymlinks) holding its edit lock: reads it, passes it to
 * `edit`, which returns the new text or throws a CommandRefusal, and replaces the file with it.
 */
export async function editFile(target: string, shownAs: string, edit: (current: FileText) => string, lockOptions?: LockOptions): Promise<void> {
  let lock;
  try {
    lock = await takeEditLock(target, shownAs, lockOptions);
  } catch (err) {
    if (err instanceof CommandRefusal) throw err;
    throw new CommandRefusal(unwritableDirectory(shownAs, path.dirname(target), err as NodeJS.ErrnoException, 'its lock file'));
  }
  try {
    const current = await readFileText(target, shownAs);
    const text = edit(current);
    await replaceFileAtomically(target, shownAs, text === '' ? EMPTIED : text, current);
  } finally {
    await lock.release();
  }
}

/**
 * Replaces `target` with `text` so that a reader (the proxy, or a crash) sees either the old
 * file or the new one, never half of one: a temp file in the same directory, fsync, rename.
 * The old file's mode and owner are kept, so the proxy can still read what it read before; a
 * new file gets NEW_FILE_MODE. Refused when the file is no longer what was `read`.
 */
async function replaceFileAtomically(target: string, shownAs: string, text: string, read: FileText): Promise<void> {
  const dir = path.dirname(target);
  const previous = read.stats;
  const tmp = path.join(dir, `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let fh;
  try {
    fh = await open(tmp, 'wx', 0o600);
  } catch (err) {
    throw new CommandRefusal(unwritableDirectory(shownAs, dir, err as NodeJS.ErrnoException, 'a temporary file'));
  }
  try {
    if (previous) {
      const mine = await fh.stat();
      if (mine.uid !== previous.uid || mine.gid !== previous.gid) {
        await fh.chown(previous.uid, previous.gid).catch((err: Error) => {
          throw new CommandRefusal(
            `cannot keep the owner ${previous.uid}:${previous.gid} of ${shownAs} (${err.message}); run this as that user or as root. Nothing was changed`,
          );
        });
      }
    }
    await fh.writeFile(text, 'utf8');
    // Explicitly, since the mode given to open() is narrowed by the umask.
    await fh.chmod(previous ? previous.mode & 0o7777 : NEW_FILE_MODE);
    await fh.sync();
    await fh.close();
    fh = undefined;
    // As late as can be: the lock keeps smtpgate commands out, not an editor or a config manager.
    await refuseIfChanged(target, shownAs, read);
    await rename(tmp, target);
  } catch (err) {
    await fh?.close().catch(() => undefined);
    await rm(tmp, { force: true });
    if (err instanceof CommandRefusal) throw err;
    throw new CommandRefusal(`cannot write ${shownAs}: ${(err as Error).message}; nothing was changed`);
  }
  // Make the rename itself durable. Best effort: some filesystems refuse fsync on a directory,
  // and by now the new file is in place either way.
  try {
    const d = await open(dir, 'r');
    await d.sync().finally(() => d.close());
  } catch {
    /* see above */
  }
}

/**
 * Refuses when `target` is not what was read: someone wrote it since, without the lock. Written
 * over, their change would be lost without a word.
 */
async function refuseIfChanged(target: string, shownAs: string, read: FileText): Promise<void> {
  const now = await readFileText(target, shownAs);
  if (now.text !== read.text || (now.stats === undefined) !== (read.stats === undefined)) {
    throw new CommandRefusal(`${shownAs} changed while being edited by something else; nothing was changed; run the command again`);
  }
}

/**
 * Why no lock or temp file (`made`) could be made beside the file, and what to do. The file is
 * replaced by a rename inside its directory, so that directory must be writable, not only the
 * file; one message for both, since either is the first thing to fail there.
 */
function unwritableDirectory(shownAs: string, dir: string, err: NodeJS.ErrnoException, made: string): string {
  const readOnly = err.code === 'EROFS' || err.code === 'EACCES' || err.code === 'EPERM';
  if (!readOnly) return `cannot write ${shownAs}: cannot create ${made} in ${dir}: ${err.message}; nothing was changed`;
  const what = err.code === 'EROFS' ? 'is on a read-only filesystem' : 'is not writable by this user';
  // The kubelet's atomic writer keeps each version in a "..2026_12_07_10_00_00.123" folder.
  const kubernetes = /(^|\/)\.\.\d{4}_\d\d_\d\d_/.test(dir);
  const fix = kubernetes
    ? 'it is a Kubernetes Secret or ConfigMap volume, which only the kubelet writes: edit a copy (--file ./copy) and update the Secret from it'
    : 'the file is replaced by renaming a new one into its directory, so edit a writable copy (--file) and install it the way this one was installed, or run this as a user who may write there';
  return `cannot write ${shownAs}: its directory ${dir} ${what} (${err.code}); nothing was changed. ${fix[0]!.toUpperCase()}${fix.slice(1)}`;
}
