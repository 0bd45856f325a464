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

export class FileWatcher {
  readonly #files: () => readonly string[];
  readonly #onChange: () => Promise<void>;
  #fingerprint = '';
  #timer: NodeJS.Timeout | undefined;
  #busy = false;

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
      if (fp === this.#fingerprint) return false;
      this.#fingerprint = fp;
      await this.#onChange();
      return true;
    } finally {
      this.#busy = false;
    }
  }
}
