/**
 * One message on its way to the backend, after its 354: the client's bytes go through the
 * body encoder (smuggling guard, line length, size) straight onto the backend socket, chunk by
 * chunk, so the message is never held whole. The final dot is written only by commit(), once
 * the whole message passed every check; anything else ends in abort(), which drops the
 * connection without it, so the backend delivers nothing.
 */
import type { KeySet } from '../dkim/key-ring.js';
import { MessageSigner } from '../dkim/message-signer.js';
import type { SigningOutcome } from '../dkim/outcome.js';
import type { SpoolSettings } from '../dkim/spool.js';
import type { Metrics } from '../metrics/catalogue.js';
import type { Refusal } from '../reply.js';
import type { BackendSession } from './backend-session.js';
import { backendRefusal, isPositive } from './backend-replies.js';
import { BodyEncoder, type BareLineEndingMode } from './data-encoder.js';
import { HeaderStripper } from './header-stripper.js';
import type { DataWriter, SmtpReply } from './smtp-client.js';

export interface MessageSettings {
  /** The client-facing listener, for the metrics' `listener` label. */
  readonly listener: string;
  readonly bareLineEndings: BareLineEndingMode;
  readonly maxMessageBytes: number;
  /** Header fields removed from the client's top-level header block (data.stripHeaders). */
  readonly stripHeaders: readonly string[];
  /** DKIM signing (dkim: in the config); undefined when off. */
  readonly dkim?: DkimSettings;
}

export interface DkimSettings {
  /** The keys in force now; a message keeps the set it started with. */
  readonly keys: () => KeySet;
  readonly spool: SpoolSettings;
  /** Sign for clients in trusted networks that did not sign in. */
  readonly trustedNetworks: boolean;
}

/** Who sent the message, as far as signing cares: signed in, a trusted network, or neither. */
export type SenderStanding = 'user' | 'trusted' | 'none';

/** What the session asks of signing: who sent it, and where to report how it went. */
export interface SigningRequest {
  readonly sender: SenderStanding;
  /** A signed-in sender's addresses (see MessageSignerOptions.owns); undefined for a trusted network's host. */
  readonly owns?: (address: string) => boolean;
  readonly onOutcome: (outcome: SigningOutcome) => void;
}

export type MessageMetrics = Pick<Metrics, 'smugglingRejections' | 'smugglingNormalized' | 'backendFinalReplySeconds' | 'dkimSignatures'>;

/** Thrown by MessageSink.write when the message passes limits.maxMessageBytes. */
export class MessageTooBigError extends Error {}

export class MessageSink {
  /** The backend's reply to the message, once commit() saw it accepted. */
  reply: SmtpReply | undefined;
  readonly #session: BackendSession;
  readonly #writer: DataWriter;
  readonly #encoder: BodyEncoder;
  readonly #stripper: HeaderStripper | undefined;
  readonly #settings: MessageSettings;
  readonly #metrics: MessageMetrics;
  readonly #started = process.hrtime.bigint();
  /** Holds the message until its DKIM signature is known; undefined when it isn't signed. */
  readonly #signer: MessageSigner | undefined;
  readonly #signing: SigningRequest | undefined;
  /** Why the message is not even considered for signing, reported at commit. */
  #ineligible: SigningOutcome | undefined;

  constructor(session: BackendSession, writer: DataWriter, settings: MessageSettings, metrics: MessageMetrics, signing?: SigningRequest) {
    this.#session = session;
    this.#writer = writer;
    this.#settings = settings;
    this.#metrics = metrics;
    this.#signing = signing;
    this.#signer = this.#openSigner(signing);
    // RFC 5321 §4.5.3.1.6: the backend never sees a line over 1000 octets.
    this.#encoder = new BodyEncoder({ mode: settings.bareLineEndings, maxLineOctets: 1000 });
    this.#stripper = settings.stripHeaders.length > 0 ? new HeaderStripper(settings.stripHeaders) : undefined;
  }

  /** The client's message bytes taken so far (before encoding). */
  get bytesIn(): number {
    return this.#encoder.bytesIn;
  }

  /**
   * Headers smtpgate adds on top of the message: canonical already, written as they are, and
   * never stripped (the stripper reads only the client's bytes).
   */
  prepend(header: Buffer): void {
    this.#writer.write(header);
  }

  /**
   * Encodes and sends one chunk of the client's message. Returns false when the backend is not
   * keeping up: write no more until onDrain's callback runs. Throws SmugglingError,
   * LineTooLongError or MessageTooBigError; the caller then aborts.
   */
  write(chunk: Buffer): boolean {
    const pieces = this.#encoder.encode(chunk);
    // Checked while streaming: an oversized message is cut off before the final dot.
    const max = this.#settings.maxMessageBytes;
    if (this.#encoder.bytesIn > max) throw new MessageTooBigError(`message exceeds ${max} bytes`);
    let flowing = true;
    for (const piece of this.#strip(pieces)) flowing = this.#out(piece) && flowing;
    return flowing;
  }

  /** Runs `cb` once the backend (or the DKIM spool) has taken what was written (at once if nothing is pending). */
  onDrain(cb: () => void): void {
    if (this.#holding()) this.#signer!.onDrain(cb);
    else this.#writer.onDrain(cb);
  }

  /** The client's final dot arrived: flushes the encoder (which may still throw, as write). */
  end(): void {
    for (const piece of this.#strip(this.#encoder.end())) this.#out(piece);
    for (const piece of this.#stripper?.end() ?? []) this.#out(piece);
  }

  /** Forgets a held message (the DKIM spool); safe to call however the transaction ends. */
  discard(): Promise<void> {
    return this.#signer?.dispose() ?? Promise.resolve();
  }

  /** The message is being held for its DKIM signature, not streamed. */
  #holding(): boolean {
    return this.#signer !== undefined && !this.#signer.released;
  }

  #out(piece: Buffer): boolean {
    return this.#holding() ? this.#signer!.write(piece) : this.#writer.write(piece);
  }

  #openSigner(signing: SigningRequest | undefined): MessageSigner | undefined {
    const dkim = this.#settings.dkim;
    if (!dkim || !signing) return undefined;
    // Never lend the domain's signature to mail from someone smtpgate can't vouch for.
    if (signing.sender === 'none' || (signing.sender === 'trusted' && !dkim.trustedNetworks)) {
      this.#ineligible = { signed: false, reason: 'not_eligible', detail: signing.sender === 'none' ? 'the sender did not sign in' : 'dkim.trustedNetworks is false and the sender did not sign in' };
      return undefined;
    }
    return new MessageSigner({
      ...(signing.owns ? { owns: signing.owns } : {}),
      keys: dkim.keys(),
      spool: dkim.spool,
      // Not signed after all: what was held goes out now, and the rest streams.
      onUnsigned: (held) => {
        for (const piece of held ?? []) this.#writer.write(piece);
      },
    });
  }

  #report(outcome: SigningOutcome): void {
    this.#metrics.dkimSignatures.inc({ result: outcome.signed ? 'signed' : outcome.reason });
    this.#signing?.onOutcome(outcome);
  }

  /** The encoder's pieces without the stripped header fields (as they are when none are configured). */
  #strip(pieces: Buffer[]): Buffer[] {
    return this.#stripper ? this.#stripper.filter(pieces) : pieces;
  }

  /**
   * Writes the final dot and awaits the backend's reply: undefined when it accepted the
   * message (its reply is `reply`), its refusal otherwise. Rejects when the backend fails.
   */
  async commit(): Promise<Refusal | undefined> {
    const signer = this.#signer;
    if (this.#ineligible) this.#report(this.#ineligible);
    if (signer) {
      try {
        const outcome = signer.released ? signer.unsignedOutcome! : await signer.send(this.#writer);
        // A backend that failed during the send got no signed message: finishData() below
        // rejects with that failure, and nothing is counted as signed.
        if (this.#writer.open) this.#report(outcome);
      } finally {
        await signer.dispose();
      }
    }
    const reply = await this.#session.finishData(this.#writer);
    const metrics = this.#metrics;
    metrics.backendFinalReplySeconds.observe({ backend: this.#session.targetName }, Number(process.hrtime.bigint() - this.#started) / 1e9);
    const normalized = this.#encoder.normalized;
    if (normalized > 0) metrics.smugglingNormalized.inc({ listener: this.#settings.listener }, normalized);
    if (!isPositive(reply)) return backendRefusal(reply);
    this.reply = reply;
    return undefined;
  }
}
