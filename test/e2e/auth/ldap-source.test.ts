/**
 * The LDAP auth source against a real OpenLDAP slapd on loopback (test/helpers/slapd.ts):
 * search-then-bind and direct bind, over ldaps:// and StartTLS, the directory's attributes,
 * disabled and locked accounts, filter and DN injection, certificate checks, dead and
 * restarted servers, probe(), and lookup() (the same steps without the user's bind).
 */
import net from 'node:net';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { createLogger } from '../../../src/logging/logger.js';
import { authSection, type LdapConfig } from '../../../src/config/auth-section.js';
import { ldapLookupProblem } from '../../../src/config/auth-section.js';
import type { AuthOutcome, AuthRequest } from '../../../src/auth/authenticator.js';
import { LdapAuthenticator } from '../../../src/auth/ldap-source.js';
import { describeWith } from '../../helpers/programs.js';
import { makeTestCa } from '../../helpers/pki.js';
import { deadPort } from '../../helpers/sessions.js';
import { entry, PEOPLE, person, SERVICE_DN, SERVICE_PASSWORD, startSlapd, type Slapd } from '../../helpers/slapd.js';

/** The config section as the config file would give it (defaults and checks included). */
function ldapConfig(ldap: Record<string, unknown>): LdapConfig {
  return authSection('/').parse({ backend: 'ldap', ldap: { bindPasswordFile: '/unused', ...ldap } }).ldap!;
}

interface Harness {
  readonly source: LdapAuthenticator;
  readonly logs: Record<string, unknown>[];
  /** Every log line as written, to look for what must never be there. */
  readonly written: () => string;
}

function harness(config: LdapConfig, secrets: { bindPassword?: string | undefined; ca?: string | undefined } = {}): Harness {
  const logs: Record<string, unknown>[] = [];
  let written = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      written += chunk.toString();
      for (const line of chunk.toString().split('\n')) if (line.trim()) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const source = new LdapAuthenticator(config, {
    log: createLogger({ level: 'debug', format: 'json', destination: sink }),
    bindPassword: 'bindPassword' in secrets ? secrets.bindPassword : `${SERVICE_PASSWORD}\n`,
    ca: secrets.ca === undefined ? undefined : Buffer.from(secrets.ca),
  });
  onTestEnd(() => source.close());
  return { source, logs, written: () => written };
}

const cleanups: (() => Promise<void>)[] = [];
function onTestEnd(fn: () => Promise<void>): void {
  cleanups.push(fn);
}

function request(username: string, password: string): AuthRequest {
  return { username, password, mechanism: 'PLAIN', sessionId: 'test', remoteAddress: '127.0.0.1', listener: 'submission', tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' } };
}

function signIn(h: Harness, username: string, password: string): Promise<AuthOutcome> {
  // The LDAP source never looks at the session's backend.
  return h.source.authenticate(request(username, password));
}

function lookUp(h: Harness, username: string): Promise<AuthOutcome> {
  return h.source.lookup({ username, sessionId: 'test', remoteAddress: '127.0.0.1', listener: 'submission' });
}

const ALICE_ATTRIBUTES = {
  addresses: ['alice@corp.example', 'a.liddell@sales.corp.example'],
  groups: ['staff', 'CN=staff,OU=Groups,DC=corp,DC=example', 'R,D Team', 'CN=R\\2cD Team,OU=Groups,DC=corp,DC=example'],
};

describeWith(['slapd', 'slapadd', 'ldapsearch'], 'LDAP auth source (real slapd)', () => {
  let slapd: Slapd;
  /** Search-then-bind over ldaps:// with the test CA. */
  let searchConfig: (over?: Record<string, unknown>) => LdapConfig;

  beforeAll(async () => {
    slapd = await startSlapd();
    searchConfig = (over = {}) => ldapConfig({ url: slapd.ldapsUrl, bindDn: SERVICE_DN, userBase: PEOPLE, ca: '/unused', ...over });
  });
  afterAll(async () => {
    await slapd?.stop();
  });
  afterEach(async () => {
    await Promise.all(cleanups.splice(0).map((c) => c()));
  });

  describe.each([
    ['ldaps://', () => ({ url: slapd.ldapsUrl })],
    ['ldap:// + StartTLS', () => ({ url: slapd.ldapUrl, startTls: true })],
  ])('search-then-bind over %s', (_name, transport) => {
    test('the right password signs in, with mail and the SMTP proxyAddresses as addresses and memberOf as CN and DN', async () => {
      const h = harness(searchConfig({ ...transport(), addressAttributes: ['mail', 'proxyAddresses'] }), { ca: slapd.ca.cert });
      const outcome = await signIn(h, 'alice', 'alice-pw');
      expect(outcome).toEqual({ ok: true, user: { username: 'alice', attributes: ALICE_ATTRIBUTES } });
    });

    test('a wrong password is bad_credentials', async () => {
      const h = harness(searchConfig(transport()), { ca: slapd.ca.cert });
      expect(await signIn(h, 'alice', 'not-alice-pw')).toMatchObject({ ok: false, reason: 'bad_credentials' });
    });
  });

  test('addressAttributes defaults to mail only (lower-cased); a user without memberOf has no groups', async () => {
    const h = harness(searchConfig(), { ca: slapd.ca.cert });
    expect(await signIn(h, 'alice', 'alice-pw')).toMatchObject({ ok: true, user: { attributes: { addresses: ['alice@corp.example'] } } });
    expect(await signIn(h, 'bob', 'bob-pw')).toEqual({ ok: true, user: { username: 'bob', attributes: { addresses: ['bob@corp.example'], groups: [] } } });
  });

  test('a login the filter does not find is unknown_user, so the next source may be asked', async () => {
    const h = harness(searchConfig(), { ca: slapd.ca.cert });
    expect(await signIn(h, 'mallory', 'whatever')).toMatchObject({ ok: false, reason: 'unknown_user' });
  });

  test('an empty password is bad_credentials without asking the server (RFC 4513 §5.1.2 would let it "succeed")', async () => {
    // A dead server: had the source asked, the answer would be unavailable.
    const h = harness(searchConfig({ url: `ldaps://127.0.0.1:${await deadPort()}` }), { ca: slapd.ca.cert });
    expect(await signIn(h, 'alice', '')).toMatchObject({ ok: false, reason: 'bad_credentials' });
  });

  test('filter metacharacters in the login match nothing: "*", ")(uid=*", "al*" and "alice)(uid=*" with a real password', async () => {
    const h = harness(searchConfig(), { ca: slapd.ca.cert });
    for (const login of ['*', ')(uid=*', 'al*', 'alice)(uid=*', 'alice\\', 'alice\0']) {
      const outcome = await signIn(h, login, 'alice-pw');
      expect(outcome, JSON.stringify(login)).toMatchObject({ ok: false, reason: 'unknown_user' });
    }
    // The same search with the escaped value still finds the real entry.
    expect(await signIn(h, 'alice', 'alice-pw')).toMatchObject({ ok: true });
  });

  test('a login that matches two entries is refused as bad_credentials, with a warning naming the filter', async () => {
    const h = harness(searchConfig(), { ca: slapd.ca.cert });
    expect(await signIn(h, 'twin', 'twin-pw')).toMatchObject({ ok: false, reason: 'bad_credentials' });
    const warning = h.logs.find((l) => l.level === 'warn' && /more than one entry/.test(String(l.msg)));
    expect(warning).toMatchObject({ source: 'ldap', filter: '(uid=twin)', user: 'twin' });
  });

  test('a non-ASCII login is found and signed in', async () => {
    const h = harness(searchConfig(), { ca: slapd.ca.cert });
    expect(await signIn(h, 'jérôme', 'jérôme-pw')).toMatchObject({ ok: true, user: { username: 'jérôme', attributes: { addresses: ['jerome@corp.example'] } } });
  });

  test('userAccountControl 514 (ACCOUNTDISABLE) with the right password is disabled; with a wrong one, bad_credentials', async () => {
    const h = harness(searchConfig(), { ca: slapd.ca.cert });
    expect(await signIn(h, 'erin', 'erin-pw')).toMatchObject({ ok: false, reason: 'disabled', detail: 'userAccountControl has ACCOUNTDISABLE' });
    expect(await signIn(h, 'erin', 'wrong')).toMatchObject({ ok: false, reason: 'bad_credentials' });
  });

  test('disabledFilter, asked of the server after the password: a match is disabled, a wrong password stays bad_credentials', async () => {
    const h = harness(searchConfig({ disabledFilter: '(employeeType=suspended)' }), { ca: slapd.ca.cert });
    expect(await signIn(h, 'dave', 'dave-pw')).toMatchObject({ ok: false, reason: 'disabled', detail: 'the entry matches disabledFilter (employeeType=suspended)' });
    expect(await signIn(h, 'dave', 'wrong')).toMatchObject({ ok: false, reason: 'bad_credentials' });
    expect(await signIn(h, 'alice', 'alice-pw')).toMatchObject({ ok: true });
    // Without the filter, dave is an ordinary user.
    const plain = harness(searchConfig(), { ca: slapd.ca.cert });
    expect(await signIn(plain, 'dave', 'dave-pw')).toMatchObject({ ok: true });
  });

  test('an account the password policy has locked is disabled, whatever the password (slapd says so in its ppolicy control)', async () => {
    const h = harness(searchConfig(), { ca: slapd.ca.cert });
    expect(await signIn(h, 'carol', 'carol-pw')).toMatchObject({ ok: false, reason: 'disabled', detail: 'account locked (password policy)' });
    // slapd answers "locked" before it looks at the password: the server's word stands.
    expect(await signIn(h, 'carol', 'wrong')).toMatchObject({ ok: false, reason: 'disabled', detail: 'account locked (password policy)' });
  });

  test('the password is in no log line, whatever the outcome', async () => {
    const h = harness(searchConfig({ url: [`ldaps://127.0.0.1:${await deadPort()}`, slapd.ldapsUrl], disabledFilter: '(employeeType=suspended)' }), { ca: slapd.ca.cert });
    const secret = 'S3cret-Passw0rd-never-logged';
    for (const user of ['alice', 'mallory', 'erin', 'dave', 'carol', 'twin']) await signIn(h, user, secret);
    await signIn(h, 'alice', 'alice-pw');
    expect(h.logs.length).toBeGreaterThan(6);
    expect(h.written()).not.toContain(secret);
    expect(h.written()).not.toContain('alice-pw');
    expect(h.written()).not.toContain(SERVICE_PASSWORD);
  });

  describe('certificates', () => {
    test('a CA that did not sign the server\'s certificate makes the server unavailable, over ldaps:// and StartTLS', async () => {
      const other = await makeTestCa('another CA');
      const ldaps = harness(searchConfig(), { ca: other.cert });
      const outcome = await signIn(ldaps, 'alice', 'alice-pw');
      expect(outcome).toMatchObject({ ok: false, reason: 'unavailable' });
      expect(!outcome.ok && outcome.detail).toMatch(new RegExp(`^${slapd.ldapsUrl}: .*certificate`));

      const startTls = harness(searchConfig({ url: slapd.ldapUrl, startTls: true }), { ca: other.cert });
      const viaStartTls = await signIn(startTls, 'alice', 'alice-pw');
      expect(viaStartTls).toMatchObject({ ok: false, reason: 'unavailable' });
      expect(!viaStartTls.ok && viaStartTls.detail).toMatch(new RegExp(`^${slapd.ldapUrl}: StartTLS failed: .*certificate`));
    });

    test('without a CA the system\'s CAs are used, and they do not know the test CA', async () => {
      const h = harness(searchConfig({ ca: undefined }));
      expect(await signIn(h, 'alice', 'alice-pw')).toMatchObject({ ok: false, reason: 'unavailable' });
    });

    test('verifyCertificate: false accepts a certificate no CA vouches for', async () => {
      const h = harness(searchConfig({ ca: undefined, verifyCertificate: false }));
      expect(await signIn(h, 'alice', 'alice-pw')).toMatchObject({ ok: true });
    });

    test('a host name on the certificate (localhost) is verified and sent as SNI', async () => {
      const byName = harness(searchConfig({ url: slapd.ldapsUrl.replace('127.0.0.1', 'localhost') }), { ca: slapd.ca.cert });
      expect(await signIn(byName, 'alice', 'alice-pw')).toMatchObject({ ok: true });
    });
  });

  describe('a server that refuses StartTLS', () => {
    let plain: Slapd;
    beforeAll(async () => {
      plain = await startSlapd({ tls: false });
    });
    afterAll(async () => {
      await plain?.stop();
    });

    test('is unavailable: the source never falls back to a cleartext bind', async () => {
      const h = harness(searchConfig({ url: plain.ldapUrl, startTls: true }), { ca: plain.ca.cert });
      const outcome = await signIn(h, 'alice', 'alice-pw');
      expect(outcome).toMatchObject({ ok: false, reason: 'unavailable' });
      expect(!outcome.ok && outcome.detail).toMatch(new RegExp(`^${plain.ldapUrl}: StartTLS failed: `));
    });
  });

  describe('servers down, failing over and restarting', () => {
    /** A slapd of its own, to stop and start. */
    let restarting: Slapd;
    beforeAll(async () => {
      restarting = await startSlapd();
    });
    afterAll(async () => {
      await restarting?.stop();
    });

    test('a port nothing listens on is unavailable at once, naming the server', async () => {
      const url = `ldaps://127.0.0.1:${await deadPort()}`;
      const h = harness(searchConfig({ url }), { ca: slapd.ca.cert });
      const outcome = await signIn(h, 'alice', 'alice-pw');
      expect(outcome).toMatchObject({ ok: false, reason: 'unavailable' });
      expect(!outcome.ok && outcome.detail).toMatch(new RegExp(`^${url}: connect ECONNREFUSED`));
      expect(h.logs.find((l) => l.level === 'warn')).toMatchObject({ msg: 'LDAP directory unavailable', user: 'alice' });
    });

    test('a server that accepts the connection and never answers is unavailable within the timeout, over ldaps:// and StartTLS', async () => {
      const silent = net.createServer(() => undefined);
      await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
      onTestEnd(async () => {
        silent.close();
      });
      const port = (silent.address() as net.AddressInfo).port;
      for (const over of [{ url: `ldaps://127.0.0.1:${port}` }, { url: `ldap://127.0.0.1:${port}`, startTls: true }]) {
        const h = harness(searchConfig({ ...over, timeout: '400ms' }), { ca: slapd.ca.cert });
        const started = performance.now();
        const outcome = await signIn(h, 'alice', 'alice-pw');
        const elapsed = performance.now() - started;
        // The deadline answered it (not a refusal), and not before its time.
        expect(outcome, over.url).toMatchObject({ ok: false, reason: 'unavailable', detail: expect.stringMatching(/within 400 ms|timed out/) });
        expect(elapsed, over.url).toBeGreaterThanOrEqual(390);
      }
    });

    test('a dead first URL is skipped for the second', async () => {
      const h = harness(searchConfig({ url: [`ldaps://127.0.0.1:${await deadPort()}`, slapd.ldapsUrl] }), { ca: slapd.ca.cert });
      expect(await signIn(h, 'alice', 'alice-pw')).toMatchObject({ ok: true, user: { attributes: { addresses: ['alice@corp.example'] } } });
      expect(await signIn(h, 'alice', 'wrong')).toMatchObject({ ok: false, reason: 'bad_credentials' });
    });

    test('after slapd restarts, the next sign-in reconnects the service account and succeeds; while it is down, unavailable', async () => {
      const h = harness(searchConfig({ url: restarting.ldapsUrl }), { ca: restarting.ca.cert });
      expect(await signIn(h, 'alice', 'alice-pw')).toMatchObject({ ok: true });

      await restarting.kill();
      const down = await signIn(h, 'alice', 'alice-pw');
      expect(down).toMatchObject({ ok: false, reason: 'unavailable' });
      expect(!down.ok && down.detail).toContain(restarting.ldapsUrl);

      await restarting.start();
      expect(await signIn(h, 'alice', 'alice-pw')).toMatchObject({ ok: true });
      expect(await signIn(h, 'bob', 'bob-pw')).toMatchObject({ ok: true });
    });

    test('slapd restarted between two sign-ins, without a failed one in between: the stale service connection is replaced', async () => {
      const h = harness(searchConfig({ url: restarting.ldapsUrl }), { ca: restarting.ca.cert });
      expect(await signIn(h, 'alice', 'alice-pw')).toMatchObject({ ok: true });
      await restarting.kill();
      await restarting.start();
      expect(await signIn(h, 'alice', 'alice-pw')).toMatchObject({ ok: true });
    });

    test('many sign-ins at once share one service connection and all get their own answer', async () => {
      const h = harness(searchConfig(), { ca: slapd.ca.cert });
      const users = ['alice', 'bob', 'erin', 'mallory', 'alice', 'bob'];
      const outcomes = await Promise.all(users.map((u) => signIn(h, u, `${u}-pw`)));
      expect(outcomes.map((o) => (o.ok ? 'ok' : o.reason))).toEqual(['ok', 'ok', 'disabled', 'unknown_user', 'ok', 'ok']);
    });
  });

  describe('direct bind (userDnTemplate)', () => {
    const template = `uid={user},${PEOPLE}`;

    test('without a service account: binds as the user and reads their own entry for attributes', async () => {
      const h = harness(ldapConfig({ url: slapd.ldapUrl, startTls: true, userDnTemplate: template, bindPasswordFile: undefined, addressAttributes: ['mail', 'proxyAddresses'] }), { ca: slapd.ca.cert, bindPassword: undefined });
      expect(await signIn(h, 'alice', 'alice-pw')).toEqual({ ok: true, user: { username: 'alice', attributes: ALICE_ATTRIBUTES } });
      expect(await signIn(h, 'alice', 'wrong')).toMatchObject({ ok: false, reason: 'bad_credentials' });
      expect(await signIn(h, 'erin', 'erin-pw')).toMatchObject({ ok: false, reason: 'disabled' });
      expect(await signIn(h, 'carol', 'carol-pw')).toMatchObject({ ok: false, reason: 'disabled' });
      expect(await signIn(h, 'alice', '')).toMatchObject({ ok: false, reason: 'bad_credentials' });
    });

    test('DN metacharacters in the login stay in one RDN value: "alice,ou=people" does not bind as alice', async () => {
      const h = harness(ldapConfig({ url: slapd.ldapsUrl, userDnTemplate: template, bindPasswordFile: undefined }), { ca: slapd.ca.cert, bindPassword: undefined });
      for (const login of ['alice,ou=people', 'alice+cn=alice', '#alice', 'alice\0', 'uid=alice']) {
        const outcome = await signIn(h, login, 'alice-pw');
        expect(outcome.ok, JSON.stringify(login)).toBe(false);
        expect(outcome, JSON.stringify(login)).not.toMatchObject({ reason: 'unavailable' });
      }
    });

    test('with a service account: it reads the entry and checks disabledFilter after the user\'s bind', async () => {
      const h = harness(ldapConfig({ url: slapd.ldapsUrl, userDnTemplate: template, bindDn: SERVICE_DN, disabledFilter: '(employeeType=suspended)' }), { ca: slapd.ca.cert });
      expect(await signIn(h, 'bob', 'bob-pw')).toEqual({ ok: true, user: { username: 'bob', attributes: { addresses: ['bob@corp.example'], groups: [] } } });
      expect(await signIn(h, 'dave', 'dave-pw')).toMatchObject({ ok: false, reason: 'disabled' });
      expect(await signIn(h, 'dave', 'wrong')).toMatchObject({ ok: false, reason: 'bad_credentials' });
    });
  });

  test('the login is returned as the directory spells it ("ALICE" and " alice" are alice by uid\'s matching rule)', async () => {
    const search = harness(searchConfig(), { ca: slapd.ca.cert });
    const direct = harness(ldapConfig({ url: slapd.ldapsUrl, userDnTemplate: `uid={user},${PEOPLE}`, bindPasswordFile: undefined }), { ca: slapd.ca.cert, bindPassword: undefined });
    for (const h of [search, direct]) {
      expect(await signIn(h, 'ALICE', 'alice-pw')).toMatchObject({ ok: true, user: { username: 'alice' } });
      expect(await signIn(h, ' alice', 'alice-pw')).toMatchObject({ ok: true, user: { username: 'alice' } });
    }
  });

  describe('probe()', () => {
    test('reports the server, the service account and how many entries userFilter finds', async () => {
      const h = harness(searchConfig(), { ca: slapd.ca.cert });
      // alice bob erin carol dave jérôme twin twin
      expect(await h.source.probe()).toBe(`${slapd.ldapsUrl}: bound as ${SERVICE_DN}; userBase ${PEOPLE} holds 8 entries matching (uid=*)`);
    });

    test('names the servers that did not answer before the one that did', async () => {
      const dead = `ldaps://127.0.0.1:${await deadPort()}`;
      const h = harness(searchConfig({ url: [dead, slapd.ldapsUrl] }), { ca: slapd.ca.cert });
      const report = await h.source.probe();
      expect(report.split('\n')).toEqual([expect.stringMatching(new RegExp(`^${slapd.ldapsUrl}: bound as `)), expect.stringMatching(new RegExp(`^\\(no answer from ${dead}: connect ECONNREFUSED`))]);
    });

    test('direct bind without a service account: reports the TLS connection', async () => {
      const h = harness(ldapConfig({ url: slapd.ldapUrl, startTls: true, userDnTemplate: `uid={user},${PEOPLE}`, bindPasswordFile: undefined }), { ca: slapd.ca.cert, bindPassword: undefined });
      expect(await h.source.probe()).toMatch(new RegExp(`^${slapd.ldapUrl}: TLS connection established; direct bind as uid=\\{user\\},${PEOPLE}`));
    });

    test('a wrong service password rejects, naming the account and the fix', async () => {
      const h = harness(searchConfig(), { ca: slapd.ca.cert, bindPassword: 'not-the-password' });
      await expect(h.source.probe()).rejects.toThrow(new RegExp(`^${slapd.ldapsUrl}: the service account ${SERVICE_DN} could not bind: InvalidCredentials \\(LDAP result 49\\).*check auth.ldap.bindDn and the password in bindPasswordFile`));
      // The same mistake at sign-in time is unavailable, not the user's fault.
      expect(await signIn(h, 'alice', 'alice-pw')).toMatchObject({ ok: false, reason: 'unavailable' });
    });

    test('a wrong CA rejects, saying to set auth.ldap.ca', async () => {
      const other = await makeTestCa('another CA');
      const h = harness(searchConfig(), { ca: other.cert });
      await expect(h.source.probe()).rejects.toThrow(/^no LDAP server reachable: ldaps:\/\/127\.0\.0\.1:\d+: .*certificate.*\(set auth\.ldap\.ca to the CA that issued the directory's certificate\)/);
    });

    test('a userBase that does not exist rejects, saying to check userBase', async () => {
      const h = harness(searchConfig({ userBase: `ou=nobody,${PEOPLE}` }), { ca: slapd.ca.cert });
      await expect(h.source.probe()).rejects.toThrow(/searching userBase ou=nobody,.* failed: .*check auth\.ldap\.userBase/);
    });

    test('no server up rejects, saying to check the URL', async () => {
      const h = harness(searchConfig({ url: `ldaps://127.0.0.1:${await deadPort()}` }), { ca: slapd.ca.cert });
      await expect(h.source.probe()).rejects.toThrow(/ECONNREFUSED.*check auth\.ldap\.url and that the server listens there/);
    });
  });

  describe('lookup() (no password: an app password smtpgate checked itself)', () => {
    /** A slapd of its own, with two more people, to stop and start. */
    let directory: Slapd;
    let lookupConfig: (over?: Record<string, unknown>) => LdapConfig;
    const template = `uid={user},${PEOPLE}`;

    beforeAll(async () => {
      directory = await startSlapd({
        extraEntries: [
          // Wildcards a user could have written into their own mail attribute.
          person('wild', [['mail', '*'], ['mail', '*@corp.example'], ['mail', 'Wild@Corp.Example']]),
          // No userPassword: every bind as this entry fails, so a lookup that finds it bound as nobody.
          entry(`uid=nopass,${PEOPLE}`, [['objectClass', 'inetOrgPerson'], ['uid', 'nopass'], ['cn', 'nopass'], ['sn', 'nopass'], ['mail', 'nopass@corp.example']]),
        ],
      });
      lookupConfig = (over = {}) => ldapConfig({ url: directory.ldapsUrl, bindDn: SERVICE_DN, userBase: PEOPLE, ca: '/unused', ...over });
    });
    afterAll(async () => {
      await directory?.stop();
    });

    test('an existing user is ok, with the directory\'s spelling of the login, the addresses and the groups a sign-in gets', async () => {
      const h = harness(lookupConfig({ addressAttributes: ['mail', 'proxyAddresses'] }), { ca: directory.ca.cert });
      expect(await lookUp(h, 'ALICE')).toEqual({ ok: true, user: { username: 'alice', attributes: ALICE_ATTRIBUTES } });
      expect(await lookUp(h, 'bob')).toEqual({ ok: true, user: { username: 'bob', attributes: { addresses: ['bob@corp.example'], groups: [] } } });
      expect(await lookUp(h, 'jérôme')).toMatchObject({ ok: true, user: { username: 'jérôme' } });
    });

    test('a login the filter does not find is unknown_user; filter metacharacters find no one', async () => {
      const h = harness(lookupConfig(), { ca: directory.ca.cert });
      for (const login of ['mallory', '*', 'al*', ')(uid=*', 'alice)(uid=*', '']) {
        expect(await lookUp(h, login), JSON.stringify(login)).toMatchObject({ ok: false, reason: 'unknown_user' });
      }
    });

    test('an entry matching disabledFilter is disabled, and so is AD\'s ACCOUNTDISABLE', async () => {
      const h = harness(lookupConfig({ disabledFilter: '(employeeType=suspended)' }), { ca: directory.ca.cert });
      expect(await lookUp(h, 'dave')).toMatchObject({ ok: false, reason: 'disabled', detail: 'the entry matches disabledFilter (employeeType=suspended)' });
      expect(await lookUp(h, 'erin')).toMatchObject({ ok: false, reason: 'disabled', detail: 'userAccountControl has ACCOUNTDISABLE' });
      expect(await lookUp(h, 'alice')).toMatchObject({ ok: true });
    });

    test('an account the password policy locked is disabled only through disabledFilter: without a bind the server never says "locked"', async () => {
      const plain = harness(lookupConfig(), { ca: directory.ca.cert });
      expect(await lookUp(plain, 'carol')).toMatchObject({ ok: true });
      const h = harness(lookupConfig({ disabledFilter: '(pwdAccountLockedTime=*)' }), { ca: directory.ca.cert });
      expect(await lookUp(h, 'carol')).toMatchObject({ ok: false, reason: 'disabled', detail: 'the entry matches disabledFilter (pwdAccountLockedTime=*)' });
    });

    test('wildcards in the directory\'s mail values are dropped, as for a sign-in', async () => {
      const h = harness(lookupConfig(), { ca: directory.ca.cert });
      expect(await lookUp(h, 'wild')).toEqual({ ok: true, user: { username: 'wild', attributes: { addresses: ['wild@corp.example'], groups: [] } } });
      expect(await signIn(h, 'wild', 'wild-pw')).toEqual(await lookUp(h, 'wild'));
    });

    test('a login that matches two entries is refused as disabled (final, like a sign-in\'s refusal), with the warning naming the filter', async () => {
      const h = harness(lookupConfig(), { ca: directory.ca.cert });
      expect(await lookUp(h, 'twin')).toMatchObject({ ok: false, reason: 'disabled', detail: '(uid=twin) matches more than one entry' });
      expect(h.logs.find((l) => l.level === 'warn' && /more than one entry/.test(String(l.msg)))).toMatchObject({ source: 'ldap', filter: '(uid=twin)', user: 'twin' });
    });

    test('never binds as the user: an entry without a password, which no bind can reach, is found', async () => {
      const h = harness(lookupConfig(), { ca: directory.ca.cert });
      expect(await signIn(h, 'nopass', 'anything')).toMatchObject({ ok: false, reason: 'bad_credentials' });
      expect(await lookUp(h, 'nopass')).toEqual({ ok: true, user: { username: 'nopass', attributes: { addresses: ['nopass@corp.example'], groups: [] } } });
      const direct = harness(lookupConfig({ userDnTemplate: template, userBase: undefined }), { ca: directory.ca.cert });
      expect(await lookUp(direct, 'nopass')).toMatchObject({ ok: true, user: { username: 'nopass' } });
    });

    test('a service account that cannot bind is unavailable, naming it', async () => {
      const h = harness(lookupConfig(), { ca: directory.ca.cert, bindPassword: 'not-the-password' });
      const outcome = await lookUp(h, 'alice');
      expect(outcome).toMatchObject({ ok: false, reason: 'unavailable' });
      expect(!outcome.ok && outcome.detail).toContain(`bind as the service account ${SERVICE_DN}`);
    });

    test('a port nothing listens on is unavailable, naming the server', async () => {
      const url = `ldaps://127.0.0.1:${await deadPort()}`;
      const h = harness(lookupConfig({ url }), { ca: directory.ca.cert });
      const outcome = await lookUp(h, 'alice');
      expect(outcome).toMatchObject({ ok: false, reason: 'unavailable' });
      expect(!outcome.ok && outcome.detail).toMatch(new RegExp(`^${url}: connect ECONNREFUSED`));
    });

    test('slapd stopped: unavailable, logged as a warning; started again: found again', async () => {
      const h = harness(lookupConfig(), { ca: directory.ca.cert });
      expect(await lookUp(h, 'alice')).toMatchObject({ ok: true });
      await directory.kill();
      try {
        const down = await lookUp(h, 'alice');
        expect(down).toMatchObject({ ok: false, reason: 'unavailable' });
        expect(!down.ok && down.detail).toContain(directory.ldapsUrl);
        expect(h.logs.find((l) => l.level === 'warn')).toMatchObject({ msg: 'LDAP directory unavailable', user: 'alice' });
      } finally {
        await directory.start();
      }
      expect(await lookUp(h, 'alice')).toMatchObject({ ok: true });
    });

    describe('direct bind (userDnTemplate)', () => {
      test('with a service account: reads the entry at the template\'s DN, with the same checks and attributes', async () => {
        const h = harness(lookupConfig({ userDnTemplate: template, userBase: undefined, disabledFilter: '(employeeType=suspended)', addressAttributes: ['mail', 'proxyAddresses'] }), { ca: directory.ca.cert });
        expect(await lookUp(h, 'ALICE')).toEqual({ ok: true, user: { username: 'alice', attributes: ALICE_ATTRIBUTES } });
        expect(await lookUp(h, 'wild')).toMatchObject({ ok: true, user: { attributes: { addresses: ['wild@corp.example'] } } });
        expect(await lookUp(h, 'dave')).toMatchObject({ ok: false, reason: 'disabled' });
        expect(await lookUp(h, 'erin')).toMatchObject({ ok: false, reason: 'disabled' });
        expect(await lookUp(h, 'mallory')).toMatchObject({ ok: false, reason: 'unknown_user', detail: `no entry at uid=mallory,${PEOPLE}` });
      });

      test('DN metacharacters in the login stay in one RDN value and find no one', async () => {
        const h = harness(lookupConfig({ userDnTemplate: template, userBase: undefined }), { ca: directory.ca.cert });
        for (const login of ['alice,ou=people', 'alice+cn=alice', '#alice', 'uid=alice']) {
          expect(await lookUp(h, login), JSON.stringify(login)).toMatchObject({ ok: false, reason: 'unknown_user' });
        }
      });

      test('without a service account: unavailable, naming the fix, and ldapLookupProblem says the same for the config check', async () => {
        const config = ldapConfig({ url: directory.ldapsUrl, userDnTemplate: template, bindPasswordFile: undefined });
        const h = harness(config, { ca: directory.ca.cert, bindPassword: undefined });
        const problem = ldapLookupProblem(config);
        expect(problem).toMatch(/needs a service account.*set bindDn and bindPasswordFile/);
        expect(await lookUp(h, 'alice')).toEqual({ ok: false, reason: 'unavailable', detail: problem });
        // Sign-ins still work: only a lookup needs the service account.
        expect(await signIn(h, 'alice', 'alice-pw')).toMatchObject({ ok: true });
      });

      test('a template that is no DN ("{user}@corp.example") is unavailable even with a service account, rather than unknown_user for everyone', async () => {
        const config = lookupConfig({ userDnTemplate: '{user}@corp.example', userBase: undefined });
        const h = harness(config, { ca: directory.ca.cert });
        expect(await lookUp(h, 'alice')).toEqual({ ok: false, reason: 'unavailable', detail: ldapLookupProblem(config) });
      });
    });
  });
});
