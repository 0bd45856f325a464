/**
 * `listeners[].greetingDelay`: how long a client waits for the 220 (the early-talker check),
 * and the trusted networks that are greeted at once. The decision and the config key; the
 * wire behaviour is in test/e2e/listener/greeting-delay.test.ts.
 */
import { describe, expect, test } from 'vitest';
import { configIssues } from '../helpers/config.js';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { parseConfig } from '../../src/config/load.js';
import { CidrSet, parseCidr } from '../../src/parsing/cidr.js';
import { greetingDelayFor } from '../../src/listener/command-guard.js';

const networks = (...cidrs: string[]) => new CidrSet(cidrs.map((c) => parseCidr(c)!));

describe('greetingDelayFor', () => {
  const settings = { delayMs: 100, trusted: networks('10.0.0.0/8', '2001:db8::/32') };

  test('a client outside the trusted networks waits the configured delay', () => {
    expect(greetingDelayFor('203.0.113.9', settings)).toBe(100);
    expect(greetingDelayFor('2001:db9::1', settings)).toBe(100);
  });

  test('a client in the trusted networks is greeted at once, whatever the delay', () => {
    expect(greetingDelayFor('10.1.2.3', settings)).toBe(0);
    expect(greetingDelayFor('2001:db8::25', settings)).toBe(0);
    expect(greetingDelayFor('10.1.2.3', { ...settings, delayMs: 30_000 })).toBe(0);
  });

  test('an IPv4 client on a dual-stack socket (::ffff:a.b.c.d) is matched as IPv4', () => {
    expect(greetingDelayFor('::ffff:10.1.2.3', settings)).toBe(0);
  });

  test('without trusted networks every client waits', () => {
    expect(greetingDelayFor('10.1.2.3', { delayMs: 250, trusted: undefined })).toBe(250);
  });

  test('greetingDelay: 0 greets everyone at once', () => {
    expect(greetingDelayFor('203.0.113.9', { delayMs: 0, trusted: undefined })).toBe(0);
  });

  test('an address that is not an IP (a unix socket, an empty PROXY LOCAL peer) is not trusted', () => {
    expect(greetingDelayFor('', settings)).toBe(100);
  });
});

const FILE = '/etc/smtpgate/smtpgate.yaml';
const config = (greetingDelay?: string) => `
listeners:
  - name: relay
    address: 0.0.0.0:25
    tls: none
    requireTls: false
    requireAuth: false${greetingDelay === undefined ? '' : `\n    greetingDelay: ${greetingDelay}`}
backend:
  address: 10.0.0.5:25
`;

const issuesOf = (text: string): string[] => configIssues(text, FILE);

describe('listeners[].greetingDelay in the config', () => {
  test("defaults to 100ms, smtp-server's own early-talker wait", () => {
    expect(parseConfig(config(), FILE).listeners[0]!.greetingDelay).toBe(100);
  });

  test.each([
    ['0', 0],
    ['100ms', 100],
    ['2s', 2000],
    ['30s', 30_000],
  ])('accepts %s as %i ms', (value, ms) => {
    expect(parseConfig(config(value), FILE).listeners[0]!.greetingDelay).toBe(ms);
  });

  test('more than 30s is refused, naming the file, line and field', () => {
    expect(issuesOf(config('31s'))).toEqual([`${FILE}:8: listeners[0].greetingDelay: expected at most 30s, found 31s (a bare number counts seconds: write 100ms, not 100)`]);
  });

  test('a bare number counts seconds, so "100" meant as milliseconds is refused with the fix', () => {
    expect(issuesOf(config('100'))[0]).toContain('listeners[0].greetingDelay: expected at most 30s, found 100s (a bare number counts seconds: write 100ms, not 100)');
  });

  test.each(['soon', '-1s', '"-5"'])('%s is not a duration', (value) => {
    expect(issuesOf(config(value))[0]).toMatch(/^\/etc\/smtpgate\/smtpgate\.yaml:8: listeners\[0\]\.greetingDelay: expected a duration such as "30s"/);
  });

  test('a negative number is not a duration', () => {
    expect(issuesOf(config('-1'))[0]).toContain('listeners[0].greetingDelay: expected a duration');
  });
});

describe('the smtp-server code the greeting delay replaces', () => {
  test('SMTPConnection.init() still waits a hard-coded 100 ms: revisit replaceGreetingWait when this changes', () => {
    const init = (SMTPConnection.prototype as unknown as { init(): void }).init.toString();
    expect(init).toContain('this._setListeners(');
    expect(init).toContain('setTimeout(() => this.connectionReady(), 100)');
  });
});
