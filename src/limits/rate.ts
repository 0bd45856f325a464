/**
 * Rates in human units: "100/1h", "5/15m", "500MB/1d". Pure functions; the limits schema uses
 * them so a bad rate is caught at load time with the file, path and what was found.
 *
 * Windows are whole seconds: the Redis limiter's Lua script sets `EX` in seconds and would
 * silently treat a 500 ms window as "never expires".
 */
import { parseSize } from '../parsing/units.js';

export interface Rate {
  /** How many (messages, connections, failures, bytes) per window. Always ≥ 1. */
  readonly amount: number;
  /** Window length in milliseconds, a whole number of seconds. */
  readonly windowMs: number;
}

export type RateUnit = 'count' | 'bytes';

export type RateParse = { readonly ok: true; readonly rate: Rate } | { readonly ok: false; readonly message: string };

const WINDOW_UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A year: anything longer is a typo, and keys must expire some day. */
const MAX_WINDOW_MS = 366 * 86_400_000;

/**
 * Parses "<amount>/<window>": "100/1h", "5/15m", "30/90s", "100/h" (a bare unit means 1 of it).
 * With unit 'bytes' the amount is a size: "500MB/1d", "2GiB/1h".
 */
export function parseRate(value: string, unit: RateUnit = 'count'): RateParse {
  const example = unit === 'bytes' ? '"500MB/1d"' : '"100/1h" or "5/15m"';
  const fail = (why: string): RateParse => ({ ok: false, message: `expected a rate such as ${example}${why ? ` (${why})` : ''}, found ${JSON.stringify(value)}` });
  const m = /^\s*([^/\s][^/]*?)\s*\/\s*(\d+(?:\.\d+)?)?\s*(s|m|h|d)\s*$/i.exec(value);
  if (!m) return fail('');
  const amountText = m[1]!;
  let amount: number | undefined;
  if (unit === 'bytes') {
    amount = parseSize(amountText);
  } else {
    amount = /^\d+$/.test(amountText) ? Number(amountText) : undefined;
  }
  if (amount === undefined || !Number.isSafeInteger(amount)) return fail(unit === 'bytes' ? 'the amount must be a size' : 'the amount must be a whole number');
  if (amount < 1) return fail('the amount must be at least 1; write "off" to disable a limit');
  const count = m[2] === undefined ? 1 : Number(m[2]);
  const windowMs = Math.round(count * WINDOW_UNITS[m[3]!.toLowerCase()]!);
  if (windowMs < 1000) return fail('the window must be at least 1s');
  if (windowMs % 1000 !== 0) return fail('the window must be a whole number of seconds');
  if (windowMs > MAX_WINDOW_MS) return fail('the window must be at most 366d');
  return { ok: true, rate: { amount, windowMs } };
}

/** "1h", "15m", "90s", "1d": the shortest exact spelling, for reply texts and logs. */
export function formatWindow(ms: number): string {
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${Math.round(ms / 1000)}s`;
}

/** "100 per 1h", or "500MB per 1d" for byte rates. */
export function formatRate(rate: Rate, unit: RateUnit = 'count'): string {
  return `${unit === 'bytes' ? formatBytes(rate.amount) : rate.amount} per ${formatWindow(rate.windowMs)}`;
}

function formatBytes(n: number): string {
  for (const [suffix, size] of [
    ['GB', 1e9],
    ['MB', 1e6],
    ['kB', 1e3],
  ] as const) {
    if (n >= size && n % size === 0) return `${n / size}${suffix}`;
  }
  return `${n} bytes`;
}

/** Whole seconds until a retry makes sense: never 0, so "try again in 0 seconds" can't happen. */
export function retrySeconds(msBeforeNext: number): number {
  return Math.max(1, Math.ceil(msBeforeNext / 1000));
}
