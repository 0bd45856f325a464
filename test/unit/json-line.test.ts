/**
 * infoLine writes the transaction record without pino's serialiser; what it writes must be what
 * `log.info(fields, msg)` writes, byte for byte, and reach the stream the same way.
 */
import fc from 'fast-check';
import { pino, type DestinationStream, type Logger } from 'pino';
import { describe, expect, it } from 'vitest';
import { infoLine, jsonNumber, jsonString } from '../../src/logging/json-line.js';
import { loggerOptions } from '../../src/logging/logger.js';

const TIME = ',"time":"2026-12-07T12:00:00.000Z"';

/** A stream that keeps each line and, when it asks for them, pino's metadata of the line. */
class Capture {
  readonly lines: string[] = [];
  readonly meta: { level?: number; obj?: object; msg?: string; time?: string; logger?: unknown }[] = [];
  lastLevel?: number;
  lastObj?: object;
  lastMsg?: string;
  lastTime?: string;
  lastLogger?: unknown;
  constructor(metadata: boolean) {
    if (metadata) (this as Record<symbol, unknown>)[pino.symbols.needsMetadataGsym] = true;
  }
  write(line: string): void {
    this.lines.push(line);
    this.meta.push({ level: this.lastLevel, obj: this.lastObj, msg: this.lastMsg, time: this.lastTime, logger: this.lastLogger });
  }
}

/** The session logger as smtpgate builds it (loggerOptions, a child with the session's bindings), at a fixed time. */
function sessionLogger(stream: DestinationStream, extra: pino.LoggerOptions = {}, level = 'info'): Logger {
  const root = pino({ ...loggerOptions(level), timestamp: () => TIME, ...extra }, stream);
  return root.child({ session: 'r9tfh1gs2oqi030j', listener: 'open', client: '127.0.0.1' });
}

/** Both ways, each into its own stream; infoLine with JSON.stringify unless told another serialiser. */
function both(fields: Record<string, unknown>, msg: string, metadata = false, extra: pino.LoggerOptions = {}, serialise?: (f: Record<string, unknown>) => string) {
  const viaPino = new Capture(metadata);
  const viaLine = new Capture(metadata);
  sessionLogger(viaPino, extra).info(fields, msg);
  infoLine(sessionLogger(viaLine, extra), fields, msg, serialise);
  return { viaPino, viaLine };
}

/** W1's record as the session writes it. */
const W1_RECORD = {
  port: 55606,
  helo: 'vm',
  trusted: true,
  from: 'sender@corp.test',
  rcpt: [{ to: 'rcpt@corp.test', code: 250, enhanced: '2.1.5', by: 'backend' }],
  size: 4226,
  messageId: '<3e54.0001.0708@vm>',
  backend: '127.0.0.1:57605',
  reply: '250 2.0.0 Ok',
  durationMs: 170,
  outcome: 'relayed',
};

/** Strings as a record can hold them: any code point (no lone surrogates), and the ones JSON escapes, short and past pino's 100-character fast path. */
const text = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.string({ unit: fc.constantFrom('a', '"', '\\', '\n', '\r', '\t', '\u0000', '\u001f', '\u007f', '\u2028', 'é', '😀'), maxLength: 130 }),
);
const leaf = fc.oneof(text, fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.boolean(), fc.constant(null));
const value = fc.letrec((tie) => ({
  any: fc.oneof({ depthSize: 'small' }, leaf, fc.array(tie('any'), { maxLength: 4 }), fc.dictionary(text, tie('any'), { maxKeys: 4 })),
})).any;
const fields = fc.dictionary(text, value, { maxKeys: 16 });

describe('infoLine: the transaction record without pino’s serialiser', () => {
  it('writes what log.info writes for W1’s record', () => {
    const { viaPino, viaLine } = both(W1_RECORD, 'transaction');
    expect(viaLine.lines).toEqual(viaPino.lines);
    expect(JSON.parse(viaLine.lines[0]!)).toMatchObject({ level: 'info', session: 'r9tfh1gs2oqi030j', rcpt: W1_RECORD.rcpt, msg: 'transaction' });
  });

  it('writes what log.info writes for any fields of plain JSON values', () => {
    fc.assert(
      fc.property(fields, text, (f, msg) => {
        const { viaPino, viaLine } = both(f, msg);
        expect(viaLine.lines).toEqual(viaPino.lines);
      }),
      { numRuns: 500 },
    );
  });

  it('gives a stream that asks for it the line’s metadata, as pino does (the journal prefix, the syslog multistream)', () => {
    const { viaPino, viaLine } = both(W1_RECORD, 'transaction', true);
    expect(viaLine.lines).toEqual(viaPino.lines);
    const [p] = viaPino.meta;
    const [l] = viaLine.meta;
    expect({ ...l, logger: undefined }).toEqual({ ...p, logger: undefined });
    expect(l!.level).toBe(30);
    expect(l!.logger).toBeDefined();
  });

  it('sends each line to every stream of a multistream at info, and none to a warn one', () => {
    const lines = (viaLine: boolean) => {
      const info = new Capture(false);
      const warn = new Capture(false);
      const log = sessionLogger(pino.multistream([{ level: 'info', stream: info }, { level: 'warn', stream: warn }]));
      if (viaLine) infoLine(log, W1_RECORD, 'transaction');
      else log.info(W1_RECORD, 'transaction');
      return { info: info.lines, warn: warn.lines };
    };
    expect(lines(true)).toEqual(lines(false));
    expect(lines(true).info).toHaveLength(1);
    expect(lines(true).warn).toHaveLength(0);
  });

  it('leaves fields JSON.stringify refuses (a BigInt, a cycle) to pino, which writes them its own way', () => {
    const cyclic: Record<string, unknown> = { from: 'a@b.test' };
    cyclic.self = cyclic;
    for (const f of [{ size: 10n }, cyclic]) {
      const { viaPino, viaLine } = both(f, 'transaction');
      expect(viaLine.lines).toEqual(viaPino.lines);
      expect(viaLine.lines).toHaveLength(1);
    }
  });

  it('writes nothing when the logger is above info', () => {
    const out = new Capture(false);
    infoLine(sessionLogger(out, {}, 'warn'), W1_RECORD, 'transaction');
    expect(out.lines).toEqual([]);
  });

  it('leaves the line to pino where the logger changes lines: a mixin, a log formatter, a serializer for a field (or for the message, or err’s for another errorKey), redaction, a message prefix, hooks', () => {
    const changers: pino.LoggerOptions[] = [
      { mixin: () => ({ extra: 1 }) },
      { formatters: { level: (label) => ({ level: label }), log: (o) => ({ ...o, formatted: true }) } },
      { serializers: { rcpt: (r: unknown[]) => r.length } },
      { serializers: { msg: () => 'serialised' } },
      { errorKey: 'outcome', serializers: { err: () => 'serialised' } },
      { redact: ['from'] },
      { redact: ['rcpt[*].to'] },
      { msgPrefix: '[gate] ' },
      {
        hooks: {
          logMethod(args, method) {
            method.apply(this, [args[0], `hooked ${String(args[1])}`] as never);
          },
        },
      },
      { hooks: { streamWrite: (s) => s.replace('"info"', '"INFO"') } },
    ];
    // The record's own serialiser is not used either: a serialiser that writes something else shows it.
    const wrong = () => '"not":"the record"';
    for (const extra of changers) {
      for (const serialise of [undefined, wrong]) {
        const { viaPino, viaLine } = both(W1_RECORD, 'transaction', false, extra, serialise);
        expect(viaLine.lines).toEqual(viaPino.lines);
        expect(viaLine.lines[0]).not.toEqual(both(W1_RECORD, 'transaction').viaPino.lines[0]);
      }
    }
  });

  it('writes the members a given serialiser makes, in place of JSON.stringify’s', () => {
    const out = new Capture(false);
    infoLine(sessionLogger(out), W1_RECORD, 'transaction', () => '"size":1');
    expect(out.lines).toEqual([`{"level":"info"${TIME},"app":"smtpgate","session":"r9tfh1gs2oqi030j","listener":"open","client":"127.0.0.1","size":1,"msg":"transaction"}\n`]);
  });
});

describe('jsonString and jsonNumber: JSON.stringify’s text, without its call where nothing needs escaping', () => {
  it('for any string, lone surrogates and every character JSON escapes among them', () => {
    const anyText = fc.oneof(text, fc.string({ unit: fc.constantFrom('\ud800', '\udbff', '\udc00', '\udfff', 'a', '"'), maxLength: 8 }));
    fc.assert(
      fc.property(anyText, (s) => {
        expect(jsonString(s)).toBe(JSON.stringify(s));
      }),
      { numRuns: 2000 },
    );
  });

  it('for any number, NaN and the infinities among them', () => {
    const anyNumber = fc.oneof(fc.double(), fc.integer(), fc.constantFrom(-0, Number.MAX_SAFE_INTEGER, 1e21, 5e-324));
    fc.assert(
      fc.property(anyNumber, (n) => {
        expect(jsonNumber(n)).toBe(JSON.stringify(n));
      }),
      { numRuns: 2000 },
    );
  });
});
