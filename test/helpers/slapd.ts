/**
 * A real OpenLDAP slapd for the LDAP auth source's tests, started as the bench starts its own
 * (bench/lib/slapd.ts: a temp folder, mdb, 127.0.0.1 only): here with the ppolicy overlay,
 * ldap:// (StartTLS) and ldaps:// with a server certificate from a throwaway CA, and the
 * small directory below.
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
import { rm } from 'node:fs/promises';
import { startSlapd as startSlapdProcess, type SlapdProcess } from '../../bench/lib/slapd.js';
import { issueServerCert, makeTestCa, type TestCert } from './pki.js';
import { deadPort } from './sessions.js';

export const SUFFIX = 'dc=example,dc=org';
export const PEOPLE = `ou=people,${SUFFIX}`;
export const SERVICE_DN = `cn=smtpgate,ou=services,${SUFFIX}`;
export const SERVICE_PASSWORD = 'smtpgate-pw';

export interface SlapdOptions {
  /** Without TLS: StartTLS is refused (and ldaps:// does not listen). */
  tls?: boolean;
  /** Entries after DIRECTORY's (LDIF, e.g. from `person()`), for a test that needs its own. */
  extraEntries?: readonly string[];
}

/** The running slapd (bench/lib/slapd.ts), and the CA that signed its certificate; stop() removes the CA too. */
export interface Slapd extends Omit<SlapdProcess, 'pid'> {
  readonly ca: TestCert;
}

/** An LDIF line; values that are not plain ASCII go base64 (RFC 2849 §"SAFE-STRING"). */
function ldifLine(name: string, value: string): string {
  return /^[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b\x0c\x0e-\x7f]*$/.test(value) && !value.endsWith(' ')
    ? `${name}: ${value}`
    : `${name}:: ${Buffer.from(value, 'utf8').toString('base64')}`;
}

export function entry(dn: string, attrs: [string, string][]): string {
  return [ldifLine('dn', dn), ...attrs.map(([k, v]) => ldifLine(k, v))].join('\n');
}

export function person(uid: string, extra: [string, string][] = [], base = PEOPLE): string {
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

export async function startSlapd(opts: SlapdOptions = {}): Promise<Slapd> {
  const ca = await makeTestCa('smtpgate slapd test CA');
  const cert = opts.tls === false ? undefined : await issueServerCert(ca, 'localhost');
  const slapd = await startSlapdProcess({
    suffix: SUFFIX,
    ldif: [DIRECTORY, ...(opts.extraEntries ?? [])].join('\n\n'),
    schema: AD_SCHEMA,
    modules: ['ppolicy'],
    database: `overlay ppolicy
ppolicy_default "cn=default,ou=policies,${SUFFIX}"
ppolicy_use_lockout

access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="${SERVICE_DN}" read by self read by * none`,
    ...(cert ? { tls: { caFile: ca.certFile, certFile: cert.certFile, keyFile: cert.keyFile } } : {}),
    ports: { ldap: await deadPort(), ldaps: await deadPort() },
  });
  return {
    dir: slapd.dir,
    ldapUrl: slapd.ldapUrl,
    ldapsUrl: slapd.ldapsUrl,
    ca,
    kill: slapd.kill,
    start: slapd.start,
    stop: async () => {
      await slapd.stop();
      await Promise.all([ca.dir, ...(cert ? [cert.dir] : [])].map((d) => rm(d, { recursive: true, force: true })));
    },
  };
}
