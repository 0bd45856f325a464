/**
 * The directory the W5-ldap workloads sign in against: a slapd of the bench's own
 * (bench/lib/slapd.ts) on 127.0.0.1, ldaps:// with the bench's certificate, holding a service
 * account and the bench's users, each with `mail: sender@corp.test` (the +policy peer's sender
 * binding then holds for them as it does with the users file).
 *
 * The passwords are stored as slapd stores them by default: `{SSHA}` (salted SHA-1, slapd's
 * default `password-hash`, what slappasswd writes), so a user's bind costs slapd one SHA-1.
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { TlsFiles } from '../peers/peer.js';
import { freePort } from './processes.js';
import { startSlapd, type SlapdProcess } from './slapd.js';

const run = promisify(execFile);

const SUFFIX = 'dc=bench,dc=test';
const PEOPLE = `ou=people,${SUFFIX}`;
const SERVICE_DN = `cn=smtpgate,ou=services,${SUFFIX}`;
const SERVICE_PASSWORD = 'smtpgate-bench-pw';

/** What smtpgate's `auth.ldap` section needs (search-then-bind). */
export interface BenchDirectory {
  readonly url: string;
  readonly ca: string;
  readonly bindDn: string;
  readonly bindPasswordFile: string;
  readonly userBase: string;
  /** slapd's pid, for its CPU time. */
  readonly pid: number;
  stop(): Promise<void>;
}

/** The `{SSHA}` value slappasswd writes: slapd's own default scheme. */
async function ssha(password: string): Promise<string> {
  const { stdout } = await run('slappasswd', ['-h', '{SSHA}', '-s', password]);
  return stdout.trim();
}

/** Starts slapd with the users; `dir` gets the service account's password file. */
export async function startBenchDirectory(
  users: readonly { readonly name: string; readonly password: string }[],
  tls: TlsFiles,
  mail: string,
  dir: string,
): Promise<BenchDirectory> {
  const people = await Promise.all(
    users.map(
      async (u) => `dn: uid=${u.name},${PEOPLE}
objectClass: inetOrgPerson
uid: ${u.name}
cn: ${u.name}
sn: ${u.name}
mail: ${mail}
userPassword: ${await ssha(u.password)}`,
    ),
  );
  const ldif = [
    `dn: ${SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: bench\ndc: bench`,
    ...['people', 'services'].map((ou) => `dn: ou=${ou},${SUFFIX}\nobjectClass: organizationalUnit\nou: ${ou}`),
    `dn: ${SERVICE_DN}\nobjectClass: person\ncn: smtpgate\nsn: smtpgate\nuserPassword: ${await ssha(SERVICE_PASSWORD)}`,
    ...people,
  ].join('\n\n');
  const slapd: SlapdProcess = await startSlapd({
    suffix: SUFFIX,
    ldif,
    // The login's attribute is indexed, as in any directory that people sign in against.
    database: `index objectClass eq
index uid eq

access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="${SERVICE_DN}" read by self read by * none`,
    tls: { caFile: tls.cert, certFile: tls.cert, keyFile: tls.key },
    ports: { ldap: await freePort(), ldaps: await freePort() },
  });
  const bindPasswordFile = path.join(dir, 'ldap-bind-password');
  await writeFile(bindPasswordFile, `${SERVICE_PASSWORD}\n`, { mode: 0o600 });
  return {
    url: slapd.ldapsUrl,
    ca: tls.cert,
    bindDn: SERVICE_DN,
    bindPasswordFile,
    userBase: PEOPLE,
    pid: slapd.pid,
    stop: () => slapd.stop(),
  };
}
