/**
 * Where the log goes, the pure parts: the journald priority prefix and when it is chosen, the
 * RFC 5424 message and its RFC 6587 framing, and the syslog sink's bounded buffer. (The log.*
 * config checks are in config.test.ts.)
 */
import fc from 'fast-check';
import { Writable } from 'node:stream';
import { describe, expect, test } from 'vitest';
import { pino } from 'pino';
import { createLogger, isoTimePerMillisecond, resolveFormat, stdoutIsJournal } from '../../src/logging/logger.js';
import { octetCounted, syslogMessage, syslogSeverity } from '../../src/logging/rfc5424.js';
import { SyslogSink } from '../../src/logging/syslog-sink.js';
import { deadPort } from '../helpers/sessions.js';

const WHO = { facility: 2, hostname: 'gate1', appName: 'smtpgate', procId: 4242 };

describe('log lines', () => {
  test('name their level ("level":"warn"), not pino\'s number', () => {
    const lines: string[] = [];
    const log = createLogger({ level: 'info', format: 'json', destination: new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) }) });
    log.warn('careful');
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'warn', msg: 'careful' });
  });

  test('carry pino\'s ISO time, formatted anew only when the millisecond changes', () => {
    let now = Date.UTC(2026, 11, 7, 8, 21, 50, 457);
    const time = isoTimePerMillisecond(() => now);
    const first = time();
    expect(first).toBe(',"time":"2026-12-07T08:21:50.457Z"');
    expect(time()).toBe(first);
    now += 1;
    expect(time()).toBe(',"time":"2026-12-07T08:21:50.458Z"');
    // The same text as pino's own isoTime for that millisecond.
    const realNow = Date.now;
    Date.now = () => now;
    try {
      expect(time()).toBe(pino.stdTimeFunctions.isoTime());
    } finally {
      Date.now = realNow;
    }
  });

  test('carry the time toISOString gives, for any millisecond after any other (the second formatted once, the millisecond added)', () => {
    const ms = fc.integer({ min: -62_167_219_200_000, max: 253_402_300_799_999 }); // years 0000 to 9999
    const near = fc.tuple(ms, fc.array(fc.integer({ min: -2500, max: 2500 }), { maxLength: 6 }));
    fc.assert(
      fc.property(near, ([start, steps]) => {
        let now = start;
        const time = isoTimePerMillisecond(() => now);
        for (const step of [0, ...steps]) {
          now += step;
          expect(time()).toBe(`,"time":"${new Date(now).toISOString()}"`);
        }
      }),
      { numRuns: 1000 },
    );
  });
});

describe('journald', () => {
  test('each pino level has the sd-daemon priority of its meaning: fatal 2, error 3, warn 4, info 6, debug and trace 7', () => {
    expect([60, 50, 40, 30, 20, 10].map(syslogSeverity)).toEqual([2, 3, 4, 6, 7, 7]);
  });

  test('stdout is the journal only while fd 1 is the very stream JOURNAL_STREAM names', () => {
    const fd1 = () => ({ dev: 2049n, ino: 123456789012n });
    expect(stdoutIsJournal({ JOURNAL_STREAM: '2049:123456789012' }, fd1)).toBe(true);
    // A child of a service whose stdout was redirected inherits the variable.
    expect(stdoutIsJournal({ JOURNAL_STREAM: '2049:99' }, fd1)).toBe(false);
    expect(stdoutIsJournal({}, fd1)).toBe(false);
    expect(stdoutIsJournal({ JOURNAL_STREAM: 'junk' }, fd1)).toBe(false);
    expect(
      stdoutIsJournal({ JOURNAL_STREAM: '1:2' }, () => {
        throw new Error('EBADF');
      }),
    ).toBe(false);
  });

  test('format auto is journal on the journal, json anywhere else, and json for a file', () => {
    expect(resolveFormat('auto', false, () => true)).toBe('journal');
    expect(resolveFormat('auto', false, () => false)).toBe('json');
    expect(resolveFormat('auto', true, () => true)).toBe('json');
    expect(resolveFormat('journal', false, () => false)).toBe('journal');
  });
});

describe('RFC 5424 message', () => {
  const line = JSON.stringify({ level: 'warn', time: '2026-12-07T10:00:00.123Z', app: 'smtpgate', session: 'AbC12', listener: 'submission', client: '192.0.2.7', auth: { user: 'alice' }, reason: 'odd "quote" ] and \\', msg: 'refused: x' }) + '\n';

  test('PRI is facility*8 + severity; header fields in order; MSG is the JSON line', () => {
    const m = syslogMessage(line, 40, WHO);
    expect(m.startsWith('<20>1 2026-12-07T10:00:00.123Z gate1 smtpgate 4242 - [')).toBe(true);
    expect(m.endsWith(` ${line.trimEnd()}`)).toBe(true);
    expect(syslogMessage(line, 60, { ...WHO, facility: 23 })).toMatch(/^<186>1 /);
  });

  test('structured data carries the session fields, escaped as §6.3.3 says', () => {
    const sd = /^\S+ \S+ \S+ \S+ \S+ \S+ (\[.*?[^\\]\]) \{/.exec(syslogMessage(line, 40, WHO))?.[1];
    expect(sd).toBe('[smtpgate@32473 session="AbC12" listener="submission" client="192.0.2.7" user="alice" reason="odd \\"quote\\" \\] and \\\\"]');
  });

  test('a line without session fields has NILVALUE structured data', () => {
    expect(syslogMessage('{"level":"info","time":"2026-12-07T10:00:00.000Z","msg":"ready"}', 30, WHO)).toBe('<22>1 2026-12-07T10:00:00.000Z gate1 smtpgate 4242 - - {"level":"info","time":"2026-12-07T10:00:00.000Z","msg":"ready"}');
  });

  test('octet counting counts bytes, not characters', () => {
    expect(octetCounted('<22>1 é').toString('utf8')).toBe('8 <22>1 é');
  });
});

describe('syslog sink', () => {
  test('while the server is unreachable, lines wait up to bufferBytes; the rest are dropped and counted, and nothing throws', async () => {
    let drops = 0;
    const sink = new SyslogSink({ transport: 'tcp', host: '127.0.0.1', port: await deadPort(), facility: 2, appName: 'smtpgate', bufferBytes: 4096 }, { onDrop: () => drops++ });
    const line = JSON.stringify({ level: 'info', time: '2026-12-07T10:00:00.000Z', msg: 'x'.repeat(100) }) + '\n';
    for (let i = 0; i < 100; i++) sink.write(line);
    // ~190 bytes a message: about 21 fit in 4 KiB.
    expect(sink.dropped).toBeGreaterThan(70);
    expect(sink.dropped).toBeLessThan(85);
    expect(drops).toBe(sink.dropped);
    await sink.end(100);
  });
});
