/**
 * The certificates smtpgate serves: the default pair, extra pairs chosen by SNI, and hot
 * reload when the files change on disk (ACME renewal). A broken replacement — bad PEM, or a
 * key that doesn't match — keeps the old certificate in force, logs an error and counts a
 * failure; open sessions are never touched.
 */
import tls from 'node:tls';
import { FileWatcher } from '../config/file-watch.js';
import type { ConfigIssue } from '../parsing/errors.js';
import { formatIssue } from '../parsing/errors.js';
import { loadTlsMaterial, type TlsMaterial } from './tls-material.js';

export interface CertificateSource {
  /** Label for logs and the expiry metric: "default" or the first SNI name. */
  readonly label: string;
  /** Host names served by this pair (SNI); empty for the default pair. */
  readonly names: readonly string[];
  readonly certFile: string;
  readonly keyFile: string;
  /** Config path, e.g. "tls" or "tls.sni[0]", for error messages. */
  readonly where: string;
}

export interface TlsSettings {
  readonly minVersion: 'TLSv1.2' | 'TLSv1.3';
  readonly ciphers: string;
}

export interface LoadedCertificate {
  readonly source: CertificateSource;
  readonly material: TlsMaterial;
}

/** Loads every pair, collecting every problem. */
export async function loadCertificates(sources: readonly CertificateSource[]): Promise<{ ok: true; certs: LoadedCertificate[] } | { ok: false; issues: ConfigIssue[] }> {
  const certs: LoadedCertificate[] = [];
  const issues: ConfigIssue[] = [];
  for (const source of sources) {
    const r = await loadTlsMaterial(source.certFile, source.keyFile, source.where);
    if (r.ok) certs.push({ source, material: r.material });
    else issues.push(...r.issues);
  }
  return issues.length ? { ok: false, issues } : { ok: true, certs };
}

/**
 * Picks the context for a requested server name: exact name first, then a "*.example.com"
 * wildcard covering one label. Unknown names get undefined, i.e. the default certificate.
 */
export function pickSni<T>(servername: string, byName: ReadonlyMap<string, T>): T | undefined {
  const name = servername.toLowerCase().replace(/\.$/, '');
  const exact = byName.get(name);
  if (exact) return exact;
  const dot = name.indexOf('.');
  return dot > 0 ? byName.get(`*${name.slice(dot)}`) : undefined;
}

export interface TlsManagerEvents {
  onReloaded(certs: readonly LoadedCertificate[]): void;
  onReloadFailed(issues: readonly ConfigIssue[]): void;
}

/** Something that serves the default certificate: an smtp-server instance. */
export interface CertificateConsumer {
  updateSecureContext(options: tls.SecureContextOptions): void;
}

export class TlsManager {
  readonly #sources: readonly CertificateSource[];
  readonly #settings: TlsSettings;
  readonly #events: TlsManagerEvents;
  readonly #consumers = new Set<CertificateConsumer>();
  #certs: readonly LoadedCertificate[];
  /**
   * SNI contexts per client-certificate CA: a listener that asks for client certificates
   * needs its CA in every context it may pick, or OpenSSL can't verify the client against it.
   */
  #sni = new Map<Buffer | undefined, Map<string, tls.SecureContext>>();
  readonly #watcher: FileWatcher;

  constructor(certs: readonly LoadedCertificate[], settings: TlsSettings, events: TlsManagerEvents) {
    if (!certs[0] || certs[0].source.names.length !== 0) throw new Error('the first certificate must be the default pair');
    this.#sources = certs.map((c) => c.source);
    this.#settings = settings;
    this.#events = events;
    this.#certs = certs;
    this.#sni.set(undefined, this.#buildSni(certs, undefined));
    this.#watcher = new FileWatcher(
      () => this.#sources.flatMap((s) => [s.certFile, s.keyFile]),
      async () => void (await this.reload()),
    );
  }

  get certificates(): readonly LoadedCertificate[] {
    return this.#certs;
  }

  get defaultMaterial(): TlsMaterial {
    return this.#certs[0]!.material;
  }

  /** Options for smtp-server: the default pair plus our SNI callback (and the listener's client CA). */
  serverOptions(clientCa?: Buffer): tls.SecureContextOptions & { SNICallback: (name: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void) => void; honorCipherOrder: boolean } {
    const m = this.defaultMaterial;
    if (!this.#sni.has(clientCa)) this.#sni.set(clientCa, this.#buildSni(this.#certs, clientCa));
    return {
      key: m.key,
      cert: m.cert,
      minVersion: this.#settings.minVersion,
      ciphers: this.#settings.ciphers,
      honorCipherOrder: true,
      SNICallback: (name, cb) => cb(null, pickSni(name, this.#sni.get(clientCa) ?? new Map())),
    };
  }

  attach(consumer: CertificateConsumer): void {
    this.#consumers.add(consumer);
  }

  /** Polls the files (see FileWatcher) every `intervalMs` and reloads when one changed. */
  watch(intervalMs: number): Promise<void> {
    return this.#watcher.start(intervalMs);
  }

  stop(): void {
    this.#watcher.stop();
  }

  /** Reloads when any file changed since the last look. Returns true when it tried. */
  checkForChanges(): Promise<boolean> {
    return this.#watcher.poll();
  }

  /** Loads every pair again; swaps them in only if all are good. */
  async reload(): Promise<boolean> {
    const loaded = await loadCertificates(this.#sources);
    if (!loaded.ok) {
      this.#events.onReloadFailed(loaded.issues);
      return false;
    }
    const sni = new Map<Buffer | undefined, Map<string, tls.SecureContext>>();
    try {
      for (const ca of this.#sni.keys()) sni.set(ca, this.#buildSni(loaded.certs, ca));
    } catch (err) {
      this.#events.onReloadFailed([{ file: this.#sources[0]!.certFile, path: 'tls', message: `cannot build a TLS context: ${(err as Error).message}` }]);
      return false;
    }
    this.#certs = loaded.certs;
    this.#sni = sni;
    const m = this.defaultMaterial;
    for (const c of this.#consumers) c.updateSecureContext({ key: m.key, cert: m.cert });
    this.#events.onReloaded(loaded.certs);
    return true;
  }

  #buildSni(certs: readonly LoadedCertificate[], clientCa: Buffer | undefined): Map<string, tls.SecureContext> {
    const map = new Map<string, tls.SecureContext>();
    for (const c of certs) {
      if (c.source.names.length === 0) continue;
      const ctx = tls.createSecureContext({
        key: c.material.key,
        cert: c.material.cert,
        minVersion: this.#settings.minVersion,
        ciphers: this.#settings.ciphers,
        honorCipherOrder: true,
        ...(clientCa ? { ca: clientCa } : {}),
      });
      for (const n of c.source.names) map.set(n.toLowerCase(), ctx);
    }
    return map;
  }
}

export function describeIssues(issues: readonly ConfigIssue[]): string {
  return issues.map(formatIssue).join('; ');
}
