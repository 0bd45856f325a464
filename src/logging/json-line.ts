/**
 * One `info` line of plain JSON fields, serialised by V8's JSON.stringify in one call instead of
 * pino's generic per-key serialiser: for the transaction record, the one line a busy gate writes
 * per message. Timed inside the running gate under W1 (issue 18), pino's serialiser took a
 * median 5.5 µs per record, this about half of that (docs/benchmarks.md, "The mail log").
 *
 * The line is what `log.info(fields, msg)` writes, byte for byte, for fields that are plain JSON
 * values (strings, finite numbers, booleans, null, and arrays and objects of them): pino's level
 * and time, the logger's bindings, the fields in order, `msg`. test/unit/json-line.test.ts holds
 * it to pino's own output for random records. It goes to pino's stream the way pino's own write()
 * does (through pino.symbols, pino's published interface for this), with the line's metadata for
 * streams that ask for it (the journal prefix, the syslog multistream). Where a logger has
 * anything that changes a line (a mixin, a log formatter, a serializer for one of the fields,
 * redaction, a message prefix, a log-method or stream-write hook, a nested key), or fields that
 * JSON.stringify can't take (a BigInt, a cycle), the line goes through pino instead.
 *
 * One difference, on purpose: a lone UTF-16 surrogate in a short string is written escaped
 * (`\ud800`), where pino writes it raw and the UTF-8 encoder turns it into U+FFFD. smtpgate's
 * strings come from decoded UTF-8 and hold none.
 */
import { pino, type Logger } from 'pino';

const S = pino.symbols;
const INFO = 30;

interface PinoInternals {
  [S.lsCacheSym]: Record<number, string>;
  [S.timeSym]: () => string;
  [S.timeSliceIndexSym]: number;
  [S.chindingsSym]: string;
  [S.streamSym]: MetadataStream;
  [S.mixinSym]: unknown;
  [S.formattersSym]: { log?: unknown };
  [S.serializersSym]: Record<string, unknown>;
  [S.hooksSym]: { streamWrite?: unknown; logMethod?: unknown };
  [S.stringifiersSym]: object;
  [S.messageKeySym]: string;
  [S.nestedKeySym]: unknown;
  [S.endSym]: string;
}

interface MetadataStream {
  write(line: string): void;
  [S.needsMetadataGsym]?: boolean;
  lastLevel?: number;
  lastObj?: object;
  lastMsg?: string;
  lastTime?: string;
  lastLogger?: Logger;
}

/** Whether a line of `fields` can skip pino's serialiser on this logger and come out the same. */
function plain(log: Logger, p: PinoInternals, fields: Record<string, unknown>): boolean {
  if (p[S.mixinSym] || p[S.formattersSym].log || p[S.nestedKeySym] || p[S.messageKeySym] !== 'msg' || log.msgPrefix) return false;
  const hooks = p[S.hooksSym];
  if (hooks.streamWrite || hooks.logMethod) return false;
  // `redact` paths become stringifiers: a redacted field must never be written as it is.
  if (Reflect.ownKeys(p[S.stringifiersSym]).length > 0) return false;
  const serializers = p[S.serializersSym];
  for (const key in fields) if (serializers[key]) return false;
  return true;
}

/** Writes `fields` and `msg` as one info line, as `log.info(fields, msg)` would. */
export function infoLine(log: Logger, fields: Record<string, unknown>, msg: string): void {
  if (!log.isLevelEnabled('info')) return;
  const p = log as unknown as PinoInternals;
  let body: string | undefined;
  if (plain(log, p, fields)) {
    try {
      body = JSON.stringify(fields);
    } catch {
      // A BigInt or a cycle: pino's own serialiser has its answer for those.
    }
  }
  if (body === undefined) {
    log.info(fields, msg);
    return;
  }
  const time = p[S.timeSym]();
  // `{}` has no fields to splice in; otherwise its braces come off and a comma goes before.
  const line = `${p[S.lsCacheSym][INFO]}${time}${p[S.chindingsSym]}${body.length > 2 ? `,${body.slice(1, -1)}` : ''},"msg":${JSON.stringify(msg)}${p[S.endSym]}`;
  const stream = p[S.streamSym];
  if (stream[S.needsMetadataGsym] === true) {
    stream.lastLevel = INFO;
    stream.lastObj = fields;
    stream.lastMsg = msg;
    stream.lastTime = time.slice(p[S.timeSliceIndexSym]);
    stream.lastLogger = log;
  }
  stream.write(line);
}
