/**
 * Redis Sentinel failover under load: one master, one replica, three sentinels (quorum 2), all
 * on loopback. The master is killed; limits keep answering within the bound (insurance memory)
 * while the sentinels promote the replica, then count against the new master — and the counts
 * made before the failover are still there (they were replicated before the kill).
 *
 * About 5–8 s: down-after-milliseconds is 1 s, and sentinels find each other through hello
 * messages every 2 s.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, expect, test } from 'vitest';
import { describeWith } from '../../helpers/programs.js';
import { limitsHarness, startRedisServer, startSentinel, until, type LimitsHarness, type RedisProcess } from '../../helpers/redis.js';

describeWith(['redis-server'], 'limits through a Redis Sentinel failover', () => {
  const procs: RedisProcess[] = [];
  const clients: Redis[] = [];
  let h: LimitsHarness | undefined;
  let dir: string | undefined;

  afterAll(async () => {
    await h?.close();
    for (const c of clients) c.disconnect();
    await Promise.all(procs.map((p) => p.kill()));
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  function direct(port: number): Redis {
    const c = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: 1, retryStrategy: () => null, lazyConnect: false });
    c.on('error', () => {});
    clients.push(c);
    return c;
  }

  test('limits answer through the failover and then count on the new master, keeping the replicated counts', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-sentinel-'));
    for (const d of ['master', 'replica', 'sentinels']) await mkdir(path.join(dir, d));

    const master = await startRedisServer({ dir: path.join(dir, 'master') });
    procs.push(master);
    const replica = await startRedisServer({ dir: path.join(dir, 'replica'), args: ['--replicaof', '127.0.0.1', String(master.port)] });
    procs.push(replica);
    const replicaClient = direct(replica.port);
    await until('the replica to sync', async () => /master_link_status:up/.test(await replicaClient.info('replication')));

    const sentinels: RedisProcess[] = [];
    for (let i = 0; i < 3; i++) sentinels.push(await startSentinel({ dir: path.join(dir, 'sentinels'), masterPort: master.port, name: 'm', quorum: 2 }));
    procs.push(...sentinels);
    // A failover needs every sentinel to know the replica and a majority of the others.
    const sentinelClients = sentinels.map((s) => direct(s.port));
    await until(
      'the sentinels to discover the replica and each other',
      async () => {
        for (const c of sentinelClients) {
          const replicas = (await c.call('SENTINEL', 'REPLICAS', 'm')) as unknown[];
          const peers = (await c.call('SENTINEL', 'SENTINELS', 'm')) as unknown[];
          if (replicas.length < 1 || peers.length < 2) return false;
        }
        return true;
      },
      15_000,
      100,
    );

    h = limitsHarness(`
store:
  kind: redis
  sentinels: [${sentinels.map((s) => `"127.0.0.1:${s.port}"`).join(', ')}]
  name: m
  keyPrefix: failover
onStoreFailure: memory
messagesPerUser: 5/1h
`);
    expect(await h.limits.start(3000)).toBe(true);
    const mail = (user: string) => h!.limits.mailFrom({ session: `f-${user}`, ip: '192.0.2.1', listener: 'submission', user, sender: `${user}@example.com` });

    for (let i = 0; i < 3; i++) expect(await mail('alice')).toBeUndefined();
    // The counts are on the replica before the master dies ("within replication lag" made exact).
    const masterClient = direct(master.port);
    expect(await masterClient.call('WAIT', '1', '2000')).toBe(1);

    await master.kill();
    const recovered = h.waitForLog(/limiter store reachable again/, 20_000);
    let done = false;
    void recovered.then(() => (done = true), () => (done = true));
    let calls = 0;
    // Traffic through the failover (as user "bob", so alice's count stays exactly as Redis has it).
    while (!done) {
      const started = performance.now();
      await mail('bob');
      const ms = performance.now() - started;
      expect(ms, `a limit check took ${ms.toFixed(0)}ms during the failover`).toBeLessThan(1000);
      calls++;
      await delay(50);
    }
    await recovered;
    expect(calls).toBeGreaterThan(5);
    expect(h.logged(/limiter store unavailable/)).toHaveLength(1);

    const [, port] = (await sentinelClients[0]!.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', 'm')) as [string, string];
    expect(Number(port)).toBe(replica.port);
    // 3 counted before the failover survive: 2 more, then the quota.
    expect(await mail('alice')).toBeUndefined();
    expect(await mail('alice')).toBeUndefined();
    expect(await mail('alice')).toMatchObject({ code: 451, enhanced: '4.7.1' });
    // (The promotion closed the old client connections to the replica, hence a new one.)
    expect(await direct(replica.port).get('failover:messages_user:c:alice')).toBe('6');
  }, 45_000);
});
