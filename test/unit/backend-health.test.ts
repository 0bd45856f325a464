/**
 * BackendHealth's reading of the identity command in each check's EHLO (issue 14, item 10):
 * reported on the first check and on each change only, and listed by withoutIdentity() while
 * the backend is up. The real backends (smtp-sink, Postfix) are in
 * test/e2e/relay/backend-identity-check.test.ts; here a check is a function the test controls.
 */
import { describe, expect, it } from 'vitest';
import { BackendHealth } from '../../src/relay/backend-health.js';
import { BackendPool } from '../../src/relay/backend-pool.js';
import { BackendError, type BackendConnection } from '../../src/relay/smtp-client.js';

const TIMEOUTS = { connectMs: 1000, greetingMs: 1000, commandMs: 1000, dataIdleMs: 1000, finalReplyMs: 1000 };

function setup(identityCommand: 'XCLIENT' | 'XFORWARD' | undefined) {
  const target = { name: 'mx:25', options: { host: '127.0.0.1', port: 25, tls: 'none' as const, heloName: 'gate.test', timeouts: TIMEOUTS } };
  const pool = new BackendPool([target], 'failover', 30_000);
  const backend = { up: true, caps: new Set(['XCLIENT']) };
  // What a connection is to a health check: the EHLO's capabilities, then QUIT.
  const connect = async () => {
    if (!backend.up) throw new BackendError('connect', 'connection refused');
    return { hasCapability: (name: string) => backend.caps.has(name), quit: async () => undefined } as unknown as BackendConnection;
  };
  const events: Array<[string, boolean]> = [];
  const health = new BackendHealth(pool, { onResult: () => undefined, onIdentity: (t, advertised) => events.push([t.name, advertised]) }, { identityCommand, connect });
  return { health, backend, events };
}

describe('BackendHealth identity check', () => {
  it('reports the identity command once per change, not at every check', async () => {
    const { health, backend, events } = setup('XCLIENT');
    await health.checkAll();
    await health.checkAll();
    expect(events).toEqual([['mx:25', true]]);
    backend.caps = new Set(['PIPELINING']);
    await health.checkAll();
    await health.checkAll();
    await health.checkAll();
    expect(events).toEqual([['mx:25', true], ['mx:25', false]]);
    expect(health.withoutIdentity()).toEqual(['mx:25']);
    backend.caps = new Set(['XCLIENT']);
    await health.checkAll();
    expect(events).toEqual([['mx:25', true], ['mx:25', false], ['mx:25', true]]);
    expect(health.withoutIdentity()).toEqual([]);
  });

  it('leaves a backend that is down to the up/down check, and keeps what it last saw for when it returns', async () => {
    const { health, backend, events } = setup('XFORWARD');
    await health.checkAll();
    expect(health.withoutIdentity()).toEqual(['mx:25']);
    backend.up = false;
    await health.checkAll();
    expect(health.withoutIdentity()).toEqual([]);
    backend.up = true;
    await health.checkAll();
    expect(health.withoutIdentity()).toEqual(['mx:25']);
    expect(events).toEqual([['mx:25', false]]);
  });

  it('checks nothing without an identity command (backend.identity: none)', async () => {
    const { health, backend, events } = setup(undefined);
    backend.caps = new Set();
    await health.checkAll();
    expect(events).toEqual([]);
    expect(health.withoutIdentity()).toEqual([]);
  });
});
