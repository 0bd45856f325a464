/**
 * Outside programs the tests drive (swaks, smtp-sink, redis-server, ...). A test that needs a
 * missing one skips loudly; under SMTPGATE_REQUIRE_ALL=1 (set by .ci/run) the skip is a failure.
 */
import { execFileSync } from 'node:child_process';
import { describe, test } from 'vitest';

const SEARCH_PATH = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin', '/usr/bin']);

export function findProgram(name: string): string | undefined {
  for (const dir of SEARCH_PATH) {
    try {
      execFileSync('test', ['-x', `${dir}/${name}`]);
      return `${dir}/${name}`;
    } catch {
      /* not here */
    }
  }
  return undefined;
}

const INSTALL_HINT: Record<string, string> = {
  swaks: 'apt-get install swaks',
  'smtp-sink': 'apt-get install postfix',
  'smtp-source': 'apt-get install postfix',
  postfix: 'apt-get install postfix',
  'redis-server': 'apt-get install redis-server',
  openssl: 'apt-get install openssl',
  sslscan: 'apt-get install sslscan',
  nmap: 'apt-get install nmap',
  prometheus: 'apt-get install prometheus',
  promtool: 'apt-get install prometheus',
  'systemd-analyze': 'apt-get install systemd',
  haproxy: 'apt-get install haproxy',
  slapd: 'apt-get install slapd',
  slapadd: 'apt-get install slapd',
  ldapsearch: 'apt-get install ldap-utils',
  dovecot: 'apt-get install dovecot-core',
  doveadm: 'apt-get install dovecot-core',
  rsyslogd: 'apt-get install rsyslog rsyslog-gnutls',
  logrotate: 'apt-get install logrotate',
  'fail2ban-regex': 'apt-get install fail2ban',
  'fail2ban-client': 'apt-get install fail2ban',
  dkimverify: 'apt-get install python3-dkim',
};

/**
 * `describe` when every program is installed; otherwise a loud skip, or — under
 * SMTPGATE_REQUIRE_ALL=1 — a failing test that names what is missing.
 */
export function describeWith(programs: string[], name: string, body: () => void): void {
  const missing = programs.filter((p) => !findProgram(p));
  if (missing.length === 0) {
    describe(name, body);
    return;
  }
  const hint = missing.map((p) => `${p} (${INSTALL_HINT[p] ?? 'install it'})`).join(', ');
  if (process.env.SMTPGATE_REQUIRE_ALL === '1') {
    describe(name, () => {
      test(`needs ${missing.join(', ')}`, () => {
        throw new Error(`SMTPGATE_REQUIRE_ALL=1 and missing: ${hint}`);
      });
    });
    return;
  }
  process.stderr.write(`\n*** SKIPPING "${name}": missing ${hint}\n\n`);
  describe.skip(name, body);
}
