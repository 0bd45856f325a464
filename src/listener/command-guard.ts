/**
 * Checks a client command line before smtp-server dispatches it, for the protocol rules that
 * smtp-server's own handlers get wrong or can't express with an exact reply:
 *
 * - AUTH without TLS: smtp-server only refuses it while STARTTLS is enabled, and answers 500
 *   when AUTH is hidden from EHLO. smtpgate never accepts AUTH in cleartext, on any listener,
 *   and answers RFC 3207/4954's 538 5.7.11 before a single credential byte is exchanged.
 * - BDAT: not supported (no CHUNKING advertised); RFC 3030 clients get 502.
 *
 * The decision is pure (`checkCommand`); `installCommandGuard` wires it into one connection.
 */
import type { SMTPServer } from 'smtp-server';
import { refusal, type Refusal } from '../reply.js';

export interface CommandFacts {
  /** The session runs under TLS. */
  readonly secure: boolean;
  /** The line is a continuation of an exchange (AUTH LOGIN username/password), not a command. */
  readonly continuation: boolean;
}

export function checkCommand(line: string, facts: CommandFacts): Refusal | undefined {
  if (facts.continuation) return undefined;
  const verb = /^\s*([A-Za-z]+)/.exec(line)?.[1]?.toUpperCase();
  if (verb === 'AUTH' && !facts.secure) {
    return refusal(538, '5.7.11', 'Encryption required for requested authentication mechanism: issue STARTTLS first', 'tls_required');
  }
  if (verb === 'BDAT') {
    return refusal(502, '5.5.1', 'BDAT (CHUNKING) is not supported; use DATA', 'syntax');
  }
  return undefined;
}

/** The parts of smtp-server's (untyped) SMTPConnection the guard relies on. */
interface GuardedConnection {
  id: string;
  secure: boolean;
  _nextHandler: unknown;
  _upgrading: boolean;
  _onCommand(command: Buffer, callback?: () => void): void;
  send(code: number, data: string, context?: string | false): void;
}

export type OnGuardRefusal = (sessionId: string, r: Refusal) => void;

/**
 * Hooks the guard into every connection the server creates. smtp-server has no public
 * pre-command hook; it looks `_onCommand` up on the connection for each line, so wrapping it
 * per connection is the narrowest seam. smtp-server is pinned and the protocol tests cover it.
 */
export function installCommandGuard(server: SMTPServer, onRefusal: OnGuardRefusal): void {
  const connections = server.connections as Set<unknown>;
  const add = connections.add.bind(connections);
  connections.add = (value: unknown) => {
    const conn = value as GuardedConnection;
    const dispatch = conn._onCommand.bind(conn);
    conn._onCommand = (command: Buffer, callback?: () => void) => {
      if (conn._upgrading) return dispatch(command, callback);
      const r = checkCommand(command.toString('latin1'), { secure: conn.secure, continuation: Boolean(conn._nextHandler) });
      if (!r) return dispatch(command, callback);
      onRefusal(conn.id, r);
      conn.send(r.code, `${r.enhanced} ${r.text}`, false);
      if (callback) setImmediate(callback);
    };
    return add(value);
  };
}
