/**
 * Structured logs (pino). JSON for machines by default, `format: pretty` for humans.
 * Every session-scoped line is written through a child logger that carries `session`.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

export interface LoggerOptions {
  level: string;
  format: 'json' | 'pretty';
  /** Where to write; defaults to stdout. Tests pass a stream to read lines back. */
  destination?: DestinationStream;
}

export function createLogger(opts: LoggerOptions): Logger {
  const base = { level: opts.level, base: { app: 'smtpgate' }, timestamp: pino.stdTimeFunctions.isoTime };
  if (opts.destination) return pino(base, opts.destination);
  if (opts.format === 'pretty') {
    return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: process.stdout.isTTY, ignore: 'app,pid,hostname' } } });
  }
  return pino(base);
}
