/**
 * parseFullLengthPath with smtp-server's own parser: a 254-octet mailbox (a 256-octet path, RFC
 * 5321 §4.5.3.1.3) is judged by every rule of the library except its off-by-one length cap.
 * The oracle: the same local part and domain, each checked by the library in a mailbox short
 * enough for it.
 */
import { describe, expect, test } from 'vitest';
import { SMTPServer } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { parseFullLengthPath } from '../../src/listener/command-guard.js';
import { domainOfLength } from '../helpers/addresses.js';

const server = new SMTPServer({ logger: false });
type Parse = (name: string, command: string) => false | { address: string; args: unknown };
const library: Parse = (name, command) =>
  (SMTPConnection.prototype as unknown as { _parseAddressCommand: Parse })._parseAddressCommand.call({ _server: server, id: 'test', session: {} }, name, command);
const parse = (command: string) => parseFullLengthPath(library, 'mail from', command);

describe('parseFullLengthPath', () => {
  test('smtp-server alone refuses a 254-octet mailbox (the bug this works around)', () => {
    const address = `${'l'.repeat(64)}@${domainOfLength(189)}`;
    expect(address).toHaveLength(254);
    expect(library('mail from', `MAIL FROM:<${address}>`)).toBe(false);
    expect(parse(`MAIL FROM:<${address}>`)).toMatchObject({ address });
  });

  // Local parts of 3 octets or more leave room to check the domain alone (in "ab@domain").
  const locals = ['l'.repeat(64), 'abc', 'a.bc', '.abc', 'abc.', 'a..bc', 'first.last+tag', "o'neil", 'a"bc'];
  const firstLabels = ['', 'a.', 'a-b.', '-ab.', 'ab-.', 'xn--bcher-kva.', 'xn--zz.', 'a_b.', '.a.', 'a..b.'];

  test('a 254-octet mailbox is accepted exactly when the library accepts its local part and its domain, and comes back whole (IDN decoded)', () => {
    for (const local of locals) {
      for (const first of firstLabels) {
        const domain = domainOfLength(253 - local.length, first);
        const address = `${local}@${domain}`;
        expect(address).toHaveLength(254);
        const localOk = library('mail from', `MAIL FROM:<${local}@x.test>`);
        const domainOk = library('mail from', `MAIL FROM:<ab@${domain}>`);
        const got = parse(`MAIL FROM:<${address}> SIZE=10`);
        expect(Boolean(got), `${local} @ ${first}`).toBe(Boolean(localOk) && Boolean(domainOk));
        if (got && domainOk) expect(got, `${local} @ ${first}`).toMatchObject({ address: `${local}@${domainOk.address.slice(3)}`, args: { SIZE: '10' } });
      }
    }
  });

  test('a one-octet local part with a 252-octet domain: accepted when the domain starts with a plain letter or digit label, refused (conservatively) otherwise', () => {
    expect(parse(`MAIL FROM:<x@${domainOfLength(252)}>`)).toMatchObject({ address: `x@${domainOfLength(252)}` });
    expect(parse(`MAIL FROM:<x@${domainOfLength(252, 'ab-c.')}>`)).toMatchObject({ address: `x@${domainOfLength(252, 'ab-c.')}` });
    for (const first of ['a.', '-ab.', '.a.', 'xn--bcher-kva.', 'axn--bcher-kva.', 'a..b.']) {
      expect(parse(`MAIL FROM:<x@${domainOfLength(252, first)}>`), first).toBe(false);
    }
    expect(parse(`MAIL FROM:<.@${domainOfLength(252)}>`)).toBe(false);
  });

  test("a 255-octet mailbox stays refused, and shorter ones are the library's alone", () => {
    expect(parse(`MAIL FROM:<${'l'.repeat(64)}@${domainOfLength(190)}>`)).toBe(false);
    expect(parse('MAIL FROM:<a..b@corp.test>')).toBe(false);
    expect(parse('MAIL FROM:<alice@corp.test> SIZE=10')).toMatchObject({ address: 'alice@corp.test', args: { SIZE: '10' } });
  });
});
