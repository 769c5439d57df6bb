// ops_backward — the backward family of native/ops.def (native/cpu/backward.cpp, cuda/backward.cu): the input
// gradients of the forward ops, scatter_add_rows, linear_dx, rmsnorm_bwd, rope_bwd, attention_bwd, swiglu_bwd, and
// cross_entropy (loss and dlogits, unlabeled and zero-weight rows).
//   always: every op on the CPU backend on every ISA level against a float64 reference written here, and each
//       small case also against a central finite difference (float64) of a float64 forward (the op's output must
//       be the gradient of Σ dy·forward). guardOk and no NaN/Inf on every call.
//   with a CUDA device: CUDA vs CPU on the same inputs for every case, plus larger GPU-only shapes (tiles, n
//       splits, a 50000-word vocabulary), and a rejected argument leaves the backend usable.
// Error metric: rel = max_i |got_i − ref_i| / max_i |ref_i|. Runners: test/helpers/opsuite.ts (gradOpTests); data,
// codecs, comparison and finite differences: test/helpers/optest.ts.
// Note (TOOLCHAIN pitfall 10): describe.skipIf still runs the describe body: all work happens inside `it`.
import { describe, it, expect } from 'vitest';
import { testing } from '../lib/testing.js';
import { type Args, type DT, DTYPES, Rand, weight, errCode, fdGrad, dot, cudaAvailable } from './helpers/optest.js';
import { type GradCase as Case, gradOpTests } from './helpers/opsuite.js';
import { f64, sigmoid, invFreq, ropeAngle, attnScores, refAttention, refRmsnorm as fwdRmsnorm, refRope as fwdRope } from './helpers/opref.js';

// ---- tolerances ----------------------------------------------------------------------------------
// CPU vs float64 reference: the CPU rounds to f32 once or twice per element (f64 reductions in
// rmsnorm_bwd / attention_bwd / cross_entropy; f32 FMA sums of <= 3000 terms in linear_dx).
// ~10x margin over what the f32 rounding can show at these sizes.
const TOL_CPU: Record<string, number> = {
  scatter_add_rows: 0, // one f32 add per element: exact
  linear_dx: 1e-5,
  rmsnorm_bwd: 2e-6,
  rope_bwd: 2e-6, // cos/sin rounded to f32, two products + one sum
  attention_bwd: 2e-6,
  swiglu_bwd: 2e-6,
  cross_entropy: 2e-6,
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
};

// ---- float64 forwards (for finite differences) and references ----------------------------------------

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
// q, out: [B, T, Hq, hd];  kc, vc: [B, Hkv, T, hd]: the stateless batched forward (P = 0, S = T)
function fwdAttention(q: ArrayLike<number>, kc: ArrayLike<number>, vc: ArrayLike<number>, s: AttShape): Float64Array {
  return refAttention(q, kc, vc, s.pad, s.B, s.T, s.Hq, s.Hkv, s.hd, s.T, 0, s.scale);
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
        const { sc: p, mx } = attnScores(q, qo, kc, base, j0, t, hd, scale);
        const dp: number[] = [];
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

/** Row r of z[R, V]: its max and Σ exp(z − max). */
function rowSoftmax(z: ArrayLike<number>, r: number, V: number): { mx: number; den: number } {
  let mx = -Infinity;
  for (let i = 0; i < V; i++) mx = Math.max(mx, z[r * V + i]);
  let den = 0;
  for (let i = 0; i < V; i++) den += Math.exp(z[r * V + i] - mx);
  return { mx, den };
}
function ceLoss(z: ArrayLike<number>, labels: Int32Array, w: Float32Array, R: number, V: number): Float64Array {
  const loss = new Float64Array(R);
  for (let r = 0; r < R; r++) {
    const y = labels[r];
    if (y < 0) continue;
    const { mx, den } = rowSoftmax(z, r, V);
    loss[r] = (mx + Math.log(den) - z[r * V + y]) * w[r];
  }
  return loss;
}
function refCeGrad(z: Float32Array, labels: Int32Array, w: Float32Array, R: number, V: number): Float64Array {
  const g = new Float64Array(R * V);
  for (let r = 0; r < R; r++) {
    const y = labels[r];
    if (y < 0) continue;
    const { mx, den } = rowSoftmax(z, r, V);
    for (let i = 0; i < V; i++) g[r * V + i] = (Math.exp(z[r * V + i] - mx) / den - (i === y ? 1 : 0)) * w[r];
  }
  return g;
}

// ---- the case table ---------------------------------------------------------------------------------

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

const CASES: Record<string, () => Case[]> = {
  scatter_add_rows: scatterCases,
  linear_dx: linearDxCases,
  rmsnorm_bwd: rmsnormBwdCases,
  rope_bwd: ropeBwdCases,
  attention_bwd: attentionBwdCases,
  swiglu_bwd: swigluBwdCases,
  cross_entropy: crossEntropyCases,
};

/** Larger shapes for the GPU paths (tiles, n splits); compared CUDA vs CPU only. */
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
  return out;
}

// ---- tests -----------------------------------------------------------------------------------------

gradOpTests('backward', CASES, { cpu: TOL_CPU, fd: TOL_FD, cuda: TOL_CUDA }, gpuOnlyCases);

describe.skipIf(!cudaAvailable())('backward: cuda backend', () => {
  it('rejects bad arguments with ERR_INVALID_ARG and stays usable', () => {
    const x = new Float32Array(300);
    expect(errCode(() => testing().runOp('cuda', 'attention_bwd', { B: 1, T: 1, Hq: 1, Hkv: 1, hd: 300, dout: x, q: x, kc: x, vc: x, pad: Int32Array.of(0) }))).toBe('ERR_INVALID_ARG');
    const r = testing().runOp('cuda', 'swiglu_bwd', { dy: x, gate: x, up: x });
    expect(r.guardOk).toBe(true);
  });
});
