/** Throwaway certificates for tests, written to a temp folder. */
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { generate } from 'selfsigned';

export interface TestCert {
  readonly dir: string;
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: string;
  readonly key: string;
}

/**
 * `keyType: 'rsa'` for tests that need RSA key exchange to exist at all (sslscan). `notBefore`
 * (default a minute ago) and `days` of validity from it place the validity period, e.g. in the
 * past (expired) or in the future (not yet valid).
 */
export async function makeTestCert(commonName = 'localhost', opts: { days?: number; notBefore?: Date; keyType?: 'ec' | 'rsa' } = {}): Promise<TestCert> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-pki-'));
  const notBefore = opts.notBefore ?? new Date(Date.now() - 60_000);
  const pems = await generate([{ name: 'commonName', value: commonName }], {
    ...(opts.keyType === 'rsa' ? { keyType: 'rsa' as const, keySize: 2048 } : { keyType: 'ec' as const }),
    algorithm: 'sha256',
    notBeforeDate: notBefore,
    notAfterDate: new Date(notBefore.getTime() + (opts.days ?? 30) * 86_400_000),
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 2, value: commonName }, { type: 7, ip: '127.0.0.1' }] }],
  });
  const certFile = path.join(dir, 'cert.pem');
  const keyFile = path.join(dir, 'key.pem');
  await writeFile(certFile, pems.cert);
  await writeFile(keyFile, pems.private);
  return { dir, certFile, keyFile, cert: pems.cert, key: pems.private };
}

/** A throwaway certificate authority, for client-certificate tests. */
export async function makeTestCa(commonName = 'smtpgate test CA'): Promise<TestCert> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-ca-'));
  const pems = await generate([{ name: 'commonName', value: commonName }], {
    keyType: 'ec',
    algorithm: 'sha256',
    notBeforeDate: new Date(Date.now() - 60_000),
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    ],
  });
  const certFile = path.join(dir, 'ca.pem');
  const keyFile = path.join(dir, 'ca-key.pem');
  await writeFile(certFile, pems.cert);
  await writeFile(keyFile, pems.private);
  return { dir, certFile, keyFile, cert: pems.cert, key: pems.private };
}

/** A TLS client certificate with subject CN `commonName`, signed by `ca`. */
export function issueClientCert(ca: TestCert, commonName: string): Promise<TestCert> {
  return issueCert(ca, commonName, 'client');
}

/**
 * A TLS server certificate for `commonName` (and 127.0.0.1), signed by `ca`: for a test server
 * that a client checks against `ca` alone, as it would a private CA's in production.
 */
export function issueServerCert(ca: TestCert, commonName = 'localhost'): Promise<TestCert> {
  return issueCert(ca, commonName, 'server');
}

async function issueCert(ca: TestCert, commonName: string, role: 'client' | 'server'): Promise<TestCert> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `smtpgate-${role}-`));
  const pems = await generate([{ name: 'commonName', value: commonName }], {
    keyType: 'ec',
    algorithm: 'sha256',
    notBeforeDate: new Date(Date.now() - 60_000),
    ca: { key: ca.key, cert: ca.cert },
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, critical: true },
      ...(role === 'client'
        ? [{ name: 'extKeyUsage' as const, clientAuth: true }]
        : [
            { name: 'extKeyUsage' as const, serverAuth: true },
            { name: 'subjectAltName' as const, altNames: [{ type: 2 as const, value: commonName }, { type: 7 as const, ip: '127.0.0.1' }] },
          ]),
    ],
  });
  const certFile = path.join(dir, `${role}.pem`);
  const keyFile = path.join(dir, `${role}-key.pem`);
  await writeFile(certFile, pems.cert);
  await writeFile(keyFile, pems.private);
  return { dir, certFile, keyFile, cert: pems.cert, key: pems.private };
}
