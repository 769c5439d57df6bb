// Backend op tests (ggml test-backend-ops style), through testing().runOp(backend, op, args).
//
// Two layers:
//   (a) always (no GPU needed): the CPU backend against a plain float64 reference written here, plus
//       guardOk (no write outside an output) and no NaN/Inf. This verifies the CPU ops on CI.
//   (b) only where a CUDA device is present: CUDA vs CPU on the same random inputs, with a relative
//       error bound per op (below), NaN/Inf checks and guardOk on both. Extra large shapes that only
//       make sense on a GPU (long contexts, many tiles) are compared against the CPU only.
// Inputs are uniform in [-1, 1] (scaled per case) from a seeded PRNG, so every run sees the same data.
//
// Error metric: rel = max_i |got_i − ref_i| / max_i |ref_i|  (a max-norm relative error; NMSE and ULPs are
// printed alongside on failure). Ops that only move data (add, embedding, gather_rows, kv_store) must
// be bit-exact. Data, codecs, comparison and runners: test/helpers/optest.ts.
//
// Note (TOOLCHAIN pitfall 10): describe.skipIf still runs the describe body, so all work (data
// generation, native calls) happens inside `it`.
import { describe, it, expect } from 'vitest';
import { native } from '../lib/native.js';
import { testing } from '../lib/testing.js';
import { cpuIsas, cpuBackend } from './helpers/isa.js';
import { TOL_CUDA } from './helpers/tolerances.js';
import { type Args, type DT, DTYPES, Rand, weight, errCode, expectRef, expectCudaMatchesCpu } from './helpers/optest.js';

// ---- tolerances (max-norm relative error) --------------------------------------------------------
// CPU vs float64: the CPU works in f32 with f64 reductions (norm/attention/trig) or f32 vector sums
// (linear); the bound leaves ~10x margin over the f32 rounding it can show at these sizes.
const TOL_CPU: Record<string, number> = {
  linear: 1e-5, // f32 dot products of K <= 300: rounding ~K·2⁻²⁴ of the largest partial sum, << 1e-5 of max|y|
  rmsnorm: 1e-6, // two f32 roundings per element
  rope: 2e-6, // f32 product for θ (same in the reference), cos/sin rounded to f32, 2 products + 1 sum
  attention: 1e-6, // f64 softmax/accumulation, one f32 rounding of the output
  swiglu: 1e-6,
};
// CUDA vs CPU: test/helpers/tolerances.ts (test/parity.test.ts derives its logit tolerance from the same bounds).

// ---- float64 references ------------------------------------------------------------------------------

function refLinear(x: Float32Array, W: Float64Array, bias: Float64Array | null, y0: Float32Array | null, M: number, N: number, K: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * W[n * K + k];
      if (bias) s += bias[n];
      if (y0) s += y0[m * N + n];
      y[m * N + n] = s;
    }
  return y;
}
function refRmsnorm(x: Float32Array, w: Float64Array, M: number, D: number, eps: number): Float64Array {
  const y = new Float64Array(M * D);
  for (let m = 0; m < M; m++) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[m * D + i] ** 2;
    const r = 1 / Math.sqrt(ss / D + Math.fround(eps));
    for (let i = 0; i < D; i++) y[m * D + i] = x[m * D + i] * r * w[i];
  }
  return y;
}
function refRope(x: Float32Array, pos: Int32Array, inv: Float32Array, T: number, H: number, hd: number): Float64Array {
  const y = Float64Array.from(x);
  const half = hd / 2;
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const o = (t * H + h) * hd;
      for (let i = 0; i < half; i++) {
        const th = Math.fround(pos[t] * inv[i]); // HF: the angle is an f32 product
        const c = Math.cos(th), s = Math.sin(th);
        const x1 = x[o + i], x2 = x[o + i + half];
        y[o + i] = x1 * c - x2 * s;
        y[o + i + half] = x2 * c + x1 * s;
      }
    }
  return y;
}
function refKvStore(kc0: Float32Array, vc0: Float32Array, k: Float32Array, v: Float32Array, B: number, Tn: number, Hkv: number, hd: number, S: number, P: number) {
  const kc = Float32Array.from(kc0), vc = Float32Array.from(vc0);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < Tn; t++)
      for (let h = 0; h < Hkv; h++)
        for (let d = 0; d < hd; d++) {
          const src = ((b * Tn + t) * Hkv + h) * hd + d;
          const dst = ((b * Hkv + h) * S + P + t) * hd + d;
          kc[dst] = k[src];
          vc[dst] = v[src];
        }
  return { kc, vc };
}
function refAttention(q: Float32Array, kc: Float32Array, vc: Float32Array, pad: Int32Array, B: number, Tn: number, Hq: number, Hkv: number, hd: number, S: number, P: number, scale: number): Float64Array {
  const out = new Float64Array(B * Tn * Hq * hd);
  const group = Hq / Hkv;
  for (let b = 0; b < B; b++)
    for (let t = 0; t < Tn; t++)
      for (let h = 0; h < Hq; h++) {
        const i = P + t, lo = Math.max(0, pad[b]);
        const qo = ((b * Tn + t) * Hq + h) * hd;
        if (lo > i) continue; // padding row: zeros
        const g = Math.floor(h / group);
        const base = (b * Hkv + g) * S * hd;
        const sc: number[] = [];
        let mx = -Infinity;
        for (let j = lo; j <= i; j++) {
          let d = 0;
          for (let e = 0; e < hd; e++) d += q[qo + e] * kc[base + j * hd + e];
          d *= scale;
          sc.push(d);
          mx = Math.max(mx, d);
        }
        let den = 0;
        for (let j = lo; j <= i; j++) {
          const p = Math.exp(sc[j - lo] - mx);
          den += p;
          for (let e = 0; e < hd; e++) out[qo + e] += p * vc[base + j * hd + e];
        }
        for (let e = 0; e < hd; e++) out[qo + e] /= den;
      }
  return out;
}

// ---- the case table -----------------------------------------------------------------------------------

interface Built {
  op: string; // (a Judged call of test/helpers/optest.ts)
  args: Args;
  /** float64 (or exact f32) reference per output; absent for GPU-only cases */
  ref?: () => Record<string, ArrayLike<number>>;
  exact?: boolean; // outputs must be bit-identical
  tolCpu?: number;
  tolCuda: number;
}
interface Case {
  name: string;
  build: () => Built;
}


function linearCase(M: number, N: number, K: number, dt: DT, bias: boolean, acc: boolean, xScale = 1): Case {
  const name = `linear ${dt} M=${M} N=${N} K=${K}${bias ? ' +bias' : ''}${acc ? ' accumulate' : ''}${xScale !== 1 ? ` |x|~${xScale}` : ''}`;
  return {
    name,
    build: () => {
      const r = new Rand(name);
      const x = r.uniform(M * K, xScale);
      const W = weight(r, dt, N * K, 1, 0, 'tiny');
      const b = bias ? weight(r, dt, N, 0.5) : null;
      const y0 = acc ? r.uniform(M * N) : null;
      const args: Args = { M, N, K, dtype: dt, x, W: W.arg, accumulate: acc ? 1 : 0 };
      if (b) args.bias = b.arg;
      if (y0) args.y = y0;
      return {
        op: 'linear',
        args,
        ref: () => ({ y: refLinear(x, W.vals, b ? b.vals : null, y0, M, N, K) }),
        tolCpu: TOL_CPU.linear,
        tolCuda: dt === 'F32' ? TOL_CUDA.linear_F32 : TOL_CUDA.linear_16,
      };
    },
  };
}

function linearCases(): Case[] {
  // M: GEMV sizes (1..8) and GEMM sizes; N, K include values off every multiple of 8/16/32.
  const shapes: [number, number, number][] = [
    [1, 37, 53], [1, 64, 256], [2, 33, 40], [3, 64, 96], [4, 129, 200], [5, 17, 24], [8, 70, 64],
    [9, 31, 45], [16, 48, 64], [17, 100, 75], [33, 65, 130], [64, 130, 257], [70, 64, 128], [100, 96, 192],
    // the packed GEMM's paths: wide outputs (> 256 columns: operands packed in a shared pass) and K over
    // several 256-deep steps, rows over several 96-row tiles
    [200, 300, 70], [150, 700, 600],
  ];
  const out: Case[] = [];
  let i = 0;
  for (const dt of DTYPES)
    for (const [M, N, K] of shapes) {
      out.push(linearCase(M, N, K, dt, i % 2 === 0, i % 3 === 1));
      i++;
    }
  // large activations: an f16 activation path would overflow (> 65504); ours must not
  out.push(linearCase(24, 40, 64, 'F16', false, false, 1e5));
  out.push(linearCase(2, 40, 64, 'F16', true, false, 1e5));
  return out;
}

function rmsnormCases(): Case[] {
  const shapes: [number, number][] = [[1, 64], [3, 896], [17, 33], [5, 1000], [2, 4097]];
  const out: Case[] = [];
  let i = 0;
  for (const dt of DTYPES)
    for (const [M, D] of shapes) {
      const inplace = i % 2 === 1;
      const eps = i % 3 === 0 ? 1e-5 : 1e-6;
      const name = `rmsnorm ${dt} M=${M} D=${D} eps=${eps}${inplace ? ' inplace' : ''}`;
      i++;
      out.push({
        name,
        build: () => {
          const r = new Rand(name);
          const x = r.uniform(M * D, 3, 0.5);
          const w = weight(r, dt, D, 0.5, 1);
          return {
            op: 'rmsnorm',
            args: { M, D, eps, dtype: dt, x, w: w.arg, inplace: inplace ? 1 : 0 },
            ref: () => ({ y: refRmsnorm(x, w.vals, M, D, eps) }),
            tolCpu: TOL_CPU.rmsnorm,
            tolCuda: TOL_CUDA.rmsnorm,
          };
        },
      });
    }
  return out;
}

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

function invFreq(hd: number, theta = 10000): Float32Array {
  const a = new Float32Array(hd / 2);
  for (let i = 0; i < hd / 2; i++) a[i] = 1 / theta ** ((2 * i) / hd);
  return a;
}

function ropeCases(): Case[] {
  const shapes: [number, number, number][] = [[1, 1, 32], [5, 2, 64], [17, 3, 80], [4, 4, 128], [3, 2, 2], [9, 14, 64]];
  return shapes.map(([T, H, hd]) => {
    const name = `rope n_tok=${T} n_head=${H} hd=${hd}`;
    return {
      name,
      build: () => {
        const r = new Rand(name);
        const x = r.uniform(T * H * hd);
        const pos = r.ints(T, 0, 4096);
        pos[0] = 0;
        if (T > 2) pos[T - 1] = 32767;
        const inv = invFreq(hd);
        return {
          op: 'rope',
          args: { n_tok: T, n_head: H, head_dim: hd, x, pos, inv_freq: inv },
          ref: () => ({ x: refRope(x, pos, inv, T, H, hd) }),
          tolCpu: TOL_CPU.rope,
          tolCuda: TOL_CUDA.rope,
        };
      },
    };
  });
}

function kvStoreCases(): Case[] {
  const shapes: [number, number, number, number, number, number][] = [
    // B, Tn, Hkv, hd, S, P
    [1, 1, 1, 32, 8, 0], [2, 3, 2, 64, 10, 4], [3, 5, 1, 80, 16, 11], [1, 7, 4, 128, 7, 0], [2, 1, 2, 17, 33, 32],
  ];
  return shapes.map(([B, Tn, Hkv, hd, S, P]) => {
    const name = `kv_store B=${B} Tn=${Tn} Hkv=${Hkv} hd=${hd} S=${S} P=${P}`;
    return {
      name,
      build: () => {
        const r = new Rand(name);
        const k = r.uniform(B * Tn * Hkv * hd), v = r.uniform(B * Tn * Hkv * hd);
        const kc = r.uniform(B * Hkv * S * hd), vc = r.uniform(B * Hkv * S * hd);
        return {
          op: 'kv_store',
          args: { B, Tn, Hkv, hd, S, P, k, v, kc, vc },
          ref: () => refKvStore(kc, vc, k, v, B, Tn, Hkv, hd, S, P),
          exact: true,
          tolCuda: 0,
        };
      },
    };
  });
}

type AttShape = [number, number, number, number, number, number, number, number[]]; // B Tn Hq Hkv hd S P pad
function attentionCase(s: AttShape, withRef = true, qScale = 1): Case {
  const [B, Tn, Hq, Hkv, hd, S, P, padList] = s;
  const name = `attention B=${B} Tn=${Tn} Hq=${Hq} Hkv=${Hkv} hd=${hd} S=${S} P=${P} pad=[${padList}]`;
  return {
    name,
    build: () => {
      const r = new Rand(name);
      const q = r.uniform(B * Tn * Hq * hd, qScale);
      // The whole cache is random: rows before pad[b] and after P+Tn-1 must be ignored.
      const kc = r.uniform(B * Hkv * S * hd), vc = r.uniform(B * Hkv * S * hd);
      const pad = Int32Array.from(padList);
      const scale = 1 / Math.sqrt(hd);
      return {
        op: 'attention',
        args: { B, Tn, Hq, Hkv, hd, S, P, scale, q, kc, vc, pad },
        ref: withRef ? () => ({ out: refAttention(q, kc, vc, pad, B, Tn, Hq, Hkv, hd, S, P, Math.fround(scale)) }) : undefined,
        tolCpu: TOL_CPU.attention,
        tolCuda: TOL_CUDA.attention,
      };
    },
  };
}

function attentionCases(): Case[] {
  const shapes: AttShape[] = [
    [1, 1, 1, 1, 32, 1, 0, [0]],
    [1, 5, 2, 1, 64, 8, 0, [0]], // GQA 2, prefill from an empty cache
    [2, 6, 4, 2, 64, 10, 2, [0, 3]], // left padding differs per row
    [3, 4, 4, 1, 80, 12, 3, [0, 2, 7]], // GQA 4; row b=2 is all padding for t < 4 -> zeros
    [2, 3, 8, 2, 128, 40, 33, [5, 0]], // continuation after a long prefix
    [1, 1, 2, 2, 256, 300, 250, [10]], // decode with a long context (many chunks, all warps busy)
    [2, 9, 3, 3, 7, 20, 5, [1, 4]], // odd head dim
    [1, 2, 4, 4, 96, 64, 40, [0]],
    [1, 70, 2, 1, 64, 70, 0, [0]], // prefill of 70 tokens filling the cache exactly
    [2, 3, 2, 1, 40, 5, 2, [5, 1]], // pad == S: every row of b=0 is padding
  ];
  const out = shapes.map((s) => attentionCase(s));
  out.push(attentionCase([1, 4, 4, 2, 64, 16, 3, [0]], true, 8)); // peaked softmax
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

const CASES: Record<string, () => Case[]> = {
  linear: linearCases,
  rmsnorm: rmsnormCases,
  embedding: embeddingCases,
  rope: ropeCases,
  kv_store: kvStoreCases,
  attention: attentionCases,
  swiglu: swigluCases,
  add: addCases,
  gather_rows: gatherCases,
};

// Shapes only worth running on a GPU (large grids, long contexts): CUDA vs CPU, no f64 reference.
function gpuOnlyCases(): Case[] {
  const out: Case[] = [];
  for (const dt of DTYPES) {
    out.push(linearCase(1, 4096, 1024, dt, true, false)); // decode GEMV, vector loads
    out.push(linearCase(4, 2000, 896, dt, false, true));
    out.push(linearCase(3, 1000, 1001, dt, true, false)); // scalar GEMV path
    out.push(linearCase(128, 512, 896, dt, true, false)); // 32x32 tensor-core tiles (few blocks)
    out.push(linearCase(512, 1536, 512, dt, false, true)); // 64x64 tiles (>= one block per SM)
    out.push(linearCase(200, 896, 4864, dt, true, false)); // Qwen2-0.5B down_proj shape
    out.push(linearCase(77, 150, 333, dt, true, true)); // odd K: scalar tile loads
  }
  out.push(attentionCase([1, 1, 14, 2, 64, 2048, 2000, [0]], false));
  out.push(attentionCase([2, 1, 16, 8, 128, 4096, 4000, [37, 0]], false));
  out.push(attentionCase([2, 120, 14, 2, 64, 128, 0, [0, 17]], false));
  out.push(attentionCase([1, 16, 8, 1, 256, 600, 500, [3]], false));
  // decode shapes that take the flash-decoding split (few rows, long context): 8B-like heads at 4k context;
  // a padded batch whose second row has 10 keys (most parts empty); an all-padding row split into parts
  out.push(attentionCase([1, 1, 32, 8, 128, 4096, 4095, [0]], false));
  out.push(attentionCase([2, 1, 4, 1, 64, 2000, 1999, [0, 1990]], false));
  out.push(attentionCase([1, 1, 4, 2, 64, 600, 599, [600]], false));
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
  const name = 'rmsnorm BF16 M=300 D=4096';
  out.push({
    name,
    build: () => {
      const r = new Rand(name);
      return { op: 'rmsnorm', args: { M: 300, D: 4096, eps: 1e-6, dtype: 'BF16', x: r.uniform(300 * 4096, 4), w: weight(r, 'BF16', 4096, 0.5, 1).arg }, tolCuda: TOL_CUDA.rmsnorm };
    },
  });
  return out;
}

// ---- runners --------------------------------------------------------------------------------------------

const info = native().info();
const cudaAvailable = info.cuda.available;

describe('native ops: op table', () => {
  it('runOp knows every op of backend.h', () => {
    for (const op of Object.keys(CASES)) {
      // an empty call must be rejected as a missing argument, not as an unknown op
      let err: { code?: string; message?: string } = {};
      try {
        testing().runOp('cpu', op, {});
      } catch (e) {
        err = e as typeof err;
      }
      expect(err.code, op).toBe('ERR_INVALID_ARG');
      expect(err.message, op).not.toMatch(/unknown op/);
    }
  });
});

describe.each(cpuIsas())('cpu backend (%s kernels) vs float64 reference', (isa) => {
  for (const [op, make] of Object.entries(CASES)) {
    describe(op, () => {
      for (const c of make()) {
        it(c.name, () => {
          const b = c.build();
          expectRef(`cpu ${c.name}`, cpuBackend(isa), { ...b, signedZero: true }, b.ref!(), b.tolCpu!);
        });
      }
    });
  }
});

describe('runOp argument validation', () => {
  const x = new Float32Array(6), W = new Float32Array(6);
  it('rejects an unknown op', () => {
    expect(errCode(() => testing().runOp('cpu', 'conv2d', {}))).toBe('ERR_INVALID_ARG');
  });
  it('rejects mis-sized tensors', () => {
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: 2, N: 2, K: 3, x, W: new Float32Array(5) }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: 2, N: 2, K: 4, x, W }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'add', { a: x, b: new Float32Array(5) }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'rope', { n_tok: 1, n_head: 1, head_dim: 6, x, pos: new Int32Array(1), inv_freq: new Float32Array(2) }))).toBe('ERR_INVALID_ARG');
  });
  it('rejects non-integral or negative sizes', () => {
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: 1.5, N: 2, K: 3, x, W }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: -2, N: 2, K: 3, x, W }))).toBe('ERR_INVALID_ARG');
  });
  it('rejects a weight given in the wrong array type for its dtype', () => {
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: 2, N: 2, K: 3, x, W, dtype: 'BF16' }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: 2, N: 2, K: 3, x, W: new Uint16Array(6), dtype: 'F32' }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: 2, N: 2, K: 3, x, W, dtype: 'F64' }))).toBe('ERR_INVALID_ARG');
  });
  it('rejects out-of-range indices and cache overflows', () => {
    expect(errCode(() => testing().runOp('cpu', 'embedding', { D: 2, ids: Int32Array.of(3), table: x }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'gather_rows', { D: 3, idx: Int32Array.of(-1), x }))).toBe('ERR_INVALID_ARG');
    const k = new Float32Array(2 * 4);
    expect(errCode(() => testing().runOp('cpu', 'kv_store', { B: 1, Tn: 2, Hkv: 1, hd: 4, S: 3, P: 2, k, v: k }))).toBe('ERR_INVALID_ARG');
    expect(
      errCode(() => testing().runOp('cpu', 'attention', { B: 1, Tn: 1, Hq: 3, Hkv: 2, hd: 4, S: 2, P: 0, q: new Float32Array(12), kc: new Float32Array(16), vc: new Float32Array(16), pad: Int32Array.of(0) })),
    ).toBe('ERR_INVALID_ARG');
  });
  it.skipIf(cudaAvailable)('the cuda backend reports ERR_CUDA_UNAVAILABLE when there is no device', () => {
    expect(info.cuda.reason.length).toBeGreaterThan(0);
    expect(errCode(() => testing().runOp('cuda', 'add', { a: x, b: x }))).toBe('ERR_CUDA_UNAVAILABLE');
  });
});

describe.skipIf(!cudaAvailable)('cuda backend vs cpu backend', () => {
  it('reports a device', () => {
    expect(info.cuda.devices.length).toBeGreaterThan(0);
    expect(info.cuda.runtimeVersion).toBeGreaterThan(0);
    expect(info.cuda.driverVersion).toBeGreaterThan(0);
  });
  const all: Case[] = [];
  for (const make of Object.values(CASES)) all.push(...make());
  all.push(...gpuOnlyCases());
  for (const c of all) {
    it(c.name, () => {
      const b = c.build();
      expectCudaMatchesCpu(c.name, { ...b, signedZero: true }, b.tolCuda);
    });
  }
  it('rejects bad arguments with ERR_INVALID_ARG (not a CUDA error)', () => {
    const x = new Float32Array(6);
    expect(errCode(() => testing().runOp('cuda', 'linear', { M: 2, N: 2, K: 4, x, W: x }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cuda', 'attention', { B: 1, Tn: 1, Hq: 1, Hkv: 1, hd: 300, S: 1, P: 0, q: new Float32Array(300), kc: new Float32Array(300), vc: new Float32Array(300), pad: Int32Array.of(0) }))).toBe('ERR_INVALID_ARG');
    // the backend stays usable afterwards
    const r = testing().runOp('cuda', 'add', { a: x, b: x });
    expect(r.guardOk).toBe(true);
  });
});
