/**
 * The pace a command line must keep (command-pace.ts): a deadline from its first byte to its
 * CRLF, and after a grace a minimum rate, each byte buying 1/minRate seconds.
 */
import { describe, expect, test } from 'vitest';
import { CommandLineWatch, judgeLine, type CommandPace } from '../../src/listener/command-pace.js';
import type { Refusal } from '../../src/reply.js';

const pace: CommandPace = { deadlineMs: 300_000, minRate: 10, graceMs: 10_000 };

describe('judgeLine', () => {
  test('within the grace any pace is fine: the next look is when the grace ends', () => {
    for (const bytes of [0, 1, 5, 50]) expect(judgeLine(bytes, 0, pace)).toEqual({ recheckInMs: Math.max(10_000, bytes * 100) });
    expect(judgeLine(1, 9_999, pace)).toEqual({ recheckInMs: 1 });
  });

  test('after the grace a line below minRate is overdue with 421 4.4.2 (timeout); each byte buys 1/minRate s', () => {
    const slow = judgeLine(99, 10_000, pace);
    expect(slow).toEqual({ overdue: { code: 421, enhanced: '4.4.2', text: 'Command line arriving slower than 10 bytes/s, closing', reason: 'timeout' } });
    expect(judgeLine(100, 10_000, pace)).toEqual({ overdue: expect.anything() });
    expect(judgeLine(101, 10_000, pace)).toEqual({ recheckInMs: 100 });
    expect(judgeLine(500, 49_000, pace)).toEqual({ recheckInMs: 1_000 });
  });

  test('the deadline holds however fast the line comes, and names itself', () => {
    expect(judgeLine(12_000, 299_999, pace)).toEqual({ recheckInMs: 1 });
    expect(judgeLine(12_000, 300_000, pace)).toEqual({ overdue: { code: 421, enhanced: '4.4.2', text: 'Command line not completed within 5m, closing', reason: 'timeout' } });
  });

  test('minRate 0 leaves only the deadline', () => {
    const off = { ...pace, minRate: 0, deadlineMs: 1_000 };
    expect(judgeLine(0, 999, off)).toEqual({ recheckInMs: 1 });
    expect(judgeLine(0, 1_000, off)).toEqual({ overdue: expect.objectContaining({ text: 'Command line not completed within 1s, closing' }) });
  });
});

describe('CommandLineWatch', () => {
  /** A watch on a fake clock whose real timers are all 1 ms (grace 1 ms, a rate no line falls below). */
  function watch(now: { t: number }) {
    const overdue: { r: Refusal; head: string }[] = [];
    let fired: () => void = () => {};
    const done = new Promise<void>((resolve) => (fired = resolve));
    const w = new CommandLineWatch({ deadlineMs: 1_000, minRate: 1_000_000, graceMs: 1 }, (r, head) => {
      overdue.push({ r, head });
      fired();
    }, () => now.t);
    return { w, overdue, done };
  }

  test('a line still incomplete when its time is up is reported once, with its first bytes', async () => {
    const now = { t: 0 };
    const { w, overdue, done } = watch(now);
    w.read(Buffer.from('NOOP\r\nMAIL FR'));
    now.t = 5_000;
    w.read(Buffer.from('O'));
    await done;
    expect(overdue).toHaveLength(1);
    expect(overdue[0]!.head).toBe('MAIL FRO');
    expect(overdue[0]!.r.text).toBe('Command line not completed within 1s, closing');
  });

  test('complete lines, in any split, leave nothing to report; stop() ends a line in progress', async () => {
    const now = { t: 0 };
    const { w, overdue } = watch(now);
    w.read(Buffer.from('EHLO a'));
    w.read(Buffer.from('.test\r'));
    w.read(Buffer.from('\nNOOP\r\n'));
    w.read(Buffer.from('RSET'));
    w.stop();
    now.t = 10_000;
    // A later complete line must not revive anything.
    w.read(Buffer.from('QUIT\r\n'));
    await new Promise((r) => setImmediate(r));
    expect(overdue).toEqual([]);
  });
});

describe('CommandLineWatch while the parser is busy', () => {
  test("time held (smtpgate answering the commands before the line) is not the line's; time after release is", async () => {
    let now = 0;
    const overdue: string[] = [];
    const w = new CommandLineWatch({ deadlineMs: 1_000, minRate: 0, graceMs: 0 }, (r) => overdue.push(r.text), () => now);
    w.read(Buffer.from('MAIL FROM:<a@b>\r\nRCPT TO:<c'));
    w.hold();
    now = 5_000; // the backend took 5 s to answer MAIL
    w.release();
    now = 5_900;
    w.read(Buffer.from('@d'));
    w.hold();
    w.release();
    expect(overdue).toEqual([]);
    now = 6_000;
    w.read(Buffer.from('>'));
    w.hold();
    w.release();
    expect(overdue).toEqual(['Command line not completed within 1s, closing']);
    w.stop();
  });
});
