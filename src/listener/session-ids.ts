/**
 * Session ids: 80 random bits as 16 base-32 digits, the format smtp-server makes its own ids in
 * (`BigInt('0x' + randomBytes(10).toString('hex')).toString(32).padStart(16, '0')`), so a
 * session's log lines look the same whoever made its id.
 *
 * The bits come from a pool filled by one `randomBytes` call per POOL_IDS ids, spelled out in one
 * go; an id is a slice of that string (which keeps the pool's 4 KiB alive while it lives). A
 * `randomBytes` call per connection, with its getpid() in OpenSSL's fork check, and the BigInt
 * round trip cost ~3.3 µs of CPU per id here, a pooled id ~0.1 µs (docs/benchmarks.md). The ids
 * are for correlating log lines, not secrets; each pool's bytes are used once.
 */
import { randomBytes } from 'node:crypto';
import type { SMTPServer } from 'smtp-server';
import { replaceProxyHandler } from './smtp-server-seams.js';

/** Bytes of randomness per id: 80 bits, 16 base-32 digits of 5 bits each. */
const ID_BYTES = 10;
/** Ids per refill of the pool. */
const POOL_IDS = 256;

/** Hands out session ids; one per listener (no module state). */
export class SessionIds {
  /** The next POOL_IDS ids, spelled out one after the other. */
  #pool = '';
  #offset = 0;

  next(): string {
    if (this.#offset === this.#pool.length) {
      this.#pool = spellSessionIds(randomBytes(ID_BYTES * POOL_IDS));
      this.#offset = 0;
    }
    const at = this.#offset;
    this.#offset += ID_DIGITS;
    return this.#pool.slice(at, at + ID_DIGITS);
  }
}

/** Base-32 digits as BigInt's toString(32) writes them. */
const DIGITS = '0123456789abcdefghijklmnopqrstuv';
const ID_DIGITS = 16;

/**
 * Every 10 bytes of `bytes` as a session id (their 80 bits, big-endian, as 16 base-32 digits),
 * one after the other. Spelled out once per pool: Number's toString(32) per id would cost
 * more than the randomBytes call it saves.
 */
export function spellSessionIds(bytes: Buffer): string {
  const ids = Math.floor(bytes.length / ID_BYTES);
  const out = Buffer.allocUnsafe(ids * ID_DIGITS);
  for (let half = 0; half < ids * 2; half++) {
    // 40 bits, 8 digits: well inside a double's exact integers.
    let n = bytes.readUIntBE(half * 5, 5);
    for (let d = 7; d >= 0; d--) {
      out[half * 8 + d] = DIGITS.charCodeAt(n % 32);
      n = Math.floor(n / 32);
    }
  }
  return out.toString('latin1');
}

/**
 * A listener without the PROXY protocol: each accepted socket gets its session id at once and
 * goes on to its connection in the same turn, through smtp-server's `_handleProxy` seam, where
 * the library would make the id with a randomBytes call and answer a turn later (setImmediate).
 * What the library's handler also decides, `useProxy` and `ignoredHosts`, smtpgate never sets.
 */
export function installSessionIds(server: SMTPServer, ids: SessionIds): void {
  replaceProxyHandler(server, (_socket, done) => done(null, { id: ids.next() }));
}
