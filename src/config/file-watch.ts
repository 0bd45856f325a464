/**
 * Notices when files change on disk by polling their stat (inode, size, mtime). Polling, not
 * fs.watch: it follows symlinks, so the "live/ → archive/" swaps ACME clients and config
 * managers do are seen, and it behaves the same on every filesystem, including network ones.
 */
import { stat } from 'node:fs/promises';

export async function statFingerprint(files: readonly string[]): Promise<string> {
  const parts: string[] = [];
  for (const f of files) {
    const st = await stat(f).catch(() => undefined);
    parts.push(st ? `${st.ino}:${st.size}:${st.mtimeMs}` : 'missing');
  }
  return parts.join('|');
}

/** Whether a fingerprint (statFingerprint) names a file of size 0. */
function hasEmptyFile(fingerprint: string): boolean {
  return fingerprint.split('|').some((part) => part.split(':')[1] === '0');
}

export class FileWatcher {
  readonly #files: () => readonly string[];
  readonly #onChange: () => Promise<void>;
  #fingerprint = '';
  #timer: NodeJS.Timeout | undefined;
  #busy = false;
  /** A change seen with a file cut to nothing: acted on only if the next poll sees it unchanged. */
  #emptySeen: string | undefined;

  /** `files` is re-read on every poll, so the set may change after a reload. */
  constructor(files: () => readonly string[], onChange: () => Promise<void>) {
    this.#files = files;
    this.#onChange = onChange;
  }

  async start(intervalMs: number): Promise<void> {
    this.#fingerprint = await statFingerprint(this.#files());
    this.#timer = setInterval(() => void this.poll(), intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Calls onChange when any file changed since the last poll. Returns true when it did. */
  async poll(): Promise<boolean> {
    if (this.#busy) return false;
    this.#busy = true;
    try {
      const fp = await statFingerprint(this.#files());
      if (fp === this.#fingerprint) {
        this.#emptySeen = undefined;
        return false;
      }
      // A file rewritten in place is first cut to nothing, then written: a poll in between
      // would load an empty users or credentials file (everyone signed out, and a broken
      // rewrite would then keep that). An empty file counts once it has stayed so for a poll.
      if (hasEmptyFile(fp) && fp !== this.#emptySeen) {
        this.#emptySeen = fp;
        return false;
      }
      this.#emptySeen = undefined;
      this.#fingerprint = fp;
      await this.#onChange();
      return true;
    } finally {
      this.#busy = false;
    }
  }
}
