/**
 * Turns the runs into the one table `npm run bench` prints (and docs/benchmarks.md shows):
 * workloads × peers, the medians, the ratios the targets are about, and pass/fail.
 *
 * Ratios are taken within a repetition (smtpgate's run and the other peer's run of the same
 * rep, minutes apart at most) and the median of those per-rep ratios is reported, so a slow
 * patch of a noisy machine moves both sides of a ratio together.
 */
import type { RunResult } from './measure.js';
import { PEER_IDS, type PeerId, type Unavailable } from './peers/peer.js';
import type { Target, Workload, WorkloadId } from './workloads.js';

export interface PeerStatus {
  readonly id: PeerId;
  readonly description: string;
  readonly unavailable?: Unavailable;
  /** Why it was left out: on request (--peers), or because no selected workload runs it (--only). */
  readonly skipped?: string;
}

export interface Cell {
  readonly median?: number;
  readonly values: number[];
  readonly okReps: number;
  readonly failedReps: number;
  readonly note?: string;
  /** Medians of the run's extra figures (rssGrowthMb, peerCpuSeconds, …). */
  readonly extra: Record<string, number>;
}

export interface TargetResult {
  readonly peer: PeerId;
  readonly description: string;
  readonly value?: number;
  /** undefined for information-only ratios, or when a side is missing. */
  readonly pass?: boolean;
  readonly missing?: string;
}

export interface WorkloadSummary {
  readonly id: WorkloadId;
  readonly title: string;
  readonly load: string;
  readonly unit: string;
  readonly better: 'higher' | 'lower';
  readonly cells: Record<PeerId, Cell>;
  readonly targets: TargetResult[];
}

const SMTPGATES: readonly PeerId[] = ['smtpgate', 'smtpgate+policy'];

export function median(values: readonly number[]): number | undefined {
  if (!values.length) return undefined;
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1]! + s[mid]!) / 2;
}

export function summarize(
  list: readonly Workload[],
  runs: readonly RunResult[],
  peers: readonly PeerStatus[],
  describeLoad: (w: Workload) => string,
): WorkloadSummary[] {
  const status = new Map(peers.map((p) => [p.id, p]));
  const ok = (w: WorkloadId, p: PeerId) => runs.filter((r) => r.workload === w && r.peer === p && r.ok && r.value !== undefined);
  return list.map((w) => {
    const cells = {} as Record<PeerId, Cell>;
    for (const id of PEER_IDS) {
      const s = status.get(id);
      const mine = runs.filter((r) => r.workload === w.id && r.peer === id);
      const good = ok(w.id, id);
      const values = good.map((r) => r.value!);
      const extraKeys = new Set(good.flatMap((r) => Object.keys(r.extra)));
      const extra: Record<string, number> = {};
      for (const k of extraKeys) extra[k] = median(good.map((r) => r.extra[k]).filter((v): v is number => v !== undefined))!;
      let note: string | undefined;
      if (!w.peers.includes(id)) note = w.notApplicable ?? 'n/a';
      else if (s?.unavailable) note = `not installed: ${s.unavailable.install}`;
      else if (s?.skipped) note = `skipped (${s.skipped})`;
      else if (!good.length && mine.length) note = `failed: ${mine.find((r) => r.error)?.error ?? 'no value'}`;
      cells[id] = { median: median(values), values, okReps: good.length, failedReps: mine.length - good.length, note, extra };
    }
    const targets: TargetResult[] = [];
    for (const sg of SMTPGATES) {
      if (!w.peers.includes(sg)) continue;
      for (const t of w.targets) targets.push(evaluateTarget(w, t, sg, runs, cells));
    }
    return { id: w.id, title: w.title, load: describeLoad(w), unit: w.metric.unit, better: w.metric.better, cells, targets };
  });
}

function evaluateTarget(w: Workload, t: Target, sg: PeerId, runs: readonly RunResult[], cells: Record<PeerId, Cell>): TargetResult {
  const byRep = (workload: string, peer: string) =>
    new Map(runs.filter((r) => r.workload === workload && r.peer === peer && r.ok && r.value !== undefined).map((r) => [r.rep, r.value!]));
  const perRepRatio = (mine: Map<number, number>, theirs: Map<number, number>) =>
    median([...mine].filter(([rep]) => theirs.has(rep)).map(([rep, v]) => v / theirs.get(rep)!));
  const label = sg === 'smtpgate' ? 'smtpgate' : 'smtpgate+policy';
  switch (t.kind) {
    case 'ratio': {
      const value = perRepRatio(byRep(w.id, sg), byRep(w.id, t.against));
      const description = `${label} ÷ ${t.against} ${t.op} ${t.threshold}×`;
      if (value === undefined) return { peer: sg, description, missing: cells[t.against].note ?? cells[sg].note ?? 'no paired runs' };
      return { peer: sg, description, value, pass: t.op === '>=' ? value >= t.threshold : value <= t.threshold };
    }
    case 'absolute': {
      const cell = cells[sg];
      const value = t.measure === 'value' ? cell.median : cell.extra[t.measure];
      const description = `${label} ${t.op} ${t.threshold} ${t.unit}`;
      if (value === undefined) return { peer: sg, description, missing: cell.note ?? 'no value' };
      return { peer: sg, description, value, pass: t.op === '<=' ? value <= t.threshold : value < t.threshold };
    }
    case 'info-ratio': {
      const value = perRepRatio(byRep(w.id, sg), byRep(t.againstWorkload, sg));
      const description = `${label} ÷ its ${t.againstWorkload} (information)`;
      if (value === undefined) return { peer: sg, description, missing: 'no paired runs' };
      return { peer: sg, description, value };
    }
    case 'workload-ratio': {
      const value = perRepRatio(byRep(w.id, sg), byRep(t.againstWorkload, sg));
      const description = `${label} ÷ its ${t.againstWorkload} ${t.op} ${t.threshold}×`;
      if (value === undefined) return { peer: sg, description, missing: `no paired runs (run ${t.againstWorkload} too)` };
      return { peer: sg, description, value, pass: value >= t.threshold };
    }
    case 'cpu-ratio': {
      const cpuByRep = (workload: string) =>
        new Map(
          runs
            .filter((r) => r.workload === workload && r.peer === sg && r.ok && r.extra.peerCpuSeconds !== undefined && r.extra.messages)
            .map((r) => [r.rep, r.extra.peerCpuSeconds! / r.extra.messages!]),
        );
      const value = perRepRatio(cpuByRep(w.id), cpuByRep(t.againstWorkload));
      const description = `${label} CPU per message ÷ its ${t.againstWorkload}'s ${t.op} ${t.threshold}×`;
      if (value === undefined) return { peer: sg, description, missing: `no paired runs (run ${t.againstWorkload} too)` };
      return { peer: sg, description, value, pass: value <= t.threshold };
    }
  }
}

const HEADERS: Record<PeerId, string> = {
  direct: 'direct',
  smtpgate: 'smtpgate',
  'smtpgate+policy': 'smtpgate+policy',
  nginx: 'nginx',
  haraka: 'Haraka',
};

function fmt(v: number, decimals: number): string {
  return v.toLocaleString('en-US', { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
}

function decimalsFor(unit: string): number {
  return unit === 'msg/s' ? 0 : 1;
}

function ratioText(t: TargetResult): string {
  if (t.value === undefined) return `${t.description}: – (${t.missing})`;
  const absolute = / (MB|KB)/.test(t.description);
  const v = absolute ? fmt(t.value, 1) : `${fmt(t.value, t.value < 0.1 ? 3 : 2)}×`;
  const verdict = t.pass === undefined ? '' : t.pass ? ' **pass**' : ' **FAIL**';
  return `${t.description} → ${v}${verdict}`;
}

/** Markdown: one row per workload; cells "median (n reps)", then the targets with pass/fail. */
export function renderTable(summaries: readonly WorkloadSummary[]): string {
  const header = `| workload | unit, reps | ${PEER_IDS.map((p) => HEADERS[p]).join(' | ')} | targets (median of per-rep ratios) |`;
  const rule = `|---|---|${PEER_IDS.map(() => '---:').join('|')}|---|`;
  const rows = summaries.map((s) => {
    const d = decimalsFor(s.unit);
    const cells = PEER_IDS.map((p) => {
      const c = s.cells[p];
      if (c.median === undefined) return c.note ? c.note.replace(/\|/g, '/').slice(0, 140) : '–';
      let text = fmt(c.median, d);
      if (c.extra.rssGrowthMb !== undefined) text += ` (+${fmt(c.extra.rssGrowthMb, 1)} MB RSS)`;
      if (c.failedReps) text += ` (${c.failedReps} failed)`;
      return text;
    });
    const arrow = s.better === 'higher' ? '↑' : '↓';
    const reps = Math.max(...PEER_IDS.map((p) => s.cells[p].okReps + s.cells[p].failedReps));
    const targets = s.targets.length ? s.targets.map(ratioText).join('<br>') : '–';
    return `| ${s.title}<br>\`${s.load}\` | ${s.unit} ${arrow}<br>n=${reps} | ${cells.join(' | ')} | ${targets} |`;
  });
  return [header, rule, ...rows].join('\n');
}

/** The verdicts alone, one line each, for the end of the console output. */
export function renderVerdicts(summaries: readonly WorkloadSummary[]): string {
  const lines: string[] = [];
  for (const s of summaries) for (const t of s.targets) lines.push(`${s.id.padEnd(8)} ${ratioText(t).replace(/\*\*/g, '')}`);
  return lines.join('\n');
}
