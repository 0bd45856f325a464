/**
 * `smtpgate log grep` without the command line: lines in (one file's, or stdin's, as an async
 * iterable, so a log of any size streams through), matching records out, as one-liners or as
 * JSON lines. Lines that are not smtpgate's JSON are counted and skipped, never fatal.
 */
import { parseLogLine, type LogRecord } from './log-line.js';
import { formatRecord } from './log-oneliner.js';
import { matchesQuery, type LogQuery } from './log-search.js';

export interface GrepOptions {
  readonly json: boolean;
  readonly utc: boolean;
}

export interface GrepCounts {
  matched: number;
  /** Lines that were not smtpgate JSON (blank lines aside). */
  skipped: number;
}

/** Reads `lines` to the end; writes each match through `write` (awaited: the reader waits for a slow terminal or pipe). */
export async function grepLines(lines: AsyncIterable<string>, query: LogQuery, opts: GrepOptions, write: (line: string) => Promise<void>, counts: GrepCounts): Promise<void> {
  for await (const line of lines) {
    const record = parseLogLine(line);
    if (!record) {
      if (line.trim() !== '') counts.skipped++;
      continue;
    }
    if (!matchesQuery(record, query)) continue;
    counts.matched++;
    await write(opts.json ? jsonLine(record) : formatRecord(record, opts));
  }
}

/**
 * C1 controls, Unicode line separators and bidi marks, which JSON.stringify leaves raw: as
 * `\uXXXX` they are the same JSON, and inert on a terminal.
 */
const JSON_UNSAFE = /[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/** The record as smtpgate wrote it (its wrapping removed), `time` filled in from a journal entry when it had none. */
export function jsonLine(r: LogRecord): string {
  const { at, levelName: _level, ...fields } = r;
  const out: Record<string, unknown> = fields.time === undefined && at !== undefined ? { ...fields, time: new Date(at).toISOString() } : fields;
  return JSON.stringify(out).replace(JSON_UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
