/**
 * One `info` line of plain JSON fields, written without pino's generic per-key serialiser: for
 * the transaction record, the one line a busy gate writes per message. Timed inside the running
 * gate under W1 (issue 18), pino's serialiser took a median 5.5 µs per record, JSON.stringify in
 * one call about half of that. The record now comes from its own writer of the same text
 * (recordMembers in transaction-record.ts, passed as `members`); with session 10's other cuts the
 * record's end took 12–20% less inside the gate (docs/benchmarks.md, "The mail log").
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
  [S.errorKeySym]: string;
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
function plain(log: Logger, p: PinoInternals, fields: object): boolean {
  if (p[S.mixinSym] || p[S.formattersSym].log || p[S.nestedKeySym] || p[S.messageKeySym] !== 'msg' || log.msgPrefix) return false;
  const hooks = p[S.hooksSym];
  if (hooks.streamWrite || hooks.logMethod) return false;
  // `redact` paths become stringifiers: a redacted field must never be written as it is.
  if (Reflect.ownKeys(p[S.stringifiersSym]).length > 0) return false;
  // A logger has a serializer or two, a line a dozen fields or more: look up the fewer. pino also
  // passes the message through a `msg` serializer, and the errorKey field through `err`'s.
  const serializers = p[S.serializersSym];
  if (serializers.msg || (serializers.err && p[S.errorKeySym] !== 'err')) return false;
  for (const key in serializers) if (serializers[key] && (fields as Record<string, unknown>)[key] !== undefined) return false;
  return true;
}

/** The members of `fields` as JSON.stringify writes them, without the braces: `"a":1,"b":"x"`. */
export function jsonMembers(fields: object): string {
  return JSON.stringify(fields).slice(1, -1);
}

/**
 * Writes `fields` and `msg` as one info line, as `log.info(fields, msg)` would. `members` is
 * jsonMembers, or a faster writer of the same text for the one shape of fields it knows (the
 * transaction record's recordMembers); it may throw where JSON.stringify would.
 */
export function infoLine<F extends object>(log: Logger, fields: F, msg: string, members: (fields: F) => string = jsonMembers): void {
  if (!log.isLevelEnabled('info')) return;
  const p = log as unknown as PinoInternals;
  let body: string | undefined;
  if (plain(log, p, fields)) {
    try {
      body = members(fields);
    } catch {
      // A BigInt or a cycle: pino's own serialiser has its answer for those.
    }
  }
  if (body === undefined) {
    log.info(fields as Record<string, unknown>, msg);
    return;
  }
  const time = p[S.timeSym]();
  // The members go in as they are, a rope or not: the line is made flat once, when it is written.
  const line = `${p[S.lsCacheSym][INFO]}${time}${p[S.chindingsSym]}${body === '' ? '' : `,${body}`},"msg":${jsonString(msg)}${p[S.endSym]}`;
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

/** A string as JSON.stringify writes it, without its call when nothing in it needs escaping. */
export function jsonString(s: string): string {
  return AS_IS_IN_JSON.test(s) ? `"${s}"` : JSON.stringify(s);
}

/** No quote, backslash, control character or surrogate (JSON.stringify escapes a lone one). */
const AS_IS_IN_JSON = /^[^"\\\u0000-\u001f\ud800-\udfff]*$/;

/** A number as JSON.stringify writes it: `null` for NaN and the infinities. */
export function jsonNumber(n: number): string {
  return Number.isFinite(n) ? `${n}` : 'null';
}
