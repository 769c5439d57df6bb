// ops_elementwise — the elementwise family of native/ops.def (native/cpu/elementwise.cpp, cuda/elementwise.cu):
// embedding (bit-exact, with f16/bf16 extremes), swiglu, add (bit-exact), gather_rows (bit-exact), with the
// output aliasing an input. (Element counts past 2^31 for add and swiglu, with gpt2's gelu / gelu_bwd and backward's
// swiglu_bwd: elementwise_big.test.ts, one file for the size_t ops of three families.)
//   always: the CPU backend on every ISA level against a float64 reference (guard sentinels, no NaN/Inf);
//   with a CUDA device: CUDA vs CPU on the same inputs, plus GPU-only 2^20-element swiglu.
// Error metric: rel = max_i |got_i − ref_i| / max_i |ref_i| (max-norm relative error; NMSE and ULPs are printed
// alongside on failure). Inputs are uniform in [-1, 1] (scaled per case) from a seeded PRNG named by the case.
// Runners: test/helpers/opsuite.ts (forwardOpTests); data, codecs, comparison: test/helpers/optest.ts.
import { DTYPES, Rand, weight } from './helpers/optest.js';
import { type Case, forwardOpTests } from './helpers/opsuite.js';
import { TOL_CUDA } from './helpers/tolerances.js';

// CPU vs float64 (swiglu; the others are exact). CUDA vs CPU: test/helpers/tolerances.ts.
const TOL_CPU = { swiglu: 1e-6 };

function embeddingCases(): Case[] {
  const out: Case[] = [];
  for (const dt of DTYPES)
    for (const [V, D, n] of [[50, 64, 7], [13, 33, 20], [5, 1, 1]] as [number, number, number][]) {
      const name = `embedding ${dt} V=${V} D=${D} n=${n}`;
      out.push({
        name,
        build: () => {
          const r = new Rand(name);
          const table = weight(r, dt, V * D, 1, 0, 'all');
          const ids = r.ints(n, 0, V - 1);
          ids[0] = 0; // the row holding the special values
          if (n > 1) ids[n - 1] = V - 1;
          const y = new Float64Array(n * D);
          for (let i = 0; i < n; i++) for (let d = 0; d < D; d++) y[i * D + d] = table.vals[ids[i] * D + d];
          return { op: 'embedding', args: { D, dtype: dt, ids, table: table.arg }, ref: () => ({ y }), exact: true, tolCuda: 0 };
        },
      });
    }
  return out;
}

function swigluCases(): Case[] {
  const out: Case[] = [];
  for (const n of [1, 7, 1000, 4097])
    for (const alias of [0, 1, 2]) {
      if (n === 1 && alias) continue;
      const name = `swiglu n=${n} alias=${alias}`;
      out.push({
        name,
        build: () => {
          const r = new Rand(name);
          const gate = r.uniform(n, 8), up = r.uniform(n, 2);
          const y = new Float64Array(n);
          for (let i = 0; i < n; i++) y[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
          return { op: 'swiglu', args: { gate, up, alias }, ref: () => ({ y }), tolCpu: TOL_CPU.swiglu, tolCuda: TOL_CUDA.swiglu };
        },
      });
    }
  return out;
}

function addCases(): Case[] {
  const out: Case[] = [];
  for (const n of [1, 7, 1000, 4097])
    for (const alias of [0, 1, 2]) {
      if (n === 1 && alias) continue;
      const name = `add n=${n} alias=${alias}`;
      out.push({
        name,
        build: () => {
          const r = new Rand(name);
          const a = r.uniform(n, 10), b = r.uniform(n);
          const y = new Float64Array(n);
          for (let i = 0; i < n; i++) y[i] = Math.fround(a[i] + b[i]);
          return { op: 'add', args: { a, b, alias }, ref: () => ({ y }), exact: true, tolCuda: 0 };
        },
      });
    }
  return out;
}

function gatherCases(): Case[] {
  return ([[10, 33, 5], [7, 64, 12], [100, 1, 3], [4, 896, 9]] as [number, number, number][]).map(([R, D, n]) => {
    const name = `gather_rows R=${R} D=${D} n=${n}`;
    return {
      name,
      build: () => {
        const r = new Rand(name);
        const x = r.uniform(R * D);
        const idx = r.ints(n, 0, R - 1);
        idx[0] = R - 1;
        const y = new Float64Array(n * D);
        for (let i = 0; i < n; i++) for (let d = 0; d < D; d++) y[i * D + d] = x[idx[i] * D + d];
        return { op: 'gather_rows', args: { D, x, idx }, ref: () => ({ y }), exact: true, tolCuda: 0 };
      },
    };
  });
}

// Sizes only worth running on a GPU: CUDA vs CPU, no f64 reference.
function gpuOnlyCases(): Case[] {
  const out: Case[] = [];
  for (const n of [1 << 20, (1 << 20) + 3]) {
    const name = `swiglu n=${n}`;
    out.push({
      name,
      build: () => {
        const r = new Rand(name);
        return { op: 'swiglu', args: { gate: r.uniform(n, 8), up: r.uniform(n) }, tolCuda: TOL_CUDA.swiglu };
      },
    });
  }
  return out;
}

forwardOpTests('elementwise', { embedding: embeddingCases, swiglu: swigluCases, add: addCases, gather_rows: gatherCases }, gpuOnlyCases);
