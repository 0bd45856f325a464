/**
 * The last use of each app password (CredentialUsage), kept in the limits store beside the
 * counters: the same behaviour on the memory store (through a real LimiterStore) and on the
 * shared Redis, including the throttle that spares a printer's every sign-in a store write.
 * Then the table over the admin address, as `smtpgate credential list` reads it with the
 * memory store: a real HTTP server and the CLI's client.
 */
import http, { type Server } from 'node:http';
import { Registry } from 'prom-client';
import { afterAll, describe, expect, onTestFinished, test } from 'vitest';
import { credentialUsageAdminRoute, fetchCredentialUsage } from '../../src/auth/admin.js';
import { CREDENTIAL_USE_TABLE, CredentialUsage, REFRESH_MS, usageField, type CredentialUse } from '../../src/auth/credential-usage.js';
import { generateSecret, hashSecret } from '../../src/auth/credentials-file.js';
import { LimiterStore, MemoryBackend, StoreUnavailableError, type StoreBackend } from '../../src/limits/limiter-store.js';
import { limitsConfigSchema } from '../../src/limits/config.js';
import { createRedisClient, RedisBackend } from '../../src/limits/redis-store.js';
import { boundPort, startAdminServer } from '../../src/metrics/http-server.js';
import { describeWith } from '../helpers/programs.js';
import { dropPrefix, SHARED_REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { deadPort } from '../helpers/sessions.js';

const PRINTER = { user: 'alice@corp.example', label: 'printer', hash: hashSecret(generateSecret()) };
const PHONE = { user: 'alice@corp.example', label: 'phone', hash: hashSecret(generateSecret()) };
const T0 = new Date('2026-12-07T10:00:00.000Z');
const later = (ms: number) => new Date(T0.getTime() + ms);

/** A store over `backend`, closed when the test ends. */
function storeOn(backend: StoreBackend, keyPrefix: string): LimiterStore {
  const store = new LimiterStore({ backend, onFailure: 'deny', keyPrefix });
  onTestFinished(() => store.close());
  return store;
}

function behaviours(make: () => Promise<LimiterStore>): void {
  test('a recorded use is listed under the credential\'s field, with its time and client', async () => {
    const usage = new CredentialUsage(await make());
    await usage.record(PRINTER, '10.1.3.7', T0);
    await usage.record(PHONE, '2001:db8::7', later(5));
    expect(await usage.list()).toEqual(
      new Map([
        [usageField(PRINTER), { at: T0.toISOString(), client: '10.1.3.7' }],
        [usageField(PHONE), { at: later(5).toISOString(), client: '2001:db8::7' }],
      ]),
    );
  });

  test('nothing recorded: an empty list', async () => {
    expect(await new CredentialUsage(await make()).list()).toEqual(new Map());
  });

  test('the same client again within a minute is not written again; at a minute it is', async () => {
    const usage = new CredentialUsage(await make());
    await usage.record(PRINTER, '10.1.3.7', T0);
    await usage.record(PRINTER, '10.1.3.7', later(REFRESH_MS - 1));
    expect((await usage.list()).get(usageField(PRINTER))).toEqual({ at: T0.toISOString(), client: '10.1.3.7' });
    await usage.record(PRINTER, '10.1.3.7', later(REFRESH_MS));
    expect((await usage.list()).get(usageField(PRINTER))).toEqual({ at: later(REFRESH_MS).toISOString(), client: '10.1.3.7' });
  });

  test('another client within the minute is written at once', async () => {
    const usage = new CredentialUsage(await make());
    await usage.record(PRINTER, '10.1.3.7', T0);
    await usage.record(PRINTER, '10.1.3.8', later(1_000));
    expect((await usage.list()).get(usageField(PRINTER))).toEqual({ at: later(1_000).toISOString(), client: '10.1.3.8' });
  });

  test('the throttle is per credential: another credential of the same user is written', async () => {
    const usage = new CredentialUsage(await make());
    await usage.record(PRINTER, '10.1.3.7', T0);
    await usage.record(PHONE, '10.1.3.7', later(1));
    expect([...(await usage.list()).keys()].sort()).toEqual([usageField(PHONE), usageField(PRINTER)].sort());
  });

  test('forget removes only that credential\'s use, and its next use is written at once', async () => {
    const usage = new CredentialUsage(await make());
    await usage.record(PRINTER, '10.1.3.7', T0);
    await usage.record(PHONE, '10.1.3.9', T0);
    await usage.forget(PRINTER);
    expect([...(await usage.list()).keys()]).toEqual([usageField(PHONE)]);
    await usage.record(PRINTER, '10.1.3.7', later(1));
    expect((await usage.list()).get(usageField(PRINTER))).toEqual({ at: later(1).toISOString(), client: '10.1.3.7' });
  });

  test('a new credential with a revoked one\'s label starts with no use (the field holds the salt)', async () => {
    const usage = new CredentialUsage(await make());
    await usage.record(PRINTER, '10.1.3.7', T0);
    const replacement = { ...PRINTER, hash: hashSecret(generateSecret()) };
    expect(usageField(replacement)).not.toBe(usageField(PRINTER));
    expect((await usage.list()).get(usageField(replacement))).toBeUndefined();
  });

  test('two writers on one store (two instances): each sees the other\'s writes', async () => {
    const store = await make();
    const a = new CredentialUsage(store);
    const b = new CredentialUsage(store);
    await a.record(PRINTER, '10.1.3.7', T0);
    await b.record(PRINTER, '10.1.3.8', later(10));
    expect((await a.list()).get(usageField(PRINTER))).toEqual({ at: later(10).toISOString(), client: '10.1.3.8' });
  });

  test('a value that is not "TIME CLIENT" is left out of the list, not misread', async () => {
    const store = await make();
    await store.setNote(CREDENTIAL_USE_TABLE, usageField(PHONE), 'garbage');
    const usage = new CredentialUsage(store);
    await usage.record(PRINTER, '10.1.3.7', T0);
    expect([...(await usage.list()).keys()]).toEqual([usageField(PRINTER)]);
  });
}

describe('memory store', () => {
  behaviours(async () => storeOn(new MemoryBackend(), 'mem'));
});

describeWith(['redis-server'], 'Redis store (the shared one on 127.0.0.1:6379)', () => {
  const prefix = uniquePrefix('credential-usage');
  let n = 0;
  afterAll(() => dropPrefix(SHARED_REDIS_URL, prefix));
  behaviours(async () => {
    const keyPrefix = `${prefix}-${++n}`;
    const config = limitsConfigSchema.parse({ store: { kind: 'redis', url: SHARED_REDIS_URL, keyPrefix } });
    const backend = new RedisBackend(createRedisClient(config.store));
    expect(await backend.ready(2000)).toBe(true);
    return storeOn(backend, keyPrefix);
  });
});

describe('a store that is down', () => {
  test('record resolves anyway (a sign-in never waits on it); list and forget throw StoreUnavailableError', async () => {
    const config = limitsConfigSchema.parse({ store: { kind: 'redis', url: `redis://127.0.0.1:${await deadPort()}`, keyPrefix: 'down' } });
    const backend = new RedisBackend(createRedisClient(config.store));
    const store = storeOn(backend, 'down');
    expect(await backend.ready(200)).toBe(false);
    const usage = new CredentialUsage(store);
    await expect(usage.record(PRINTER, '10.1.3.7', T0)).resolves.toBeUndefined();
    await expect(usage.list()).rejects.toBeInstanceOf(StoreUnavailableError);
    await expect(usage.forget(PRINTER)).rejects.toBeInstanceOf(StoreUnavailableError);
  });
});

describe('GET /auth/credentials/used over the admin address', () => {
  const TOKEN = 'a-long-enough-admin-token-0123456789';

  async function serve(list: () => Promise<Map<string, CredentialUse>>, token?: string): Promise<string> {
    const server: Server = await startAdminServer({
      host: '127.0.0.1',
      port: 0,
      registry: new Registry(),
      readiness: () => ({ ready: true, reasons: [] }),
      routes: [credentialUsageAdminRoute(list, token ? { token } : {})],
    });
    onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
    return `http://127.0.0.1:${boundPort(server)}`;
  }

  test('the client gets the table the instance holds, field for field', async () => {
    const store = storeOn(new MemoryBackend(), 'mem');
    const usage = new CredentialUsage(store);
    await usage.record(PRINTER, '10.1.3.7', T0);
    await usage.record(PHONE, '::ffff:10.1.3.9', later(1));
    const base = await serve(() => usage.list());
    expect(await fetchCredentialUsage(base)).toEqual(await usage.list());
  });

  test('the answer is {"used": {FIELD: {"at", "client"}}}', async () => {
    const base = await serve(async () => new Map([['alice printer SALT', { at: T0.toISOString(), client: '10.1.3.7' }]]));
    const res = await fetch(`${base}/auth/credentials/used`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/json');
    expect(await res.json()).toEqual({ used: { 'alice printer SALT': { at: T0.toISOString(), client: '10.1.3.7' } } });
  });

  test('with a token: refused without it (401), answered with it', async () => {
    const base = await serve(async () => new Map(), TOKEN);
    await expect(fetchCredentialUsage(base)).rejects.toThrow('GET /auth/credentials/used: 401: missing or wrong bearer token');
    await expect(fetchCredentialUsage(base, { token: 'a-wrong-token-of-enough-length-000' })).rejects.toThrow(': 401: ');
    expect(await fetchCredentialUsage(base, { token: TOKEN })).toEqual(new Map());
  });

  test('a browser page is refused (403), and so is a rebindable Host without a token', async () => {
    const base = await serve(async () => new Map());
    expect((await fetch(`${base}/auth/credentials/used`, { headers: { origin: 'https://evil.example' } })).status).toBe(403);
    // fetch won't send another Host, so a plain request.
    const rebound = await new Promise<number | undefined>((resolve, reject) => {
      const { port } = new URL(base);
      http.get({ host: '127.0.0.1', port, path: '/auth/credentials/used', headers: { host: 'rebound.example' }, setHost: false }, (res) => resolve(res.resume().statusCode)).on('error', reject);
    });
    expect(rebound).toBe(403);
  });

  test('only GET (405 otherwise); other paths are left to the next route', async () => {
    const base = await serve(async () => new Map());
    const post = await fetch(`${base}/auth/credentials/used`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(post.status).toBe(405);
    expect(await post.json()).toEqual({ error: 'use GET' });
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
  });

  test('a store that fails is a 503 with its reason, which the client reports', async () => {
    const base = await serve(() => Promise.reject(new StoreUnavailableError('the store is not reachable')));
    await expect(fetchCredentialUsage(base)).rejects.toThrow('GET /auth/credentials/used: 503: limiter store unavailable: the store is not reachable');
  });

  test('an instance without the route (404) is named as such', async () => {
    const server = await startAdminServer({ host: '127.0.0.1', port: 0, registry: new Registry(), readiness: () => ({ ready: true, reasons: [] }) });
    onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
    await expect(fetchCredentialUsage(`http://127.0.0.1:${boundPort(server)}`)).rejects.toThrow('404: this smtpgate does not serve it');
  });
});
