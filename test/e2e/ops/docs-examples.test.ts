/**
 * The `smtpgate policy` commands that README.md and docs/policies.md show, run as a reader
 * would run them from the repository root (where the shipped policies/ folder is): each one
 * works, prints what the page says it prints, and every option the page lists exists.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, test } from 'vitest';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../../..');
const CLI = path.join(ROOT, 'dist/cli/main.js');
const read = (rel: string) => readFileSync(path.join(ROOT, rel), 'utf8');

interface Example {
  readonly page: string;
  readonly args: string[];
  /** The output the page shows, without its elisions ("…"). */
  readonly shown: string[];
}

/** Fenced blocks of `page`, with shell line continuations joined. */
function blocks(page: string): string[][] {
  const out: string[][] = [];
  for (const m of read(page).matchAll(/^```[a-z]*\n([\s\S]*?)^```$/gm)) out.push(m[1]!.replace(/\\\n\s*/g, '').split('\n'));
  return out;
}

/** Every `smtpgate policy test` line of a page, with the lines of output shown after it. */
function examples(page: string): Example[] {
  const found: Example[] = [];
  for (const lines of blocks(page)) {
    lines.forEach((line, i) => {
      const m = /^(?:\$ )?smtpgate (policy test .*?)\s*(?:#.*)?$/.exec(line);
      if (!m) return;
      const shown = line.startsWith('$ ') ? lines.slice(i + 1).filter((l) => l.trim() !== '' && l.trim() !== '…') : [];
      found.push({ page, args: m[1]!.split(/\s+/), shown });
    });
  }
  return found;
}

const EXAMPLES = [...examples('README.md'), ...examples('docs/policies.md')];

describe('the documented `smtpgate policy test` commands', () => {
  test('there are some, on both pages', () => {
    expect(new Set(EXAMPLES.map((e) => e.page))).toEqual(new Set(['README.md', 'docs/policies.md']));
  });

  test.each(EXAMPLES.map((e) => [`${e.page}: smtpgate ${e.args.join(' ')}`, e] as const))('%s works and prints what the page shows', async (_name, e) => {
    const { stdout } = await run(process.execPath, [CLI, ...e.args], { cwd: ROOT });
    const printed = stdout.split('\n');
    // The shown lines appear in this order (the page leaves some out).
    let at = 0;
    for (const line of e.shown) {
      const found = printed.indexOf(line, at);
      expect(found, `not printed (in this order): ${line}\n--- printed:\n${stdout}`).toBeGreaterThanOrEqual(0);
      at = found + 1;
    }
  });

  test("every option docs/policies.md lists for `policy test` is one the command has", async () => {
    const text = read('docs/policies.md');
    const paragraph = /Options: [\s\S]*?\n\n/.exec(text.slice(text.indexOf('### `smtpgate policy test [DIR]`')))?.[0] ?? '';
    const listed = [...paragraph.matchAll(/`(--[a-z-]+)/g)].map((m) => m[1]!);
    expect(listed.length).toBeGreaterThan(10);
    const { stdout: help } = await run(process.execPath, [CLI, 'policy', 'test', '--help'], { cwd: ROOT });
    const offered = new Set([...help.matchAll(/(--[a-z-]+)/g)].map((m) => m[1]!));
    expect(listed.filter((o) => !offered.has(o))).toEqual([]);
  });
});
