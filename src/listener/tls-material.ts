/**
 * Loads and checks the certificate and key a listener serves. smtp-server silently falls back
 * to a bundled "localhost" certificate whose private key is public; smtpgate never does: a
 * missing, unreadable or mismatched certificate is a config error.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { ConfigIssue } from '../parsing/errors.js';

export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly certFile: string;
  readonly keyFile: string;
  readonly subject: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly fingerprint256: string;
}

export type TlsLoadResult = { ok: true; material: TlsMaterial } | { ok: false; issues: ConfigIssue[] };

/** `where` is the config path of the pair, e.g. "tls", used in error messages. */
export async function loadTlsMaterial(certFile: string, keyFile: string, where: string): Promise<TlsLoadResult> {
  const issues: ConfigIssue[] = [];
  const cert = await readOrIssue(certFile, `${where}.cert`, 'certificate', issues);
  const key = await readOrIssue(keyFile, `${where}.key`, 'private key', issues);
  if (!cert || !key) return { ok: false, issues };

  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    return {
      ok: false,
      issues: [{ file: certFile, path: `${where}.cert`, message: `not a PEM certificate (${(err as Error).message}); expected a file starting with "-----BEGIN CERTIFICATE-----"` }],
    };
  }
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    return {
      ok: false,
      issues: [{ file: keyFile, path: `${where}.key`, message: `not a PEM private key (${(err as Error).message}); expected an unencrypted key such as "-----BEGIN PRIVATE KEY-----"` }],
    };
  }
  if (!x509.checkPrivateKey(privateKey)) {
    return {
      ok: false,
      issues: [{ file: keyFile, path: `${where}.key`, message: `this key does not belong to the certificate ${certFile} (subject ${x509.subject.replace(/\n/g, ', ')}); check that cert and key are from the same issuance` }],
    };
  }
  return {
    ok: true,
    material: {
      cert,
      key,
      certFile,
      keyFile,
      subject: x509.subject.replace(/\n/g, ', '),
      notBefore: new Date(x509.validFrom),
      notAfter: new Date(x509.validTo),
      fingerprint256: x509.fingerprint256,
    },
  };
}

async function readOrIssue(file: string, where: string, what: string, issues: ConfigIssue[]): Promise<Buffer | undefined> {
  try {
    return await readFile(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'the file does not exist' : code === 'EACCES' ? 'permission denied' : (err as Error).message;
    issues.push({ file, path: where, message: `cannot read the ${what}: ${reason}` });
    return undefined;
  }
}

/** Days until the certificate expires (negative when it already has). */
export function daysUntilExpiry(material: TlsMaterial, now: Date): number {
  return (material.notAfter.getTime() - now.getTime()) / 86_400_000;
}
