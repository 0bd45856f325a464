/**
 * Which certificate a client gets: the one for the name it asks for (SNI, with one-label
 * wildcards), the default one otherwise; and, after an ACME renewal on disk, the new one,
 * without dropping open sessions, while a broken replacement keeps the last good one in force.
 */
import { X509Certificate } from 'node:crypto';
import { rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ALICE, metricValue, startGate, type Gate } from '../../helpers/gate.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { makeTestCert, type TestCert } from '../../helpers/pki.js';
import { eventually } from '../../helpers/sessions.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

let backend: RecordingBackend;

beforeAll(async () => {
  backend = await startRecordingBackend();
});
afterAll(async () => {
  await backend?.close();
});

type Kind = 'starttls' | 'implicit';

/** Connects, completes TLS (asking for `servername`), and returns the session. */
async function tlsSession(gate: Gate, kind: Kind, options: tls.ConnectionOptions = {}): Promise<SmtpTalk> {
  if (kind === 'implicit') {
    const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true, tls: options });
    expect((await c.read()).code).toBe(220);
    return c;
  }
  const c = await SmtpTalk.connect(gate.port('submission'));
  expect((await c.read()).code).toBe(220);
  expect((await c.cmd('EHLO client.test')).code).toBe(250);
  expect((await c.starttls(options)).code).toBe(220);
  return c;
}

/** The certificate a new connection is served: subject CN and SHA-256 fingerprint. */
async function servedCertificate(gate: Gate, kind: Kind, servername?: string): Promise<{ cn: string; fingerprint: string }> {
  const c = await tlsSession(gate, kind, servername === undefined ? {} : { servername });
  const cert = c.tlsSocket!.getPeerCertificate();
  c.close();
  return { cn: String(cert.subject.CN), fingerprint: cert.fingerprint256 };
}

const fingerprintOf = (cert: TestCert) => new X509Certificate(cert.cert).fingerprint256;

/** Clients smtpgate must refuse: TLS 1.1, and TLS 1.2 with a CBC suite (see listener/tls.test.ts). */
const LEGACY_PROFILES: tls.ConnectionOptions[] = [
  { ciphers: 'DEFAULT@SECLEVEL=0', minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1' },
  { ciphers: 'ECDHE-ECDSA-AES128-SHA@SECLEVEL=0', maxVersion: 'TLSv1.2' },
];

describe('SNI: tls.sni picks the certificate by the name the client asks for', () => {
  let gate: Gate;
  beforeAll(async () => {
    const [a, b, c] = await Promise.all([makeTestCert('a.test'), makeTestCert('mail.b.test'), makeTestCert('*.c.test')]);
    gate = await startGate({
      backendPort: backend.port,
      cert: a,
      tls: {
        sni: [
          { names: ['mail.b.test'], cert: b.certFile, key: b.keyFile },
          { names: ['*.c.test'], cert: c.certFile, key: c.keyFile },
        ],
      },
    });
  });
  afterAll(async () => {
    await gate?.stop();
  });

  describe.each(['starttls', 'implicit'] as const)('%s', (kind) => {
    test.each([
      ['mail.b.test', 'mail.b.test'],
      ['MAIL.B.TEST', 'mail.b.test'],
      ['x.c.test', '*.c.test'],
      ['unknown.test', 'a.test'],
      ['c.test', 'a.test'], // a wildcard covers exactly one label, not the bare domain
      ['y.x.c.test', 'a.test'], // ... and not two labels
      ['b.test', 'a.test'],
    ])('a client asking for %s gets the certificate for %s', async (servername, cn) => {
      expect((await servedCertificate(gate, kind, servername)).cn).toBe(cn);
    });
  });

  test('a client that sends no server name gets the default certificate', async () => {
    // An empty servername: Node sends no server_name extension at all.
    expect((await servedCertificate(gate, 'implicit', '')).cn).toBe('a.test');
  });

  test.each([
    ['TLS 1.1', LEGACY_PROFILES[0]!],
    ['a TLS 1.2 CBC suite', LEGACY_PROFILES[1]!],
  ])('an SNI certificate is served under the same TLS policy: %s is refused', async (_what, options) => {
    await expect(SmtpTalk.connect(gate.port('smtps'), { implicitTls: true, tls: { ...options, servername: 'mail.b.test' } })).rejects.toThrow(/alert/);
  });

  test('a session on an SNI certificate works like any other', async () => {
    const c = await tlsSession(gate, 'implicit', { servername: 'mail.b.test' });
    expect((await c.cmd('EHLO client.test')).lines).toContain('AUTH PLAIN LOGIN');
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    c.close();
  });
});

describe('hot reload of the default certificate (tls.reloadInterval)', () => {
  const RELOAD_MS = 200;
  let gate: Gate;
  beforeAll(async () => {
    gate = await startGate({ backendPort: backend.port, cert: await makeTestCert('localhost'), tls: { reloadInterval: `${RELOAD_MS}ms` } });
  });
  afterAll(async () => {
    await gate?.stop();
  });

  /** Connects until new connections on both listeners are served `fingerprint` (bounded). */
  async function untilServed(fingerprint: string): Promise<void> {
    await eventually(async () => (await servedCertificate(gate, 'implicit')).fingerprint === fingerprint, `new connections are served ${fingerprint}`, 5_000);
    expect((await servedCertificate(gate, 'starttls')).fingerprint).toBe(fingerprint);
  }

  /** As an ACME client does: the new files are written aside, then renamed into place, key first. */
  async function installPair(pair: { cert: string; key: string }): Promise<void> {
    const { certFile, keyFile } = gate.cert;
    await writeFile(path.join(path.dirname(keyFile), '.key.new'), pair.key);
    await writeFile(path.join(path.dirname(certFile), '.cert.new'), pair.cert);
    await rename(path.join(path.dirname(keyFile), '.key.new'), keyFile);
    await rename(path.join(path.dirname(certFile), '.cert.new'), certFile);
  }

  async function authenticated(kind: Kind): Promise<SmtpTalk> {
    const c = await tlsSession(gate, kind);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    return c;
  }

  test('a renewed certificate is served to new connections within seconds, and open sessions carry on', async () => {
    const old = fingerprintOf(gate.cert);
    expect((await servedCertificate(gate, 'implicit')).fingerprint).toBe(old);
    const reloadsBefore = await metricValue(gate, 'smtpgate_reloads_total', { component: 'certificate', result: 'success' });
    const early = await Promise.all([authenticated('starttls'), authenticated('implicit')]);

    const renewed = await makeTestCert('localhost');
    await installPair(renewed);
    await untilServed(fingerprintOf(renewed));
    expect(await metricValue(gate, 'smtpgate_reloads_total', { component: 'certificate', result: 'success' })).toBeGreaterThan(reloadsBefore);
    // The new context keeps the TLS policy (smtp-server's own default would be TLS 1.0+).
    for (const options of LEGACY_PROFILES) {
      await expect(SmtpTalk.connect(gate.port('smtps'), { implicitTls: true, tls: options })).rejects.toThrow(/alert/);
    }

    // Sessions opened before the swap keep their TLS session and can still send.
    for (const c of early) {
      expect(c.tlsSocket!.getPeerCertificate().fingerprint256).toBe(old);
      expect((await c.cmd('NOOP')).code).toBe(250);
      expect((await c.cmd('MAIL FROM:<alice@corp.test>')).code).toBe(250);
      expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
      expect((await c.cmd('DATA')).code).toBe(354);
      expect((await c.cmd('Subject: across a reload\r\n\r\nhi\r\n.')).code).toBe(250);
      await c.cmd('QUIT');
    }
  });

  test('a corrupt certificate on disk is refused: the last good one stays, and the failure is counted and logged at error level', async () => {
    const good = (await servedCertificate(gate, 'implicit')).fingerprint;
    const failuresBefore = await metricValue(gate, 'smtpgate_reloads_total', { component: 'certificate', result: 'failure' });
    const open = await authenticated('implicit');

    await writeFile(gate.cert.certFile, '-----BEGIN CERTIFICATE-----\nnot a certificate at all\n-----END CERTIFICATE-----\n');
    await eventually(
      async () => (await metricValue(gate, 'smtpgate_reloads_total', { component: 'certificate', result: 'failure' })) > failuresBefore,
      'the failed reload is counted',
    );
    // Let several reload intervals pass: nothing may fall back to a broken or built-in certificate.
    await new Promise((resolve) => setTimeout(resolve, 3 * RELOAD_MS));
    expect((await servedCertificate(gate, 'implicit')).fingerprint).toBe(good);
    expect((await servedCertificate(gate, 'starttls')).fingerprint).toBe(good);
    expect((await open.cmd('NOOP')).code).toBe(250);
    open.close();

    const line = gate.logs.find((l) => l.level === 'error' && /certificate reload failed/.test(String(l.msg)));
    expect(line, 'an error-level log line about the failed reload').toBeDefined();
    expect(JSON.stringify(line)).toContain(gate.cert.certFile);
  });

  test('a key that does not belong to the certificate is refused the same way; a good pair afterwards is taken', async () => {
    const good = (await servedCertificate(gate, 'implicit')).fingerprint;
    const failuresBefore = await metricValue(gate, 'smtpgate_reloads_total', { component: 'certificate', result: 'failure' });
    const [one, other] = await Promise.all([makeTestCert('localhost'), makeTestCert('localhost')]);

    await installPair({ cert: one.cert, key: other.key });
    await eventually(
      async () => (await metricValue(gate, 'smtpgate_reloads_total', { component: 'certificate', result: 'failure' })) > failuresBefore,
      'the mismatched pair is counted as a failed reload',
    );
    expect((await servedCertificate(gate, 'implicit')).fingerprint).toBe(good);

    await installPair(one);
    await untilServed(fingerprintOf(one));
  });
});
