/**
 * Postfix's test programs: `smtp-sink` is the backend every peer relays to, and `smtp-source`
 * is the load generator for W1–W4. Both come with Debian's `postfix` package.
 *
 * A fresh sink is started for every measured run. Its running counters (`-c`) say how many
 * messages really arrived, so a run in which a proxy refused or lost mail is caught, not timed.
 */
import { access } from 'node:fs/promises';
import { spawnChild, freePort, waitForPort, type Child } from './processes.js';

export const SMTP_SINK = '/usr/sbin/smtp-sink';
export const SMTP_SOURCE = '/usr/sbin/smtp-source';
export const POSTFIX_INSTALL = 'apt-get install postfix';

export async function postfixToolsInstalled(): Promise<boolean> {
  try {
    await access(SMTP_SINK);
    await access(SMTP_SOURCE);
    return true;
  } catch {
    return false;
  }
}

export interface Sink {
  readonly port: number;
  readonly child: Child;
  /** Messages received so far (the last `mesg=` counter printed). */
  messages(): number;
  /** Waits until at least `n` messages have arrived, or `timeoutMs` passes; returns the count. */
  waitForMessages(n: number, timeoutMs?: number): Promise<number>;
  stop(): Promise<void>;
}

export async function startSink(opts: { maxConnections: number }): Promise<Sink> {
  const port = await freePort();
  // As root smtp-sink must drop privileges (-u); -c prints "sess=N quit=N mesg=N" counters.
  const child = spawnChild('smtp-sink', SMTP_SINK, ['-u', 'nobody', '-c', '-m', String(opts.maxConnections), `127.0.0.1:${port}`, '4096'], { pipe: true });
  let tail = '';
  let messages = 0;
  const onData = (chunk: Buffer) => {
    tail = (tail + chunk.toString('latin1')).slice(-4096);
    const all = [...tail.matchAll(/mesg=(\d+)/g)];
    const last = all[all.length - 1];
    if (last) messages = Number(last[1]);
  };
  child.process.stdout?.on('data', onData);
  child.process.stderr?.on('data', onData);
  await waitForPort(port, child);
  return {
    port,
    child,
    messages: () => messages,
    async waitForMessages(n, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      while (messages < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      return messages;
    },
    stop: () => child.stop(),
  };
}

export interface SourceRun {
  readonly seconds: number;
  readonly exitCode: number | string;
  readonly stderr: string;
}

export interface SourceLoad {
  /** Concurrent sessions (-s). */
  readonly sessions: number;
  /** Messages in total (-m). */
  readonly messages: number;
  /** Message length in bytes (-l). */
  readonly length: number;
  /** Several messages per connection (-d) instead of one connection per message. */
  readonly reuse: boolean;
}

export const SENDER = 'sender@corp.test';
export const RECIPIENT = 'rcpt@corp.test';

export function sourceArgs(load: SourceLoad, port: number): string[] {
  return [
    ...(load.reuse ? ['-d'] : []),
    '-s', String(load.sessions),
    '-m', String(load.messages),
    '-l', String(load.length),
    '-f', SENDER,
    '-t', RECIPIENT,
    `127.0.0.1:${port}`,
  ];
}

/** Runs smtp-source to completion and times it from spawn to exit (bounded by `timeoutMs`). */
export async function runSource(load: SourceLoad, port: number, timeoutMs: number): Promise<SourceRun> {
  const started = process.hrtime.bigint();
  const child = spawnChild('smtp-source', SMTP_SOURCE, sourceArgs(load, port), { pipe: true });
  let stderr = '';
  const keep = (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000));
  child.process.stdout?.on('data', keep);
  child.process.stderr?.on('data', keep);
  const timer = setTimeout(() => {
    stderr += `\n(bench: smtp-source stopped after ${timeoutMs} ms)`;
    void child.stop(500);
  }, timeoutMs);
  const exitCode = await child.exited;
  clearTimeout(timer);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { seconds, exitCode, stderr: stderr.trim() };
}
