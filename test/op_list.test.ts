// The op list (native/ops.def) against the tree: every op has its CPU implementation in native/cpu/<file>.cpp,
// its CUDA launcher in cuda/<file>.cu (the same family file on both sides), its op-test row in its family's test
// file test/ops_<file>.test.ts, and runOp knows it; every test/ops_*.test.ts is the file of a family of the list.
// Adding an op without one of these fails here (or fails to compile: backend.h, both backends and the op-test table
// are generated from the same list).
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it, expect } from 'vitest';
import { testing } from '../lib/testing.js';
import { expectKnownOp } from './helpers/optest.js';
import { opList, opFamilies } from './helpers/opsdef.js';

const root = join(import.meta.dirname, '..');

describe('the op list (native/ops.def)', () => {
  const ops = opList();
  const testFile = (family: string): string => join(root, 'test', `ops_${family}.test.ts`);

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

  it('each family has its test file test/ops_<family>.test.ts, and every such file is a family of the list', () => {
    const families = opFamilies();
    for (const f of families) expect(existsSync(testFile(f)), `test/ops_${f}.test.ts`).toBe(true);
    const files = readdirSync(join(root, 'test')).filter((f) => /^ops_.*\.test\.ts$/.test(f));
    for (const f of files) expect(families, `test/${f} is not the file of an op family of native/ops.def`).toContain(f.replace(/^ops_|\.test\.ts$/g, ''));
  });

  for (const { name, file } of ops) {
    it(`${name}: CPU in native/cpu/${file}.cpp, CUDA in cuda/${file}.cu, a test row in test/ops_${file}.test.ts, known to runOp`, () => {
      const cpu = readFileSync(join(root, 'native', 'cpu', `${file}.cpp`), 'utf8');
      expect(cpu, `CpuBackend::${name} in native/cpu/${file}.cpp`).toMatch(new RegExp(`\\bvoid CpuBackend::${name}\\(`));
      const cu = readFileSync(join(root, 'cuda', `${file}.cu`), 'utf8');
      expect(cu, `${name}_launch in cuda/${file}.cu`).toMatch(new RegExp(`\\bvoid ${name}_launch\\(cudaStream_t`));
      // a case row (op: 'name') or a direct run of the op on a backend, in the op's family file
      const testSrc = existsSync(testFile(file)) ? readFileSync(testFile(file), 'utf8') : '';
      expect(testSrc, `a test row for ${name} in test/ops_${file}.test.ts`).toMatch(new RegExp(`(op: |run\\((backend|'cpu'|'cuda'), )'${name}'`));
      expectKnownOp(name);
    });
  }
});
