/**
 * What data rules see: the header block, RFC 2047/2231 decoding, From: addresses, and the
 * streaming attachment scanner (nested multiparts, attached messages, chunks split anywhere,
 * and limits that hold whatever the client sends).
 */
import fc from 'fast-check';
import { buildHeaderValue, encodeWord, quoteString } from 'nodemailer/lib/mime-funcs';
import { describe, expect, test } from 'vitest';
import { parseAddressList } from '../../src/policy/addresses.js';
import { MessageScanner, decodeEncodedWords, normalizeFilename, parseHeaderBlock, parseStructuredValue, scanMessage } from '../../src/policy/mime.js';

const crlf = (s: string) => Buffer.from(s.replace(/\r?\n/g, '\r\n'));

describe('parseHeaderBlock', () => {
  test('unfolds folded fields, lower-cases names, trims values and stops at the blank line', () => {
    const buf = crlf('Subject: a long\n  subject line\nX-Mailer:\tTool\n\tv2\nFROM : Alice <a@corp.example>\n\nbody: not a header\n');
    const block = parseHeaderBlock(buf);
    expect(block.complete).toBe(true);
    expect(block.truncated).toBe(false);
    expect(block.headers.map((h) => [h.name, h.value])).toEqual([
      ['subject', 'a long  subject line'],
      ['x-mailer', 'Tool\tv2'],
      ['from', 'Alice <a@corp.example>'],
    ]);
    expect(buf.subarray(block.bodyOffset).toString()).toBe('body: not a header\r\n');
  });

  test('accepts bare LF line endings', () => {
    const block = parseHeaderBlock(Buffer.from('A: 1\nB: 2\n\nbody'));
    expect(block.headers.map((h) => h.name)).toEqual(['a', 'b']);
    expect(block.bodyOffset).toBe(11);
  });

  test('decodes RFC 2047 encoded-words into `decoded`, keeping the raw value', () => {
    const [h] = parseHeaderBlock(crlf('Subject: =?UTF-8?B?UmVjaG51bmc=?= =?ISO-8859-1?Q?f=FCr_M=E4rz?=\n\n')).headers;
    expect(h).toEqual({ name: 'subject', value: '=?UTF-8?B?UmVjaG51bmc=?= =?ISO-8859-1?Q?f=FCr_M=E4rz?=', decoded: 'Rechnungfür März' });
  });

  test('keeps UTF-8 header values (RFC 6532)', () => {
    expect(parseHeaderBlock(Buffer.from('Subject: Grüße\r\n\r\n')).headers[0]!.value).toBe('Grüße');
  });

  test('skips lines that are not header fields instead of ending the block there', () => {
    const block = parseHeaderBlock(crlf('From: a@b.example\nthis is junk\nX-Mailer: hidden\n\n'));
    expect(block.headers.map((h) => h.name)).toEqual(['from', 'x-mailer']);
  });

  test('an unterminated block is reported as incomplete', () => {
    const block = parseHeaderBlock(crlf('From: a@b.example\nSubject: x'));
    expect(block.complete).toBe(false);
    expect(block.headers.map((h) => h.name)).toEqual(['from', 'subject']);
  });

  test('stops at the header count limit and says so', () => {
    const text = Array.from({ length: 50 }, (_, i) => `X-H${i}: v`).join('\n') + '\n\n';
    const block = parseHeaderBlock(crlf(text), { maxHeaders: 10, maxBytes: 1_000_000 });
    expect(block.truncated).toBe(true);
    expect(block.complete).toBe(false);
    expect(block.headers).toHaveLength(10);
  });

  test('stops at the byte limit, also inside one endlessly folded field', () => {
    const text = 'Subject: start\n' + ' more\n'.repeat(10_000) + '\n';
    const block = parseHeaderBlock(crlf(text), { maxHeaders: 100, maxBytes: 4096 });
    expect(block.truncated).toBe(true);
    expect(block.headers[0]!.value.length).toBeLessThan(4096);
  });
});

describe('encoded words and parameters', () => {
  test('decodes B and Q words, drops the space between adjacent words, and joins a character split across them', () => {
    expect(decodeEncodedWords('=?utf-8?q?caf=C3?= =?utf-8?q?=A9.exe?=')).toBe('café.exe');
    expect(decodeEncodedWords('Re: =?utf-8?b?w6k=?= ok')).toBe('Re: é ok');
    expect(decodeEncodedWords('plain text')).toBe('plain text');
  });

  test('an unknown charset still shows the bytes', () => {
    expect(decodeEncodedWords('=?x-unknown?q?evil.exe?=')).toBe('evil.exe');
  });

  test('RFC 2231: charset, percent-encoding and continuations', () => {
    expect(parseStructuredValue("attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf").params.get('filename')).toEqual(['résumé.pdf']);
    expect(parseStructuredValue('attachment; filename*0="very long "; filename*1="name.exe"').params.get('filename')).toEqual(['very long name.exe']);
    expect(parseStructuredValue("attachment; filename*0*=utf-8''%E2%82; filename*1*=%AC.exe").params.get('filename')).toEqual(['€.exe']);
    expect(parseStructuredValue("attachment; filename*=iso-8859-1'de'M%E4rz.xls").params.get('filename')).toEqual(['März.xls']);
  });

  test('keeps both the plain and the extended value when a sender gives both', () => {
    expect(parseStructuredValue("attachment; filename=\"invoice.pdf\"; filename*=utf-8''invoice.exe").params.get('filename')).toEqual(['invoice.pdf', 'invoice.exe']);
  });

  test('quoted values with ; and comments, and RFC 2047 words inside quotes', () => {
    const v = parseStructuredValue('Application/Octet-Stream (binary); name="a;b.txt" (the file); x=1');
    expect(v.value).toBe('application/octet-stream');
    expect(v.params.get('name')).toEqual(['a;b.txt']);
    expect(parseStructuredValue('application/x-foo; name="=?UTF-8?B?cmVwb3J0LmV4ZQ==?="').params.get('name')).toEqual(['report.exe']);
  });

  test('a repeated name keeps every reading: first-wins and last-wins readers see different files', () => {
    expect(parseStructuredValue('attachment; filename="invoice.pdf"; filename="invoice.exe"').params.get('filename')).toEqual(['invoice.pdf', 'invoice.exe']);
    expect(parseStructuredValue("attachment; filename*=utf-8''invoice.exe; filename=invoice.pdf").params.get('filename')).toEqual(['invoice.pdf', 'invoice.exe']);
    expect(parseStructuredValue("attachment; filename*0*=utf-8''a.pdf; filename*0*=utf-8''b.e; filename*1=xe").params.get('filename')).toEqual(['a.pdfxe', 'b.exe']);
  });

  test('RFC 2231 continuations in mixed case, folded, out of order, with a plain decoy', () => {
    const header = 'Content-Disposition: attachment;\r\n FILENAME*1*=%2Eexe;\r\n\tfilename="report.pdf";\r\n FileName*0*=utf-8\'\'r%C3%A9sum%C3%A9';
    const scan = scanMessage(crlf(`Content-Type: application/octet-stream\n${header}\n\nMZ\n`));
    expect(scan.attachments[0]!.filenames).toEqual(['report.pdf', 'résumé.exe']);
  });

  test('RFC 2047 words hidden in an RFC 2231 value are decoded too, and the literal form kept', () => {
    expect(parseStructuredValue("attachment; filename*=utf-8''%3D%3Futf-8%3FB%3FZXZpbC5leGU%3D%3F%3D").params.get('filename')).toEqual(['=?utf-8?B?ZXZpbC5leGU=?=', 'evil.exe']);
  });

  test('a name repeated more often than the scan reads makes the scan incomplete', () => {
    const many = Array.from({ length: 12 }, (_, i) => `filename=f${i}.txt`).join('; ');
    expect(parseStructuredValue(`attachment; ${many}`).incomplete).toBe(true);
    const scan = scanMessage(crlf(`Content-Disposition: attachment; ${many}\n\nx\n`));
    expect(scan.incomplete).toBe(true);
    expect(scan.problems).toContain('a MIME parameter repeated more often than the scan reads');
  });

  test('property: any file name nodemailer encodes (RFC 2231, folded, names in any case) is found by the scanner', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', minLength: 1, maxLength: 60 }), fc.array(fc.boolean(), { minLength: 8, maxLength: 8 }), (name, upper) => {
        fc.pre(normalizeFilename(name) !== '');
        let i = 0;
        const value = buildHeaderValue({ value: 'attachment', params: { filename: name } })
          .replace(/filename/gi, (k) => (upper[i++ % upper.length] ? k.toUpperCase() : k))
          .replace(/; /g, ';\r\n ');
        const scan = scanMessage(`Content-Type: application/octet-stream\r\nContent-Disposition: ${value}\r\n\r\nx\r\n`);
        expect(scan.attachments[0]!.filenames).toContain(normalizeFilename(name));
      }),
    );
  });

  test('file names lose folders, control characters and the trailing dots Windows ignores', () => {
    expect(normalizeFilename('C:\\Users\\x\\evil.exe. . ')).toBe('evil.exe');
    expect(normalizeFilename('../../etc/passwd')).toBe('passwd');
    expect(normalizeFilename('a\u0000b.exe')).toBe('ab.exe');
  });
});

describe('parseAddressList', () => {
  test('takes addresses out of display names, comments and groups', () => {
    expect(parseAddressList('"Doe, John" <John@Corp.Example>, bob@corp.example (Bob)').addresses).toEqual(['john@corp.example', 'bob@corp.example']);
    expect(parseAddressList('Team: a@corp.example, b@corp.example;').addresses).toEqual(['a@corp.example', 'b@corp.example']);
    expect(parseAddressList('"alice"@corp.example').addresses).toEqual(['alice@corp.example']);
    expect(parseAddressList('<@relay.example:ceo@corp.example>').addresses).toEqual(['ceo@corp.example']);
  });

  test('a display name that only repeats the address passes, as many mail clients write it', () => {
    expect(parseAddressList('"Alice@Corp.Example" <alice@corp.example>')).toEqual({ addresses: ['alice@corp.example'], invalid: [] });
    expect(parseAddressList(`"'alice@corp.example'" <alice@corp.example>`)).toEqual({ addresses: ['alice@corp.example'], invalid: [] });
  });

  test('entries that are not addresses are reported', () => {
    expect(parseAddressList('undisclosed').invalid).toEqual([{ text: 'undisclosed', reason: 'no address' }]);
    expect(parseAddressList('Name <>').invalid).toEqual([{ text: 'Name', reason: 'no address' }]);
    expect(parseAddressList('<>').invalid).toEqual([{ text: '<>', reason: 'no address' }]);
  });
});

/**
 * Where smtpgate is stricter than addressparser, which never throws and guesses on garbage:
 * each guess that could show a reader another address than the one checked is refused.
 */
describe('parseAddressList refuses what a reader could show as another address', () => {
  const refused = (value: string, reason: string) => {
    const list = parseAddressList(value);
    expect(list.invalid.map((i) => i.reason), value).toContain(reason);
  };

  test('an encoded-word never produces an address (RFC 2047 §5), alone or inside an addr-spec', () => {
    expect(parseAddressList('=?utf-8?B?YWxpY2VAY29ycC5leGFtcGxl?=')).toEqual({ addresses: [], invalid: [{ text: '=?utf-8?B?YWxpY2VAY29ycC5leGFtcGxl?=', reason: 'no address' }] });
    refused('=?utf-8?Q?alice=40corp.example?=', 'no address');
    refused('=?utf-8?Q?alice@corp.example?=', 'an encoded-word in the address');
    refused('=?utf-8?Q?ceo?=@corp.example', 'an encoded-word in the address');
    refused('Alice <=?utf-8?Q?ceo?=@corp.example>', 'an encoded-word in the address');
  });

  test('a display name holding another address, raw or encoded, is refused (the display-name spoof)', () => {
    refused('"ceo@corp.example" <alice@corp.example>', 'another address in the display name');
    refused('ceo@corp.example <alice@corp.example>', 'another address in the display name');
    refused('=?utf-8?B?Y2VvQGNvcnAuZXhhbXBsZQ==?= <alice@corp.example>', 'another address in the display name');
    refused('"=?utf-8?Q?ceo=40corp.example?=" <alice@corp.example>', 'another address in the display name');
  });

  test('two addresses in one entry, where addressparser takes the first and calls the rest a name', () => {
    refused('alice@corp.example ceo@corp.example', 'another address in the display name');
    refused('<alice@corp.example> ceo@corp.example', 'another address in the display name');
    refused('Alice <alice@corp.example> <ceo@corp.example>', 'another address in the display name');
  });

  test('group names are display names too; an empty group has no address', () => {
    refused('ceo@corp.example: alice@corp.example;', 'an address in the group name');
    expect(parseAddressList('Team:;')).toEqual({ addresses: [], invalid: [] });
    expect(parseAddressList('Team: a@corp.example;, b@corp.example').addresses).toEqual(['a@corp.example', 'b@corp.example']);
  });

  test('malformed addresses fail closed: two "@", a needed quoted local part, a control character', () => {
    refused('alice@corp.example@evil.example', 'not an address');
    refused('"a b"@corp.example', 'not an address');
    refused('alice@corp.example\u0000.evil.example', 'a control character');
    refused('alice@corp.example\rFrom: ceo@corp.example', 'a control character');
  });

  test('a comment can hide no entry: commas in it do not split the list (RFC 5322 §3.2.2)', () => {
    // A backslash outside a quoted-string or comment escapes nothing, so "\(" still opens one.
    expect(parseAddressList('Alice \\(Sales, EMEA) <alice@corp.example>')).toEqual({ addresses: ['alice@corp.example'], invalid: [] });
    expect(parseAddressList('alice@corp.example \\(first, second)').addresses).toEqual(['alice@corp.example']);
    expect(parseAddressList('"Smith \\" (not a comment), Bob" <bob@corp.example>')).toEqual({ addresses: ['bob@corp.example'], invalid: [] });
    expect(parseAddressList('Alice <alice@corp.example> (x, y@evil.example)')).toEqual({ addresses: ['alice@corp.example'], invalid: [] });
  });

  test('a comment that stands in for the display name and holds an address is refused', () => {
    refused('(a \\) b, c@evil.example) alice@corp.example', 'another address in the display name');
    refused('(outer (inner, x@evil.example) still, y@evil.example) alice@corp.example', 'another address in the display name');
  });

  test('property: no display name, however encoded, makes an address out of anything but the mailbox', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 40 }), fc.constantFrom('Q', 'B', 'quoted'), (name, how) => {
        const shown = how === 'quoted' ? quoteString(name) : encodeWord(name, how);
        const list = parseAddressList(`${shown} <alice@corp.example>`);
        expect(list.addresses.every((a) => a === 'alice@corp.example')).toBe(true);
        expect(list.addresses.length + list.invalid.length).toBeGreaterThan(0);
      }),
    );
  });

  test('property: an encoded-word alone is never an address, whatever it decodes to', () => {
    fc.assert(
      fc.property(fc.oneof(fc.emailAddress(), fc.string()), fc.constantFrom('Q', 'B'), (text, how) => {
        expect(parseAddressList(encodeWord(text, how)).addresses).toEqual([]);
      }),
    );
  });
});

describe('comments in Content-Type and Content-Disposition', () => {
  test('a comment is dropped, a ";" in it splits nothing, quoted-pairs in quoted-strings are kept', () => {
    const v = parseStructuredValue('text/plain (x \\( y; name=a.exe); charset=us-ascii');
    expect(v.params.get('name')).toBeUndefined();
    expect(v.params.get('charset')).toEqual(['us-ascii']);
    expect(parseStructuredValue('attachment; filename="a \\" (b).pdf"').params.get('filename')).toEqual(['a " (b).pdf']);
  });

  test('where the two readers disagree on a stray backslash, both readings are kept', () => {
    // nodemailer takes "\(" outside quotes as a comment, libmime as text; a rule sees both.
    const v = parseStructuredValue('text/plain \\(a; name=evil.exe); charset=utf-8');
    expect(v.params.get('charset')).toEqual(['utf-8']);
    expect(v.params.get('name')).toEqual(['evil.exe)']);
  });
});

/** A realistic message: mixed → (alternative → text, html), a PDF, an RFC 2231 .exe, an attached message with its own .js. */
const REALISTIC = crlf(`Return-Path: <alice@corp.example>
From: Alice <alice@corp.example>
To: bob@example.net
Subject: =?UTF-8?Q?Quartalsbericht_f=C3=BCr_Q1?=
MIME-Version: 1.0
Content-Type: multipart/mixed;
 boundary="==outer=="

This is a multi-part message in MIME format.
--==outer==
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain; charset=utf-8

Hello Bob,
--inner
Content-Type: text/html; charset=utf-8

<p>Hello Bob,</p>
--inner--

--==outer==
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQKJcfs
--==outer==
Content-Type: application/octet-stream
Content-Disposition: attachment;
 filename*0*=utf-8''Rechnung%20M%C3%A4rz;
 filename*1*=.pdf.exe
Content-Transfer-Encoding: base64

TVqQAAMAAAAEAAAA
--==outer==
Content-Type: message/rfc822
Content-Disposition: attachment; filename="fwd.eml"

From: someone@example.org
Subject: fwd
Content-Type: multipart/mixed; boundary="nested"

--nested
Content-Type: text/plain

inner text
--nested
Content-Type: application/javascript; name="=?utf-8?B?aW52b2ljZS5qcw==?="

alert(1)
--nested--

--==outer==--
epilogue
`);

const REALISTIC_PARTS = [
  { contentType: 'text/plain', filenames: [], depth: 2 },
  { contentType: 'text/html', filenames: [], depth: 2 },
  { contentType: 'application/pdf', filenames: ['report.pdf'], disposition: 'attachment', depth: 1 },
  { contentType: 'application/octet-stream', filenames: ['Rechnung März.pdf.exe'], disposition: 'attachment', depth: 1 },
  { contentType: 'message/rfc822', filenames: ['fwd.eml'], disposition: 'attachment', depth: 1 },
  { contentType: 'text/plain', filenames: [], depth: 3 },
  { contentType: 'application/javascript', filenames: ['invoice.js'], depth: 3 },
];

describe('MessageScanner', () => {
  test('finds every leaf part of a nested multipart with names decoded, and the top-level headers', () => {
    const scan = scanMessage(REALISTIC);
    expect(scan.attachments).toEqual(REALISTIC_PARTS);
    expect(scan.headersComplete).toBe(true);
    expect(scan.headers.find((h) => h.name === 'subject')!.decoded).toBe('Quartalsbericht für Q1');
    expect(scan.headers.map((h) => h.name)).toEqual(['return-path', 'from', 'to', 'subject', 'mime-version', 'content-type']);
    expect(scan.size).toBe(REALISTIC.length);
    expect(scan.incomplete).toBe(false);
  });

  test('gives the same result however the message is cut into chunks', () => {
    const small = crlf(`From: a@corp.example
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain

hi
--b
Content-Type: application/octet-stream; name="x.exe"
Content-Disposition: attachment; filename*=utf-8''y%2Ejs

AAAA
--b--
`);
    const whole = scanMessage(small);
    expect(whole.attachments.map((a) => a.filenames)).toEqual([[], ['y.js', 'x.exe']]);
    for (let cut = 0; cut <= small.length; cut++) {
      const s = new MessageScanner();
      s.write(small.subarray(0, cut));
      s.write(small.subarray(cut));
      expect(s.end(), `cut at ${cut}`).toEqual(whole);
    }
    const bytewise = new MessageScanner();
    for (let i = 0; i < small.length; i++) bytewise.write(small.subarray(i, i + 1));
    expect(bytewise.end()).toEqual(whole);
  });

  test('the realistic message scanned byte by byte and in 7-byte chunks gives the same parts', () => {
    for (const size of [1, 7, 64]) {
      const s = new MessageScanner();
      for (let i = 0; i < REALISTIC.length; i += size) s.write(REALISTIC.subarray(i, i + size));
      expect(s.end().attachments, `chunks of ${size}`).toEqual(REALISTIC_PARTS);
    }
  });

  test('the top-level headers are available as soon as their blank line arrives', () => {
    const s = new MessageScanner();
    s.write('From: a@corp.example\r\nSubject: x\r\n');
    expect(s.headersDone).toBe(false);
    s.write('\r\nbody');
    expect(s.headersDone).toBe(true);
    expect(s.headers.map((h) => h.name)).toEqual(['from', 'subject']);
  });

  test('a single-part message is one text/plain part; a Content-Type name makes it an attachment', () => {
    expect(scanMessage(crlf('Subject: x\n\nhello\n')).attachments).toEqual([{ contentType: 'text/plain', filenames: [], depth: 0 }]);
    expect(scanMessage(crlf('Content-Type: application/x-msdownload; name=setup.exe\n\nMZ\n')).attachments).toEqual([
      { contentType: 'application/x-msdownload', filenames: ['setup.exe'], depth: 0 },
    ]);
  });

  test('a disposition filename and a different Content-Type name are both reported', () => {
    const scan = scanMessage(crlf('Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: application/pdf; name="evil.exe"\nContent-Disposition: attachment; filename="nice.pdf"\n\nx\n--b--\n'));
    expect(scan.attachments[0]!.filenames).toEqual(['nice.pdf', 'evil.exe']);
  });

  test('a boundary line with trailing junk still starts a part, as lenient mail readers take it', () => {
    const scan = scanMessage(crlf('Content-Type: multipart/mixed; boundary=b\n\n--b  junk\nContent-Type: text/plain\n\nx\n--bXYZ\nContent-Disposition: attachment; filename=a.exe\n\ny\n--b--\n'));
    expect(scan.attachments.map((a) => a.filenames)).toEqual([[], ['a.exe']]);
  });

  test('an attached message in base64 is not opened (its text is not readable while streaming)', () => {
    const scan = scanMessage(crlf('Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nQ29udGVudC1UeXBlOiB0ZXh0L3BsYWlu\n--b--\n'));
    expect(scan.attachments).toEqual([{ contentType: 'message/rfc822', filenames: [], depth: 1 }]);
  });

  test('a huge body line without line breaks costs no memory beyond the line limit', () => {
    const s = new MessageScanner({ maxLineBytes: 1024 });
    s.write(crlf('Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n'));
    const junk = Buffer.alloc(1024 * 1024, 0x41);
    for (let i = 0; i < 20; i++) s.write(junk);
    s.write(crlf('\n--b\nContent-Disposition: attachment; filename=late.exe\n\nx\n--b--\n'));
    const r = s.end();
    expect(r.attachments.map((a) => a.filenames)).toEqual([[], ['late.exe']]);
    expect(r.incomplete).toBe(false);
  });

  test('more parts than the limit: the rest is not recorded and the scan is incomplete', () => {
    const parts = Array.from({ length: 20 }, (_, i) => `--b\nContent-Disposition: attachment; filename=f${i}.txt\n\nx\n`).join('');
    const scan = scanMessage(crlf(`Content-Type: multipart/mixed; boundary=b\n\n${parts}--b--\n`), { maxParts: 5 });
    expect(scan.attachments).toHaveLength(5);
    expect(scan.incomplete).toBe(true);
    expect(scan.problems).toContain('more MIME parts than the scan limit');
  });

  test('nesting deeper than the limit makes the scan incomplete', () => {
    let body = '--b9\nContent-Disposition: attachment; filename=deep.exe\n\nx\n--b9--\n';
    for (let i = 9; i >= 1; i--) body = `--b${i - 1}\nContent-Type: multipart/mixed; boundary=b${i}\n\n${body}--b${i - 1}--\n`;
    const message = crlf(`Content-Type: multipart/mixed; boundary=b0\n\n${body}`);
    expect(scanMessage(message).attachments.map((a) => a.filenames)).toEqual([['deep.exe']]);
    const limited = scanMessage(message, { maxDepth: 4 });
    expect(limited.incomplete).toBe(true);
    expect(limited.problems).toContain('MIME nesting deeper than the scan limit');
  });

  test('an oversized part header block is cut and flagged', () => {
    const scan = scanMessage(crlf(`Content-Type: multipart/mixed; boundary=b\n\n--b\n${'X-Pad: aaaaaaaaaaaaaaaa\n'.repeat(2000)}Content-Disposition: attachment; filename=x.exe\n\nx\n--b--\n`));
    expect(scan.incomplete).toBe(true);
    expect(scan.problems).toContain('a part header block exceeds the scan limit');
  });

  test('write after end is a bug', () => {
    const s = new MessageScanner();
    s.end();
    expect(() => s.write('x')).toThrow(/after end/);
  });
});
