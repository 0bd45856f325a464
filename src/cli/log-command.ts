/**
 * `smtpgate log grep [FILE…]`: finds a user's, an address's, a client's or a message's trail
 * in smtpgate's JSON log, in files (logrotate's `.gz` too) or on stdin, and prints it as
 * Postfix-style one-liners (or JSON lines). Exits like grep: 0 something matched, 1 nothing
 * did, 2 an error (an unreadable file, a bad option). The searching is src/logging/'s.
 */
import { open } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { pipeline, type Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import type { Command } from 'commander';
import { grepLines, type GrepCounts } from '../logging/log-grep.js';
import { LogQueryError, parseLogQuery, type LogQueryOptions } from '../logging/log-search.js';

interface GrepCommandOptions extends LogQueryOptions {
  json?: boolean;
}

export function registerLogCommand(program: Command): void {
  const log = program.command('log').description("search smtpgate's mail log");
  log
    .command('grep')
    .description('print the transactions, refusals, sign-ins and lockouts that match, one line each (files may be .gz; none or "-": stdin); exit 0 matched, 1 nothing matched, 2 error')
    .argument('[files...]', 'JSON log files, oldest first (logrotate\'s .gz as they are); "-" or none: stdin')
    // Long options only: grep's -c, -q, -s and -m mean other things, and -c is --config elsewhere.
    .option('--user <name>', 'the signed-in user, or the user a failed sign-in named (case aside)')
    .option('--address <address>', 'the sender or any recipient (case aside); @domain for any address there; <> for the null sender')
    .option('--client <ip|cidr>', "the client's address, or a range (10.0.0.0/8, 2001:db8::/32)")
    .option('--message-id <id>', 'the Message-ID header, with or without <>')
    .option('--queue-id <id>', "the backend's queue id (Postfix's `queued as`)")
    .option('--session <id>', 'one session')
    .option('--since <when>', 'from this time: 1h, 30m, 2d ago, or 2026-12-07, "2026-12-07 10:30", an ISO time')
    .option('--until <when>', 'before this time, written as --since')
    .option('--all', "every line of smtpgate's, not only the transactions, refusals outside them, sign-ins and lockouts")
    .option('--json', 'print the matching records as JSON lines')
    .option('--utc', 'times in UTC (default: local time, with its offset); dates without a zone in --since/--until are UTC too')
    .addHelpText(
      'after',
      `
Examples:
  smtpgate log grep --user alice --since 1d /var/log/smtpgate/smtpgate.log
  smtpgate log grep --queue-id 4dQ2x71zKz3Yxm /var/log/smtpgate/smtpgate.log*
  journalctl -u smtpgate -o cat --since today | smtpgate log grep --address bob@corp.example
  smtpgate log grep --client 192.0.2.0/24 --json smtpgate.log.2.gz smtpgate.log.1 smtpgate.log`,
    )
    // grep's exit codes: a usage error (an unknown option) is 2, not commander's 1.
    .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2))
    .action(async (files: string[], opts: GrepCommandOptions) => {
      process.exitCode = await grepCommand(files, opts);
    });
}

async function grepCommand(files: string[], opts: GrepCommandOptions): Promise<number> {
  let query;
  try {
    query = parseLogQuery(opts, Date.now());
  } catch (err) {
    if (!(err instanceof LogQueryError)) throw err;
    process.stderr.write(`smtpgate log grep: ${err.message}\n`);
    return 2;
  }
  const out = stdoutWriter();
  const counts: GrepCounts = { matched: 0, skipped: 0 };
  let failed = false;
  for (const file of files.length ? files : ['-']) {
    const name = file === '-' ? 'stdin' : file;
    const before = counts.skipped;
    try {
      await grepLines(linesOf(file), query, { json: opts.json ?? false, utc: opts.utc ?? false }, out.write, counts);
    } catch (err) {
      // The reader went away (`| head`): what it saw is what matched.
      if (out.closed()) break;
      failed = true;
      process.stderr.write(`smtpgate log grep: ${name}: ${err instanceof Error ? err.message : String(err)}\n`);
      continue;
    }
    const skipped = counts.skipped - before;
    if (skipped > 0) process.stderr.write(`smtpgate log grep: ${name}: ${skipped} line${skipped === 1 ? '' : 's'} skipped (not smtpgate JSON)\n`);
  }
  if (failed) return 2;
  return counts.matched > 0 ? 0 : 1;
}

/**
 * A file's lines, or stdin's, streamed. A gzip file (logrotate's `compress`) is told by its
 * magic bytes (1f 8b), not its name. readline passes on its input's errors (ENOENT, a corrupt
 * or truncated .gz), so the caller's loop ends with them.
 */
async function* linesOf(file: string): AsyncIterable<string> {
  let input: Readable = process.stdin;
  if (file !== '-') {
    const handle = await open(file, 'r');
    const head = Buffer.alloc(2);
    try {
      await handle.read(head, 0, 2, 0);
    } catch (err) {
      await handle.close();
      throw err;
    }
    const stream = handle.createReadStream({ start: 0 });
    input = head[0] === 0x1f && head[1] === 0x8b ? pipeline(stream, createGunzip(), () => {}) : stream;
  }
  yield* createInterface({ input, crlfDelay: Infinity });
}

/**
 * Writes lines to stdout at the pace it takes them (a pager, a slow pipe). Once the reader is
 * gone (`| head`: EPIPE) every write throws, which ends the search; `closed()` says why.
 */
function stdoutWriter(): { write: (line: string) => Promise<void>; closed: () => boolean } {
  let gone = false;
  process.stdout.on('error', () => {
    gone = true;
  });
  return {
    closed: () => gone,
    write: async (line) => {
      if (gone) throw new Error('stdout closed');
      if (!process.stdout.write(line + '\n')) await new Promise<void>((resolve) => {
        const done = () => {
          process.stdout.off('drain', done);
          process.stdout.off('error', done);
          resolve();
        };
        process.stdout.once('drain', done);
        process.stdout.once('error', done);
      });
      if (gone) throw new Error('stdout closed');
    },
  };
}
