// Editing-op tests (backend.h "editing" + "WISE kernels"), through testing().runOp(backend, op, args).
//
//   (a) always (no GPU): every op on the CPU backend against a float64 reference written here; every
//       backward op also against a central finite difference (float64) of a float64 forward written here
//       (the op's output must be the gradient of Σ dy·forward). guardOk and no NaN/Inf on every call.
//   (b) masked_sgd: float64 reference with a JS Philox4x32-10 (the mask bits must match native/philox.h
//       exactly), ρ ∈ {0.2, 1}, clamp on/off, weight decay; the Philox keep fraction over 10⁶ elements
//       is within ρ ± 3σ.
//   (c) ties_merge: float64 reference of ALGORITHM.md §1.8 / backend.h (ties in |τ| keep the lower
//       index), deliberate ties, all-zero shards and rows, k = 1..3, non-uniform weights, densities
//       0.53 / 0.1 (and the 0 / 1 edges), base dtypes, out aliasing a shard.
//   (d) with a CUDA device: CUDA vs CPU on the same inputs for every case (+ larger GPU-only shapes),
//       identical Philox masks on both backends, identical TIES tie-breaking.
//
// Error metric (as in ops.test.ts): rel = max_i |got_i − ref_i| / max_i |ref_i|. Data, codecs, comparison and
// runners: test/helpers/optest.ts.
// Note (TOOLCHAIN pitfall 10): describe.skipIf still runs the describe body: all work happens inside `it`.
import { describe, it, expect } from 'vitest';
import { native } from '../lib/native.js';
import { testing } from '../lib/testing.js';
import { cpuIsas, cpuBackend } from './helpers/isa.js';
import { type Args, type DT, DTYPES, Rand, weight, encodeWeight, f16Decode, bf16Decode, expectClose, expectExact, run, errCode, fdGrad, dot, expectRef, expectCudaMatchesCpu } from './helpers/optest.js';


// ---- tolerances ----------------------------------------------------------------------------------
// CPU vs float64 reference: the CPU rounds to f32 once or twice per element (f64 reductions in
// rmsnorm_bwd / attention_bwd / cross_entropy / act_dist / ties; f32 FMA sums of <= 3000 terms in
// linear_dx and masked_sgd's g). ~10x margin over what the f32 rounding can show at these sizes.
const TOL_CPU: Record<string, number> = {
  scatter_add_rows: 0, // one f32 add per element: exact
  linear_dx: 1e-5,
  rmsnorm_bwd: 2e-6,
  rope_bwd: 2e-6, // cos/sin rounded to f32, two products + one sum
  attention_bwd: 2e-6,
  swiglu_bwd: 2e-6,
  cross_entropy: 2e-6,
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
  scatter_add_rows: 0, // exact (one add per element; idx distinct)
  linear_dx: 2e-5, // f32 FMA chains in another order (tiles / n splits) vs the CPU's axpy order
  rmsnorm_bwd: 2e-6, // both reduce in f64; one f32 rounding each
  rope_bwd: 1e-6, // same arithmetic (f64 cos/sin rounded to f32, un-fused f32): ~bit-identical
  attention_bwd: 3e-5, // f32 scores / expf / online softmax vs the CPU's f64
  swiglu_bwd: 1e-6, // f64 on both
  cross_entropy: 1e-5, // f32 expf, f64 sums
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

// ---- float64 forwards (for finite differences) and references ----------------------------------------

const GELU_K = 0.7978845608028654;
function actFn(x: number, act: number): number {
  if (act === 1) return x / (1 + Math.exp(-x));
  if (act === 2) return 0.5 * x * (1 + Math.tanh(GELU_K * (x + 0.044715 * x * x * x)));
  return x;
}
function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}
function f64(a: ArrayLike<number>): Float64Array {
  return Float64Array.from(a as ArrayLike<number>);
}
function fwdLinear(x: Float64Array, W: Float64Array, M: number, N: number, K: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * W[n * K + k];
      y[m * N + n] = s;
    }
  return y;
}
function refLinearDx(dy: Float32Array, W: Float64Array, dx0: Float32Array | null, M: number, N: number, K: number): Float64Array {
  const dx = new Float64Array(M * K);
  for (let m = 0; m < M; m++)
    for (let k = 0; k < K; k++) {
      let s = dx0 ? dx0[m * K + k] : 0;
      for (let n = 0; n < N; n++) s += dy[m * N + n] * W[n * K + k];
      dx[m * K + k] = s;
    }
  return dx;
}

function fwdRmsnorm(x: Float64Array, w: Float64Array, M: number, D: number, eps: number): Float64Array {
  const y = new Float64Array(M * D);
  for (let m = 0; m < M; m++) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[m * D + i] ** 2;
    const r = 1 / Math.sqrt(ss / D + Math.fround(eps));
    for (let i = 0; i < D; i++) y[m * D + i] = x[m * D + i] * r * w[i];
  }
  return y;
}
function refRmsnormBwd(dy: Float32Array, x: Float32Array, w: Float64Array, dx0: Float32Array | null, M: number, D: number, eps: number): Float64Array {
  const dx = new Float64Array(M * D);
  for (let m = 0; m < M; m++) {
    let ss = 0, dd = 0;
    for (let i = 0; i < D; i++) {
      ss += x[m * D + i] ** 2;
      dd += w[i] * dy[m * D + i] * x[m * D + i];
    }
    const r = 1 / Math.sqrt(ss / D + Math.fround(eps));
    for (let i = 0; i < D; i++) dx[m * D + i] = (dx0 ? dx0[m * D + i] : 0) + r * w[i] * dy[m * D + i] - (x[m * D + i] * r ** 3 * dd) / D;
  }
  return dx;
}

function ropeAngle(pos: number, inv: number): number {
  return Math.fround(pos * inv); // the op's angle is an f32 product
}
function fwdRope(x: Float64Array, pos: Int32Array, inv: Float32Array, T: number, H: number, hd: number): Float64Array {
  const y = Float64Array.from(x);
  const half = hd / 2;
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const o = (t * H + h) * hd;
      for (let i = 0; i < half; i++) {
        const th = ropeAngle(pos[t], inv[i]);
        const c = Math.cos(th), s = Math.sin(th);
        const x1 = x[o + i], x2 = x[o + i + half];
        y[o + i] = x1 * c - x2 * s;
        y[o + i + half] = x2 * c + x1 * s;
      }
    }
  return y;
}
function refRopeBwd(dy: Float32Array, pos: Int32Array, inv: Float32Array, T: number, H: number, hd: number): Float64Array {
  const dx = f64(dy);
  const half = hd / 2;
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const o = (t * H + h) * hd;
      for (let i = 0; i < half; i++) {
        const th = ropeAngle(pos[t], inv[i]);
        const c = Math.cos(th), s = Math.sin(th);
        const g1 = dy[o + i], g2 = dy[o + i + half];
        dx[o + i] = g1 * c + g2 * s;
        dx[o + i + half] = g2 * c - g1 * s;
      }
    }
  return dx;
}

interface AttShape {
  B: number;
  T: number;
  Hq: number;
  Hkv: number;
  hd: number;
  pad: Int32Array;
  scale: number;
}
// q, out: [B, T, Hq, hd];  kc, vc: [B, Hkv, T, hd]
function fwdAttention(q: ArrayLike<number>, kc: ArrayLike<number>, vc: ArrayLike<number>, s: AttShape): Float64Array {
  const { B, T, Hq, Hkv, hd, pad, scale } = s;
  const out = new Float64Array(B * T * Hq * hd);
  const group = Hq / Hkv;
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++)
      for (let h = 0; h < Hq; h++) {
        const j0 = Math.max(0, pad[b]);
        if (j0 > t) continue;
        const qo = ((b * T + t) * Hq + h) * hd;
        const base = (b * Hkv + Math.floor(h / group)) * T * hd;
        const sc: number[] = [];
        let mx = -Infinity;
        for (let j = j0; j <= t; j++) {
          let d = 0;
          for (let e = 0; e < hd; e++) d += q[qo + e] * kc[base + j * hd + e];
          sc.push(d * scale);
          mx = Math.max(mx, d * scale);
        }
        let den = 0;
        for (let j = j0; j <= t; j++) {
          const p = Math.exp(sc[j - j0] - mx);
          den += p;
          for (let e = 0; e < hd; e++) out[qo + e] += p * vc[base + j * hd + e];
        }
        for (let e = 0; e < hd; e++) out[qo + e] /= den;
      }
  return out;
}
// dq: [B, T, Hq, hd];  dk, dv: [B, T, Hkv, hd]
function refAttentionBwd(dout: Float32Array, q: Float32Array, kc: Float32Array, vc: Float32Array, s: AttShape) {
  const { B, T, Hq, Hkv, hd, pad, scale } = s;
  const group = Hq / Hkv;
  const dq = new Float64Array(B * T * Hq * hd), dk = new Float64Array(B * T * Hkv * hd), dv = new Float64Array(B * T * Hkv * hd);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++)
      for (let h = 0; h < Hq; h++) {
        const j0 = Math.max(0, pad[b]);
        if (j0 > t) continue;
        const g = Math.floor(h / group);
        const qo = ((b * T + t) * Hq + h) * hd;
        const base = (b * Hkv + g) * T * hd;
        const p: number[] = [], dp: number[] = [];
        let mx = -Infinity;
        for (let j = j0; j <= t; j++) {
          let d = 0;
          for (let e = 0; e < hd; e++) d += q[qo + e] * kc[base + j * hd + e];
          p.push(d * scale);
          mx = Math.max(mx, d * scale);
        }
        let den = 0;
        for (let i = 0; i < p.length; i++) den += p[i] = Math.exp(p[i] - mx);
        let pdp = 0;
        for (let j = j0; j <= t; j++) {
          const i = j - j0;
          p[i] /= den;
          let d = 0;
          for (let e = 0; e < hd; e++) d += dout[qo + e] * vc[base + j * hd + e];
          dp.push(d);
          pdp += p[i] * d;
        }
        for (let j = j0; j <= t; j++) {
          const i = j - j0;
          const ds = p[i] * (dp[i] - pdp) * scale;
          const ko = ((b * T + j) * Hkv + g) * hd;
          for (let e = 0; e < hd; e++) {
            dq[qo + e] += ds * kc[base + j * hd + e];
            dk[ko + e] += ds * q[qo + e];
            dv[ko + e] += p[i] * dout[qo + e];
          }
        }
      }
  return { dq, dk, dv };
}
/** [B, Hkv, T, hd] (cache layout) → [B, T, Hkv, hd] (dk/dv layout). */
function cacheToRows(a: ArrayLike<number>, B: number, T: number, Hkv: number, hd: number): Float64Array {
  const o = new Float64Array(B * T * Hkv * hd);
  for (let b = 0; b < B; b++)
    for (let g = 0; g < Hkv; g++)
      for (let t = 0; t < T; t++)
        for (let e = 0; e < hd; e++) o[((b * T + t) * Hkv + g) * hd + e] = a[((b * Hkv + g) * T + t) * hd + e];
  return o;
}

function refSwigluBwd(dy: Float32Array, gate: Float32Array, up: Float32Array) {
  const n = dy.length;
  const dgate = new Float64Array(n), dup = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const g = gate[i], s = sigmoid(g);
    dgate[i] = dy[i] * up[i] * s * (1 + g * (1 - s));
    dup[i] = dy[i] * g * s;
  }
  return { dgate, dup };
}

function ceLoss(z: ArrayLike<number>, labels: Int32Array, w: Float32Array, R: number, V: number): Float64Array {
  const loss = new Float64Array(R);
  for (let r = 0; r < R; r++) {
    const y = labels[r];
    if (y < 0) continue;
    let mx = -Infinity;
    for (let i = 0; i < V; i++) mx = Math.max(mx, z[r * V + i]);
    let den = 0;
    for (let i = 0; i < V; i++) den += Math.exp(z[r * V + i] - mx);
    loss[r] = (mx + Math.log(den) - z[r * V + y]) * w[r];
  }
  return loss;
}
function refCeGrad(z: Float32Array, labels: Int32Array, w: Float32Array, R: number, V: number): Float64Array {
  const g = new Float64Array(R * V);
  for (let r = 0; r < R; r++) {
    const y = labels[r];
    if (y < 0) continue;
    let mx = -Infinity;
    for (let i = 0; i < V; i++) mx = Math.max(mx, z[r * V + i]);
    let den = 0;
    for (let i = 0; i < V; i++) den += Math.exp(z[r * V + i] - mx);
    for (let i = 0; i < V; i++) g[r * V + i] = (Math.exp(z[r * V + i] - mx) / den - (i === y ? 1 : 0)) * w[r];
  }
  return g;
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

interface Built {
  op: string;
  args: Args;
  ref?: () => Record<string, ArrayLike<number>>; // float64 reference per output (absent: GPU-only case)
  fd?: () => Record<string, ArrayLike<number>>; // finite-difference gradient per output (backward ops)
}
interface Case {
  name: string;
  op: string;
  fd?: boolean; // build() returns a finite-difference check
  build: () => Built;
}

function scatterCases(): Case[] {
  const out: Case[] = [];
  for (const [R, D, n] of [[7, 5, 4], [50, 33, 20], [3, 1, 3], [300, 64, 129]] as [number, number, number][]) {
    const name = `scatter_add_rows R=${R} D=${D} n=${n}`;
    out.push({
      name,
      op: 'scatter_add_rows',
      fd: R * D <= 2000,
      build: () => {
        const r = new Rand(name);
        const perm = Array.from({ length: R }, (_, i) => i).sort(() => r.r() - 0.5);
        const idx = Int32Array.from(perm.slice(0, n));
        const x = r.uniform(n * D), y0 = r.uniform(R * D);
        return {
          op: 'scatter_add_rows',
          args: { D, idx, x, y: y0 },
          ref: () => {
            const y = f64(y0);
            for (let i = 0; i < n; i++) for (let e = 0; e < D; e++) y[idx[i] * D + e] += x[i * D + e];
            return { y };
          },
          // the gradient of gather_rows: ∂/∂X Σ x ⊙ X[idx] (+ y0, the accumulated value)
          fd: () => {
            const g = fdGrad((X) => {
              let s = 0;
              for (let i = 0; i < n; i++) for (let e = 0; e < D; e++) s += x[i * D + e] * X[idx[i] * D + e];
              return s;
            }, new Float64Array(R * D));
            for (let i = 0; i < g.length; i++) g[i] += y0[i];
            return { y: g };
          },
        };
      },
    });
  }
  return out;
}

function linearDxCases(): Case[] {
  const shapes: [number, number, number][] = [[1, 37, 53], [2, 33, 40], [3, 64, 96], [8, 70, 64], [9, 31, 45], [17, 100, 75], [64, 130, 257], [5, 600, 40], [20, 700, 24]];
  const out: Case[] = [];
  let c = 0;
  for (const dt of DTYPES)
    for (const [M, N, K] of shapes) {
      const acc = c++ % 3 === 1;
      const name = `linear_dx ${dt} M=${M} N=${N} K=${K}${acc ? ' accumulate' : ''}`;
      const small = M * N * K <= 20000;
      out.push({
        name,
        op: 'linear_dx',
        fd: small,
        build: () => {
          const r = new Rand(name);
          const dy = r.uniform(M * N);
          const W = weight(r, dt, N * K);
          const dx0 = acc ? r.uniform(M * K) : null;
          const args: Args = { M, N, K, dtype: dt, dy, W: W.arg, accumulate: acc ? 1 : 0 };
          if (dx0) args.dx = dx0;
          return {
            op: 'linear_dx',
            args,
            ref: () => ({ dx: refLinearDx(dy, W.vals, dx0, M, N, K) }),
            fd: () => {
              const g = fdGrad((x) => dot(dy, fwdLinear(x, W.vals, M, N, K)), r.uniform(M * K));
              if (dx0) for (let i = 0; i < g.length; i++) g[i] += dx0[i];
              return { dx: g };
            },
          };
        },
      });
    }
  return out;
}

function rmsnormBwdCases(): Case[] {
  const shapes: [number, number][] = [[1, 64], [3, 17], [17, 33], [5, 1000], [2, 4097]];
  const out: Case[] = [];
  let c = 0;
  for (const dt of DTYPES)
    for (const [M, D] of shapes) {
      const acc = c % 2 === 1;
      const eps = c++ % 3 === 0 ? 1e-5 : 1e-6;
      const name = `rmsnorm_bwd ${dt} M=${M} D=${D} eps=${eps}${acc ? ' accumulate' : ''}`;
      out.push({
        name,
        op: 'rmsnorm_bwd',
        fd: M * D <= 2000,
        build: () => {
          const r = new Rand(name);
          const x = r.uniform(M * D, 2, 0.3), dy = r.uniform(M * D);
          const w = weight(r, dt, D, 0.5, 1);
          const dx0 = acc ? r.uniform(M * D) : null;
          const args: Args = { M, D, eps, dtype: dt, dy, x, w: w.arg, accumulate: acc ? 1 : 0 };
          if (dx0) args.dx = dx0;
          return {
            op: 'rmsnorm_bwd',
            args,
            ref: () => ({ dx: refRmsnormBwd(dy, x, w.vals, dx0, M, D, eps) }),
            fd:
              M * D <= 2000
                ? () => {
                    const g = fdGrad((xx) => dot(dy, fwdRmsnorm(xx, w.vals, M, D, eps)), x);
                    if (dx0) for (let i = 0; i < g.length; i++) g[i] += dx0[i];
                    return { dx: g };
                  }
                : undefined,
          };
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

function ropeBwdCases(): Case[] {
  const out: Case[] = [];
  for (const [T, H, hd, maxPos] of [[5, 3, 8, 20], [17, 4, 64, 5000], [3, 2, 2, 7], [9, 5, 6, 100]] as [number, number, number, number][]) {
    const name = `rope_bwd T=${T} H=${H} hd=${hd} pos<=${maxPos}`;
    out.push({
      name,
      op: 'rope_bwd',
      fd: T * H * hd <= 600,
      build: () => {
        const r = new Rand(name);
        const dy = r.uniform(T * H * hd);
        const pos = new Int32Array(T);
        for (let t = 0; t < T; t++) pos[t] = r.int(0, maxPos);
        const inv = invFreq(hd);
        return {
          op: 'rope_bwd',
          args: { n_tok: T, n_head: H, head_dim: hd, dx: dy, pos, inv_freq: inv },
          ref: () => ({ dx: refRopeBwd(dy, pos, inv, T, H, hd) }),
          fd: T * H * hd <= 600 ? () => ({ dx: fdGrad((x) => dot(dy, fwdRope(x, pos, inv, T, H, hd)), r.uniform(T * H * hd)) }) : undefined,
        };
      },
    });
  }
  return out;
}

function attentionBwdCases(): Case[] {
  const shapes: [number, number, number, number, number, number[]][] = [
    // B, T, Hq, Hkv, hd, pad
    [2, 5, 4, 2, 5, [0, 2]], // GQA 2, odd hd, left padding
    [1, 1, 1, 1, 3, [0]],
    [3, 7, 6, 2, 4, [0, 3, 6]], // GQA 3
    [2, 4, 2, 1, 6, [4, 1]], // a fully padded sequence (zero gradients)
    [2, 9, 4, 4, 33, [1, 0]], // hd past one warp
  ];
  const out: Case[] = [];
  for (const [B, T, Hq, Hkv, hd, padv] of shapes) {
    const name = `attention_bwd B=${B} T=${T} Hq=${Hq} Hkv=${Hkv} hd=${hd} pad=${padv.join(',')}`;
    out.push({
      name,
      op: 'attention_bwd',
      fd: B * T * (Hq + 2 * Hkv) * hd <= 3000,
      build: () => {
        const r = new Rand(name);
        const nq = B * T * Hq * hd, nkv = B * Hkv * T * hd;
        const q = r.uniform(nq, 1.5), kc = r.uniform(nkv, 1.5), vc = r.uniform(nkv), dout = r.uniform(nq);
        const pad = Int32Array.from(padv);
        const scale = Math.fround(1 / Math.sqrt(hd));
        const sh: AttShape = { B, T, Hq, Hkv, hd, pad, scale };
        return {
          op: 'attention_bwd',
          args: { B, T, Hq, Hkv, hd, dout, q, kc, vc, pad, scale },
          ref: () => refAttentionBwd(dout, q, kc, vc, sh),
          fd:
            nq + 2 * nkv <= 3000
              ? () => {
                  const q64 = f64(q), k64 = f64(kc), v64 = f64(vc);
                  const dq = fdGrad((x) => dot(dout, fwdAttention(x, k64, v64, sh)), q);
                  const dk = fdGrad((x) => dot(dout, fwdAttention(q64, x, v64, sh)), kc);
                  const dv = fdGrad((x) => dot(dout, fwdAttention(q64, k64, x, sh)), vc);
                  return { dq, dk: cacheToRows(dk, B, T, Hkv, hd), dv: cacheToRows(dv, B, T, Hkv, hd) };
                }
              : undefined,
        };
      },
    });
  }
  return out;
}

function swigluBwdCases(): Case[] {
  const out: Case[] = [];
  for (const [n, gs] of [[1, 1], [37, 3], [10000, 8]] as [number, number][]) {
    const name = `swiglu_bwd n=${n} |gate|<=${gs}`;
    out.push({
      name,
      op: 'swiglu_bwd',
      fd: n <= 100,
      build: () => {
        const r = new Rand(name);
        const dy = r.uniform(n), gate = r.uniform(n, gs), up = r.uniform(n, 2);
        return {
          op: 'swiglu_bwd',
          args: { dy, gate, up },
          ref: () => refSwigluBwd(dy, gate, up),
          fd:
            n <= 100
              ? () => {
                  const u64 = f64(up), g64 = f64(gate);
                  const f = (g: ArrayLike<number>, u: ArrayLike<number>) => {
                    let s = 0;
                    for (let i = 0; i < n; i++) s += dy[i] * g[i] * sigmoid(g[i]) * u[i];
                    return s;
                  };
                  return { dgate: fdGrad((g) => f(g, u64), gate), dup: fdGrad((u) => f(g64, u), up) };
                }
              : undefined,
        };
      },
    });
  }
  return out;
}

function crossEntropyCases(): Case[] {
  const out: Case[] = [];
  for (const [R, V, zs] of [[4, 7, 3], [3, 1000, 10], [1, 1, 1], [5, 31, 30]] as [number, number, number][]) {
    const name = `cross_entropy R=${R} V=${V} |z|<=${zs}`;
    out.push({
      name,
      op: 'cross_entropy',
      fd: R * V <= 3000,
      build: () => {
        const r = new Rand(name);
        const logits = r.uniform(R * V, zs);
        const labels = new Int32Array(R);
        const w = new Float32Array(R);
        for (let i = 0; i < R; i++) {
          labels[i] = i === 1 ? -1 : r.int(0, V - 1); // row 1: no label
          w[i] = i === 3 ? 0 : Math.fround(0.25 + r.r());
        }
        return {
          op: 'cross_entropy',
          args: { R, V, logits, labels, weight: w },
          ref: () => ({ loss: ceLoss(logits, labels, w, R, V), dlogits: refCeGrad(logits, labels, w, R, V) }),
          fd:
            R * V <= 3000
              ? () => ({
                  loss: ceLoss(logits, labels, w, R, V),
                  dlogits: fdGrad((z) => ceLoss(z, labels, w, R, V).reduce((a, b) => a + b, 0), logits),
                })
              : undefined,
        };
      },
    });
  }
  return out;
}

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
  scatter_add_rows: scatterCases,
  linear_dx: linearDxCases,
  rmsnorm_bwd: rmsnormBwdCases,
  rope_bwd: ropeBwdCases,
  attention_bwd: attentionBwdCases,
  swiglu_bwd: swigluBwdCases,
  cross_entropy: crossEntropyCases,
  act_dist: actDistCases,
  act_dist_bwd: actDistBwdCases,
  masked_sgd: maskedSgdCases,
  ties_merge: tiesCases,
};

/** Larger shapes for the GPU paths (tiles, n splits, multi-chunk radix select); compared CUDA vs CPU only. */
function gpuOnlyCases(): Case[] {
  const out: Case[] = [];
  const lin = (M: number, N: number, K: number, dt: DT, acc: boolean): Case => {
    const name = `linear_dx (gpu) ${dt} M=${M} N=${N} K=${K}${acc ? ' accumulate' : ''}`;
    return {
      name,
      op: 'linear_dx',
      build: () => {
        const r = new Rand(name);
        const args: Args = { M, N, K, dtype: dt, dy: r.uniform(M * N), W: weight(r, dt, N * K).arg, accumulate: acc ? 1 : 0 };
        if (acc) args.dx = r.uniform(M * K);
        return { op: 'linear_dx', args };
      },
    };
  };
  out.push(lin(1, 20000, 96, 'BF16', false), lin(7, 5000, 200, 'F16', true), lin(100, 1500, 130, 'F32', false), lin(130, 64, 1000, 'BF16', true), lin(33, 4096, 64, 'F32', false));
  const att = (B: number, T: number, Hq: number, Hkv: number, hd: number, pad: number[]): Case => {
    const name = `attention_bwd (gpu) B=${B} T=${T} Hq=${Hq} Hkv=${Hkv} hd=${hd}`;
    return {
      name,
      op: 'attention_bwd',
      build: () => {
        const r = new Rand(name);
        const nq = B * T * Hq * hd, nkv = B * Hkv * T * hd;
        return { op: 'attention_bwd', args: { B, T, Hq, Hkv, hd, dout: r.uniform(nq), q: r.uniform(nq), kc: r.uniform(nkv), vc: r.uniform(nkv), pad: Int32Array.from(pad) } };
      },
    };
  };
  out.push(att(2, 40, 8, 2, 64, [0, 7]), att(3, 33, 14, 2, 64, [5, 0, 30]), att(1, 64, 4, 1, 128, [3]), att(2, 17, 2, 2, 256, [0, 16]), att(1, 20, 4, 2, 80, [0]));
  out.push({
    name: 'cross_entropy (gpu) R=6 V=50000',
    op: 'cross_entropy',
    build: () => {
      const r = new Rand('ce gpu');
      const R = 6, V = 50000;
      const labels = Int32Array.from([3, -1, 49999, 0, 777, 25000]);
      const w = Float32Array.from([1, 1, 0.5, 2, 0, 1]);
      return { op: 'cross_entropy', args: { R, V, logits: r.uniform(R * V, 12), labels, weight: w } };
    },
  });
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
}

// ---- tests -----------------------------------------------------------------------------------------

const info = native().info();
const cudaAvailable = info.cuda.available;

describe('editing ops: op table', () => {
  it('runOp knows every editing op', () => {
    for (const op of Object.keys(CASES)) {
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

describe.each(cpuIsas())('editing ops: cpu backend (%s kernels) vs float64 reference', (isa) => {
  for (const [op, make] of Object.entries(CASES)) {
    describe(op, () => {
      for (const c of make()) {
        it(c.name, () => {
          const b = c.build();
          expectRef(`cpu ${c.name}`, cpuBackend(isa), b, b.ref!(), TOL_CPU[op]!);
        });
      }
    });
  }
});

describe('editing ops: cpu backward vs finite differences (float64)', () => {
  for (const make of Object.values(CASES))
    for (const c of make()) {
      if (!c.fd) continue; // larger shapes: covered by the float64 reference
      it(`${c.name} (FD)`, () => {
        const b = c.build();
        expect(b.fd, 'case declares an FD check').toBeDefined();
        const res = run('cpu', b.op, b.args);
        for (const [k, g] of Object.entries(b.fd!())) expectClose(`fd ${c.name} ${k}`, res[k], g, TOL_FD);
      });
    }
});

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

describe('editing ops: argument validation', () => {
  it('rejects bad arguments with ERR_INVALID_ARG', () => {
    const x = new Float32Array(6);
    expect(errCode(() => testing().runOp('cpu', 'scatter_add_rows', { D: 3, idx: Int32Array.of(1, 1), x, y: x }))).toBe('ERR_INVALID_ARG'); // repeated idx
    expect(errCode(() => testing().runOp('cpu', 'scatter_add_rows', { D: 3, idx: Int32Array.of(2), x: new Float32Array(3), y: x }))).toBe('ERR_INVALID_ARG'); // idx >= R
    expect(errCode(() => testing().runOp('cpu', 'linear_dx', { M: 2, N: 3, K: 2, dy: x, W: x, dx: x }))).toBe('ERR_INVALID_ARG'); // dx given, accumulate 0
    expect(errCode(() => testing().runOp('cpu', 'linear_dx', { M: 2, N: 3, K: 2, dy: x, W: x, accumulate: 1 }))).toBe('ERR_INVALID_ARG'); // dx missing
    expect(errCode(() => testing().runOp('cpu', 'cross_entropy', { R: 1, V: 6, logits: x, labels: Int32Array.of(6), weight: Float32Array.of(1) }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'act_dist', { n: 1, nm: 1, D: 6, act: 3, os: x, om: x }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'attention_bwd', { B: 1, T: 1, Hq: 1, Hkv: 1, hd: 6, dout: x, q: x, kc: x, vc: x, pad: Int32Array.of(2) }))).toBe('ERR_INVALID_ARG');
    const sgd = { M: 1, N: 2, K: 3, Wp: x, G: new Float32Array(2), A: new Float32Array(3), Wv: x, rho: 0.2, lr: 1, wd: 0, clamp: 0 };
    expect(errCode(() => testing().runOp('cpu', 'masked_sgd', { ...sgd }))).toBe('ERR_INVALID_ARG'); // no seed
    expect(errCode(() => testing().runOp('cpu', 'masked_sgd', { ...sgd, seed: 2 ** 53 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'masked_sgd', { ...sgd, seed: 1.5 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'masked_sgd', { ...sgd, seed_lo: 1 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'masked_sgd', { ...sgd, seed: 1, seed_lo: 1, seed_hi: 0 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'masked_sgd', { ...sgd, seed_lo: 2 ** 32, seed_hi: 0 }))).toBe('ERR_INVALID_ARG');
    const ties = { k: 2, base: new Float32Array(3), shards: x, weights: Float32Array.of(1, 1) };
    expect(errCode(() => testing().runOp('cpu', 'ties_merge', { ...ties, density: 1.5 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'ties_merge', { ...ties, density: 0.5, shards: new Float32Array(5) }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'ties_merge', { ...ties, density: 0.5, alias: 2 }))).toBe('ERR_INVALID_ARG');
  });
});

describe.skipIf(!cudaAvailable)('editing ops: cuda backend vs cpu backend', () => {
  const all: Case[] = [];
  for (const make of Object.values(CASES)) all.push(...make());
  all.push(...gpuOnlyCases());
  for (const c of all) {
    it(c.name, () => {
      const b = c.build();
      expectCudaMatchesCpu(c.name, { ...b, cpuFinite: true }, TOL_CUDA[c.op]!);
    });
  }

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

  it('rejects bad arguments with ERR_INVALID_ARG and stays usable', () => {
    const x = new Float32Array(300);
    expect(errCode(() => testing().runOp('cuda', 'attention_bwd', { B: 1, T: 1, Hq: 1, Hkv: 1, hd: 300, dout: x, q: x, kc: x, vc: x, pad: Int32Array.of(0) }))).toBe('ERR_INVALID_ARG');
    const r = testing().runOp('cuda', 'swiglu_bwd', { dy: x, gate: x, up: x });
    expect(r.guardOk).toBe(true);
  });
});
