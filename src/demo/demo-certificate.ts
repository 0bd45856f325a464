/**
 * Demo mode only: a self-signed certificate generated at first start, so that the quick start
 * needs no openssl step. A real config without a certificate refuses to start.
 *
 * The generator, `selfsigned` (and the X.509 and ASN.1 libraries it brings), is a development
 * dependency: node's crypto can make keys but not certificates, and a production install
 * (`npm ci --omit=dev`, the container image) has no use for it. So it is loaded only when a
 * demo certificate must be made, and its absence is reported, not thrown as a module error.
 */
import { mkdir, writeFile, access } from 'node:fs/promises';
import path from 'node:path';

const exists = (f: string) => access(f).then(() => true, () => false);

export type GenerateCertificate = typeof import('selfsigned').generate;

/** selfsigned's generator, or undefined when it is not installed (a production install). */
export async function loadCertificateGenerator(): Promise<GenerateCertificate | undefined> {
  try {
    return (await import('selfsigned')).generate;
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ERR_MODULE_NOT_FOUND') return undefined;
    throw err;
  }
}

export async function demoCertificateExists(certFile: string, keyFile: string): Promise<boolean> {
  return (await exists(certFile)) && (await exists(keyFile));
}

/** Creates cert and key files when either is missing. Returns true when it generated them. */
export async function ensureDemoCertificate(certFile: string, keyFile: string, hostname: string, generate: GenerateCertificate): Promise<boolean> {
  if (await demoCertificateExists(certFile, keyFile)) return false;
  const notBefore = new Date(Date.now() - 60_000);
  const notAfter = new Date(notBefore.getTime() + 365 * 86_400_000);
  const pems = await generate([{ name: 'commonName', value: hostname }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: notBefore,
    notAfterDate: notAfter,
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      {
        name: 'subjectAltName',
        altNames: [
          { type: 2, value: hostname },
          { type: 2, value: 'localhost' },
          { type: 7, ip: '127.0.0.1' },
        ],
      },
    ],
  });
  await mkdir(path.dirname(certFile), { recursive: true });
  await mkdir(path.dirname(keyFile), { recursive: true });
  await writeFile(keyFile, pems.private, { mode: 0o600 });
  await writeFile(certFile, pems.cert, { mode: 0o644 });
  return true;
}
