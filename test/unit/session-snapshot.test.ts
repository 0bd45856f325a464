/**
 * One snapshot of a session, three views of it: the limits count the same client the policy
 * judges and the backend is told about.
 */
import { describe, expect, test } from 'vitest';
import { backendIdentity, limitsView, policyView, type SessionSnapshot } from '../../src/session/snapshot.js';

const now = new Date('2026-01-02T03:04:05Z');
const anonymous: SessionSnapshot = {
  id: 'sess1',
  listener: 'submission',
  ip: '192.0.2.7',
  port: 40000,
  tls: undefined,
  trusted: false,
  helo: undefined,
  greeting: undefined,
  user: undefined,
  authMethod: undefined,
  attributes: undefined,
  recipients: [],
  now,
};
const alice: SessionSnapshot = {
  ...anonymous,
  tls: 'TLSv1.3',
  trusted: true,
  helo: 'client.example',
  greeting: 'EHLO',
  user: 'alice',
  attributes: { addresses: ['alice@corp.example'], groups: ['sales'] },
  recipients: ['bob@corp.example'],
};

describe('limitsView', () => {
  test('names the session, the address, the listener and, once authenticated, the user, groups and addresses', () => {
    expect(limitsView(anonymous)).toEqual({ session: 'sess1', ip: '192.0.2.7', listener: 'submission', user: undefined, groups: undefined, addresses: undefined });
    expect(limitsView(alice)).toEqual({ session: 'sess1', ip: '192.0.2.7', listener: 'submission', user: 'alice', groups: ['sales'], addresses: ['alice@corp.example'] });
  });
});

describe('policyView', () => {
  test('before TLS and AUTH: not authenticated, no TLS, no user', () => {
    expect(policyView(anonymous)).toEqual({ ip: '192.0.2.7', listener: 'submission', tls: undefined, authenticated: false, user: undefined, trusted: false, helo: undefined, recipients: [], now });
  });

  test('after TLS and AUTH: the TLS version, the user with their addresses and groups, the recipients so far', () => {
    expect(policyView(alice)).toEqual({
      ip: '192.0.2.7',
      listener: 'submission',
      tls: { version: 'TLSv1.3' },
      authenticated: true,
      user: { name: 'alice', groups: ['sales'], addresses: ['alice@corp.example'] },
      trusted: true,
      helo: 'client.example',
      recipients: ['bob@corp.example'],
      now,
    });
  });

  test('a user without configured addresses whose login is an address may send as that address', () => {
    expect(policyView({ ...alice, user: 'Carol@Corp.example', attributes: { addresses: [], groups: [] } }).user).toEqual({ name: 'Carol@Corp.example', groups: [], addresses: ['carol@corp.example'] });
  });
});

describe('backendIdentity', () => {
  test('HELO is protocol SMTP; EHLO, or no greeting yet, is ESMTP; the login is the authenticated user', () => {
    expect(backendIdentity({ ...alice, greeting: 'HELO' })).toEqual({ addr: '192.0.2.7', port: 40000, helo: 'client.example', proto: 'SMTP', login: 'alice' });
    expect(backendIdentity(alice).proto).toBe('ESMTP');
    expect(backendIdentity(anonymous)).toEqual({ addr: '192.0.2.7', port: 40000, helo: undefined, proto: 'ESMTP', login: undefined });
  });
});
