// wise.cpp — CPU reference for the WISE kernels: activation-score distances (routing) and their
// gradient, the fused masked SGD step of a side memory, and the TIES merge.
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

}  // namespace re
