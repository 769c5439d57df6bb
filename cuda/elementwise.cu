// elementwise.cu — swiglu, add, embedding lookup, row gather (CUDA twins of native/cpu).
//
// All four are bandwidth-bound one-pass kernels: grid-stride loops, float4 when every pointer is
// 16-byte aligned and the length allows it, a scalar tail otherwise. Aliasing y == input is safe
// because each element is read before it is written by the same thread.
//   n: elements; D: row width; ids/idx: int32 row indices (validated by the caller).
// defines: RE_CUDA_CHECK, RE_CUDA_LAUNCH, check_arg, wload/wpair/load_any, dispatch_dtype, warp_sum/_d/max,
// align_up, Scratch, act:: (activation.h), and the launcher declarations of every op of ops.def
#include "common.cuh"

namespace re {
namespace cuda {

// silu(g) * u with silu(g) = g / (1 + exp(-g)); expf (not __expf) so it tracks the CPU within ulps.
__device__ __forceinline__ float swiglu1(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// y[n] = silu(gate[n]) * up[n]
__global__ void swiglu_kernel(float* y, const float* gate, const float* up, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] = swiglu1(gate[i], up[i]);
}
__global__ void swiglu_kernel4(float4* y, const float4* gate, const float4* up, size_t n4) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
    float4 g = gate[i], u = up[i], r;
    r.x = swiglu1(g.x, u.x); r.y = swiglu1(g.y, u.y); r.z = swiglu1(g.z, u.z); r.w = swiglu1(g.w, u.w);
    y[i] = r;
  }
}

// y[n] = a[n] + b[n]
__global__ void add_kernel(float* y, const float* a, const float* b, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] = a[i] + b[i];
}
__global__ void add_kernel4(float4* y, const float4* a, const float4* b, size_t n4) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
    float4 p = a[i], q = b[i];
    y[i] = make_float4(p.x + q.x, p.y + q.y, p.z + q.z, p.w + q.w);
  }
}

// y[n, D] = table[ids[n], :]   (table in its stored dtype)
template <typename WT>
__global__ void embedding_kernel(float* y, const int32_t* ids, const typename WT::storage* table, int n, int D) {
  size_t total = (size_t)n * D;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / (size_t)D, c = i - r * (size_t)D;
    y[i] = wload<WT>(table, (size_t)ids[r] * D + c);
  }
}

// y[n, D] = x[idx[n], :]
__global__ void gather_rows_kernel(float* y, const float* x, const int32_t* idx, int n, int D) {
  size_t total = (size_t)n * D;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / (size_t)D, c = i - r * (size_t)D;
    y[i] = x[(size_t)idx[r] * D + c];
  }
}
// D % 4 == 0 and aligned: one float4 per thread-iteration.
__global__ void gather_rows_kernel4(float4* y, const float4* x, const int32_t* idx, int n, int D4) {
  size_t total = (size_t)n * D4;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / (size_t)D4, c = i - r * (size_t)D4;
    y[i] = x[(size_t)idx[r] * D4 + c];
  }
}

// ---- launchers -------------------------------------------------------------------------------

static constexpr int kBlock = 256;

void swiglu_launch(cudaStream_t st, int /*sm_count*/, float* y, const float* gate, const float* up, size_t n) {
  if (n == 0) return;
  if (aligned16(y) && aligned16(gate) && aligned16(up)) {
    size_t n4 = (size_t)n / 4;
    if (n4) swiglu_kernel4<<<grid_for(n4, kBlock), kBlock, 0, st>>>((float4*)y, (const float4*)gate, (const float4*)up, n4);
    size_t done = n4 * 4;
    if (done < (size_t)n) swiglu_kernel<<<1, 32, 0, st>>>(y + done, gate + done, up + done, (size_t)n - done);
  } else {
    swiglu_kernel<<<grid_for(n, kBlock), kBlock, 0, st>>>(y, gate, up, (size_t)n);
  }
  RE_CUDA_LAUNCH("swiglu");
}

void add_launch(cudaStream_t st, int /*sm_count*/, float* y, const float* a, const float* b, size_t n) {
  if (n == 0) return;
  if (aligned16(y) && aligned16(a) && aligned16(b)) {
    size_t n4 = (size_t)n / 4;
    if (n4) add_kernel4<<<grid_for(n4, kBlock), kBlock, 0, st>>>((float4*)y, (const float4*)a, (const float4*)b, n4);
    size_t done = n4 * 4;
    if (done < (size_t)n) add_kernel<<<1, 32, 0, st>>>(y + done, a + done, b + done, (size_t)n - done);
  } else {
    add_kernel<<<grid_for(n, kBlock), kBlock, 0, st>>>(y, a, b, (size_t)n);
  }
  RE_CUDA_LAUNCH("add");
}

void embedding_launch(cudaStream_t st, int /*sm_count*/, float* y, const int32_t* ids, WeightRef table, int n, int D) {
  check_arg(n >= 0 && D >= 0, "embedding", "negative size");
  check_arg(table.p != nullptr || (size_t)n * D == 0, "embedding", "null table");
  if ((size_t)n * D == 0) return;
  unsigned g = grid_for((size_t)n * D, kBlock);
  dispatch_dtype(table.dt, [&](auto wt) {
    using WT = decltype(wt);
    embedding_kernel<WT><<<g, kBlock, 0, st>>>(y, ids, (const typename WT::storage*)table.p, n, D);
  });
  RE_CUDA_LAUNCH("embedding");
}

void gather_rows_launch(cudaStream_t st, int /*sm_count*/, float* y, const float* x, const int32_t* idx, int n, int D) {
  check_arg(n >= 0 && D >= 0, "gather_rows", "negative size");
  if ((size_t)n * D == 0) return;
  if (D % 4 == 0 && aligned16(y) && aligned16(x)) {
    int D4 = D / 4;
    gather_rows_kernel4<<<grid_for((size_t)n * D4, kBlock), kBlock, 0, st>>>((float4*)y, (const float4*)x, idx, n, D4);
  } else {
    gather_rows_kernel<<<grid_for((size_t)n * D, kBlock), kBlock, 0, st>>>(y, x, idx, n, D);
  }
  RE_CUDA_LAUNCH("gather_rows");
}

}  // namespace cuda
}  // namespace re
