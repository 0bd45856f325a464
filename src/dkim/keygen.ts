/**
 * A new DKIM key and the DNS record that publishes it (RFC 6376 §3.6.1): `smtpgate dkim keygen`.
 * RSA only: nodemailer's signer writes a=rsa-sha256 (no Ed25519, RFC 8463).
 */
import { generateKeyPair } from 'node:crypto';
import { promisify } from 'node:util';

export const DEFAULT_KEY_BITS = 2048;
/** RFC 8301 §3.2: at least 1024; verifiers need not take more than 4096. */
export const MIN_KEY_BITS = 1024;
export const MAX_KEY_BITS = 4096;
/** RFC 1035 §3.3.14: a TXT record is a list of character-strings of at most 255 octets each. */
const TXT_STRING_OCTETS = 255;

export interface DkimKeyPair {
  /** PKCS#8 PEM, for the key file. */
  readonly privatePem: string;
  /** The p= tag: the DER SubjectPublicKeyInfo, base64. */
  readonly publicKey: string;
}

export async function generateDkimKey(bits = DEFAULT_KEY_BITS): Promise<DkimKeyPair> {
  const { privateKey, publicKey } = await promisify(generateKeyPair)('rsa', { modulusLength: bits });
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKey: publicKey.export({ type: 'spki', format: 'der' }).toString('base64'),
  };
}

/** The record's name and its text, as a zone file line: `SELECTOR._domainkey.DOMAIN. IN TXT "…" "…"`. */
export function dnsRecord(domain: string, selector: string, publicKey: string): { name: string; value: string; zoneLine: string } {
  const name = `${selector}._domainkey.${domain}`;
  const value = `v=DKIM1; k=rsa; p=${publicKey}`;
  const strings: string[] = [];
  for (let i = 0; i < value.length; i += TXT_STRING_OCTETS) strings.push(`"${value.slice(i, i + TXT_STRING_OCTETS)}"`);
  return { name, value, zoneLine: `${name}. IN TXT ${strings.join(' ')}` };
}
