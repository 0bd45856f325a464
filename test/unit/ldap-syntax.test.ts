/**
 * Logins in LDAP filters (RFC 4515) and DNs (RFC 4514), group names out of memberOf DNs, and
 * what a directory entry says for smtpgate (addresses, groups, AD's ACCOUNTDISABLE).
 */
import { describe, expect, test } from 'vitest';
import { FilterParser, EqualityFilter, AndFilter } from 'ldapts';
import { escapeDnValue, escapeFilterValue, fillTemplate, firstRdn, loginAttribute } from '../../src/auth/ldap-syntax.js';
import { authSection } from '../../src/config/auth-section.js';
import { adAccountDisabled, addressesOf, groupsOf, spelledLogin } from '../../src/auth/ldap-entry.js';

describe('a login in a filter (RFC 4515 §3)', () => {
  test.each([
    ['*', '\\2a'],
    [')(uid=*', '\\29\\28uid=\\2a'],
    ['a\\b', 'a\\5cb'],
    ['nul\0', 'nul\\00'],
    ['jérôme', 'jérôme'],
  ])('%j is escaped as %j', (login, escaped) => {
    expect(escapeFilterValue(login)).toBe(escaped);
  });

  test.each(['*', ')(uid=*', 'alice)(|(uid=*', 'a\\2a', '$&$1', '(', 'x\0y'])('%j stays one equality assertion with exactly that value', (login) => {
    const filter = FilterParser.parseString(fillTemplate('(&(objectClass=person)(uid={user}))', escapeFilterValue(login)));
    expect(filter).toBeInstanceOf(AndFilter);
    const [, uid] = (filter as AndFilter).filters;
    expect(uid).toBeInstanceOf(EqualityFilter);
    expect((uid as EqualityFilter).value).toBe(login);
  });

  test('replacement patterns in the login are taken literally, and every {user} is filled', () => {
    expect(fillTemplate('(|(uid={user})(mail={user}))', "$&$'")).toBe("(|(uid=$&$')(mail=$&$'))");
  });
});

describe('a login in a DN (RFC 4514 §2.4)', () => {
  test.each([
    ['alice', 'alice'],
    ['alice,ou=admins', 'alice\\,ou\\=admins'],
    ['a+b', 'a\\+b'],
    ['"q"', '\\"q\\"'],
    ['<x>;', '\\<x\\>\\;'],
    ['back\\slash', 'back\\\\slash'],
    ['#hash', '\\#hash'],
    ['in#side', 'in#side'],
    [' lead', '\\ lead'],
    ['trail ', 'trail\\ '],
    ['mid dle', 'mid dle'],
    ['nul\0', 'nul\\00'],
    ['jérôme', 'jérôme'],
  ])('%j is escaped as %j', (login, escaped) => {
    expect(escapeDnValue(login)).toBe(escaped);
  });

  test('an escaped value reads back as the same value', () => {
    for (const login of ['alice,ou=admins', ' a+b ', '#x', 'R\\D', 'jérôme']) {
      expect(firstRdn(`uid=${escapeDnValue(login)},ou=people,dc=example,dc=org`)).toEqual({ type: 'uid', value: login });
    }
  });
});

describe('the first RDN of a DN', () => {
  test.each([
    ['CN=staff,OU=Groups,DC=corp,DC=example', { type: 'CN', value: 'staff' }],
    ['cn=R\\2cD Team,ou=Groups', { type: 'cn', value: 'R,D Team' }],
    ['CN=R\\,D,OU=x', { type: 'CN', value: 'R,D' }],
    ['CN=J\\C3\\A9r\\C3\\B4me,OU=x', { type: 'CN', value: 'Jérôme' }],
    ['CN=  padded  ,OU=x', { type: 'CN', value: 'padded' }],
    ['CN=\\ kept\\ ,OU=x', { type: 'CN', value: ' kept ' }],
    ['CN=only', { type: 'CN', value: 'only' }],
    ['2.5.4.3=oid', { type: '2.5.4.3', value: 'oid' }],
  ])('%s → %j', (dn, rdn) => {
    expect(firstRdn(dn)).toEqual(rdn);
  });

  test.each(['', 'staff', '=x,OU=y', 'CN=,OU=x', 'CN=a+OU=b,DC=c', 'CN=trailing\\', 'C N=x'])('%j has none', (dn) => {
    expect(firstRdn(dn)).toBeUndefined();
  });
});

test('the attribute the login is compared with', () => {
  expect(loginAttribute('(uid={user})')).toBe('uid');
  expect(loginAttribute('(&(objectClass=user)(sAMAccountName={user}))')).toBe('sAMAccountName');
  expect(loginAttribute('uid={user},ou=people,dc=example,dc=org')).toBe('uid');
  expect(loginAttribute('{user}@corp.example')).toBeUndefined();
  expect(loginAttribute('(mail={user}@corp.example)')).toBeUndefined();
});

describe('what an entry says', () => {
  const entry = {
    dn: 'uid=alice,ou=people,dc=example,dc=org',
    mail: ['Alice@Corp.Example', 'alice@corp.example'],
    proxyAddresses: ['SMTP:Alice@Corp.Example', 'smtp:al@sales.corp.example', 'X400:c=US;a= ;p=Corp;', 'SIP:alice@corp.example', 'sMtP:odd@corp.example', 'smtp:'],
    memberof: ['CN=staff,OU=Groups,DC=corp,DC=example', 'OU=NotAGroupName,DC=corp', 'CN=staff,OU=Other,DC=corp,DC=example'],
    uid: ['alice', 'a.liddell'],
  };

  test('addresses: mail as-is, proxyAddresses only the SMTP ones without the prefix; lower-cased, no repeats', () => {
    expect(addressesOf(entry, ['mail', 'proxyAddresses'])).toEqual(['alice@corp.example', 'al@sales.corp.example', 'odd@corp.example']);
    expect(addressesOf(entry, ['mail'])).toEqual(['alice@corp.example']);
    expect(addressesOf(entry, ['otherMailbox'])).toEqual([]);
  });

  test('groups: each memberOf DN, and its CN when the first RDN is a CN; attribute names match without case', () => {
    expect(groupsOf(entry, 'memberOf')).toEqual(['staff', 'CN=staff,OU=Groups,DC=corp,DC=example', 'OU=NotAGroupName,DC=corp', 'CN=staff,OU=Other,DC=corp,DC=example']);
  });

  test('a single value comes as a string, not a list', () => {
    expect(groupsOf({ dn: 'x', memberOf: 'CN=solo,DC=x' }, 'memberOf')).toEqual(['solo', 'CN=solo,DC=x']);
  });

  test.each([
    ['512', false],
    ['514', true],
    ['66050', true], // NORMAL_ACCOUNT | DONT_EXPIRE_PASSWORD | ACCOUNTDISABLE
    ['66048', false],
    ['not a number', false],
  ])('userAccountControl %s → disabled %s', (uac, disabled) => {
    expect(adAccountDisabled({ dn: 'x', userAccountControl: uac })).toBe(disabled);
  });

  test('no userAccountControl is not disabled', () => {
    expect(adAccountDisabled({ dn: 'x' })).toBe(false);
  });

  test('the login as the directory spells it', () => {
    expect(spelledLogin(entry, 'uid', 'ALICE')).toBe('alice');
    expect(spelledLogin(entry, 'UID', ' A.Liddell ')).toBe('a.liddell');
    expect(spelledLogin(entry, 'uid', 'bob')).toBeUndefined();
  });
});

describe('the auth.ldap filters in the config', () => {
  const parse = (ldap: Record<string, unknown>) =>
    authSection('/').safeParse({ backend: 'ldap', ldap: { url: 'ldaps://dc1.corp.example', bindDn: 'cn=x', bindPasswordFile: 'pw', userBase: 'dc=corp', ...ldap } });

  test('a userFilter or disabledFilter that is no LDAP filter is refused, naming the setting', () => {
    const bad = parse({ userFilter: '(uid={user}', disabledFilter: '(a=1)(b=2)' });
    expect(bad.success).toBe(false);
    expect(bad.error!.issues.map((i) => [i.path.join('.'), i.message.slice(0, 31)])).toEqual([
      ['ldap.userFilter', 'not an LDAP filter (RFC 4515): '],
      ['ldap.disabledFilter', 'not an LDAP filter (RFC 4515): '],
    ]);
  });

  test('well-formed filters pass', () => {
    expect(parse({ userFilter: '(&(objectClass=user)(sAMAccountName={user}))', disabledFilter: '(pwdAccountLockedTime=*)' }).success).toBe(true);
  });
});
