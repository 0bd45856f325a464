/**
 * Structured logs (pino). Every session-scoped line is written through a child logger that
 * carries `session`.
 *
 * Where lines go (log.* in the config): one primary stream, stdout or `file`, in the format
 * `json` (one JSON object a line), `journal` (the same, each line prefixed with its syslog
 * priority `<N>` for journald) or `pretty` (for humans); `auto` is `journal` when stdout is the
 * journal and `json` otherwise. A syslog server, when configured, gets every line as well.
 * stdout and the file are written in batches (see batchedDestination).
 */
import { fstatSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pino, type Logger, type DestinationStream, type LoggerOptions as PinoOptions } from 'pino';
import { syslogSeverity } from './rfc5424.js';
import { SyslogSink, type SyslogSinkEvents, type SyslogSinkOptions } from './syslog-sink.js';

export type { Logger };

export type LogFormat = 'auto' | 'json' | 'journal' | 'pretty';

export interface LoggerOptions {
  level: string;
  format: LogFormat;
  /** Append to this file instead of stdout; reopen() opens it anew (after logrotate moved it). */
  file?: string;
  /** Every line to a syslog server too. */
  syslog?: SyslogSinkOptions;
  /** Where to write instead of stdout or the file. Tests pass a stream to read lines back. */
  destination?: DestinationStream;
}

/** A logger and what the process does to its streams: reopen the file (SIGUSR1), send the last lines on the way out. */
export interface LogOutput {
  readonly log: Logger;
  /** The file opened anew under its name (after logrotate moved it); nothing without a file. */
  reopen(): void;
  /** The syslog sink, when there is one (its drop count, events). */
  readonly syslog?: SyslogSink;
  /** Called for every line the syslog sink drops. */
  onSyslogDrop(fn: () => void): void;
  /** Sends what the syslog server hasn't had yet, waiting at most `ms`. */
  end(ms: number): Promise<void>;
}

/**
 * Can `format: pretty` work here? pino-pretty is a development dependency, so an install made
 * with `npm ci --omit=dev` (the images, a host install) lacks it, and pino would only fail
 * when the logger is built. `resolve` is passed in for tests.
 */
export function prettyAvailable(resolve: (id: string) => string = createRequire(import.meta.url).resolve): boolean {
  try {
    resolve('pino-pretty');
    return true;
  } catch {
    return false;
  }
}

/**
 * Is stdout the journal? systemd sets JOURNAL_STREAM=<dev>:<inode> of the stream it connects
 * stdout/stderr to (systemd.exec(5)); a child whose stdout was redirected elsewhere inherits the
 * variable, so it counts only while fd 1 is still that stream.
 */
export function stdoutIsJournal(env: NodeJS.ProcessEnv = process.env, stat: () => { dev: bigint; ino: bigint } = () => fstatSync(1, { bigint: true })): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (!m) return false;
  try {
    const s = stat();
    return s.dev === BigInt(m[1]!) && s.ino === BigInt(m[2]!);
  } catch {
    return false;
  }
}

/** `auto` decided: journal on the journal's stdout, json elsewhere (a file, a pipe, a terminal). */
export function resolveFormat(format: LogFormat, toFile: boolean, isJournal: () => boolean = stdoutIsJournal): Exclude<LogFormat, 'auto'> {
  if (format !== 'auto') return format;
  return !toFile && isJournal() ? 'journal' : 'json';
}

/**
 * What every smtpgate logger shares: `"level":"info"` rather than pino's number (30), so a
 * line reads the same to a person, jq, Loki or a SIEM without a lookup table; ISO times.
 */
export function loggerOptions(level: string): PinoOptions<never> {
  return { level, base: { app: 'smtpgate' }, timestamp: isoTimePerMillisecond(Date.now), formatters: { level: (label) => ({ level: label }) } };
}

/**
 * pino's isoTime (`,"time":"2026-12-07T08:21:50.457Z"`), formatted once per millisecond, and its
 * Date and ISO string made once per second: a busy gate writes several lines in the same
 * millisecond (a transaction record per message), and a Date and its ISO string for each was a
 * tenth of a line's cost (issue 18's W1 profile); once per millisecond, still a sixth of the
 * record's serialising. `now` gives whole milliseconds, as Date.now does.
 */
export function isoTimePerMillisecond(now: () => number): () => string {
  let last = Number.NaN;
  let text = '';
  let second = Number.NaN;
  let upToSecond = '';
  return () => {
    const ms = now();
    if (ms !== last) {
      last = ms;
      const s = Math.floor(ms / 1000);
      if (s !== second) {
        second = s;
        // Everything up to the milliseconds: `,"time":"2026-12-07T08:21:50.`
        upToSecond = `,"time":"${new Date(s * 1000).toISOString().slice(0, -4)}`;
      }
      const milli = ms - s * 1000;
      text = `${upToSecond}${milli < 10 ? '00' : milli < 100 ? '0' : ''}${milli}Z"`;
    }
    return text;
  };
}

/**
 * `<N>` before each line, N its syslog severity: journald (SyslogLevelPrefix=yes, the default)
 * strips it and files the line at that priority, so `journalctl -p warning` finds warnings.
 * pino tells the stream each line's level (lastLevel) before writing it: no parsing.
 */
class JournalPrefix {
  readonly [pino.symbols.needsMetadataGsym] = true;
  lastLevel = 30;
  readonly #dest: DestinationStream;
  constructor(dest: DestinationStream) {
    this.#dest = dest;
  }
  write(line: string): void {
    this.#dest.write(`<${syslogSeverity(this.lastLevel)}>${line}`);
  }
}

/**
 * How large a batch may grow before it is written, in bytes. To a regular file: 64 KiB (appends
 * land whole there whatever their size; inside a gate under W1 a 4 KiB write took about 30 µs of
 * wall time, every ninth record, so larger batches cut the record's mean cost by a fifth: issue
 * 18, docs/benchmarks.md "The mail log"). To a pipe or a socket (journald's stdout, docker,
 * `| logger`): PIPE_BUF, 4 KiB, the most the kernel writes in one piece. With `workers` every
 * process writes to the same inherited stdout, and a larger write is split where another
 * process's write can land in between, breaking lines in the middle.
 */
const FILE_BATCH_BYTES = 64 * 1024;
const PIPE_BATCH_BYTES = 4096;
/** A quiet gate's lines wait at most this long. */
const BATCH_MS = 250;

/** sonic-boom in contentMode 'buffer' (its types know only strings). */
interface ByteDestination {
  write(bytes: Buffer): boolean;
  reopen(): void;
}

/**
 * stdout or a file, written in batches: lines are gathered and written together, at the latest
 * every 250 ms, and on exit (also after an uncaught exception): one write syscall per busy
 * stretch instead of one per line, which at thousands of messages a second is a measurable share
 * of the CPU. A batch is written before a line would take it past its size, so each write holds
 * whole lines and stays within that size (a single longer line goes alone).
 *
 * sonic-boom owns the file (the write loop, EAGAIN, EPIPE, reopen) and writes each batch at
 * once, as one Buffer; the gathering is done here, because sonic-boom's own (minLength) measures
 * its whole pending string in UTF-8 again at every line and encodes each batch twice: per line
 * that cost as much as the syscalls it saves (issue 18, callgrind of the record line: see
 * docs/benchmarks.md "The mail log").
 */
export class LineBatch {
  readonly #dest: ByteDestination;
  readonly #maxBytes: number;
  /** The batch's bytes, encoded as each line comes: a new buffer for each batch, as sonic-boom may hold a written one. */
  #buffer: Buffer | undefined;
  #used = 0;

  constructor(dest: ByteDestination, maxBytes: number) {
    this.#dest = dest;
    this.#maxBytes = maxBytes;
  }

  write(line: string): void {
    let room = this.#maxBytes - this.#used;
    // UTF-8 takes at most 3 bytes per UTF-16 unit: the line is measured only when that bound does not fit.
    if (line.length * 3 > room) {
      const bytes = Buffer.byteLength(line, 'utf8');
      if (bytes > room && this.#used > 0) {
        this.flush();
        room = this.#maxBytes;
      }
      if (bytes > room) {
        this.#dest.write(Buffer.from(line, 'utf8'));
        return;
      }
    }
    this.#buffer ??= Buffer.allocUnsafeSlow(this.#maxBytes);
    this.#used += this.#buffer.write(line, this.#used, 'utf8');
    if (this.#used >= this.#maxBytes) this.flush();
  }

  /** Writes what is gathered now; pino's logger.flush() passes a callback. */
  flush(cb?: (err?: Error) => void): void {
    if (this.#used > 0) {
      const bytes = this.#buffer!.subarray(0, this.#used);
      this.#buffer = undefined;
      this.#used = 0;
      this.#dest.write(bytes);
    }
    cb?.();
  }

  /** The file opened anew under its name; what is gathered belongs to the old one. */
  reopen(): void {
    this.flush();
    this.#dest.reopen();
  }
}

/** Is stdout a regular file (`>> smtpgate.log`), rather than a pipe, a socket or a terminal? */
export function stdoutIsFile(stat: () => { isFile(): boolean } = () => fstatSync(1)): boolean {
  try {
    return stat().isFile();
  } catch {
    return false;
  }
}

function batchedDestination(file: string | undefined): LineBatch {
  const dest = pino.destination({ dest: file ?? 1, sync: true, minLength: 0, contentMode: 'buffer', ...(file ? { append: true, mkdir: false } : {}) });
  const batch = new LineBatch(dest as unknown as ByteDestination, file !== undefined || stdoutIsFile() ? FILE_BATCH_BYTES : PIPE_BATCH_BYTES);
  setInterval(() => batch.flush(), BATCH_MS).unref();
  // sonic-boom in sync mode writes at once; a reader that is gone (EPIPE) becomes an 'error'
  // that pino swallows, so a crashed process still exits.
  process.once('exit', () => {
    try {
      batch.flush();
    } catch {
      // Nothing left to do on the way out.
    }
  });
  return batch;
}

export function openLog(opts: LoggerOptions): LogOutput {
  const base = loggerOptions(opts.level);
  const format = resolveFormat(opts.format, opts.file !== undefined);
  const dropListeners: (() => void)[] = [];
  let reopen = () => {};
  let primary: DestinationStream | undefined;
  if (opts.destination) {
    primary = opts.destination;
  } else if (format !== 'pretty') {
    const dest = batchedDestination(opts.file);
    if (opts.file) reopen = () => dest.reopen();
    primary = format === 'journal' ? new JournalPrefix(dest) : dest;
  }
  if (!opts.syslog) {
    const log = primary
      ? pino(base, primary)
      : pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: process.stdout.isTTY, ignore: 'app,pid,hostname' } } });
    return { log, reopen, onSyslogDrop: () => {}, end: async () => {} };
  }
  // Lines about the syslog server itself go through the same logger: at once to the primary
  // stream, and into the queue for the server, which has them once it is back.
  const events: SyslogSinkEvents = {
    onDown: (err, target) => log.warn({ syslog: target, err: { message: err.message } }, `syslog server unreachable: lines wait in a buffer of ${opts.syslog!.bufferBytes} bytes, then are dropped (smtpgate_log_syslog_dropped_total) until it is back`),
    onUp: (dropped, target) => log.info({ syslog: target, dropped }, 'syslog server reachable again'),
    onDrop: () => {
      for (const fn of dropListeners) fn();
    },
  };
  const syslog = new SyslogSink(opts.syslog, events);
  // pretty goes through a transport thread, which a multistream can't hold; pretty is for a
  // terminal, and the config check refuses it together with syslog.
  const streams = [{ level: 'trace' as const, stream: primary ?? pino.destination(1) }, { level: 'trace' as const, stream: syslog }];
  const log = pino(base, pino.multistream(streams));
  return { log, reopen, syslog, onSyslogDrop: (fn) => dropListeners.push(fn), end: (ms) => syslog.end(ms) };
}

export function createLogger(opts: LoggerOptions): Logger {
  return openLog(opts).log;
}
