// opsuite.ts — the case tables and runners shared by the per-family op-test files test/ops_<family>.test.ts
// (the family is the op's file in native/ops.def). A family file writes its float64 references and its case
// table (one row per shape, `op: 'name'`); the runners here turn the table into tests:
//
//   forwardOpTests (matmul, norm, rope, attention, elementwise): each case on every CPU ISA level against its
//     float64 reference with the case's own bound (tolCpu, or bit-exact), and with a CUDA device CUDA against
//     CPU within tolCuda (plus GPU-only shapes). The sign of zero counts on the exact (data-moving) ops.
//   gradOpTests (backward, wise): each case on every CPU ISA level against its float64 reference with the
//     family's per-op bound; cases with an FD check also against central finite differences (float64);
//     with a CUDA device CUDA against CPU (the CPU's outputs must be finite too), per-op bound.
//
// Data, codecs, comparison and the runOp runner: optest.ts. Note (TOOLCHAIN pitfall 10): describe.skipIf still
// runs the describe body, so all work (data generation, native calls) happens inside `it`.
import { describe, it, expect } from 'vitest';
import { type IsaLevel, cpuIsas, cpuBackend } from './isa.js';
import { type Args, cudaAvailable, expectRef, expectCudaMatchesCpu, expectClose, run } from './optest.js';

// ---- forward ops: the bound travels with the case -----------------------------------------------------------

export interface Built {
  op: string; // (a Judged call of test/helpers/optest.ts)
  args: Args;
  /** float64 (or exact f32) reference per output; absent for GPU-only cases */
  ref?: () => Record<string, ArrayLike<number>>;
  exact?: boolean; // outputs must be bit-identical
  tolCpu?: number;
  tolCuda: number;
}
export interface Case {
  name: string;
  build: () => Built;
}

/** The CPU-vs-float64 tests of a forward family's cases (every ISA level) and, with a device, CUDA vs CPU. */
export function forwardOpTests(family: string, cases: Record<string, () => Case[]>, gpuOnly: () => Case[] = () => []): void {
  caseTables(family, cases, gpuOnly, {
    cpu: (isa, c) => {
      const b = c.build();
      expectRef(`cpu ${c.name}`, cpuBackend(isa), { ...b, signedZero: true }, b.ref!(), b.tolCpu!);
    },
    cuda: (c) => {
      const b = c.build();
      expectCudaMatchesCpu(c.name, { ...b, signedZero: true }, b.tolCuda);
    },
  });
}

/** The two tables every family runs: each case per CPU ISA level (grouped by op), and with a device each case
 * plus the GPU-only ones on CUDA. */
function caseTables<C extends { name: string }>(
  family: string,
  cases: Record<string, () => C[]>,
  gpuOnly: () => C[],
  check: { cpu: (isa: IsaLevel, c: C, op: string) => void; cuda: (c: C) => void },
): void {
  describe.each(cpuIsas())(`${family}: cpu backend (%s kernels) vs float64 reference`, (isa) => {
    for (const [op, make] of Object.entries(cases)) {
      describe(op, () => {
        for (const c of make()) it(c.name, () => check.cpu(isa, c, op));
      });
    }
  });

  describe.skipIf(!cudaAvailable())(`${family}: cuda backend vs cpu backend`, () => {
    const all: C[] = [];
    for (const make of Object.values(cases)) all.push(...make());
    all.push(...gpuOnly());
    for (const c of all) it(c.name, () => check.cuda(c));
  });
}

// ---- gradient and editing ops: per-op bounds, finite differences ----------------------------------------------

export interface GradBuilt {
  op: string;
  args: Args;
  ref?: () => Record<string, ArrayLike<number>>; // float64 reference per output (absent: GPU-only case)
  fd?: () => Record<string, ArrayLike<number>>; // finite-difference gradient per output (backward ops)
}
export interface GradCase {
  name: string;
  op: string;
  fd?: boolean; // build() returns a finite-difference check
  build: () => GradBuilt;
}
export interface GradBounds {
  cpu: Record<string, number>; // CPU vs float64, per op
  fd: number; // CPU vs finite differences
  cuda: Record<string, number>; // CUDA vs CPU, per op
}

/** The CPU-vs-float64, finite-difference and (with a device) CUDA-vs-CPU tests of a gradient family's cases. */
export function gradOpTests(family: string, cases: Record<string, () => GradCase[]>, tol: GradBounds, gpuOnly: () => GradCase[] = () => []): void {
  caseTables(family, cases, gpuOnly, {
    cpu: (isa, c, op) => {
      const b = c.build();
      expectRef(`cpu ${c.name}`, cpuBackend(isa), b, b.ref!(), tol.cpu[op]!);
    },
    cuda: (c) => {
      const b = c.build();
      expectCudaMatchesCpu(c.name, { ...b, cpuFinite: true }, tol.cuda[c.op]!);
    },
  });

  describe(`${family}: cpu backward vs finite differences (float64)`, () => {
    for (const make of Object.values(cases))
      for (const c of make()) {
        if (!c.fd) continue; // larger shapes: covered by the float64 reference
        it(`${c.name} (FD)`, () => {
          const b = c.build();
          expect(b.fd, 'case declares an FD check').toBeDefined();
          const res = run('cpu', b.op, b.args);
          for (const [k, g] of Object.entries(b.fd!())) expectClose(`fd ${c.name} ${k}`, res[k]!, g, tol.fd);
        });
      }
  });
}
