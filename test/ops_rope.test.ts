// ops_rope — the rope family of native/ops.def (native/cpu/rope.cpp, cuda/rope.cu): rope, the in-place HF
// rotate_half rotary embedding, head dims 2 to 128, positions up to 32767.
//   always: the CPU backend on every ISA level against a float64 reference (guard sentinels, no NaN/Inf);
//   with a CUDA device: CUDA vs CPU on the same inputs.
// Error metric: rel = max_i |got_i − ref_i| / max_i |ref_i| (max-norm relative error; NMSE and ULPs are printed
// alongside on failure). Inputs are uniform in [-1, 1] (scaled per case) from a seeded PRNG named by the case.
// Runners: test/helpers/opsuite.ts (forwardOpTests); data, codecs, comparison: test/helpers/optest.ts.
import { Rand } from './helpers/optest.js';
import { type Case, forwardOpTests } from './helpers/opsuite.js';
import { invFreq, refRope } from './helpers/opref.js';
import { TOL_CUDA } from './helpers/tolerances.js';

// CPU vs float64: f32 product for θ (same in the reference), cos/sin rounded to f32, 2 products + 1 sum.
// CUDA vs CPU: test/helpers/tolerances.ts.
const TOL_CPU = { rope: 2e-6 };

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

forwardOpTests('rope', { rope: ropeCases });
