// norm.cu — Llama RMSNorm (CUDA twin of native/cpu).
//
//   y[M,D] = x[M,D] / sqrt(mean(x²) + eps) * w[D]      (w in its stored dtype; y may alias x)
//
// One block per row: each thread sums squares over a strided slice, warp shuffles then shared
// memory finish the reduction (a tree, so the f32 sum is more accurate than a serial loop), then
// every thread scales its own slice. In-place is safe: all reads of the row complete at the
// __syncthreads before the first write.
// defines: RE_CUDA_CHECK, RE_CUDA_LAUNCH, check_arg, wload/wpair/load_any, dispatch_dtype, warp_sum/_d/max,
// align_up, Scratch, act:: (activation.h), and the launcher declarations of every op of ops.def
#include "common.cuh"

namespace re {
namespace cuda {

static constexpr int kNormBlock = 256;

template <typename WT>
__global__ void rmsnorm_kernel(float* y, const float* x, const typename WT::storage* w, int D, float eps) {
  __shared__ float partial[kNormBlock / 32];
  __shared__ float s_scale;
  const size_t row = blockIdx.x;
  const float* xr = x + row * (size_t)D;
  float* yr = y + row * (size_t)D;

  float ss = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    float v = xr[i];
    ss = fmaf(v, v, ss);
  }
  ss = warp_sum(ss);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  if (lane == 0) partial[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    float t = lane < nwarps ? partial[lane] : 0.f;
    t = warp_sum(t);
    if (lane == 0) s_scale = 1.0f / sqrtf(t / (float)D + eps);
  }
  __syncthreads();
  const float r = s_scale;
  for (int i = threadIdx.x; i < D; i += blockDim.x) yr[i] = xr[i] * r * wload<WT>(w, (size_t)i);
}

void rmsnorm_launch(cudaStream_t st, int /*sm_count*/, float* y, const float* x, WeightRef w, int M, int D, float eps) {
  check_arg(M >= 0 && D >= 0, "rmsnorm", "negative size");
  check_arg(w.p != nullptr || M == 0 || D == 0, "rmsnorm", "null weight");
  if (M == 0 || D == 0) return;
  // Small rows: fewer threads (a multiple of 32) so no block is mostly idle.
  int block = D >= kNormBlock ? kNormBlock : ((D + 31) / 32) * 32;
  dispatch_dtype(w.dt, [&](auto wt) {
    using WT = decltype(wt);
    rmsnorm_kernel<WT><<<(unsigned)M, block, 0, st>>>(y, x, (const typename WT::storage*)w.p, D, eps);
  });
  RE_CUDA_LAUNCH("rmsnorm");
}

}  // namespace cuda
}  // namespace re
