/**
 * Session ids: 80 random bits as 16 base-32 digits, the format smtp-server makes its own ids in
 * (`BigInt('0x' + randomBytes(10).toString('hex')).toString(32).padStart(16, '0')`), so a
 * session's log lines look the same whoever made its id.
 *
 * The bits come from a pool filled by one `randomBytes` call per POOL_IDS ids: a `randomBytes`
 * call per connection (and its BigInt round trip) cost 1.8 µs and a getpid() in OpenSSL's fork
 * check, a pooled id 0.12 µs. The ids are for correlating log lines, not secrets; each pool's
 * bytes are used once and never handed out twice.
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
  #pool: Buffer = Buffer.alloc(0);
  #offset = 0;

  next(): string {
    if (this.#offset === this.#pool.length) {
      this.#pool = randomBytes(ID_BYTES * POOL_IDS);
      this.#offset = 0;
    }
    const at = this.#offset;
    this.#offset += ID_BYTES;
    return sessionIdOf(this.#pool, at);
  }
}

/** The id of the 10 bytes at `at`: their 80 bits, big-endian, as 16 base-32 digits. */
export function sessionIdOf(bytes: Buffer, at: number): string {
  // Each half is 40 bits, 8 base-32 digits: well inside a double's exact integers.
  return forty(bytes, at) + forty(bytes, at + 5);
}

/** Five bytes, big-endian, as 8 base-32 digits. */
function forty(bytes: Buffer, at: number): string {
  return bytes.readUIntBE(at, 5).toString(32).padStart(8, '0');
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
