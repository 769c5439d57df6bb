// The op list (native/ops.def) against the tree: every op has its CPU implementation in native/cpu/<file>.cpp,
// its CUDA launcher in cuda/<file>.cu (the same family file on both sides), an op-test row in
// test/ops*.test.ts, and runOp knows it. Adding an op without one of these fails here (or fails to compile:
// backend.h, both backends and the op-test table are generated from the same list).
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it, expect } from 'vitest';
import { testing } from '../lib/testing.js';

const root = join(import.meta.dirname, '..');

interface OpLine {
  name: string;
  file: string;
}
function opList(): OpLine[] {
  const src = readFileSync(join(root, 'native', 'ops.def'), 'utf8');
  const out: OpLine[] = [];
  for (const m of src.matchAll(/^RE_OP\((\w+),\s*(\w+),/gm)) out.push({ name: m[1]!, file: m[2]! });
  return out;
}

describe('the op list (native/ops.def)', () => {
  const ops = opList();
  const testSrc = readdirSync(join(root, 'test'))
    .filter((f) => /^ops.*\.test\.ts$/.test(f))
    .map((f) => readFileSync(join(root, 'test', f), 'utf8'))
    .join('\n');

  it('lists the 28 ops of backend.h, each once, and is the table runOp runs', () => {
    expect(ops.length).toBe(28);
    expect(new Set(ops.map((o) => o.name)).size).toBe(ops.length);
    expect(testing().opNames()).toEqual(ops.map((o) => o.name));
  });

  it('native/cpu/ and cuda/ pair file for file', () => {
    const cpu = readdirSync(join(root, 'native', 'cpu')).filter((f) => f.endsWith('.cpp')).map((f) => f.replace(/\.cpp$/, ''));
    const cu = readdirSync(join(root, 'cuda')).filter((f) => f.endsWith('.cu')).map((f) => f.replace(/\.cu$/, ''));
    // every CUDA file has its CPU twin (cuda_backend.cu <-> cpu_backend.cpp); the CPU side also has its
    // infrastructure (thread pool, ISA dispatch, the per-ISA kernel files), which has no CUDA counterpart
    for (const f of cu) expect(cpu, `cuda/${f}.cu has no native/cpu twin`).toContain(f === 'cuda_backend' ? 'cpu_backend' : f);
    for (const f of new Set(ops.map((o) => o.file))) {
      expect(existsSync(join(root, 'native', 'cpu', `${f}.cpp`)), `native/cpu/${f}.cpp`).toBe(true);
      expect(existsSync(join(root, 'cuda', `${f}.cu`)), `cuda/${f}.cu`).toBe(true);
    }
  });

  for (const { name, file } of ops) {
    it(`${name}: CPU in native/cpu/${file}.cpp, CUDA in cuda/${file}.cu, a test row, known to runOp`, () => {
      const cpu = readFileSync(join(root, 'native', 'cpu', `${file}.cpp`), 'utf8');
      expect(cpu, `CpuBackend::${name} in native/cpu/${file}.cpp`).toMatch(new RegExp(`\\bvoid CpuBackend::${name}\\(`));
      const cu = readFileSync(join(root, 'cuda', `${file}.cu`), 'utf8');
      expect(cu, `${name}_launch in cuda/${file}.cu`).toMatch(new RegExp(`\\bvoid ${name}_launch\\(cudaStream_t`));
      // a case row (op: 'name') or a direct run of the op on a backend
      expect(testSrc, `a test row for ${name} in test/ops*.test.ts`).toMatch(new RegExp(`(op: |run\\((backend|'cpu'|'cuda'), )'${name}'`));
      // an empty call is rejected as a missing argument, not as an unknown op
      let err: { code?: string; message?: string } = {};
      try {
        testing().runOp('cpu', name, {});
      } catch (e) {
        err = e as typeof err;
      }
      expect(err.code).toBe('ERR_INVALID_ARG');
      expect(err.message).not.toMatch(/unknown op/);
    });
  }
});
