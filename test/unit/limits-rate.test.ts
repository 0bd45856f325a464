/**
 * Rates in human units: what an admin writes in `limits:` and what smtpgate understands.
 */
import { describe, expect, test } from 'vitest';
import { formatRate, formatWindow, parseRate, retrySeconds } from '../../src/limits/rate.js';

function rate(text: string, unit: 'count' | 'bytes' = 'count') {
  const r = parseRate(text, unit);
  if (!r.ok) throw new Error(r.message);
  return r.rate;
}

function problem(text: string, unit: 'count' | 'bytes' = 'count') {
  const r = parseRate(text, unit);
  if (r.ok) throw new Error(`expected ${JSON.stringify(text)} to be refused`);
  return r.message;
}

describe('parseRate', () => {
  test('reads "<amount>/<window>" with s, m, h and d', () => {
    expect(rate('100/1h')).toEqual({ amount: 100, windowMs: 3_600_000 });
    expect(rate('5/15m')).toEqual({ amount: 5, windowMs: 900_000 });
    expect(rate('30/90s')).toEqual({ amount: 30, windowMs: 90_000 });
    expect(rate('1000/1d')).toEqual({ amount: 1000, windowMs: 86_400_000 });
  });

  test('a bare unit means one of it, and spaces and upper case are fine', () => {
    expect(rate('100/h')).toEqual({ amount: 100, windowMs: 3_600_000 });
    expect(rate(' 20 / 1H ')).toEqual({ amount: 20, windowMs: 3_600_000 });
    expect(rate('6/0.5h')).toEqual({ amount: 6, windowMs: 1_800_000 });
  });

  test('byte rates take sizes as the amount', () => {
    expect(rate('500MB/1d', 'bytes')).toEqual({ amount: 500_000_000, windowMs: 86_400_000 });
    expect(rate('2GiB/1h', 'bytes')).toEqual({ amount: 2 * 1024 ** 3, windowMs: 3_600_000 });
    expect(rate('1000/1h', 'bytes')).toEqual({ amount: 1000, windowMs: 3_600_000 });
  });

  test('refuses what it cannot count, saying what is expected and what was found', () => {
    expect(problem('100')).toMatch(/expected a rate such as "100\/1h" or "5\/15m".*found "100"/);
    expect(problem('100/1w')).toMatch(/found "100\/1w"/);
    expect(problem('1.5/1h')).toMatch(/whole number/);
    expect(problem('0/1h')).toMatch(/at least 1; write "off"/);
    expect(problem('10MB/1h')).toMatch(/whole number/);
    expect(problem('lots/1d', 'bytes')).toMatch(/must be a size/);
  });

  test('windows are whole seconds (Redis expiries are) and at most a year', () => {
    expect(problem('5/0.5s')).toMatch(/at least 1s/);
    expect(problem('5/1.5s')).toMatch(/whole number of seconds/);
    expect(problem('5/400d')).toMatch(/at most 366d/);
  });
});

describe('formatting for reply texts', () => {
  test('windows print in the shortest exact unit', () => {
    expect(formatWindow(3_600_000)).toBe('1h');
    expect(formatWindow(900_000)).toBe('15m');
    expect(formatWindow(90_000)).toBe('90s');
    expect(formatWindow(86_400_000)).toBe('1d');
  });

  test('rates print as "N per window"', () => {
    expect(formatRate({ amount: 100, windowMs: 3_600_000 })).toBe('100 per 1h');
    expect(formatRate({ amount: 500_000_000, windowMs: 86_400_000 }, 'bytes')).toBe('500MB per 1d');
  });

  test('retry times are whole seconds, never 0', () => {
    expect(retrySeconds(0)).toBe(1);
    expect(retrySeconds(1)).toBe(1);
    expect(retrySeconds(1001)).toBe(2);
    expect(retrySeconds(-1)).toBe(1);
  });
});
