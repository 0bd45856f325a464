/**
 * What a limits config can make the limits do, worked out once per config (at start and at
 * every reload, Limits.reconfigure) instead of at every connection. Pure.
 *
 * A limit that is off by default can still be switched on for some clients by an override, so
 * a limit counts as possible when the config sets it or any override does ("off" in an
 * override only lifts it). An authenticated client's MAIL and RCPT always need the store (its
 * account may be suspended), so only a client without a user can skip them; such a client's RCPT
 * meets no limit but recipients per message (Limits.recipientCap), which needs no store.
 */
import type { LimitsConfig, OverridableKey } from './config.js';

export interface LimitsPlan {
  /** Any connection limit (per listener, per address, new connections per address) can apply. */
  readonly connect: boolean;
  /** A MAIL from a client without a user can be counted (messages per sender, per address). */
  readonly anonymousMail: boolean;
}

export function limitsPlan(config: LimitsConfig): LimitsPlan {
  const possible = (key: OverridableKey) => config[key] !== null || config.overrides.some((o) => o[key] !== undefined && o[key] !== null);
  return Object.freeze({
    connect: config.concurrentPerListener !== null || possible('concurrentPerIp') || possible('connectionRate'),
    anonymousMail: possible('messagesPerSender') || possible('messagesPerIp'),
  });
}
