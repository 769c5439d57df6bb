// REPAIR-kernel tests (backend.h "REPAIR kernels": kd_loss, kl_distill, loss_aware_merge), through testing().runOp.
//
//   (a) always (no GPU), CPU backend:
//       kd_loss           vs a float64 reference of Eq. 4 as written in backend.h / ALGORITHM.md §2.5
//                         (o_i = f_i/‖f_i‖; L_cos = mean_{i>=1}(1 − o_i·o_0); L_var = (1/b)Σ_i‖o_i − ō‖²;
//                         L = λ·L_cos + θ·L_var, θ of both signs), the per-sample scores out[1+i], and the
//                         gradient vs central finite differences (float64) of that reference w.r.t. the rows
//                         i >= 1; dfeat[0] is exactly 0 (teacher = stop-gradient); zero rows (student and
//                         teacher) count as direction 0 with zero gradient; b = 2, 3, 7, 64; D odd and D = 1.
//       kl_distill        vs a float64 reference of Eq. 4's logit term as written in backend.h (p = softmax(z_t/T),
//                         q = softmax(z_s/T), loss = w·T²·KL(p‖q), dlogits[s] += w·T·(q − p)), and the gradient
//                         vs central finite differences (float64) of that reference w.r.t. the student row (the
//                         teacher held fixed: stop-gradient); accumulate semantics (dlogits pre-filled: student
//                         rows get += , every other row, teachers included, stays bit-identical); shared
//                         teachers, a row that is one pair's student and another's teacher, student == teacher,
//                         identical rows and w = 0 (exactly zero loss and gradient), logits ±80, T of 0.5..4,
//                         V = 1, P = 0, V = 512 and 50257; bad arguments refused with ERR_INVALID_ARG.
//       loss_aware_merge  vs a float64 reference of ALGORITHM.md §2.6 / backend.h (agreeing signs → Σ w_i·τ_i;
//                         mixed → τ of argmax w_i·|τ_i|, ties → lower i; zeros neutral). The reference performs
//                         the same double operations in the same order as the rule, so the comparison is exact.
//                         k = 0..4, softmax weights, conflicting/agreeing signs, masked entries, exact ties in
//                         w·|τ|, base F32/F16/BF16, out aliasing a shard.
//   (b) with a CUDA device: CUDA vs CPU on every case (+ larger GPU-only shapes): guard regions intact, no
//       NaN/Inf; loss_aware_merge bit-identical, kd_loss within TOL_CUDA_KD, kl_distill within TOL_CUDA_KL
//       (V up to 151936, the Qwen2.5 vocabulary) with untouched rows bit-identical.
//
// Error metric: rel = max_i |got_i − ref_i| / max_i |ref_i| (denominator 1 when the reference is all zero); data,
// codecs, comparison and runners: test/helpers/optest.ts.
// Note (TOOLCHAIN pitfall 10): describe.skipIf still runs the describe body: all work happens inside `it`.
import { describe, it, expect } from 'vitest';
import { native } from '../lib/native.js';
import { testing } from '../lib/testing.js';
import { type Args, type DT, DTYPES, VERBOSE, Rand, encodeWeight, expectClose, expectExact, expectFinite, run, errCode, expectKnownOp } from './helpers/optest.js';


// ---- tolerances ----------------------------------------------------------------------------------
// kd_loss on the CPU is double throughout with one f32 rounding per output (the −λ/(b−1) coefficient is
// formed in f32: ~6e-8 relative). Against float64: 2e-6.
const TOL_KD_CPU = 2e-6;
// Finite differences (float64 forward, h = 1e-6·max(1, |x|)): truncation ~h², cancellation ~1e-10.
const TOL_FD = 1e-5;
// CUDA vs CPU for kd_loss: both double, only the summation order differs; one f32 rounding each.
const TOL_CUDA_KD = 1e-5;
// kl_distill on the CPU: double log-softmax, one f32 rounding per output (the gradient's is the rounding of
// the accumulated sum, so the reference runs start from zeros). Against float64: 1e-6.
const TOL_KL_CPU = 1e-6;
// CUDA vs CPU for kl_distill: both double with the same exponents x = z·(1/T); only the summation order and
// exp's last bit differ, then one f32 rounding each (expected ~1e-7; the bound leaves room).
const TOL_CUDA_KL = 1e-5;

// ---- kd_loss: float64 reference of Eq. 4 ---------------------------------------------------------------

interface Kd64 {
  loss: number;
  score: Float64Array; // [b]: score[0] = 0, score[i] = 1 − o_i·o_0
  lcos: number;
  lvar: number;
}
function kdRef(feat: ArrayLike<number>, b: number, D: number, lambda: number, theta: number): Kd64 {
  const o = new Float64Array(b * D);
  for (let i = 0; i < b; i++) {
    let ss = 0;
    for (let e = 0; e < D; e++) ss += feat[i * D + e] * feat[i * D + e];
    const n = Math.sqrt(ss);
    for (let e = 0; e < D; e++) o[i * D + e] = n > 0 ? feat[i * D + e] / n : 0;
  }
  const mean = new Float64Array(D);
  for (let i = 0; i < b; i++) for (let e = 0; e < D; e++) mean[e] += o[i * D + e];
  for (let e = 0; e < D; e++) mean[e] /= b;
  const score = new Float64Array(b);
  let lcos = 0;
  for (let i = 1; i < b; i++) {
    let c = 0;
    for (let e = 0; e < D; e++) c += o[i * D + e] * o[e];
    score[i] = 1 - c;
    lcos += 1 - c;
  }
  lcos /= b - 1;
  let lvar = 0;
  for (let i = 0; i < b; i++)
    for (let e = 0; e < D; e++) {
      const d = o[i * D + e] - mean[e];
      lvar += d * d;
    }
  lvar /= b;
  return { loss: lambda * lcos + theta * lvar, score, lcos, lvar };
}
/** Central finite differences of kdRef(...).loss w.r.t. feat rows i >= 1 (row 0 and zero rows: 0). */
function kdFd(feat: Float32Array, b: number, D: number, lambda: number, theta: number): Float64Array {
  const x = Float64Array.from(feat);
  const g = new Float64Array(b * D);
  for (let i = 1; i < b; i++) {
    let zero = true;
    for (let e = 0; e < D; e++) if (x[i * D + e] !== 0) zero = false;
    if (zero) continue; // not differentiable; the op defines the gradient as 0
    for (let e = 0; e < D; e++) {
      const q = i * D + e, x0 = x[q];
      const h = 1e-6 * Math.max(1, Math.abs(x0));
      x[q] = x0 + h;
      const lp = kdRef(x, b, D, lambda, theta).loss;
      x[q] = x0 - h;
      const lm = kdRef(x, b, D, lambda, theta).loss;
      x[q] = x0;
      g[q] = (lp - lm) / (2 * h);
    }
  }
  return g;
}

interface KdCase {
  name: string;
  b: number;
  D: number;
  lambda: number;
  theta: number;
  zeroRows?: number[];
  spread?: number; // student noise around the shared direction (default 0.5)
  fd: boolean;
  gpuOnly?: boolean;
}
function kdFeat(c: KdCase): Float32Array {
  // pooled features of paraphrases: a shared direction + per-sample noise (cosines well inside (−1, 1))
  const r = new Rand(c.name);
  const spread = c.spread ?? 0.5;
  const common = Array.from({ length: c.D }, () => r.u());
  const f = new Float32Array(c.b * c.D);
  for (let i = 0; i < c.b; i++) {
    const scale = 0.1 + 3 * r.r(); // norms vary: the normalisation matters
    for (let e = 0; e < c.D; e++) f[i * c.D + e] = scale * (common[e] + spread * r.u());
  }
  for (const z of c.zeroRows ?? []) f.fill(0, z * c.D, (z + 1) * c.D);
  return f;
}
function kdArgs(c: KdCase, feat: Float32Array): Args {
  return { feat, b: c.b, D: c.D, lambda: c.lambda, theta: c.theta };
}
const KD_CASES: KdCase[] = [
  { name: 'b2 D33', b: 2, D: 33, lambda: 0.2, theta: 0.5, fd: true },
  { name: 'b2 D1', b: 2, D: 1, lambda: 0.3, theta: 1, fd: true },
  { name: 'b3 D1 signs', b: 3, D: 1, lambda: 1, theta: -0.7, fd: true },
  { name: 'b3 D17 theta<0', b: 3, D: 17, lambda: 0.3, theta: -0.4, fd: true },
  { name: 'b3 D1001', b: 3, D: 1001, lambda: 0.2, theta: 0.1, fd: true },
  { name: 'b7 D65', b: 7, D: 65, lambda: 1, theta: 0.25, fd: true },
  { name: 'b7 D65 theta<0 spread', b: 7, D: 65, lambda: 0.2, theta: -1.5, spread: 2, fd: true },
  { name: 'b7 D31 lambda0', b: 7, D: 31, lambda: 0, theta: 0.8, fd: true },
  { name: 'b7 D31 theta0', b: 7, D: 31, lambda: 0.7, theta: 0, fd: true },
  { name: 'b7 D45 zero student rows', b: 7, D: 45, lambda: 0.2, theta: 0.6, zeroRows: [2, 6], fd: true },
  { name: 'b3 D23 zero teacher', b: 3, D: 23, lambda: 0.5, theta: -0.2, zeroRows: [0], fd: true },
  { name: 'b2 D9 all zero', b: 2, D: 9, lambda: 0.5, theta: 0.5, zeroRows: [0, 1], fd: true },
  { name: 'b64 D513', b: 64, D: 513, lambda: 0.2, theta: 0.05, fd: false },
  { name: 'b16 D4095 theta<0', b: 16, D: 4095, lambda: 0.3, theta: -0.3, fd: false },
];
/** Larger shapes for the GPU (block-reduction tails, many rows); compared CUDA vs CPU only. */
const KD_GPU_CASES: KdCase[] = [
  { name: 'gpu b64 D20001', b: 64, D: 20001, lambda: 0.2, theta: 0.1, fd: false, gpuOnly: true },
  { name: 'gpu b2 D20000 theta<0', b: 2, D: 20000, lambda: 0.3, theta: -0.5, fd: false, gpuOnly: true },
  { name: 'gpu b5 D257 zero rows', b: 5, D: 257, lambda: 1, theta: 1, zeroRows: [0, 3], fd: false, gpuOnly: true },
  { name: 'gpu b33 D4096', b: 33, D: 4096, lambda: 0.2, theta: 2, spread: 3, fd: false, gpuOnly: true },
];

// ---- kl_distill: float64 reference of Eq. 4's logit term ----------------------------------------------------

/** log-softmax of z/T in float64 (max-shifted). */
function logSoftmax(z: ArrayLike<number>, T: number): Float64Array {
  const n = z.length, out = new Float64Array(n);
  let m = -Infinity;
  for (let v = 0; v < n; v++) m = Math.max(m, z[v] / T);
  let s = 0;
  for (let v = 0; v < n; v++) s += Math.exp(z[v] / T - m);
  const lse = m + Math.log(s);
  for (let v = 0; v < n; v++) out[v] = z[v] / T - lse;
  return out;
}
/** One pair: loss = w·T²·Σ p·(log p − log q) and grad = w·T·(q − p) (w.r.t. the student logits). */
function klPair(zt: ArrayLike<number>, zs: ArrayLike<number>, w: number, T: number): { loss: number; grad: Float64Array } {
  const lp = logSoftmax(zt, T), lq = logSoftmax(zs, T);
  const grad = new Float64Array(zs.length);
  let kl = 0;
  for (let v = 0; v < zs.length; v++) {
    const p = Math.exp(lp[v]), q = Math.exp(lq[v]);
    if (p > 0) kl += p * (lp[v] - lq[v]);
    grad[v] = w * T * (q - p);
  }
  return { loss: w * T * T * kl, grad };
}

interface KlCase {
  name: string;
  rows: number;
  V: number;
  T: number;
  pairs: [number, number][]; // (student, teacher)
  w?: number[]; // default: random in [0.5, 1.5]
  scale?: number; // logit magnitude (default 3)
  noise?: number; // per-row deviation from a shared logit vector, relative to scale (default 0.5)
  copies?: [number, number][]; // (dst, src): row dst is set to an exact copy of row src
  fd: boolean;
  gpuOnly?: boolean;
}
interface KlBuilt {
  args: Args; // without an initial dlogits (zeros)
  logits: Float32Array;
  student: Int32Array;
  teacher: Int32Array;
  w: Float32Array;
  g0: Float32Array; // a random initial dlogits for the accumulate runs
}
function klBuild(c: KlCase): KlBuilt {
  const r = new Rand(`kl ${c.name}`);
  const scale = c.scale ?? 3, noise = c.noise ?? 0.5;
  const common = Array.from({ length: c.V }, () => r.u(scale));
  const logits = new Float32Array(c.rows * c.V);
  for (let i = 0; i < c.rows; i++)
    for (let v = 0; v < c.V; v++) logits[i * c.V + v] = Math.max(-scale, Math.min(scale, common[v] + r.u(noise * scale)));
  for (const [d, src] of c.copies ?? []) logits.copyWithin(d * c.V, src * c.V, (src + 1) * c.V);
  const P = c.pairs.length;
  const student = Int32Array.from(c.pairs.map((p) => p[0]));
  const teacher = Int32Array.from(c.pairs.map((p) => p[1]));
  const w = Float32Array.from(c.w ?? Array.from({ length: P }, () => 0.5 + r.r()));
  const g0 = Float32Array.from({ length: c.rows * c.V }, () => r.u(0.1));
  return { args: { logits, student, teacher, w, rows: c.rows, V: c.V, P, T: c.T }, logits, student, teacher, w, g0 };
}
/** The float64 reference: per-pair losses and the full gradient [rows·V] (zeros outside student rows). */
function klRef(b: KlBuilt, V: number, T: number): { loss: Float64Array; grad: Float64Array } {
  const P = b.student.length, loss = new Float64Array(P), grad = new Float64Array(b.logits.length);
  for (let i = 0; i < P; i++) {
    const s = b.student[i], t = b.teacher[i];
    const r = klPair(b.logits.subarray(t * V, (t + 1) * V), b.logits.subarray(s * V, (s + 1) * V), b.w[i], T);
    loss[i] = r.loss;
    grad.set(r.grad, s * V);
  }
  return { loss, grad };
}
/** Central finite differences of each pair's loss w.r.t. its student row, the teacher row held fixed. */
function klFd(b: KlBuilt, V: number, T: number): Float64Array {
  const g = new Float64Array(b.logits.length);
  for (let i = 0; i < b.student.length; i++) {
    const s = b.student[i], t = b.teacher[i];
    const zt = Float64Array.from(b.logits.subarray(t * V, (t + 1) * V));
    const zs = Float64Array.from(b.logits.subarray(s * V, (s + 1) * V));
    for (let v = 0; v < V; v++) {
      const x0 = zs[v], h = 1e-5 * Math.max(1, Math.abs(x0));
      zs[v] = x0 + h;
      const lp = klPair(zt, zs, b.w[i], T).loss;
      zs[v] = x0 - h;
      const lm = klPair(zt, zs, b.w[i], T).loss;
      zs[v] = x0;
      g[s * V + v] = (lp - lm) / (2 * h);
    }
  }
  return g;
}
const range = (a: number, b: number): number[] => Array.from({ length: b - a }, (_, i) => a + i);
const KL_CASES: KlCase[] = [
  { name: 'P3 V33 T2', rows: 6, V: 33, T: 2, pairs: [[1, 0], [3, 2], [5, 4]], fd: true },
  { name: 'P1 V7 T1', rows: 2, V: 7, T: 1, pairs: [[0, 1]], fd: true },
  { name: 'shared teacher P5 V65 T2', rows: 6, V: 65, T: 2, pairs: range(1, 6).map((s) => [s, 0] as [number, number]), fd: true },
  { name: 'shared teacher T0.5 wide', rows: 4, V: 40, T: 0.5, pairs: [[1, 0], [2, 0], [3, 0]], noise: 1, fd: true },
  { name: 'T0.7 negative w', rows: 4, V: 19, T: 0.7, pairs: [[2, 1], [0, 3]], w: [-0.4, 1.3], fd: true },
  { name: 'T4 V5', rows: 3, V: 5, T: 4, pairs: [[2, 0], [1, 0]], fd: true },
  { name: 'chain (row 1 is a student and a teacher)', rows: 4, V: 23, T: 2, pairs: [[1, 0], [2, 1], [3, 1]], fd: true },
  { name: 'student == teacher', rows: 3, V: 17, T: 2, pairs: [[1, 1], [2, 0]], fd: true },
  { name: 'identical rows', rows: 4, V: 29, T: 2, pairs: [[1, 0], [3, 2]], copies: [[1, 0]], fd: true },
  { name: 'w = 0', rows: 3, V: 31, T: 2, pairs: [[1, 0], [2, 0]], w: [0, 0.8], fd: true },
  { name: 'V1', rows: 3, V: 1, T: 2, pairs: [[0, 2], [1, 2]], fd: true },
  { name: 'large logits ±80 T1', rows: 4, V: 64, T: 1, pairs: [[1, 0], [2, 0], [3, 0]], scale: 80, noise: 1, fd: true },
  { name: 'large logits ±80 T0.5', rows: 3, V: 300, T: 0.5, pairs: [[1, 0], [2, 0]], scale: 80, noise: 1, fd: false },
  { name: 'unpaired rows', rows: 8, V: 21, T: 2, pairs: [[5, 2], [1, 6]], fd: true },
  { name: 'V512', rows: 12, V: 512, T: 2, pairs: range(1, 12).map((s) => [s, 0] as [number, number]), fd: false },
  { name: 'V50257', rows: 4, V: 50257, T: 2, pairs: [[1, 0], [2, 0], [3, 1]], noise: 0.3, fd: false },
];
/** GPU-only shapes: long rows (block-reduction tails, many unrolled steps), many pairs; CUDA vs CPU only. */
const KL_GPU_CASES: KlCase[] = [
  { name: 'gpu V151936 P11', rows: 12, V: 151936, T: 2, pairs: range(1, 12).map((s) => [s, 0] as [number, number]), noise: 0.3, fd: false, gpuOnly: true },
  { name: 'gpu V50257 P40', rows: 48, V: 50257, T: 2, pairs: range(0, 40).map((i) => [i + 8, i % 8] as [number, number]), fd: false, gpuOnly: true },
  { name: 'gpu V4097 T0.5', rows: 5, V: 4097, T: 0.5, pairs: [[1, 0], [2, 0], [4, 3]], fd: false, gpuOnly: true },
  { name: 'gpu V1023 ±80 T1', rows: 4, V: 1023, T: 1, pairs: [[1, 0], [2, 0], [3, 0]], scale: 80, noise: 1, fd: false, gpuOnly: true },
  { name: 'gpu V16385 T4', rows: 3, V: 16385, T: 4, pairs: [[0, 2], [1, 2]], noise: 1, fd: false, gpuOnly: true },
];
/** Rows no pair writes to (teachers that are no one's student included). */
function untouchedRows(b: KlBuilt, rows: number): number[] {
  const st = new Set(Array.from(b.student));
  return range(0, rows).filter((r) => !st.has(r));
}
function expectRowsBitEqual(label: string, got: Float32Array, want: Float32Array, rowsList: number[], V: number): void {
  for (const r of rowsList)
    for (let v = 0; v < V; v++) {
      const q = r * V + v;
      if (!Object.is(got[q], want[q])) expect.fail(`${label}: row ${r} [${v}] is ${got[q]}, expected ${want[q]} (untouched)`);
    }
}

/** Student rows after an accumulating run: |got − (g0 + grad)| <= ½ulp(g0 + grad) (the one f32 rounding of the
 *  sum) + tol·max|grad| (the op's own gradient error), element by element. */
function expectAccumulated(label: string, got: Float32Array, g0: Float32Array, grad: Float64Array, rowsList: number[], V: number, tol: number): void {
  let maxRef = 0;
  for (const r of rowsList) for (let v = 0; v < V; v++) maxRef = Math.max(maxRef, Math.abs(grad[r * V + v]));
  for (const r of rowsList)
    for (let v = 0; v < V; v++) {
      const q = r * V + v, want = g0[q] + grad[q];
      const err = Math.abs(got[q] - want), bound = Math.abs(want) * 2 ** -24 * 1.001 + tol * maxRef;
      if (!(err <= bound)) expect.fail(`${label}: row ${r} [${v}] is ${got[q]}, expected ${g0[q]} + ${grad[q]} (err ${err} > ${bound})`);
    }
}

// ---- loss_aware_merge: float64 reference -----------------------------------------------------------------

/** ALGORITHM.md §2.6 with zeros neutral (in the sign test and in the weights); the same double operations in the same order as the rule. */
function refMerge(base: Float64Array, shards: ArrayLike<number>[], w: Float32Array): Float64Array {
  const n = base.length, k = shards.length, out = new Float64Array(n);
  for (let p = 0; p < n; p++) {
    let pos = 0, neg = 0, best = -1, sum = 0, wsum = 0, bestv = -1;
    for (let i = 0; i < k; i++) {
      const t = shards[i][p] - base[p];
      if (t === 0) continue;
      if (t > 0) pos++;
      else neg++;
      sum += w[i] * t;
      wsum += w[i];
      const s = w[i] * Math.abs(t);
      if (s > bestv) {
        bestv = s;
        best = i;
      }
    }
    let delta = 0;
    if (pos && neg) delta = shards[best][p] - base[p];
    else if ((pos || neg) && wsum > 0) delta = sum / wsum;
    out[p] = base[p] + delta;
  }
  return out;
}
function softmaxWeights(losses: number[], alpha: number): Float32Array {
  const z = losses.map((l) => -alpha * l);
  const m = Math.max(...z);
  const ex = z.map((v) => Math.exp(v - m));
  const s = ex.reduce((a, b) => a + b, 0);
  return Float32Array.from(ex.map((v) => v / s));
}

interface MergeCase {
  name: string;
  n: number;
  k: number;
  dt: DT;
  alias?: number;
  weights?: number[]; // default: softmax(−α·L) of random losses
  make: (r: Rand, base: Float64Array, i: number) => Float32Array;
  quant?: boolean; // base in multiples of 2⁻⁸ (exact in every dtype): quantised deltas give exact ties
  gpuOnly?: boolean;
}
function mergeBuild(c: MergeCase): { args: Args; base: Float64Array; shards: Float32Array[]; w: Float32Array } {
  const r = new Rand(c.name);
  const f = new Float64Array(c.n);
  for (let p = 0; p < c.n; p++) f[p] = c.quant ? Math.round(r.u(0.5) * 256) / 256 : r.u(0.5);
  const b = encodeWeight(f, c.dt);
  const w = c.weights ? Float32Array.from(c.weights) : softmaxWeights(Array.from({ length: c.k }, () => 0.2 + 3 * r.r()), 1.5);
  const shards: Float32Array[] = [];
  for (let i = 0; i < c.k; i++) shards.push(c.make(r, b.vals, i));
  const flat = new Float32Array(c.k * c.n);
  shards.forEach((s, i) => flat.set(s, i * c.n));
  const args: Args = { k: c.k, dtype: c.dt, base: b.arg };
  if (c.k > 0) Object.assign(args, { shards: flat, weights: w });
  if (c.alias !== undefined) args.alias = c.alias;
  return { args, base: b.vals, shards, w };
}
/** base + a masked random delta (fraction `nz` non-zero, exact zeros elsewhere); `sign` forces the sign. */
const randomShard = (nz: number, sign = 0) => (r: Rand, base: Float64Array): Float32Array => {
  const a = new Float32Array(base.length);
  for (let p = 0; p < base.length; p++) {
    a[p] = base[p];
    if (r.r() < nz) {
      const m = 0.001 + 0.1 * r.r();
      a[p] = Math.fround(base[p] + (sign !== 0 ? sign : r.r() < 0.5 ? -1 : 1) * m);
    }
  }
  return a;
};
/** Deltas ±m/16 (m = 1..levels) on a quantised base: exact τ, so exact ties in w·|τ| for dyadic weights. */
const quantShard = (nz: number, levels: number) => (r: Rand, base: Float64Array): Float32Array => {
  const a = new Float32Array(base.length);
  for (let p = 0; p < base.length; p++) {
    a[p] = base[p];
    if (r.r() < nz) a[p] = Math.fround(base[p] + r.int(1, levels) * (r.r() < 0.5 ? -1 : 1) / 16);
  }
  return a;
};
function mergeCases(): MergeCase[] {
  const out: MergeCase[] = [];
  for (const dt of DTYPES)
    for (let k = 1; k <= 4; k++) {
      out.push({ name: `random ${dt} k=${k}`, n: 301, k, dt, make: randomShard(0.7) });
      out.push({ name: `ties ${dt} k=${k}`, n: 257, k, dt, quant: true, weights: [0.25, 0.5, 0.125, 0.125].slice(0, k), make: quantShard(0.8, 4) });
    }
  out.push({ name: 'agreeing positive F32 k=3', n: 200, k: 3, dt: 'F32', make: randomShard(0.6, 1) });
  out.push({ name: 'agreeing negative BF16 k=2', n: 200, k: 2, dt: 'BF16', make: randomShard(0.6, -1) });
  out.push({ name: 'one shard all masked F32 k=3', n: 150, k: 3, dt: 'F32', make: (r, b, i) => (i === 1 ? Float32Array.from(b) : randomShard(0.5)(r, b)) });
  out.push({ name: 'all masked F16 k=2', n: 64, k: 2, dt: 'F16', make: (_r, b) => Float32Array.from(b) });
  out.push({ name: 'k=0 F32', n: 33, k: 0, dt: 'F32', make: (_r, b) => Float32Array.from(b) });
  for (const dt of DTYPES)
    out.push({ name: `alias ${dt} k=3`, n: 500, k: 3, dt, alias: 1, make: randomShard(0.7) });
  out.push({ name: 'alias ties F32 k=4', n: 300, k: 4, dt: 'F32', alias: 0, quant: true, weights: [0.25, 0.5, 0.125, 0.125], make: quantShard(0.8, 4) });
  return out;
}
function mergeGpuCases(): MergeCase[] {
  return [
    { name: 'gpu big F32 k=4', n: 1 << 20, k: 4, dt: 'F32', make: randomShard(0.5), gpuOnly: true },
    { name: 'gpu big BF16 k=3 alias', n: 300001, k: 3, dt: 'BF16', alias: 2, make: randomShard(0.5), gpuOnly: true },
    { name: 'gpu ties F16 k=4', n: 100003, k: 4, dt: 'F16', quant: true, weights: [0.25, 0.5, 0.125, 0.125], make: quantShard(0.9, 2), gpuOnly: true },
    { name: 'gpu k=8 F32', n: 65537, k: 8, dt: 'F32', make: randomShard(0.4), gpuOnly: true },
  ];
}

// ---- tests -----------------------------------------------------------------------------------------

const info = native().info();
const cudaAvailable = info.cuda.available;

describe('repair ops: op table and arguments', () => {
  it('runOp knows kd_loss and loss_aware_merge', () => {
    for (const op of ['kd_loss', 'loss_aware_merge']) expectKnownOp(op);
  });

  it('rejects bad arguments with ERR_INVALID_ARG', () => {
    const feat = new Float32Array(6);
    const kd = { feat, b: 2, D: 3, lambda: 0.2, theta: 0.1 };
    expect(errCode(() => testing().runOp('cpu', 'kd_loss', { ...kd, b: 1, D: 6 }))).toBe('ERR_INVALID_ARG'); // b < 2
    expect(errCode(() => testing().runOp('cpu', 'kd_loss', { ...kd, D: 4 }))).toBe('ERR_INVALID_ARG'); // length
    expect(errCode(() => testing().runOp('cpu', 'kd_loss', { feat, b: 2, D: 3, lambda: 0.2 }))).toBe('ERR_INVALID_ARG'); // theta
    expect(errCode(() => testing().runOp('cpu', 'kd_loss', { ...kd, theta: NaN }))).toBe('ERR_INVALID_ARG');
    const m = { k: 2, base: new Float32Array(3), shards: feat, weights: Float32Array.of(0.5, 0.5) };
    expect(errCode(() => testing().runOp('cpu', 'loss_aware_merge', { ...m, shards: new Float32Array(5) }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'loss_aware_merge', { ...m, weights: Float32Array.of(1) }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'loss_aware_merge', { ...m, alias: 2 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'loss_aware_merge', { ...m, n: 4 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'loss_aware_merge', { ...m, dtype: 'F16' }))).toBe('ERR_INVALID_ARG'); // f32 base, F16 dtype
    expect(run('cpu', 'loss_aware_merge', { ...m, n: 3 }).out.length).toBe(3);
  });
});

describe('kd_loss: cpu backend vs float64 reference (Eq. 4)', () => {
  for (const c of KD_CASES) {
    it(`${c.name} λ=${c.lambda} θ=${c.theta}`, () => {
      const feat = kdFeat(c);
      const res = run('cpu', 'kd_loss', kdArgs(c, feat));
      expect(res.out.length).toBe(c.b + 1);
      expect(res.dfeat.length).toBe(c.b * c.D);
      expectFinite('out', res.out);
      expectFinite('dfeat', res.dfeat);
      // the op receives λ, θ as f32
      const ref = kdRef(feat, c.b, c.D, Math.fround(c.lambda), Math.fround(c.theta));
      const want = new Float64Array(c.b + 1);
      want[0] = ref.loss;
      want.set(ref.score, 1);
      expectClose(`kd ${c.name} out`, res.out, want, TOL_KD_CPU);
      // the loss alone, relative to the larger of its two terms (it may cancel for θ < 0)
      const scale = Math.max(Math.abs(c.lambda * ref.lcos), Math.abs(c.theta * ref.lvar), 1e-30);
      expect(Math.abs(res.out[0] - ref.loss) / scale, `loss ${res.out[0]} vs ${ref.loss}`).toBeLessThanOrEqual(TOL_KD_CPU);
      expect(res.out[1], 'out[1] (the teacher against itself) is 0').toBe(0);
      // teacher row: a stop-gradient, exactly 0
      for (let e = 0; e < c.D; e++) expect(Object.is(res.dfeat[e], 0) || res.dfeat[e] === 0, `dfeat[0][${e}] = ${res.dfeat[e]}`).toBe(true);
      // zero rows: score 1 − 0 (or 0 for the teacher itself), gradient exactly 0
      for (const z of c.zeroRows ?? []) {
        for (let e = 0; e < c.D; e++) expect(res.dfeat[z * c.D + e], `zero row ${z} gradient`).toBe(0);
        if (z > 0) expect(res.out[1 + z]).toBe(1);
      }
      if ((c.zeroRows ?? []).includes(0)) for (let i = 1; i < c.b; i++) expect(res.out[1 + i], 'zero teacher: score 1').toBe(1);
    });
  }
});

describe('kd_loss: cpu gradient vs finite differences (float64)', () => {
  for (const c of KD_CASES) {
    if (!c.fd) continue;
    it(`${c.name} λ=${c.lambda} θ=${c.theta} (FD)`, () => {
      const feat = kdFeat(c);
      const res = run('cpu', 'kd_loss', kdArgs(c, feat));
      const g = kdFd(feat, c.b, c.D, Math.fround(c.lambda), Math.fround(c.theta));
      expectClose(`fd ${c.name} dfeat`, res.dfeat, g, TOL_FD);
    });
  }

  it('the variance term pulls students toward the mean for θ > 0 and away for θ < 0', () => {
    // a descent step on the students must lower L (θ > 0: variance shrinks; θ < 0: variance grows)
    for (const theta of [1, -1]) {
      const c: KdCase = { name: `step θ=${theta}`, b: 5, D: 21, lambda: 0, theta, fd: false };
      const feat = kdFeat(c);
      const res = run('cpu', 'kd_loss', kdArgs(c, feat));
      const step = Float32Array.from(feat, (v, q) => v - 1e-3 * res.dfeat[q]);
      const before = kdRef(feat, c.b, c.D, 0, theta), after = kdRef(step, c.b, c.D, 0, theta);
      expect(after.loss).toBeLessThan(before.loss);
      if (theta > 0) expect(after.lvar).toBeLessThan(before.lvar);
      else expect(after.lvar).toBeGreaterThan(before.lvar);
    }
  });

  it('identical students and teacher: loss 0, scores 0, gradient 0', () => {
    const D = 11, b = 4;
    const row = Float32Array.from({ length: D }, (_, e) => Math.sin(e + 1));
    const feat = new Float32Array(b * D);
    for (let i = 0; i < b; i++) feat.set(row.map((v) => v * (i + 1)), i * D); // same direction, other norms
    const res = run('cpu', 'kd_loss', { feat, b, D, lambda: 0.5, theta: 0.5 });
    for (let i = 0; i <= b; i++) expect(Math.abs(res.out[i])).toBeLessThan(1e-6);
    for (let q = 0; q < b * D; q++) expect(Math.abs(res.dfeat[q])).toBeLessThan(1e-6);
  });
});

describe('kl_distill: cpu backend vs float64 reference (Eq. 4, logit term)', () => {
  it('runOp knows kl_distill', () => {
    let err: { code?: string; message?: string } = {};
    try {
      testing().runOp('cpu', 'kl_distill', {});
    } catch (e) {
      err = e as typeof err;
    }
    expect(err.code).toBe('ERR_INVALID_ARG');
    expect(err.message).not.toMatch(/unknown op/);
  });

  for (const c of KL_CASES) {
    it(`${c.name} (P=${c.pairs.length} V=${c.V} T=${c.T})`, () => {
      const b = klBuild(c);
      const T = Math.fround(c.T);
      const ref = klRef(b, c.V, T);
      // from zeros: the gradient itself
      const res = run('cpu', 'kl_distill', b.args);
      expect(res.loss.length).toBe(c.pairs.length);
      expect(res.dlogits.length).toBe(c.rows * c.V);
      expectFinite('loss', res.loss);
      expectFinite('dlogits', res.dlogits);
      expectClose(`kl ${c.name} loss`, res.loss, ref.loss, TOL_KL_CPU);
      expectClose(`kl ${c.name} dlogits`, res.dlogits, ref.grad, TOL_KL_CPU);
      const zeros = new Float32Array(c.rows * c.V);
      expectRowsBitEqual(`kl ${c.name} (zeros)`, res.dlogits, zeros, untouchedRows(b, c.rows), c.V);
      // accumulate: student rows += gradient, every other row bit-identical
      const acc = run('cpu', 'kl_distill', { ...b.args, dlogits: b.g0 });
      expectRowsBitEqual(`kl ${c.name} (accumulate)`, acc.dlogits, b.g0, untouchedRows(b, c.rows), c.V);
      expectClose(`kl ${c.name} loss (accumulate run)`, acc.loss, ref.loss, TOL_KL_CPU);
      expectAccumulated(`kl ${c.name} dlogits += grad`, acc.dlogits, b.g0, ref.grad, Array.from(b.student), c.V, TOL_KL_CPU);
      // zero-loss pairs: exactly zero
      for (let i = 0; i < c.pairs.length; i++) {
        const [s, t] = c.pairs[i];
        let same = true;
        for (let v = 0; v < c.V; v++) if (b.logits[s * c.V + v] !== b.logits[t * c.V + v]) same = false;
        if (same || b.w[i] === 0 || c.V === 1) {
          expect(res.loss[i], `pair ${i}: loss`).toBe(0);
          for (let v = 0; v < c.V; v++) {
            if (res.dlogits[s * c.V + v] !== 0) expect.fail(`pair ${i}: gradient [${v}] = ${res.dlogits[s * c.V + v]}`);
            if (!Object.is(acc.dlogits[s * c.V + v], b.g0[s * c.V + v])) expect.fail(`pair ${i}: accumulated [${v}] changed`);
          }
        } else if (b.w[i] > 0) expect(res.loss[i], `pair ${i}: KL > 0`).toBeGreaterThan(0);
      }
    });
  }

  it('P = 0: nothing written, dlogits unchanged', () => {
    const logits = Float32Array.of(1, 2, 3, 4, 5, 6);
    const g0 = Float32Array.of(0.1, -0.2, 0.3, -0.4, 0.5, -0.6);
    const args = { logits, student: new Int32Array(0), teacher: new Int32Array(0), w: new Float32Array(0), rows: 2, V: 3, P: 0, T: 2 };
    const res = run('cpu', 'kl_distill', { ...args, dlogits: g0 });
    expect(res.loss.length).toBe(0);
    expect(Array.from(res.dlogits)).toEqual(Array.from(g0));
    expect(Array.from(run('cpu', 'kl_distill', args).dlogits)).toEqual([0, 0, 0, 0, 0, 0]);
  });

  it('a NaN logit reaches the loss and the gradient (never dropped as a 0·log 0 term)', () => {
    const logits = Float32Array.of(0, 1, 2, 0, NaN, 2);
    const res = testing().runOp('cpu', 'kl_distill', { logits, student: Int32Array.of(1), teacher: Int32Array.of(0), w: Float32Array.of(1), rows: 2, V: 3, P: 1, T: 2 });
    expect(res.guardOk).toBe(true);
    expect(Number.isNaN(res.loss[0])).toBe(true);
    expect(Number.isNaN(res.dlogits[3])).toBe(true);
    expect(Array.from(res.dlogits.subarray(0, 3))).toEqual([0, 0, 0]); // the teacher row stays untouched
  });

  it('hand-worked pair: V = 2, T = 1', () => {
    // p = softmax(0, 0) = (½, ½); q = softmax(0, ln 3) = (¼, ¾)
    // KL = ½·ln(½/¼) + ½·ln(½/¾) = ½·ln(4/3);  grad = q − p = (−¼, ¼)
    const logits = Float32Array.of(0, 0, 0, Math.log(3));
    const res = run('cpu', 'kl_distill', { logits, student: Int32Array.of(1), teacher: Int32Array.of(0), w: Float32Array.of(1), rows: 2, V: 2, P: 1, T: 1 });
    expect(res.loss[0]).toBeCloseTo(0.5 * Math.log(4 / 3), 6);
    expect(res.dlogits[2]).toBeCloseTo(-0.25, 6);
    expect(res.dlogits[3]).toBeCloseTo(0.25, 6);
    expect(res.dlogits[0]).toBe(0);
    expect(res.dlogits[1]).toBe(0);
  });

  it('a descent step on the students lowers every pair\'s KL', () => {
    const c = KL_CASES[2];
    const b = klBuild(c);
    const res = run('cpu', 'kl_distill', b.args);
    const stepped = Float32Array.from(b.logits, (v, q) => v - 0.5 * res.dlogits[q]);
    const before = klRef(b, c.V, c.T).loss, after = klRef({ ...b, logits: stepped }, c.V, c.T).loss;
    for (let i = 0; i < c.pairs.length; i++) expect(after[i]).toBeLessThan(before[i]);
  });

  it('rejects bad arguments with ERR_INVALID_ARG', () => {
    const ok = { logits: new Float32Array(12), student: Int32Array.of(1, 2), teacher: Int32Array.of(0, 0), w: Float32Array.of(1, 1), rows: 3, V: 4, P: 2, T: 2 };
    expect(run('cpu', 'kl_distill', ok).loss.length).toBe(2); // the baseline is accepted
    const bad: [string, Args][] = [
      ['P < 0', { ...ok, P: -1 }],
      ['P not an integer', { ...ok, P: 1.5 }],
      ['V = 0', { ...ok, V: 0, logits: new Float32Array(0) }],
      ['rows = 0', { ...ok, rows: 0, logits: new Float32Array(0) }],
      ['T = 0', { ...ok, T: 0 }],
      ['T < 0', { ...ok, T: -1 }],
      ['T NaN', { ...ok, T: NaN }],
      ['T Infinity', { ...ok, T: Infinity }],
      ['T underflows f32', { ...ok, T: 1e-50 }],
      ['T overflows f32', { ...ok, T: 1e39 }],
      ['T missing', { logits: ok.logits, student: ok.student, teacher: ok.teacher, w: ok.w, rows: 3, V: 4, P: 2 }],
      ['student out of range', { ...ok, student: Int32Array.of(1, 3) }],
      ['student negative', { ...ok, student: Int32Array.of(-1, 2) }],
      ['teacher out of range', { ...ok, teacher: Int32Array.of(0, 3) }],
      ['teacher negative', { ...ok, teacher: Int32Array.of(-5, 0) }],
      ['duplicate student', { ...ok, student: Int32Array.of(2, 2) }],
      ['logits length', { ...ok, logits: new Float32Array(11) }],
      ['student length', { ...ok, student: Int32Array.of(1) }],
      ['teacher length', { ...ok, teacher: Int32Array.of(0, 0, 0) }],
      ['w length', { ...ok, w: Float32Array.of(1) }],
      ['dlogits length', { ...ok, dlogits: new Float32Array(13) }],
      ['student as Float32Array', { ...ok, student: Float32Array.of(1, 2) }],
      ['P = 0 with non-empty arrays', { ...ok, P: 0 }],
    ];
    for (const [label, args] of bad) expect(errCode(() => testing().runOp('cpu', 'kl_distill', args)), label).toBe('ERR_INVALID_ARG');
  });
});

describe('kl_distill: cpu gradient vs finite differences (float64)', () => {
  for (const c of KL_CASES) {
    if (!c.fd) continue;
    it(`${c.name} (FD)`, () => {
      const b = klBuild(c);
      const res = run('cpu', 'kl_distill', b.args);
      const g = klFd(b, c.V, Math.fround(c.T));
      // FD (h = 1e-5·max(1, |x|)): truncation ~h²·|f'''|, cancellation ~1e-16·|loss|/h
      expectClose(`fd kl ${c.name} dlogits`, res.dlogits, g, TOL_FD);
    });
  }
});

describe('loss_aware_merge: cpu backend vs float64 reference', () => {
  for (const c of mergeCases()) {
    it(`${c.name}${c.alias !== undefined ? ` alias=${c.alias}` : ''}`, () => {
      const b = mergeBuild(c);
      const res = run('cpu', 'loss_aware_merge', b.args);
      expectFinite('out', res.out);
      expectExact(`merge ${c.name}`, res.out, refMerge(b.base, b.shards, b.w));
    });
  }

  it('the case table exercises every branch (agreeing, mixed, masked, ties in w·|τ|)', () => {
    let agree = 0, mixed = 0, none = 0, tieMixed = 0;
    for (const c of mergeCases()) {
      if (c.k === 0) continue;
      const b = mergeBuild(c);
      for (let p = 0; p < c.n; p++) {
        const t = b.shards.map((s) => s[p] - b.base[p]);
        const nz = t.map((v, i) => ({ v, s: b.w[i] * Math.abs(v) })).filter((x) => x.v !== 0);
        const pos = nz.some((x) => x.v > 0), neg = nz.some((x) => x.v < 0);
        if (!nz.length) none++;
        else if (pos && neg) {
          mixed++;
          const top = Math.max(...nz.map((x) => x.s));
          if (nz.filter((x) => x.s === top).length > 1) tieMixed++;
        } else agree++;
      }
    }
    if (VERBOSE) console.log(`[ops_repair] merge branches: agree=${agree} mixed=${mixed} none=${none} tieMixed=${tieMixed}`);
    expect(agree).toBeGreaterThan(100);
    expect(mixed).toBeGreaterThan(100);
    expect(none).toBeGreaterThan(100);
    expect(tieMixed).toBeGreaterThan(20);
  });

  it('hand-worked elements (k = 3)', () => {
    // base 1 everywhere; w = (0.25, 0.5, 0.25)
    //  p0: τ = (+2, +1, 0)      agreeing       → Σ wτ / Σ w = 1 / 0.75            → 1 + 4/3
    //  p1: τ = (+2, −1, 0)      mixed, w|τ| = (0.5, 0.5): tie → lower index (+2) → 3
    //  p2: τ = (−2, +1, +4)     mixed, w|τ| = (0.5, 0.5, 1) → shard 2 (+4)       → 5
    //  p3: τ = (0, 0, 0)        nothing                                           → 1
    //  p4: τ = (0, −1, 0)       one non-zero (zeros are neutral: no sign, no weight) → 1 − 1 = 0
    //  p5: τ = (+1, −2, +1)     mixed, w|τ| = (0.25, 1, 0.25) → shard 1 (−2)      → −1
    //  p6: τ = (−4, +2, +8)     mixed, w|τ| = (1, 1, 2) → shard 2                 → 9
    //  p7: τ = (−4, +2, −4)     mixed, w|τ| = (1, 1, 1): three-way tie → shard 0  → −3
    const base = new Float32Array(8).fill(1);
    const t = [
      [2, 2, -2, 0, 0, 1, -4, -4],
      [1, -1, 1, 0, -1, -2, 2, 2],
      [0, 0, 4, 0, 0, 1, 8, -4],
    ];
    const shards = new Float32Array(24);
    t.forEach((row, i) => row.forEach((v, p) => (shards[i * 8 + p] = 1 + v)));
    const w = Float32Array.of(0.25, 0.5, 0.25);
    const res = run('cpu', 'loss_aware_merge', { k: 3, base, shards, weights: w });
    const want = [Math.fround(1 + 4 / 3), 3, 5, 1, 0, -1, 9, -3];
    expect(Array.from(res.out)).toEqual(want);
    for (let alias = 0; alias < 3; alias++) expect(Array.from(run('cpu', 'loss_aware_merge', { k: 3, base, shards, weights: w, alias }).out)).toEqual(want);
  });

  it('k = 1 returns the shard (a weighted mean over the one shard that touched each entry)', () => {
    const base = Float32Array.of(0, 1, 2, 3);
    const shards = Float32Array.of(1, 1, 0, 7);
    const res = run('cpu', 'loss_aware_merge', { k: 1, base, shards, weights: Float32Array.of(0.5) });
    expect(Array.from(res.out)).toEqual([1, 1, 0, 7]);
  });
});

describe.skipIf(!cudaAvailable)('repair ops: cuda backend vs cpu backend', () => {
  for (const c of [...KD_CASES, ...KD_GPU_CASES]) {
    it(`kd_loss ${c.name} λ=${c.lambda} θ=${c.theta}`, () => {
      const feat = kdFeat(c);
      const args = kdArgs(c, feat);
      const cpu = run('cpu', 'kd_loss', args);
      const gpu = run('cuda', 'kd_loss', args);
      expect(Object.keys(gpu).sort()).toEqual(Object.keys(cpu).sort());
      for (const k of ['out', 'dfeat']) {
        expectFinite(`cpu ${c.name} ${k}`, cpu[k]);
        expectFinite(`cuda ${c.name} ${k}`, gpu[k]);
        expectClose(`cuda kd ${c.name} ${k}`, gpu[k], cpu[k], TOL_CUDA_KD);
      }
      expect(gpu.out[1]).toBe(0);
      for (let e = 0; e < c.D; e++) if (gpu.dfeat[e] !== 0) expect.fail(`cuda dfeat[0][${e}] = ${gpu.dfeat[e]}`);
      for (const z of c.zeroRows ?? []) for (let e = 0; e < c.D; e++) if (gpu.dfeat[z * c.D + e] !== 0) expect.fail(`cuda zero row ${z}`);
      // the scalar loss relative to its larger term (θ < 0 may cancel)
      const ref = kdRef(feat, c.b, c.D, Math.fround(c.lambda), Math.fround(c.theta));
      const scale = Math.max(Math.abs(c.lambda * ref.lcos), Math.abs(c.theta * ref.lvar), 1e-30);
      expect(Math.abs(gpu.out[0] - cpu.out[0]) / scale).toBeLessThanOrEqual(TOL_CUDA_KD);
    });
  }

  for (const c of [...mergeCases(), ...mergeGpuCases()]) {
    it(`loss_aware_merge ${c.name}${c.alias !== undefined ? ` alias=${c.alias}` : ''}`, () => {
      const b = mergeBuild(c);
      const cpu = run('cpu', 'loss_aware_merge', b.args).out;
      const gpu = run('cuda', 'loss_aware_merge', b.args).out;
      expectFinite(`cuda ${c.name}`, gpu);
      expectExact(`cuda merge ${c.name}`, gpu, cpu);
      if (c.gpuOnly) expectExact(`cpu merge ${c.name} vs ref`, cpu, refMerge(b.base, b.shards, b.w));
    });
  }

  for (const c of [...KL_CASES, ...KL_GPU_CASES]) {
    it(`kl_distill ${c.name} (P=${c.pairs.length} V=${c.V} T=${c.T})`, () => {
      const b = klBuild(c);
      for (const init of [false, true]) {
        const args = init ? { ...b.args, dlogits: b.g0 } : b.args;
        const cpu = run('cpu', 'kl_distill', args);
        const gpu = run('cuda', 'kl_distill', args);
        expect(Object.keys(gpu).sort()).toEqual(Object.keys(cpu).sort());
        for (const k of ['loss', 'dlogits']) {
          expectFinite(`cpu ${c.name} ${k}`, cpu[k]);
          expectFinite(`cuda ${c.name} ${k}`, gpu[k]);
          expectClose(`cuda kl ${c.name} ${k}${init ? ' (accumulate)' : ''}`, gpu[k], cpu[k], TOL_CUDA_KL);
        }
        const base = init ? b.g0 : new Float32Array(c.rows * c.V);
        expectRowsBitEqual(`cuda kl ${c.name}`, gpu.dlogits, base, untouchedRows(b, c.rows), c.V);
        for (let i = 0; i < c.pairs.length; i++) if (cpu.loss[i] === 0) expect(gpu.loss[i], `pair ${i}: exact zero`).toBe(0);
      }
      if (c.gpuOnly) {
        // the CPU against float64 on the big shapes too
        const ref = klRef(b, c.V, Math.fround(c.T));
        const cpu = run('cpu', 'kl_distill', b.args);
        expectClose(`cpu kl ${c.name} loss vs ref`, cpu.loss, ref.loss, TOL_KL_CPU);
        expectClose(`cpu kl ${c.name} dlogits vs ref`, cpu.dlogits, ref.grad, TOL_KL_CPU);
      }
    });
  }

  it('kl_distill: P = 0 and bad arguments on cuda', () => {
    const g0 = Float32Array.of(0.1, -0.2, 0.3, -0.4, 0.5, -0.6);
    const empty = { logits: new Float32Array(6), student: new Int32Array(0), teacher: new Int32Array(0), w: new Float32Array(0), rows: 2, V: 3, P: 0, T: 2 };
    const res = run('cuda', 'kl_distill', { ...empty, dlogits: g0 });
    expect(res.loss.length).toBe(0);
    expect(Array.from(res.dlogits)).toEqual(Array.from(g0));
    const ok = { logits: new Float32Array(12), student: Int32Array.of(1, 2), teacher: Int32Array.of(0, 0), w: Float32Array.of(1, 1), rows: 3, V: 4, P: 2, T: 2 };
    expect(errCode(() => testing().runOp('cuda', 'kl_distill', { ...ok, T: 0 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cuda', 'kl_distill', { ...ok, student: Int32Array.of(2, 2) }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cuda', 'kl_distill', { ...ok, teacher: Int32Array.of(0, 9) }))).toBe('ERR_INVALID_ARG');
    const r = run('cuda', 'kl_distill', ok);
    expect(Array.from(r.loss)).toEqual([0, 0]); // all-zero logits: identical rows
  });

  it('rejects bad arguments with ERR_INVALID_ARG and stays usable', () => {
    expect(errCode(() => testing().runOp('cuda', 'kd_loss', { feat: new Float32Array(5), b: 1, D: 5, lambda: 1, theta: 1 }))).toBe('ERR_INVALID_ARG');
    const r = run('cuda', 'kd_loss', { feat: Float32Array.of(1, 2, 3, 4), b: 2, D: 2, lambda: 1, theta: 1 });
    expectFinite('kd after error', r.out);
  });
});
