/**
 * Suspension notices, the pure parts and the claim: the template's format and its errors, the
 * one-pass rendering that no value can escape, where the user's notice goes, and the claim in
 * the limits store that makes a suspension's notice go out once (memory store here; the
 * e2e test runs it over Redis with two instances).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { ConfigError } from '../../src/parsing/errors.js';
import { PLACEHOLDERS, parseNoticeTemplate, renderNotice, type NoticeValues } from '../../src/notifications/template.js';
import { noticeValues, userNoticeAddress } from '../../src/notifications/notifier.js';
import type { SuspensionEvent } from '../../src/limits/limits.js';
import { limitsHarness, type LimitsHarness } from '../helpers/redis.js';

const FILE = '/etc/smtpgate/suspension.txt';

function problems(text: string): string[] {
  try {
    parseNoticeTemplate(text, FILE);
  } catch (err) {
    if (err instanceof ConfigError) return err.issues.map((i) => `${i.line}: ${i.message}`);
    throw err;
  }
  return [];
}

const VALUES: NoticeValues = {
  user: 'alice',
  reason: '3 quota hits within 1h (the last: the message quota)',
  since: '2025-01-02T03:04:05.000Z',
  until: 'until an administrator clears it',
  client: '192.0.2.7',
  count: '3',
  window: '1h',
  session: 'abc123',
  hostname: 'gate.corp.example',
};

describe('the notice template', () => {
  test('is a Subject: line, a blank line and the body; placeholders are filled in', () => {
    const t = parseNoticeTemplate('Subject: {{user}} suspended\r\n\r\nHello,\r\n{{user}} sent too much ({{reason}}).\r\n\r\n', FILE);
    expect(t).toEqual({ file: FILE, subject: '{{user}} suspended', body: 'Hello,\n{{user}} sent too much ({{reason}}).\n' });
    expect(renderNotice(t, VALUES)).toEqual({ subject: 'alice suspended', text: 'Hello,\nalice sent too much (3 quota hits within 1h (the last: the message quota)).\n' });
  });

  test('the shipped example parses and uses only known placeholders', () => {
    const text = readFileSync(path.resolve(import.meta.dirname, '../../deploy/notifications/suspension.txt'), 'utf8');
    const t = parseNoticeTemplate(text, FILE);
    const used = new Set([...`${t.subject}\n${t.body}`.matchAll(/\{\{(\w+)\}\}/g)].map((m) => m[1]));
    expect([...used].every((p) => p! in PLACEHOLDERS)).toBe(true);
    expect(renderNotice(t, VALUES).text).not.toMatch(/\{\{/);
  });

  test('refuses other headers, naming the line and where From, To and Date come from', () => {
    expect(problems('Subject: x\nFrom: evil@example.com\n\nbody')).toEqual([
      '2: only Subject: may be set in the template; From is not (From comes from notifications.from, To from the user and notifications.admins; smtpgate writes Date, Message-ID and Auto-Submitted itself)',
    ]);
  });

  test('refuses an unknown placeholder at its line, listing the known ones', () => {
    const [p] = problems('Subject: x\n\nline\n{{usr}} was suspended');
    expect(p).toMatch(/^4: unknown placeholder \{\{usr\}\}; known: \{\{user\}\}, \{\{reason\}\}/);
  });

  test('refuses a template without a subject, without a body, or with a folded subject', () => {
    expect(problems('Hello,\n\nbody')).toEqual(['1: expected "Subject: …" on the first line, then a blank line, then the body; found "Hello,"']);
    expect(problems('Subject: x\n')).toEqual(['3: the body is empty: write the notice below the blank line after the subject']);
    expect(problems('Subject: x\n  continued\n\nbody')).toEqual(['2: the subject must be one line (no folded continuation lines)']);
    expect(problems('\nbody')).toEqual(['1: expected a "Subject: …" line first, then a blank line, then the body']);
    expect(problems('Subject: x\rBcc: y\n\nbody')).toEqual(['1: the subject holds a control character; keep it plain text']);
  });

  test('a value with CR, LF or other control characters stays on its line: it cannot add a header or a line', () => {
    const t = parseNoticeTemplate('Subject: {{user}} suspended\n\nUser: {{user}}\n', FILE);
    const out = renderNotice(t, { ...VALUES, user: 'alice\r\nBcc: victim@example.com\u2028\u0085x' });
    expect(out.subject).toBe('alice??Bcc: victim@example.com??x suspended');
    expect(out.text).toBe('User: alice??Bcc: victim@example.com??x\n');
  });

  test('rendering is one pass: a value that looks like a placeholder stays text', () => {
    const t = parseNoticeTemplate('Subject: {{user}}\n\n{{user}} / {{client}}\n', FILE);
    expect(renderNotice(t, { ...VALUES, user: '{{client}}' })).toEqual({ subject: '{{client}}', text: '{{client}} / 192.0.2.7\n' });
  });
});

describe("the user's address", () => {
  test('the first plain address the attributes or the directory give, wildcards and lists skipped', () => {
    expect(userNoticeAddress('alice', ['*@sales.corp.example', 'alice@corp.example', 'a.l@corp.example'])).toBe('alice@corp.example');
    expect(userNoticeAddress('alice', ['a,b@corp.example', '"x y"@corp.example'])).toBeUndefined();
  });

  test('else the login when it is an address, else none (only the admins are told)', () => {
    expect(userNoticeAddress('bob@corp.example', [])).toBe('bob@corp.example');
    expect(userNoticeAddress('bob', [])).toBeUndefined();
    expect(userNoticeAddress('bob@corp.example>, evil@x.example', [])).toBeUndefined();
  });
});

describe('the placeholder values', () => {
  const event: SuspensionEvent = {
    user: 'alice',
    addresses: [],
    session: 's1',
    ip: '192.0.2.7',
    listener: 'submission',
    limiter: 'recipients_user',
    quotaHits: 3,
    windowMs: 3_600_000,
    since: 1_735_787_045,
    suspendForMs: null,
  };

  test('say why, since when and until when', () => {
    expect(noticeValues(event, 'gate.test')).toEqual({
      user: 'alice',
      reason: '3 quota hits within 1h (the last: the recipient quota)',
      since: '2025-01-02T03:04:05.000Z',
      until: 'until an administrator clears it',
      client: '192.0.2.7',
      count: '3',
      window: '1h',
      session: 's1',
      hostname: 'gate.test',
    });
    expect(noticeValues({ ...event, suspendForMs: 86_400_000 }, 'gate.test').until).toBe('2025-01-03T03:04:05.000Z');
  });
});

describe('the claim on a suspension notice (memory store)', () => {
  let h: LimitsHarness | undefined;
  afterEach(async () => {
    await h?.close();
    h = undefined;
  });
  const QUIET = 'connectionRate: off\nconcurrentPerIp: off\nconcurrentPerListener: off\n';
  const alice = { session: 's1', ip: '192.0.2.1', listener: 'submission', user: 'alice', addresses: ['alice@corp.example'] };

  test('only the instance whose hit suspends hears of it; one claim per suspension; a clear lets the next suspension have its own', async () => {
    h = limitsHarness(`${QUIET}messagesPerUser: 1/1h\nbrake: { quotaHits: 1, window: 1h }`);
    const { limits } = h;
    const heard: SuspensionEvent[] = [];
    limits.onSuspended((e) => heard.push(e));
    expect(await limits.claimSuspensionNotice('alice')).toBe('lifted');
    await limits.mailFrom({ ...alice, sender: 'alice@corp.example' });
    await limits.mailFrom({ ...alice, sender: 'alice@corp.example' }); // the hit: suspended
    await limits.mailFrom({ ...alice, sender: 'alice@corp.example' }); // refused as suspended: no new hit
    expect(heard).toEqual([expect.objectContaining({ user: 'alice', addresses: ['alice@corp.example'], session: 's1', limiter: 'messages_user', quotaHits: 1, suspendForMs: null })]);

    expect(await limits.claimSuspensionNotice('Alice')).toBe('claimed');
    expect(await limits.claimSuspensionNotice('alice')).toBe('taken');

    const cleared = await limits.clear('alice');
    expect(cleared.removed).toContainEqual({ limiter: 'suspension_notice', key: 'alice' });
    expect(await limits.claimSuspensionNotice('alice')).toBe('lifted');
    await limits.mailFrom({ ...alice, sender: 'alice@corp.example' });
    await limits.mailFrom({ ...alice, sender: 'alice@corp.example' });
    expect(heard).toHaveLength(2);
    expect(await limits.claimSuspensionNotice('alice')).toBe('claimed');
  });
});
