// rope.cu — rotary position embedding, HF "rotate_half" convention, in place (CUDA twin of native/cpu).
//
//   x: [n_tok, n_head, hd] f32;  pos: [n_tok] int32;  inv_freq: [hd/2] f32
//   for i < hd/2:  θ = pos[t]·inv_freq[i]  (an f32 product, as HF computes it)
//                  x[i]' = x[i]·cosθ − x[i+hd/2]·sinθ,   x[i+hd/2]' = x[i+hd/2]·cosθ + x[i]·sinθ
//
// One thread per rotated pair. sincosf is the accurate libdevice version (this folder is built
// without --use_fast_math), so large positions (θ of thousands of radians) keep full precision.
// defines: RE_CUDA_CHECK, RE_CUDA_LAUNCH, check_arg, wload/wpair/load_any, dispatch_dtype, warp_sum/_d/max,
// align_up, Scratch, act:: (activation.h), and the launcher declarations of every op of ops.def
#include "common.cuh"

namespace re {
namespace cuda {

__global__ void rope_kernel(float* x, const int32_t* pos, const float* inv_freq, int n_tok, int n_head, int hd) {
  const int half = hd / 2;
  const size_t total = (size_t)n_tok * n_head * half;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    const int f = (int)(i % (size_t)half);
    const size_t th = i / (size_t)half;  // t * n_head + h
    const int t = (int)(th / (size_t)n_head);
    const float theta = (float)pos[t] * inv_freq[f];
    float s, c;
    sincosf(theta, &s, &c);
    float* row = x + th * (size_t)hd;
    const float x1 = row[f], x2 = row[f + half];
    row[f] = x1 * c - x2 * s;
    row[f + half] = x2 * c + x1 * s;
  }
}

void rope_launch(cudaStream_t st, int /*sm_count*/, float* x, const int32_t* pos, const float* inv_freq, int n_tok, int n_head,
                  int head_dim) {
  check_arg(n_tok >= 0 && n_head >= 0 && head_dim >= 0, "rope", "negative size");
  check_arg(head_dim % 2 == 0, "rope", "head_dim must be even");
  const size_t total = (size_t)n_tok * n_head * (head_dim / 2);
  if (total == 0) return;
  rope_kernel<<<grid_for(total, 256), 256, 0, st>>>(x, pos, inv_freq, n_tok, n_head, head_dim);
  RE_CUDA_LAUNCH("rope");
}

}  // namespace cuda
}  // namespace re
