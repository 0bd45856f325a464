/**
 * Suspension notices: when the compromised-account brake suspends a user, the user and the
 * admins are told by mail, at most once per suspension (issue 19).
 *
 * - Who sends: the instance (or cluster worker) whose quota hit filled the brake count hears of
 *   the suspension (Limits.onSuspended); before sending it claims the notice in the limits
 *   store (Limits.claimSuspensionNotice: one atomic count under the user, living as long as the
 *   suspension). Only the claim's winner sends, so neither a brake tripping again during the
 *   suspension, nor a second instance, nor a restart or reload sends it again. While the shared
 *   store can't answer, the claim waits for it (within the retries): a claim in one instance's
 *   own memory would not stop another's.
 * - Off the hot path: the session that tripped the brake has its reply before anything here
 *   runs (setImmediate); nothing here is awaited by a session.
 * - No mail loop: the notices go through nodemailer's SMTP transport straight to the backend
 *   (or `notifications.relay`), never through smtpgate's own listeners, so neither the limits
 *   nor the brake see them.
 * - Failures: each is logged with the session that tripped the brake; an attempt that failed is
 *   tried again after `retryDelay`, doubled each time, `retries` times, then given up (counted
 *   in smtpgate_notifications_total{result="failed"}). A notice may be lost that way (or by a
 *   stop meanwhile), never sent twice.
 */
import { randomUUID } from 'node:crypto';
import type { ConnectionOptions } from 'node:tls';
import { createTransport } from 'nodemailer';
import type { Counter } from 'prom-client';
import type { Logger } from '../logging/logger.js';
import type { NoticeClaim, SuspensionEvent } from '../limits/limits.js';
import { formatWindow } from '../limits/rate.js';
import { PLAIN_ADDRESS, type NotificationsConfig } from '../config/schema.js';
import type { HostPort } from '../parsing/units.js';
import { renderNotice, type NoticeTemplate, type NoticeValues } from './template.js';

/** One server the notices may go to (the backend's addresses in order, or the relay). */
export interface NoticeRelay {
  readonly address: HostPort;
  readonly tls: 'none' | 'starttls' | 'implicit';
  readonly tlsOptions: ConnectionOptions;
  readonly auth?: { readonly user: string; readonly password: string; readonly mechanism: 'PLAIN' | 'LOGIN' };
  /** The name smtpgate gives in its EHLO. */
  readonly heloName: string;
}

export interface SuspensionNotifierDeps {
  readonly config: Pick<NotificationsConfig, 'from' | 'admins' | 'notifyUser' | 'retries' | 'retryDelay'>;
  readonly template: () => NoticeTemplate;
  /** Tried in turn, one per attempt. */
  readonly relays: readonly NoticeRelay[];
  readonly claim: (user: string) => Promise<NoticeClaim>;
  readonly sent: Counter<'result'>;
  readonly log: Logger;
  /** smtpgate's host name: {{hostname}} and the Message-ID's right-hand side. */
  readonly hostname: string;
  readonly now?: () => number;
}

/**
 * Pure: where the user's notice goes: their first plain address (the directory's, then the
 * attributes file's; a wildcard such as *@sales.corp.example is a pattern, not a mailbox), else
 * the login when it is an address; else nowhere.
 */
export function userNoticeAddress(user: string, addresses: readonly string[]): string | undefined {
  const mailbox = (a: string) => PLAIN_ADDRESS.test(a) && !a.includes('*');
  return addresses.find(mailbox) ?? (mailbox(user) ? user : undefined);
}

const QUOTA_WORDS: Record<SuspensionEvent['limiter'], string> = {
  messages_user: 'message quota',
  messages_sender: 'per-sender message quota',
  messages_ip: 'per-address message quota',
  recipients_user: 'recipient quota',
  bytes_user: 'data volume quota',
};

/** Pure: the placeholders' values for one suspension. */
export function noticeValues(e: SuspensionEvent, hostname: string): NoticeValues {
  const window = formatWindow(e.windowMs);
  return {
    user: e.user,
    reason: `${e.quotaHits} quota hit${e.quotaHits === 1 ? '' : 's'} within ${window} (the last: the ${QUOTA_WORDS[e.limiter]})`,
    since: new Date(e.since * 1000).toISOString(),
    until: e.suspendForMs === null ? 'until an administrator clears it' : new Date(e.since * 1000 + e.suspendForMs).toISOString(),
    client: e.ip,
    count: String(e.quotaHits),
    window,
    session: e.session,
    hostname,
  };
}

export class SuspensionNotifier {
  readonly #deps: SuspensionNotifierDeps;
  readonly #now: () => number;
  readonly #stop = new AbortController();
  readonly #running = new Set<Promise<void>>();

  constructor(deps: SuspensionNotifierDeps) {
    this.#deps = deps;
    this.#now = deps.now ?? Date.now;
  }

  /** Limits.onSuspended's listener: returns at once; the notice goes out after the session's reply. */
  suspended(e: SuspensionEvent): void {
    if (this.#stop.signal.aborted) return;
    setImmediate(() => {
      const run = this.#notify(e).catch((err: unknown) => this.#deps.log.error({ session: e.session, user: e.user, err }, 'suspension notice: internal error'));
      this.#running.add(run);
      void run.finally(() => this.#running.delete(run));
    });
  }

  /** Notices in flight (tests). */
  async idle(): Promise<void> {
    while (this.#running.size > 0) await Promise.all(this.#running);
  }

  /** Stops waiting for retries; a notice not yet sent is dropped (never sent twice). */
  stop(): void {
    this.#stop.abort();
  }

  async #notify(e: SuspensionEvent): Promise<void> {
    const { config, log } = this.#deps;
    const at = { session: e.session, user: e.user };
    const claim = await this.#claim(e);
    if (claim !== 'claimed') {
      if (claim === 'lifted') log.info(at, 'suspension notice not sent: the suspension was lifted first');
      else if (claim === 'taken') log.info(at, 'suspension notice already claimed for this suspension: not sent again');
      return;
    }
    const rendered = renderNotice(this.#deps.template(), noticeValues(e, this.#deps.hostname));
    const userAddress = config.notifyUser ? userNoticeAddress(e.user, e.addresses) : undefined;
    if (config.notifyUser && !userAddress) log.info(at, 'suspension notice: the user has no address (attributes, directory, or a login that is one): only the admins are told');
    const messages = [
      ...(userAddress ? [{ kind: 'user' as const, to: [userAddress] }] : []),
      ...(config.admins.length > 0 ? [{ kind: 'admins' as const, to: config.admins }] : []),
    ];
    await Promise.all(messages.map((m) => this.#deliver(e, m.kind, m.to, rendered)));
  }

  /** The claim, asked again (within the retries) while the shared store can't answer. */
  async #claim(e: SuspensionEvent): Promise<NoticeClaim> {
    const { retries, retryDelay } = this.#deps.config;
    for (let attempt = 0; ; attempt++) {
      const claim = await this.#deps.claim(e.user).catch(() => 'unavailable' as const);
      if (claim !== 'unavailable') return claim;
      if (attempt >= retries || !(await this.#sleep(retryDelay * 2 ** attempt))) {
        this.#deps.sent.inc({ result: 'failed' });
        this.#deps.log.error({ session: e.session, user: e.user }, 'suspension notice not sent: the limits store could not be asked who sends it');
        return 'unavailable';
      }
    }
  }

  async #deliver(e: SuspensionEvent, kind: 'user' | 'admins', to: readonly string[], notice: { subject: string; text: string }): Promise<void> {
    const { config, relays, log, sent } = this.#deps;
    // One Message-ID for every attempt: a relay that took a message but lost the reply (a
    // retry then sends it again) shows the copies as one message to deduplicating stores.
    const messageId = `<smtpgate.suspension.${randomUUID()}@${this.#deps.hostname}>`;
    for (let attempt = 0; ; attempt++) {
      const relay = relays[attempt % relays.length]!;
      const where = `${relay.address.host}:${relay.address.port}`;
      try {
        const info = await this.#send(relay, { to, messageId, ...notice });
        sent.inc({ result: 'sent' });
        log.info({ session: e.session, user: e.user, notice: kind, to, relay: where, messageId, reply: info.response }, 'suspension notice sent');
        return;
      } catch (err) {
        const last = attempt >= config.retries;
        const detail = (err as Error).message;
        sent.inc({ result: last ? 'failed' : 'retried' });
        if (last || this.#stop.signal.aborted) {
          log.error({ session: e.session, user: e.user, notice: kind, to, relay: where, attempts: attempt + 1, err: detail }, 'suspension notice failed: given up');
          return;
        }
        const delay = config.retryDelay * 2 ** attempt;
        log.warn({ session: e.session, user: e.user, notice: kind, to, relay: where, attempt: attempt + 1, retryInSeconds: delay / 1000, err: detail }, 'suspension notice failed: will try again');
        if (!(await this.#sleep(delay))) return;
      }
    }
  }

  #send(relay: NoticeRelay, m: { to: readonly string[]; messageId: string; subject: string; text: string }) {
    const { from } = this.#deps.config;
    const transport = createTransport({
      host: relay.address.host,
      port: relay.address.port,
      secure: relay.tls === 'implicit',
      requireTLS: relay.tls === 'starttls',
      // As on the relayed mail's leg: tls none means no STARTTLS, not an opportunistic one.
      ignoreTLS: relay.tls === 'none',
      tls: relay.tlsOptions,
      name: relay.heloName,
      ...(relay.auth ? { auth: { user: relay.auth.user, pass: relay.auth.password, method: relay.auth.mechanism } } : {}),
      connectionTimeout: 10_000,
      greetingTimeout: 30_000,
      socketTimeout: 60_000,
      logger: false,
    });
    return transport
      .sendMail({
        from: { name: '', address: from },
        to: m.to.map((address) => ({ name: '', address })),
        // The envelope is given, not derived from headers: exactly these recipients.
        envelope: { from, to: [...m.to] },
        subject: m.subject,
        text: m.text,
        date: new Date(this.#now()),
        messageId: m.messageId,
        // RFC 3834 §5: no auto-reply (vacation, out-of-office) answers a notice; Exchange's own spelling too.
        headers: { 'Auto-Submitted': 'auto-generated', 'X-Auto-Response-Suppress': 'All' },
        disableFileAccess: true,
        disableUrlAccess: true,
      })
      .finally(() => transport.close());
  }

  /** Resolves true after `ms`, false at once on stop. */
  #sleep(ms: number): Promise<boolean> {
    const signal = this.#stop.signal;
    if (signal.aborted) return Promise.resolve(false);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        resolve(true);
      }, ms);
      timer.unref();
      const onAbort = () => {
        clearTimeout(timer);
        resolve(false);
      };
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}
