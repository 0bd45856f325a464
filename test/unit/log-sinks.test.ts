/**
 * Where the log goes, the pure parts: the journald priority prefix and when it is chosen, the
 * RFC 5424 message and its RFC 6587 framing, the syslog sink's bounded buffer, and the log.*
 * config checks (a bad one never starts, and says which field and what to do).
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { describe, expect, test } from 'vitest';
import { createLogger, resolveFormat, stdoutIsJournal } from '../../src/logging/logger.js';
import { octetCounted, syslogMessage, syslogSeverity } from '../../src/logging/rfc5424.js';
import { SyslogSink } from '../../src/logging/syslog-sink.js';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/parsing/errors.js';
import { checkConfigFile } from '../../src/app.js';
import { diffConfig } from '../../src/config/diff.js';
import { makeTestCert } from '../helpers/pki.js';
import { deadPort } from '../helpers/sessions.js';

const WHO = { facility: 2, hostname: 'gate1', appName: 'smtpgate', procId: 4242 };

describe('log lines', () => {
  test('name their level ("level":"warn"), not pino\'s number', () => {
    const lines: string[] = [];
    const log = createLogger({ level: 'info', format: 'json', destination: new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) }) });
    log.warn('careful');
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'warn', msg: 'careful' });
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

const MINIMAL = `
listeners:
  - name: submission
    address: 0.0.0.0:587
tls:
  cert: cert.pem
  key: key.pem
auth:
  users: users
backend:
  address: 10.0.0.5:25
`;

function issuesOf(text: string): string[] {
  try {
    parseConfig(text, '/etc/smtpgate/smtpgate.yaml');
  } catch (err) {
    if (err instanceof ConfigError) return err.message.split('\n');
    throw err;
  }
  throw new Error('expected the config to be refused');
}

describe('log config', () => {
  test('defaults: level info, format auto, no file, no syslog', () => {
    expect(parseConfig(MINIMAL, '/etc/smtpgate/smtpgate.yaml').log).toEqual({ level: 'info', format: 'auto' });
  });

  test('log.file is relative to the config file; syslog gets its port and facility defaults', () => {
    const cfg = parseConfig(MINIMAL + 'log:\n  file: log/smtpgate.log\n  syslog:\n    transport: tls\n    host: siem.corp.example\n    ca: siem-ca.pem\n', '/etc/smtpgate/smtpgate.yaml');
    expect(cfg.log.file).toBe('/etc/smtpgate/log/smtpgate.log');
    expect(cfg.log.syslog).toEqual({ transport: 'tls', host: 'siem.corp.example', port: 6514, facility: 2, appName: 'smtpgate', bufferSize: 1_048_576, ca: '/etc/smtpgate/siem-ca.pem' });
    expect(parseConfig(MINIMAL + 'log:\n  syslog:\n    transport: udp\n    host: 10.0.0.9\n    facility: local3\n', '/x/a.yaml').log.syslog).toMatchObject({ port: 514, facility: 19 });
  });

  test('a host with a port in it, a port out of range and a TLS-only field on tcp are refused with the fix', () => {
    const issues = issuesOf(MINIMAL + 'log:\n  syslog:\n    transport: tcp\n    host: siem:514\n    port: 70000\n    ca: ca.pem\n');
    expect(issues).toEqual([
      '/etc/smtpgate/smtpgate.yaml:15: log.syslog.host: expected a host name or an IP address (no port, no brackets: the port goes in log.syslog.port), e.g. siem.corp.example or 10.0.0.9',
      '/etc/smtpgate/smtpgate.yaml:16: log.syslog.port: expected a port from 1 to 65535',
      '/etc/smtpgate/smtpgate.yaml:17: log.syslog.ca: ca is only used with transport: tls (this is tcp); use transport: tls, or remove ca',
    ]);
  });

  test('journal or pretty with a file, and pretty with syslog, are refused', () => {
    expect(issuesOf(MINIMAL + 'log:\n  format: journal\n  file: x.log\n')).toEqual(['/etc/smtpgate/smtpgate.yaml:13: log.format: format: journal is for stdout, not for log.file; use format: json (or auto), or remove log.file']);
    expect(issuesOf(MINIMAL + 'log:\n  format: pretty\n  syslog:\n    transport: udp\n    host: 10.0.0.9\n')[0]).toContain('log.format: format: pretty is for a terminal and cannot be combined with log.syslog');
  });

  test('a changed file or syslog server takes a restart, and the reload says so', () => {
    const a = parseConfig(MINIMAL, '/x/a.yaml');
    const b = parseConfig(MINIMAL + 'log:\n  file: x.log\n  syslog:\n    transport: udp\n    host: 10.0.0.9\n', '/x/a.yaml');
    expect(diffConfig(a, b).needRestart).toEqual(['log.file', 'log.syslog']);
  });

  test('check: an unreadable syslog CA and a log folder that does not exist are named with their field and fix', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-check-'));
    const cert = await makeTestCert('a.test');
    await writeFile(path.join(dir, 'cert.pem'), cert.cert);
    await writeFile(path.join(dir, 'key.pem'), cert.key);
    await writeFile(path.join(dir, 'users'), 'alice:$2y$05$abcdefghijklmnopqrstuu5Zx0Nq6PzGQy4Qb0fxVt7bLqfJ0mB1e\n');
    await writeFile(path.join(dir, 'not-a-ca.pem'), 'hello\n');
    const file = path.join(dir, 'smtpgate.yaml');
    const problems = async (log: string) => {
      await writeFile(file, MINIMAL + log);
      try {
        await checkConfigFile(file, 'check');
      } catch (err) {
        if (err instanceof ConfigError) return err.message.split('\n');
        throw err;
      }
      return [];
    };
    expect(await problems('log:\n  file: nowhere/smtpgate.log\n  syslog:\n    transport: tls\n    host: 127.0.0.1\n    ca: missing-ca.pem\n')).toEqual([
      `${file}:17: log.syslog.ca: cannot read the syslog server's CA bundle ${dir}/missing-ca.pem: it does not exist`,
      `${file}:13: log.file: cannot create ${dir}/nowhere/smtpgate.log: the folder ${dir}/nowhere does not exist; create it and give smtpgate write access (under systemd: LogsDirectory=smtpgate makes /var/log/smtpgate)`,
    ]);
    expect((await problems('log:\n  syslog:\n    transport: tls\n    host: 127.0.0.1\n    ca: not-a-ca.pem\n'))[0]).toContain(`log.syslog.ca: not a PEM CA bundle`);
    expect(await problems('log:\n  file: smtpgate.log\n')).toEqual([]);
  });
});
