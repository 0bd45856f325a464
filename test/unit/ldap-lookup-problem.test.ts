/**
 * ldapLookupProblem: whether an auth.ldap section can look a user up without their password
 * (app passwords), decided from the config alone so that the config check can refuse it.
 */
import { describe, expect, test } from 'vitest';
import { authSection, ldapLookupProblem } from '../../src/config/auth-section.js';

const PEOPLE = 'ou=people,dc=example,dc=org';

function ldap(fields: Record<string, unknown>) {
  return authSection('/').parse({ backend: 'ldap', ldap: { url: 'ldaps://ldap.example.org', ...fields } }).ldap!;
}

describe('ldapLookupProblem', () => {
  test('search-then-bind can: the service account finds the entry', () => {
    expect(ldapLookupProblem(ldap({ bindDn: 'cn=smtpgate,dc=example,dc=org', bindPasswordFile: 'pw', userBase: PEOPLE }))).toBeUndefined();
  });

  test('direct bind with a service account can: it reads the entry at the template\'s DN', () => {
    expect(ldapLookupProblem(ldap({ userDnTemplate: `uid={user},${PEOPLE}`, bindDn: 'cn=smtpgate,dc=example,dc=org', bindPasswordFile: 'pw' }))).toBeUndefined();
    // RFC 4514 §3: an attribute type may be an OID.
    expect(ldapLookupProblem(ldap({ userDnTemplate: `0.9.2342.19200300.100.1.1={user},${PEOPLE}`, bindDn: 'cn=smtpgate', bindPasswordFile: 'pw' }))).toBeUndefined();
  });

  test('direct bind without a service account cannot, and the answer names the settings to add', () => {
    expect(ldapLookupProblem(ldap({ userDnTemplate: `uid={user},${PEOPLE}` }))).toMatch(/^auth\.ldap: a lookup without the user's password needs a service account.*set bindDn and bindPasswordFile/);
  });

  test('a template that is no DN (AD\'s "{user}@corp.example") cannot, even with a service account: there is no entry at it', () => {
    expect(ldapLookupProblem(ldap({ userDnTemplate: '{user}@corp.example', bindDn: 'cn=smtpgate', bindPasswordFile: 'pw' }))).toMatch(/userDnTemplate "\{user\}@corp\.example" is no DN.*use search-then-bind/);
    expect(ldapLookupProblem(ldap({ userDnTemplate: 'CORP\\{user}', bindDn: 'cn=smtpgate', bindPasswordFile: 'pw' }))).toMatch(/is no DN/);
  });
});
