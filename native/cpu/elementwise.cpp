// elementwise.cpp — CPU reference for the elementwise and row-copy ops (twin: cuda/elementwise.cu): embedding
// lookup, SwiGLU (the ISA level's kernel), residual add, row gather. Element counts are size_t.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/cpu_backend.h"

namespace re {

// y[n,D] = table[ids[n], :]
void CpuBackend::embedding(float* y, const int32_t* ids, WeightRef table, int n, int D) {
  for (int i = 0; i < n; ++i) weight_row_to_f32(y + (size_t)i * D, table, (size_t)ids[i] * D, D);
}

// y = silu(g) * u,  silu(g) = g / (1 + e^-g)
void CpuBackend::swiglu(float* y, const float* gate, const float* up, size_t n) {
  const size_t chunk = 16384;
  pool_.parallel_for(chunk_count(n, chunk), [&](int c) {
    const size_t i0 = (size_t)c * chunk;
    k_->swiglu(y + i0, gate + i0, up + i0, std::min(chunk, n - i0));
  }, (double)n * 30);
}

void CpuBackend::add(float* y, const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void CpuBackend::gather_rows(float* y, const float* x, const int32_t* idx, int n, int D) {
  for (int i = 0; i < n; ++i) std::memcpy(y + (size_t)i * D, x + (size_t)idx[i] * D, (size_t)D * 4);
}

}  // namespace re
