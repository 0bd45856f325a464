/**
 * Two smtpgate processes on one Redis admit exactly N messages in total for a per-user limit of
 * N — the deployment the shared store exists for (several instances behind a load balancer).
 *
 * The child processes run the limits module as plain JavaScript: the sources are transpiled
 * (no type check) into a temp folder that links this project's node_modules.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import ts from 'typescript';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { describeWith } from '../../helpers/programs.js';
import { dropPrefix, SHARED_REDIS_URL, uniquePrefix } from '../../helpers/redis.js';

const ROOT = path.resolve(import.meta.dirname, '../../..');

const CHILD = `
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { limitsConfigSchema } from './limits/config.js';
import { createLimits } from './limits/limits.js';

const [url, keyPrefix, quota, attempts] = process.argv.slice(2);
const config = limitsConfigSchema.parse({ store: { kind: 'redis', url, keyPrefix }, connectionRate: 'off', messagesPerUser: quota + '/1h' });
const limits = createLimits({ config, registry: new Registry(), log: pino({ level: 'silent' }) });
if (!(await limits.start(3000))) {
  console.error('redis not reachable');
  process.exit(2);
}
console.log('ready');
await new Promise((resolve) => process.stdin.once('data', resolve));
const results = await Promise.all(
  Array.from({ length: Number(attempts) }, (_, i) =>
    limits.mailFrom({ session: 'p' + i, ip: '192.0.2.1', listener: 'submission', user: 'alice', sender: 'alice@example.com' }),
  ),
);
const allowed = results.filter((r) => r === undefined).length;
const refusedWith = [...new Set(results.filter(Boolean).map((r) => r.code + ' ' + r.enhanced))];
console.log(JSON.stringify({ allowed, refusedWith, storeUp: limits.storeUp }));
await limits.close();
`;

async function sourcesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await sourcesUnder(p)));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** src/**.ts → dir/**.js, ES modules, types stripped. */
async function transpileSources(dir: string): Promise<void> {
  const src = path.join(ROOT, 'src');
  for (const file of await sourcesUnder(src)) {
    const { outputText } = ts.transpileModule(await readFile(file, 'utf8'), {
      fileName: file,
      compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    });
    const target = path.join(dir, path.relative(src, file)).replace(/\.ts$/, '.js');
    await mkdir(path.dirname(target), { recursive: true });
    await writeFile(target, outputText);
  }
  await writeFile(path.join(dir, 'package.json'), '{"type":"module"}\n');
  await symlink(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'), 'dir');
  await writeFile(path.join(dir, 'child.js'), CHILD);
}

interface Child {
  proc: ChildProcessWithoutNullStreams;
  line(): Promise<string>;
}

function startChild(dir: string, args: string[]): Child {
  const proc = spawn(process.execPath, [path.join(dir, 'child.js'), ...args], { cwd: dir });
  const lines: string[] = [];
  const waiting: ((l: string) => void)[] = [];
  let stderr = '';
  proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  createInterface({ input: proc.stdout }).on('line', (l) => {
    const w = waiting.shift();
    if (w) w(l);
    else lines.push(l);
  });
  return {
    proc,
    line: () =>
      new Promise<string>((resolve, reject) => {
        const l = lines.shift();
        if (l !== undefined) return resolve(l);
        waiting.push(resolve);
        proc.once('exit', (code) => reject(new Error(`child exited (${code}): ${stderr}`)));
      }),
  };
}

describeWith(['redis-server'], 'limits across two processes', () => {
  const prefix = uniquePrefix('procs');
  let dir: string;
  const children: Child[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-limits-procs-'));
    await transpileSources(dir);
  });

  afterAll(async () => {
    for (const c of children) c.proc.kill('SIGKILL');
    await dropPrefix(SHARED_REDIS_URL, prefix);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('two processes sharing Redis admit exactly N messages in total for a per-user limit of N', async () => {
    const quota = 40;
    const attempts = 60;
    for (let i = 0; i < 2; i++) children.push(startChild(dir, [SHARED_REDIS_URL, prefix, String(quota), String(attempts)]));
    for (const c of children) expect(await c.line()).toBe('ready');
    // Both start at once, each with 60 MAILs in flight.
    for (const c of children) c.proc.stdin.write('go\n');
    const results = (await Promise.all(children.map((c) => c.line()))).map((l) => JSON.parse(l) as { allowed: number; refusedWith: string[]; storeUp: boolean });
    expect(results.map((r) => r.storeUp)).toEqual([true, true]);
    // Counted apart, each would have admitted 40 (80 in all); shared, it is 40 in total.
    expect(results.reduce((sum, r) => sum + r.allowed, 0)).toBe(quota);
    for (const r of results) expect(r.refusedWith).toEqual(['451 4.7.1']);
  });
});
