/**
 * Dovecot's auth protocols, the pure part (src/auth/dovecot-protocol.ts): tab-escaping, the
 * server's lines, the handshakes, the AUTH and lookup lines and what each reply means.
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import {
  AUTH_MASTER,
  DovecotProtocolError,
  HandshakeReader,
  MASTER_MAX_REQUEST_BYTES,
  MasterHandshakeReader,
  authPlainLine,
  interpretPassLookup,
  interpretReply,
  interpretUserLookup,
  masterLookupLine,
  masterLookupRefusal,
  parseMasterLine,
  parseServerLine,
  tabEscape,
  tabUnescape,
  type AuthReply,
  type MasterAnswer,
  type MasterReply,
} from '../../src/auth/dovecot-protocol.js';

describe('tab-escaping (lib/strescape.c)', () => {
  test('escapes \\001, TAB, CR, LF and NUL with \\001 and a letter', () => {
    expect(tabEscape('a\tb\nc\rd\x01e\0f')).toBe('a\x01tb\x01nc\x01rd\x011e\x010f');
    expect(tabEscape('plain')).toBe('plain');
  });

  test('unescaping gives back any string, and escaped values never hold a TAB or LF', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), (s) => {
        const escaped = tabEscape(s);
        expect(escaped).not.toMatch(/[\t\n\r]/);
        expect(tabUnescape(escaped)).toBe(s);
      }),
    );
  });

  test('\\001 before any other character stands for that character; a trailing \\001 is garbled', () => {
    expect(tabUnescape('a\x01\\b')).toBe('a\\b');
    expect(() => tabUnescape('abc\x01')).toThrow(DovecotProtocolError);
    expect(tabUnescape('\x01\x01')).toBe('\x01');
  });
});

describe('server lines', () => {
  test('OK, FAIL and CANCELLED carry an id and name=value / boolean parameters, unescaped', () => {
    expect(parseServerLine('OK\t7\tuser=al\x01tice\tnologin')).toEqual({ kind: 'OK', id: 7, params: new Map([['user', 'al\tice'], ['nologin', '']]) });
    expect(parseServerLine('FAIL\t4294967295\tcode=temp_fail\treason=a=b')).toEqual({ kind: 'FAIL', id: 4294967295, params: new Map([['code', 'temp_fail'], ['reason', 'a=b']]) });
    expect(parseServerLine('CONT\t3\tc2Vj')).toEqual({ kind: 'CONT', id: 3, data: 'c2Vj' });
  });

  test('an id that is not an unsigned 32-bit number, or an empty line, is a protocol error', () => {
    for (const line of ['OK', 'OK\t', 'OK\t-1', 'OK\t1x', 'OK\t01', 'FAIL\t4294967296', 'CONT\t1', '']) {
      expect(() => parseServerLine(line), JSON.stringify(line)).toThrow(DovecotProtocolError);
    }
  });

  test('an unknown command comes back as such, for the connection to judge', () => {
    expect(parseServerLine('NOTIFY\tx')).toEqual({ kind: 'other', command: 'NOTIFY' });
  });
});

describe('the handshake', () => {
  const feed = (lines: string[]) => {
    const r = new HandshakeReader();
    const done = lines.map((l) => r.accept(parseServerLine(l)));
    return { done, result: r.result() };
  };

  test("Dovecot 2.3's handshake: version, mechanisms with their flags, the auth process's pid", () => {
    const { done, result } = feed(['VERSION\t1\t2', 'MECH\tPLAIN\tplaintext', 'MECH\tlogin\tplaintext', 'SPID\t17297', 'CUID\t1', 'COOKIE\t6beec7e0', 'DONE']);
    expect(done).toEqual([false, false, false, false, false, false, true]);
    expect(result).toEqual({
      version: { major: 1, minor: 2 },
      mechanisms: [
        { name: 'PLAIN', flags: ['plaintext'] },
        { name: 'LOGIN', flags: ['plaintext'] },
      ],
      serverPid: 17297,
    });
  });

  test('unknown handshake lines from a later Dovecot are skipped', () => {
    expect(feed(['VERSION\t1\t4', 'MECH\tPLAIN', 'FEATURES\tx', 'COOKIE\tc', 'DONE']).done.at(-1)).toBe(true);
  });

  test('another major version, VERSION not first, no mechanism, no cookie, or a reply in the handshake is refused', () => {
    expect(() => feed(['VERSION\t2\t0'])).toThrow(/auth protocol 2\.0; smtpgate speaks 1\.x/);
    expect(() => feed(['MECH\tPLAIN'])).toThrow(/expected VERSION first/);
    expect(() => feed(['VERSION\t1\t2', 'COOKIE\tc', 'DONE'])).toThrow(/no mechanisms/);
    expect(() => feed(['VERSION\t1\t2', 'MECH\tPLAIN', 'DONE'])).toThrow(/no COOKIE/);
    expect(() => feed(['VERSION\t1\t2', 'OK\t1'])).toThrow(/OK during the handshake/);
  });
});

describe('the AUTH line', () => {
  const base = { id: 12, service: 'smtp', login: 'alice', password: 'pw', remoteAddress: '2001:db8::7', sessionId: 's1', tls: true };

  test('is PLAIN with the initial response last, and escapes what it carries', () => {
    expect(authPlainLine(base)).toBe(`AUTH\t12\tPLAIN\tservice=smtp\tsecured=tls\tno-penalty\tsession=s1\trip=2001:db8::7\tresp=${Buffer.from('\0alice\0pw').toString('base64')}\n`);
    expect(authPlainLine({ ...base, sessionId: 'x\ny', tls: false, remoteAddress: 'not-an-ip' })).toMatch(/\tsecured\tno-penalty\tsession=x\x01ny\tresp=/);
  });

  test('never carries a NUL in the login or the password', () => {
    expect(() => authPlainLine({ ...base, password: 'a\0b' })).toThrow(/NUL/);
  });
});

describe('what a reply means', () => {
  const reply = (kind: 'OK' | 'FAIL' | 'CANCELLED', line: string, utf8 = true): AuthReply => {
    const parsed = parseServerLine(`${kind}\t1${line}`);
    return { kind, params: (parsed as { params: ReadonlyMap<string, string> }).params, utf8 };
  };
  const cases: [string, AuthReply, string][] = [
    ['OK names the user', reply('OK', '\tuser=alice@corp.test'), 'ok:alice@corp.test'],
    ['OK without user= is the login', reply('OK', ''), 'ok:Login'],
    ['OK with nologin', reply('OK', '\tuser=a\tnologin\treason=moved'), 'disabled'],
    ['OK with nologin and temp', reply('OK', '\tuser=a\tnologin\ttemp'), 'unavailable'],
    ['OK naming the user in bytes that are not UTF-8', reply('OK', '\tuser=a\uFFFD', false), 'unavailable'],
    ['FAIL (wrong password or unknown user)', reply('FAIL', '\tuser=a'), 'bad_credentials'],
    ['FAIL code=temp_fail (2.3)', reply('FAIL', '\tuser=a\tcode=temp_fail'), 'unavailable'],
    ['FAIL temp (2.2)', reply('FAIL', '\ttemp'), 'unavailable'],
    ['FAIL code=user_disabled', reply('FAIL', '\tcode=user_disabled'), 'disabled'],
    ['FAIL code=pass_expired', reply('FAIL', '\tcode=pass_expired'), 'disabled'],
    ['FAIL code=authz_fail', reply('FAIL', '\tcode=authz_fail'), 'bad_credentials'],
    ['FAIL code=invalid_base64', reply('FAIL', '\tcode=invalid_base64'), 'bad_credentials'],
    ['CANCELLED', reply('CANCELLED', ''), 'unavailable'],
    ['CONT', { kind: 'CONT' }, 'bad_credentials'],
  ];
  test.each(cases)('%s', (_name, r, expected) => {
    const o = interpretReply(r, 'Login');
    expect(o.ok ? `ok:${o.user.username}` : o.reason).toBe(expected);
  });

  test("the detail carries Dovecot's code and reason, for the log", () => {
    expect(interpretReply(reply('FAIL', '\tcode=user_disabled\treason=Account locked'), 'a')).toEqual({ ok: false, reason: 'disabled', detail: 'user_disabled: Account locked' });
  });
});

describe('auth-master lines', () => {
  test('PASS keeps the user and the fields that refuse a login; every other field is dropped', () => {
    expect(parseMasterLine('PASS\t3\tuser=al\x01tice\tnologin\treason=moved\ttemp')).toEqual({ kind: 'PASS', id: 3, user: 'al\tice', nologin: true, temp: true, reason: 'moved' });
    const withSecrets = parseMasterLine('PASS\t4\tuser=frank\tproxy\thost=10.0.0.1\tpass=proxy-secret\tpassword={SHA512-CRYPT}$6$salt$hash\t\tx=\x01n');
    expect(withSecrets).toEqual({ kind: 'PASS', id: 4, user: 'frank', nologin: false, temp: false, reason: undefined });
    expect(JSON.stringify(withSecrets)).not.toMatch(/secret|hash|10\.0\.0\.1/);
  });

  test('USER names the user (its userdb fields are dropped, a trailing empty field is fine); NOTFOUND and FAIL carry an id', () => {
    expect(parseMasterLine('USER\t6\talice\t')).toEqual({ kind: 'USER', id: 6, user: 'alice' });
    expect(parseMasterLine('USER\t6\talice\tuid=1000\thome=/home/alice\tmail=maildir:~/Maildir')).toEqual({ kind: 'USER', id: 6, user: 'alice' });
    expect(parseMasterLine('NOTFOUND\t4294967295\textra\tfields=ignored')).toEqual({ kind: 'NOTFOUND', id: 4294967295 });
    expect(parseMasterLine('FAIL\t2')).toEqual({ kind: 'FAIL', id: 2, reason: undefined });
    expect(parseMasterLine("FAIL\t2\treason=Configured passdbs don't support credentials lookups\tpass=x")).toEqual({ kind: 'FAIL', id: 2, reason: "Configured passdbs don't support credentials lookups" });
  });

  test('a reply without a proper id, or a USER without the user, is a protocol error that quotes none of its fields', () => {
    for (const line of ['PASS', 'PASS\tuser=alice\tpass=s3cret-in-place-of-the-id', 'PASS\t\tuser=a', 'USER\t-1\ta', 'NOTFOUND\t01', 'FAIL\t4294967296', 'FAIL\t1x', 'USER\t7', 'USER\t7\t', '']) {
      let message = '';
      try {
        parseMasterLine(line);
      } catch (err) {
        expect(err, JSON.stringify(line)).toBeInstanceOf(DovecotProtocolError);
        message = (err as Error).message;
      }
      expect(message, JSON.stringify(line)).not.toBe('');
      expect(message).not.toContain('s3cret');
    }
  });

  test('after the handshake only replies belong: another command drops the connection, named only when it looks like one', () => {
    expect(() => AUTH_MASTER.reply('LIST\t1\talice', true)).toThrow(/unexpected "LIST" line/);
    expect(() => AUTH_MASTER.reply('SPID\t5', true)).toThrow(/unexpected SPID line/);
    expect(() => AUTH_MASTER.reply('pass=s3cret\tPASS\t1', true)).toThrow(/^an unknown line after the handshake$/);
    expect(AUTH_MASTER.reply('NOTFOUND\t9', false)).toEqual({ id: 9, kind: 'NOTFOUND', reply: { line: { kind: 'NOTFOUND', id: 9 }, utf8: false } });
  });
});

describe('the auth-master handshake', () => {
  const feed = (lines: string[]) => {
    const r = new MasterHandshakeReader();
    return lines.map((l) => r.accept(parseMasterLine(l)));
  };

  test("Dovecot 2.3's handshake is VERSION then SPID, which ends it; unknown lines between are skipped", () => {
    expect(feed(['VERSION\t1\t1', 'SPID\t11709'])).toEqual([undefined, { version: { major: 1, minor: 1 }, serverPid: 11709 }]);
    expect(feed(['VERSION\t1\t4', 'FEATURES\tx', 'SPID\t1']).at(-1)).toEqual({ version: { major: 1, minor: 4 }, serverPid: 1 });
  });

  test('another major version, VERSION not first, or a reply in the handshake is refused', () => {
    expect(() => feed(['VERSION\t2\t0'])).toThrow(/auth-master protocol 2\.0; smtpgate speaks 1\.x/);
    expect(() => feed(['SPID\t1'])).toThrow(/expected VERSION first/);
    expect(() => feed(['VERSION\t1\t1', 'NOTFOUND\t1'])).toThrow(/NOTFOUND during the handshake/);
    expect(() => feed(['VERSION\t1\t1', 'VERSION\t1\t1'])).toThrow(/a second VERSION/);
  });

  test("the auth-client socket's handshake (VERSION, MECH…, SPID) is told apart by its MECH lines", () => {
    expect(() => feed(['VERSION\t1\t2', 'MECH\tPLAIN\tplaintext', 'SPID\t1'])).toThrow(/MECH during the handshake: this is an auth-client socket/);
  });

  test('smtpgate greets with the version Dovecot\'s own lookup client sends', () => {
    expect(AUTH_MASTER.greeting(123)).toBe('VERSION\t1\t0\n');
  });
});

describe('the lookup line', () => {
  const base = { service: 'smtp', login: 'alice', remoteAddress: '::ffff:192.0.2.7', sessionId: 's1' };

  test('names the command, the id and the login, then service, session and the client address; escapes what it carries', () => {
    expect(masterLookupLine({ ...base, id: 5, command: 'PASS' })).toBe('PASS\t5\talice\tservice=smtp\tsession=s1\trip=192.0.2.7\n');
    expect(masterLookupLine({ ...base, id: 6, command: 'USER', login: 'a\tb\nc', sessionId: 'x\ty', remoteAddress: 'not-an-ip' })).toBe('USER\t6\ta\x01tb\x01nc\tservice=smtp\tsession=x\x01ty\n');
  });

  test('a login with a NUL is refused (the server would cut it short), and so is one too long for the 1 KiB request buffer', () => {
    expect(masterLookupRefusal({ ...base, login: 'alice\0bob' })).toMatch(/NUL/);
    expect(() => masterLookupLine({ ...base, id: 1, command: 'PASS', login: 'alice\0bob' })).toThrow(/NUL/);
    expect(masterLookupRefusal(base)).toBeUndefined();
    // The longest that fits, counted in bytes of the escaped login (a TAB takes two).
    const fixed = Buffer.byteLength(masterLookupLine({ ...base, id: 0xffffffff, command: 'PASS', login: '' }));
    const fits = 'a'.repeat(MASTER_MAX_REQUEST_BYTES - fixed);
    expect(masterLookupRefusal({ ...base, login: fits })).toBeUndefined();
    expect(masterLookupRefusal({ ...base, login: `${fits}b` })).toMatch(/1024-byte request limit/);
    expect(masterLookupRefusal({ ...base, login: `${fits.slice(1)}\t` })).toMatch(/1024-byte/);
    expect(masterLookupRefusal({ ...base, login: `${fits.slice(2)}é` })).toBeUndefined();
  });
});

describe('what a lookup reply means', () => {
  const answer = (line: MasterReply, utf8 = true): MasterAnswer => ({ line, utf8 });
  const pass = (fields: Partial<Extract<MasterReply, { kind: 'PASS' }>> = {}): MasterReply => ({ kind: 'PASS', id: 1, user: 'alice', nologin: false, temp: false, reason: undefined, ...fields });
  const said = (o: ReturnType<typeof interpretPassLookup>) => ('askUserdb' in o ? 'ask the userdb' : o.ok ? `ok:${o.user.username}` : o.reason);

  const passCases: [string, MasterAnswer, string][] = [
    ['PASS names the user as the passdb spells it', answer(pass({ user: 'alice@corp.test' })), 'ok:alice@corp.test'],
    ['PASS without user= is the login', answer(pass({ user: undefined })), 'ok:Login'],
    ['PASS with nologin', answer(pass({ nologin: true, reason: 'moved' })), 'disabled'],
    ['PASS with nologin and temp', answer(pass({ nologin: true, temp: true })), 'unavailable'],
    ['PASS naming the user in bytes that are not UTF-8', answer(pass({ user: 'a\uFFFD' }), false), 'unavailable'],
    ['NOTFOUND (unknown, denied, or expired)', answer({ kind: 'NOTFOUND', id: 1 }), 'ask the userdb'],
    ['FAIL', answer({ kind: 'FAIL', id: 1, reason: undefined }), 'unavailable'],
    ['USER to a PASS lookup', answer({ kind: 'USER', id: 1, user: 'alice' }), 'unavailable'],
  ];
  test.each(passCases)('passdb: %s', (_name, a, expected) => {
    expect(said(interpretPassLookup(a, 'Login'))).toBe(expected);
  });

  const userCases: [string, MasterAnswer, string][] = [
    ['the userdb knows the user the passdb refused', answer({ kind: 'USER', id: 1, user: 'erin' }), 'disabled'],
    ['the userdb does not know them either', answer({ kind: 'NOTFOUND', id: 1 }), 'unknown_user'],
    ['the userdb failed', answer({ kind: 'FAIL', id: 1, reason: 'ldap down' }), 'unavailable'],
    ['PASS to a USER lookup', answer(pass()), 'unavailable'],
  ];
  test.each(userCases)('userdb after NOTFOUND: %s', (_name, a, expected) => {
    expect(said(interpretUserLookup(a))).toBe(expected);
  });

  test("the detail carries Dovecot's reason, and says where to look when there is none", () => {
    expect(interpretPassLookup(answer(pass({ nologin: true, reason: 'Account moved' })), 'a')).toEqual({ ok: false, reason: 'disabled', detail: 'nologin: Account moved' });
    expect(interpretPassLookup(answer({ kind: 'FAIL', id: 1, reason: "Configured passdbs don't support credentials lookups" }), 'a')).toEqual({
      ok: false,
      reason: 'unavailable',
      detail: "passdb lookup failed: Configured passdbs don't support credentials lookups",
    });
    expect(interpretPassLookup(answer({ kind: 'FAIL', id: 1, reason: undefined }), 'a')).toMatchObject({ detail: expect.stringMatching(/may not make passdb lookups on this socket/) });
    expect(interpretUserLookup(answer({ kind: 'FAIL', id: 1, reason: 'ldap down' }))).toEqual({ ok: false, reason: 'unavailable', detail: 'userdb lookup failed: ldap down' });
  });
});
