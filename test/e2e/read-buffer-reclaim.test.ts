/**
 * The gate asks for a young-generation collection after every 8 MiB it reads from clients
 * (src/transport/read-buffer-reclaimer.ts), so that the socket buffers of a relayed message
 * don't pile up until V8's 32 MB backstop. Here the collection is counted, not run: the
 * effect on memory is in the unit test and the benchmark's W4.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { OPEN_LISTENER_YAML, startGate, type Gate } from '../helpers/gate.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/backends.js';
import { SmtpTalk } from '../helpers/smtp-talk.js';

const MiB = 1024 * 1024;

describe('collections while a large message is relayed', () => {
  let backend: RecordingBackend;
  let gate: Gate;
  let collections = 0;
  beforeAll(async () => {
    backend = await startRecordingBackend();
    gate = await startGate({ backendPort: backend.port, listenersYaml: OPEN_LISTENER_YAML, logLevel: 'info', collect: () => collections++ });
  });
  afterAll(async () => {
    await gate?.stop();
    await backend?.close();
  });

  test('a 20 MiB message: two collections (one per 8 MiB), and the message arrives whole', { timeout: 60_000 }, async () => {
    const c = await SmtpTalk.connect(gate.port('open'));
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    expect((await c.cmd('MAIL FROM:<app@corp.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<bob@corp.test>')).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    // Commands so far are a few hundred bytes: nothing collected yet.
    expect(collections).toBe(0);
    const line = Buffer.from(`${'x'.repeat(78)}\r\n`);
    const block = Buffer.concat(Array.from({ length: 1024 }, () => line)); // 80 KiB
    const blocks = (20 * MiB) / block.length;
    for (let i = 0; i < blocks; i++) await c.writeAll(block);
    expect((await c.cmd('.')).code).toBe(250);
    await c.cmd('QUIT');
    expect(backend.messages).toHaveLength(1);
    expect(backend.messages[0]!.data.length).toBeGreaterThan(20 * MiB);
    expect(collections).toBe(2);
  });
});
