/**
 * RFC 5322 comments, removed the same way for every header smtpgate reads (From:/To: address
 * lists, Content-Type and Content-Disposition). A backslash escapes the next character only
 * inside a quoted-string or a comment (quoted-pair, RFC 5322 §3.2.1, §3.2.2, §3.2.4); outside
 * them it is an ordinary character, and a "(" after it still opens a comment.
 */
import { describe, expect, test } from 'vitest';
import { parseAddressList } from '../../src/policy/addresses.js';
import { parseStructuredValue } from '../../src/policy/mime.js';

describe('a backslash outside a quoted-string or comment escapes nothing', () => {
  test('in an address list, a comment after a stray backslash is removed, commas in it included', () => {
    // The display name's comment holds a comma: it must not split the list into a bogus entry.
    expect(parseAddressList('Alice \\(Sales, EMEA) <alice@corp.example>')).toEqual({ addresses: ['alice@corp.example'], invalid: [] });
    expect(parseAddressList('alice@corp.example \\(first, second)')).toEqual({ addresses: ['alice@corp.example\\'], invalid: [] });
  });

  test('in a Content-Type, a comment after a stray backslash is removed, semicolons in it included', () => {
    const v = parseStructuredValue('text/plain \\(a; name=evil.exe); charset=utf-8');
    expect(v.params.get('name')).toBeUndefined();
    expect(v.params.get('charset')).toEqual(['utf-8']);
  });
});

describe('quoted-pairs inside quoted-strings and comments', () => {
  test('an escaped quote or parenthesis inside a quoted-string does not end it or open a comment', () => {
    expect(parseAddressList('"Smith \\" (not a comment), Bob" <bob@corp.example>')).toEqual({ addresses: ['bob@corp.example'], invalid: [] });
    expect(parseStructuredValue('attachment; filename="a \\" (b).pdf"').params.get('filename')).toEqual(['a " (b).pdf']);
  });

  test('an escaped parenthesis inside a comment neither nests nor closes it; nested comments are removed whole', () => {
    expect(parseAddressList('(a \\) b, c@evil.example) alice@corp.example')).toEqual({ addresses: ['alice@corp.example'], invalid: [] });
    expect(parseAddressList('(outer (inner, x@evil.example) still, y@evil.example) alice@corp.example')).toEqual({ addresses: ['alice@corp.example'], invalid: [] });
    expect(parseStructuredValue('text/plain (x \\( y; name=a.exe); charset=us-ascii').params.get('name')).toBeUndefined();
  });
});
