/**
 * Reads what smtpgate sent to a backend, as a strict RFC 5321 server would: command lines end
 * in CRLF, DATA is followed by message data up to the first CRLF.CRLF (a "." on the very first
 * line ends it too). Whatever a lenient server might read differently is the subject of the
 * checks: every command must be one smtpgate itself generates, and each transaction (MAIL …
 * end of data, or MAIL … RSET) carries at most one message. The backend is assumed to answer
 * DATA with 354, as the raw and flaky test backends do.
 */

export interface WireTransaction {
  readonly mail: string;
  readonly rcpts: string[];
  /** Each message as on the wire (still dot-stuffed), with its final CRLF. */
  readonly messages: Buffer[];
  /** Message data that never got its final dot (an aborted transaction). */
  aborted?: Buffer;
}

export interface BackendWire {
  readonly commands: string[];
  readonly transactions: WireTransaction[];
  /** Everything a strict reader objects to; empty when the stream is clean. */
  readonly problems: string[];
}

/** The command lines smtpgate sends to a backend (smtp-client.ts, backend-session.ts, envelope.ts). */
const GATE_COMMAND = /^(?:(?:EHLO|HELO) [!-~]+|XCLIENT(?: [A-Z]+=[!-~]*)+|XFORWARD(?: [A-Z]+=[!-~]*)+|MAIL FROM:<[^<>\r\n]*>(?: [A-Z0-9]+(?:=[!-~]+)?)*|RCPT TO:<[^<>\r\n]*>|DATA|RSET|NOOP|QUIT|AUTH (?:PLAIN [A-Za-z0-9+/=]+|LOGIN)|STARTTLS)$/;

const END = Buffer.from('\r\n.\r\n');

export function parseBackendWire(bytes: Buffer): BackendWire {
  const commands: string[] = [];
  const transactions: WireTransaction[] = [];
  const problems: string[] = [];
  let tx: WireTransaction | undefined;
  let pos = 0;
  while (pos < bytes.length) {
    const crlf = bytes.indexOf('\r\n', pos);
    if (crlf < 0) {
      problems.push(`an unterminated command line at the end: ${JSON.stringify(bytes.toString('latin1', pos, pos + 80))}`);
      break;
    }
    const line = bytes.toString('latin1', pos, crlf);
    pos = crlf + 2;
    commands.push(line);
    if (!GATE_COMMAND.test(line)) problems.push(`not a command smtpgate sends: ${JSON.stringify(line.slice(0, 120))}`);
    const verb = line.split(/[ :]/)[0]!.toUpperCase();
    if (verb === 'MAIL') {
      if (tx) problems.push(`MAIL inside an open transaction (envelopes merged): ${JSON.stringify(line)}`);
      tx = { mail: line, rcpts: [], messages: [] };
      transactions.push(tx);
    } else if (verb === 'RCPT') {
      if (!tx) problems.push(`RCPT outside a transaction: ${JSON.stringify(line)}`);
      else tx.rcpts.push(line);
    } else if (verb === 'RSET' || verb === 'QUIT' || verb === 'EHLO' || verb === 'HELO' || verb === 'XCLIENT') {
      tx = undefined;
    } else if (verb === 'DATA') {
      if (!tx || tx.rcpts.length === 0) problems.push('DATA without MAIL and RCPT before it');
      if (tx && tx.messages.length > 0) problems.push('a second DATA in one transaction');
      // The virtual CRLF: data that starts with ".\r\n" is an empty message.
      const withLead = Buffer.concat([Buffer.from('\r\n'), bytes.subarray(pos)]);
      const at = withLead.indexOf(END);
      if (at < 0) {
        if (tx) tx.aborted = Buffer.from(bytes.subarray(pos));
        pos = bytes.length;
        tx = undefined;
        break;
      }
      const message = Buffer.from(withLead.subarray(2, at + 2));
      tx?.messages.push(message);
      pos += at + END.length - 2;
      // RFC 5321 §4.1.1.4: the transaction ends with the data; a new one needs a new MAIL.
      tx = undefined;
    }
  }
  return { commands, transactions, problems };
}

/** RFC 5321 §4.5.2, receiver side: the leading dot of every line that starts with one is removed. */
export function unstuffWire(wire: Buffer): Buffer {
  return Buffer.from(wire.toString('latin1').replace(/(^|\r\n)\./g, '$1'), 'latin1');
}

/** The messages of all transactions, in order. */
export function messagesOf(wire: BackendWire): Buffer[] {
  return wire.transactions.flatMap((t) => t.messages);
}
