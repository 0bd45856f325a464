/**
 * What a directory entry gives smtpgate as addresses: plain addresses only. The directory's
 * mail attribute is data (sometimes writable by its own user), so a wildcard in it must not turn
 * into "may send as anyone" under sender binding.
 */
import type { Entry } from 'ldapts';
import { expect, test } from 'vitest';
import { addressesOf } from '../../src/auth/ldap-entry.js';

const entry = (attrs: Record<string, string | string[]>): Entry => ({ dn: 'uid=alice,ou=people,dc=example,dc=org', ...attrs });

test('mail and the SMTP proxyAddresses, lower-cased, without repeats or other address types', () => {
  const e = entry({ mail: 'Alice@Corp.Example', proxyAddresses: ['SMTP:alice@corp.example', 'smtp:a.smith@corp.example', 'X400:c=US;a= ;p=Corp;o=Exchange;', 'SIP:alice@corp.example'] });
  expect(addressesOf(e, ['mail', 'proxyAddresses'])).toEqual(['alice@corp.example', 'a.smith@corp.example']);
});

test.each([['*'], ['*@corp.example'], ['alice*@corp.example'], ['?lice@corp.example'], ['alice@*'], ['not an address'], ['alice@corp.example\nbob@corp.example'], ['']])(
  'a mail value %j is not an address: dropped, so it grants nothing',
  (value) => {
    expect(addressesOf(entry({ mail: ['alice@corp.example', value] }), ['mail'])).toEqual(['alice@corp.example']);
    expect(addressesOf(entry({ proxyAddresses: [`smtp:${value}`] }), ['proxyAddresses'])).toEqual([]);
  },
);
