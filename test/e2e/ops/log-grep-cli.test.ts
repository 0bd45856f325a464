/**
 * `smtpgate log grep` (dist/) on the log a real smtpgate (dist/) wrote to stdout: a relayed message and failed
 * sign-ins, in a plain file, a logrotate .gz and on stdin, with other programs' lines mixed
 * in. Exit codes as grep's: 0 matched, 1 nothing matched, 2 an error.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { CLI, startChildGate, type ChildGate } from '../../helpers/child-gate.js';
import { runCli, type CliResult } from '../../helpers/cli.js';
import { ALICE } from '../../helpers/gate.js';
import { envelope, eventually } from '../../helpers/sessions.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';

/** `smtpgate log grep ARGS` with `input` on stdin. */
function grepStdin(args: string[], input: string): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, 'log', 'grep', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(input);
  });
}

const grep = (...args: string[]) => runCli(['log', 'grep', ...args], CLI, 0);
/** Each test starts the CLI a few times; on a busy shared machine a start can take seconds. */
const CLI_TESTS = 120_000;

describe('smtpgate log grep on a real gate\'s log', () => {
  let backend: RecordingBackend;
  let gate: ChildGate;
  let dir: string;
  let logFile: string;
  let gzFile: string;
  let queueId: string;
  let text: string;

  beforeAll(async () => {
    backend = await startRecordingBackend();
    gate = await startChildGate({ backendPort: backend.port, users: [ALICE] });
    const c = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true });
    await c.read();
    await c.cmd('EHLO laptop.test');
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    const final = await c.cmd('Message-ID: <grep-1@laptop.test>\r\nSubject: hi\r\n\r\nhello\r\n.');
    queueId = /queued as (\S+)$/.exec(final.raw)![1]!;
    await c.cmd('QUIT');
    c.close();
    const guesser = await SmtpTalk.connect(gate.port('smtps'), { implicitTls: true });
    await guesser.read();
    await guesser.cmd('EHLO x');
    expect((await guesser.authPlain('mallory", status=sent', 'guess')).code).toBe(535);
    guesser.close();
    await eventually(() => gate.logs.some((l) => l.msg === 'transaction') && gate.logs.some((l) => l.stage === 'auth' && l.code === 535), 'the transaction and the refusal in the log');
    dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-log-grep-'));
    // Another program's line and a torn line among smtpgate's, as a shared log file may have.
    const written = gate.output().split('\n').filter((l) => l.startsWith('{'));
    text = ['Dec  7 10:00:00 mx1 cron[12]: (root) CMD (true)', ...written, '{"level":30,"time":"2026-'].join('\n') + '\n';
    logFile = path.join(dir, 'smtpgate.log');
    gzFile = path.join(dir, 'smtpgate.log.2.gz');
    await writeFile(logFile, text);
    await writeFile(gzFile, gzipSync(text));
  }, 60_000);

  afterAll(async () => {
    await gate?.stop();
    await backend?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, CLI_TESTS);

  test('--user finds the user\'s transaction as a Postfix-style line, exit 0; the other lines are counted on stderr, not fatal', async () => {
    const r = await grep('--user', 'alice', '--utc', logFile);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.find((l) => l.includes('status=sent'))).toMatch(
      new RegExp(`^\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z \\S+: client=127\\.0\\.0\\.1, sasl_username=alice, helo=laptop\\.test, tls=TLSv1\\.\\d, from=<alice@corp\\.test>, size=\\d+, message-id=<grep-1@laptop\\.test>, to=<bob@corp\\.test> 250(?: 2\\.1\\.5)?, relay=127\\.0\\.0\\.1:${backend.port}, queue_id=${queueId}, status=sent \\(250 2\\.0\\.0 Ok: queued as ${queueId}\\)$`),
    );
    expect(lines.some((l) => / \S+: client=127\.0\.0\.1, sasl_method=PLAIN, sasl_username=alice/.test(l)), 'the sign-in').toBe(true);
    expect(r.stderr).toBe(`smtpgate log grep: ${logFile}: 2 lines skipped (not smtpgate JSON)\n`);
  }, CLI_TESTS);

  test('a logrotate .gz is read as it is, by --queue-id and --message-id', async () => {
    for (const args of [['--queue-id', queueId], ['--message-id', '<grep-1@laptop.test>'], ['--address', 'BOB@corp.test']]) {
      const r = await grep(...args, gzFile);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.stdout.trim().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stdout).toContain(`queue_id=${queueId}`);
    }
  }, CLI_TESTS);

  test('a failed sign-in is a reject line, its user name quoted so that it can\'t pass for more fields', async () => {
    const r = await grep('--client', '127.0.0.0/8', logFile);
    const reject = r.stdout.split('\n').find((l) => l.includes('reject: AUTH'));
    expect(reject).toMatch(/ reject: AUTH from 127\.0\.0\.1: 535 5\.7\.8 Authentication credentials invalid; reason=auth_failed, user="mallory\\", status=sent", result=/);
  }, CLI_TESTS);

  test('stdin (none given, or "-"), and --json prints the records themselves', async () => {
    const r = await grepStdin(['--json', '--queue-id', queueId], text);
    expect(r.code, r.stderr).toBe(0);
    const records = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(records).toEqual([expect.objectContaining({ msg: 'transaction', queueId, outcome: 'relayed' })]);
    expect((await grepStdin(['--user', 'alice', '-'], text)).code).toBe(0);
  }, CLI_TESTS);

  test('nothing matched: exit 1 and no output; an unreadable file or a bad option: exit 2, named on stderr', async () => {
    const none = await grep('--user', 'nobody', logFile);
    expect(none).toMatchObject({ code: 1, stdout: '' });
    const missing = await grep('--user', 'alice', path.join(dir, 'gone.log'), logFile);
    expect(missing.code).toBe(2);
    expect(missing.stdout).toContain('status=sent');
    expect(missing.stderr).toContain(`${path.join(dir, 'gone.log')}: ENOENT`);
    const truncated = path.join(dir, 'truncated.gz');
    const gz = gzipSync(text);
    await writeFile(truncated, gz.subarray(0, gz.length - 10));
    expect((await grep('--user', 'alice', truncated)).code).toBe(2);
    const bad = await grep('--since', 'yesterday', logFile);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--since: expected a time ago/);
    expect((await grep('--sender', 'alice', logFile)).code, 'an unknown option').toBe(2);
  }, CLI_TESTS);
});
