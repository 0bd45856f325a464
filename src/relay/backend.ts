/**
 * The relay's public face: what a client session asks of the backend, in the shape of maddy's
 * `module.Delivery` and go-smtp's `Session`. A session asks `mail(from, identity)` for a
 * transaction; the transaction takes `rcpt(to)`, starts the message with `data()` and hands
 * out a `MessageSink` (write, drain, commit). `abort()` on the transaction drops the message
 * without the final dot, whether or not its sink was opened.
 *
 * Everything about the wire stays behind this module: the MAIL and RCPT lines
 * (envelope.ts), the 354 check, the body encoder (message-sink.ts), and the mapping of the
 * backend's replies and failures to refusals. Files outside relay/ import from here, never
 * from smtp-client.ts.
 *
 * A refusal is returned, not thrown: the caller counts and logs it at its stage. A step the
 * backend accepted returns no refusal, and its reply (which the client gets word for word) is
 * the transaction's `reply`.
 */
import type { SMTPServerAddress } from 'smtp-server';
import type { Logger } from '../logging/logger.js';
import type { Refusal } from '../reply.js';
import {
  BACKEND_CONNECTION_FAILED,
  BACKEND_SIGN_IN_FAILED,
  BACKEND_TIMED_OUT,
  BACKEND_UNREACHABLE,
  CLIENT_GONE,
  CLIENT_LEFT_DURING_DATA,
  INTERNAL_ERROR,
  messageLineTooLong,
  messageTooBig,
  smugglingRefused,
} from '../refusals.js';
import type { BackendSession, ClientIdentity } from './backend-session.js';
import { backendRefusal, isPositive } from './backend-replies.js';
import { LineTooLongError, SmugglingError } from './data-encoder.js';
import { mailCommand, rcptCommand } from './envelope.js';
import { MessageSink, MessageTooBigError, type MessageSettings, type MessageMetrics, type SigningRequest } from './message-sink.js';
import { SpoolError } from '../dkim/spool.js';
import { BackendError, type SmtpReply } from './smtp-client.js';
import { UpstreamAuthError } from './upstream-tokens.js';

export { BackendSession, type BackendLogin, type BackendTarget, type ClientIdentity, type IdentityMode } from './backend-session.js';
export { BackendPool } from './backend-pool.js';
export { BackendError, type BackendClientOptions, type SmtpReply } from './smtp-client.js';
export { UpstreamTokens, parseServiceAccountKey, type TokenSettings } from './upstream-tokens.js';
export { chooseMailbox } from './upstream-mailbox.js';
export { MessageSink, type MessageSettings, type MessageMetrics, type DkimSettings, type SenderStanding, type SigningRequest } from './message-sink.js';
export { replyText } from './backend-replies.js';
export type { BareLineEndingMode } from './data-encoder.js';

/** One client session's backend: opened lazily at the first MAIL, closed with the session. */
export class Backend {
  readonly #session: BackendSession;
  readonly #log: Logger;
  readonly #message: MessageSettings;
  readonly #metrics: MessageMetrics;

  constructor(session: BackendSession, log: Logger, message: MessageSettings, metrics: MessageMetrics) {
    this.#session = session;
    this.#log = log;
    this.#message = message;
    this.#metrics = metrics;
  }

  /** Label of the backend in use (see BackendSession.targetName). */
  get targetName(): string {
    return this.#session.targetName;
  }

  /**
   * Passthrough AUTH over this session's own connection (auth/backend-authenticator.ts), so
   * the login sticks to the connection that relays the mail.
   */
  authenticate(user: string, password: string, mechanism: 'PLAIN' | 'LOGIN', identity: ClientIdentity): Promise<SmtpReply> {
    return this.#session.authenticate(user, password, mechanism, identity);
  }

  /**
   * Starts a transaction: opens the backend session if needed, builds the MAIL line from what
   * the backend advertised and passes it on. Returns the transaction, or the refusal.
   */
  async mail(from: SMTPServerAddress, identity: ClientIdentity): Promise<Transaction | Refusal> {
    const session = this.#session;
    try {
      const caps = session.openCapabilities ?? (await session.capabilities(identity));
      const line = mailCommand(from, caps);
      if (!line.ok) return line.refusal;
      const reply = await session.mail(line.line, identity);
      if (!isPositive(reply)) return backendRefusal(reply);
      return new Transaction(this, session, Boolean(from.args && from.args.SMTPUTF8), reply);
    } catch (err) {
      return this.failure(err);
    }
  }

  /** Drops the connection without a final dot: nothing of an open transaction is delivered. */
  abort(): void {
    this.#session.abort();
  }

  /** The client's identity changed (it signed in): the next MAIL opens a connection that carries it. */
  releaseIdentity(): void {
    this.#session.releaseIdentity();
  }

  /** QUIT politely (or drop a connection in mid-exchange); never throws. */
  close(): Promise<void> {
    return this.#session.close();
  }

  /** A backend that can't be reached, stalls or drops the connection: always a 4xx, never a 250. */
  failure(err: unknown): Refusal {
    // smtpgate dropped the backend connection itself because the client had left: nothing
    // failed on the backend's side, and nobody is left to read the reply.
    if (this.#session.droppedByUs(err)) {
      this.#log.debug({ err: (err as Error).message }, 'client left while the backend was awaited');
      return CLIENT_GONE;
    }
    if (err instanceof BackendError && err.kind === 'refused' && err.reply) {
      this.#log.info({ backend: this.#session.targetName, reply: `${err.reply.code} ${err.reply.text}` }, 'backend refused the client');
      return backendRefusal(err.reply);
    }
    if (err instanceof UpstreamAuthError) {
      // The token's own log line (app.ts) says what the endpoint or the backend answered.
      this.#log.warn({ backend: this.#session.targetName, mailbox: err.mailbox, kind: err.kind, err: err.message }, 'cannot sign in to the backend with OAuth2');
      return BACKEND_SIGN_IN_FAILED;
    }
    if (err instanceof BackendError) {
      this.#log.warn({ backend: this.#session.targetName, kind: err.kind, err: err.message }, 'backend failure');
      switch (err.kind) {
        case 'connect':
          return BACKEND_UNREACHABLE;
        case 'timeout':
          return BACKEND_TIMED_OUT;
        default:
          return BACKEND_CONNECTION_FAILED;
      }
    }
    this.#log.error({ err }, 'unexpected error in relay');
    return INTERNAL_ERROR;
  }

  /**
   * The client went away during DATA (commit 0f813cb): the message is lost on the client's
   * side, not the backend's, so it is not reported as a backend failure.
   */
  clientAborted(): Refusal {
    this.#log.warn('client went away during DATA; backend transaction aborted, nothing delivered');
    return CLIENT_LEFT_DURING_DATA;
  }

  /** For Transaction: the message sink after the backend's 354. */
  openMessage(session: BackendSession, onFailure: (err: unknown) => void, signing: SigningRequest | undefined): MessageSink {
    return new MessageSink(session, session.beginData(onFailure), this.#message, this.#metrics, signing);
  }

  /** For Transaction: what the client is told about a message that failed before its final reply. */
  messageFailure(err: unknown, clientLeft: boolean): Refusal {
    if (err instanceof SmugglingError) {
      this.#metrics.smugglingRejections.inc({ listener: this.#message.listener, kind: err.kind });
      this.#log.warn({ kind: err.kind, offset: err.offset }, 'smuggling guard: message refused');
      return smugglingRefused(err.kind);
    }
    if (err instanceof LineTooLongError) {
      return messageLineTooLong(err.limit);
    }
    if (err instanceof MessageTooBigError) {
      return messageTooBig(this.#message.maxMessageBytes);
    }
    if (err instanceof SpoolError) {
      this.#log.error({ err: err.message }, 'DKIM: the message could not be held for signing; backend transaction aborted');
      return INTERNAL_ERROR;
    }
    return clientLeft ? this.clientAborted() : this.failure(err);
  }
}

/** One mail transaction on the backend: MAIL was accepted; RCPT and DATA follow. */
export class Transaction {
  /** The backend's reply to the last command it accepted: the client gets it word for word. */
  reply: SmtpReply;
  readonly #backend: Backend;
  readonly #session: BackendSession;
  /** From the accepted MAIL: addresses go to the backend as the client wrote them (RFC 6531). */
  readonly #smtputf8: boolean;
  /** The message's sink once data() was answered 354, to discard what it holds at the end. */
  #sink: MessageSink | undefined;

  constructor(backend: Backend, session: BackendSession, smtputf8: boolean, reply: SmtpReply) {
    this.#backend = backend;
    this.#session = session;
    this.#smtputf8 = smtputf8;
    this.reply = reply;
  }

  /**
   * Passes one recipient on. A recipient the backend refuses is refused to the client now,
   * with the backend's code, so no recipient is ever dropped silently.
   */
  rcpt(to: SMTPServerAddress): Promise<Refusal | undefined> {
    // One .then on the session's promise, not an async layer: RCPT is on the hot path.
    return this.#session.rcpt(rcptCommand(to, this.#smtputf8)).then(this.#accepted, this.#failed);
  }

  readonly #accepted = (reply: SmtpReply): Refusal | undefined => {
    if (!isPositive(reply)) return backendRefusal(reply);
    this.reply = reply;
    return undefined;
  };

  readonly #failed = (err: unknown): Refusal => this.#backend.failure(err);

  /**
   * Sends DATA and checks for the 354 before a byte of the message is sent. `clientLeft`
   * tells a client that left while the 354 was awaited (its leaving closed the backend
   * session) from a backend that failed.
   */
  async data(clientLeft: () => boolean): Promise<Refusal | undefined> {
    let start: SmtpReply;
    try {
      start = await this.#session.startData();
    } catch (err) {
      return clientLeft() ? this.#backend.clientAborted() : this.#backend.failure(err);
    }
    if (start.code !== 354) return backendRefusal(start);
    return undefined;
  }

  /**
   * After data(): the sink for the message. `onFailure` hears of a backend failure before
   * commit(); the message is then lost, and the caller aborts. With `signing`, the message is
   * DKIM-signed when dkim: is configured and the sender and its From: domain qualify.
   */
  message(onFailure: (err: unknown) => void, signing?: SigningRequest): MessageSink {
    this.#sink = this.#backend.openMessage(this.#session, onFailure, signing);
    return this.#sink;
  }

  /** Abandons the message without the final dot: the backend delivers nothing, and nothing held is kept. */
  abort(): void {
    this.#session.abort();
    void this.#sink?.discard();
  }

  /**
   * What the client is told about a message that failed before the backend's final reply (an
   * encoder or size error from the sink, a backend failure). `clientLeft`: the client went
   * away first, so whatever failed next is not the backend's fault.
   */
  refusalFor(err: unknown, clientLeft: boolean): Refusal {
    return this.#backend.messageFailure(err, clientLeft);
  }
}


