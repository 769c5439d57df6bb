// ops_wise — the wise family of native/ops.def (native/cpu/wise.cpp, cuda/wise.cu): the WISE kernels act_dist,
// act_dist_bwd, masked_sgd and ties_merge.
//   (a) always (no GPU): every op on the CPU backend on every ISA level against a float64 reference written here;
//       act_dist_bwd also against a central finite difference (float64). guardOk and no NaN/Inf on every call.
//   (b) masked_sgd: float64 reference with a JS Philox4x32-10 (the mask bits must match native/philox.h
//       exactly), ρ ∈ {0.2, 1}, clamp on/off, weight decay; the Philox keep fraction over 10⁶ elements
//       is within ρ ± 3σ.
//   (c) ties_merge: float64 reference of ALGORITHM.md §1.8 / backend.h (ties in |τ| keep the lower
//       index), deliberate ties, all-zero shards and rows, k = 1..3, non-uniform weights, densities
//       0.53 / 0.1 (and the 0 / 1 edges), base dtypes, out aliasing a shard.
//   (d) with a CUDA device: CUDA vs CPU on the same inputs for every case (+ larger GPU-only shapes),
//       identical Philox masks on both backends, identical TIES tie-breaking.
// Error metric: rel = max_i |got_i − ref_i| / max_i |ref_i|. Runners: test/helpers/opsuite.ts (gradOpTests); data,
// codecs, comparison and finite differences: test/helpers/optest.ts.
// Note (TOOLCHAIN pitfall 10): describe.skipIf still runs the describe body: all work happens inside `it`.
import { describe, it, expect } from 'vitest';
import { type Args, type DT, DTYPES, Rand, weight, encodeWeight, f16Decode, bf16Decode, expectExact, run, fdGrad, cudaAvailable } from './helpers/optest.js';
import { type GradCase as Case, gradOpTests } from './helpers/opsuite.js';
import { f64, sigmoid } from './helpers/opref.js';

// ---- tolerances ----------------------------------------------------------------------------------
// CPU vs float64 reference: the CPU rounds to f32 once or twice per element (f64 reductions in
// act_dist / ties; f32 FMA sums in masked_sgd's g). ~10x margin over what the f32 rounding can show at these sizes.
const TOL_CPU: Record<string, number> = {
  act_dist: 2e-6,
  act_dist_bwd: 2e-6,
  masked_sgd: 4e-6, // f32 g (<= 37 terms) and f32 update, against |W| ~ 1
  ties_merge: 0, // same f64 arithmetic in the same order, one final f32 rounding: exact
};
// Finite differences (float64 forward, h = 1e-6·max(1, |x|)): truncation ~h², cancellation ~1e-10;
// the op itself is f32 (~1e-7). 1e-5 catches any wrong term.
const TOL_FD = 1e-5;
// CUDA vs CPU.
const TOL_CUDA: Record<string, number> = {
  act_dist: 1e-6, // f64 on both
  act_dist_bwd: 1e-6,
  masked_sgd: 2e-5, // g in f32 (tile FMA order = the CPU's m order when it uses FMA); identical mask
  ties_merge: 0, // identical threshold/tie selection and f64 arithmetic with explicit rounding: exact
};

// ---- Philox4x32-10 (native/philox.h) in JS ---------------------------------------------------------

/** [hi, lo] of the 64-bit product of two uint32. */
function mulhilo(a: number, b: number): [number, number] {
  const aL = a & 0xffff, aH = a >>> 16, bL = b & 0xffff, bH = b >>> 16;
  const ll = aL * bL, hl = aH * bL, lh = aL * bH, hh = aH * bH;
  const mid = (ll >>> 16) + (hl & 0xffff) + (lh & 0xffff);
  const hi = (hh + Math.floor(hl / 65536) + Math.floor(lh / 65536) + Math.floor(mid / 65536)) >>> 0;
  const lo = Math.imul(a, b) >>> 0;
  return [hi, lo];
}
function philoxV0(c0: number, c1: number, k0: number, k1: number): number {
  const M0 = 0xd2511f53, M1 = 0xcd9e8d57, W0 = 0x9e3779b9, W1 = 0xbb67ae85;
  let c2 = 0, c3 = 0;
  for (let r = 0; r < 10; r++) {
    const [hi0, lo0] = mulhilo(M0, c0);
    const [hi1, lo1] = mulhilo(M1, c2);
    const n0 = (hi1 ^ c1 ^ k0) >>> 0, n1 = lo1, n2 = (hi0 ^ c3 ^ k1) >>> 0, n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 = (k0 + W0) >>> 0;
    k1 = (k1 + W1) >>> 0;
  }
  return c0;
}
/** philox_keep(seed, index, rho) for seed = seedHi·2³² + seedLo and index < 2⁵³. */
function philoxKeep(seedLo: number, seedHi: number, index: number, rho: number): boolean {
  const lo = index % 4294967296, hi = Math.floor(index / 4294967296);
  const u = (philoxV0(lo >>> 0, hi >>> 0, seedLo >>> 0, seedHi >>> 0) >>> 8) / 16777216;
  return u < Math.fround(rho);
}

// ---- float64 references ----------------------------------------------------------------------------

const GELU_K = 0.7978845608028654;
function actFn(x: number, act: number): number {
  if (act === 1) return x / (1 + Math.exp(-x));
  if (act === 2) return 0.5 * x * (1 + Math.tanh(GELU_K * (x + 0.044715 * x * x * x)));
  return x;
}

// d[i, t] = ‖φ(os_i[t]) − φ(om[t])‖
function refActDist(os: ArrayLike<number>, om: ArrayLike<number>, n: number, nm: number, D: number, act: number): Float64Array {
  const d = new Float64Array(nm * n);
  for (let t = 0; t < n; t++)
    for (let i = 0; i < nm; i++) {
      let ss = 0;
      for (let e = 0; e < D; e++) ss += (actFn(os[(t * nm + i) * D + e], act) - actFn(om[t * D + e], act)) ** 2;
      d[i * n + t] = Math.sqrt(ss);
    }
  return d;
}
function refActDistBwd(gd: Float32Array, os: Float32Array, om: Float32Array, dos0: Float32Array | null, n: number, D: number, act: number): Float64Array {
  // analytic: ∂d/∂os = (φ(os) − φ(om))·φ'(os) / d; φ' by the closed forms (independent of the FD check)
  const grad = (x: number): number => {
    if (act === 1) {
      const s = sigmoid(x);
      return s * (1 + x * (1 - s));
    }
    if (act === 2) {
      const t = Math.tanh(GELU_K * (x + 0.044715 * x ** 3));
      return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_K * (1 + 3 * 0.044715 * x * x);
    }
    return 1;
  };
  const d = refActDist(os, om, n, 1, D, act);
  const o = new Float64Array(n * D);
  for (let t = 0; t < n; t++)
    for (let e = 0; e < D; e++) {
      const i = t * D + e;
      o[i] = (dos0 ? dos0[i] : 0) + (d[t] > 0 ? ((gd[t] / d[t]) * (actFn(os[i], act) - actFn(om[i], act))) * grad(os[i]) : 0);
    }
  return o;
}

function refMaskedSgd(p: { Wp: Float32Array; G: Float32Array; A: Float32Array; Wv: Float64Array; M: number; N: number; K: number; seedLo: number; seedHi: number; rho: number; lr: number; wd: number; clamp: number }): Float64Array {
  const { Wp, G, A, Wv, M, N, K, seedLo, seedHi } = p;
  const rho = Math.fround(p.rho), lr = Math.fround(p.lr), wd = Math.fround(p.wd), c = Math.fround(p.clamp);
  const out = new Float64Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      let g = 0;
      for (let m = 0; m < M; m++) g += G[m * N + n] * A[m * K + k];
      const i = n * K + k;
      const keep = rho >= 1 || philoxKeep(seedLo, seedHi, i, rho) ? 1 : 0;
      let v = Wp[i] - lr * (keep * g + wd * Wp[i]);
      if (c > 0) v = Math.min(Math.max(v, Wv[i] - c), Wv[i] + c);
      out[i] = v;
    }
  return out;
}

/** §1.8 / backend.h: trim each τ_i to its floor(density·n) largest |τ_i| (ties: lower index), sign election, disjoint mean. */
function refTies(base: Float64Array, shards: Float32Array[], weights: Float32Array, density: number): { out: Float64Array; keep: Uint8Array[] } {
  const n = base.length, k = shards.length;
  const K = Math.floor(Math.fround(density) * n);
  const keep: Uint8Array[] = [];
  for (let i = 0; i < k; i++) {
    // |τ| as the op forms it: an f32 difference (shard and base are f32 values)
    const mag = new Float64Array(n);
    for (let p = 0; p < n; p++) mag[p] = Math.abs(Math.fround(shards[i][p] - base[p]));
    const order = Array.from({ length: n }, (_, p) => p).sort((a, b) => mag[b] - mag[a] || a - b);
    const kp = new Uint8Array(n);
    for (let r = 0; r < Math.min(K, n); r++) kp[order[r]] = 1;
    keep.push(kp);
  }
  const out = new Float64Array(n);
  for (let p = 0; p < n; p++) {
    const u: number[] = [];
    let sum = 0;
    for (let i = 0; i < k; i++) {
      u.push(keep[i][p] ? weights[i] * (shards[i][p] - base[p]) : 0);
      sum += u[i];
    }
    const s = sum >= 0 ? 1 : -1;
    let num = 0, den = 0;
    for (let i = 0; i < k; i++)
      if (u[i] !== 0 && Math.sign(u[i]) === s) {
        num += u[i];
        den += weights[i];
      }
    out[p] = base[p] + num / (den === 0 ? 1 : den);
  }
  return { out, keep };
}

// ---- the case table ---------------------------------------------------------------------------------

function actDistCases(): Case[] {
  const out: Case[] = [];
  for (const act of [0, 1, 2])
    for (const [n, nm, D] of [[5, 1, 7], [4, 3, 33], [2, 2, 300]] as [number, number, number][]) {
      const name = `act_dist act=${act} n=${n} nm=${nm} D=${D}`;
      out.push({
        name,
        op: 'act_dist',
        build: () => {
          const r = new Rand(name);
          const om = r.uniform(n * D, 2);
          const os = r.uniform(n * nm * D, 2);
          // token 0 of memory 0 equals the main output (distance exactly 0); memory nm−1 of the last
          // token is a tiny perturbation of it (relative accuracy of a small distance)
          for (let e = 0; e < D; e++) {
            os[e] = om[e];
            const t = n - 1;
            os[(t * nm + nm - 1) * D + e] = Math.fround(om[t * D + e] * (1 + 1e-3));
          }
          return { op: 'act_dist', args: { n, nm, D, act, os, om }, ref: () => ({ d: refActDist(os, om, n, nm, D, act) }) };
        },
      });
    }
  return out;
}

function actDistBwdCases(): Case[] {
  const out: Case[] = [];
  let c = 0;
  for (const act of [0, 1, 2])
    for (const [n, D] of [[5, 7], [3, 300]] as [number, number][]) {
      const acc = c++ % 2 === 1;
      const name = `act_dist_bwd act=${act} n=${n} D=${D}${acc ? ' accumulate' : ''}`;
      out.push({
        name,
        op: 'act_dist_bwd',
        fd: n * D <= 100,
        build: () => {
          const r = new Rand(name);
          const om = r.uniform(n * D, 2), os = r.uniform(n * D, 2), gd = r.uniform(n);
          for (let e = 0; e < D; e++) os[e] = om[e]; // token 0: d = 0 → zero gradient
          const dos0 = acc ? r.uniform(n * D) : null;
          const args: Args = { n, D, act, gd, os, om, accumulate: acc ? 1 : 0 };
          if (dos0) args.dos = dos0;
          return {
            op: 'act_dist_bwd',
            args,
            ref: () => ({ dos: refActDistBwd(gd, os, om, dos0, n, D, act) }),
            fd:
              n * D <= 100
                ? () => {
                    // token 0 sits on the kink of ‖·‖ at 0 (the op's gradient there is defined as 0):
                    // differentiate the other tokens only
                    const g = fdGrad((x) => {
                      const d = refActDist(x, om, n, 1, D, act);
                      let s = 0;
                      for (let t = 1; t < n; t++) s += gd[t] * d[t];
                      return s;
                    }, os);
                    for (let e = 0; e < D; e++) g[e] = 0;
                    if (dos0) for (let i = 0; i < g.length; i++) g[i] += dos0[i];
                    return { dos: g };
                  }
                : undefined,
          };
        },
      });
    }
  return out;
}

interface SgdSpec {
  M: number;
  N: number;
  K: number;
  rho: number;
  clamp: number;
  wd: number;
  lr: number;
  dt: DT;
  seedLo: number;
  seedHi: number;
}
function maskedSgdCase(s: SgdSpec): Case {
  const name = `masked_sgd ${s.dt} M=${s.M} N=${s.N} K=${s.K} rho=${s.rho} lr=${s.lr} wd=${s.wd} clamp=${s.clamp} seed=${s.seedHi}:${s.seedLo}`;
  return {
    name,
    op: 'masked_sgd',
    build: () => {
      const r = new Rand(name);
      const { M, N, K } = s;
      const Wv = weight(r, s.dt, N * K);
      const Wp = new Float32Array(N * K);
      for (let i = 0; i < N * K; i++) Wp[i] = Math.fround(Wv.vals[i] + 0.02 * (2 * r.r() - 1));
      const G = r.uniform(M * N), A = r.uniform(M * K);
      const args: Args = { M, N, K, dtype: s.dt, Wp, G, A, Wv: Wv.arg, rho: s.rho, lr: s.lr, wd: s.wd, clamp: s.clamp };
      if (s.seedHi === 0 && s.seedLo % 2 === 0) args.seed = s.seedLo;
      else Object.assign(args, { seed_lo: s.seedLo, seed_hi: s.seedHi });
      return { op: 'masked_sgd', args, ref: () => ({ Wp: refMaskedSgd({ Wp, G, A, Wv: Wv.vals, ...s }) }) };
    },
  };
}
function maskedSgdCases(): Case[] {
  return [
    maskedSgdCase({ M: 3, N: 5, K: 7, rho: 0.2, clamp: 0, wd: 0, lr: 0.5, dt: 'F32', seedLo: 42, seedHi: 0 }),
    maskedSgdCase({ M: 3, N: 5, K: 7, rho: 1.0, clamp: 0, wd: 1e-2, lr: 0.5, dt: 'F32', seedLo: 42, seedHi: 0 }),
    maskedSgdCase({ M: 17, N: 70, K: 65, rho: 0.2, clamp: 0.05, wd: 1e-5, lr: 1, dt: 'BF16', seedLo: 0xdeadbeef, seedHi: 0x12345 }),
    maskedSgdCase({ M: 17, N: 70, K: 65, rho: 1.0, clamp: 0.05, wd: 0, lr: 1, dt: 'F16', seedLo: 7, seedHi: 0 }),
    maskedSgdCase({ M: 0, N: 4, K: 9, rho: 0.5, clamp: 0, wd: 0.1, lr: 0.3, dt: 'F32', seedLo: 3, seedHi: 1 }),
    maskedSgdCase({ M: 37, N: 130, K: 200, rho: 0.2, clamp: 1.0, wd: 1e-5, lr: 0.05, dt: 'F32', seedLo: 123456, seedHi: 0 }),
    maskedSgdCase({ M: 5, N: 67, K: 129, rho: 0.53, clamp: 0.01, wd: 1e-3, lr: 2, dt: 'BF16', seedLo: 99, seedHi: 0xffffffff }),
    // the GEMM's shared-packing path (K > 256 output columns) with Gᵀ read transposed over two 256-deep steps
    maskedSgdCase({ M: 300, N: 100, K: 300, rho: 0.2, clamp: 0.5, wd: 1e-5, lr: 0.01, dt: 'F32', seedLo: 5, seedHi: 6 }),
  ];
}

interface TiesSpec {
  name: string;
  n: number;
  k: number;
  density: number;
  dt: DT;
  weights?: number[];
  alias?: number;
  quant?: boolean; // base = multiples of 2⁻⁸ (exact in every dtype), so quantised deltas give exact ties in |τ|
  make: (r: Rand, base: Float64Array, i: number) => Float32Array; // shard i
}
function tiesCase(s: TiesSpec): Case {
  const name = `ties_merge ${s.name} ${s.dt} n=${s.n} k=${s.k} density=${s.density}${s.alias !== undefined ? ` alias=${s.alias}` : ''}`;
  return {
    name,
    op: 'ties_merge',
    build: () => {
      const r = new Rand(name);
      const f = r.uniform(s.n, 0.5);
      if (s.quant) for (let p = 0; p < s.n; p++) f[p] = Math.round(f[p] * 256) / 256;
      const b = encodeWeight(f, s.dt);
      const shards: Float32Array[] = [];
      for (let i = 0; i < s.k; i++) shards.push(s.make(r, b.vals, i));
      const weights = Float32Array.from(s.weights ?? Array.from({ length: s.k }, () => 1 / s.k));
      const flat = new Float32Array(s.k * s.n);
      shards.forEach((sh, i) => flat.set(sh, i * s.n));
      const args: Args = { k: s.k, density: s.density, dtype: s.dt, base: b.arg, shards: flat, weights };
      if (s.alias !== undefined) args.alias = s.alias;
      return { op: 'ties_merge', args, ref: () => ({ out: refTies(b.vals, shards, weights, s.density).out }) };
    },
  };
}
/** base + a sparse random delta, quantised to multiples of q (many exact ties in |τ|), density `nz`. */
function sparseShard(r: Rand, base: Float64Array, nz: number, q: number, levels: number): Float32Array {
  const a = new Float32Array(base.length);
  for (let p = 0; p < base.length; p++) {
    a[p] = base[p];
    if (r.r() < nz) {
      const m = r.int(1, levels) * (r.r() < 0.5 ? -1 : 1);
      // chosen so that fround(shard − base) is exactly m·q: base + m·q must be representable; base is
      // a multiple of 2⁻⁸ here (see tiesCases), q is 2⁻⁴
      a[p] = Math.fround(base[p] + m * q);
    }
  }
  return a;
}
function tiesCases(): Case[] {
  const out: Case[] = [];
  const q = 1 / 16;
  // deliberate ties (with quant: true): deltas ±m/16 on a base of multiples of 2⁻⁸
  const quantised = (nz: number, levels: number) => (r: Rand, base: Float64Array) => sparseShard(r, base, nz, q, levels);
  const gaussianish = (r: Rand, base: Float64Array) => {
    const a = new Float32Array(base.length);
    for (let p = 0; p < base.length; p++) a[p] = Math.fround(base[p] + (r.r() < 0.3 ? 0.1 * (2 * r.r() - 1) : 0));
    return a;
  };
  for (const dt of DTYPES)
    for (const density of [0.53, 0.1]) {
      out.push(tiesCase({ name: 'ties', n: 97, k: 3, density, dt, quant: true, weights: [0.5, 0.3, 0.2], make: quantised(0.6, 3) }));
      out.push(tiesCase({ name: 'random', n: 500, k: 2, density, dt, make: gaussianish }));
    }
  out.push(tiesCase({ name: 'k1', n: 64, k: 1, density: 0.53, dt: 'F32', quant: true, weights: [0.7], make: quantised(0.9, 2) }));
  out.push(tiesCase({ name: 'zero-shard', n: 101, k: 3, density: 0.53, dt: 'F32', weights: [1, 2, 0.5], make: (r, b, i) => (i === 1 ? Float32Array.from(b) : gaussianish(r, b)) }));
  out.push(tiesCase({ name: 'all-zero', n: 40, k: 2, density: 0.53, dt: 'BF16', make: (_r, b) => Float32Array.from(b) }));
  out.push(tiesCase({ name: 'density1', n: 50, k: 3, density: 1, dt: 'F32', quant: true, weights: [0.2, 0.5, 0.3], make: quantised(0.5, 2) }));
  out.push(tiesCase({ name: 'density0', n: 50, k: 2, density: 0, dt: 'F32', make: gaussianish }));
  out.push(tiesCase({ name: 'alias', n: 300, k: 3, density: 0.1, dt: 'F32', quant: true, alias: 1, weights: [1, 1, 2], make: quantised(0.4, 4) }));
  out.push(tiesCase({ name: 'one-level', n: 77, k: 2, density: 0.53, dt: 'F16', quant: true, weights: [0.9, 0.1], make: quantised(0.8, 1) }));
  return out;
}

const CASES: Record<string, () => Case[]> = {
  act_dist: actDistCases,
  act_dist_bwd: actDistBwdCases,
  masked_sgd: maskedSgdCases,
  ties_merge: tiesCases,
};

/** Larger shapes for the GPU paths (multi-chunk radix select); compared CUDA vs CPU only. */
function gpuOnlyCases(): Case[] {
  const out: Case[] = [];
  out.push({
    name: 'act_dist (gpu) stacked n=50 nm=17 D=896 act=2',
    op: 'act_dist',
    build: () => {
      const r = new Rand('ad gpu');
      return { op: 'act_dist', args: { n: 50, nm: 17, D: 896, act: 2, os: r.uniform(50 * 17 * 896, 3), om: r.uniform(50 * 896, 3) } };
    },
  });
  out.push({
    name: 'act_dist_bwd (gpu) n=40 D=2000 act=1',
    op: 'act_dist_bwd',
    build: () => {
      const r = new Rand('adb gpu');
      return { op: 'act_dist_bwd', args: { n: 40, D: 2000, act: 1, gd: r.uniform(40), os: r.uniform(80000, 3), om: r.uniform(80000, 3) } };
    },
  });
  out.push(maskedSgdCase({ M: 300, N: 200, K: 1000, rho: 0.2, clamp: 0.5, wd: 1e-5, lr: 0.01, dt: 'BF16', seedLo: 5, seedHi: 77 }));
  out.push(maskedSgdCase({ M: 1, N: 129, K: 4097, rho: 0.2, clamp: 0, wd: 0, lr: 1, dt: 'F32', seedLo: 11, seedHi: 0 }));
  // many ties across radix-select chunks (n > 8192 per chunk) and a large plain case
  const q = 1 / 16;
  out.push(
    tiesCase({
      name: 'gpu-ties',
      n: 100003,
      k: 3,
      density: 0.1,
      dt: 'BF16',
      quant: true,
      weights: [0.5, 0.25, 0.25],
      make: (r, b) => sparseShard(r, b, 0.5, q, 2),
    }),
    tiesCase({ name: 'gpu-random', n: 300000, k: 2, density: 0.53, dt: 'F32', make: (r, b) => Float32Array.from(b, (v) => v + (r.r() < 0.25 ? 0.01 * (2 * r.r() - 1) : 0)) }),
  );
  return out;
  return out;
}

// ---- tests -----------------------------------------------------------------------------------------

gradOpTests('wise', CASES, { cpu: TOL_CPU, fd: TOL_FD, cuda: TOL_CUDA }, gpuOnlyCases);

describe('masked_sgd: Philox mask', () => {
  it('the JS Philox mulhi matches BigInt arithmetic', () => {
    const r = new Rand('mulhi');
    for (let i = 0; i < 2000; i++) {
      const a = Math.floor(r.r() * 4294967296) >>> 0, b = i === 0 ? 0xffffffff : Math.floor(r.r() * 4294967296) >>> 0;
      const p = BigInt(i === 0 ? 0xffffffff : a) * BigInt(b);
      const [hi, lo] = mulhilo(i === 0 ? 0xffffffff : a, b);
      expect(hi).toBe(Number(p >> 32n));
      expect(lo).toBe(Number(p & 0xffffffffn));
    }
  });

  for (const rho of [0.2, 0.53]) {
    it(`keep fraction over 1e6 elements is rho ± 3σ and matches the JS Philox bit for bit (rho=${rho})`, () => {
      // M = 1, G = 1, A = 1, lr = 1, wd = 0, W' = 0: every element moves by exactly −keep
      const N = 1000, K = 1000, n = N * K;
      const seedLo = 0x9e3779b9, seedHi = 0x2545f491;
      const res = run('cpu', 'masked_sgd', {
        M: 1, N, K, Wp: new Float32Array(n), G: new Float32Array(N).fill(1), A: new Float32Array(K).fill(1),
        Wv: new Float32Array(n), rho, lr: 1, wd: 0, clamp: 0, seed_lo: seedLo, seed_hi: seedHi,
      });
      const W = res.Wp;
      let kept = 0, other = 0, mismatch = 0;
      for (let i = 0; i < n; i++) {
        const v = W[i];
        if (v !== -1 && v !== 0) other++;
        const keep = v === -1;
        kept += keep ? 1 : 0;
        if (i < 200000 && keep !== philoxKeep(seedLo, seedHi, i, rho)) mismatch++;
      }
      expect(other, 'elements that moved by neither 0 nor exactly lr').toBe(0);
      const sigma = Math.sqrt((rho * (1 - rho)) / n);
      expect(Math.abs(kept / n - rho), `kept ${kept / n}`).toBeLessThanOrEqual(3 * sigma);
      expect(mismatch, 'mask bits differ from the JS Philox').toBe(0);
    });
  }

  it('rho >= 1 keeps every element; rho = 0 keeps none (only weight decay acts)', () => {
    const N = 3, K = 50;
    const common = { M: 1, N, K, Wp: new Float32Array(N * K).fill(1), G: new Float32Array(N).fill(1), A: new Float32Array(K).fill(1), Wv: new Float32Array(N * K), lr: 0.5, wd: 0.5, clamp: 0, seed: 1 };
    const all = run('cpu', 'masked_sgd', { ...common, rho: 1 }).Wp;
    const none = run('cpu', 'masked_sgd', { ...common, rho: 0 }).Wp;
    for (let i = 0; i < N * K; i++) {
      expect(all[i]).toBe(Math.fround(1 - 0.5 * (1 + 0.5)));
      expect(none[i]).toBe(Math.fround(1 - 0.5 * 0.5));
    }
  });

  it('different seeds give different masks; the same seed (as one number or lo/hi) the same', () => {
    const N = 10, K = 100;
    const mk = (extra: Args) => run('cpu', 'masked_sgd', { M: 1, N, K, Wp: new Float32Array(N * K), G: new Float32Array(N).fill(1), A: new Float32Array(K).fill(1), Wv: new Float32Array(N * K), rho: 0.5, lr: 1, wd: 0, clamp: 0, ...extra }).Wp;
    const a = mk({ seed: 2 ** 40 + 5 }), b = mk({ seed_lo: 5, seed_hi: 256 }), c = mk({ seed: 6 });
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(Array.from(a)).not.toEqual(Array.from(c));
  });

  it('the clamp is active in the reference cases', () => {
    // sanity of the case table: with clamp 0.01 and lr 2 some elements must sit on W_v ± c
    const c = maskedSgdCases().find((x) => x.name.includes('clamp=0.01'))!;
    const b = c.build();
    const W = run('cpu', b.op, b.args).Wp;
    const Wv = b.args.Wv as Uint16Array;
    let clamped = 0;
    for (let i = 0; i < W.length; i++) {
      const base = bf16Decode(Wv[i]);
      if (W[i] === Math.fround(base + Math.fround(0.01)) || W[i] === Math.fround(base - Math.fround(0.01))) clamped++;
    }
    expect(clamped).toBeGreaterThan(0);
  });
});

describe('ties_merge: exact semantics', () => {
  it('ties in |τ| keep the lower index (k = 1)', () => {
    // |τ| = 1 2 1 1 .5 1 2 1 0 1 (base 0); density 0.3 → K = 3: both 2s, then the first 1 (index 0)
    const shard = Float32Array.from([1, -2, 1, -1, 0.5, -1, 2, 1, 0, 1]);
    const res = run('cpu', 'ties_merge', { k: 1, density: 0.3, base: new Float32Array(10), shards: shard, weights: Float32Array.of(0.4) });
    expect(Array.from(res.out)).toEqual([1, -2, 0, 0, 0, 0, 2, 0, 0, 0]);
    // K = 5: the 2s and the first three 1s (indices 0, 2, 3)
    const res5 = run('cpu', 'ties_merge', { k: 1, density: 0.5, base: new Float32Array(10), shards: shard, weights: Float32Array.of(1) });
    expect(Array.from(res5.out)).toEqual([1, -2, 1, -1, 0, 0, 2, 0, 0, 0]);
  });

  it('sign election, agreement and the disjoint weighted mean (k = 3)', () => {
    // element 0: u = (+0.5·2, −0.25·1, +0.25·4) → Σ > 0, agreeing: 0 and 2 → (1 + 1)/(0.5 + 0.25)
    // element 1: u = (−0.5·2, +0.25·1, 0) → Σ < 0: only shard 0 → −1/0.5 = −2
    // element 2: all zero → base
    // element 3: u = (+0.5·1, −0.25·2, 0) → Σ = 0 → s = +1: shard 0 → 0.5/0.5 = 1
    const base = Float32Array.from([1, 1, 1, 1]);
    const shards = Float32Array.from([3, -1, 1, 2, /**/ 0, 2, 1, -1, /**/ 5, 1, 1, 1]);
    const res = run('cpu', 'ties_merge', { k: 3, density: 1, base, shards, weights: Float32Array.from([0.5, 0.25, 0.25]) });
    const want = [1 + 2 / 0.75, 1 - 2, 1, 1 + 1];
    for (let i = 0; i < 4; i++) expect(res.out[i]).toBe(Math.fround(want[i]));
    const ref = refTies(f64(base), [shards.subarray(0, 4), shards.subarray(4, 8), shards.subarray(8, 12)], Float32Array.from([0.5, 0.25, 0.25]), 1).out;
    expectExact('ties ref', res.out, ref);
  });

  it('the reference trims to exactly floor(density·n) per shard, ties by index', () => {
    const c = tiesCases()[0];
    const b = c.build();
    const n = (b.args.base as Float32Array | Uint16Array).length;
    const k = b.args.k as number;
    const flat = b.args.shards as Float32Array;
    const base = b.args.dtype === 'F32' ? f64(b.args.base as Float32Array) : f64(Array.from(b.args.base as Uint16Array, (x) => (b.args.dtype === 'F16' ? f16Decode(x) : bf16Decode(x))));
    const shards = Array.from({ length: k }, (_, i) => flat.subarray(i * n, (i + 1) * n));
    const { keep } = refTies(base, shards, b.args.weights as Float32Array, b.args.density as number);
    const K = Math.floor(Math.fround(b.args.density as number) * n);
    for (const kp of keep) expect(kp.reduce((a, x) => a + x, 0)).toBe(K);
    // the case really has ties cut at the threshold
    const mag = Array.from(shards[0], (v, p) => Math.abs(Math.fround(v - base[p])));
    const sorted = [...mag].sort((a, b2) => b2 - a);
    expect(sorted[K - 1]).toBe(sorted[K]);
  });
});

describe.skipIf(!cudaAvailable())('wise: cuda backend', () => {
  it('masked_sgd: the same seed gives bit-identical keep patterns on both backends', () => {
    const N = 700, K = 1500, n = N * K;
    for (const [rho, seedLo, seedHi] of [[0.2, 1, 0], [0.5, 0xffffffff, 0xffffffff], [0.03, 123, 4567]] as [number, number, number][]) {
      const args: Args = { M: 1, N, K, Wp: new Float32Array(n), G: new Float32Array(N).fill(1), A: new Float32Array(K).fill(1), Wv: new Float32Array(n), rho, lr: 1, wd: 0, clamp: 0, seed_lo: seedLo, seed_hi: seedHi };
      const a = run('cpu', 'masked_sgd', args).Wp, b = run('cuda', 'masked_sgd', args).Wp;
      let diff = 0;
      for (let i = 0; i < n; i++) if (a[i] !== b[i]) diff++;
      expect(diff, `rho=${rho} seed=${seedHi}:${seedLo}`).toBe(0);
    }
  });

  it('ties_merge: tie-breaking is identical on both backends', () => {
    // one big tie group straddling many chunks: |τ| ∈ {1, 2} only, K cuts through the 1s
    const n = 50000;
    const r = new Rand('ties gpu tie-break');
    const shard = new Float32Array(n);
    for (let p = 0; p < n; p++) shard[p] = (r.r() < 0.05 ? 2 : 1) * (r.r() < 0.5 ? -1 : 1);
    for (const density of [0.1, 0.3, 0.99, 0.0001]) {
      const args: Args = { k: 1, density, base: new Float32Array(n), shards: shard, weights: Float32Array.of(1) };
      const a = run('cpu', 'ties_merge', args).out, b = run('cuda', 'ties_merge', args).out;
      expectExact(`ties tie-break density=${density}`, b, a);
      const want = refTies(new Float64Array(n), [shard], Float32Array.of(1), density).out;
      expectExact(`ties tie-break ref density=${density}`, a, want);
    }
  });

});
