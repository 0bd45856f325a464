/**
 * `auth.backend: ldap`: sign-in against an LDAP directory or Active Directory.
 *
 * Search-then-bind (bindDn + userBase): the service account finds the one entry that
 * userFilter matches for the login, and the user's password is checked by binding as that
 * entry's DN on a connection of its own (the service connection is never bound as a user).
 * Direct bind (userDnTemplate): the login is put into the DN and bound as; the user's entry is
 * then read for its attributes (by the service account when there is one, else as the user).
 *
 * After the password is proved right, the account is checked: AD's ACCOUNTDISABLE bit, and
 * `disabledFilter` asked of the server. What the server itself says when refusing a bind (a
 * password-policy control, AD's "data 775" and friends) also maps to `disabled`.
 *
 * A lookup (no password: an app password smtpgate has checked itself) takes the same steps
 * without the user's bind: the service account finds the entry as search-then-bind does (or
 * reads it at the template's DN), then the same account checks and the same attributes. With
 * no bind the server never says why it would refuse one: an account locked by the password
 * policy or AD's lockout counts as disabled only if disabledFilter matches it (e.g.
 * "(pwdAccountLockedTime=*)"). Direct bind without a service account cannot look users up
 * (ldapLookupProblem in config/auth-section.ts).
 */
import { FilterParser, InvalidCredentialsError, InvalidDNSyntaxError, NoSuchObjectError, PasswordPolicyControl, PasswordPolicyError, ResultCodeError, type Entry, type Filter, type PasswordPolicyValue } from 'ldapts';
import { ldapLookupProblem, type LdapConfig } from '../config/auth-section.js';
import type { Logger } from '../logging/logger.js';
import type { AuthOutcome, AuthRequest, Authenticator, LookupRequest, SourceDeps } from './authenticator.js';
import { describeLdapError, LdapConnector, LdapUnreachable, type LdapConnection } from './ldap-connection.js';
import { adAccountDisabled, directoryAttributes, spelledLogin, USER_ACCOUNT_CONTROL } from './ldap-entry.js';
import { escapeDnValue, escapeFilterValue, fillTemplate, loginAttribute } from './ldap-syntax.js';

export interface LdapSourceDeps extends SourceDeps {
  /** The contents of bindPasswordFile (one trailing newline is not part of the password). */
  readonly bindPassword: string | undefined;
  /** The contents of the `ca` file. */
  readonly ca: Buffer | undefined;
}

/** What the directory says of a user whose password was right (or who is looked up). */
interface UserFacts {
  /** Undefined when the entry could not be read (a direct-bind template that is no DN, e.g. "{user}@corp.example"). */
  readonly entry: Entry | undefined;
  readonly matchesDisabledFilter: boolean;
}

type BindResult = { readonly refused: AuthOutcome } | { readonly facts: UserFacts | undefined };
type SearchResult = { readonly refused: AuthOutcome } | { readonly entry: Entry };
/** What the source was asked, for its log lines. */
type Asked = 'sign-in' | 'lookup';

/** An operation on a connection that failed: names the server and what was being done. */
class LdapOperationError extends Error {
  constructor(
    url: string,
    what: string,
    override readonly cause: unknown,
  ) {
    super(`${url}: ${what}: ${describeLdapError(cause)}`);
    this.name = 'LdapOperationError';
  }

  /** The connection died (server restarted, idle connection closed) rather than the server answering. */
  get connectionLost(): boolean {
    return !(this.cause instanceof ResultCodeError) && !/timed out/i.test(String((this.cause as Error | undefined)?.message));
  }
}

/**
 * AD's sub-codes in the diagnostic message of an invalidCredentials answer ("… data 775, v4563"),
 * for accounts that exist but may not sign in.
 */
const AD_REFUSALS: Readonly<Record<string, string>> = {
  '530': 'not permitted to sign in at this time',
  '531': 'not permitted to sign in from this workstation',
  '532': 'password expired',
  '533': 'account disabled',
  '701': 'account expired',
  '773': 'password must be reset',
  '775': 'account locked',
};
/** AD: "no such user" (a direct bind to a name that does not exist). */
const AD_NO_SUCH_USER = '525';

export class LdapAuthenticator implements Authenticator {
  readonly kind = 'ldap';
  readonly #config: LdapConfig;
  readonly #log: Logger;
  readonly #connector: LdapConnector;
  readonly #service: { readonly dn: string; readonly password: string } | undefined;
  /** The attributes read from a user's entry. */
  readonly #attributes: readonly string[];
  readonly #disabledFilter: Filter | undefined;
  /** The attribute userFilter (or userDnTemplate) compares the login with, to return the directory's spelling. */
  readonly #loginAttribute: string | undefined;
  /** The bound service connection, or its opening. */
  #serviceConnection: Promise<LdapConnection> | undefined;
  #serviceOpen: LdapConnection | undefined;
  #closed = false;

  constructor(config: LdapConfig, deps: LdapSourceDeps) {
    this.#config = config;
    this.#log = deps.log.child({ source: 'ldap' });
    this.#connector = new LdapConnector({ urls: config.url, startTls: config.startTls, ca: deps.ca, verifyCertificate: config.verifyCertificate, timeout: config.timeout });
    if (config.bindDn !== undefined) {
      const password = (deps.bindPassword ?? '').replace(/\r?\n$/, '');
      // RFC 4513 §5.1.2: a DN with an empty password is an unauthenticated bind, which
      // "succeeds" with anonymous rights: it must not pass for the service account.
      if (password === '') throw new Error(`auth.ldap.bindPasswordFile is empty: the service account ${config.bindDn} needs its password there`);
      this.#service = { dn: config.bindDn, password };
    }
    if (config.userDnTemplate === undefined && (this.#service === undefined || config.userBase === undefined)) {
      throw new Error('auth.ldap: search-then-bind needs bindDn, bindPasswordFile and userBase (or give userDnTemplate for a direct bind)');
    }
    this.#loginAttribute = loginAttribute(config.userDnTemplate ?? config.userFilter);
    this.#attributes = [...new Set([...config.addressAttributes, config.groupAttribute, USER_ACCOUNT_CONTROL, ...(this.#loginAttribute ? [this.#loginAttribute] : [])])];
    this.#disabledFilter = config.disabledFilter === undefined ? undefined : FilterParser.parseString(config.disabledFilter);
  }

  async authenticate(req: AuthRequest): Promise<AuthOutcome> {
    // RFC 4513 §5.1.2: a bind with an empty password is unauthenticated and "succeeds"; it
    // must never reach the server as this user's sign-in.
    if (req.password === '') return this.#outcome('sign-in', req.username, { ok: false, reason: 'bad_credentials', detail: 'empty password (not sent to the directory)' });
    const template = this.#config.userDnTemplate;
    return this.#answer('sign-in', req.username, () => (template === undefined ? this.#searchThenBind(req) : this.#directBind(req, template)));
  }

  /** The user's entry read by the service account, as a sign-in reads it, without binding as the user. */
  async lookup(req: LookupRequest): Promise<AuthOutcome> {
    return this.#answer('lookup', req.username, () => this.#lookUp(req.username));
  }

  async probe(): Promise<string> {
    let conn: LdapConnection;
    try {
      conn = await this.#connector.open();
    } catch (err) {
      if (!(err instanceof LdapUnreachable)) throw err;
      throw new Error(`no LDAP server reachable: ${err.failures.map((f) => `${f.url}: ${f.error} (${fixFor(f.error)})`).join('; ')}`);
    }
    const before = conn.skipped.length > 0 ? `\n(no answer from ${conn.skipped.map((f) => `${f.url}: ${f.error}`).join('; ')})` : '';
    try {
      if (this.#service === undefined) {
        return `${conn.url}: TLS connection established; direct bind as ${this.#config.userDnTemplate} (no service account: nothing more to check before a sign-in)${before}`;
      }
      try {
        await conn.client.bind(this.#service.dn, this.#service.password);
      } catch (err) {
        throw new Error(`${conn.url}: the service account ${this.#service.dn} could not bind: ${describeLdapError(err)} (check auth.ldap.bindDn and the password in bindPasswordFile)`);
      }
      if (this.#config.userBase === undefined) return `${conn.url}: bound as ${this.#service.dn}${before}`;
      const filter = fillTemplate(this.#config.userFilter, '*');
      const limit = 1000;
      let count: number;
      try {
        count = (await conn.client.search(this.#config.userBase, { scope: 'sub', filter, sizeLimit: limit, attributes: ['1.1'] })).searchEntries.length;
      } catch (err) {
        throw new Error(`${conn.url}: bound as ${this.#service.dn}, but searching userBase ${this.#config.userBase} failed: ${describeLdapError(err)} (check auth.ldap.userBase and that the service account may read it)`);
      }
      return `${conn.url}: bound as ${this.#service.dn}; userBase ${this.#config.userBase} holds ${count >= limit ? `${limit} or more` : count} entries matching ${filter}${before}`;
    } finally {
      await conn.close();
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    const pending = this.#serviceConnection;
    this.#serviceConnection = undefined;
    this.#serviceOpen = undefined;
    const conn = await pending?.catch(() => undefined);
    await conn?.close();
  }

  /**
   * One sign-in or lookup: an empty login is no user, a closed source or a directory that
   * can't be asked is unavailable, and the outcome is logged.
   */
  async #answer(what: Asked, login: string, ask: () => Promise<AuthOutcome>): Promise<AuthOutcome> {
    if (login === '') return this.#outcome(what, login, { ok: false, reason: 'unknown_user', detail: 'empty login' });
    if (this.#closed) return { ok: false, reason: 'unavailable', detail: 'the LDAP source is closed' };
    try {
      return this.#outcome(what, login, await ask());
    } catch (err) {
      const detail = describeLdapError(err);
      this.#log.warn({ user: login, detail }, 'LDAP directory unavailable');
      return { ok: false, reason: 'unavailable', detail };
    }
  }

  async #searchThenBind(req: AuthRequest): Promise<AuthOutcome> {
    const found = await this.#searchUser(req.username, 'bad_credentials');
    if ('refused' in found) return found.refused;
    const bound = await this.#bindAsUser(found.entry.dn, req.password);
    if ('refused' in bound) return bound.refused;
    return this.#decide(req.username, await this.#checkDisabledFilter(found.entry));
  }

  async #directBind(req: AuthRequest, template: string): Promise<AuthOutcome> {
    const dn = userDn(template, req.username);
    const bound = await this.#bindAsUser(dn, req.password, this.#service === undefined ? (conn) => this.#readUser(conn, dn) : undefined);
    if ('refused' in bound) return bound.refused;
    return this.#decide(req.username, bound.facts ?? (await this.#withService((conn) => this.#readUser(conn, dn))));
  }

  /** A sign-in's steps without the user's bind: the service account finds (or reads) the entry. */
  async #lookUp(login: string): Promise<AuthOutcome> {
    const problem = ldapLookupProblem(this.#config);
    if (problem !== undefined) return { ok: false, reason: 'unavailable', detail: problem };
    const template = this.#config.userDnTemplate;
    if (template === undefined) {
      // Refused, not unknown_user: a sign-in ends the chain here too, so no later source may
      // answer for a login this directory can't tell apart.
      const found = await this.#searchUser(login, 'disabled');
      if ('refused' in found) return found.refused;
      return this.#decide(login, await this.#checkDisabledFilter(found.entry));
    }
    const dn = userDn(template, login);
    const facts = await this.#withService((conn) => this.#readUser(conn, dn));
    // A sign-in learns this from its bind (noSuchObject); a lookup from the read.
    if (facts.entry === undefined) return { ok: false, reason: 'unknown_user', detail: `no entry at ${dn}` };
    return this.#decide(login, facts);
  }

  /**
   * The one entry userFilter finds under userBase for the login, searched by the service
   * account. More than one is refused with `ambiguous` (a sign-in's bad_credentials, a
   * lookup's disabled): binding as either, or answering for either, could make one person
   * another.
   */
  async #searchUser(login: string, ambiguous: 'bad_credentials' | 'disabled'): Promise<SearchResult> {
    const base = this.#config.userBase!;
    // RFC 4515 §3: the login is one assertion value, whatever it contains.
    const filter = fillTemplate(this.#config.userFilter, escapeFilterValue(login));
    const entries = await this.#withService((conn) =>
      attempt(conn, `search ${base} for ${filter}`, async () => (await conn.client.search(base, { scope: 'sub', filter, sizeLimit: 2, attributes: [...this.#attributes] })).searchEntries),
    );
    if (entries.length === 0) return { refused: { ok: false, reason: 'unknown_user' } };
    if (entries.length > 1) {
      this.#log.warn({ user: login, filter, dns: entries.map((e) => e.dn) }, 'LDAP userFilter matches more than one entry for this login: refused; make auth.ldap.userFilter match one entry per login');
      return { refused: { ok: false, reason: ambiguous, detail: `${filter} matches more than one entry` } };
    }
    return { entry: entries[0]! };
  }

  /** The entry, and whether it matches disabledFilter (asked of the server by the service account). */
  async #checkDisabledFilter(entry: Entry): Promise<UserFacts> {
    const matchesDisabledFilter = this.#disabledFilter !== undefined && (await this.#withService((conn) => this.#matchesDisabledFilter(conn, entry.dn)));
    return { entry, matchesDisabledFilter };
  }

  #decide(login: string, facts: UserFacts): AuthOutcome {
    if (facts.entry && adAccountDisabled(facts.entry)) return { ok: false, reason: 'disabled', detail: 'userAccountControl has ACCOUNTDISABLE' };
    if (facts.matchesDisabledFilter) return { ok: false, reason: 'disabled', detail: `the entry matches disabledFilter ${this.#config.disabledFilter}` };
    if (facts.entry === undefined) return { ok: true, user: { username: login } };
    const username = (this.#loginAttribute && spelledLogin(facts.entry, this.#loginAttribute, login)) ?? login;
    return { ok: true, user: { username, attributes: directoryAttributes(facts.entry, this.#config) } };
  }

  /**
   * Binds as `dn` on a connection of its own, runs `afterBind` on it while it is bound as the
   * user, and closes it.
   */
  async #bindAsUser(dn: string, password: string, afterBind?: (conn: LdapConnection) => Promise<UserFacts>): Promise<BindResult> {
    const conn = await this.#connector.open();
    try {
      // draft-behera-ldap-password-policy: OpenLDAP's ppolicy says why a bind was refused.
      const policy = new PasswordPolicyControl();
      try {
        await conn.client.bind(dn, password, policy);
      } catch (err) {
        const refused = refusedBind(err, policy.value);
        if (refused) return { refused };
        throw new LdapOperationError(conn.url, `bind as ${dn}`, err);
      }
      const policyRefusal = passwordPolicyRefusal(policy.value);
      if (policyRefusal) return { refused: { ok: false, reason: 'disabled', detail: policyRefusal } };
      return { facts: afterBind ? await afterBind(conn) : undefined };
    } finally {
      await conn.close();
    }
  }

  /** The user's entry (base search on its DN) and whether it matches disabledFilter. */
  async #readUser(conn: LdapConnection, dn: string): Promise<UserFacts> {
    const entry = await attempt(conn, `read ${dn}`, async () => {
      try {
        return (await conn.client.search(dn, { scope: 'base', filter: '(objectClass=*)', attributes: [...this.#attributes] })).searchEntries[0];
      } catch (err) {
        // A template that is no DN (AD's "{user}@corp.example") has no entry to read.
        if (err instanceof NoSuchObjectError || err instanceof InvalidDNSyntaxError) return undefined;
        throw err;
      }
    });
    return { entry, matchesDisabledFilter: entry !== undefined && (await this.#matchesDisabledFilter(conn, dn)) };
  }

  /** Asks the server whether the entry at `dn` matches disabledFilter (a base-scope search with it as the filter). */
  async #matchesDisabledFilter(conn: LdapConnection, dn: string): Promise<boolean> {
    const filter = this.#disabledFilter;
    if (filter === undefined) return false;
    const found = await attempt(conn, `check ${dn} against disabledFilter`, async () => (await conn.client.search(dn, { scope: 'base', filter, attributes: ['1.1'] })).searchEntries);
    return found.length > 0;
  }

  /** Runs `fn` on the bound service connection; once more on a fresh one if the connection was lost. */
  async #withService<T>(fn: (conn: LdapConnection) => Promise<T>): Promise<T> {
    const conn = await this.#boundService();
    try {
      return await fn(conn);
    } catch (err) {
      if (!(err instanceof LdapOperationError && err.connectionLost)) throw err;
      this.#dropService(conn);
      return fn(await this.#boundService());
    }
  }

  async #boundService(): Promise<LdapConnection> {
    this.#serviceConnection ??= this.#openService();
    const conn = await this.#serviceConnection;
    if (conn.client.isBound) return conn;
    // Closed since it was last used (server restart, idle timeout): open a new one.
    this.#dropService(conn);
    this.#serviceConnection ??= this.#openService();
    return this.#serviceConnection;
  }

  #openService(): Promise<LdapConnection> {
    const service = this.#service;
    if (service === undefined) throw new Error('no service account configured');
    const opening = (async () => {
      const conn = await this.#connector.open();
      try {
        await conn.client.bind(service.dn, service.password);
      } catch (err) {
        await conn.close();
        throw new LdapOperationError(conn.url, `bind as the service account ${service.dn}`, err);
      }
      this.#serviceOpen = conn;
      return conn;
    })();
    opening.catch(() => {
      if (this.#serviceConnection === opening) this.#serviceConnection = undefined;
    });
    return opening;
  }

  #dropService(conn: LdapConnection): void {
    if (this.#serviceOpen === conn) {
      this.#serviceConnection = undefined;
      this.#serviceOpen = undefined;
    }
    void conn.close();
  }

  #outcome(what: Asked, login: string, outcome: AuthOutcome): AuthOutcome {
    if (outcome.ok) this.#log.debug({ user: login, addresses: outcome.user.attributes?.addresses.length, groups: outcome.user.attributes?.groups.length }, `LDAP ${what} accepted`);
    // `authResult`, as the session's refusal line names the source's answer.
    else this.#log.debug({ user: login, authResult: outcome.reason, detail: outcome.detail }, `LDAP ${what} refused`);
    return outcome;
  }
}

/** RFC 4514 §2.4: the login is one attribute value of the DN. */
function userDn(template: string, login: string): string {
  return fillTemplate(template, escapeDnValue(login));
}

/** `fn`'s result, or its error wrapped to name the server and the operation. */
async function attempt<T>(conn: LdapConnection, what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new LdapOperationError(conn.url, what, err);
  }
}

/** The outcome of a bind the server refused, or undefined when the refusal is not about the user. */
function refusedBind(err: unknown, policy: PasswordPolicyValue | undefined): AuthOutcome | undefined {
  // The DN came from a template or the server could not parse it: there is no such user.
  if (err instanceof NoSuchObjectError || err instanceof InvalidDNSyntaxError) return { ok: false, reason: 'unknown_user' };
  if (!(err instanceof InvalidCredentialsError)) return undefined;
  const byPolicy = passwordPolicyRefusal(policy);
  if (byPolicy) return { ok: false, reason: 'disabled', detail: byPolicy };
  const ad = /\bdata ([0-9a-f]{3,4})\b/i.exec(err.message)?.[1]?.toLowerCase();
  if (ad === AD_NO_SUCH_USER) return { ok: false, reason: 'unknown_user', detail: 'AD: no such user (data 525)' };
  const adRefusal = ad === undefined ? undefined : AD_REFUSALS[ad];
  if (adRefusal) return { ok: false, reason: 'disabled', detail: `AD: ${adRefusal} (data ${ad})` };
  return { ok: false, reason: 'bad_credentials' };
}

/**
 * A password-policy answer that means the account may not sign in, as a log detail. slapd
 * says "locked" before it looks at the password, so a locked account is `disabled` whatever
 * password was given: the server's decision, not ours.
 */
function passwordPolicyRefusal(policy: PasswordPolicyValue | undefined): string | undefined {
  switch (policy?.error) {
    case PasswordPolicyError.AccountLocked:
      return 'account locked (password policy)';
    case PasswordPolicyError.PasswordExpired:
      return 'password expired (password policy)';
    case PasswordPolicyError.ChangeAfterReset:
      return 'password must be changed after a reset (password policy)';
    default:
      return undefined;
  }
}

/** What to do about a connection failure, for the probe's message. */
function fixFor(error: string): string {
  if (/ALTNAME|does not match certificate|Hostname\/IP/i.test(error)) return 'the certificate does not name this host: use the name it was issued for in auth.ldap.url';
  if (/certificate|CERT_|self.signed|unable to (get|verify)/i.test(error)) return 'set auth.ldap.ca to the CA that issued the directory\'s certificate';
  if (/StartTLS/i.test(error)) return 'the server must offer StartTLS, or use ldaps://';
  return 'check auth.ldap.url and that the server listens there';
}
