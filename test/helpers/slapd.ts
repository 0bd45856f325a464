/**
 * A real OpenLDAP slapd for the LDAP auth source's tests: started from a slapd.conf in a temp
 * folder (mdb backend, the ppolicy overlay), listening on 127.0.0.1 for ldap:// (StartTLS) and
 * ldaps:// with a server certificate from a throwaway CA, and loaded with slapadd from the
 * small directory below. Never the system's slapd.
 *
 * The directory (suffix dc=example,dc=org), every password being "<name>-pw":
 * - cn=smtpgate,ou=services: the service account (reads everything);
 * - ou=people: alice (mail, AD-style proxyAddresses and memberOf, userAccountControl 512),
 *   bob (mail only), erin (userAccountControl 514: ACCOUNTDISABLE), carol (locked by the
 *   password policy), dave (employeeType: suspended, for a disabledFilter), jérôme (a
 *   non-ASCII login), and two entries with uid=twin (an ambiguous login).
 * OpenLDAP has no proxyAddresses, userAccountControl or memberOf: a tiny schema below defines
 * them with Active Directory's OIDs, on an auxiliary class.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { issueServerCert, makeTestCa, type TestCert } from './pki.js';
import { deadPort } from './sessions.js';

const run = promisify(execFile);

export const SUFFIX = 'dc=example,dc=org';
export const PEOPLE = `ou=people,${SUFFIX}`;
export const SERVICE_DN = `cn=smtpgate,ou=services,${SUFFIX}`;
export const SERVICE_PASSWORD = 'smtpgate-pw';

export interface SlapdOptions {
  /** Without TLS: StartTLS is refused (and ldaps:// does not listen). */
  tls?: boolean;
}

export interface Slapd {
  readonly dir: string;
  /** ldap://127.0.0.1:P, for StartTLS. */
  readonly ldapUrl: string;
  /** ldaps://127.0.0.1:Q */
  readonly ldapsUrl: string;
  /** The CA that signed slapd's certificate. */
  readonly ca: TestCert;
  /** Stops slapd (SIGTERM, and waits for the exit); the data stays for start(). */
  kill(): Promise<void>;
  /** Starts it again on the same ports with the same data. */
  start(): Promise<void>;
  /** kill() and remove the folder. */
  stop(): Promise<void>;
}

/** An LDIF line; values that are not plain ASCII go base64 (RFC 2849 §"SAFE-STRING"). */
function ldifLine(name: string, value: string): string {
  return /^[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b\x0c\x0e-\x7f]*$/.test(value) && !value.endsWith(' ')
    ? `${name}: ${value}`
    : `${name}:: ${Buffer.from(value, 'utf8').toString('base64')}`;
}

function entry(dn: string, attrs: [string, string][]): string {
  return [ldifLine('dn', dn), ...attrs.map(([k, v]) => ldifLine(k, v))].join('\n');
}

function person(uid: string, extra: [string, string][] = [], base = PEOPLE): string {
  return entry(`uid=${uid},${base}`, [
    ['objectClass', 'inetOrgPerson'],
    ['objectClass', 'smtpgateTestAccount'],
    ['uid', uid],
    ['cn', uid],
    ['sn', uid],
    ['userPassword', `${uid}-pw`],
    ...extra,
  ]);
}

export const DIRECTORY = [
  entry(SUFFIX, [['objectClass', 'dcObject'], ['objectClass', 'organization'], ['o', 'example'], ['dc', 'example']]),
  ...['people', 'services', 'policies'].map((ou) => entry(`ou=${ou},${SUFFIX}`, [['objectClass', 'organizationalUnit'], ['ou', ou]])),
  entry(`ou=contractors,${PEOPLE}`, [['objectClass', 'organizationalUnit'], ['ou', 'contractors']]),
  entry(`cn=default,ou=policies,${SUFFIX}`, [['objectClass', 'device'], ['objectClass', 'pwdPolicy'], ['cn', 'default'], ['pwdAttribute', 'userPassword'], ['pwdLockout', 'TRUE'], ['pwdMaxFailure', '1000']]),
  entry(SERVICE_DN, [['objectClass', 'person'], ['cn', 'smtpgate'], ['sn', 'smtpgate'], ['userPassword', SERVICE_PASSWORD]]),
  person('alice', [
    ['mail', 'Alice@Corp.Example'],
    ['proxyAddresses', 'SMTP:alice@corp.example'],
    ['proxyAddresses', 'smtp:A.Liddell@Sales.Corp.Example'],
    ['proxyAddresses', 'X400:c=US;a= ;p=Corp;o=Example;s=Liddell;g=Alice;'],
    ['proxyAddresses', 'SIP:alice@corp.example'],
    ['memberOf', 'CN=staff,OU=Groups,DC=corp,DC=example'],
    ['memberOf', 'CN=R\\2cD Team,OU=Groups,DC=corp,DC=example'],
    ['userAccountControl', '512'],
  ]),
  person('bob', [['mail', 'bob@corp.example']]),
  person('erin', [['mail', 'erin@corp.example'], ['userAccountControl', '514']]),
  person('carol', [['mail', 'carol@corp.example'], ['pwdAccountLockedTime', '000001010000Z']]),
  person('dave', [['mail', 'dave@corp.example'], ['employeeType', 'suspended']]),
  person('jérôme', [['mail', 'jerome@corp.example']]),
  person('twin', [['mail', 'twin1@corp.example']]),
  person('twin', [['mail', 'twin2@corp.example']], `ou=contractors,${PEOPLE}`),
].join('\n\n');

/** proxyAddresses, userAccountControl and memberOf with AD's OIDs (MS-ADA1..3), on an auxiliary class. */
const AD_SCHEMA = `
attributetype ( 1.2.840.113556.1.2.210 NAME 'proxyAddresses' EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
attributetype ( 1.2.840.113556.1.4.8 NAME 'userAccountControl' EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.2.102 NAME 'memberOf' EQUALITY distinguishedNameMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.12 )
objectclass ( 1.3.6.1.4.1.4203.666.11.99.1 NAME 'smtpgateTestAccount' SUP top AUXILIARY MAY ( proxyAddresses $ userAccountControl $ memberOf ) )
`;

function slapdConf(dir: string, cert: TestCert | undefined, ca: TestCert): string {
  return `
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
${AD_SCHEMA}
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload ppolicy
pidfile ${dir}/slapd.pid
argsfile ${dir}/slapd.args
${cert ? `TLSCACertificateFile ${ca.certFile}\nTLSCertificateFile ${cert.certFile}\nTLSCertificateKeyFile ${cert.keyFile}` : ''}

database mdb
suffix "${SUFFIX}"
rootdn "cn=admin,${SUFFIX}"
directory ${dir}/data
maxsize 16777216
overlay ppolicy
ppolicy_default "cn=default,ou=policies,${SUFFIX}"
ppolicy_use_lockout

access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="${SERVICE_DN}" read by self read by * none
`;
}

/** Polls an anonymous root-DSE read until slapd answers; fails early if it exits. */
async function waitReady(url: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`slapd exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${output()}`);
    try {
      await run('ldapsearch', ['-x', '-H', url, '-b', '', '-s', 'base', '-o', 'nettimeout=1'], { timeout: 2_000 });
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`slapd did not answer on ${url} within 10 s:\n${output()}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}

export async function startSlapd(opts: SlapdOptions = {}): Promise<Slapd> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-slapd-'));
  await mkdir(path.join(dir, 'data'));
  const ca = await makeTestCa('smtpgate slapd test CA');
  const cert = opts.tls === false ? undefined : await issueServerCert(ca, 'localhost');
  const conf = path.join(dir, 'slapd.conf');
  await writeFile(conf, slapdConf(dir, cert, ca));
  await writeFile(path.join(dir, 'directory.ldif'), `${DIRECTORY}\n`);
  await run('slapadd', ['-f', conf, '-l', path.join(dir, 'directory.ldif')]);
  const ldapPort = await deadPort();
  const ldapsPort = await deadPort();
  const ldapUrl = `ldap://127.0.0.1:${ldapPort}`;
  const ldapsUrl = `ldaps://127.0.0.1:${ldapsPort}`;
  const listen = [`${ldapUrl}/`, ...(cert ? [`${ldapsUrl}/`] : [])].join(' ');

  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const start = async () => {
    let out = '';
    // -d 0: stay in the foreground (so the test owns the process) without debug output.
    const c = spawn('/usr/sbin/slapd', ['-f', conf, '-h', listen, '-d', '0'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    c.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    c.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    child = c;
    exited = new Promise((resolve) => c.once('exit', () => resolve()));
    await waitReady(ldapUrl, c, () => out);
  };
  const kill = async () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  await start();
  return {
    dir,
    ldapUrl,
    ldapsUrl,
    ca,
    kill,
    start,
    stop: async () => {
      await kill();
      await Promise.all([dir, ca.dir, ...(cert ? [cert.dir] : [])].map((d) => rm(d, { recursive: true, force: true })));
    },
  };
}
