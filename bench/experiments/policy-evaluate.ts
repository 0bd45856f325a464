/**
 * EXPERIMENT, for measurement only: how many policy evaluations per second one core does, per
 * stage, with the trace built (what `smtpgate policy test` and debug logging read) and without
 * (what the listener needs), for the bench's +policy rule set and for the empty set (no policy
 * folder: only the built-in relay protection). It runs the compiled engine in `dist/`:
 *
 *   npm run build && npx tsc -p bench/tsconfig.json && node bench/dist/experiments/policy-evaluate.js
 *
 * Options: `--dist DIR` (another build of src/, e.g. an older commit's, to compare),
 * `--ms N` (time per measurement, default 300), `--rounds N` (default 5; the median is shown),
 * `--metrics` (also count each evaluation with the policy metrics' `record()`).
 *
 * A build without the `{ trace: false }` option ignores it, so "trace off" then measures the
 * same as "trace on".
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Registry } from 'prom-client';
import { writePolicyFiles } from '../peers/smtpgate-policy.js';

// The engine is loaded from a build at run time, so only the shapes used here are declared.
type Stage = 'connect' | 'auth' | 'mail' | 'rcpt' | 'data';
type Facts = Record<string, unknown>;
type PolicySet = object;
interface Evaluation {
  readonly decision: { readonly kind: string; readonly rule: string };
}
type Evaluate = (set: PolicySet, stage: Stage, facts: Facts, options?: { trace?: boolean }) => Evaluation;
interface Engine {
  readonly evaluate: Evaluate;
  readonly loadPolicySet: (dir: string) => Promise<PolicySet>;
  readonly emptyPolicySet: (timezone?: string) => PolicySet;
  readonly createPolicyMetrics: (registry: Registry) => { record(ev: Evaluation): void };
}

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

function option(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
}

async function loadEngine(dist: string): Promise<Engine> {
  const module = async (file: string) => import(pathToFileURL(path.join(dist, 'policy', file)).href) as Promise<Record<string, unknown>>;
  const [evaluateJs, loadJs, metricsJs] = await Promise.all([module('evaluate.js'), module('load.js'), module('metrics.js')]);
  return {
    evaluate: evaluateJs.evaluate as Evaluate,
    loadPolicySet: loadJs.loadPolicySet as Engine['loadPolicySet'],
    emptyPolicySet: loadJs.emptyPolicySet as Engine['emptyPolicySet'],
    createPolicyMetrics: metricsJs.createPolicyMetrics as Engine['createPolicyMetrics'],
  };
}

/** What the listener tells the engine for a message like the bench's, stage by stage. */
function sessionFacts(kind: 'relay' | 'submission'): Partial<Record<Stage, Facts>> {
  const now = new Date('2026-11-26T12:00:00Z');
  const base: Facts =
    kind === 'relay'
      ? // smtp-source on the trusted plaintext listener (W1-W4).
        { ip: '127.0.0.1', listener: 'open', tls: undefined, authenticated: false, trusted: true, recipients: [], now }
      : // W5: STARTTLS + AUTH as the user `bench` on the submission listener.
        {
          ip: '127.0.0.1',
          listener: 'submission',
          tls: { version: 'TLSv1.3' },
          authenticated: true,
          user: { name: 'bench', groups: ['staff'], addresses: ['sender@corp.test'] },
          trusted: false,
          recipients: [],
          now,
        };
  const from = kind === 'relay' ? 'foo@source.test' : 'sender@corp.test';
  const to = 'bar@sink.test';
  const headers = [
    ['from', kind === 'relay' ? '<foo@source.test>' : 'Bench <sender@corp.test>'],
    ['to', `<${to}>`],
    ['date', 'Thu, 26 Nov 2026 12:00:00 +0000'],
    ['message-id', '<20261126120000.1@source.test>'],
    ['subject', 'bench message'],
    ['mime-version', '1.0'],
    ['content-type', 'text/plain; charset=us-ascii'],
  ].map(([name, value]) => ({ name, value, decoded: value }));
  const mail = { ...base, helo: 'source.test', from, declaredSize: 4096 };
  return {
    connect: base,
    ...(kind === 'submission' ? { auth: { ...base, helo: 'source.test' } } : {}),
    mail,
    rcpt: { ...mail, recipient: to },
    data: {
      ...mail,
      recipients: [to],
      headers,
      attachments: [{ contentType: 'text/plain', filenames: [], depth: 0 }],
      scanIncomplete: false,
      messageSize: 4096,
    },
  };
}

const UNTRACED = { trace: false };

/** Where each result goes, so that the JIT can't drop an evaluation whose result is unused. */
let sink: Evaluation | undefined;

/** Evaluations per second of `run`, timed for about `ms` milliseconds. */
function opsPerSecond(run: () => void, ms: number): number {
  let n = 0;
  const batch = 1000;
  const start = process.hrtime.bigint();
  const until = start + BigInt(ms) * 1_000_000n;
  let now = start;
  while (now < until) {
    for (let i = 0; i < batch; i++) run();
    n += batch;
    now = process.hrtime.bigint();
  }
  return (n * 1e9) / Number(now - start);
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const dist = path.resolve(option('--dist') ?? path.join(REPO_ROOT, 'dist'));
  const ms = Number(option('--ms') ?? 300);
  const rounds = Number(option('--rounds') ?? 5);
  const withMetrics = process.argv.includes('--metrics');
  const engine = await loadEngine(dist);
  const metrics = engine.createPolicyMetrics(new Registry());

  const tmp = await mkdtemp(path.join(os.tmpdir(), 'smtpgate-policy-bench-'));
  try {
    const { policies } = await writePolicyFiles(tmp);
    const sets: { name: string; set: PolicySet; facts: Partial<Record<Stage, Facts>> }[] = [
      { name: 'policy, relay (W1-W4)', set: await engine.loadPolicySet(policies), facts: sessionFacts('relay') },
      { name: 'policy, submission (W5)', set: await engine.loadPolicySet(policies), facts: sessionFacts('submission') },
      { name: 'empty, relay (W1-W4)', set: engine.emptyPolicySet('UTC'), facts: sessionFacts('relay') },
    ];

    console.log(`engine: ${dist}; ${rounds} rounds of ${ms} ms, median${withMetrics ? '; evaluate + metrics.record()' : ''}`);
    console.log(`${'set, session'.padEnd(26)}${'stage'.padEnd(9)}${'decision'.padEnd(30)}${'trace on'.padStart(12)}${'trace off'.padStart(12)}${'off/on'.padStart(8)}`);
    for (const { name, set, facts } of sets) {
      for (const [stage, f] of Object.entries(facts) as [Stage, Facts][]) {
        const on = () => {
          sink = engine.evaluate(set, stage, f);
          if (withMetrics) metrics.record(sink);
        };
        const off = () => {
          sink = engine.evaluate(set, stage, f, UNTRACED);
          if (withMetrics) metrics.record(sink);
        };
        const d = engine.evaluate(set, stage, f).decision;
        // Warm up both paths before timing, so the JIT has settled.
        opsPerSecond(on, 100);
        opsPerSecond(off, 100);
        const ons: number[] = [];
        const offs: number[] = [];
        for (let r = 0; r < rounds; r++) {
          ons.push(opsPerSecond(on, ms));
          offs.push(opsPerSecond(off, ms));
        }
        const a = median(ons);
        const b = median(offs);
        const fmt = (x: number) => Math.round(x).toLocaleString('en-US');
        console.log(`${name.padEnd(26)}${stage.padEnd(9)}${`${d.kind} (${d.rule})`.padEnd(30)}${fmt(a).padStart(12)}${fmt(b).padStart(12)}${`${(b / a).toFixed(1)}×`.padStart(8)}`);
      }
    }
    if (sink === undefined) throw new Error('nothing was evaluated');
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

await main();
