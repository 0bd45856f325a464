/**
 * `smtpgate log grep`'s pure parts: reading a line back however it was wrapped, the query,
 * and the one-liners, which never let a client-given control character reach the terminal.
 */
import { describe, expect, test } from 'vitest';
import { parseLogLine, type LogRecord } from '../../src/logging/log-line.js';
import { LogQueryError, matchesQuery, parseLogQuery, parseWhen } from '../../src/logging/log-search.js';
import { escapeForTerminal, formatRecord, formatTime } from '../../src/logging/log-oneliner.js';
import { jsonLine } from '../../src/logging/log-grep.js';

/** README "Mail log"'s example record. */
const TRANSACTION = JSON.stringify({
  level: 30, time: '2026-12-07T10:00:00.123Z', app: 'smtpgate', session: 'AbC12', listener: 'submission', client: '192.0.2.7', port: 51234, helo: 'laptop',
  tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', sni: 'mail.corp.example' }, auth: { method: 'password', user: 'alice' }, from: 'alice@corp.example',
  rcpt: [{ to: 'bob@corp.example', code: 250, enhanced: '2.1.5', by: 'backend' }, { to: 'gone@corp.example', code: 550, enhanced: '5.1.1', by: 'backend', reason: 'backend_refused' }],
  size: 1234, messageId: '<x@laptop>', backend: '10.0.0.5:25', queueId: '4dQ2x71zKz3Yxm', reply: '250 2.0.0 Ok: queued as 4dQ2x71zKz3Yxm', durationMs: 85, outcome: 'relayed', msg: 'transaction',
});
const FAILED_SIGN_IN = JSON.stringify({
  level: 'info', time: '2026-12-07T10:05:00.000Z', app: 'smtpgate', session: 'Xy9Zq', listener: 'submission', client: '2001:db8::9', stage: 'auth', code: 535, enhanced: '5.7.8',
  reason: 'auth_failed', user: 'Alice', source: 'file', authResult: 'wrong_password', msg: 'refused: Authentication credentials invalid',
});
const RCPT_REFUSAL = JSON.stringify({ level: 30, time: '2026-12-07T10:00:00.100Z', app: 'smtpgate', session: 'AbC12', client: '192.0.2.7', stage: 'rcpt', code: 550, enhanced: '5.7.1', reason: 'relay_denied', to: 'x@else.example', msg: 'refused: Relay denied' });
const LOCKOUT = JSON.stringify({ level: 40, time: '2026-12-07T10:06:00.000Z', app: 'smtpgate', session: 'Xy9Zq', ip: '2001:db8::9', network: '2001:db8::/64', user: 'alice', scope: 'user_ip', failures: 5, lockSeconds: 900, msg: 'AUTH lockout: too many failed logins for this user from this address' });

function record(line: string): LogRecord {
  const r = parseLogLine(line);
  if (!r) throw new Error(`not a record: ${line}`);
  return r;
}

describe('reading a line back', () => {
  test('numeric and named levels, a <N> priority prefix, a syslog prefix and journalctl -o json all give the same record', () => {
    const plain = record(TRANSACTION);
    expect(plain).toMatchObject({ msg: 'transaction', session: 'AbC12', at: Date.parse('2026-12-07T10:00:00.123Z'), levelName: 'info' });
    expect(record(`<6>${TRANSACTION}`)).toEqual(plain);
    expect(record(`Dec  7 11:00:00 mx1 smtpgate[4242]: ${TRANSACTION}`)).toEqual(plain);
    expect(record(TRANSACTION.replace('"level":30', '"level":"info"'))).toEqual({ ...plain, level: 'info' });
    const journal = JSON.stringify({ __CURSOR: 's=1', __REALTIME_TIMESTAMP: '1796637600123000', _SYSTEMD_UNIT: 'smtpgate.service', MESSAGE: TRANSACTION });
    expect(record(journal)).toEqual(plain);
    // A journal entry of a line without `time` (the journal format may leave it to journald).
    const untimed = JSON.stringify({ __REALTIME_TIMESTAMP: '1796637600123000', MESSAGE: `<6>${TRANSACTION.replace(/"time":"[^"]*",/, '')}` });
    expect(record(untimed).at).toBe(1796637600123);
  });

  test('another program\'s line, JSON that is not smtpgate\'s, a truncated line and a bare value are not records', () => {
    for (const line of ['Dec  7 sshd[1]: Accepted publickey', '{"level":30,"msg":"x","app":"other"}', TRANSACTION.slice(0, 80), '42', '[1,2]', '{"app":"smtpgate"}', '']) {
      expect(parseLogLine(line), line).toBeUndefined();
    }
  });
});

describe('the query', () => {
  const now = Date.parse('2026-12-07T12:00:00Z');
  const q = (opts: Parameters<typeof parseLogQuery>[0]) => parseLogQuery(opts, now);
  const tx = record(TRANSACTION);
  const failed = record(FAILED_SIGN_IN);

  test('--user finds the signed-in user of a transaction and the user a failed sign-in named, case aside', () => {
    expect(matchesQuery(tx, q({ user: 'ALICE' }))).toBe(true);
    expect(matchesQuery(failed, q({ user: 'alice' }))).toBe(true);
    expect(matchesQuery(tx, q({ user: 'bob' }))).toBe(false);
  });

  test('--address finds the sender or any recipient, with or without <>, and @domain every address there', () => {
    expect(matchesQuery(tx, q({ address: 'gone@corp.example' }))).toBe(true);
    expect(matchesQuery(tx, q({ address: '<Alice@Corp.Example>' }))).toBe(true);
    expect(matchesQuery(tx, q({ address: '@corp.example' }))).toBe(true);
    expect(matchesQuery(tx, q({ address: '@example' }))).toBe(false);
    expect(matchesQuery(tx, q({ address: 'corp.example' }))).toBe(false);
    expect(matchesQuery(record(TRANSACTION.replace('"from":"alice@corp.example"', '"from":""')), q({ address: '<>' }))).toBe(true);
  });

  test('--client takes an address or a range, IPv4 or IPv6; a lockout line is found by its address too', () => {
    expect(matchesQuery(tx, q({ client: '192.0.2.0/24' }))).toBe(true);
    expect(matchesQuery(tx, q({ client: '192.0.2.8' }))).toBe(false);
    expect(matchesQuery(failed, q({ client: '2001:db8::/32' }))).toBe(true);
    expect(matchesQuery(record(LOCKOUT), q({ client: '2001:db8::9' }))).toBe(true);
    expect(() => q({ client: 'mx.example' })).toThrow(LogQueryError);
  });

  test('--message-id with or without <>, --queue-id and --session are exact', () => {
    expect(matchesQuery(tx, q({ messageId: 'x@laptop' }))).toBe(true);
    expect(matchesQuery(tx, q({ messageId: '<x@laptop>' }))).toBe(true);
    expect(matchesQuery(tx, q({ queueId: '4dQ2x71zKz3Yxm' }))).toBe(true);
    expect(matchesQuery(tx, q({ queueId: '4dQ2x71zKz3Yx' }))).toBe(false);
    expect(matchesQuery(tx, q({ session: 'AbC12' }))).toBe(true);
    expect(matchesQuery(failed, q({ session: 'AbC12' }))).toBe(false);
  });

  test('--since is inclusive and --until exclusive; a time ago counts back from now; a date without a zone is local, or UTC with --utc', () => {
    expect(matchesQuery(tx, q({ since: '2026-12-07T10:00:00.123Z' }))).toBe(true);
    expect(matchesQuery(tx, q({ until: '2026-12-07T10:00:00.123Z' }))).toBe(false);
    expect(matchesQuery(tx, q({ since: '2h' }))).toBe(true);
    expect(matchesQuery(tx, q({ since: '1h' }))).toBe(false);
    expect(parseWhen('--since', '2026-12-07 10:30', now, true)).toBe(Date.parse('2026-12-07T10:30:00Z'));
    expect(parseWhen('--since', '2026-12-07', now, false)).toBe(new Date(2026, 11, 7).getTime());
    expect(parseWhen('--since', '2026-12-07T10:30:00+01:00', now, false)).toBe(Date.parse('2026-12-07T09:30:00Z'));
    expect(() => q({ since: 'yesterday' })).toThrow(/--since: expected a time ago/);
  });

  test('a refusal inside a transaction is left to its transaction\'s record, and other lines to --all', () => {
    const rcpt = record(RCPT_REFUSAL);
    expect(matchesQuery(rcpt, q({}))).toBe(false);
    expect(matchesQuery(rcpt, q({ all: true }))).toBe(true);
    const connect = record(JSON.stringify({ level: 30, time: '2026-12-07T10:00:00Z', app: 'smtpgate', session: 'AbC12', client: '192.0.2.7', msg: 'connect' }));
    expect(matchesQuery(connect, q({ session: 'AbC12' }))).toBe(false);
    expect(matchesQuery(connect, q({ session: 'AbC12', all: true }))).toBe(true);
    expect(matchesQuery(failed, q({}))).toBe(true);
    expect(matchesQuery(record(LOCKOUT), q({}))).toBe(true);
  });
});

describe('the one-liners', () => {
  test('a transaction reads like Postfix\'s from=, to= and status= lines, on one line', () => {
    expect(formatRecord(record(TRANSACTION), { utc: true })).toBe(
      '2026-12-07T10:00:00.123Z AbC12: client=192.0.2.7, sasl_username=alice, helo=laptop, tls=TLSv1.3, from=<alice@corp.example>, size=1234, message-id=<x@laptop>, ' +
        'to=<bob@corp.example> 250 2.1.5, to=<gone@corp.example> 550 5.1.1 backend_refused, relay=10.0.0.5:25, queue_id=4dQ2x71zKz3Yxm, status=sent (250 2.0.0 Ok: queued as 4dQ2x71zKz3Yxm)',
    );
  });

  test('a failed sign-in, a lockout and a refused transaction', () => {
    expect(formatRecord(record(FAILED_SIGN_IN), { utc: true })).toBe(
      '2026-12-07T10:05:00.000Z Xy9Zq: reject: AUTH from 2001:db8::9: 535 5.7.8 Authentication credentials invalid; reason=auth_failed, user=Alice, result=wrong_password, source=file',
    );
    expect(formatRecord(record(LOCKOUT), { utc: true })).toBe('2026-12-07T10:06:00.000Z Xy9Zq: lockout: client=2001:db8::9, user=alice, scope=user_ip, failures=5, lock=900s');
    const refused = TRANSACTION.replace('"outcome":"relayed"', '"outcome":"refused","stage":"data","code":550,"enhanced":"5.7.1","reason":"policy","rule":"no-exe"').replace(/"queueId":"[^"]*",/, '').replace('"reply":"250 2.0.0 Ok: queued as 4dQ2x71zKz3Yxm"', '"reply":"550 5.7.1 No executables (.exe)"');
    expect(formatRecord(record(refused), { utc: true })).toMatch(/, status=refused stage=data 550 5\.7\.1 reason=policy rule=no-exe \(550 5\.7\.1 No executables \\x28\.exe\\x29\)$/);
  });

  test('local time carries its offset; --utc gives Z', () => {
    const at = Date.parse('2026-12-07T10:00:00.123Z');
    expect(formatTime(at, true)).toBe('2026-12-07T10:00:00.123Z');
    const local = formatTime(at, false);
    expect(local).toMatch(/^2026-12-07T\d{2}:\d{2}:00\.123[+-]\d{2}:\d{2}$/);
    expect(Date.parse(local)).toBe(at);
  });

  test('control characters, C1 controls, line separators and bidi overrides from a client never reach the terminal raw', () => {
    expect(escapeForTerminal('a\x1b[2Jb\nc\r\x00\x7f\x9b\u2028\u202e\\')).toBe('a\\x1b[2Jb\\nc\\r\\x00\\x7f\\x9b\\u2028\\u202e\\\\');
    const hostile = TRANSACTION.replace('"helo":"laptop"', '"helo":"\\u001b]0;pwned\\u0007"').replace('"user":"alice"', '"user":"eve, status=sent\\n2026-12-07T10:00:00Z fake: line"');
    const line = formatRecord(record(hostile), { utc: true });
    expect(line).not.toMatch(/[\x00-\x1f\x7f-\x9f]/);
    expect(line).toContain('helo="\\x1b]0;pwned\\x07"');
    expect(line).toContain('sasl_username="eve, status=sent\\n2026-12-07T10:00:00Z fake: line"');
    // Any line that parses can be a forgery (logger(1) writes to the journal): its level and field names too.
    const forged = formatRecord(record('{"app":"smtpgate","time":"2026-12-07T10:00:00Z","msg":"x","level":"\\u001b]0;pwn\\u0007","\\u001b[2Jk":1}'), { utc: true });
    expect(forged).not.toMatch(/[\x00-\x1f\x7f-\x9f]/);
    expect(forged).toContain('"\\x1b]0;pwn\\x07": x; \\x1b[2Jk=1');
    const address = TRANSACTION.replace('"to":"bob@corp.example"', '"to":"x>, to=<y@z"');
    expect(formatRecord(record(address), { utc: true })).toContain('to="<x>, to=<y@z>"');
  });

  test('--json prints the record as smtpgate wrote it, without its wrapping, with C1 controls and bidi marks escaped', () => {
    expect(JSON.parse(jsonLine(record(`<6>${TRANSACTION}`)))).toEqual(JSON.parse(TRANSACTION));
    const sneaky = FAILED_SIGN_IN.replace('"user":"Alice"', '"user":"A\u009b2J\u202elice"');
    const out = jsonLine(record(sneaky));
    expect(out).not.toMatch(/[\x7f-\x9f\u202e]/);
    expect(JSON.parse(out).user).toBe('A\u009b2J\u202elice');
  });
});
