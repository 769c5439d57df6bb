// norm.cpp — CPU reference for RMSNorm (twin: cuda/norm.cu). Reductions in double; the row loop is the ISA
// level's kernel (cpu/kernels.inc). Its input gradient is in backward.cpp, LayerNorm in gpt2.cpp, as on the CUDA side.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/cpu_backend.h"

namespace re {

// y[M,D] = x / sqrt(mean(x²) + eps) * w
void CpuBackend::rmsnorm(float* y, const float* x, WeightRef w, int M, int D, float eps) {
  std::vector<float> wf(D);
  weight_row_to_f32(wf.data(), w, 0, D);
  const int chunk = 16;
  pool_.parallel_for((M + chunk - 1) / chunk, [&](int c) {
    for (int m = c * chunk; m < std::min(M, (c + 1) * chunk); ++m)
      k_->rmsnorm_row(y + (size_t)m * D, x + (size_t)m * D, wf.data(), D, eps);
  }, (double)M * D * 4);
}

}  // namespace re
