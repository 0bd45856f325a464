/**
 * The Received: header of the proxy hop (data.receivedHeader): full names the client as MTAs
 * do; private names smtpgate's own hop only, and keeps the header.
 */
import { describe, expect, test } from 'vitest';
import { receivedHeader, type ReceivedFacts } from '../../src/relay/received-header.js';

const FACTS: ReceivedFacts = {
  helo: 'alices-laptop.home.example',
  clientAddress: '198.51.100.23',
  byHost: 'mx.corp.example',
  protocol: 'ESMTPSA',
  sessionId: 'a1b2c3',
  tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' },
  recipient: 'bob@corp.example',
  date: new Date(Date.UTC(2025, 0, 6, 9, 5, 3)),
};

describe('full', () => {
  test("names the client's EHLO name and address, then smtpgate's hop, TLS, the one recipient and the date", () => {
    expect(receivedHeader(FACTS, 'full')).toBe(
      'Received: from alices-laptop.home.example (unknown [198.51.100.23])\r\n' +
        '\tby mx.corp.example (smtpgate) with ESMTPSA id a1b2c3\r\n' +
        '\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n' +
        '\tfor <bob@corp.example>; Mon, 6 Jan 2025 09:05:03 +0000\r\n',
    );
  });

  test('a client-given EHLO name cannot break the header: CR, LF and other octets become "?"', () => {
    const header = receivedHeader({ ...FACTS, helo: 'evil\r\nBcc: x@y' }, 'full');
    expect(header.startsWith('Received: from evil??Bcc:?x@y (unknown [198.51.100.23])\r\n')).toBe(true);
  });
});

describe('private', () => {
  const header = receivedHeader(FACTS, 'private');

  test("keeps smtpgate's hop, TLS, the recipient and the date, and names no client: a FROM clause under .invalid", () => {
    expect(header).toBe(
      'Received: from client.invalid (address hidden)\r\n' +
        '\tby mx.corp.example (smtpgate) with ESMTPSA id a1b2c3\r\n' +
        '\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n' +
        '\tfor <bob@corp.example>; Mon, 6 Jan 2025 09:05:03 +0000\r\n',
    );
  });

  test("has neither the client's address nor its EHLO name nor its host name", () => {
    const withHostname = receivedHeader({ ...FACTS, clientHostname: 'dsl-23.isp.example' }, 'private');
    for (const leak of ['198.51.100.23', 'alices-laptop', 'home.example', 'dsl-23', 'isp.example']) expect(withHostname).not.toContain(leak);
    // The same facts in full mode do name them: the check above can fail.
    expect(receivedHeader({ ...FACTS, clientHostname: 'dsl-23.isp.example' }, 'full')).toContain('alices-laptop.home.example (dsl-23.isp.example [198.51.100.23])');
  });

  test('is still an RFC 5321 §4.4 time stamp line: "from" and a domain, "by", "with", "id", then "; date-time"', () => {
    const unfolded = header.replace(/\r\n\t/g, ' ').trimEnd();
    expect(unfolded).toMatch(/^Received: from [A-Za-z0-9.-]+ \([^()]*\) by mx\.corp\.example \(smtpgate\) with ESMTPSA id a1b2c3 \(.*\) for <bob@corp\.example>; Mon, 6 Jan 2025 09:05:03 \+0000$/);
  });
});
