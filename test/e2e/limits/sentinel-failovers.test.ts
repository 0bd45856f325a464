/**
 * Ten Sentinel failovers in a row, under load, in every limits.onStoreFailure mode (issue 14
 * item 11: with `deny`, a failover could leave every instance without its store for good).
 *
 * One master, one replica, three sentinels (quorum 2) on loopback. Three `Limits`, one per
 * mode, share the group. Each round kills the master while all three keep checking limits,
 * waits for the sentinels to promote the replica, and then requires every mode to count on the
 * new master again within a bounded time. The killed master comes back as the new replica, so
 * the next round can fail over the other way.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, expect, test } from 'vitest';
import type { StoreFailureMode } from '../../../src/limits/config.js';
import { describeWith } from '../../helpers/programs.js';
import { limitsHarness, slowLink, startRedisServer, startSentinel, until, type LimitsHarness, type RedisProcess, type SlowLink } from '../../helpers/redis.js';

const ROUNDS = 10;
const MODES: StoreFailureMode[] = ['deny', 'memory', 'allow'];
/** Bound for one failover, from the kill to every mode counting on the new master. */
const RECOVERY_MS = 20_000;
/**
 * smtpgate reaches the sentinels over a slow link (each reply held this long), as across
 * zones: asking a sentinel for the master then takes long enough that the sentinels'
 * +switch-master announcement reliably lands while a reconnect is asking. That moment used to
 * end the ioredis client for good ("Connection is closed.", status "end").
 */
const SENTINEL_LINK_DELAY_MS = 200;

describeWith(['redis-server'], 'limits through repeated Redis Sentinel failovers', () => {
  const procs = new Set<RedisProcess>();
  const clients: Redis[] = [];
  const harnesses: LimitsHarness[] = [];
  const links: SlowLink[] = [];
  let dir: string | undefined;

  afterAll(async () => {
    await Promise.all(harnesses.map((h) => h.close()));
    await Promise.all(links.map((l) => l.close()));
    for (const c of clients) c.disconnect();
    await Promise.all([...procs].map((p) => p.kill()));
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  function direct(port: number): Redis {
    const c = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: 1, retryStrategy: () => null });
    c.on('error', () => {});
    clients.push(c);
    return c;
  }

  /** SENTINEL REPLICAS answers flat [k, v, k, v, ...] lists. */
  function fields(raw: unknown): Record<string, string> {
    const list = raw as string[];
    const out: Record<string, string> = {};
    for (let i = 0; i + 1 < list.length; i += 2) out[list[i]!] = list[i + 1]!;
    return out;
  }

  test(`every onStoreFailure mode counts on the new master after each of ${ROUNDS} failovers in a row`, async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-failovers-'));
    await mkdir(path.join(dir, 'sentinels'));
    const dataDir = async (port: number) => {
      const d = path.join(dir!, `redis-${port}`);
      await mkdir(d, { recursive: true });
      return d;
    };

    let master = await startRedisServer({ dir: await dataDir(0) });
    procs.add(master);
    let replica = await startRedisServer({ dir: await dataDir(1), args: ['--replicaof', '127.0.0.1', String(master.port)] });
    procs.add(replica);
    const sentinels: RedisProcess[] = [];
    for (let i = 0; i < 3; i++) {
      const s = await startSentinel({ dir: path.join(dir, 'sentinels'), masterPort: master.port, name: 'm', quorum: 2, downAfterMs: 500, failoverTimeoutMs: 2000 });
      sentinels.push(s);
      procs.add(s);
    }
    const sentinelClients = sentinels.map((s) => direct(s.port));
    for (const s of sentinels) links.push(await slowLink(s.port, SENTINEL_LINK_DELAY_MS));

    /** Every sentinel agrees on the master, knows the other two, and sees the replica healthy and in sync. */
    const groupSettled = async (masterPort: number, replicaPort: number): Promise<boolean> => {
      for (const c of sentinelClients) {
        const [, port] = (await c.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', 'm')) as [string, string];
        if (Number(port) !== masterPort) return false;
        const peers = (await c.call('SENTINEL', 'SENTINELS', 'm')) as unknown[];
        if (peers.length < 2) return false;
        const replicas = ((await c.call('SENTINEL', 'REPLICAS', 'm')) as unknown[]).map(fields);
        const r = replicas.find((x) => Number(x.port) === replicaPort);
        if (!r || r.flags !== 'slave' || r['master-link-status'] !== 'ok') return false;
      }
      return true;
    };

    for (const mode of MODES) {
      const h = limitsHarness(`
store:
  kind: redis
  sentinels: [${links.map((l) => `"127.0.0.1:${l.port}"`).join(', ')}]
  name: m
  keyPrefix: failovers-${mode}
  commandTimeout: 800ms
onStoreFailure: ${mode}
messagesPerUser: 100000/1h
`);
      harnesses.push(h);
      expect(await h.limits.start(5000), `${mode}: store reachable at start`).toBe(true);
    }
    const mail = (h: LimitsHarness, user: string) =>
      h.limits.mailFrom({ session: `s-${user}`, ip: '192.0.2.1', listener: 'submission', user, sender: `${user}@example.com` });

    for (let round = 1; round <= ROUNDS; round++) {
      await until(`round ${round}: the sentinels to settle on master ${master.port} with replica ${replica.port}`, () => groupSettled(master.port, replica.port), 30_000, 100);

      // Load: every mode keeps checking limits while the master dies and the replica is promoted.
      let loading = true;
      const load = harnesses.map(async (h) => {
        while (loading) {
          await mail(h, 'load');
          await delay(20);
        }
      });

      const killedPort = master.port;
      await master.kill();
      procs.delete(master);
      const promoted = replica;

      try {
        await until(
          `round ${round}: the sentinels to promote ${promoted.port}`,
          async () => {
            const [, port] = (await sentinelClients[0]!.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', 'm')) as [string, string];
            return Number(port) === promoted.port;
          },
          RECOVERY_MS,
          50,
        );
        // (The promotion closes the connections the replica had, so a fresh one.)
        const promotedClient = direct(promoted.port);
        await Promise.all(
          harnesses.map((h, i) => {
            const mode = MODES[i]!;
            const user = `round${round}`;
            return until(
              `round ${round}, onStoreFailure ${mode}: limits counting on the new master ${promoted.port}`,
              async () => h.limits.storeUp && (await mail(h, user)) === undefined && (await promotedClient.get(`failovers-${mode}:messages_user:c:${user}`)) !== null,
              RECOVERY_MS,
              100,
            );
          }),
        );
      } finally {
        loading = false;
        await Promise.all(load);
      }

      // The killed master returns, on its old port, as the new master's replica.
      master = promoted;
      replica = await startRedisServer({ port: killedPort, dir: await dataDir(killedPort), args: ['--replicaof', '127.0.0.1', String(promoted.port)] });
      procs.add(replica);
    }

    // Every outage was seen and every one ended: one "unavailable" and one "reachable again" line per round, per mode.
    for (const [i, h] of harnesses.entries()) {
      expect(h.logged(/limiter store reachable again/).length, `${MODES[i]}: recoveries logged`).toBe(h.logged(/limiter store unavailable/).length);
    }
  }, 240_000);
});
