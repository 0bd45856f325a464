/**
 * A throwaway OpenLDAP slapd: a slapd.conf in a temp folder (mdb backend), a directory loaded
 * with slapadd, listening on 127.0.0.1 for ldap:// (StartTLS) and, with TLS files, ldaps://.
 * Never the system's slapd. The bench's W5-ldap workloads and the LDAP auth source's tests
 * (test/helpers/slapd.ts, which adds their directory and certificates) both start it here.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { spawnChild, type Child } from './processes.js';

const run = promisify(execFile);

export interface SlapdSetup {
  readonly suffix: string;
  /** The directory, loaded with slapadd before the first start. */
  readonly ldif: string;
  /** Schema text after core, cosine and inetorgperson (attribute types, object classes). */
  readonly schema?: string;
  /** Modules beyond back_mdb (ppolicy). */
  readonly modules?: readonly string[];
  /** Lines of the database section after suffix, rootdn and directory: indexes, overlays, ACLs. */
  readonly database: string;
  /** Without them StartTLS is refused and ldaps:// does not listen. */
  readonly tls?: { readonly caFile: string; readonly certFile: string; readonly keyFile: string };
  /** The two ports (callers pick them their way: the bench stays below the ephemeral range). */
  readonly ports: { readonly ldap: number; readonly ldaps: number };
}

export interface SlapdProcess {
  readonly dir: string;
  /** ldap://127.0.0.1:P, for StartTLS. */
  readonly ldapUrl: string;
  /** ldaps://127.0.0.1:Q */
  readonly ldapsUrl: string;
  readonly pid: number;
  /** Stops slapd (SIGTERM, and waits for the exit); the data stays for start(). */
  kill(): Promise<void>;
  /** Starts it again on the same ports with the same data. */
  start(): Promise<void>;
  /** kill() and remove the folder. */
  stop(): Promise<void>;
}

function slapdConf(dir: string, s: SlapdSetup): string {
  return `
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
${s.schema ?? ''}
modulepath /usr/lib/ldap
moduleload back_mdb
${(s.modules ?? []).map((m) => `moduleload ${m}`).join('\n')}
pidfile ${dir}/slapd.pid
argsfile ${dir}/slapd.args
${s.tls ? `TLSCACertificateFile ${s.tls.caFile}\nTLSCertificateFile ${s.tls.certFile}\nTLSCertificateKeyFile ${s.tls.keyFile}` : ''}

database mdb
suffix "${s.suffix}"
rootdn "cn=admin,${s.suffix}"
directory ${dir}/data
maxsize 16777216
${s.database}
`;
}

/** Polls an anonymous root-DSE read until slapd answers; fails early if it exits. */
async function waitReady(url: string, child: Child, output: () => string): Promise<void> {
  const deadline = Date.now() + 10_000;
  let gone: number | string | undefined;
  void child.exited.then((c) => (gone = c));
  for (;;) {
    if (gone !== undefined) throw new Error(`slapd exited (${gone}) before it was ready:\n${output()}`);
    try {
      await run('ldapsearch', ['-x', '-H', url, '-b', '', '-s', 'base', '-o', 'nettimeout=1'], { timeout: 2_000 });
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`slapd did not answer on ${url} within 10 s:\n${output()}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}

export async function startSlapd(setup: SlapdSetup): Promise<SlapdProcess> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-slapd-'));
  await mkdir(path.join(dir, 'data'));
  const conf = path.join(dir, 'slapd.conf');
  await writeFile(conf, slapdConf(dir, setup));
  await writeFile(path.join(dir, 'directory.ldif'), `${setup.ldif}\n`);
  await run('slapadd', ['-f', conf, '-l', path.join(dir, 'directory.ldif')]);
  const ldapUrl = `ldap://127.0.0.1:${setup.ports.ldap}`;
  const ldapsUrl = `ldaps://127.0.0.1:${setup.ports.ldaps}`;
  const listen = [`${ldapUrl}/`, ...(setup.tls ? [`${ldapsUrl}/`] : [])].join(' ');

  let child: Child | undefined;
  const start = async () => {
    let out = '';
    // -d 0: stay in the foreground (so the caller owns the process) without debug output.
    const c = spawnChild('slapd', '/usr/sbin/slapd', ['-f', conf, '-h', listen, '-d', '0'], { pipe: true, cwd: dir });
    c.process.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    c.process.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    child = c;
    await waitReady(ldapUrl, c, () => out);
  };
  const kill = async () => {
    await child?.stop(10_000);
  };
  await start();
  return {
    dir,
    ldapUrl,
    ldapsUrl,
    get pid() {
      return child!.pid;
    },
    kill,
    start,
    stop: async () => {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
