/**
 * DKIM-signs one message on its way to the backend (RFC 6376, relaxed/relaxed, rsa-sha256),
 * with nodemailer's DKIM pieces: its header parser and its signature builder, which
 * canonicalises the header fields (nodemailer/lib/dkim/*). The body hash is RelaxedBodyHash,
 * which gives what nodemailer's RelaxedBody gives at a fifth of its CPU and no garbage (see
 * relaxed-body-hash.ts).
 *
 * It takes the message as the backend will get it (the body encoder's CRLF-only, dot-stuffed
 * pieces, stripped headers gone) and holds it in a Spool while it hashes the unstuffed bytes
 * as they arrive: the signature covers exactly what is sent, and when the client's final dot
 * comes only the header fields are left to sign. Nothing of the message reaches the backend
 * before that dot; then the DKIM-Signature field goes first and the held message follows.
 *
 * Everything here is synchronous while the message arrives: the header block goes through the
 * parser's own step (checkHeaders, which emits 'headers' at the blank line) and the body
 * straight into the hash, so no stream sits between them whose buffering (or write()
 * backpressure) could be ignored. The header block is bounded by MAX_SIGNED_HEADER_BYTES.
 *
 * nodemailer's own DKIMSigner stream (nodemailer/lib/dkim) is not used as a whole: its keys are
 * fixed before the first byte, but the key here depends on the From: field; a key that fails
 * to sign makes it send the message unsigned without a word; and its cache file is unlinked
 * without waiting for the file's asynchronous open, which can leave the file behind after an
 * abort. The Spool owns that file instead.
 */
import { once } from 'node:events';
import MessageParser from 'nodemailer/lib/dkim/message-parser';
import sign from 'nodemailer/lib/dkim/sign';
import type { KeySet, SigningKey } from './key-ring.js';
import type { SigningOutcome } from './outcome.js';
import { RelaxedBodyHash } from './relaxed-body-hash.js';
import { signingDomain, type RawHeader } from './signing-domain.js';
import { Spool, type PieceWriter, type SpoolSettings } from './spool.js';

const LF = 0x0a;
const DOT = 0x2e;
/**
 * A header block larger than this is not signed: the parser holds the whole block until its
 * blank line. Postfix's header_size_limit is 100 KiB; this leaves room.
 */
export const MAX_SIGNED_HEADER_BYTES = 512 * 1024;

/**
 * Undoes RFC 5321 §4.5.2 dot-stuffing of canonical (CRLF-only) pieces across piece boundaries,
 * for the hash: the backend gets the stuffed bytes, the signature is over the message.
 */
export class DotUnstuffer {
  #atLineStart = true;

  unstuff(piece: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let from = 0;
    const first = this.#atLineStart ? 0 : piece.indexOf(LF) + 1;
    // indexOf gave -1 (+1 = 0) when the piece holds no line start at all.
    let at = first === 0 && !this.#atLineStart ? piece.length : first;
    while (at < piece.length) {
      if (piece[at] === DOT) {
        if (at > from) out.push(piece.subarray(from, at));
        from = at + 1;
      }
      const lf = piece.indexOf(LF, at);
      if (lf === -1) break;
      at = lf + 1;
    }
    if (from < piece.length) out.push(from === 0 ? piece : piece.subarray(from));
    if (piece.length > 0) this.#atLineStart = piece[piece.length - 1] === LF;
    return out;
  }
}

export interface MessageSignerOptions {
  readonly keys: KeySet;
  readonly spool: SpoolSettings;
  /**
   * The From: domain has no key, or the message can't be signed: the held pieces (all in memory
   * still, or undefined when part went to the spool file) go to the backend now and the rest
   * streams as usual.
   */
  readonly onUnsigned: (held: Buffer[] | undefined) => void;
  /**
   * For a signed-in sender: whether the From: address is theirs (the addresses sender_binding
   * checks). Undefined for a host in the listener's trusted networks, which may sign for every
   * listed domain (the organisation's own mail server).
   */
  readonly owns?: (address: string) => boolean;
}

export class MessageSigner {
  readonly #opts: MessageSignerOptions;
  readonly #spool: Spool;
  readonly #unstuffer = new DotUnstuffer();
  readonly #parser = new MessageParser();
  readonly #body = new RelaxedBodyHash('sha256');
  #headers: RawHeader[] | undefined;
  #keys: readonly SigningKey[] = [];
  #domain = '';
  #headerBytes = 0;
  /** Set once it is known that the message goes unsigned. */
  #unsigned: Extract<SigningOutcome, { signed: false }> | undefined;
  /** The unsigned message has been handed back: the caller writes straight to the backend. */
  #released = false;
  /** The DKIM-Signature fields send() writes, one per key of the domain. */
  #signatures: string[] = [];

  constructor(opts: MessageSignerOptions) {
    this.#opts = opts;
    this.#spool = new Spool(opts.spool);
    this.#parser.once('headers', (headers: RawHeader[]) => this.#onHeaders(headers));
  }

  /** The message went back to the caller unsigned: write to the backend directly from now on. */
  get released(): boolean {
    return this.#released;
  }

  /** Takes one encoded piece; false: wait for onDrain. Throws SpoolError when the spool fails. */
  write(piece: Buffer): boolean {
    const flowing = this.#spool.write(piece);
    if (this.#unsigned) return flowing;
    for (const p of this.#unstuffer.unstuff(piece)) {
      if (this.#headers) {
        this.#body.update(p);
        continue;
      }
      this.#headerBytes += p.length;
      if (this.#headerBytes > MAX_SIGNED_HEADER_BYTES) {
        this.#giveUp({ signed: false, reason: 'header_too_large', detail: `the header block is larger than ${MAX_SIGNED_HEADER_BYTES} bytes` });
        return flowing;
      }
      const before = this.#parser.headerBytes;
      // Emits 'headers' (#onHeaders) when the blank line is in this piece; the bytes after it
      // are the body's first.
      this.#parser.checkHeaders(p);
      if (this.#unsigned) break;
      if (this.#parser.headersParsed) this.#body.update(p.subarray(Math.max(0, this.#parser.headerBytes - before)));
    }
    return flowing;
  }

  onDrain(cb: () => void): void {
    this.#spool.onDrain(cb);
  }

  /**
   * The client's final dot arrived and the message passed every check: works out the
   * signature and writes it, then the held message, to the backend (waiting on `drain`).
   */
  async send(out: PieceWriter): Promise<SigningOutcome> {
    const outcome = this.#unsigned ?? (await this.#sign());
    if (outcome.signed) for (const field of this.#signatures) out.write(Buffer.from(field, 'latin1'));
    await this.#spool.replay(out);
    return outcome;
  }

  /** The outcome so far, for a message that went out unsigned before its end. */
  get unsignedOutcome(): Extract<SigningOutcome, { signed: false }> | undefined {
    return this.#unsigned;
  }

  /** Forgets the message and closes the spool file; call however the transaction ends. */
  dispose(): Promise<void> {
    this.#parser.destroy();
    return this.#spool.dispose();
  }

  async #sign(): Promise<SigningOutcome> {
    if (!this.#headers) {
      // No blank line: the message is all header block. The parser's end parses what it holds.
      const parsed = once(this.#parser, 'headers');
      this.#parser.end();
      await parsed;
    }
    if (this.#unsigned) return this.#unsigned;
    const bodyHash = this.#body.digest();
    const headers = this.#headers ?? [];
    const fields: string[] = [];
    for (const key of this.#keys) {
      let field: string | false;
      try {
        field = sign(headers, 'sha256', bodyHash, { domainName: key.domain, keySelector: key.selector, privateKey: key.privateKey, headerFieldNames: key.headerFieldNames });
      } catch (err) {
        return { signed: false, reason: 'sign_failed', detail: `the key ${key.file} did not sign: ${(err as Error).message}` };
      }
      // nodemailer's sign() answers false when the key refuses to sign.
      if (!field) return { signed: false, reason: 'sign_failed', detail: `the key ${key.file} did not sign` };
      fields.push(field + '\r\n');
    }
    this.#signatures = fields;
    return { signed: true, domain: this.#domain, selectors: this.#keys.map((k) => k.selector) };
  }

  #onHeaders(headers: RawHeader[]): void {
    this.#headers = headers;
    // The parser keeps the first body bytes for a reader it will never have.
    this.#parser.destroy();
    const d = signingDomain(headers);
    if (!d.ok) return this.#giveUp({ signed: false, reason: d.reason, detail: d.detail });
    const keys = this.#opts.keys.forDomain(d.domain);
    if (keys.length === 0) return this.#giveUp({ signed: false, reason: 'domain_not_listed', detail: `no DKIM key for ${d.domain}` });
    // The domain's signature vouches for the author: never for a user writing as someone else.
    if (this.#opts.owns && !this.#opts.owns(d.address)) {
      return this.#giveUp({ signed: false, reason: 'from_not_owned', detail: `From: ${d.address} is not among the signed-in user's addresses` });
    }
    this.#domain = d.domain;
    this.#keys = keys;
  }

  /** Stops hashing; while the message is still all in memory, hands it back to stream on. */
  #giveUp(outcome: Extract<SigningOutcome, { signed: false }>): void {
    this.#unsigned = outcome;
    this.#parser.destroy();
    if (this.#spool.inMemory) {
      this.#released = true;
      this.#opts.onUnsigned(this.#spool.takeMemory());
    }
  }
}
