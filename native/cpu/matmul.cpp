// matmul.cpp — CPU linear: y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N]), W in F32/F16/BF16.
//
// Work is split into (64 rows of x) × (64 rows of W) output tiles across the thread pool. Each tile
// walks K in chunks of 512 so the x and W panels stay in L2; 16-bit weights are widened to f32 once
// per panel. The inner kernel computes 2×4 dot products at a time with 8-wide float vectors (GCC
// vector extensions), compiled twice (AVX2+FMA and baseline x86-64) and picked at load time.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/cpu_backend.h"

namespace re {

namespace {

typedef float v8f __attribute__((vector_size(32)));
constexpr int MB = 64, NB = 64, KC = 512;

template <int MR, int NR>
__attribute__((always_inline)) inline void micro(const float* x, size_t ldx, const float* w, size_t ldw, int L,
                                                 float* t, int ldt) {
  v8f acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = v8f{0, 0, 0, 0, 0, 0, 0, 0};
  int k = 0;
  for (; k + 8 <= L; k += 8) {
    v8f xv[MR], wv[NR];
    for (int i = 0; i < MR; ++i) std::memcpy(&xv[i], x + i * ldx + k, 32);
    for (int j = 0; j < NR; ++j) std::memcpy(&wv[j], w + j * ldw + k, 32);
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] += xv[i] * wv[j];
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      v8f a = acc[i][j];
      float s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
      for (int kk = k; kk < L; ++kk) s += x[i * ldx + kk] * w[j * ldw + kk];
      t[i * ldt + j] += s;
    }
}

// tile[i*ldt + j] += Σ_k x[i*ldx + k] · w[j*ldw + k]   for i < mb, j < nb, k < L
__attribute__((target_clones("arch=haswell", "default"))) void block_dots(const float* x, size_t ldx, int mb,
                                                                         const float* w, size_t ldw, int nb,
                                                                         int L, float* tile, int ldt) {
  int i = 0;
  for (; i + 2 <= mb; i += 2) {
    int j = 0;
    for (; j + 4 <= nb; j += 4) micro<2, 4>(x + i * ldx, ldx, w + j * ldw, ldw, L, tile + i * ldt + j, ldt);
    for (; j < nb; ++j) micro<2, 1>(x + i * ldx, ldx, w + j * ldw, ldw, L, tile + i * ldt + j, ldt);
  }
  for (; i < mb; ++i) {
    int j = 0;
    for (; j + 4 <= nb; j += 4) micro<1, 4>(x + i * ldx, ldx, w + j * ldw, ldw, L, tile + i * ldt + j, ldt);
    for (; j < nb; ++j) micro<1, 1>(x + i * ldx, ldx, w + j * ldw, ldw, L, tile + i * ldt + j, ldt);
  }
}

}  // namespace

void CpuBackend::linear(float* y, const float* x, WeightRef W, WeightRef bias, int M, int N, int K, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const int mt = (M + MB - 1) / MB, nt = (N + NB - 1) / NB;
  pool_.parallel_for(mt * nt, [&](int task) {
    const int m0 = (task / nt) * MB, n0 = (task % nt) * NB;
    const int mb = std::min(MB, M - m0), nb = std::min(NB, N - n0);
    float tile[MB * NB];
    std::fill(tile, tile + mb * NB, 0.0f);
    thread_local std::vector<float> panel;
    for (int k0 = 0; k0 < K; k0 += KC) {
      const int kl = std::min(KC, K - k0);
      const float* wp;
      size_t ldw;
      if (W.dt == DType::F32) {
        wp = static_cast<const float*>(W.p) + (size_t)n0 * K + k0;
        ldw = (size_t)K;
      } else {
        panel.resize((size_t)NB * KC);
        for (int j = 0; j < nb; ++j) weight_row_to_f32(panel.data() + (size_t)j * KC, W, (size_t)(n0 + j) * K + k0, kl);
        wp = panel.data();
        ldw = KC;
      }
      block_dots(x + (size_t)m0 * K + k0, (size_t)K, mb, wp, ldw, nb, kl, tile, NB);
    }
    for (int i = 0; i < mb; ++i) {
      float* yr = y + (size_t)(m0 + i) * N + n0;
      const float* tr = tile + i * NB;
      for (int j = 0; j < nb; ++j) {
        float v = tr[j];
        if (bias.p) v += weight_at(bias, (size_t)(n0 + j));
        yr[j] = accumulate ? yr[j] + v : v;
      }
    }
  }, (double)M * N * K);
}

}  // namespace re
