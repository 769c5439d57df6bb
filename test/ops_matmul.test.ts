// ops_matmul — the matmul family of native/ops.def (native/cpu/matmul.cpp, cuda/matmul.cu): linear,
// y = x·Wᵀ (+ bias) (+= y), over GEMV and GEMM shapes off every multiple of 8/16/32, the packed GEMM's wide-output
// and multi-step-K paths, weights in F32 / F16 / BF16 (with subnormals and signed zeros), large activations.
//   always: the CPU backend on every ISA level against a float64 reference (guard sentinels, no NaN/Inf);
//   with a CUDA device: CUDA vs CPU on the same inputs, plus GPU-only shapes (tensor-core tiles, long K).
// Error metric: rel = max_i |got_i − ref_i| / max_i |ref_i| (max-norm relative error; NMSE and ULPs are printed
// alongside on failure). Inputs are uniform in [-1, 1] (scaled per case) from a seeded PRNG named by the case.
// Runners: test/helpers/opsuite.ts (forwardOpTests); data, codecs, comparison: test/helpers/optest.ts.
import { type Args, type DT, DTYPES, Rand, weight } from './helpers/optest.js';
import { type Case, forwardOpTests } from './helpers/opsuite.js';
import { TOL_CUDA } from './helpers/tolerances.js';

// CPU vs float64: f32 dot products of K <= 300: rounding ~K·2⁻²⁴ of the largest partial sum, << 1e-5 of max|y|
// (~10x margin). CUDA vs CPU: test/helpers/tolerances.ts (parity.test.ts derives its logit bound from it).
const TOL_CPU = { linear: 1e-5 };

function refLinear(x: Float32Array, W: Float64Array, bias: Float64Array | null, y0: Float32Array | null, M: number, N: number, K: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * W[n * K + k];
      if (bias) s += bias[n];
      if (y0) s += y0[m * N + n];
      y[m * N + n] = s;
    }
  return y;
}

function linearCase(M: number, N: number, K: number, dt: DT, bias: boolean, acc: boolean, xScale = 1): Case {
  const name = `linear ${dt} M=${M} N=${N} K=${K}${bias ? ' +bias' : ''}${acc ? ' accumulate' : ''}${xScale !== 1 ? ` |x|~${xScale}` : ''}`;
  return {
    name,
    build: () => {
      const r = new Rand(name);
      const x = r.uniform(M * K, xScale);
      const W = weight(r, dt, N * K, 1, 0, 'tiny');
      const b = bias ? weight(r, dt, N, 0.5) : null;
      const y0 = acc ? r.uniform(M * N) : null;
      const args: Args = { M, N, K, dtype: dt, x, W: W.arg, accumulate: acc ? 1 : 0 };
      if (b) args.bias = b.arg;
      if (y0) args.y = y0;
      return {
        op: 'linear',
        args,
        ref: () => ({ y: refLinear(x, W.vals, b ? b.vals : null, y0, M, N, K) }),
        tolCpu: TOL_CPU.linear,
        tolCuda: dt === 'F32' ? TOL_CUDA.linear_F32 : TOL_CUDA.linear_16,
      };
    },
  };
}

function linearCases(): Case[] {
  // M: GEMV sizes (1..8) and GEMM sizes; N, K include values off every multiple of 8/16/32.
  const shapes: [number, number, number][] = [
    [1, 37, 53], [1, 64, 256], [2, 33, 40], [3, 64, 96], [4, 129, 200], [5, 17, 24], [8, 70, 64],
    [9, 31, 45], [16, 48, 64], [17, 100, 75], [33, 65, 130], [64, 130, 257], [70, 64, 128], [100, 96, 192],
    // the packed GEMM's paths: wide outputs (> 256 columns: operands packed in a shared pass) and K over
    // several 256-deep steps, rows over several 96-row tiles
    [200, 300, 70], [150, 700, 600],
  ];
  const out: Case[] = [];
  let i = 0;
  for (const dt of DTYPES)
    for (const [M, N, K] of shapes) {
      out.push(linearCase(M, N, K, dt, i % 2 === 0, i % 3 === 1));
      i++;
    }
  // large activations: an f16 activation path would overflow (> 65504); ours must not
  out.push(linearCase(24, 40, 64, 'F16', false, false, 1e5));
  out.push(linearCase(2, 40, 64, 'F16', true, false, 1e5));
  return out;
}

// Shapes only worth running on a GPU (large grids, many tiles): CUDA vs CPU, no f64 reference.
function gpuOnlyCases(): Case[] {
  const out: Case[] = [];
  for (const dt of DTYPES) {
    out.push(linearCase(1, 4096, 1024, dt, true, false)); // decode GEMV, vector loads
    out.push(linearCase(4, 2000, 896, dt, false, true));
    out.push(linearCase(3, 1000, 1001, dt, true, false)); // scalar GEMV path
    out.push(linearCase(128, 512, 896, dt, true, false)); // 32x32 tensor-core tiles (few blocks)
    out.push(linearCase(512, 1536, 512, dt, false, true)); // 64x64 tiles (>= one block per SM)
    out.push(linearCase(200, 896, 4864, dt, true, false)); // Qwen2-0.5B down_proj shape
    out.push(linearCase(77, 150, 333, dt, true, true)); // odd K: scalar tile loads
  }
  return out;
}

forwardOpTests('matmul', { linear: linearCases }, gpuOnlyCases);
