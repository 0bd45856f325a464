/**
 * The fast DATA parser (src/listener/data-stream.ts) against smtp-server's own: two real
 * SMTPStream parsers, one as shipped and one with `installFastDataParser`, are fed the same
 * reads. DATA is entered the way smtp-connection enters it: the DATA command's handler calls
 * startDataMode(), and parser.continue() once the data stream has ended. The two must agree on
 * everything, read by read (`compare`):
 * - the bytes written to the data stream;
 * - dataBytes, byteLength and sizeExceeded;
 * - where DATA ends, and the bytes handed back to command parsing;
 * - the commands parsed from those bytes.
 */
import { Buffer } from 'node:buffer';
import { PassThrough } from 'node:stream';
import fc from 'fast-check';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { describe, expect, it } from 'vitest';
import { installFastDataParser } from '../../src/listener/data-stream.js';
import { smugglingCases } from '../helpers/smuggling-vectors.js';

// ---------------------------------------------------------------------------------------------
// harness

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
/** Bytes as latin1 strings, so that a failing comparison shows a readable diff. */
const s = (buf: Buffer): string => buf.toString('latin1');

/** What the parser did, in order. `read` is the state once the parser took read number `n`. */
type Event =
  | { kind: 'command'; line: string }
  | { kind: 'remainder'; bytes: string }
  | { kind: 'message'; data: string; dataBytes: number; byteLength: number; sizeExceeded: boolean }
  | { kind: 'read'; n: number; error: string | null; state: State }
  | { kind: 'error'; message: string }
  | { kind: 'flushed' };

interface State {
  dataMode: boolean;
  atDataStart: boolean;
  dataBytes: number;
  /** Everything written to the current (or last) message's data stream so far. */
  written: string;
  byteLength: number | null;
  sizeExceeded: boolean | null;
  lastBytes: string | null;
}

interface RunOptions {
  /** startDataMode's size limit (smtp-server's `size` option). */
  maxBytes?: number;
  /** The application destroys the data stream once it has seen this many bytes. */
  destroyAfter?: number;
  /** The fast parser is installed only after this many reads (default: before the first). */
  installAfter?: number;
}

type Parser = 'original' | 'fast';

/** Feeds `reads` to a parser, one write at a time, and returns what it did. */
async function run(which: Parser, reads: readonly Buffer[], opts: RunOptions = {}): Promise<Event[]> {
  const parser = new SMTPStream();
  const install = (afterReads: number) => {
    if (which === 'fast' && (opts.installAfter ?? 0) === afterReads) installFastDataParser(parser);
  };
  install(0);
  const events: Event[] = [];
  let written: Buffer[] = [];

  parser.on('error', (err: Error) => events.push({ kind: 'error', message: err.message }));
  const endDataMode = parser._endDataMode.bind(parser);
  parser._endDataMode = (chunk, remainder, callback) => {
    events.push({ kind: 'remainder', bytes: s(remainder) });
    endDataMode(chunk, remainder, callback);
  };

  // smtp-connection's handler_DATA and its onData/close flow, with a sink that keeps every
  // byte written to the data stream (written, not read: the same bytes, without the timing).
  // As in smtpgate, the other commands are answered asynchronously (MAIL and RCPT wait for the
  // backend), and DATA needs a RCPT since the last message (the first DATA has one).
  let recipient = true;
  parser.oncommand = (command, callback) => {
    const line = s(command);
    events.push({ kind: 'command', line });
    if (/^RCPT /i.test(line)) recipient = true;
    if (/^DATA$/i.test(line) && recipient) {
      recipient = false;
      const stream = parser.startDataMode(opts.maxBytes);
      written = [];
      const tap = stream as unknown as { write: (c: unknown, ...r: unknown[]) => boolean; end: (c?: unknown, ...r: unknown[]) => unknown };
      const write = tap.write.bind(stream);
      const end = tap.end.bind(stream);
      tap.write = (c, ...r) => {
        if (Buffer.isBuffer(c)) written.push(Buffer.from(c));
        return write(c, ...r);
      };
      tap.end = (c, ...r) => {
        if (Buffer.isBuffer(c)) written.push(Buffer.from(c));
        return end(c, ...r);
      };
      let seen = 0;
      stream.on('data', (c: Buffer) => {
        seen += c.length;
        if (opts.destroyAfter !== undefined && seen >= opts.destroyAfter && !stream.destroyed) {
          // smtp-connection: the stream is no longer readable, so close() runs at once.
          stream.destroy();
          parser.continue();
        }
      });
      stream.on('end', () => {
        events.push({ kind: 'message', data: s(Buffer.concat(written)), dataBytes: parser.dataBytes, byteLength: stream.byteLength, sizeExceeded: stream.sizeExceeded });
        parser.continue();
      });
      callback?.();
      return;
    }
    if (callback) setImmediate(callback);
  };

  const state = (): State => ({
    dataMode: parser._dataMode,
    atDataStart: parser._atDataStart,
    dataBytes: parser.dataBytes,
    written: s(Buffer.concat(written)),
    byteLength: parser._dataStream?.byteLength ?? null,
    sizeExceeded: parser._dataStream?.sizeExceeded ?? null,
    lastBytes: parser._lastBytes ? s(parser._lastBytes) : null,
  });

  for (const [n, chunk] of reads.entries()) {
    const error = await new Promise<Error | null | undefined>((resolve) => parser.write(chunk, resolve));
    events.push({ kind: 'read', n, error: error ? error.message : null, state: state() });
    install(n + 1);
  }
  // The client closes: smtp-server flushes a partial command line ('finish' → _flushData).
  await new Promise<void>((resolve) => parser.end(resolve));
  events.push({ kind: 'flushed' });
  return events;
}

/**
 * Reads written at once to a parser whose handlers all answer synchronously, and where every
 * DATA starts a message. Waits a few turns of the event loop for the last read to be taken.
 */
async function synchronousSession(which: Parser, reads: Buffer[]) {
  const parser = new SMTPStream();
  if (which === 'fast') installFastDataParser(parser);
  const commands: string[] = [];
  const messages: string[] = [];
  parser.oncommand = (command, callback) => {
    commands.push(s(command));
    if (s(command) === 'DATA') {
      const stream = parser.startDataMode();
      const parts: Buffer[] = [];
      stream.on('data', (c: Buffer) => parts.push(c));
      stream.on('end', () => {
        messages.push(s(Buffer.concat(parts)));
        parser.continue();
      });
    }
    callback?.();
  };
  let readTaken = false;
  for (const [i, read] of reads.entries()) parser.write(read, () => (readTaken = i === reads.length - 1));
  // The original takes a turn for each escape dot: enough turns for every one in the input.
  const turns = 20 + reads.reduce((n, r) => n + r.length, 0);
  for (let i = 0; i < turns && !readTaken; i++) await new Promise((r) => setImmediate(r));
  return { commands, messages, readTaken };
}

/** Runs both parsers and requires the same events. Returns them for further checks. */
async function compare(reads: readonly Buffer[], opts: RunOptions = {}): Promise<Event[]> {
  const original = await run('original', reads, opts);
  const fast = await run('fast', reads, opts);
  expect(fast).toEqual(original);
  return original;
}

const messages = (events: Event[]) => events.flatMap((e) => (e.kind === 'message' ? [e.data] : []));
const commands = (events: Event[]) => events.flatMap((e) => (e.kind === 'command' ? [e.line] : []));
const remainders = (events: Event[]) => events.flatMap((e) => (e.kind === 'remainder' ? [e.bytes] : []));

/** `input` cut at the given offsets (sorted, duplicates and out-of-range ones ignored). */
function splitAt(input: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts)].filter((c) => c > 0 && c < input.length).sort((x, y) => x - y);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    out.push(input.subarray(from, p));
    from = p;
  }
  out.push(input.subarray(from));
  return out;
}
const bytewise = (input: Buffer): Buffer[] => Array.from(input, (_, i) => input.subarray(i, i + 1));

/** The DATA command as its own read (the client waits for 354), then the payload in `reads`. */
const afterData = (reads: Buffer[]): Buffer[] => [b('DATA\r\n'), ...reads];

/** The payload as one read, byte by byte, and cut at every offset. */
function chunkings(payload: Buffer): Buffer[][] {
  return [[payload], bytewise(payload), ...Array.from({ length: payload.length - 1 }, (_, i) => splitAt(payload, [i + 1]))];
}

// ---------------------------------------------------------------------------------------------

describe('installFastDataParser', () => {
  it('replaces the DATA parser of that one parser and leaves the SMTPStream class alone', () => {
    const { _feedDataStream: feed, continue: resume } = SMTPStream.prototype;
    const parser = new SMTPStream();
    installFastDataParser(parser);
    expect(parser._feedDataStream).not.toBe(feed);
    expect(parser.continue).not.toBe(resume);
    expect(SMTPStream.prototype).toMatchObject({ _feedDataStream: feed, continue: resume });
    expect(new SMTPStream()).toMatchObject({ _feedDataStream: feed, continue: resume });
  });
});

describe('end of data, as smtp-server finds it', () => {
  it('ends at CRLF.CRLF; the CRLF before the dot belongs to the message', async () => {
    for (const reads of chunkings(b('Subject: x\r\n\r\nhello\r\n.\r\n'))) {
      const ev = await compare(afterData(reads));
      expect(messages(ev)).toEqual(['Subject: x\r\n\r\nhello\r\n']);
      expect(remainders(ev)).toEqual(['']);
    }
  });

  it('an empty message: "." CRLF right after DATA, however it is split', async () => {
    for (const reads of chunkings(b('.\r\nQUIT\r\n'))) {
      const ev = await compare(afterData(reads));
      expect(messages(ev)).toEqual(['']);
      expect(commands(ev)).toEqual(['DATA', 'QUIT']);
    }
  });

  it('".." CRLF at the start is a message of one line "."', async () => {
    for (const reads of chunkings(b('..\r\n.\r\n'))) {
      expect(messages(await compare(afterData(reads)))).toEqual(['.\r\n']);
    }
  });

  it('CRLF CRLF.CRLF right after DATA is a message of one empty line', async () => {
    expect(messages(await compare(afterData([b('\r\n.\r\n')])))).toEqual(['\r\n']);
  });

  it('the terminator split at every offset, and at every pair of offsets', async () => {
    const payload = b('a\r\nb\r\n.\r\nNOOP\r\n');
    for (let i = 1; i < payload.length; i++) {
      for (let j = i; j < payload.length; j++) {
        const ev = await compare(afterData(splitAt(payload, [i, j])));
        expect(messages(ev)).toEqual(['a\r\nb\r\n']);
        expect(commands(ev)).toEqual(['DATA', 'NOOP']);
      }
    }
  });

  it('commands pipelined after the final dot go back to command parsing, in the same read', async () => {
    const ev = await compare([b('DATA\r\nx\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\ny\r\n.\r\nQUIT\r\n')]);
    expect(messages(ev)).toEqual(['x\r\n', 'y\r\n']);
    expect(commands(ev)).toEqual(['DATA', 'MAIL FROM:<a@b.test>', 'RCPT TO:<c@d.test>', 'DATA', 'QUIT']);
  });

  it('quirk: a second message that ends synchronously inside continue() stalls the session, in both', async () => {
    // SMTPStream.continue() clears its callback after running it. If the bytes after the first
    // terminator hold a whole second message, and every handler answers synchronously, the
    // second message's callback is set and then cleared, and QUIT is never read. Unless an
    // escape dot came first: the original reaches that terminator after a setImmediate.
    const stalled = b('DATA\r\nx\r\n.\r\nDATA\r\nz\r\n.\r\nQUIT\r\n');
    const through = b('DATA\r\nx\r\n.\r\nDATA\r\nz\r\n..y\r\n.\r\nQUIT\r\n');
    // The same with the second message's end in the next read, already waiting in the parser:
    // the original takes it only after a setImmediate too.
    const nextRead = [b('DATA\r\nx\r\n.\r\nDATA\r\nz\r\n..y\r\n'), b('a\r\n.\r\nQUIT\r\n')];
    const nextReadStalled = [b('DATA\r\nx\r\n.\r\nDATA\r\nz\r\n.y\r\n'), b('a\r\n.\r\nQUIT\r\n')];
    for (const which of ['original', 'fast'] as const) {
      expect(await synchronousSession(which, nextRead), which).toEqual({ commands: ['DATA', 'DATA', 'QUIT'], messages: ['x\r\n', 'z\r\n.y\r\na\r\n'], readTaken: true });
      expect(await synchronousSession(which, nextReadStalled), which).toEqual({ commands: ['DATA', 'DATA'], messages: ['x\r\n', 'z\r\n.y\r\na\r\n'], readTaken: false });
      expect(await synchronousSession(which, [stalled]), which).toEqual({ commands: ['DATA', 'DATA'], messages: ['x\r\n', 'z\r\n'], readTaken: false });
      expect(await synchronousSession(which, [through]), which).toEqual({ commands: ['DATA', 'DATA', 'QUIT'], messages: ['x\r\n', 'z\r\n.y\r\n'], readTaken: true });
    }
  });

  it('a partial command after the final dot is flushed when the client closes', async () => {
    const ev = await compare(afterData([b('x\r\n.\r\nQUI')]));
    expect(commands(ev)).toEqual(['DATA', 'QUI']);
  });

  it('a message that never ends keeps its last 4 bytes unsent, as smtp-server does', async () => {
    const ev = await compare(afterData([b('Subject: x\r\n\r\nno end')]));
    expect(messages(ev)).toEqual([]);
    const last = ev.filter((e) => e.kind === 'read').at(-1);
    expect(last).toMatchObject({ state: { dataMode: true, written: 'Subject: x\r\n\r\nno', lastBytes: ' end' } });
  });
});

describe('no other sequence ends DATA (SMTP smuggling)', () => {
  const lenient = ['\n.\n', '\r.\r', '\n.\r\n', '\r\n.\n', '\r.\r\n', '\r\n.\r', '\r\n.\r\r\n', '\r\r\n.\r\r\n', '\r\n\x00.\r\n'];
  it.each(lenient)('%j stays message content', async (seq) => {
    for (const reads of chunkings(b(`a${seq}MAIL FROM:<x@y.test>\r\nz\r\n.\r\n`))) {
      const ev = await compare(afterData(reads));
      expect(messages(ev)).toHaveLength(1);
      expect(messages(ev)[0]).toContain('MAIL FROM:<x@y.test>');
      expect(commands(ev)).toEqual(['DATA']);
    }
  });

  describe.each(smugglingCases())('vector $name', ({ payload }) => {
    it('is one message and no command, however the reads are split', async () => {
      for (const reads of chunkings(payload)) {
        const ev = await compare(afterData(reads));
        expect(messages(ev)).toHaveLength(1);
        expect(messages(ev)[0]).toContain('MAIL FROM:<spoof@corp.test>');
        expect(commands(ev)).toEqual(['DATA']);
        expect(remainders(ev)).toEqual(['']);
      }
    });
  });
});

describe('dot-unstuffing, as smtp-server does it', () => {
  it('drops the first dot of a line that starts with ".."', async () => {
    for (const reads of chunkings(b('a\r\n..b\r\n...\r\n.\r\n'))) {
      expect(messages(await compare(afterData(reads)))).toEqual(['a\r\n.b\r\n..\r\n']);
    }
  });

  it('a line of a single "." sent stuffed ("..") stays content at the very start, even as its own read', async () => {
    // smtp-server's _atDataStart fix: the escaped dot must not be taken for the terminator.
    for (const reads of [[b('..'), b('\r\n.\r\n')], [b('.'), b('.'), b('\r\n'), b('.\r\n')], [b('..\r'), b('\n.\r\n')]]) {
      expect(messages(await compare(afterData(reads)))).toEqual(['.\r\n']);
    }
  });

  it('leaves a dot alone when the next byte is not a dot', async () => {
    expect(messages(await compare(afterData([b('a\r\n.b\r\n.\r\n')])))).toEqual(['a\r\n.b\r\n']);
  });

  it('quirk: a line after a bare LF is unstuffed too ("a" LF ".." becomes "a" LF ".")', async () => {
    for (const reads of chunkings(b('a\n..b\r\n.\r\n'))) {
      expect(messages(await compare(afterData(reads)))).toEqual(['a\n.b\r\n']);
    }
  });

  it('quirk: a message starting with LF ".." keeps both dots (position 1 is never checked)', async () => {
    for (const reads of chunkings(b('\n..b\r\n.\r\n'))) {
      expect(messages(await compare(afterData(reads)))).toEqual(['\n..b\r\n']);
    }
  });

  it('many escape dots in one read, and escape dots at every read boundary', async () => {
    const payload = b('..a\r\n..\r\n..\r\n\r\n...\r\n..b\r\n.\r\n');
    for (const reads of chunkings(payload)) {
      expect(messages(await compare(afterData(reads)))).toEqual(['.a\r\n.\r\n.\r\n\r\n..\r\n.b\r\n']);
    }
  });
});

describe('bytes and counts', () => {
  it('NUL and 8-bit bytes pass through unchanged', async () => {
    const body = b('\x00\xff\x80\r\n\xe9t\xe9\x00\r\n');
    for (const reads of chunkings(Buffer.concat([body, b('.\r\n')]))) {
      expect(messages(await compare(afterData(reads)))).toEqual([s(body)]);
    }
  });

  it('dataBytes, byteLength and sizeExceeded follow the bytes sent, read by read', async () => {
    const payload = b('0123456789\r\n..0123456789\r\n0123456789\r\n.\r\n');
    for (const reads of chunkings(payload)) {
      const ev = await compare(afterData(reads), { maxBytes: 20 });
      expect(ev.find((e) => e.kind === 'message')).toMatchObject({ dataBytes: 37, byteLength: 37, sizeExceeded: true });
    }
  });

  it('an application that destroys the data stream mid-message: bytes are still counted, DATA still ends at the terminator', async () => {
    const body = Buffer.concat(Array.from({ length: 2000 }, (_, i) => b(i % 7 === 0 ? `..line ${i}\r\n` : `line ${i}\r\n`)));
    const payload = Buffer.concat([body, b('.\r\nQUIT\r\n')]);
    const reads = splitAt(
      payload,
      Array.from({ length: 30 }, (_, i) => i * 997),
    );
    const ev = await compare(afterData(reads), { destroyAfter: 5000 });
    expect(commands(ev)).toEqual(['DATA', 'QUIT']);
  });

  it('waits for a data stream that is not being read to drain before taking the next read', async () => {
    for (const which of ['original', 'fast'] as const) {
      const parser = new SMTPStream();
      if (which === 'fast') installFastDataParser(parser);
      const stream = parser.startDataMode();
      let taken = false;
      parser.write(Buffer.alloc(256 * 1024, 'a'), () => (taken = true));
      // a few turns of the event loop, so a parser that does not wait would have called back
      for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
      expect(taken, which).toBe(false);
      const drained = new Promise<void>((resolve) => parser.write(b('x'), () => resolve()));
      stream.resume();
      await drained;
      expect(taken, which).toBe(true);
      expect(parser.dataBytes, which).toBe(256 * 1024 + 1 - 4);
    }
  });
});

describe('property: same as smtp-server for any input and any split into reads', () => {
  const token = fc.oneof(
    { arbitrary: fc.constantFrom('\r\n', '\r', '\n', '.', '..', '\r\n.', '\n.', '\r.', '\x00', '\xff', '\x80'), weight: 10 },
    { arbitrary: fc.constantFrom('\r\n.\r\n', '\r\n..\r\n', '\n.\n', '\r.\r', '\n.\r\n', '\r\n.\n', '.\r\n', '\n..'), weight: 4 },
    { arbitrary: fc.constantFrom('MAIL FROM:<a@b.test>\r\n', 'RCPT TO:<c@d.test>\r\n', 'DATA\r\n', 'NOOP\r\n', 'QUIT\r\n'), weight: 2 },
    { arbitrary: fc.string({ unit: 'grapheme-ascii', maxLength: 6 }), weight: 4 },
    { arbitrary: fc.uint8Array({ maxLength: 6 }).map((u) => Buffer.from(u).toString('latin1')), weight: 1 },
  );
  const payload = fc.array(token, { maxLength: 40 }).map((t) => b(t.join('')));
  /** A message body, the terminator, and pipelined commands: anything, or a second message. */
  const message = fc
    .tuple(fc.array(token, { maxLength: 30 }), fc.array(token, { maxLength: 10 }), fc.option(fc.array(token, { maxLength: 20 })))
    .map(([body, after, second]) =>
      b(`${body.join('')}\r\n.\r\n${after.join('')}${second ? `\r\nRCPT TO:<c@d.test>\r\nDATA\r\n${second.join('')}\r\n.\r\nQUIT\r\n` : ''}`),
    );
  /** How the payload is cut into reads. */
  const cuts = fc.oneof(
    fc.constant<'bytewise' | number[]>('bytewise'),
    fc.array(fc.nat({ max: 400 }), { maxLength: 12 }),
  );
  const maxBytes = fc.option(fc.nat({ max: 60 }), { nil: undefined });

  it('messy payloads', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(payload, message), cuts, maxBytes, async (input, cut, max) => {
        const reads = cut === 'bytewise' ? bytewise(input) : splitAt(input, cut);
        await compare(afterData(reads), { maxBytes: max });
      }),
      { numRuns: 600 },
    );
  });

  it('payloads in the same read as the DATA command (the parser switches mode mid-read)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(payload, message), cuts, async (input, cut) => {
        const whole = Buffer.concat([b('DATA\r\n'), input]);
        await compare(cut === 'bytewise' ? bytewise(whole) : splitAt(whole, cut));
      }),
      { numRuns: 300 },
    );
  });

  it('with handlers that all answer synchronously (continue() re-entered): the same commands, messages and stalls', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(payload, message), message, cuts, async (first, second, cut) => {
        const whole = Buffer.concat([b('DATA\r\n'), first, b('DATA\r\n'), second]);
        const reads = cut === 'bytewise' ? bytewise(whole) : splitAt(whole, cut);
        expect(await synchronousSession('fast', reads)).toEqual(await synchronousSession('original', reads));
      }),
      { numRuns: 300 },
    );
  });

  it('installed in the middle of a message: it goes on from the state the original left', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(payload, message), fc.array(fc.nat({ max: 400 }), { maxLength: 12 }), fc.nat({ max: 12 }), async (input, cut, after) => {
        await compare(afterData(splitAt(input, cut)), { installAfter: after });
      }),
      { numRuns: 300 },
    );
  });

  it('large messages with dot lines in big reads', async () => {
    const line = fc.oneof(
      { arbitrary: fc.string({ unit: 'grapheme-ascii', maxLength: 80 }), weight: 8 },
      { arbitrary: fc.string({ unit: 'grapheme-ascii', maxLength: 10 }).map((t) => `.${t}`), weight: 2 },
      { arbitrary: fc.constantFrom('.', '..', '', '\n.', '\r.'), weight: 1 },
    );
    const big = fc.array(line, { minLength: 50, maxLength: 400 }).map((lines) => b(`${lines.join('\r\n')}\r\n.\r\nQUIT\r\n`));
    await fc.assert(
      fc.asyncProperty(big, fc.array(fc.nat({ max: 40000 }), { maxLength: 8 }), async (input, cut) => {
        await compare(afterData(splitAt(input, cut)));
      }),
      { numRuns: 100 },
    );
  });
});

describe('backpressure (a stream nobody reads holds no more than a read)', () => {
  /** Feeds reads until the parser stops asking for more (its write callback doesn't come). */
  async function readsTaken(read: Buffer, max: number): Promise<{ taken: number; buffered: number }> {
    const parser = new SMTPStream();
    installFastDataParser(parser as unknown as Parameters<typeof installFastDataParser>[0]);
    let stream: ReturnType<SMTPStream['startDataMode']> | undefined;
    parser.oncommand = (command: Buffer, callback?: () => void) => {
      // The relay does not read the message while it waits for the backend's 354.
      if (command.toString() === 'DATA') stream = parser.startDataMode();
      callback?.();
    };
    await new Promise<void>((resolve) => parser.write(b('DATA\r\n'), () => resolve()));
    let taken = 0;
    for (; taken < max; taken++) {
      const accepted = await Promise.race([
        new Promise<boolean>((resolve) => parser.write(read, () => resolve(true))),
        new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 50)),
      ]);
      if (!accepted) break;
    }
    return { taken, buffered: stream ? stream.writableLength + stream.readableLength : 0 };
  }

  // What the message stream may hold is its two buffers' high-water marks (16 KiB each on
  // Node 20, 64 KiB from Node 22 on): the reads that fill them, plus the one in the parser's
  // hands and one it took before the stream said full.
  const READ = 16384;
  const { readableHighWaterMark, writableHighWaterMark } = new PassThrough();
  const MAX_READS = (readableHighWaterMark + writableHighWaterMark) / READ + 2;

  it('stops taking reads of plain text once the stream is full', async () => {
    const { taken } = await readsTaken(Buffer.alloc(READ, 'a'), 50);
    expect(taken).toBeLessThanOrEqual(MAX_READS);
  });

  it('stops taking reads of escape-dot lines too (each read writes thousands of small pieces)', async () => {
    // 16 KiB of "..\r\n": every read ends within 4 bytes of an escape dot.
    const { taken, buffered } = await readsTaken(b('..\r\n'.repeat(READ / 4)), 50);
    expect(taken).toBeLessThanOrEqual(MAX_READS);
    expect(buffered).toBeLessThanOrEqual(readableHighWaterMark + writableHighWaterMark + READ);
  });
});
