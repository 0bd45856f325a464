/**
 * The DKIM signing keys, by From: domain, and their hot reload. Like the TLS certificates
 * (listener/tls-manager.ts): the key files are polled for changes and re-read on SIGHUP; a
 * broken replacement (unreadable, not an RSA key, too short) keeps the old keys in force, logs
 * an error and counts a failed reload. A transaction keeps the keys it started with.
 */
import { createPrivateKey, createSign, type KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { FileWatcher } from '../config/file-watch.js';
import type { ConfigIssue } from '../parsing/errors.js';
import { DEFAULT_SIGNED_HEADERS, type DkimConfig } from '../config/dkim-section.js';

/** RFC 8301 §3.2: verifiers refuse RSA keys under 1024 bits; 2048 is what signers should use. */
const MIN_RSA_BITS = 1024;
const SHOULD_RSA_BITS = 2048;

export interface SigningKey {
  readonly domain: string;
  readonly selector: string;
  readonly privateKey: KeyObject;
  /** The h= list, colon-separated, as nodemailer's signer takes it. */
  readonly headerFieldNames: string;
  readonly file: string;
}

/** The keys in force: every selector of each domain signs (two during a key rotation). */
export class KeySet {
  readonly #byDomain: ReadonlyMap<string, readonly SigningKey[]>;

  constructor(keys: readonly SigningKey[]) {
    const map = new Map<string, SigningKey[]>();
    for (const k of keys) map.set(k.domain, [...(map.get(k.domain) ?? []), k]);
    this.#byDomain = map;
  }

  /** The keys for a From: domain (A-label, lower case); empty when the domain is not listed. */
  forDomain(domain: string): readonly SigningKey[] {
    return this.#byDomain.get(domain) ?? [];
  }

  get size(): number {
    return this.#byDomain.size;
  }
}

/** Loads every key, collecting every problem; warnings are for keys that work but shouldn't be left so. */
export async function loadSigningKeys(config: DkimConfig): Promise<{ ok: true; keys: KeySet; warnings: string[] } | { ok: false; issues: ConfigIssue[] }> {
  const keys: SigningKey[] = [];
  const issues: ConfigIssue[] = [];
  const warnings: string[] = [];
  for (const [i, d] of config.domains.entries()) {
    const where = `dkim.domains[${i}].key`;
    const r = await loadSigningKey(d.key);
    if (!r.ok) {
      issues.push({ file: d.key, path: where, message: r.message });
      continue;
    }
    if (r.bits < SHOULD_RSA_BITS) warnings.push(`${where} ${d.key} is a ${r.bits}-bit RSA key: RFC 8301 asks for at least ${SHOULD_RSA_BITS} bits; make a new one with smtpgate dkim keygen ${d.domain} NEWSELECTOR`);
    if (r.mode & 0o077) warnings.push(`${where} ${d.key} can be read by other users (mode ${(r.mode & 0o777).toString(8)}): anyone who reads it can sign mail as ${d.domain}; chmod 600 it`);
    keys.push({ domain: d.domain, selector: d.selector, privateKey: r.key, headerFieldNames: (d.headers ?? DEFAULT_SIGNED_HEADERS).join(':'), file: d.key });
  }
  return issues.length ? { ok: false, issues } : { ok: true, keys: new KeySet(keys), warnings };
}

async function loadSigningKey(file: string): Promise<{ ok: true; key: KeyObject; bits: number; mode: number } | { ok: false; message: string }> {
  let pem: Buffer;
  let mode: number;
  try {
    pem = await readFile(file);
    mode = (await stat(file)).mode;
  } catch (err) {
    return { ok: false, message: `cannot read the DKIM key: ${(err as Error).message}` };
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (err) {
    return { ok: false, message: `not a PEM private key (${(err as Error).message}); write one with: smtpgate dkim keygen DOMAIN SELECTOR --out ${file}` };
  }
  // nodemailer's signer writes a=rsa-sha256 only: an Ed25519 key would sign nothing.
  if (key.asymmetricKeyType !== 'rsa') return { ok: false, message: `a ${key.asymmetricKeyType ?? 'unknown'} key; DKIM signing here needs an RSA key (smtpgate dkim keygen writes one)` };
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits < MIN_RSA_BITS) return { ok: false, message: `a ${bits}-bit RSA key: verifiers refuse keys under ${MIN_RSA_BITS} bits (RFC 8301); make a 2048-bit one with smtpgate dkim keygen` };
  try {
    createSign('RSA-SHA256').update('probe').sign(key);
  } catch (err) {
    return { ok: false, message: `the key cannot sign: ${(err as Error).message}` };
  }
  return { ok: true, key, bits, mode };
}

export interface KeyRingEvents {
  onReloaded(keys: KeySet, warnings: readonly string[]): void;
  onReloadFailed(issues: readonly ConfigIssue[]): void;
}

/** The key set in force, swapped whole on a good reload. */
export class KeyRing {
  readonly #config: DkimConfig;
  readonly #events: KeyRingEvents;
  readonly #watcher: FileWatcher;
  #keys: KeySet;

  constructor(config: DkimConfig, keys: KeySet, events: KeyRingEvents) {
    this.#config = config;
    this.#keys = keys;
    this.#events = events;
    this.#watcher = new FileWatcher(
      () => config.domains.map((d) => d.key),
      async () => void (await this.reload()),
    );
  }

  get keys(): KeySet {
    return this.#keys;
  }

  watch(): Promise<void> {
    return this.#watcher.start(this.#config.reloadInterval);
  }

  stop(): void {
    this.#watcher.stop();
  }

  /** Reads every key file again; swaps the set in only if all are good. */
  async reload(): Promise<boolean> {
    const loaded = await loadSigningKeys(this.#config);
    if (!loaded.ok) {
      this.#events.onReloadFailed(loaded.issues);
      return false;
    }
    this.#keys = loaded.keys;
    this.#events.onReloaded(loaded.keys, loaded.warnings);
    return true;
  }
}
