// Element counts of the elementwise ops are size_t end to end (backend.h, both backends, model/edit callers):
// with an int count, swiglu over [tokens, d_ff] wraps negative at about 150k tokens for d_ff 14336 and the CPU
// loop silently does nothing. testing().runOp(backend, 'elementwise_big', { n, kind }) (native/optest.cpp) fills one
// backend buffer of n floats, runs the op in place, and reads back samples at the start, around every multiple
// of 2^31 and at the end.
//
// The boundary case (n = 2^31 + 40: 8.6 GB per buffer, two for swiglu_bwd) runs where memory allows it: on a
// machine with >= 64 GB of RAM and the buffer plus 16 GB free (CPU), on a CUDA device with the buffer plus 4 GB
// free, or wherever REPAIR_BIG_TESTS=1 asks for it (then only when the buffers plus 2 GB are free);
// REPAIR_BIG_TESTS=0 turns it off, REPAIR_BIG_TESTS=cuda keeps only the device's (scripts/gpu-check.sh: filling
// 8.6 GB of host memory takes 10-100 s per case on a CPU, the device does it in about a second). Below the boundary the same path runs at n = 2^20 + 37 everywhere.
import { describe, it, expect } from 'vitest';
import os from 'node:os';
import { native } from '../lib/native.js';
import { run } from './helpers/optest.js';

let haveAddon = true;
let cudaFree = 0;
let cudaAvailable = false;
try {
  const i = native().info();
  cudaAvailable = i.cuda.available;
  cudaFree = i.cuda.devices[0]?.freeMemory ?? 0;
} catch {
  haveAddon = false;
}

const KINDS = ['add', 'swiglu', 'gelu', 'gelu_bwd', 'swiglu_bwd'] as const;
type Kind = (typeof KINDS)[number];
const BIG = 2 ** 31 + 40;
const GB = 2 ** 30;

const sig = (x: number) => 1 / (1 + Math.exp(-x));
const C = Math.sqrt(2 / Math.PI), A3 = 0.044715;
const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(C * (x + A3 * x ** 3)));
const geluGrad = (x: number) => {
  const t = Math.tanh(C * (x + A3 * x ** 3));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * C * (1 + 3 * A3 * x * x);
};
function expected(kind: Kind, x: number): [number, number?] {
  switch (kind) {
    case 'add': return [2 * x];
    case 'swiglu': return [x * sig(x) * x];
    case 'gelu': return [gelu(x)];
    case 'gelu_bwd': return [x * geluGrad(x)];
    case 'swiglu_bwd': {
      const s = sig(x);
      return [x * x * s * (1 + x * (1 - s)), x * x * s];
    }
  }
}

function check(backend: string, kind: Kind, n: number): void {
  const o = run(backend, 'elementwise_big', { n, kind }); // test/helpers/optest.ts
  const idx = Array.from(o.index_hi!, (h, j) => h * 65536 + o.index_lo![j]!);
  // the samples cover the start, both sides of every 2^31 boundary below n, and the end
  expect(idx[0]).toBe(0);
  expect(idx.at(-1)).toBe(n - 1);
  for (let b = 2 ** 31; b < n; b += 2 ** 31) {
    expect(idx).toContain(b - 1);
    expect(idx).toContain(b);
  }
  idx.forEach((i, j) => {
    const x = 1 + (i % 7) / 8;
    expect(o.x![j]).toBe(Math.fround(x));
    const [y, y2] = expected(kind, x);
    expect(Math.abs(o.y![j]! - y), `${backend} ${kind} y[${i}] = ${o.y![j]} (want ${y})`).toBeLessThanOrEqual(2e-6 * Math.abs(y) + 1e-7);
    if (y2 !== undefined) expect(Math.abs(o.y2![j]! - y2), `${backend} ${kind} dup[${i}]`).toBeLessThanOrEqual(2e-6 * Math.abs(y2) + 1e-7);
  });
}

const force = process.env.REPAIR_BIG_TESTS;
function bigAllowed(backend: string, kind: Kind): string | undefined {
  const need = (kind === 'swiglu_bwd' ? 2 : 1) * BIG * 4;
  if (force === '0') return 'REPAIR_BIG_TESTS=0';
  if (force === 'cuda' && backend !== 'cuda') return 'REPAIR_BIG_TESTS=cuda';
  if (backend === 'cuda') return cudaFree >= need + 4 * GB ? undefined : `${(cudaFree / GB).toFixed(1)} GiB free on the device, ${(need / GB + 4).toFixed(1)} wanted`;
  const free = os.freemem();
  if (force === '1') return free >= need + 2 * GB ? undefined : `${(free / GB).toFixed(1)} GiB free, ${(need / GB + 2).toFixed(1)} wanted`;
  return os.totalmem() >= 64 * GB && free >= need + 16 * GB ? undefined : `needs >= 64 GiB of RAM with ${(need / GB + 16).toFixed(1)} GiB free (or REPAIR_BIG_TESTS=1)`;
}

const backends = cudaAvailable ? ['cpu', 'cuda'] : ['cpu'];
describe.skipIf(!haveAddon)('elementwise ops: size_t element counts', () => {
  for (const backend of backends) {
    for (const kind of KINDS) {
      it(`${backend} ${kind}: n = 2^20 + 37 (the sampled harness below the boundary)`, () => check(backend, kind, 2 ** 20 + 37));
      const why = bigAllowed(backend, kind);
      it.skipIf(!!why)(`${backend} ${kind}: n = 2^31 + 40 (past the int boundary)${why ? ` — skipped: ${why}` : ''}`, () => check(backend, kind, BIG), 120_000);
    }
  }
});
