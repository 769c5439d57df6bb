// wise.cpp — CPU reference for the WISE kernels (twin: cuda/wise.cu): activation-score distances (routing) and
// their gradient, the fused masked SGD step of a side memory (an epilogue of matmul.cpp's packed GEMM), and the
// TIES merge.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu/cpu_backend.h"
#include "philox.h"

namespace re {

// d[i, t] = ‖act(os[t, i, :]) − act(om[t, :])‖ (the row kernel is the ISA level's, cpu/kernels.inc)
void CpuBackend::act_dist(float* d, const float* os, const float* om, int n, int nm, int D, int act) {
  pool_.parallel_for(n * nm, [&](int task) {
    const int t = task / nm, i = task % nm;
    d[(size_t)i * n + t] = (float)k_->act_dist_row(os + (size_t)t * nm * D + (size_t)i * D, om + (size_t)t * D, D, act);
  }, (double)n * nm * D * 30);
}

void CpuBackend::act_dist_bwd(float* dos, const float* gd, const float* os, const float* om, int n, int D, int act,
                              bool accumulate) {
  pool_.parallel_for(n, [&](int t) {
    k_->act_dist_bwd_row(dos + (size_t)t * D, os + (size_t)t * D, om + (size_t)t * D, D, act, gd[t], accumulate);
  }, (double)n * D * 60);
}

void CpuBackend::ties_merge(float* out, WeightRef base, const float* const* shards, const float* weights, int k,
                            size_t n, float density) {
  std::vector<float> b(n);
  weight_row_to_f32(b.data(), base, 0, n);
  // Trim: per shard, a keep bit for its floor(density·n) largest |τ| (equal values: lower index first).
  const size_t K = (size_t)std::floor((double)density * (double)n);
  std::vector<std::vector<uint8_t>> keep(k, std::vector<uint8_t>(n, 0));
  for (int i = 0; i < k; ++i) {
    if (K >= n) {
      std::fill(keep[i].begin(), keep[i].end(), 1);
      continue;
    }
    if (K == 0) continue;
    std::vector<float> mag(n);
    for (size_t p = 0; p < n; ++p) mag[p] = std::fabs(shards[i][p] - b[p]);
    std::vector<float> tmp = mag;
    std::nth_element(tmp.begin(), tmp.begin() + (K - 1), tmp.end(), std::greater<float>());
    const float thr = tmp[K - 1];
    size_t above = 0;
    for (size_t p = 0; p < n; ++p) above += mag[p] > thr;
    size_t ties_left = K - above;
    for (size_t p = 0; p < n; ++p) {
      if (mag[p] > thr) keep[i][p] = 1;
      else if (mag[p] == thr && ties_left > 0) {
        keep[i][p] = 1;
        --ties_left;
      }
    }
  }
  const int chunk = 4096;
  pool_.parallel_for((int)((n + chunk - 1) / chunk), [&](int c) {
    const size_t p0 = (size_t)c * chunk, p1 = std::min(n, p0 + chunk);
    for (size_t p = p0; p < p1; ++p) {
      double sum = 0;
      for (int i = 0; i < k; ++i)
        if (keep[i][p]) sum += (double)weights[i] * ((double)shards[i][p] - b[p]);
      const double s = sum >= 0 ? 1.0 : -1.0;
      double num = 0, den = 0;
      for (int i = 0; i < k; ++i) {
        if (!keep[i][p]) continue;
        const double u = (double)weights[i] * ((double)shards[i][p] - b[p]);
        if (u != 0 && (u > 0) == (s > 0)) {
          num += u;
          den += weights[i];
        }
      }
      out[p] = (float)(b[p] + num / (den == 0 ? 1.0 : den));
    }
  }, (double)n * k * 4);
}

// W' ← clamp(W' − lr·(keep ⊙ Gᵀ·A + wd·W'), Wv ± c), one (96 × 128) tile of Gᵀ·A at a time: the tile is
// applied in the epilogue and never stored whole; Gᵀ is read transposed while packing, never formed.
// The keep mask depends only on (seed, ρ, shape), so it is drawn once and reused by every step of an edit.
void CpuBackend::masked_sgd(float* Wp, const float* G, const float* A, WeightRef Wv, int M, int N, int K, uint64_t seed,
                            float rho, float lr, float wd, float clamp) {
  std::lock_guard<std::mutex> lk(mask_mu_);  // held for the call: the mask is read in the epilogue
  const uint8_t* keep = nullptr;
  if (rho < 1.0f) {
    const size_t n = (size_t)N * K;
    if (!(mask_seed_ == seed && mask_rho_ == rho && mask_.size() == n && mask_n_ == N)) {
      mask_.resize(n);
      const int chunk = 8192;
      pool_.parallel_for((int)((n + chunk - 1) / chunk), [&](int c) {
        const size_t p0 = (size_t)c * chunk, p1 = std::min(n, p0 + chunk);
        for (size_t p = p0; p < p1; ++p) mask_[p] = philox_keep(seed, p, rho) ? 1 : 0;
      }, (double)n * 40);
      mask_seed_ = seed;
      mask_rho_ = rho;
      mask_n_ = N;
    }
    keep = mask_.data();
  }
  gemm_packed(N, K, M, G, (size_t)N,
              [&](float* wp, int n0, int nb, int k0, int kc) { gemm_pack_rows(wp, k_->gemm_nr, WeightRef{A, DType::F32}, (size_t)K, n0, nb, k0, kc); },
              [&](const float* tile, int ldt, int r0, int rb, int c0, int cb) {
                float base[kGemmTileN];
                for (int i = 0; i < rb; ++i) {
                  const int nrow = r0 + i;
                  float* w = Wp + (size_t)nrow * K + c0;
                  const float* g = tile + (size_t)i * ldt;
                  const uint8_t* kr = keep ? keep + (size_t)nrow * K + c0 : nullptr;
                  if (clamp > 0) weight_row_to_f32(base, Wv, (size_t)nrow * K + c0, cb);
                  for (int j = 0; j < cb; ++j) {
                    const float kp = kr ? (float)kr[j] : 1.0f;
                    float v = w[j] - lr * (kp * g[j] + wd * w[j]);
                    if (clamp > 0) v = std::min(std::max(v, base[j] - clamp), base[j] + clamp);
                    w[j] = v;
                  }
                }
              },
              /*x_trans=*/true);
}

}  // namespace re
