// GPT-2 family ops (backend.h "GPT-2 family ops" + their input gradients), through testing().runOp:
//   layernorm, layernorm_bwd, gelu, gelu_bwd, add_bias.
//
//   (a) always (no GPU): each op on the CPU backend against a float64 reference written here, on several
//       shapes (D = 1, 7, 64, 257, 1600), weight dtypes F32 / F16 / BF16, with and without the bias, in place
//       and not; every backward op also against central finite differences (float64) of a float64 forward
//       (the op's output must be the gradient of Σ dy·forward(x)). guardOk and no NaN/Inf on every call.
//   (b) with a CUDA device: CUDA vs CPU on the same inputs (plus larger shapes).
//
// Error metric: rel = max_i |got_i − ref_i| / max_i |ref_i|. Data, codecs, comparison and runners:
// test/helpers/optest.ts.
// Note (TOOLCHAIN pitfall 10): describe.skipIf still runs the describe body: all work happens inside `it`.
import { describe, it, expect } from 'vitest';
import { native } from '../lib/native.js';
import { testing } from '../lib/testing.js';
import { type Args, DTYPES, Rand, weight, fdGrad, dot, run as runOp, relErr } from './helpers/optest.js';

const addonError = (() => {
  try {
    native();
    return '';
  } catch (e) {
    return (e as Error).message.split('\n')[0]!;
  }
})();
const haveAddon = addonError === '';
if (!haveAddon) console.warn(`[ops_gpt2.test] the native addon is not built (${addonError}): skipped`);
const haveCuda = haveAddon && native().info().cuda.available;

// CPU vs float64: double arithmetic rounded once to f32 (≤ 2^-24 relative per element) → 1e-6 has ~10× margin.
// The LayerNorm backward subtracts two O(|g|) terms, so its rounding is relative to max|g|·r (still ~1e-7).
const TOL_CPU = { layernorm: 1e-6, layernorm_bwd: 1e-6, gelu: 1e-6, gelu_bwd: 1e-6, add_bias: 1e-7 };
// FD of a float64 forward, h = 1e-6·max(1, |x|): truncation ~h², cancellation ~1e-10; the op is f32 (~1e-7).
const TOL_FD = 1e-5;
// CUDA vs CPU: the same double arithmetic; only the order of the row reductions differs (~1 ulp of f32).
const TOL_CUDA = { layernorm: 1e-6, layernorm_bwd: 2e-6, gelu: 1e-7, gelu_bwd: 1e-7, add_bias: 0 };

// ---- float64 references ------------------------------------------------------------------------------
const GELU_K = 0.7978845608028654;
const gelu = (x: number): number => 0.5 * x * (1 + Math.tanh(GELU_K * (x + 0.044715 * x * x * x)));
function geluGrad(x: number): number {
  const t = Math.tanh(GELU_K * (x + 0.044715 * x * x * x));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_K * (1 + 3 * 0.044715 * x * x);
}
function fwdLayernorm(x: ArrayLike<number>, w: Float64Array, b: Float64Array | null, M: number, D: number, eps: number): Float64Array {
  const y = new Float64Array(M * D);
  const e = Math.fround(eps);
  for (let m = 0; m < M; m++) {
    let s = 0;
    for (let i = 0; i < D; i++) s += x[m * D + i]!;
    const mu = s / D;
    let ss = 0;
    for (let i = 0; i < D; i++) ss += (x[m * D + i]! - mu) ** 2;
    const r = 1 / Math.sqrt(ss / D + e);
    for (let i = 0; i < D; i++) y[m * D + i] = (x[m * D + i]! - mu) * r * w[i]! + (b ? b[i]! : 0);
  }
  return y;
}
/** The closed form of backend.h (independent of the FD check below). */
function refLayernormBwd(dy: Float32Array, x: Float32Array, w: Float64Array, dx0: Float32Array | null, M: number, D: number, eps: number): Float64Array {
  const dx = new Float64Array(M * D);
  const e = Math.fround(eps);
  for (let m = 0; m < M; m++) {
    let s = 0;
    for (let i = 0; i < D; i++) s += x[m * D + i]!;
    const mu = s / D;
    let ss = 0;
    for (let i = 0; i < D; i++) ss += (x[m * D + i]! - mu) ** 2;
    const r = 1 / Math.sqrt(ss / D + e);
    let sg = 0, sgx = 0;
    for (let i = 0; i < D; i++) {
      const g = w[i]! * dy[m * D + i]!;
      sg += g;
      sgx += g * (x[m * D + i]! - mu) * r;
    }
    for (let i = 0; i < D; i++) {
      const g = w[i]! * dy[m * D + i]!;
      dx[m * D + i] = (dx0 ? dx0[m * D + i]! : 0) + r * (g - sg / D - (x[m * D + i]! - mu) * r * (sgx / D));
    }
  }
  return dx;
}
// ---- running ---------------------------------------------------------------------------------------
const run = (backend: 'cpu' | 'cuda', op: string, args: Args): Record<string, Float32Array> => runOp(backend, op, args, { finite: true });
const rel = relErr;

interface Case {
  name: string;
  op: keyof typeof TOL_CPU;
  args: Args;
  out: string;
  ref: Float64Array;
  /** For backward ops: the float64 FD gradient of Σ dy·forward. */
  fd?: Float64Array;
  /** Whether the case is small enough for FD. */
}


function lnCases(big: boolean): Case[] {
  const out: Case[] = [];
  const shapes = big ? [[3, 4096], [70, 1600]] : [[1, 1], [3, 7], [5, 64], [2, 257], [2, 1600]];
  let seed = 100;
  for (const [M, D] of shapes as [number, number][])
    for (const dt of DTYPES)
      for (const bias of [true, false]) {
        const r = new Rand(seed++);
        const x = r.uniform(M * D, 2, 0.3); // a mean offset: LayerNorm must remove it
        const w = weight(r, dt, D, 0.5, 1);
        const b = bias ? weight(r, dt, D, 0.3, 0) : null;
        const eps = 1e-5;
        const args: Args = { x, w: w.arg, M, D, eps, dtype: dt };
        if (b) args.b = b.arg;
        const inplace = (seed & 1) === 0;
        if (inplace) args.inplace = 1;
        out.push({ name: `layernorm M=${M} D=${D} ${dt} bias=${bias} inplace=${inplace}`, op: 'layernorm', args, out: 'y', ref: fwdLayernorm(x, w.vals, b?.vals ?? null, M, D, eps) });
        // backward (weights only; the bias has no input gradient)
        const dy = r.uniform(M * D, 1);
        const acc = (seed & 2) === 0;
        const dx0 = acc ? r.uniform(M * D, 1) : null;
        const bargs: Args = { dy, x, w: w.arg, M, D, eps, dtype: dt, accumulate: acc ? 1 : 0 };
        if (dx0) bargs.dx = dx0;
        const c: Case = { name: `layernorm_bwd M=${M} D=${D} ${dt} accumulate=${acc}`, op: 'layernorm_bwd', args: bargs, out: 'dx', ref: refLayernormBwd(dy, x, w.vals, dx0, M, D, eps) };
        if (!big && M * D <= 600) {
          const g = fdGrad((xx) => dot(dy, fwdLayernorm(xx, w.vals, null, M, D, eps)), x);
          if (dx0) for (let i = 0; i < g.length; i++) g[i]! += dx0[i]!;
          c.fd = g;
        }
        out.push(c);
      }
  return out;
}

function eltCases(big: boolean): Case[] {
  const out: Case[] = [];
  const sizes = big ? [1 << 20, 1234567] : [1, 5, 64, 1001];
  let seed = 900;
  for (const n of sizes) {
    const r = new Rand(seed++);
    const x = r.uniform(n, 6); // covers the tails where tanh saturates
    if (n >= 5) {
      x[0] = 0;
      x[1] = -20;
      x[2] = 20;
    }
    const inplace = (seed & 1) === 0;
    out.push({ name: `gelu n=${n} inplace=${inplace}`, op: 'gelu', args: { x, inplace: inplace ? 1 : 0 }, out: 'y', ref: Float64Array.from(x, gelu) });
    const dy = r.uniform(n, 1);
    const ref = new Float64Array(n);
    for (let i = 0; i < n; i++) ref[i] = dy[i]! * geluGrad(x[i]!);
    const c: Case = { name: `gelu_bwd n=${n} inplace=${inplace}`, op: 'gelu_bwd', args: { dy, x, inplace: inplace ? 1 : 0 }, out: 'dx', ref };
    if (!big && n <= 1001) c.fd = fdGrad((xx) => dot(dy, Array.from(xx, gelu)), x);
    out.push(c);
  }
  const biasShapes = big ? [[4096, 1600], [12 * 7, 4800]] : [[1, 1], [3, 7], [12, 64]];
  for (const [M, N] of biasShapes as [number, number][])
    for (const dt of DTYPES) {
      const r = new Rand(seed++);
      const y = r.uniform(M * N, 1);
      const b = weight(r, dt, N, 0.5, 0);
      const ref = new Float64Array(M * N);
      for (let i = 0; i < M * N; i++) ref[i] = Math.fround(y[i]! + b.vals[i % N]!);
      out.push({ name: `add_bias M=${M} N=${N} ${dt}`, op: 'add_bias', args: { y, b: b.arg, M, N, dtype: dt }, out: 'y', ref });
    }
  return out;
}

describe.skipIf(!haveAddon)('GPT-2 ops on the CPU backend vs float64 references', () => {
  it('layernorm and layernorm_bwd (+ finite differences)', () => {
    let worst = 0, worstFd = 0, nfd = 0;
    for (const c of lnCases(false)) {
      const got = run('cpu', c.op, c.args)[c.out]!;
      const e = rel(got, c.ref);
      worst = Math.max(worst, e);
      expect(e, c.name).toBeLessThanOrEqual(TOL_CPU[c.op]);
      if (c.fd) {
        const ef = rel(got, c.fd);
        worstFd = Math.max(worstFd, ef);
        nfd++;
        expect(ef, `${c.name} vs FD`).toBeLessThanOrEqual(TOL_FD);
      }
    }
    console.log(`[ops_gpt2] layernorm(+bwd) CPU: max rel ${worst.toExponential(2)}; FD (${nfd} cases) max rel ${worstFd.toExponential(2)}`);
    expect(nfd).toBeGreaterThan(10);
  });

  it('gelu, gelu_bwd (+ finite differences) and add_bias', () => {
    let worstFd = 0;
    for (const c of eltCases(false)) {
      const got = run('cpu', c.op, c.args)[c.out]!;
      expect(rel(got, c.ref), c.name).toBeLessThanOrEqual(TOL_CPU[c.op]);
      if (c.fd) {
        worstFd = Math.max(worstFd, rel(got, c.fd));
        expect(rel(got, c.fd), `${c.name} vs FD`).toBeLessThanOrEqual(TOL_FD);
      }
    }
    console.log(`[ops_gpt2] gelu_bwd vs FD: max rel ${worstFd.toExponential(2)}`);
  });

  it('LayerNorm removes the mean and scales: a constant row maps to the bias', () => {
    const D = 32;
    const x = new Float32Array(D).fill(3.25);
    const w = new Float32Array(D).fill(2);
    const b = Float32Array.from({ length: D }, (_, i) => i / 10);
    const y = run('cpu', 'layernorm', { x, w, b, M: 1, D, eps: 1e-5 }).y!;
    for (let i = 0; i < D; i++) expect(y[i]).toBeCloseTo(i / 10, 6);
  });

  it('bad arguments are refused with ERR_INVALID_ARG', () => {
    const call = (op: string, args: Args) => () => testing().runOp('cpu', op, args);
    expect(call('layernorm', { x: new Float32Array(4), w: new Float32Array(3), M: 1, D: 4, eps: 1e-5 })).toThrow(/'w' has 3 elements, expected 4/);
    expect(call('layernorm', { x: new Float32Array(4), w: new Float32Array(4), b: new Float32Array(2), M: 1, D: 4, eps: 1e-5 })).toThrow(/'b' has 2 elements/);
    expect(call('add_bias', { y: new Float32Array(6), b: new Float32Array(4), M: 2, N: 3 })).toThrow(/'b' has 4 elements/);
    expect(call('gelu_bwd', { dy: new Float32Array(3), x: new Float32Array(2) })).toThrow(/'x' has 2 elements/);
  });
});

describe.skipIf(!haveCuda)('GPT-2 ops: CUDA vs CPU', () => {
  it('every case (and larger shapes) agrees with the CPU', () => {
    const worst: Record<string, number> = {};
    for (const c of [...lnCases(false), ...lnCases(true), ...eltCases(false), ...eltCases(true)]) {
      const cpu = run('cpu', c.op, c.args)[c.out]!;
      const gpu = run('cuda', c.op, c.args)[c.out]!;
      const e = rel(gpu, cpu);
      worst[c.op] = Math.max(worst[c.op] ?? 0, e);
      expect(e, `${c.name}: CUDA vs CPU`).toBeLessThanOrEqual(TOL_CUDA[c.op]);
    }
    console.log(`[ops_gpt2] CUDA vs CPU max rel: ${JSON.stringify(worst)}`);
  });
});
