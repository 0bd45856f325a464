/**
 * EXPERIMENT, for measurement only (docs/benchmarks.md, "W2 and the greeting delay"):
 * preloaded into smtpgate with `npm run bench -- --smtpgate-node-arg --import=<this file's
 * compiled .js>`, it replaces smtp-server's connection init so the greeting goes out at once
 * instead of after the hard-coded 100 ms early-talker wait. Nothing else changes.
 *
 * It shows what the proposed change in src/ would buy; it is not that change.
 */
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

interface Internals {
  _setListeners(cb: () => void): void;
  connectionReady(): void;
  send(code: number, text: string, command?: string | false): void;
  name: string;
  _server: { options: { maxClients?: number }; connections: Set<unknown> };
}

const proto = SMTPConnection.prototype as unknown as Internals & { init(): void };
proto.init = function (this: Internals) {
  this._setListeners(() => {
    const max = this._server.options.maxClients;
    if (max && this._server.connections.size > max) {
      return this.send(421, `${this.name} Too many connected clients, try again in a moment`, false);
    }
    this.connectionReady();
  });
};
