/**
 * DEMO / DEVELOPMENT ONLY: an embedded "legacy mail server" that accepts every message and
 * writes it, byte for byte as received, to `<dir>/<id>.eml`. It lets the quick start show a
 * message going all the way through without a real mail server. Never use it in production:
 * it delivers nowhere.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, rename } from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { SMTPServer } from 'smtp-server';

export interface CaptureBackend {
  readonly port: number;
  close(): Promise<void>;
}

export async function startCaptureBackend(opts: { host: string; port: number; dir: string; onMessage?: (file: string) => void }): Promise<CaptureBackend> {
  await mkdir(opts.dir, { recursive: true });
  const server = new SMTPServer({
    name: 'capture.smtpgate.invalid',
    banner: 'smtpgate demo capture backend (development only)',
    authOptional: true,
    disabledCommands: ['AUTH', 'STARTTLS'],
    disableReverseLookup: true,
    // Accept XCLIENT from the proxy on loopback, like a Postfix with smtpd_authorized_xclient_hosts.
    useXClient: ['127.0.0.1', '::1'],
    logger: false,
    onData(stream, _session, cb) {
      const id = `${new Date().toISOString().replace(/[:.]/g, '-')}-${randomUUID().slice(0, 8)}`;
      const tmp = path.join(opts.dir, `.${id}.eml.tmp`);
      const final = path.join(opts.dir, `${id}.eml`);
      // Written to a temp name and renamed, so a reader never sees half a message.
      pipeline(stream, createWriteStream(tmp))
        .then(() => rename(tmp, final))
        .then(
          () => {
            opts.onMessage?.(final);
            cb(null, `2.0.0 Ok: saved as ${id}.eml`);
          },
          (err: Error) => cb(Object.assign(new Error(`4.3.0 capture failed: ${err.message}`), { responseCode: 451 })),
        );
    },
  });
  server.on('error', () => {
    /* client resets are routine */
  });
  await new Promise<void>((resolve, reject) => {
    server.server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const addr = server.server.address();
  return {
    port: addr && typeof addr === 'object' ? addr.port : opts.port,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
