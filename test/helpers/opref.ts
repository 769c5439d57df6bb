// opref.ts — the float64 reference pieces that more than one op family's test file uses (test/ops_<family>.test.ts):
// the forward RMSNorm, RoPE and attention (the references of norm / rope / attention, and the forwards that
// backward's finite differences differentiate), the attention scores, RoPE's inverse frequencies and angle,
// sigmoid, and the f32 → f64 copy.

export function f64(a: ArrayLike<number>): Float64Array {
  return Float64Array.from(a as ArrayLike<number>);
}
export function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

/** y[M,D] = x / sqrt(mean(x²) + eps) · w, in float64 (eps as the op sees it: an f32). */
export function refRmsnorm(x: ArrayLike<number>, w: Float64Array, M: number, D: number, eps: number): Float64Array {
  const y = new Float64Array(M * D);
  for (let m = 0; m < M; m++) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[m * D + i]! ** 2;
    const r = 1 / Math.sqrt(ss / D + Math.fround(eps));
    for (let i = 0; i < D; i++) y[m * D + i] = x[m * D + i]! * r * w[i]!;
  }
  return y;
}

/** inv_freq[i] = 1 / theta^(2i / hd), i < hd/2 (no llama3 scaling). */
export function invFreq(hd: number, theta = 10000): Float32Array {
  const a = new Float32Array(hd / 2);
  for (let i = 0; i < hd / 2; i++) a[i] = 1 / theta ** ((2 * i) / hd);
  return a;
}
export function ropeAngle(pos: number, inv: number): number {
  return Math.fround(pos * inv); // HF: the op's angle is an f32 product
}
/** HF rotate_half RoPE of x[T, H, hd] in float64 (angles as the op forms them). */
export function refRope(x: ArrayLike<number>, pos: Int32Array, inv: Float32Array, T: number, H: number, hd: number): Float64Array {
  const y = f64(x);
  const half = hd / 2;
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const o = (t * H + h) * hd;
      for (let i = 0; i < half; i++) {
        const th = ropeAngle(pos[t]!, inv[i]!);
        const c = Math.cos(th), s = Math.sin(th);
        const x1 = x[o + i]!, x2 = x[o + i + half]!;
        y[o + i] = x1 * c - x2 * s;
        y[o + i + half] = x2 * c + x1 * s;
      }
    }
  return y;
}

/** Scaled scores q[qo..]·k_j·scale for cache rows j = lo..i (row j's key at kc[base + j·hd]), and their max. */
export function attnScores(q: ArrayLike<number>, qo: number, kc: ArrayLike<number>, base: number, lo: number, i: number, hd: number, scale: number): { sc: number[]; mx: number } {
  const sc: number[] = [];
  let mx = -Infinity;
  for (let j = lo; j <= i; j++) {
    let d = 0;
    for (let e = 0; e < hd; e++) d += q[qo + e]! * kc[base + j * hd + e]!;
    d *= scale;
    sc.push(d);
    mx = Math.max(mx, d);
  }
  return { sc, mx };
}
/**
 * Causal GQA attention over a KV cache with left padding, in float64 (backend.h's attention):
 * q, out [B, Tn, Hq, hd]; kc, vc [B, Hkv, S, hd]; query t is cache row P + t; a padding row gives zeros.
 */
export function refAttention(q: ArrayLike<number>, kc: ArrayLike<number>, vc: ArrayLike<number>, pad: Int32Array, B: number, Tn: number, Hq: number, Hkv: number, hd: number, S: number, P: number, scale: number): Float64Array {
  const out = new Float64Array(B * Tn * Hq * hd);
  const group = Hq / Hkv;
  for (let b = 0; b < B; b++)
    for (let t = 0; t < Tn; t++)
      for (let h = 0; h < Hq; h++) {
        const i = P + t, lo = Math.max(0, pad[b]!);
        const qo = ((b * Tn + t) * Hq + h) * hd;
        if (lo > i) continue; // padding row: zeros
        const g = Math.floor(h / group);
        const base = (b * Hkv + g) * S * hd;
        const { sc, mx } = attnScores(q, qo, kc, base, lo, i, hd, scale);
        let den = 0;
        for (let j = lo; j <= i; j++) {
          const p = Math.exp(sc[j - lo]! - mx);
          den += p;
          for (let e = 0; e < hd; e++) out[qo + e] += p * vc[base + j * hd + e]!;
        }
        for (let e = 0; e < hd; e++) out[qo + e] /= den;
      }
  return out;
}
