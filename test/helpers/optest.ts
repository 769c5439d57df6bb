// optest.ts — the one op-test harness (ggml test-backend-ops style) behind the op-family tests
// test/ops_<family>.test.ts (their shared runners: opsuite.ts), test/optest.test.ts and the other op-level tests:
// seeded data, f16/bf16 codecs, comparison (max-norm relative error, NMSE, ULP), the runOp runner that checks the
// guard sentinels, the float64-reference and CUDA-vs-CPU checks, finite differences.
//
// Guard sentinels: native/optest.cpp surrounds every output with 64 floats of a NaN bit pattern on both sides and
// pre-fills the interior with another (an element the op forgot to write reads as NaN); runOp reports guardOk,
// which run() asserts on every call.
//
// Error metric: rel = max_i |got_i − ref_i| / max_i |ref_i| (max-norm relative error). NMSE = Σ(got − ref)² / Σref²
// and the largest distance in f32 ULPs are printed alongside (OPS_VERBOSE=1 prints every measured error).
import { expect } from 'vitest';
import { native } from '../../lib/native.js';
import { testing } from '../../lib/testing.js';

export type Arg = Float32Array | Int32Array | Uint16Array | number | string;
export type Args = Record<string, Arg>;
export type DT = 'F32' | 'F16' | 'BF16';
export const DTYPES: DT[] = ['F32', 'F16', 'BF16'];

export const VERBOSE = !!process.env.OPS_VERBOSE; // scripts/gpu-check.sh sets it

// ---- seeded data ------------------------------------------------------------------------------------------

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
/** FNV-1a 32 of a case name: every case draws its own data, the same on every run. */
export function seedOf(name: string): number {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}
export class Rand {
  r: () => number;
  /** A case name (hashed) or a numeric seed. */
  constructor(seed: string | number) {
    this.r = mulberry32(typeof seed === 'string' ? seedOf(seed) : seed);
  }
  /** n values uniform in offset ± scale, as f32. */
  uniform(n: number, scale = 1, offset = 0): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = offset + scale * (2 * this.r() - 1);
    return a;
  }
  /** One value uniform in ±scale (as a double). */
  u(scale = 1): number {
    return scale * (2 * this.r() - 1);
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.r() * (hi - lo + 1));
  }
  ints(n: number, lo: number, hi: number): Int32Array {
    const a = new Int32Array(n);
    for (let i = 0; i < n; i++) a[i] = this.int(lo, hi);
    return a;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.r() * xs.length)]!;
  }
}

// ---- f16 / bf16 (exact decode; round-to-nearest-even encode from the f32 bit pattern) ------------------------

const f32b = new Float32Array(1);
const u32b = new Uint32Array(f32b.buffer);
export function f32Bits(v: number): number {
  f32b[0] = v;
  return u32b[0]!;
}
export function bf16Decode(b: number): number {
  u32b[0] = (b & 0xffff) << 16;
  return f32b[0]!;
}
/** Round-to-nearest-even bf16 of an f32 value (finite inputs). */
export function bf16Encode(v: number): number {
  const x = f32Bits(v);
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}
export function f16Decode(b: number): number {
  const s = b & 0x8000 ? -1 : 1, e = (b >>> 10) & 0x1f, m = b & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
/** Round-to-nearest-even f16 of an f32 value (finite inputs; subnormals included; overflow to ±Inf). */
export function f16Encode(v: number): number {
  const x = f32Bits(v);
  const sign = (x >>> 16) & 0x8000;
  const e = ((x >>> 23) & 0xff) - 127 + 15;
  let m = x & 0x7fffff;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    m |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    if (rest > half || (rest === half && r & 1)) r++;
    return sign | r;
  }
  let r = (e << 10) | (m >>> 13);
  const rest = m & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && r & 1)) r++;
  return sign | r;
}

/** A weight in a stored dtype: what runOp gets (f32 array or u16 bits) and its exact values. */
export interface Weight {
  arg: Float32Array | Uint16Array;
  vals: Float64Array;
}
export function encodeWeight(f: ArrayLike<number>, dt: DT): Weight {
  const n = f.length;
  const vals = new Float64Array(n);
  if (dt === 'F32') {
    const a = Float32Array.from(f);
    for (let i = 0; i < n; i++) vals[i] = a[i]!;
    return { arg: a, vals };
  }
  const bits = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    bits[i] = dt === 'F16' ? f16Encode(f[i]!) : bf16Encode(f[i]!);
    vals[i] = dt === 'F16' ? f16Decode(bits[i]!) : bf16Decode(bits[i]!);
  }
  return { arg: bits, vals };
}
/**
 * n uniform weights (offset ± scale) in dtype dt. specials puts exact-conversion corner cases first: 'tiny'
 * subnormals, signed zero, the smallest normal, 1+ulp; 'all' adds the largest finite values (only for ops that do
 * no arithmetic on them: bf16 max overflows a dot product).
 */
export function weight(r: Rand, dt: DT, n: number, scale = 1, offset = 0, specials: 'none' | 'tiny' | 'all' = 'none'): Weight {
  const w = encodeWeight(r.uniform(n, scale, offset), dt);
  if (dt === 'F32' || specials === 'none') return w;
  const bits = w.arg as Uint16Array;
  const tiny = dt === 'F16' ? [0x0001, 0x83ff, 0x0400, 0x8000, 0x3c01] : [0x0001, 0x807f, 0x0080, 0x8000, 0x3f81];
  const big = dt === 'F16' ? [0x7bff, 0xfbff] : [0x7f7f, 0xff7f];
  const sp = specials === 'all' ? [...tiny, ...big] : tiny;
  for (let i = 0; i < sp.length && i < n; i++) {
    bits[i] = sp[i]!;
    w.vals[i] = dt === 'F16' ? f16Decode(bits[i]!) : bf16Decode(bits[i]!);
  }
  return w;
}

// ---- comparison ---------------------------------------------------------------------------------------------

export interface Cmp {
  rel: number; // max-norm relative error
  nmse: number;
  ulp: number; // largest distance in f32 ULPs between got and fround(ref)
  nonFinite: number;
  worst: number; // index of the largest error (or of the first non-finite element), -1 if none
}
/** Distance between two f32 values in units in the last place (0 for +0 / −0). */
export function ulpDiff(a: number, b: number): number {
  const ord = (v: number): number => {
    const x = f32Bits(v);
    return x & 0x80000000 ? -(x & 0x7fffffff) : x;
  };
  return Math.abs(ord(a) - ord(b));
}
export function compare(got: ArrayLike<number>, ref: ArrayLike<number>): Cmp {
  let maxErr = 0, maxRef = 0, se = 0, sr = 0, nonFinite = 0, worst = -1, ulp = 0;
  for (let i = 0; i < ref.length; i++) {
    const g = got[i]!, r = ref[i]!;
    if (!Number.isFinite(g)) {
      nonFinite++;
      if (worst < 0) worst = i;
      continue;
    }
    const e = Math.abs(g - r);
    if (e > maxErr) {
      maxErr = e;
      worst = i;
    }
    maxRef = Math.max(maxRef, Math.abs(r));
    se += e * e;
    sr += r * r;
    if (Number.isFinite(r)) ulp = Math.max(ulp, ulpDiff(g, Math.fround(r)));
  }
  return { rel: maxRef > 0 ? maxErr / maxRef : maxErr, nmse: sr > 0 ? se / sr : se, ulp, nonFinite, worst };
}
/** The max-norm relative error alone. */
export const relErr = (got: ArrayLike<number>, ref: ArrayLike<number>): number => compare(got, ref).rel;

function describeCmp(c: Cmp, got: ArrayLike<number>, ref: ArrayLike<number>): string {
  const w = c.worst;
  return `rel=${c.rel.toExponential(2)} nmse=${c.nmse.toExponential(2)} ulp=${c.ulp} nonFinite=${c.nonFinite}` + (w >= 0 ? ` worst[${w}] got=${got[w]} ref=${ref[w]}` : '');
}
/** No NaN/Inf and rel <= tol (tol 0: bit-exact up to the sign of zero). */
export function expectClose(label: string, got: Float32Array, ref: ArrayLike<number>, tol: number): void {
  expect(got.length, `${label}: length`).toBe(ref.length);
  if (tol === 0) return expectExact(label, got, ref);
  const c = compare(got, ref);
  if (VERBOSE) console.log(`[op] ${label}: ${describeCmp(c, got, ref)} (tol ${tol})`);
  expect(c.nonFinite, `${label}: NaN/Inf (${describeCmp(c, got, ref)})`).toBe(0);
  expect(c.rel, `${label}: ${describeCmp(c, got, ref)} > ${tol}`).toBeLessThanOrEqual(tol);
}
/** got[i] == fround(ref[i]) for every i; signedZero: +0 and −0 differ too (ops that only move data). */
export function expectExact(label: string, got: Float32Array, ref: ArrayLike<number>, opts: { signedZero?: boolean } = {}): void {
  expect(got.length, `${label}: length`).toBe(ref.length);
  for (let i = 0; i < ref.length; i++) {
    const want = Math.fround(ref[i]!);
    if (Object.is(got[i], want) || (!opts.signedZero && got[i] === 0 && want === 0)) continue;
    expect.fail(`${label}: element ${i} is ${got[i]}, expected ${want} (${opts.signedZero ? 'bit-exact op' : 'exact'})`);
  }
}
export function expectFinite(label: string, got: Float32Array): void {
  for (let i = 0; i < got.length; i++) if (!Number.isFinite(got[i]!)) expect.fail(`${label}: element ${i} is ${got[i]}`);
}

// ---- runners ------------------------------------------------------------------------------------------------

/** The CUDA backend is built and a device is present (the CUDA-vs-CPU tables run only then). */
export const cudaAvailable = (): boolean => native().info().cuda.available;

/**
 * One op on a backend ('cpu', 'cpu:<isa>', 'cuda'): asserts the guard sentinels are intact; returns the outputs.
 * finite: also fail on any NaN/Inf output element.
 */
export function run(backend: string, op: string, args: Args, opts: { finite?: boolean } = {}): Record<string, Float32Array> {
  const res = testing().runOp(backend, op, args);
  expect(res.guardOk, `${backend} ${op}: guard region overwritten (out-of-bounds write)`).toBe(true);
  const out: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(res)) {
    if (!(v instanceof Float32Array)) continue;
    if (opts.finite) expectFinite(`${op} on ${backend}: output ${k}`, v);
    out[k] = v;
  }
  return out;
}

/** runOp knows `op`: an empty call is rejected as a missing argument (ERR_INVALID_ARG), not as an unknown op. */
export function expectKnownOp(op: string): void {
  let err: { code?: string; message?: string } = {};
  try {
    testing().runOp('cpu', op, {});
  } catch (e) {
    err = e as typeof err;
  }
  expect(err.code, op).toBe('ERR_INVALID_ARG');
  expect(err.message, op).not.toMatch(/unknown op/);
}

/** The error code a call throws (undefined when it does not throw). */
export function errCode(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? 'NO_CODE';
  }
  return undefined;
}

/** An op call with how to judge it: tol per output (max-norm relative) or exact. */
export interface Judged {
  op: string;
  args: Args;
  exact?: boolean; // bit-exact (data movement)
  signedZero?: boolean; // with exact: the sign of zero counts too
  cpuFinite?: boolean; // CUDA-vs-CPU: the CPU's outputs must be finite too
}
/** The float64 reference check: run on `backend`, compare each output of ref with tol (or exactly). */
export function expectRef(label: string, backend: string, b: Judged, ref: Record<string, ArrayLike<number>>, tol: number): void {
  const res = run(backend, b.op, b.args);
  for (const [k, r] of Object.entries(ref)) {
    const got = res[k];
    expect(got, `output ${k}`).toBeInstanceOf(Float32Array);
    if (b.exact) expectExact(`${label} ${k}`, got!, r, { signedZero: b.signedZero });
    else expectClose(`${label} ${k}`, got!, r, tol);
  }
}
/** The CUDA-vs-CPU check: the same call on both backends, the same outputs, each within tol of the CPU's (or exact). */
export function expectCudaMatchesCpu(label: string, b: Judged, tol: number): void {
  const cpu = run('cpu', b.op, b.args, { finite: b.cpuFinite });
  const gpu = run('cuda', b.op, b.args);
  const names = Object.keys(cpu);
  expect(Object.keys(gpu).sort()).toEqual([...names].sort());
  for (const k of names) {
    if (b.exact) expectExact(`cuda ${label} ${k}`, gpu[k]!, cpu[k]!, { signedZero: b.signedZero });
    else expectClose(`cuda ${label} ${k}`, gpu[k]!, cpu[k]!, tol);
  }
}

// ---- finite differences ---------------------------------------------------------------------------------------

/** Central differences of a float64 scalar function, h = 1e-6·max(1, |x|). */
export function fdGrad(f: (x: Float64Array) => number, x0: ArrayLike<number>): Float64Array {
  const x = Float64Array.from(x0 as ArrayLike<number>);
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const h = 1e-6 * Math.max(1, Math.abs(x[i]!));
    const v = x[i]!;
    x[i] = v + h;
    const fp = f(x);
    x[i] = v - h;
    const fm = f(x);
    x[i] = v;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}
