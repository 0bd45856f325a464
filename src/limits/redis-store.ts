/**
 * The shared store: Redis through ioredis, as one server (url), Sentinel (sentinels + name)
 * or Cluster (seed nodes). Every instance of smtpgate counts in the same keys.
 *
 * ioredis is configured to fail fast, because with its defaults a command waits about a
 * minute while Redis is down and that would stall the SMTP session: no offline queue, one
 * retry, a command timeout of a few hundred ms, and `rejectIfRedisNotReady` on every limiter.
 *
 * Health: the backend is `usable` while the connection is ready and no command has failed
 * since. After a failure (a timeout on a connection that still looks open, say) it stops
 * sending limiter commands and PINGs every half second; the first answer, or a fresh "ready",
 * makes it usable again. So only the first commands after an outage pay the timeout.
 *
 * The client never stays given up. ioredis ends a client for good (status "end", no more
 * reconnects) when a reconnect is interrupted while it asks a sentinel for the master, and
 * the +switch-master announcement of a failover does exactly that: the failover detector of
 * the connection that just died is still subscribed and cancels the reconnect in flight
 * (ioredis 6.0.0, SentinelConnector.connect rejects "Connection is closed."). With a slow
 * sentinel link that hit most failovers and left every instance without its store until
 * restarted (issue 14, item 11). So an "end" that smtpgate did not ask for starts the client
 * again, with the same backoff as any reconnect.
 */
import { readFileSync } from 'node:fs';
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { RateLimiterRedis, type RateLimiterAbstract } from 'rate-limiter-flexible';
import type { StoreConfig } from './config.js';
import { limiterKeyPrefix, NO_LIBRARY_LIMIT, parseStoredKey, type StoreBackend, type StoredCount } from './limiter-store.js';
import type { LimiterName } from './replies.js';

export type RedisClient = Redis | Cluster;

/** Reconnect quickly (capped at 1 s) so limiting resumes soon after Redis returns. */
function reconnectDelay(times: number): number {
  return Math.min(50 * 2 ** Math.min(times, 5), 1000);
}

/**
 * The password in `limits.store.passwordFile` or `.sentinelPasswordFile`: its one line, without
 * the final newline. Throws an Error naming the problem; `smtpgate check` and `run` report it
 * against the field.
 */
export function readRedisPasswordFile(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read the Redis password file: ${(err as Error).message}`);
  }
  const password = text.replace(/\r?\n$/, '');
  // A second line would be sent as part of the password and fail AUTH with a misleading error.
  if (password === '' || /[\r\n\0]/.test(password)) throw new Error('the Redis password file must hold the password on one line (no CR, LF or NUL inside, not empty)');
  return password;
}

export function createRedisClient(cfg: StoreConfig): RedisClient {
  const password = cfg.passwordFile !== undefined ? readRedisPasswordFile(cfg.passwordFile) : cfg.password;
  const sentinelPassword = cfg.sentinelPasswordFile !== undefined ? readRedisPasswordFile(cfg.sentinelPasswordFile) : cfg.sentinelPassword;
  const common: RedisOptions = {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: cfg.commandTimeout,
    connectTimeout: 1000,
    retryStrategy: reconnectDelay,
    ...(cfg.username !== undefined ? { username: cfg.username } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(cfg.db !== undefined ? { db: cfg.db } : {}),
    ...(cfg.tls ? { tls: {} } : {}),
  };
  if (cfg.cluster) {
    const { retryStrategy: _r, enableOfflineQueue: _q, ...redisOptions } = common;
    const options: ClusterOptions = {
      enableOfflineQueue: false,
      clusterRetryStrategy: reconnectDelay,
      redisOptions,
    };
    return new Cluster(
      cfg.cluster.map((n) => ({ host: n.host, port: n.port })),
      options,
    );
  }
  if (cfg.sentinels) {
    return new Redis({
      ...common,
      sentinels: cfg.sentinels.map((n) => ({ host: n.host, port: n.port })),
      name: cfg.name,
      ...(sentinelPassword !== undefined ? { sentinelPassword } : {}),
      sentinelCommandTimeout: cfg.commandTimeout,
      sentinelRetryStrategy: reconnectDelay,
      // Subscribes to +switch-master, so a failover is followed at once rather than at the next error.
      failoverDetector: true,
      ...(cfg.tls ? { enableTLSForSentinelMode: true } : {}),
    });
  }
  if (!cfg.url) throw new Error('limits.store: kind redis needs url, sentinels or cluster');
  return new Redis(cfg.url, common);
}

/** Redis glob: escape the characters SCAN MATCH treats specially. */
function globEscape(s: string): string {
  return s.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

const PROBE_INTERVAL_MS = 500;

const MARKER_SCRIPT = "local v = redis.call('GET', KEYS[1]) if v then return v end redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1]";

/** KEYS[1] the counter, ARGV[1] the points: taken off only while the counter exists. */
const GIVE_BACK_SCRIPT = "if redis.call('exists', KEYS[1]) == 1 then redis.call('decrby', KEYS[1], ARGV[1]) end return 0";

export class RedisBackend implements StoreBackend {
  readonly kind = 'redis' as const;
  readonly client: RedisClient;
  #failed = false;
  #probe: NodeJS.Timeout | undefined;
  #closing = false;
  #restart: NodeJS.Timeout | undefined;
  #restarts = 0;
  #lastUp: boolean | undefined;
  readonly #listeners: ((up: boolean, detail: string) => void)[] = [];

  constructor(client: RedisClient) {
    this.client = client;
    // Without an error listener ioredis prints every failed reconnect; health is reported through onHealthChange.
    client.on('error', () => {});
    client.on('ready', () => {
      this.#restarts = 0;
      this.#failed = false;
      this.#stopProbe();
      this.#emit(true, 'connected');
    });
    client.on('close', () => {
      if (!this.#closing) this.#emit(false, 'connection closed');
    });
    client.on('end', () => this.#restartEnded());
  }

  get usable(): boolean {
    return !this.#failed && this.client.status === 'ready';
  }

  createLimiter(keyPrefix: string): RateLimiterRedis {
    return new RateLimiterRedis({ storeClient: this.client, points: NO_LIBRARY_LIMIT, duration: 0, keyPrefix, rejectIfRedisNotReady: true });
  }

  /** PEXPIRE is one command: it changes the expiry and leaves the count as other instances left it. */
  async expire(limiter: RateLimiterAbstract, key: string, ms: number): Promise<boolean> {
    return (await this.client.pexpire(limiter.getKey(key), ms)) === 1;
  }

  /** One script: DECRBY keeps the counter's expiry, and a counter that is gone is not created. */
  async giveBack(limiter: RateLimiterAbstract, key: string, points: number): Promise<void> {
    await this.client.eval(GIVE_BACK_SCRIPT, 1, limiter.getKey(key), points);
  }

  reportFailure(err: Error): void {
    if (this.#closing) return;
    this.#failed = true;
    this.#emit(false, err.message);
    if (!this.#probe) {
      this.#probe = setInterval(() => void this.#check(), PROBE_INTERVAL_MS);
      this.#probe.unref();
    }
  }

  onHealthChange(listener: (up: boolean, detail: string) => void): void {
    this.#listeners.push(listener);
  }

  ready(timeoutMs: number): Promise<boolean> {
    if (this.usable) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.client.off('ready', onReady);
        resolve(false);
      }, timeoutMs);
      const onReady = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.client.once('ready', onReady);
    });
  }

  async entries(keyPrefix: string, name: LimiterName): Promise<StoredCount[]> {
    const pattern = `${globEscape(`${limiterKeyPrefix(keyPrefix, name)}:`)}*`;
    // A Cluster spreads keys over its masters: scan each, and read each key on the node that holds it.
    const nodes: Redis[] = this.client instanceof Cluster ? this.client.nodes('master') : [this.client];
    const out: StoredCount[] = [];
    for (const node of nodes) {
      let cursor = '0';
      do {
        const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 500);
        cursor = next;
        if (keys.length === 0) continue;
        const pipeline = node.pipeline();
        for (const k of keys) pipeline.get(k).pttl(k);
        const replies = (await pipeline.exec()) ?? [];
        keys.forEach((k, i) => {
          const value = replies[2 * i]?.[1];
          const pttl = replies[2 * i + 1]?.[1];
          const key = parseStoredKey(keyPrefix, name, k);
          if (key === undefined || value === null || value === undefined || pttl === -2) return;
          out.push({ name, key, value: Number(value), msBeforeNext: typeof pttl === 'number' ? pttl : -1 });
        });
      } while (cursor !== '0');
    }
    return out;
  }

  async remove(keyPrefix: string, entries: readonly Pick<StoredCount, 'name' | 'key'>[]): Promise<number> {
    let removed = 0;
    // One DEL per key: keys of different limiters may sit in different Cluster slots.
    for (const e of entries) removed += await this.client.del(`${limiterKeyPrefix(keyPrefix, e.name)}:${e.key}`);
    return removed;
  }

  async marker(keyPrefix: string, candidate: string): Promise<string> {
    // One atomic step (one key, so Cluster-safe): read the id, or place the candidate.
    const id = await this.client.eval(MARKER_SCRIPT, 1, `${keyPrefix}:marker`, candidate);
    return String(id);
  }

  async setNote(keyPrefix: string, table: string, field: string, value: string): Promise<void> {
    await this.client.hset(`${keyPrefix}:${table}`, field, value);
  }

  async notes(keyPrefix: string, table: string): Promise<Map<string, string>> {
    return new Map(Object.entries(await this.client.hgetall(`${keyPrefix}:${table}`)));
  }

  async removeNotes(keyPrefix: string, table: string, fields: readonly string[]): Promise<number> {
    return fields.length ? this.client.hdel(`${keyPrefix}:${table}`, ...fields) : 0;
  }

  async close(): Promise<void> {
    this.#closing = true;
    this.#stopProbe();
    clearTimeout(this.#restart);
    try {
      await this.client.quit();
    } catch {
      this.client.disconnect();
    }
  }

  async #check(): Promise<void> {
    if (this.client.status !== 'ready') return; // the 'ready' event will end the outage
    try {
      await this.client.ping();
      this.#failed = false;
      this.#stopProbe();
      this.#emit(true, 'answering again');
    } catch {
      /* still down; try again at the next tick */
    }
  }

  /** ioredis gave up on its own: start it again (see the header), unless smtpgate is closing it. */
  #restartEnded(): void {
    if (this.#closing || this.#restart) return;
    this.#emit(false, 'the Redis client stopped reconnecting; starting it again');
    this.#restart = setTimeout(() => {
      this.#restart = undefined;
      if (this.#closing) return;
      // A failed start ends the client again, which lands back here with a longer delay.
      this.client.connect().catch(() => {});
    }, reconnectDelay(++this.#restarts));
    this.#restart.unref();
  }

  #stopProbe(): void {
    if (this.#probe) clearInterval(this.#probe);
    this.#probe = undefined;
  }

  /** Only changes are passed on: the caller logs once per outage, not once per message. */
  #emit(up: boolean, detail: string): void {
    if (this.#lastUp === up) return;
    this.#lastUp = up;
    for (const l of this.#listeners) l(up, detail);
  }
}
