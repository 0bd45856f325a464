/**
 * Structured logs (pino). JSON for machines by default, `format: pretty` for humans.
 * Every session-scoped line is written through a child logger that carries `session`.
 * On stdout, lines are written in batches (see createLogger).
 */
import { createRequire } from 'node:module';
import { pino, type Logger, type DestinationStream, type LoggerOptions as PinoOptions } from 'pino';

export type { Logger };

export interface LoggerOptions {
  level: string;
  format: 'json' | 'pretty';
  /** Where to write; defaults to stdout. Tests pass a stream to read lines back. */
  destination?: DestinationStream;
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
 * What every smtpgate logger shares: `"level":"info"` rather than pino's number (30), so a
 * line reads the same to a person, jq, Loki or a SIEM without a lookup table; ISO times.
 */
export function loggerOptions(level: string): PinoOptions<never> {
  return { level, base: { app: 'smtpgate' }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } };
}

export function createLogger(opts: LoggerOptions): Logger {
  const base = loggerOptions(opts.level);
  if (opts.destination) return pino(base, opts.destination);
  if (opts.format === 'pretty') {
    return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: process.stdout.isTTY, ignore: 'app,pid,hostname' } } });
  }
  // Lines are gathered up to 4 KiB and written together, at the latest every 250 ms, and on
  // exit (also after an uncaught exception): one write syscall per busy stretch instead of one
  // per line, which at thousands of messages a second is a measurable share of the CPU.
  const dest = pino.destination({ dest: 1, sync: true, minLength: 4096, periodicFlush: 250 });
  // flush(), not flushSync(): in sync mode it writes at once too, but a reader that is gone
  // (EPIPE) becomes an 'error' that pino swallows, where flushSync() would retry for ever and
  // keep a crashed process from exiting.
  process.once('exit', () => {
    try {
      dest.flush();
    } catch {
      // Nothing left to do on the way out.
    }
  });
  return pino(base, dest);
}
