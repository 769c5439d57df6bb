// ops_norm — the norm family of native/ops.def (native/cpu/norm.cpp, cuda/norm.cu): rmsnorm (Llama RMSNorm),
// in place and not, D from 33 to 4097, eps 1e-5 / 1e-6, weights in F32 / F16 / BF16.
//   always: the CPU backend on every ISA level against a float64 reference (guard sentinels, no NaN/Inf);
//   with a CUDA device: CUDA vs CPU on the same inputs, plus a GPU-only 300×4096 BF16 case.
// Error metric: rel = max_i |got_i − ref_i| / max_i |ref_i| (max-norm relative error; NMSE and ULPs are printed
// alongside on failure). Inputs are uniform in [-1, 1] (scaled per case) from a seeded PRNG named by the case.
// Runners: test/helpers/opsuite.ts (forwardOpTests); data, codecs, comparison: test/helpers/optest.ts.
import { DTYPES, Rand, weight } from './helpers/optest.js';
import { type Case, forwardOpTests } from './helpers/opsuite.js';
import { refRmsnorm } from './helpers/opref.js';
import { TOL_CUDA } from './helpers/tolerances.js';

// CPU vs float64: two f32 roundings per element (~10x margin). CUDA vs CPU: test/helpers/tolerances.ts.
const TOL_CPU = { rmsnorm: 1e-6 };

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

// Shapes only worth running on a GPU: CUDA vs CPU, no f64 reference.
function gpuOnlyCases(): Case[] {
  const out: Case[] = [];
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

forwardOpTests('norm', { rmsnorm: rmsnormCases }, gpuOnlyCases);
