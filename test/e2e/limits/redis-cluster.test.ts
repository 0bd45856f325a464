/**
 * Limits on a Redis Cluster (three masters on loopback): each limiter's Lua script touches one
 * key, so counting is exact whichever node holds the key; the admin listing scans every master.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, afterEach, expect, test } from 'vitest';
import { describeWith } from '../../helpers/programs.js';
import { limitsHarness, startRedisServer, until, type LimitsHarness, type RedisProcess } from '../../helpers/redis.js';

const run = promisify(execFile);

describeWith(['redis-server', 'redis-cli'], 'limits on a Redis Cluster', () => {
  const nodes: RedisProcess[] = [];
  const open: LimitsHarness[] = [];
  let dir: string | undefined;

  afterEach(async () => {
    await Promise.all(open.splice(0).map((h) => h.close()));
  });

  afterAll(async () => {
    await Promise.all(nodes.map((n) => n.kill()));
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function cluster(): Promise<string> {
    if (nodes.length) return nodes.map((n) => `"127.0.0.1:${n.port}"`).join(', ');
    dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-cluster-'));
    for (let i = 0; i < 3; i++) {
      nodes.push(await startRedisServer({ dir, args: ['--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${i}.conf`] }));
    }
    await run('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes']);
    for (const n of nodes) {
      const c = new Redis(n.port, '127.0.0.1', { maxRetriesPerRequest: 1 });
      await until('the cluster to be ok', async () => /cluster_state:ok/.test(await c.cluster('INFO')));
      c.disconnect();
    }
    return nodes.map((n) => `"127.0.0.1:${n.port}"`).join(', ');
  }

  async function instance(seeds: string, yaml: string): Promise<LimitsHarness> {
    const h = limitsHarness(`store: { kind: redis, cluster: [${seeds}], keyPrefix: cl }\nconnectionRate: off\n${yaml}`);
    open.push(h);
    expect(await h.limits.start(5000)).toBe(true);
    return h;
  }

  test('two instances admit exactly N in total, and the listing scans every master', async () => {
    const seeds = await cluster();
    const a = await instance(seeds, 'messagesPerUser: 5/1h');
    const b = await instance(seeds, 'messagesPerUser: 5/1h');
    const users = Array.from({ length: 12 }, (_, i) => `user${i}`);
    for (const user of users) {
      const tries = [a, b].flatMap((h) => Array.from({ length: 4 }, (_, i) => h.limits.mailFrom({ session: `${user}-${i}`, ip: '192.0.2.1', listener: 'l', user, sender: `${user}@example.com` })));
      expect((await Promise.all(tries)).filter((r) => r === undefined), user).toHaveLength(5);
    }
    const state = await a.limits.listState({ top: 100 });
    expect(state.topSenders.map((t) => t.user).sort()).toEqual([...users].sort());
    expect(state.topSenders.every((t) => t.messages >= 5)).toBe(true);

    // The keys really are spread: more than one master holds some.
    const holders = await Promise.all(
      nodes.map(async (n) => {
        const c = new Redis(n.port, '127.0.0.1');
        const [, keys] = await c.scan('0', 'MATCH', 'cl:messages_user:*', 'COUNT', 1000);
        c.disconnect();
        return keys.length;
      }),
    );
    expect(holders.filter((k) => k > 0).length).toBeGreaterThan(1);

    const cleared = await b.limits.clear('user3');
    expect(cleared.removed).toContainEqual({ limiter: 'messages_user', key: 'user3' });
    expect(await a.limits.mailFrom({ session: 'x', ip: '192.0.2.1', listener: 'l', user: 'user3', sender: 'u@example.com' })).toBeUndefined();
  });
});
