/**
 * Postfix's smtp-sink as a strict capture backend: it accepts every transaction and writes
 * each one to its own file, with the MAIL and RCPT arguments exactly as it received them
 * (X-Mail-Args, X-Rcpt-Args). Needs the Debian postfix package (see programs.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { deadPort, eventually } from './sessions.js';
import { findProgram } from './programs.js';

export interface SinkTransaction {
  /** X-Mail-Args: everything after "MAIL FROM:". */
  readonly mailArgs: string;
  /** X-Rcpt-Args, one per RCPT. */
  readonly rcptArgs: string[];
}

export interface SmtpSink {
  readonly port: number;
  /** The transactions that got as far as a message so far, oldest first. */
  transactions(): Promise<SinkTransaction[]>;
  stop(): Promise<void>;
}

export async function startSmtpSink(): Promise<SmtpSink> {
  const program = findProgram('smtp-sink');
  if (!program) throw new Error('smtp-sink is not installed (apt-get install postfix)');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-sink-'));
  const port = await deadPort();
  // As root it must drop privileges (-u); the dump folder must then be writable by that user.
  const asRoot = process.getuid?.() === 0;
  if (asRoot) await chmod(dir, 0o777);
  const args = [...(asRoot ? ['-u', 'nobody'] : []), '-d', `${dir}/%M.`, `127.0.0.1:${port}`, '100'];
  const child: ChildProcess = spawn(program, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await eventually(
    () =>
      new Promise<boolean>((resolve) => {
        if (child.exitCode !== null) return resolve(false);
        const s = net.connect(port, '127.0.0.1');
        s.once('connect', () => (s.destroy(), resolve(true)));
        s.once('error', () => resolve(false));
      }),
    `smtp-sink listening on ${port} (${stderr.trim() || 'no output'})`,
  );
  return {
    port,
    async transactions() {
      // smtp-sink opens a file at MAIL, writes to it as the transaction goes on and removes it
      // when the transaction is abandoned (RSET, QUIT): a file may vanish while it is listed.
      const gone = () => undefined;
      const read = async (f: string) => {
        const at = await stat(path.join(dir, f)).catch(gone);
        const text = await readFile(path.join(dir, f), 'utf8').catch(gone);
        // Its own Received: header is written when DATA begins; before that the file holds only
        // the envelope of a transaction that may still be abandoned.
        return at && text?.includes('\nReceived: ') ? { at: at.mtimeMs, text } : undefined;
      };
      // Named after the minute plus a random number: ordered by when they were written.
      const files = (await Promise.all((await readdir(dir)).map(read))).filter((x) => x !== undefined);
      files.sort((a, b) => a.at - b.at);
      const out: SinkTransaction[] = [];
      for (const { text } of files) {
        const head = text.split('\n\n')[0]!.split('\n');
        const value = (line: string) => line.slice(line.indexOf(':') + 1).replace(/^ /, '');
        out.push({
          mailArgs: value(head.find((l) => l.startsWith('X-Mail-Args:')) ?? ''),
          rcptArgs: head.filter((l) => l.startsWith('X-Rcpt-Args:')).map(value),
        });
      }
      return out;
    },
    async stop() {
      child.kill();
      await exited;
      await rm(dir, { recursive: true, force: true });
    },
  };
}
