/**
 * One line of smtpgate's JSON log, read back: `smtpgate log grep` and anything else that reads
 * the log go through here. Pure: a line in, a record or nothing out.
 *
 * A line reaches a reader in several wrappings, all accepted:
 *   - as pino wrote it: `{"level":30,...}` (or `"level":"info"`);
 *   - behind a syslog priority, `<6>{...}` (the `journal` format, for journald's SyslogLevelPrefix);
 *   - behind any other prefix that ends before the first `{` (`journalctl -o short`, a syslog
 *     file: `May  7 10:00:00 host smtpgate[42]: {...}`); `journalctl -o cat` gives the raw line;
 *   - as `journalctl -o json` prints an entry: the line is its MESSAGE, and its
 *     `__REALTIME_TIMESTAMP` stands in for a missing `time`.
 * Anything else (another program's line, a truncated line, a line that is not an object, or
 * JSON that is not smtpgate's) is not a record: the reader skips it and counts it.
 */

/** A parsed log line: pino's fields plus whatever the line carries. */
export interface LogRecord {
  readonly [field: string]: unknown;
  readonly msg: string;
  /** Milliseconds since the epoch, when the line (or its journal entry) says when. */
  readonly at: number | undefined;
  /** `trace` … `fatal`, whether the line had a number or a name. */
  readonly levelName: string;
}

/** pino's numeric levels. */
const LEVEL_NAMES: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' };

export function levelName(level: unknown): string {
  if (typeof level === 'number') return LEVEL_NAMES[level] ?? String(level);
  return typeof level === 'string' ? level : 'info';
}

/** A record of smtpgate's, or undefined for a line that is not one. */
export function parseLogLine(line: string): LogRecord | undefined {
  const start = line.indexOf('{');
  if (start < 0) return undefined;
  const parsed = parseObject(line.slice(start));
  if (!parsed) return undefined;
  // journalctl -o json: the entry's MESSAGE is the line smtpgate wrote.
  if (typeof parsed.MESSAGE === 'string' && ('__REALTIME_TIMESTAMP' in parsed || '_SYSTEMD_UNIT' in parsed || '__CURSOR' in parsed)) {
    const inner = parseLogLine(parsed.MESSAGE);
    if (!inner || inner.at !== undefined) return inner;
    const micros = Number(parsed.__REALTIME_TIMESTAMP);
    return Number.isFinite(micros) && micros > 0 ? { ...inner, at: Math.floor(micros / 1000) } : inner;
  }
  if (parsed.app !== 'smtpgate' || typeof parsed.msg !== 'string') return undefined;
  const at = typeof parsed.time === 'string' ? Date.parse(parsed.time) : typeof parsed.time === 'number' ? parsed.time : NaN;
  return { ...parsed, msg: parsed.msg, at: Number.isFinite(at) ? at : undefined, levelName: levelName(parsed.level) };
}

function parseObject(text: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(text);
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
