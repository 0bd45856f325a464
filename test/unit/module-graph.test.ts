/**
 * The modules import each other one way only, so each can be read and tested from the bottom
 * up: no circle between modules (a folder of src/, or a file at its top), and inside relay/ no
 * circle between files. The relay owns the wire (issue 15): the backend SMTP client is reached
 * only through relay/. Reads the import statements of the source files; type-only imports count too,
 * since a circle of types still ties the files' meanings together.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '../../src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(path);
    return e.name.endsWith('.ts') ? [path] : [];
  });
}

/** The src-relative files `file` imports or re-exports (relative specifiers only). */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const found: string[] = [];
  for (const m of text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s+'(\.[^']+)'/gms)) {
    found.push(relative(SRC, resolve(dirname(file), m[1]!.replace(/\.js$/, '.ts'))));
  }
  return found;
}

const graph = new Map(sourceFiles(SRC).map((f) => [relative(SRC, f), importsOf(f)]));

describe('relay module boundaries', () => {
  test('nothing outside relay/ imports the backend SMTP client', () => {
    const outside = [...graph].filter(([file, deps]) => !file.startsWith('relay/') && deps.includes('relay/smtp-client.ts')).map(([file]) => file);
    expect(outside).toEqual([]);
  });

  test('relay/ has no import circles', () => {
    const relay = [...graph.keys()].filter((f) => f.startsWith('relay/'));
    expect(relay.length).toBeGreaterThan(3);
    const circles: string[] = [];
    const visit = (file: string, path: string[]): void => {
      for (const dep of graph.get(file) ?? []) {
        if (!dep.startsWith('relay/')) continue;
        const at = path.indexOf(dep);
        if (at >= 0) circles.push([...path.slice(at), dep].join(' → '));
        else visit(dep, [...path, dep]);
      }
    };
    for (const file of relay) visit(file, [file]);
    expect(circles).toEqual([]);
  });
});

/** A module: a folder of src/ ("limits/"), or a file at its top ("refusals.ts"). */
const moduleOf = (file: string): string => (file.includes('/') ? `${file.split('/')[0]}/` : file);

describe('module graph', () => {
  test('no import circle between modules', () => {
    const edges = new Map<string, Map<string, string>>();
    for (const [file, deps] of graph) {
      for (const dep of deps) {
        const [from, to] = [moduleOf(file), moduleOf(dep)];
        if (from === to) continue;
        if (!edges.has(from)) edges.set(from, new Map());
        // One example import per edge, so a failure names the line to change.
        if (!edges.get(from)!.has(to)) edges.get(from)!.set(to, `${file} → ${dep}`);
      }
    }
    expect(edges.size).toBeGreaterThan(8);
    const circles = new Set<string>();
    const visit = (mod: string, path: string[]): void => {
      for (const [dep] of edges.get(mod) ?? []) {
        const at = path.indexOf(dep);
        if (at >= 0) {
          // Each circle once, whichever module the walk entered it by: start at its first name.
          const ring = path.slice(at);
          const start = ring.indexOf([...ring].sort()[0]!);
          const circle = [...ring.slice(start), ...ring.slice(0, start)];
          circles.add(circle.map((m, i) => edges.get(m)!.get(circle[(i + 1) % circle.length]!)).join('; '));
        } else visit(dep, [...path, dep]);
      }
    };
    for (const mod of edges.keys()) visit(mod, [mod]);
    expect([...circles]).toEqual([]);
  });
});

describe('file graph', () => {
  test('no import circle between any two files of src/', () => {
    // Tarjan's strongly connected components: a component of two or more files is a circle.
    let next = 0;
    const index = new Map<string, number>();
    const low = new Map<string, number>();
    const stack: string[] = [];
    const circles: string[][] = [];
    const connect = (file: string): void => {
      index.set(file, next);
      low.set(file, next++);
      stack.push(file);
      for (const dep of graph.get(file) ?? []) {
        if (!graph.has(dep)) continue;
        if (!index.has(dep)) {
          connect(dep);
          low.set(file, Math.min(low.get(file)!, low.get(dep)!));
        } else if (stack.includes(dep)) low.set(file, Math.min(low.get(file)!, index.get(dep)!));
      }
      if (low.get(file) !== index.get(file)) return;
      const component: string[] = [];
      let f: string;
      do {
        f = stack.pop()!;
        component.push(f);
      } while (f !== file);
      if (component.length > 1) circles.push(component.sort());
    };
    for (const file of graph.keys()) if (!index.has(file)) connect(file);
    expect(graph.size).toBeGreaterThan(100);
    expect(circles).toEqual([]);
  });
});
