/**
 * The gate asks for a young-generation collection after every 8 MiB it reads from clients (at
 * most every 20 ms; src/transport/read-buffer-reclaimer.ts), so that the socket buffers of a
 * relayed message don't pile up until V8's 32 MB backstop. Here the collections are counted;
 * their effect on memory is in the unit test and the benchmark's W4.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ALICE, metricValue, startGate, type Gate } from '../../helpers/gate.js';
import { listener, openListener } from '../../helpers/config.js';
import { startRecordingBackend, type RecordingBackend } from '../../helpers/backends.js';
import { SmtpTalk } from '../../helpers/smtp-talk.js';
import { envelope } from '../../helpers/sessions.js';

const MiB = 1024 * 1024;

/** Sends a 20 MiB body after the 354 and the final dot; returns the final reply's code. */
async function send20MiB(c: SmtpTalk): Promise<number> {
  const line = Buffer.from(`${'x'.repeat(78)}\r\n`);
  const block = Buffer.concat(Array.from({ length: 1024 }, () => line)); // 80 KiB
  for (let i = 0; i < (20 * MiB) / block.length; i++) await c.writeAll(block);
  return (await c.cmd('.')).code;
}

describe('collections while a large message is relayed', () => {
  let backend: RecordingBackend;
  let gate: Gate;
  let collections = 0;
  beforeAll(async () => {
    backend = await startRecordingBackend();
    gate = await startGate({
      backendPort: backend.port,
      listeners: [openListener(), listener('submission', { tls: 'starttls' })],
      logLevel: 'info',
      collect: () => collections++,
    });
  });
  afterAll(async () => {
    await gate?.stop();
    await backend?.close();
  });

  test('a 20 MiB message in plaintext: a collection per 8 MiB (two at most), none for the commands, and the message arrives whole', { timeout: 60_000 }, async () => {
    collections = 0;
    const c = await SmtpTalk.connect(gate.port('open'));
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    const { data } = await envelope(c, 'app@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    // Commands so far are a few hundred bytes: nothing collected yet.
    expect(collections).toBe(0);
    const before = backend.messages.length;
    expect(await send20MiB(c)).toBe(250);
    await c.cmd('QUIT');
    expect(backend.messages).toHaveLength(before + 1);
    expect(backend.messages.at(-1)!.data.length).toBeGreaterThan(20 * MiB);
    // Two unless the 20 ms spacing postponed the second past the end of the message.
    expect(collections).toBeGreaterThanOrEqual(1);
    expect(collections).toBeLessThanOrEqual(2);
    expect(await metricValue(gate, 'smtpgate_read_buffer_collections_total')).toBe(collections);
  });

  test('after STARTTLS (a new command parser, decrypted reads) the reads are counted too', { timeout: 60_000 }, async () => {
    collections = 0;
    const c = await SmtpTalk.connect(gate.port('submission'));
    expect((await c.read()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    expect((await c.starttls()).code).toBe(220);
    expect((await c.cmd('EHLO client.test')).code).toBe(250);
    expect((await c.authPlain(ALICE.name, ALICE.password)).code).toBe(235);
    const { data } = await envelope(c, 'alice@corp.test', ['bob@corp.test']);
    expect(data?.code).toBe(354);
    expect(await send20MiB(c)).toBe(250);
    await c.cmd('QUIT');
    // The count is per process, not per session: up to 8 MiB left over from the message
    // before adds to this one's 20, so three at most.
    expect(collections).toBeGreaterThanOrEqual(1);
    expect(collections).toBeLessThanOrEqual(3);
  });
});

describe("an App that isn't given a collector takes V8's", () => {
  test('its collections show in smtpgate_read_buffer_collections_total', { timeout: 60_000 }, async () => {
    const backend = await startRecordingBackend();
    const gate = await startGate({ backendPort: backend.port, listeners: [openListener()], logLevel: 'info' });
    try {
      const c = await SmtpTalk.connect(gate.port('open'));
      expect((await c.read()).code).toBe(220);
      expect((await c.cmd('EHLO client.test')).code).toBe(250);
      const { data } = await envelope(c, 'app@corp.test', ['bob@corp.test']);
      expect(data?.code).toBe(354);
      expect(await metricValue(gate, 'smtpgate_read_buffer_collections_total')).toBe(0);
      expect(await send20MiB(c)).toBe(250);
      await c.cmd('QUIT');
      expect(await metricValue(gate, 'smtpgate_read_buffer_collections_total')).toBeGreaterThanOrEqual(1);
    } finally {
      await gate.stop();
      await backend.close();
    }
  });
});
