/**
 * A message with headers that leak internal topology, as a webmail or an internal app writes
 * it, for the data.stripHeaders tests: the leaky fields folded, in odd cases and repeated,
 * next to fields that only look like them, and the same names again in the body and in an
 * attached message/rfc822 part, where they must stay.
 */

/** The data.stripHeaders the message is stripped with. */
export const LEAKY_HEADERS = ['X-Originating-IP', 'X-Internal-Host'];

export const LEAKY_MESSAGE = [
  'From: Alice <alice@corp.test>',
  'X-Originating-IP: [10.1.2.3]',
  'To: bob@corp.test',
  'x-ORIGINATING-ip: [10.1.2.4],',
  '\t[10.1.2.5]',
  'X-Originating-IP-Extra: kept, only starts like a stripped name',
  'X-Originating-I: kept, a prefix of one',
  'Subject: quarterly',
  ' numbers',
  'X-INTERNAL-HOST:',
  '  build-07.corp.internal',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="b1"',
  '',
  '--b1',
  'Content-Type: text/plain',
  '',
  'X-Originating-IP: [10.9.9.9] in the body is text, kept',
  '--b1',
  'Content-Type: message/rfc822',
  '',
  'From: carol@elsewhere.test',
  'X-Originating-IP: [192.0.2.9] of the attached message, kept',
  'Subject: attached',
  '',
  'attached body',
  '--b1--',
  '',
].join('\r\n');

/** LEAKY_MESSAGE without its top-level X-Originating-IP and X-Internal-Host fields; every other octet the same. */
export const LEAKY_MESSAGE_STRIPPED = LEAKY_MESSAGE.replace('X-Originating-IP: [10.1.2.3]\r\n', '')
  .replace('x-ORIGINATING-ip: [10.1.2.4],\r\n\t[10.1.2.5]\r\n', '')
  .replace('X-INTERNAL-HOST:\r\n  build-07.corp.internal\r\n', '');
