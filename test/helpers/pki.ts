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

export async function makeTestCert(commonName = 'localhost', opts: { days?: number } = {}): Promise<TestCert> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-pki-'));
  const notBefore = new Date(Date.now() - 60_000);
  const pems = await generate([{ name: 'commonName', value: commonName }], {
    keyType: 'ec',
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
