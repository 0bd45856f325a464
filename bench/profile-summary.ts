/**
 * Reads V8 CPU profiles (`npm run bench -- --profile` writes smtpgate's) and prints where the
 * time went: self time by function and by package/file, and inclusive time of the functions
 * whose name matches a pattern.
 *
 *   node bench/dist/profile-summary.js FILE.cpuprofile [--top 40] [--inclusive REGEX] [--callers REGEX]
 *
 * --callers: for the functions matching REGEX, whose self time is spent where — the chain of
 * callers (the first 3 frames outside node:*) that leads to them, e.g. which code ends in a socket write.
 */
import { readFile } from 'node:fs/promises';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
}

/** Groups a script URL into something a reader recognises: a package, a src file, node itself. */
export function bucketOf(url: string, name: string): string {
  if (!url) return name.startsWith('(') ? name : '(native/V8)';
  if (url.startsWith('node:')) return url.split('/').slice(0, 2).join('/');
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1]!;
  const src = /\/dist\/(.+)\.js$/.exec(url);
  if (src) return `smtpgate ${src[1]}`;
  return url;
}

async function main(): Promise<void> {
  // `… | head` closes the pipe early: that's not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => process.exit(err.code === 'EPIPE' ? 0 : 1));
  const args = process.argv.slice(2);
  const file = args.find((a) => !a.startsWith('--'));
  if (!file) {
    process.stderr.write('usage: profile-summary FILE.cpuprofile [--top N] [--inclusive REGEX]\n');
    process.exit(2);
  }
  const top = Number(args[args.indexOf('--top') + 1]) || 40;
  const incl = args.includes('--inclusive') ? new RegExp(args[args.indexOf('--inclusive') + 1]!) : undefined;
  const callers = args.includes('--callers') ? new RegExp(args[args.indexOf('--callers') + 1]!) : undefined;
  const profile = JSON.parse(await readFile(file, 'utf8')) as Profile;
  const totalMs = (profile.endTime - profile.startTime) / 1000;
  const totalSamples = profile.nodes.reduce((n, x) => n + (x.hitCount ?? 0), 0);
  const msPerSample = totalMs / Math.max(1, totalSamples);
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));

  const selfByFn = new Map<string, number>();
  const selfByBucket = new Map<string, number>();
  for (const n of profile.nodes) {
    const hits = n.hitCount ?? 0;
    if (!hits) continue;
    const f = n.callFrame;
    const key = `${f.functionName || '(anonymous)'}  ${f.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/dist\//, 'dist/')}:${f.lineNumber + 1}`;
    selfByFn.set(key, (selfByFn.get(key) ?? 0) + hits);
    const b = bucketOf(f.url, f.functionName);
    selfByBucket.set(b, (selfByBucket.get(b) ?? 0) + hits);
  }
  const idle = [...profile.nodes].filter((n) => n.callFrame.functionName === '(idle)').reduce((s, n) => s + (n.hitCount ?? 0), 0);
  const busy = totalSamples - idle;
  const pct = (h: number) => `${((100 * h) / Math.max(1, busy)).toFixed(1).padStart(5)}%`;
  process.stdout.write(`${file}\n${totalMs.toFixed(0)} ms profiled, ${(busy * msPerSample).toFixed(0)} ms busy (percentages are of busy time)\n\n`);
  process.stdout.write('Self time by package / file:\n');
  for (const [b, h] of [...selfByBucket].filter(([b]) => b !== '(idle)').sort((a, c) => c[1] - a[1]).slice(0, 25)) {
    process.stdout.write(`  ${pct(h)}  ${(h * msPerSample).toFixed(0).padStart(7)} ms  ${b}\n`);
  }
  process.stdout.write(`\nSelf time by function (top ${top}):\n`);
  for (const [k, h] of [...selfByFn].filter(([k]) => !k.startsWith('(idle)')).sort((a, c) => c[1] - a[1]).slice(0, top)) {
    process.stdout.write(`  ${pct(h)}  ${k}\n`);
  }
  if (callers) {
    const parent = new Map<number, number>();
    for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    const label = (n: ProfileNode) => `${n.callFrame.functionName || '(anonymous)'}@${bucketOf(n.callFrame.url, n.callFrame.functionName)}:${n.callFrame.lineNumber + 1}`;
    const chains = new Map<string, number>();
    for (const n of profile.nodes) {
      if (!n.hitCount || !callers.test(n.callFrame.functionName)) continue;
      const chain: string[] = [];
      let p = parent.get(n.id);
      // Node's own stream and socket plumbing is skipped: the first frames that are not
      // node:* say whose write (or whatever matched) it was.
      while (p !== undefined && chain.length < 3) {
        const pn = byId.get(p)!;
        if (!pn.callFrame.url.startsWith('node:')) chain.push(label(pn));
        p = parent.get(p);
      }
      const key = `${n.callFrame.functionName} ← ${chain.join(' ← ')}`;
      chains.set(key, (chains.get(key) ?? 0) + n.hitCount);
    }
    process.stdout.write(`\nCallers of ${callers} (self time):\n`);
    for (const [k, h] of [...chains].sort((a, c) => c[1] - a[1]).slice(0, top)) process.stdout.write(`  ${pct(h)}  ${k}\n`);
  }
  if (incl) {
    // Inclusive time: a node's hits plus its descendants', counted once per matching subtree root.
    const inclusive = (id: number): number => {
      const n = byId.get(id)!;
      return (n.hitCount ?? 0) + (n.children ?? []).reduce((s, c) => s + inclusive(c), 0);
    };
    const totals = new Map<string, number>();
    const walk = (id: number, inside: Set<string>) => {
      const n = byId.get(id)!;
      const name = `${n.callFrame.functionName || '(anonymous)'} ${bucketOf(n.callFrame.url, n.callFrame.functionName)}:${n.callFrame.lineNumber + 1}`;
      let next = inside;
      if (incl.test(name) && !inside.has(name)) {
        totals.set(name, (totals.get(name) ?? 0) + inclusive(id));
        next = new Set(inside).add(name);
      }
      for (const c of n.children ?? []) walk(c, next);
    };
    walk(profile.nodes[0]!.id, new Set());
    process.stdout.write(`\nInclusive time of functions matching ${incl}:\n`);
    for (const [k, h] of [...totals].sort((a, c) => c[1] - a[1]).slice(0, top)) process.stdout.write(`  ${pct(h)}  ${k}\n`);
  }
}

void main();
