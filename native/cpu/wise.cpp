// wise.cpp — CPU reference for the WISE kernels: activation-score distances (routing) and their
// gradient, the fused masked SGD step of a side memory, and the TIES merge.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu/cpu_backend.h"
#include "philox.h"

namespace re {

namespace {
inline double act_fn(double x, int act) {
  switch (act) {
    case 1: return x / (1.0 + std::exp(-x));
    case 2: return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    default: return x;
  }
}
inline double act_grad(double x, int act) {
  switch (act) {
    case 1: {
      const double s = 1.0 / (1.0 + std::exp(-x));
      return s * (1.0 + x * (1.0 - s));
    }
    case 2: {
      const double k = 0.7978845608028654, t = std::tanh(k * (x + 0.044715 * x * x * x));
      return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
    }
    default: return 1.0;
  }
}

}  // namespace

void CpuBackend::act_dist(float* d, const float* os, const float* om, int n, int nm, int D, int act) {
  pool_.parallel_for(n * nm, [&](int task) {
    const int t = task / nm, i = task % nm;
    const float* a = os + (size_t)t * nm * D + (size_t)i * D;
    const float* b = om + (size_t)t * D;
    double ss = 0;
    for (int e = 0; e < D; ++e) {
      const double diff = act_fn(a[e], act) - act_fn(b[e], act);
      ss += diff * diff;
    }
    d[(size_t)i * n + t] = (float)std::sqrt(ss);
  }, (double)n * nm * D * 30);
}

void CpuBackend::act_dist_bwd(float* dos, const float* gd, const float* os, const float* om, int n, int D, int act,
                              bool accumulate) {
  pool_.parallel_for(n, [&](int t) {
    const float* a = os + (size_t)t * D;
    const float* b = om + (size_t)t * D;
    float* o = dos + (size_t)t * D;
    double ss = 0;
    for (int e = 0; e < D; ++e) {
      const double diff = act_fn(a[e], act) - act_fn(b[e], act);
      ss += diff * diff;
    }
    const double dist = std::sqrt(ss);
    for (int e = 0; e < D; ++e) {
      double v = 0;
      if (dist > 0) v = gd[t] / dist * (act_fn(a[e], act) - act_fn(b[e], act)) * act_grad(a[e], act);
      o[e] = accumulate ? o[e] + (float)v : (float)v;
    }
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
