/**
 * The app passwords file (auth.credentials) as pure functions: what parses and what is refused
 * (with the line and the fix), formatting that reads back as written, the line-wise edits that
 * `smtpgate credential add|revoke` make, the secrets and their keyed hash, and the checks made
 * at sign-in (expiry, listener, client network).
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import {
  applyCredentialsEdit,
  credentialRefusal,
  formatCredentialLine,
  generateSecret,
  hashSecret,
  appPasswordIn,
  parseCredentialsFile,
  secretMatches,
  type Credential,
} from '../../src/auth/credentials-file.js';

const FILE = '/etc/smtpgate/credentials';
const SECRET_A = generateSecret();
const SECRET_B = generateSecret();
const HASH_A = hashSecret(SECRET_A);
const HASH_B = hashSecret(SECRET_B);

/** The credentials of a file that must parse. */
function parsed(text: string): Credential[] {
  const r = parseCredentialsFile(text, FILE);
  if (!r.ok) throw new Error(`refused: ${JSON.stringify(r.issues)}`);
  return r.credentials.all();
}

/** The issues of a file that must be refused. */
function issuesOf(text: string) {
  const r = parseCredentialsFile(text, FILE);
  if (r.ok) throw new Error('expected the file to be refused');
  return r.issues;
}

describe('parsing', () => {
  test('a line with every option gives the user, label, hash, times, networks and listeners', () => {
    const [c, ...rest] = parsed(
      `alice@corp.example:printer-3rd-floor:${HASH_A}:created=2026-12-07T10:00:00Z expires=2027-12-07T10:00:00Z networks=10.1.3.0/24,192.0.2.7 listeners=submission,smtps\n`,
    );
    expect(rest).toEqual([]);
    expect(c).toMatchObject({ user: 'alice@corp.example', label: 'printer-3rd-floor', hash: HASH_A, networks: ['10.1.3.0/24', '192.0.2.7'], listeners: ['submission', 'smtps'] });
    expect(c!.created?.toISOString()).toBe('2026-12-07T10:00:00.000Z');
    expect(c!.expires?.toISOString()).toBe('2027-12-07T10:00:00.000Z');
    expect(c!.allowed?.has('10.1.3.200')).toBe(true);
    expect(c!.allowed?.has('192.0.2.7')).toBe(true);
    expect(c!.allowed?.has('192.0.2.8')).toBe(false);
  });

  test('a line without options has no restrictions', () => {
    const [c] = parsed(`bob:phone:${HASH_B}\n`);
    expect(c).toEqual({ user: 'bob', label: 'phone', hash: HASH_B });
  });

  test('IPv6 networks keep their colons: the options are everything after the third ":"', () => {
    const [c] = parsed(`alice:laptop:${HASH_A}:networks=2001:db8:3::/48,::1,fe80::/10 listeners=submission\n`);
    expect(c!.networks).toEqual(['2001:db8:3::/48', '::1', 'fe80::/10']);
    expect(c!.listeners).toEqual(['submission']);
    expect(c!.allowed?.has('2001:db8:3:42::7')).toBe(true);
    expect(c!.allowed?.has('2001:db8:4::7')).toBe(false);
  });

  test('a date alone is midnight UTC, and a time with an offset is that instant', () => {
    const [c] = parsed(`alice:laptop:${HASH_A}:created=2026-12-07 expires=2027-01-01T09:30:00+01:00\n`);
    expect(c!.created?.toISOString()).toBe('2026-12-07T00:00:00.000Z');
    expect(c!.expires?.toISOString()).toBe('2027-01-01T08:30:00.000Z');
  });

  test('comments, blank lines and indentation are skipped; each user keeps file order', () => {
    const text = `# app passwords\n\n  alice:phone:${HASH_A}\n# alice:old:${HASH_B}\nbob:phone:${HASH_B}\n\talice:tablet:${HASH_B}\n`;
    expect(parsed(text).map((c) => `${c.user}/${c.label}`)).toEqual(['alice/phone', 'alice/tablet', 'bob/phone']);
  });

  test('a CRLF file parses like an LF one, and its problems are on the same lines', () => {
    const lf = `# x\nalice:phone:${HASH_A}:networks=10.0.0.0/8\nbob:phone:${HASH_B}\n`;
    expect(parsed(lf.replaceAll('\n', '\r\n'))).toEqual(parsed(lf));
    expect(issuesOf(`# x\r\nalice:phone:${HASH_A}\r\nbroken\r\n`)).toMatchObject([{ line: 3 }]);
  });

  test.each([
    ['a line without colons', 'just-a-name', 'expected "USER:LABEL:HASH[:OPTIONS]" (as written by smtpgate credential add)'],
    ['a line with two fields', `alice:${HASH_A}`, 'expected "USER:LABEL:HASH[:OPTIONS]"'],
    ['a user name with a space', `al ice:phone:${HASH_A}`, 'user name "al ice" has characters other than letters, digits and ._%+@-'],
    ['an empty label', `alice::${HASH_A}`, 'label "": use 1-64 letters, digits and ._-'],
    ['a label with a slash', `alice:my/phone:${HASH_A}`, 'label "my/phone": use 1-64 letters, digits and ._-'],
    ['a label of 65 characters', `alice:${'x'.repeat(65)}:${HASH_A}`, 'use 1-64 letters, digits and ._-'],
    ['a bcrypt hash', 'alice:phone:$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234', 'alice/phone: the hash is not an app password hash ($sgap1$…); make credentials with "smtpgate credential add"'],
    ['a secret written where the hash goes', `alice:phone:${SECRET_A}`, 'make credentials with "smtpgate credential add"'],
    ['a hash with a short mac', `alice:phone:${HASH_A.slice(0, -1)}`, 'the hash is not an app password hash'],
    ['an unknown option', `alice:phone:${HASH_A}:network=10.0.0.0/8`, 'alice/phone: unknown option "network"; expected created=, expires=, networks=, listeners='],
    ['an option given twice', `alice:phone:${HASH_A}:listeners=a listeners=b`, 'alice/phone: listeners= is given twice'],
    ['an option without a value', `alice:phone:${HASH_A}:expires=`, 'alice/phone: expires= has no value'],
    ['a bare option word', `alice:phone:${HASH_A}:networks`, 'networks= has no value'],
    ['a time without a zone', `alice:phone:${HASH_A}:expires=2027-01-01T10:00:00`, 'expires=2027-01-01T10:00:00 is not an ISO 8601 time such as 2027-03-07T10:00:00Z'],
    ['a date that does not exist', `alice:phone:${HASH_A}:created=2027-13-01`, 'created=2027-13-01 is not an ISO 8601 time'],
    ['a day the month does not have', `alice:phone:${HASH_A}:expires=2027-02-30T10:00:00Z`, 'expires=2027-02-30T10:00:00Z is not an ISO 8601 time'],
    ['a network that is not one', `alice:phone:${HASH_A}:networks=10.1.3.0/24,10.1.3/24`, 'networks: "10.1.3/24" is not an address or CIDR network (10.1.3.0/24, 2001:db8::/48)'],
    ['a prefix too long for IPv4', `alice:phone:${HASH_A}:networks=10.1.3.0/33`, 'networks: "10.1.3.0/33" is not an address or CIDR network'],
    ['an empty network in the list', `alice:phone:${HASH_A}:networks=10.1.3.0/24,`, 'networks: "" is not an address or CIDR network'],
    ['a listener name with a slash', `alice:phone:${HASH_A}:listeners=smtp/587`, 'listeners: "smtp/587" is not a listener name'],
  ])('%s is refused at its line, saying what to write', (_name, line, message) => {
    const issues = issuesOf(`# app passwords\nbob:phone:${HASH_B}\n${line}\n`);
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatchObject({ file: FILE, line: 3 });
    expect(issues[0]!.message).toContain(message);
  });

  test('the same label twice for one user is refused at the second line; the same label for two users is fine', () => {
    expect(parsed(`alice:phone:${HASH_A}\nbob:phone:${HASH_B}\n`)).toHaveLength(2);
    const issues = issuesOf(`alice:phone:${HASH_A}\nbob:phone:${HASH_B}\nalice:phone:${HASH_B}\n`);
    expect(issues).toEqual([{ file: FILE, path: '', line: 3, message: 'alice has two credentials labelled "phone": labels are unique per user' }]);
  });

  test('every problem of a file is listed, each at its own line', () => {
    const issues = issuesOf(`bad\nalice:phone:${HASH_A}\nalice:phone:${HASH_B}\n\nbob:x:nohash\n`);
    expect(issues.map((i) => i.line)).toEqual([1, 3, 5]);
  });
});

describe('formatting reads back as written (fast-check)', () => {
  const user = fc.stringMatching(/^[A-Za-z0-9._%+@-]{1,128}$/);
  const label = fc.stringMatching(/^[A-Za-z0-9._-]{1,64}$/);
  const hash = fc
    .tuple(fc.stringMatching(/^[A-Za-z0-9_-]{22}$/), fc.stringMatching(/^[A-Za-z0-9_-]{43}$/))
    .map(([salt, mac]) => `$sgap1$${salt}$${mac}`);
  // Whole seconds, as the file keeps times; four-digit years, as ISO 8601 writes them plainly.
  const time = fc.integer({ min: Date.UTC(1970, 0, 1) / 1000, max: Date.UTC(9999, 11, 31) / 1000 }).map((s) => new Date(s * 1000));
  const network = fc.oneof(
    fc.ipV4(),
    fc.tuple(fc.ipV4(), fc.integer({ min: 0, max: 32 })).map(([ip, p]) => `${ip}/${p}`),
    fc.ipV6(),
    fc.tuple(fc.ipV6(), fc.integer({ min: 0, max: 128 })).map(([ip, p]) => `${ip}/${p}`),
  );
  const listener = fc.stringMatching(/^[A-Za-z0-9._-]{1,64}$/);
  const credential = fc.record(
    {
      user,
      label,
      hash,
      created: time,
      expires: time,
      networks: fc.array(network, { minLength: 1, maxLength: 4 }),
      listeners: fc.array(listener, { minLength: 1, maxLength: 3 }),
    },
    { requiredKeys: ['user', 'label', 'hash'] },
  );
  const written = (c: Credential) => ({
    user: c.user,
    label: c.label,
    hash: c.hash,
    created: c.created?.getTime(),
    expires: c.expires?.getTime(),
    networks: c.networks,
    listeners: c.listeners,
  });

  test('one credential: format then parse gives it back', () => {
    fc.assert(
      fc.property(credential, (c) => {
        const back = parsed(formatCredentialLine(c));
        expect(back.map(written)).toEqual([written(c as Credential)]);
      }),
      { numRuns: 300 },
    );
  });

  test('a file of credentials between comments, with LF or CRLF: parse gives every one back, each user in file order', () => {
    fc.assert(
      // Users are told apart without regard to case (as directories match logins), so labels are unique per user in any case.
      fc.property(fc.uniqueArray(credential, { selector: (c) => `${c.user.toLowerCase()}\0${c.label}`, maxLength: 12 }), fc.constantFrom('\n', '\r\n'), (list, eol) => {
        const text = ['# app passwords', ...list.flatMap((c, i) => [formatCredentialLine(c), ...(i % 3 === 0 ? ['', '# a comment'] : [])])].join(eol) + eol;
        const r = parseCredentialsFile(text, FILE);
        expect(r.ok).toBe(true);
        if (!r.ok) return;
        for (const u of new Set(list.map((c) => c.user.toLowerCase()))) {
          expect(r.credentials.of(u).map(written)).toEqual(list.filter((c) => c.user.toLowerCase() === u).map((c) => written(c as Credential)));
        }
        expect(r.credentials.size).toBe(list.length);
      }),
      { numRuns: 100 },
    );
  });
});

describe('edits for smtpgate credential add|revoke', () => {
  const phone = { user: 'alice', label: 'phone', hash: HASH_A, created: new Date('2026-12-07T10:00:00Z') };
  const printer = { user: 'alice', label: 'printer', hash: HASH_B, networks: ['10.1.3.0/24'] };
  const sample = () => `# app passwords\n\n${formatCredentialLine(phone)}\n  # the shared mailbox\nbob:phone:${HASH_B}\n`;

  test('add appends one line and keeps every other byte', () => {
    expect(applyCredentialsEdit(sample(), FILE, { op: 'add', credential: printer })).toEqual({ ok: true, text: `${sample()}${formatCredentialLine(printer)}\n` });
  });

  test('add to an empty (new) file writes one line', () => {
    expect(applyCredentialsEdit('', FILE, { op: 'add', credential: printer })).toEqual({ ok: true, text: `${formatCredentialLine(printer)}\n` });
  });

  test("add ends an unterminated last line first, and follows a CRLF file's line endings", () => {
    const line = formatCredentialLine(phone);
    expect(applyCredentialsEdit(line, FILE, { op: 'add', credential: printer })).toEqual({ ok: true, text: `${line}\n${formatCredentialLine(printer)}\n` });
    expect(applyCredentialsEdit(`# x\r\n${line}\r\n`, FILE, { op: 'add', credential: printer })).toEqual({ ok: true, text: `# x\r\n${line}\r\n${formatCredentialLine(printer)}\r\n` });
  });

  test('revoke drops exactly that line: not a commented-out copy, not another user\'s same label, not a label it is the start of', () => {
    const text = `# alice:phone:${HASH_A}\r\nalice:phone2:${HASH_B}\r\n  alice:phone:${HASH_A}\r\nbob:phone:${HASH_B}\r\nalice:printer:${HASH_B}`;
    expect(applyCredentialsEdit(text, FILE, { op: 'revoke', user: 'alice', label: 'phone' })).toEqual({
      ok: true,
      text: `# alice:phone:${HASH_A}\r\nalice:phone2:${HASH_B}\r\nbob:phone:${HASH_B}\r\nalice:printer:${HASH_B}`,
    });
    expect(applyCredentialsEdit(text, FILE, { op: 'revoke', user: 'alice', label: 'printer' })).toEqual({
      ok: true,
      text: `# alice:phone:${HASH_A}\r\nalice:phone2:${HASH_B}\r\n  alice:phone:${HASH_A}\r\nbob:phone:${HASH_B}\r\n`,
    });
  });

  test('add of a label the user already has is refused, pointing to revoke', () => {
    const r = applyCredentialsEdit(sample(), FILE, { op: 'add', credential: { ...printer, label: 'phone' } });
    expect(r).toMatchObject({ ok: false });
    expect(!r.ok && r.message).toBe('alice already has a credential labelled phone; revoke it first (smtpgate credential revoke alice phone) or choose another label');
  });

  test('revoke of a label the user does not have is refused, pointing to list', () => {
    const r = applyCredentialsEdit(sample(), FILE, { op: 'revoke', user: 'bob', label: 'printer' });
    expect(!r.ok && r.message).toBe(`bob has no credential labelled printer in ${FILE}; see smtpgate credential list bob`);
  });

  test('an invalid user name or label is refused before the file is read', () => {
    expect(applyCredentialsEdit('garbage', FILE, { op: 'revoke', user: 'al:ice', label: 'phone' })).toMatchObject({ ok: false, message: expect.stringContaining('user name "al:ice" is not valid') });
    expect(applyCredentialsEdit('garbage', FILE, { op: 'revoke', user: 'alice', label: 'my phone' })).toMatchObject({ ok: false, message: expect.stringContaining('label "my phone" is not valid') });
  });

  test('a file with any problem is refused with its issues, whatever the edit', () => {
    const text = `${formatCredentialLine(phone)}\nalice:tablet:$2b$12$notours\n`;
    for (const edit of [
      { op: 'add', credential: printer },
      { op: 'revoke', user: 'alice', label: 'phone' },
    ] as const) {
      const r = applyCredentialsEdit(text, FILE, edit);
      expect(r).toMatchObject({ ok: false, message: `${FILE} has 1 problem; fix it first (nothing was changed):`, issues: [{ file: FILE, line: 2 }] });
    }
  });
});

describe('secrets and their hash', () => {
  test('a secret is "sgap" and 26 base32 characters, and looks like an app password', () => {
    for (let i = 0; i < 200; i++) {
      const s = generateSecret();
      expect(s).toMatch(/^sgap[a-z2-7]{26}$/);
      expect(appPasswordIn(s)).toBe(s);
    }
  });

  test('secrets do not repeat', () => {
    const seen = new Set(Array.from({ length: 10_000 }, generateSecret));
    expect(seen.size).toBe(10_000);
  });

  test.each([
    ['an ordinary password', 'correct horse battery staple'],
    ['the prefix alone', 'sgap'],
    ['one character short', SECRET_A.slice(0, -1)],
    ['one character long', `${SECRET_A}a`],
    ['a digit outside base32', `sgap${'a'.repeat(25)}1`],
    ['another prefix', `sgaq${SECRET_A.slice(4)}`],
    ['a space inside', `${SECRET_A.slice(0, 10)} ${SECRET_A.slice(10)}`],
  ])('%s does not look like an app password', (_name, password) => {
    expect(appPasswordIn(password)).toBeUndefined();
  });

  test.each([
    ['upper case (a device that capitalises)', SECRET_A.toUpperCase()],
    ['surrounding space', ` ${SECRET_A} `],
    ['a trailing newline pasted in', `${SECRET_A}\t`],
  ])('%s is still that app password (so it never reaches the account source)', (_name, password) => {
    expect(appPasswordIn(password)).toBe(SECRET_A);
  });

  test('a hash matches its secret and no other; the same secret hashed twice gives two hashes (fresh salt)', () => {
    expect(HASH_A).toMatch(/^\$sgap1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/);
    expect(secretMatches(SECRET_A, HASH_A)).toBe(true);
    expect(secretMatches(SECRET_B, HASH_A)).toBe(false);
    expect(secretMatches(SECRET_A.slice(0, -1), HASH_A)).toBe(false);
    const again = hashSecret(SECRET_A);
    expect(again).not.toBe(HASH_A);
    expect(secretMatches(SECRET_A, again)).toBe(true);
  });

  test('a garbled hash matches nothing and does not throw', () => {
    const [, , salt, mac] = HASH_A.split('$');
    const flipped = `${mac!.slice(0, 10)}${mac![10] === 'A' ? 'B' : 'A'}${mac!.slice(11)}`;
    for (const garbled of [`$sgap1$${salt}$${flipped}`, `$sgap1$${salt}$`, `$sgap2$${salt}$${mac}`, '', 'not a hash', `$sgap1$${salt}$${mac}x`]) {
      expect(secretMatches(SECRET_A, garbled)).toBe(false);
    }
  });

  test("an index matches a user's secret to the credential it belongs to, and only that user's", () => {
    const r = parseCredentialsFile(`alice:phone:${HASH_A}\nalice:tablet:${HASH_B}\nbob:phone:${HASH_A}\n`, FILE);
    expect(r.ok && r.credentials.match('alice', SECRET_B)?.label).toBe('tablet');
    expect(r.ok && r.credentials.match('alice', SECRET_A)?.label).toBe('phone');
    expect(r.ok && r.credentials.match('carol', SECRET_A)).toBeUndefined();
    expect(r.ok && r.credentials.match('bob', SECRET_B)).toBeUndefined();
  });
});

describe('checks at sign-in (credentialRefusal)', () => {
  const expires = new Date('2027-01-01T00:00:00Z');
  const [scoped] = parsed(`alice:printer:${HASH_A}:expires=2027-01-01T00:00:00Z networks=10.1.3.0/24,2001:db8:3::/48 listeners=submission\n`);
  const before = new Date(expires.getTime() - 1);
  const at = (remoteAddress: string, listener = 'submission', now = before) => credentialRefusal(scoped!, { remoteAddress, listener, now });

  test('allowed from inside its networks on its listener before it expires', () => {
    expect(at('10.1.3.7')).toBeUndefined();
    expect(at('2001:db8:3::7')).toBeUndefined();
  });

  test('refused from the very instant it expires, not a millisecond before', () => {
    expect(at('10.1.3.7', 'submission', before)).toBeUndefined();
    expect(at('10.1.3.7', 'submission', expires)).toBe('app password printer expired at 2027-01-01T00:00:00Z');
  });

  test('refused on another listener, naming the ones it is for', () => {
    expect(at('10.1.3.7', 'smtps')).toBe('app password printer is not for listener smtps (only submission)');
  });

  test('refused from outside its networks, IPv4 and IPv6 alike', () => {
    expect(at('10.1.4.7')).toBe('app password printer is not for client 10.1.4.7 (only 10.1.3.0/24, 2001:db8:3::/48)');
    expect(at('2001:db8:4::7')).toMatch(/is not for client 2001:db8:4::7/);
  });

  test('an IPv4 client seen on a dual-stack socket (::ffff:10.1.3.7) is matched as its IPv4 address', () => {
    expect(at('::ffff:10.1.3.7')).toBeUndefined();
    expect(at('::ffff:10.1.4.7')).toMatch(/is not for client ::ffff:10.1.4.7/);
  });

  test('a credential without restrictions is allowed from anywhere, on any listener, at any time', () => {
    const [open] = parsed(`alice:phone:${HASH_A}\n`);
    expect(credentialRefusal(open!, { remoteAddress: '203.0.113.9', listener: 'smtps', now: new Date('2999-01-01T00:00:00Z') })).toBeUndefined();
  });
});
