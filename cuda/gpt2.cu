// gpt2.cu — the GPT-2 family ops (CUDA twins of native/cpu/gpt2.cpp).
//
//   layernorm      one block per row: two block reductions in double (Σx, then Σ(x − μ)²), then every
//                  thread normalises its strided slice; y = (x − μ)·r·w + b computed in double and rounded
//                  once, exactly the CPU's arithmetic (the reduction order differs: ~1 ulp). y may alias x:
//                  all reads of the row finish at the __syncthreads before the first write.
//   layernorm_bwd  one block per row: Σx, Σ(x − μ)², then Σg and Σg·x̂ (g = w·dy) in double;
//                  dx = r·(g − mean g − x̂·mean(g·x̂)).
//   gelu / gelu_bwd elementwise, grid-stride; tanh form evaluated in double (as the CPU), rounded to f32.
//   add_bias       y[m, n] += b[n], one thread per element.
// defines: RE_CUDA_CHECK, RE_CUDA_LAUNCH, check_arg, wload/wpair/load_any, dispatch_dtype, warp_sum/_d/max,
// align_up, Scratch, act:: (activation.h), and the launcher declarations of every op of ops.def
#include "common.cuh"

namespace re {
namespace cuda {

namespace {

constexpr int kLnBlock = 256;


// Sum of v over the block (blockDim.x a multiple of 32, <= kLnBlock); every thread gets the result.
// `red` is shared scratch of kLnBlock/32 + 1 doubles; safe to call repeatedly.
__device__ __forceinline__ double block_sum_dbl(double v, double* red) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  v = warp_sum_d(v);
  __syncthreads();  // a previous call's readers are done with red[]
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double t = lane < nwarps ? red[lane] : 0.0;
    t = warp_sum_d(t);
    if (lane == 0) red[kLnBlock / 32] = t;
  }
  __syncthreads();
  return red[kLnBlock / 32];
}


template <typename WT>
__global__ void __launch_bounds__(kLnBlock)
    layernorm_kernel(float* y, const float* x, const typename WT::storage* w, const void* b, int bdt, int D,
                     float eps) {
  __shared__ double red[kLnBlock / 32 + 1];
  const size_t row = blockIdx.x;
  const float* xr = x + row * (size_t)D;
  float* yr = y + row * (size_t)D;
  double s = 0;
  for (int i = threadIdx.x; i < D; i += blockDim.x) s += (double)xr[i];
  const double mu = block_sum_dbl(s, red) / D;
  double ss = 0;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const double d = (double)xr[i] - mu;
    ss += d * d;
  }
  const double r = 1.0 / sqrt(block_sum_dbl(ss, red) / D + (double)eps);
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const double bv = b ? (double)load_any(b, bdt, (size_t)i) : 0.0;
    yr[i] = (float)(((double)xr[i] - mu) * r * (double)wload<WT>(w, (size_t)i) + bv);
  }
}

template <typename WT>
__global__ void __launch_bounds__(kLnBlock)
    layernorm_bwd_kernel(float* dx, const float* dy, const float* x, const typename WT::storage* w, int D, float eps,
                         bool accumulate) {
  __shared__ double red[kLnBlock / 32 + 1];
  const size_t row = blockIdx.x;
  const float* xr = x + row * (size_t)D;
  const float* gr = dy + row * (size_t)D;
  float* o = dx + row * (size_t)D;
  double s = 0;
  for (int i = threadIdx.x; i < D; i += blockDim.x) s += (double)xr[i];
  const double mu = block_sum_dbl(s, red) / D;
  double ss = 0;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const double d = (double)xr[i] - mu;
    ss += d * d;
  }
  const double r = 1.0 / sqrt(block_sum_dbl(ss, red) / D + (double)eps);
  double sg = 0, sgx = 0;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const double g = (double)wload<WT>(w, (size_t)i) * (double)gr[i];
    sg += g;
    sgx += g * ((double)xr[i] - mu) * r;
  }
  const double mg = block_sum_dbl(sg, red) / D;
  const double mgx = block_sum_dbl(sgx, red) / D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const double g = (double)wload<WT>(w, (size_t)i) * (double)gr[i];
    const float v = (float)(r * (g - mg - ((double)xr[i] - mu) * r * mgx));
    o[i] = accumulate ? o[i] + v : v;
  }
}

__global__ void gelu_kernel(float* y, const float* x, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] = (float)act::gelu((double)x[i]);
}

__global__ void gelu_bwd_kernel(float* dx, const float* dy, const float* x, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    dx[i] = (float)((double)dy[i] * act::gelu_grad((double)x[i]));
}

template <typename WT>
__global__ void add_bias_kernel(float* y, const typename WT::storage* b, int N, size_t total) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
    y[i] += wload<WT>(b, i % (size_t)N);
}

int ln_block(int D) { return D >= kLnBlock ? kLnBlock : ((D + 31) / 32) * 32; }

}  // namespace

void layernorm_launch(cudaStream_t st, int /*sm_count*/, float* y, const float* x, WeightRef w, WeightRef b, int M, int D, float eps) {
  check_arg(M >= 0 && D >= 0, "layernorm", "negative size");
  check_arg(w.p != nullptr || M == 0 || D == 0, "layernorm", "null weight");
  if (M == 0 || D == 0) return;
  dispatch_dtype(w.dt, [&](auto wt) {
    using WT = decltype(wt);
    layernorm_kernel<WT><<<(unsigned)M, ln_block(D), 0, st>>>(y, x, (const typename WT::storage*)w.p, b.p, (int)b.dt, D,
                                                              eps);
  });
  RE_CUDA_LAUNCH("layernorm");
}

void layernorm_bwd_launch(cudaStream_t st, int /*sm_count*/, float* dx, const float* dy, const float* x, WeightRef w, int M, int D,
                            float eps, bool accumulate) {
  check_arg(M >= 0 && D >= 0, "layernorm_bwd", "negative size");
  check_arg(w.p != nullptr || M == 0 || D == 0, "layernorm_bwd", "null weight");
  if (M == 0 || D == 0) return;
  dispatch_dtype(w.dt, [&](auto wt) {
    using WT = decltype(wt);
    layernorm_bwd_kernel<WT><<<(unsigned)M, ln_block(D), 0, st>>>(dx, dy, x, (const typename WT::storage*)w.p, D, eps,
                                                                  accumulate);
  });
  RE_CUDA_LAUNCH("layernorm_bwd");
}

void gelu_launch(cudaStream_t st, int /*sm_count*/, float* y, const float* x, size_t n) {
  if (n == 0) return;
  gelu_kernel<<<grid_for((size_t)n, 256), 256, 0, st>>>(y, x, (size_t)n);
  RE_CUDA_LAUNCH("gelu");
}

void gelu_bwd_launch(cudaStream_t st, int /*sm_count*/, float* dx, const float* dy, const float* x, size_t n) {
  if (n == 0) return;
  gelu_bwd_kernel<<<grid_for((size_t)n, 256), 256, 0, st>>>(dx, dy, x, (size_t)n);
  RE_CUDA_LAUNCH("gelu_bwd");
}

void add_bias_launch(cudaStream_t st, int /*sm_count*/, float* y, WeightRef b, int M, int N) {
  check_arg(M >= 0 && N >= 0, "add_bias", "negative size");
  check_arg(b.p != nullptr || (size_t)M * N == 0, "add_bias", "null bias");
  const size_t total = (size_t)M * N;
  if (total == 0) return;
  dispatch_dtype(b.dt, [&](auto wt) {
    using WT = decltype(wt);
    add_bias_kernel<WT><<<grid_for(total, 256), 256, 0, st>>>(y, (const typename WT::storage*)b.p, N, total);
  });
  RE_CUDA_LAUNCH("add_bias");
}

}  // namespace cuda
}  // namespace re
