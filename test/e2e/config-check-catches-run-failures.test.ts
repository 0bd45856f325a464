/**
 * `smtpgate check` catches what would make `smtpgate run` fail, and both say it the same way,
 * naming the config file, line and field: they share one validation path. The real binary on
 * real files.
 */
import { writeFile } from 'node:fs/promises';
import { describe, expect, test } from 'vitest';
import { writeGateFiles, type StartGateOptions } from '../helpers/gate.js';
import { runCli } from '../helpers/cli.js';
import { freePort } from '../helpers/redis.js';

async function configFile(opts: Omit<StartGateOptions, 'backendPort'>): Promise<{ file: string; dir: string }> {
  const f = await writeGateFiles({ backendPort: 2, ...opts });
  await opts.beforeStart?.(f.dir);
  return { file: f.configFile, dir: f.dir };
}

/** The line of the first line of `file` that contains `text`. */
async function lineOf(file: string, text: string): Promise<number> {
  const { readFile } = await import('node:fs/promises');
  const n = (await readFile(file, 'utf8')).split('\n').findIndex((l) => l.includes(text));
  if (n < 0) throw new Error(`${text} not in ${file}`);
  return n + 1;
}

/** check and run both refuse the config, with `expected` among the problems; run binds nothing. */
async function bothRefuse(file: string, expected: string): Promise<void> {
  for (const command of ['check', 'run']) {
    const res = await runCli([command, '--config', file]);
    expect(res.code, `${command}: ${res.stderr}`).toBe(1);
    expect(res.stderr, command).toContain('nothing was started');
    expect(res.stderr, command).toContain(expected);
    expect(res.stderr, command).not.toMatch(/EADDRINUSE|ENOENT|EACCES|EISDIR/);
  }
}

describe('addresses that cannot all be bound', () => {
  test('a wildcard and a specific address on one port: check and run both refuse it, naming the line', async () => {
    const port = await freePort();
    const { file } = await configFile({
      listenersYaml: `\n  - name: mx\n    address: 0.0.0.0:${port}\n  - name: internal\n    address: 127.0.0.1:${port}\n`,
    });
    const line = await lineOf(file, `127.0.0.1:${port}`);
    await bothRefuse(file, `${file}:${line}: listeners[1].address: listener "internal" (127.0.0.1:${port}) and listener "mx" (0.0.0.0:${port}) cannot both bind port ${port}`);
  });

  test('the metrics port equal to a listener port: check and run both refuse it', async () => {
    const port = await freePort();
    const { file } = await configFile({ listenersYaml: `\n  - name: mx\n    address: 127.0.0.1:${port}\n`, metricsAddress: `127.0.0.1:${port}` });
    await bothRefuse(file, `metrics.address: metrics.address (127.0.0.1:${port}) and listener "mx" (127.0.0.1:${port}) cannot both bind port ${port}: the same address`);
  });
});
