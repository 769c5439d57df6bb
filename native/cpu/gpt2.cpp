// gpt2.cpp — CPU reference for the GPT-2 family ops of backend.h: LayerNorm with bias (and its input
// gradient), GELU in the tanh form (HF gelu_new) and its gradient, and the row bias add.
// Reductions and transcendental functions run in double and are rounded to f32 once per element; the
// CUDA twins (cuda/gpt2.cu) do the same arithmetic.
#include <algorithm>
#include <cmath>
#include <vector>

#include "activation.h"
#include "cpu/cpu_backend.h"

namespace re {


void CpuBackend::layernorm(float* y, const float* x, WeightRef w, WeightRef b, int M, int D, float eps) {
  std::vector<float> wf(D), bf(D, 0.0f);
  weight_row_to_f32(wf.data(), w, 0, D);
  if (b.p) weight_row_to_f32(bf.data(), b, 0, D);
  const int chunk = 16;
  pool_.parallel_for((M + chunk - 1) / chunk, [&](int c) {
    for (int m = c * chunk; m < std::min(M, (c + 1) * chunk); ++m) {
      const float* xr = x + (size_t)m * D;
      float* yr = y + (size_t)m * D;
      double s = 0;
      for (int i = 0; i < D; ++i) s += xr[i];
      const double mu = s / D;
      double ss = 0;
      for (int i = 0; i < D; ++i) {
        const double d = (double)xr[i] - mu;
        ss += d * d;
      }
      const double r = 1.0 / std::sqrt(ss / D + (double)eps);
      for (int i = 0; i < D; ++i) yr[i] = (float)(((double)xr[i] - mu) * r * (double)wf[i] + (double)bf[i]);
    }
  }, (double)M * D * 6);
}

void CpuBackend::layernorm_bwd(float* dx, const float* dy, const float* x, WeightRef w, int M, int D, float eps,
                               bool accumulate) {
  std::vector<float> wf(D);
  weight_row_to_f32(wf.data(), w, 0, D);
  pool_.parallel_for(M, [&](int m) {
    const float* xr = x + (size_t)m * D;
    const float* gr = dy + (size_t)m * D;
    float* o = dx + (size_t)m * D;
    double s = 0;
    for (int i = 0; i < D; ++i) s += xr[i];
    const double mu = s / D;
    double ss = 0;
    for (int i = 0; i < D; ++i) {
      const double d = (double)xr[i] - mu;
      ss += d * d;
    }
    const double r = 1.0 / std::sqrt(ss / D + (double)eps);
    double sg = 0, sgx = 0;
    for (int i = 0; i < D; ++i) {
      const double g = (double)wf[i] * gr[i];
      sg += g;
      sgx += g * ((double)xr[i] - mu) * r;
    }
    const double mg = sg / D, mgx = sgx / D;
    for (int i = 0; i < D; ++i) {
      const double g = (double)wf[i] * gr[i];
      const float v = (float)(r * (g - mg - ((double)xr[i] - mu) * r * mgx));
      o[i] = accumulate ? o[i] + v : v;
    }
  }, (double)M * D * 12);
}

void CpuBackend::gelu(float* y, const float* x, size_t n) {
  const size_t chunk = 4096;
  pool_.parallel_for(chunk_count(n, chunk), [&](int c) {
    const size_t i1 = std::min(n, (size_t)(c + 1) * chunk);
    for (size_t i = (size_t)c * chunk; i < i1; ++i) y[i] = (float)act::gelu((double)x[i]);
  }, (double)n * 30);
}

void CpuBackend::gelu_bwd(float* dx, const float* dy, const float* x, size_t n) {
  const size_t chunk = 4096;
  pool_.parallel_for(chunk_count(n, chunk), [&](int c) {
    const size_t i1 = std::min(n, (size_t)(c + 1) * chunk);
    for (size_t i = (size_t)c * chunk; i < i1; ++i) dx[i] = (float)((double)dy[i] * act::gelu_grad((double)x[i]));
  }, (double)n * 40);
}

void CpuBackend::add_bias(float* y, WeightRef b, int M, int N) {
  std::vector<float> bf(N);
  weight_row_to_f32(bf.data(), b, 0, N);
  for (int m = 0; m < M; ++m) {
    float* yr = y + (size_t)m * N;
    for (int n = 0; n < N; ++n) yr[n] += bf[n];
  }
}

}  // namespace re
