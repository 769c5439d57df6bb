// matmul.cpp — CPU linear: y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N]), W in F32/F16/BF16.
//
// Two paths, both split into output tiles across the thread pool:
//  - GEMM (M >= 8): BLIS-style. A 64-row slab of W is packed (and widened from f16/bf16) into
//    [64/16][kc][16] panels for each K chunk; a 6×16 register-blocked outer-product kernel broadcasts
//    x and accumulates into a (96 × 64) tile that stays in L1/L2.
//  - GEMV-like (M < 8, decode): W rows are streamed once; 2×4 dot products at a time with 8-wide
//    vectors, so the weight bytes are read exactly once.
// Kernels use GCC vector extensions and are compiled for AVX-512, AVX2+FMA and baseline x86-64
// (target_clones picks one at load time; no -march=native).
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/cpu_backend.h"
#include "philox.h"

namespace re {

namespace {

typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
constexpr int MB = 64, NB = 64, KC = 512;          // dot path tiles
constexpr int PMB = 96, PNB = 64, PKC = 256;       // packed GEMM tiles (PMB multiple of 6, PNB of 16)

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

template <int MR>
__attribute__((always_inline)) inline void micro_packed(const float* x, size_t ldx, const float* wp, int kc, float* t,
                                                        int ldt) {
  v16f acc[MR];
  for (int i = 0; i < MR; ++i) std::memcpy(&acc[i], t + i * ldt, 64);
  for (int k = 0; k < kc; ++k) {
    v16f w;
    std::memcpy(&w, wp + (size_t)k * 16, 64);
    for (int i = 0; i < MR; ++i) acc[i] += x[i * ldx + k] * w;
  }
  for (int i = 0; i < MR; ++i) std::memcpy(t + i * ldt, &acc[i], 64);
}

// tile[i*ldt + j] += Σ_k x[i*ldx + k] · wp[j/16][k][j%16]   for i < mb, j < nv*16, k < kc
__attribute__((target_clones("arch=x86-64-v4", "arch=haswell", "default"))) void block_packed(
    const float* x, size_t ldx, int mb, const float* wp, int nv, int kc, float* tile, int ldt) {
  for (int jv = 0; jv < nv; ++jv) {
    const float* w = wp + (size_t)jv * kc * 16;
    int i = 0;
    for (; i + 6 <= mb; i += 6) micro_packed<6>(x + i * ldx, ldx, w, kc, tile + i * ldt + jv * 16, ldt);
    switch (mb - i) {
      case 5: micro_packed<5>(x + i * ldx, ldx, w, kc, tile + i * ldt + jv * 16, ldt); break;
      case 4: micro_packed<4>(x + i * ldx, ldx, w, kc, tile + i * ldt + jv * 16, ldt); break;
      case 3: micro_packed<3>(x + i * ldx, ldx, w, kc, tile + i * ldt + jv * 16, ldt); break;
      case 2: micro_packed<2>(x + i * ldx, ldx, w, kc, tile + i * ldt + jv * 16, ldt); break;
      case 1: micro_packed<1>(x + i * ldx, ldx, w, kc, tile + i * ldt + jv * 16, ldt); break;
      default: break;
    }
  }
}

// Pack W rows [n0, n0+nb) × cols [k0, k0+kc) as [ceil(nb/16)][kc][16] f32 (zero-filled past nb).
void pack_w(float* dst, WeightRef W, int K, int n0, int nb, int k0, int kc) {
  const int nv = (nb + 15) / 16;
  std::vector<float> row(kc);
  for (int jv = 0; jv < nv; ++jv)
    for (int jj = 0; jj < 16; ++jj) {
      const int j = jv * 16 + jj;
      float* d = dst + (size_t)jv * kc * 16 + jj;
      if (j < nb) {
        weight_row_to_f32(row.data(), W, (size_t)(n0 + j) * K + k0, kc);
        for (int k = 0; k < kc; ++k) d[(size_t)k * 16] = row[k];
      } else {
        for (int k = 0; k < kc; ++k) d[(size_t)k * 16] = 0.0f;
      }
    }
}

// Pack B[k][j] = src[(k0 + k)·ld + n0 + j] (a row-major [K, N] operand read along its rows) as
// [ceil(nb/16)][kc][16] f32, zero-filled past nb. Used when the reduction index is the row index.
void pack_rows(float* dst, WeightRef src, size_t ld, int n0, int nb, int k0, int kc) {
  const int nv = (nb + 15) / 16;
  float row[PNB];
  for (int k = 0; k < kc; ++k) {
    weight_row_to_f32(row, src, (size_t)(k0 + k) * ld + n0, nb);
    for (int jv = 0; jv < nv; ++jv) {
      float* d = dst + ((size_t)jv * kc + k) * 16;
      for (int jj = 0; jj < 16; ++jj) {
        const int j = jv * 16 + jj;
        d[jj] = j < nb ? row[j] : 0.0f;
      }
    }
  }
}

}  // namespace

// C[M, N] = X[M, K] · B[K, N] in (PMB × PNB) tiles over the pool; `pack` writes B's panel for output
// columns [n0, n0+nb) and reduction rows [k0, k0+kc); `epi` consumes each finished tile.
void CpuBackend::gemm_packed(int M, int N, int K, const float* X, size_t ldx, const PackFn& pack, const EpiFn& epi) {
  if (M <= 0 || N <= 0) return;
  const int mt = (M + PMB - 1) / PMB, nt = (N + PNB - 1) / PNB;
  pool_.parallel_for(mt * nt, [&](int task) {
    const int m0 = (task % mt) * PMB, n0 = (task / mt) * PNB;  // neighbouring tasks share the B slab
    const int mb = std::min(PMB, M - m0), nb = std::min(PNB, N - n0), nv = (nb + 15) / 16;
    alignas(64) float tile[PMB * PNB];
    std::fill(tile, tile + (size_t)mb * PNB, 0.0f);
    thread_local std::vector<float> wp;
    wp.resize((size_t)PNB * PKC);
    for (int k0 = 0; k0 < K; k0 += PKC) {
      const int kc = std::min(PKC, K - k0);
      pack(wp.data(), n0, nb, k0, kc);
      block_packed(X + (size_t)m0 * ldx + k0, ldx, mb, wp.data(), nv, kc, tile, PNB);
    }
    epi(tile, PNB, m0, mb, n0, nb);
  }, (double)M * N * K);
}

void CpuBackend::linear(float* y, const float* x, WeightRef W, WeightRef bias, int M, int N, int K, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  EpiFn finish = [&](const float* tile, int ldt, int m0, int mb, int n0, int nb) {
    for (int i = 0; i < mb; ++i) {
      float* yr = y + (size_t)(m0 + i) * N + n0;
      const float* tr = tile + (size_t)i * ldt;
      for (int j = 0; j < nb; ++j) {
        float v = tr[j];
        if (bias.p) v += weight_at(bias, (size_t)(n0 + j));
        yr[j] = accumulate ? yr[j] + v : v;
      }
    }
  };
  if (M >= 8) {
    gemm_packed(M, N, K, x, (size_t)K, [&](float* wp, int n0, int nb, int k0, int kc) { pack_w(wp, W, K, n0, nb, k0, kc); },
                finish);
    return;
  }
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

namespace re {

// dx[M,K] (+)= dy[M,N] · W[N,K]: the packed GEMM with W read along its rows (reduction over N).
void CpuBackend::linear_dx(float* dx, const float* dy, WeightRef W, int M, int N, int K, bool accumulate) {
  gemm_packed(M, K, N, dy, (size_t)N, [&](float* wp, int n0, int nb, int k0, int kc) { pack_rows(wp, W, (size_t)K, n0, nb, k0, kc); },
              [&](const float* tile, int ldt, int m0, int mb, int n0, int nb) {
                for (int i = 0; i < mb; ++i) {
                  float* o = dx + (size_t)(m0 + i) * K + n0;
                  const float* t = tile + (size_t)i * ldt;
                  for (int j = 0; j < nb; ++j) o[j] = accumulate ? o[j] + t[j] : t[j];
                }
              });
}

// W' ← clamp(W' − lr·(keep ⊙ Gᵀ·A + wd·W'), Wv ± c), one (96 × 64) tile of Gᵀ·A at a time: the tile is
// applied in the epilogue and never stored whole.
void CpuBackend::masked_sgd(float* Wp, const float* G, const float* A, WeightRef Wv, int M, int N, int K, uint64_t seed,
                            float rho, float lr, float wd, float clamp) {
  std::vector<float> Gt((size_t)N * M);  // Gᵀ [N, M]: rows of the GEMM's left operand
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) Gt[(size_t)n * M + m] = G[(size_t)m * N + n];
  gemm_packed(N, K, M, Gt.data(), (size_t)M,
              [&](float* wp, int n0, int nb, int k0, int kc) { pack_rows(wp, WeightRef{A, DType::F32}, (size_t)K, n0, nb, k0, kc); },
              [&](const float* tile, int ldt, int r0, int rb, int c0, int cb) {
                float base[PNB];
                for (int i = 0; i < rb; ++i) {
                  const int nrow = r0 + i;
                  float* w = Wp + (size_t)nrow * K + c0;
                  const float* g = tile + (size_t)i * ldt;
                  if (clamp > 0) weight_row_to_f32(base, Wv, (size_t)nrow * K + c0, cb);
                  const uint64_t off = (uint64_t)nrow * K + c0;
                  for (int j = 0; j < cb; ++j) {
                    const float keep = rho >= 1.0f ? 1.0f : (philox_keep(seed, off + j, rho) ? 1.0f : 0.0f);
                    float v = w[j] - lr * (keep * g[j] + wd * w[j]);
                    if (clamp > 0) v = std::min(std::max(v, base[j] - clamp), base[j] + clamp);
                    w[j] = v;
                  }
                }
              });
}

}  // namespace re
