// ops_attention — the attention family of native/ops.def (native/cpu/attention.cpp, cuda/attention.cu):
// kv_store (bit-exact) and causal GQA attention over a KV cache with left padding (all-padding rows give zeros,
// continuation after a prefix, odd head dims, a peaked softmax).
//   always: the CPU backend on every ISA level against a float64 reference (guard sentinels, no NaN/Inf);
//   with a CUDA device: CUDA vs CPU on the same inputs, plus GPU-only long contexts (the flash-decoding split).
// Error metric: rel = max_i |got_i − ref_i| / max_i |ref_i| (max-norm relative error; NMSE and ULPs are printed
// alongside on failure). Inputs are uniform in [-1, 1] (scaled per case) from a seeded PRNG named by the case.
// Runners: test/helpers/opsuite.ts (forwardOpTests); data, codecs, comparison: test/helpers/optest.ts.
import { Rand } from './helpers/optest.js';
import { type Case, forwardOpTests } from './helpers/opsuite.js';
import { refAttention } from './helpers/opref.js';
import { TOL_CUDA } from './helpers/tolerances.js';

// CPU vs float64: f64 softmax/accumulation, one f32 rounding of the output. CUDA vs CPU: test/helpers/tolerances.ts.
const TOL_CPU = { attention: 1e-6 };

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

// Long contexts only worth running on a GPU: CUDA vs CPU, no f64 reference.
function gpuOnlyCases(): Case[] {
  const out: Case[] = [];
  out.push(attentionCase([1, 1, 14, 2, 64, 2048, 2000, [0]], false));
  out.push(attentionCase([2, 1, 16, 8, 128, 4096, 4000, [37, 0]], false));
  out.push(attentionCase([2, 120, 14, 2, 64, 128, 0, [0, 17]], false));
  out.push(attentionCase([1, 16, 8, 1, 256, 600, 500, [3]], false));
  // decode shapes that take the flash-decoding split (few rows, long context): 8B-like heads at 4k context;
  // a padded batch whose second row has 10 keys (most parts empty); an all-padding row split into parts
  out.push(attentionCase([1, 1, 32, 8, 128, 4096, 4095, [0]], false));
  out.push(attentionCase([2, 1, 4, 1, 64, 2000, 1999, [0, 1990]], false));
  out.push(attentionCase([1, 1, 4, 2, 64, 600, 599, [600]], false));
  return out;
}

forwardOpTests('attention', { kv_store: kvStoreCases, attention: attentionCases }, gpuOnlyCases);
