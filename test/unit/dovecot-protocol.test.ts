/**
 * Dovecot's auth-client protocol, the pure part (src/auth/dovecot-protocol.ts): tab-escaping,
 * the server's lines, the handshake, the AUTH line and what each reply means.
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import {
  DovecotProtocolError,
  HandshakeReader,
  authPlainLine,
  interpretReply,
  parseServerLine,
  tabEscape,
  tabUnescape,
  type AuthReply,
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
