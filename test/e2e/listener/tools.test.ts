/**
 * The front door as the reference tools see it: swaks sends a message over STARTTLS with AUTH,
 * `openssl s_client -starttls smtp` negotiates TLS 1.2+, and sslscan finds no TLS 1.0/1.1, no
 * CBC suite and no suite without ECDHE (or TLS 1.3) key exchange. sslscan runs against an
 * EC-certificate gate and an RSA-certificate gate: RSA key-exchange suites only exist with an
 * RSA certificate, so only the RSA gate shows they are really turned off.
 */
import { execFile } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { ALICE, startGate, type Gate } from '../../helpers/gate.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { makeTestCert } from '../../helpers/pki.js';
import { describeWith, findProgram } from '../../helpers/programs.js';

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a program to its end (bounded by `timeoutMs`), with `input` on stdin. */
function run(program: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(findProgram(program) ?? program, args, { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      resolve({ code, stdout, stderr });
    });
    child.stdin?.end(opts.input ?? '');
  });
}

let backend: RecordingBackend;
let ecGate: Gate;
let rsaGate: Gate;

beforeAll(async () => {
  backend = await startRecordingBackend();
  ecGate = await startGate({ backendPort: backend.port });
  rsaGate = await startGate({ backendPort: backend.port, cert: await makeTestCert('localhost', { keyType: 'rsa' }) });
});
afterAll(async () => {
  await ecGate?.stop();
  await rsaGate?.stop();
  await backend?.close();
});

describeWith(['swaks'], 'swaks', () => {
  test('swaks --tls with AUTH PLAIN delivers a message through the submission listener', async () => {
    const before = backend.messages.length;
    const r = await run('swaks', [
      '--server', `127.0.0.1:${ecGate.port('submission')}`,
      '--tls',
      '--auth', 'PLAIN', '--auth-user', ALICE.name, '--auth-password', ALICE.password,
      '--from', 'alice@corp.test', '--to', 'bob@corp.test',
      '--header', 'Subject: from swaks',
    ]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    // swaks prints each server line prefixed with "<-" (or "<~" inside TLS); the reply to the
    // final dot is the backend's 250.
    expect(r.stdout).toMatch(/^<~ {2}250 2\.0\.0 Ok: queued as Q\d+$/m);
    expect(r.stdout).toMatch(/^<~ {2}235 /m);
    expect(backend.messages.length).toBe(before + 1);
    expect(backend.messages.at(-1)!.data.toString()).toContain('Subject: from swaks');
  });
});

describeWith(['openssl'], 'openssl s_client', () => {
  test('-starttls smtp negotiates TLS 1.3 with the submission listener', async () => {
    // -ign_eof: send QUIT, then wait for the server's 221 and close instead of quitting at EOF.
    const r = await run('openssl', ['s_client', '-starttls', 'smtp', '-connect', `127.0.0.1:${ecGate.port('submission')}`, '-brief', '-ign_eof'], { input: 'QUIT\r\n' });
    const out = r.stdout + r.stderr;
    expect(r.code, out).toBe(0);
    expect(out).toMatch(/^Protocol version: TLSv1\.3$/m);
    expect(out).toMatch(/^221 /m);
  });

  test('-tls1_2 negotiates an ECDHE AEAD suite on the implicit-TLS listener', async () => {
    // stdin is empty: s_client ends after the handshake (a QUIT written at once would come
    // before the greeting and earn smtp-server's early-talker 421).
    const r = await run('openssl', ['s_client', '-connect', `127.0.0.1:${ecGate.port('smtps')}`, '-tls1_2', '-brief']);
    const out = r.stdout + r.stderr;
    expect(r.code, out).toBe(0);
    expect(out).toMatch(/^Protocol version: TLSv1\.2$/m);
    expect(out).toMatch(/^Ciphersuite: ECDHE-ECDSA-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)$/m);
  });
});

interface Scan {
  readonly output: string;
  /** The protocol table: "TLSv1.0" → "enabled" | "disabled". */
  readonly protocols: ReadonlyMap<string, string>;
  /** The "Accepted"/"Preferred" lines: protocol and suite name. */
  readonly suites: Array<{ protocol: string; cipher: string }>;
}

async function sslscan(port: number, opts: { starttls: boolean }): Promise<Scan> {
  const r = await run('sslscan', ['--no-colour', ...(opts.starttls ? ['--starttls-smtp'] : []), `127.0.0.1:${port}`], { timeoutMs: 120_000 });
  const output = r.stdout + r.stderr;
  expect(r.code, output).toBe(0);
  const protocols = new Map<string, string>();
  const suites: Array<{ protocol: string; cipher: string }> = [];
  for (const raw of output.split('\n')) {
    const line = raw.trim();
    const p = /^(SSLv[23]|TLSv1\.[0-3])\s+(enabled|disabled)$/.exec(line);
    if (p) protocols.set(p[1]!, p[2]!);
    const m = /^(?:Accepted|Preferred)\s+(\S+)\s+\d+\s+bits\s+(\S+)/.exec(line);
    if (m) suites.push({ protocol: m[1]!, cipher: m[2]! });
  }
  return { output, protocols, suites };
}

/** TLS 1.2 suites smtpgate may offer: ECDHE key exchange, AES-GCM or ChaCha20-Poly1305. */
const GOOD_TLS12 = /^ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)$/;

describeWith(['sslscan'], 'sslscan', () => {
  test.each([
    ['an EC certificate', 'ECDSA', () => ecGate],
    ['an RSA certificate', 'RSA', () => rsaGate],
  ])('with %s: only TLS 1.2 and 1.3, only ECDHE with AEAD suites', async (_what, auth, gate) => {
    const scan = await sslscan(gate().port('submission'), { starttls: true });
    expect(Object.fromEntries(scan.protocols), scan.output).toMatchObject({ 'TLSv1.0': 'disabled', 'TLSv1.1': 'disabled', 'TLSv1.2': 'enabled', 'TLSv1.3': 'enabled' });
    expect(scan.suites.some((s) => s.protocol === 'TLSv1.3')).toBe(true);
    expect(scan.suites.filter((s) => s.protocol !== 'TLSv1.2' && s.protocol !== 'TLSv1.3')).toEqual([]);
    const tls12 = scan.suites.filter((s) => s.protocol === 'TLSv1.2').map((s) => s.cipher);
    expect(tls12.length).toBeGreaterThan(0);
    // No CBC suite (…-SHA, …-SHA256/384 without GCM), no RSA key exchange (AES128-GCM-SHA256),
    // no anonymous or finite-field DH: only ECDHE AEAD suites, signed with the certificate's key.
    expect(tls12.filter((c) => !GOOD_TLS12.test(c) || !c.startsWith(`ECDHE-${auth}-`))).toEqual([]);
  }, 150_000);

  test('control: the parser above sees TLS 1.0, CBC and RSA key exchange on a server that allows them', async () => {
    const cert = await makeTestCert('localhost', { keyType: 'rsa' });
    const server = tls.createServer({ key: cert.key, cert: cert.cert, minVersion: 'TLSv1', ciphers: 'ALL@SECLEVEL=0' }, (s) => s.end());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    try {
      const scan = await sslscan((server.address() as net.AddressInfo).port, { starttls: false });
      expect(scan.protocols.get('TLSv1.0')).toBe('enabled');
      const tls12 = scan.suites.filter((s) => s.protocol === 'TLSv1.2').map((s) => s.cipher);
      expect(tls12).toContain('ECDHE-RSA-AES128-SHA');
      expect(tls12).toContain('AES128-GCM-SHA256');
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  }, 150_000);
});
