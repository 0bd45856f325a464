/**
 * A bad config never starts: every mistake is reported with the file, the line, the path
 * inside it, what was expected and what was found.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { checkIssues, configIssues } from '../helpers/config.js';
import { ConfigError } from '../../src/parsing/errors.js';
import { checkConfigFile } from '../../src/app.js';
import { parseConfig } from '../../src/config/load.js';
import { diffConfig } from '../../src/config/diff.js';
import { parseDuration, parseHostPort, parseSize } from '../../src/parsing/units.js';
import { makeTestCert } from '../helpers/pki.js';

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

const issuesOf = (text: string): string[] => configIssues(text, '/etc/smtpgate/smtpgate.yaml');

describe('config schema', () => {
  test('the documented example shape is accepted, with defaults filled in and paths resolved', () => {
    const cfg = parseConfig(MINIMAL, '/etc/smtpgate/smtpgate.yaml');
    expect(cfg.listeners[0]).toEqual({ name: 'submission', address: { host: '0.0.0.0', port: 587 }, tls: 'starttls', requireTls: true, requireAuth: true, greetingDelay: 100 });
    expect(cfg.tls?.cert).toBe('/etc/smtpgate/cert.pem');
    expect(cfg.tls?.minVersion).toBe('TLSv1.2');
    expect(cfg.auth?.users).toBe('/etc/smtpgate/users');
    expect(cfg.backend.identity).toBe('xclient');
    expect(cfg.data.bareLineEndings).toBe('reject');
    expect(cfg.metrics.address).toEqual({ host: '127.0.0.1', port: 9464 });
  });

  test('a misspelled key names the file, line and path, and suggests the right key', () => {
    const issues = issuesOf(MINIMAL.replace('    address: 0.0.0.0:587', '    address: 0.0.0.0:587\n    requireTLS: true'));
    expect(issues).toEqual(['/etc/smtpgate/smtpgate.yaml:5: listeners[0].requireTLS: unknown key "requireTLS"; did you mean "requireTls"?']);
  });

  test('a wrong type says what was expected and what was found', () => {
    const issues = issuesOf(MINIMAL.replace('    address: 0.0.0.0:587', '    address: 0.0.0.0:587\n    requireAuth: "yes"'));
    expect(issues).toEqual(['/etc/smtpgate/smtpgate.yaml:5: listeners[0].requireAuth: expected boolean, found string "yes"']);
  });

  test('a wrong enum value lists the choices', () => {
    const issues = issuesOf(MINIMAL.replace('    address: 0.0.0.0:587', '    address: 0.0.0.0:587\n    tls: startls'));
    expect(issues[0]).toBe('/etc/smtpgate/smtpgate.yaml:5: listeners[0].tls: expected one of "starttls" | "implicit" | "none", found string "startls"');
  });

  test('every problem is reported at once, not just the first', () => {
    const issues = issuesOf(MINIMAL.replace('10.0.0.5:25', '10.0.0.5').replace('auth:', 'auht:'));
    expect(issues).toHaveLength(2);
    expect(issues.join('\n')).toContain('backend.address: expected "host:port"');
    expect(issues.join('\n')).toContain('unknown key "auht"; did you mean "auth"?');
  });

  test('tls: none with requireTls: true is refused with the fix', () => {
    const issues = issuesOf(MINIMAL.replace('    address: 0.0.0.0:587', '    address: 0.0.0.0:25\n    tls: none'));
    expect(issues[0]).toContain('listeners[0].requireTls: a "tls: none" listener cannot require TLS; set requireTls: false');
  });

  test('a TLS listener without a certificate is refused: no built-in certificate fallback', () => {
    const issues = issuesOf(MINIMAL.replace(/tls:\n {2}cert: cert.pem\n {2}key: key.pem\n/, ''));
    expect(issues.join('\n')).toContain('tls: listener "submission" uses tls: starttls, so tls.cert and tls.key are required');
  });

  test('invalid YAML is reported with its line', () => {
    const issues = issuesOf('listeners:\n  - name: [oops\n');
    expect(issues[0]).toMatch(/^\/etc\/smtpgate\/smtpgate\.yaml:\d+: not valid YAML/);
  });
});

describe('data: the headers smtpgate writes', () => {
  const withData = (lines: string) => `${MINIMAL}data:\n${lines}`;

  test('by default the Received: header is full and nothing is stripped', () => {
    const cfg = parseConfig(MINIMAL, '/etc/smtpgate/smtpgate.yaml');
    expect(cfg.data).toEqual({ bareLineEndings: 'reject', receivedHeader: 'full', authenticatedUserHeader: false, stripHeaders: [] });
    expect(parseConfig(withData('  bareLineEndings: reject\n'), '/etc/smtpgate/smtpgate.yaml').data.receivedHeader).toBe('full');
  });

  test('receivedHeader takes full, private or off; true and false (configs from before private) still mean full and off', () => {
    const mode = (value: string) => parseConfig(withData(`  receivedHeader: ${value}\n`), '/etc/smtpgate/smtpgate.yaml').data.receivedHeader;
    expect([mode('full'), mode('private'), mode('off'), mode('true'), mode('false')]).toEqual(['full', 'private', 'off', 'full', 'off']);
  });

  test('another receivedHeader value lists the choices', () => {
    expect(issuesOf(withData('  receivedHeader: hidden\n'))).toEqual([
      '/etc/smtpgate/smtpgate.yaml:13: data.receivedHeader: expected one of "full" | "private" | "off", found string "hidden"',
    ]);
  });

  test('stripHeaders takes header names, kept as written', () => {
    const cfg = parseConfig(withData('  stripHeaders: [X-Originating-IP, x-internal_host.v2]\n'), '/etc/smtpgate/smtpgate.yaml');
    expect(cfg.data.stripHeaders).toEqual(['X-Originating-IP', 'x-internal_host.v2']);
  });

  test('a stripHeaders entry with a colon or a space is refused with what a name looks like', () => {
    const issues = issuesOf(withData('  stripHeaders: ["X-Originating-IP:", "X Originating"]\n'));
    expect(issues).toEqual([
      '/etc/smtpgate/smtpgate.yaml:13: data.stripHeaders[0]: expected a header name such as X-Originating-IP (letters, digits, "-", "_" or "."; no colon)',
      '/etc/smtpgate/smtpgate.yaml:13: data.stripHeaders[1]: expected a header name such as X-Originating-IP (letters, digits, "-", "_" or "."; no colon)',
    ]);
  });

  test('fields the message needs (From, Date, the MIME headers) cannot be stripped, in any case', () => {
    const issues = issuesOf(withData('  stripHeaders: [from, DATE, Mime-Version, Content-Type, content-transfer-encoding, Received]\n'));
    expect(issues).toEqual(
      ['from', 'DATE', 'Mime-Version', 'Content-Type', 'content-transfer-encoding'].map(
        (name, i) => `/etc/smtpgate/smtpgate.yaml:13: data.stripHeaders[${i}]: ${name} can't be stripped: the message needs it`,
      ),
    );
  });
});

describe('units', () => {
  test('durations', () => {
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('5m')).toBe(300_000);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(parseDuration(2)).toBe(2000);
    expect(parseDuration('soon')).toBeUndefined();
  });
  test('sizes: KB/MB decimal, KiB/MiB binary', () => {
    expect(parseSize('25MB')).toBe(25_000_000);
    expect(parseSize('512KiB')).toBe(524_288);
    expect(parseSize(100)).toBe(100);
    expect(parseSize('lots')).toBeUndefined();
  });
  test('host:port, including IPv6 literals', () => {
    expect(parseHostPort('0.0.0.0:587')).toEqual({ host: '0.0.0.0', port: 587 });
    expect(parseHostPort('[::1]:25')).toEqual({ host: '::1', port: 25 });
    expect(parseHostPort(':25')).toEqual({ host: '0.0.0.0', port: 25 });
    expect(parseHostPort('10.0.0.5')).toBeUndefined();
    expect(parseHostPort('host:70000')).toBeUndefined();
  });
});

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
});

describe('check: files the config points to', () => {
  async function setup(files: { users?: string; cert?: boolean; wrongKey?: boolean }) {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-check-'));
    const a = await makeTestCert('a.test');
    const b = await makeTestCert('b.test');
    if (files.cert !== false) {
      await writeFile(path.join(dir, 'cert.pem'), a.cert);
      await writeFile(path.join(dir, 'key.pem'), files.wrongKey ? b.key : a.key);
    }
    await writeFile(path.join(dir, 'users'), files.users ?? 'alice:$2y$05$abcdefghijklmnopqrstuu5Zx0Nq6PzGQy4Qb0fxVt7bLqfJ0mB1e\n');
    const file = path.join(dir, 'smtpgate.yaml');
    await writeFile(file, MINIMAL);
    return { dir, file };
  }

  test('a complete config passes', async () => {
    const { file } = await setup({});
    expect(await checkIssues(file)).toEqual([]);
  });

  test('check: an unreadable syslog CA and a log folder that does not exist are named with their field and fix', async () => {
    const { dir, file } = await setup({});
    await writeFile(path.join(dir, 'not-a-ca.pem'), 'hello\n');
    const withLog = async (log: string) => {
      await writeFile(file, MINIMAL + log);
      return checkIssues(file);
    };
    expect(await withLog('log:\n  file: nowhere/smtpgate.log\n  syslog:\n    transport: tls\n    host: 127.0.0.1\n    ca: missing-ca.pem\n')).toEqual([
      `${file}:17: log.syslog.ca: cannot read the syslog server's CA bundle ${dir}/missing-ca.pem: it does not exist`,
      `${file}:13: log.file: cannot create ${dir}/nowhere/smtpgate.log: the folder ${dir}/nowhere does not exist; create it and give smtpgate write access (under systemd: LogsDirectory=smtpgate makes /var/log/smtpgate)`,
    ]);
    expect((await withLog('log:\n  syslog:\n    transport: tls\n    host: 127.0.0.1\n    ca: not-a-ca.pem\n'))[0]).toContain(`log.syslog.ca: not a PEM CA bundle`);
    expect(await withLog('log:\n  file: smtpgate.log\n')).toEqual([]);
  });

  test('a missing certificate file is reported at the config line that names it, with its path', async () => {
    const { dir, file } = await setup({ cert: false });
    const p = await checkIssues(file);
    expect(p).toEqual([
      `${file}:6: tls.cert: cannot read the certificate ${dir}/cert.pem: it does not exist`,
      `${file}:7: tls.key: cannot read the private key ${dir}/key.pem: it does not exist`,
    ]);
  });

  test('a key that does not match the certificate is refused', async () => {
    const { dir, file } = await setup({ wrongKey: true });
    const p = await checkIssues(file);
    expect(p[0]).toContain(`${dir}/key.pem: tls.key: this key does not belong to the certificate`);
  });

  test('a malformed users file names the line and the fix', async () => {
    const { dir, file } = await setup({ users: '# users\nalice:$apr1$xyz$abc\nbob\n' });
    const p = await checkIssues(file);
    expect(p).toEqual([
      `${dir}/users:2: user "alice": an MD5 ($apr1$) hash; expected bcrypt ($2y$/$2b$), e.g. "smtpgate user passwd alice" or "htpasswd -B" (named by ${file}:9 auth.users)`,
      `${dir}/users:3: expected "NAME:HASH" (as written by htpasswd -B), found a line without a ":" (named by ${file}:9 auth.users)`,
    ]);
  });
});

describe('metrics.adminTokenFile is required off loopback', () => {
  // The admin routes lift lockouts and list who is locked out: beyond loopback they need a token.
  test.each(['0.0.0.0:9464', '[::]:9464', ':9464', '10.0.0.7:9464', '[2001:db8::7]:9464', 'metrics.internal:9464', '[::ffff:10.0.0.7]:9464'])(
    'metrics.address %s without a token is refused, naming the line and the fix',
    (address) => {
      const issues = issuesOf(`${MINIMAL}metrics:\n  address: "${address}"\n`);
      expect(issues).toHaveLength(1);
      expect(issues[0]).toMatch(/^\/etc\/smtpgate\/smtpgate\.yaml:13: metrics\.adminTokenFile: metrics\.address .* is not loopback/);
      expect(issues[0]).toContain('/limits/clear');
      expect(issues[0]).toContain('openssl rand -hex 32');
    },
  );

  test.each(['127.0.0.1:9464', '127.0.0.53:9464', '[::1]:9464', 'localhost:9464', '127.0.0.1:0', '[::ffff:127.0.0.1]:9464'])('metrics.address %s needs no token', (address) => {
    expect(parseConfig(`${MINIMAL}metrics:\n  address: "${address}"\n`, '/etc/smtpgate/smtpgate.yaml').metrics.adminTokenFile).toBeUndefined();
  });

  test('a non-loopback address with a token file passes', () => {
    const cfg = parseConfig(`${MINIMAL}metrics:\n  address: 0.0.0.0:9464\n  adminTokenFile: admin-token\n`, '/etc/smtpgate/smtpgate.yaml');
    expect(cfg.metrics.adminTokenFile).toBe('/etc/smtpgate/admin-token');
  });
});

describe('addresses that cannot all be bound are refused before anything binds', () => {
  const withListeners = (a: string, b: string, metrics = '127.0.0.1:9464') =>
    `${MINIMAL.replace('    address: 0.0.0.0:587\n', `    address: "${a}"\n  - name: second\n    address: "${b}"\n`)}metrics:\n  address: "${metrics}"\n`;

  // Linux (node's default dual-stack "::"): each pair below fails with EADDRINUSE at bind.
  test.each([
    ['the same address twice', '127.0.0.1:2525', '127.0.0.1:2525', 'the same address'],
    ['0.0.0.0 and a specific IPv4 address', '0.0.0.0:2525', '10.1.2.3:2525', '0.0.0.0 takes the port on every IPv4 address'],
    ['a specific IPv4 address and 0.0.0.0', '10.1.2.3:2525', ':2525', '0.0.0.0 takes the port on every IPv4 address'],
    [':: and 0.0.0.0', '[::]:2525', '0.0.0.0:2525', ':: takes the port on every IPv6 and IPv4 address'],
    [':: and ::1', '[::]:2525', '[::1]:2525', ':: takes the port on every IPv6 and IPv4 address'],
    [':: and 127.0.0.1', '127.0.0.1:2525', '[::]:2525', ':: takes the port on every IPv6 and IPv4 address'],
    ['an IPv4-mapped address and the IPv4 address', '[::ffff:127.0.0.1]:2525', '127.0.0.1:2525', 'the same address'],
    ['an IPv4-mapped address in hex and the IPv4 address', '10.0.0.1:2525', '[::ffff:a00:1]:2525', 'the same address'],
    ['an IPv4-mapped address in hex and 0.0.0.0', '0.0.0.0:2525', '[::ffff:a00:1]:2525', '0.0.0.0 takes the port on every IPv4 address'],
    ['two spellings of one IPv6 address', '[2001:db8::1]:2525', '[2001:db8:0:0::1]:2525', 'the same address'],
  ])('%s', (_name, a, b, why) => {
    const issues = issuesOf(withListeners(a, b));
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatch(/^\/etc\/smtpgate\/smtpgate\.yaml:6: listeners\[1\]\.address: listener "second" \(.*\) and listener "submission" \(.*\) cannot both bind port 2525/);
    expect(issues[0]).toContain(why);
  });

  test('the metrics address on a listener port', () => {
    const issues = issuesOf(withListeners('127.0.0.1:2525', '127.0.0.1:2465', '0.0.0.0:2465'));
    expect(issues.filter((i) => i.includes('cannot both bind'))).toEqual([
      expect.stringMatching(/smtpgate\.yaml:15: metrics\.address: metrics\.address \(0\.0\.0\.0:2465\) and listener "second" \(127\.0\.0\.1:2465\) cannot both bind port 2465/),
    ]);
  });

  test.each([
    ['two loopback addresses', '127.0.0.1:2525', '127.0.0.2:2525'],
    ['0.0.0.0 and ::1 (different families)', '0.0.0.0:2525', '[::1]:2525'],
    ['port 0 twice (each gets a free port)', '127.0.0.1:0', '127.0.0.1:0'],
    ['different ports', '0.0.0.0:25', '0.0.0.0:587'],
  ])('%s can be bound together', (_name, a, b) => {
    expect(parseConfig(withListeners(a, b), '/etc/smtpgate/smtpgate.yaml').listeners).toHaveLength(2);
  });
});

describe('notifications', () => {
  const WITH = (section: string) => `${MINIMAL}notifications:\n${section}`;

  test('addresses must be plain ones; a relay that is smtpgate itself and a notice to nobody are refused', () => {
    expect(issuesOf(WITH('  from: smtpgate@corp.example\n  admins: ["Security <sec@corp.example>"]\n  template: suspension.txt\n')).join('\n')).toMatch(
      /smtpgate\.yaml:\d+: notifications\.admins\[0\]: expected a plain address such as postmaster@corp\.example \(no display name, no list\)/,
    );
    expect(issuesOf(WITH('  from: smtpgate@corp.example\n  template: suspension.txt\n  relay: { address: 127.0.0.1:587 }\n')).join('\n')).toMatch(
      /notifications\.relay\.address: 127\.0\.0\.1:587 is smtpgate's own listener "submission": notices would come back through the limits that suspended the account/,
    );
    expect(issuesOf(WITH('  from: smtpgate@corp.example\n  notifyUser: false\n  template: suspension.txt\n')).join('\n')).toMatch(
      /notifications\.admins: nobody would be notified: list addresses in admins, or set notifyUser: true/,
    );
  });

  test('the defaults: the user is told, three retries a minute apart and doubling, the template beside the config', () => {
    const cfg = parseConfig(WITH('  from: smtpgate@corp.example\n  template: suspension.txt\n'), '/etc/smtpgate/smtpgate.yaml');
    expect(cfg.notifications).toEqual({ from: 'smtpgate@corp.example', admins: [], notifyUser: true, template: '/etc/smtpgate/suspension.txt', retries: 3, retryDelay: 60_000 });
  });

  test('check: a missing template is reported at the line naming it; a broken one at its own line, saying which config line named it', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-check-'));
    const cert = await makeTestCert('a.test');
    await writeFile(path.join(dir, 'cert.pem'), cert.cert);
    await writeFile(path.join(dir, 'key.pem'), cert.key);
    await writeFile(path.join(dir, 'users'), 'alice:$2y$05$abcdefghijklmnopqrstuu5Zx0Nq6PzGQy4Qb0fxVt7bLqfJ0mB1e\n');
    const file = path.join(dir, 'smtpgate.yaml');
    await writeFile(file, WITH('  from: smtpgate@corp.example\n  admins: [sec@corp.example]\n  template: suspension.txt\n'));
    const problems = async () => {
      try {
        await checkConfigFile(file, 'check');
        return [];
      } catch (err) {
        if (err instanceof ConfigError) return err.message.split('\n');
        throw err;
      }
    };
    expect(await problems()).toEqual([`${file}:15: notifications.template: cannot read the suspension notice template ${dir}/suspension.txt: it does not exist`]);
    await writeFile(path.join(dir, 'suspension.txt'), 'Subject: {{user}} suspended\nBcc: everyone@corp.example\n\nHello\n');
    expect(await problems()).toEqual([
      `${dir}/suspension.txt:2: notifications.template: only Subject: may be set in the template; Bcc is not (From comes from notifications.from, To from the user and notifications.admins; smtpgate writes Date, Message-ID and Auto-Submitted itself) (named by ${file}:15 notifications.template)`,
    ]);
    await writeFile(path.join(dir, 'suspension.txt'), 'Subject: {{user}} suspended\n\nHello {{user}}\n');
    expect(await problems()).toEqual([]);
    expect((await checkConfigFile(file, 'check')).material.warnings).not.toContainEqual(expect.stringMatching(/^notifications is set/));
    await writeFile(file, WITH('  from: smtpgate@corp.example\n  admins: [sec@corp.example]\n  template: suspension.txt\n') + 'limits:\n  brake: { quotaHits: off }\n');
    expect((await checkConfigFile(file, 'check')).material.warnings).toContain('notifications is set, but limits.brake.quotaHits is off: no account is ever suspended, so no notice is ever sent');
  });
});
