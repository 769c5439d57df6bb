// repair.cpp — CPU reference for the REPAIR kernels (twin: cuda/repair.cu): the intra-batch distillation loss (Eq. 4) with its
// gradient to the pooled features, the optional logit-KL term of Eq. 4 (kl_distill: KL(softmax(teacher/T) ‖
// softmax(student/T)) over row pairs of a logits matrix, with its gradient to the student rows), and the
// loss-aware merge rule of Alg. 4.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_backend.h"

namespace re {

void CpuBackend::kd_loss(float* out, float* dfeat, const float* feat, int b, int D, float lambda, float theta) {
  // Normalise (double), then L = λ·mean_{i>=1}(1 − o_i·o_0) + θ·(1/b)·Σ‖o_i − ō‖².
  std::vector<double> o((size_t)b * D), nrm(b), mean(D, 0.0);
  for (int i = 0; i < b; ++i) {
    double ss = 0;
    for (int e = 0; e < D; ++e) ss += (double)feat[(size_t)i * D + e] * feat[(size_t)i * D + e];
    nrm[i] = std::sqrt(ss);
    for (int e = 0; e < D; ++e) o[(size_t)i * D + e] = nrm[i] > 0 ? feat[(size_t)i * D + e] / nrm[i] : 0.0;
  }
  for (int i = 0; i < b; ++i)
    for (int e = 0; e < D; ++e) mean[e] += o[(size_t)i * D + e] / b;
  double lcos = 0, lvar = 0;
  out[1] = 0.0f;
  for (int i = 1; i < b; ++i) {
    double c = 0;
    for (int e = 0; e < D; ++e) c += o[(size_t)i * D + e] * o[e];
    out[1 + i] = (float)(1.0 - c);
    lcos += (1.0 - c) / (b - 1);
  }
  for (int i = 0; i < b; ++i)
    for (int e = 0; e < D; ++e) {
      const double d = o[(size_t)i * D + e] - mean[e];
      lvar += d * d / b;
    }
  out[0] = (float)(lambda * lcos + theta * lvar);
  // Gradient w.r.t. o_i (i >= 1): λ/(b−1)·(−o_0) + θ·(2/b)·(o_i − ō)   [Σ_j (o_j − ō) = 0 kills the ō path]
  // then through o = f/‖f‖: ∂/∂f = (g − (g·o)·o)/‖f‖.
  std::fill(dfeat, dfeat + D, 0.0f);
  std::vector<double> g(D);
  for (int i = 1; i < b; ++i) {
    double go = 0;
    for (int e = 0; e < D; ++e) {
      g[e] = -lambda / (b - 1) * o[e] + theta * 2.0 / b * (o[(size_t)i * D + e] - mean[e]);
      go += g[e] * o[(size_t)i * D + e];
    }
    for (int e = 0; e < D; ++e)
      dfeat[(size_t)i * D + e] = nrm[i] > 0 ? (float)((g[e] - go * o[(size_t)i * D + e]) / nrm[i]) : 0.0f;
  }
}

void CpuBackend::kl_distill(float* loss, float* dlogits, const float* logits, const int32_t* student,
                            const int32_t* teacher, const float* w, int P, int V, float T) {
  // One pair per task (student rows are distinct, so no two tasks write the same dlogits row). Per pair, in
  // double: x = z·(1/T) (the CUDA kernel forms the same x);  log p = x_t − lse(x_t), log q = x_s − lse(x_s)
  // (max-shifted log-sum-exp);  KL = Σ_v p_v·(log p_v − log q_v)  (p_v = 0 terms are 0: 0·log 0 = 0);
  //   loss[i] = w·T²·KL;  dlogits[s, v] += w·T·(q_v − p_v)  (one f32 rounding of the sum).
  if (P < 0 || V < 1 || !(T > 0) || !std::isfinite(T))
    fail(RE_ERR_ARG, "kl_distill: need P >= 0, V >= 1 and a finite T > 0");
  if (P == 0) return;
  const double Td = T, invT = 1.0 / Td;
  pool_.parallel_for(P, [&](int i) {
    const float* zs = logits + (size_t)student[i] * V;  // [V] student row
    const float* zt = logits + (size_t)teacher[i] * V;  // [V] teacher row (read only)
    float* g = dlogits + (size_t)student[i] * V;        // [V] accumulated into
    double ms = -INFINITY, mt = -INFINITY;
    for (int v = 0; v < V; ++v) {
      ms = std::max(ms, (double)zs[v] * invT);
      mt = std::max(mt, (double)zt[v] * invT);
    }
    double ss = 0, st = 0;
    for (int v = 0; v < V; ++v) {
      ss += std::exp((double)zs[v] * invT - ms);
      st += std::exp((double)zt[v] * invT - mt);
    }
    const double ls = ms + std::log(ss), lt = mt + std::log(st);
    const double wi = w[i], cg = wi * Td;
    double kl = 0;
    for (int v = 0; v < V; ++v) {
      const double lp = (double)zt[v] * invT - lt, lq = (double)zs[v] * invT - ls;
      const double p = std::exp(lp), q = std::exp(lq);
      if (p != 0) kl += p * (lp - lq);  // 0·log 0 = 0 (a NaN still propagates)
      g[v] = (float)((double)g[v] + cg * (q - p));
    }
    loss[i] = (float)(wi * Td * Td * kl);
  }, (double)P * V * 60);
}

void CpuBackend::loss_aware_merge(float* out, WeightRef base, const float* const* shards, const float* weights, int k,
                                  size_t n) {
  const int chunk = 4096;
  pool_.parallel_for((int)((n + chunk - 1) / chunk), [&](int c) {
    const size_t p0 = (size_t)c * chunk, p1 = std::min(n, p0 + chunk);
    std::vector<float> b(p1 - p0);
    weight_row_to_f32(b.data(), base, p0, p1 - p0);
    for (size_t p = p0; p < p1; ++p) {
      const double bp = b[p - p0];
      int pos = 0, neg = 0, best = -1;
      double sum = 0, wsum = 0, bestv = -1;
      for (int i = 0; i < k; ++i) {
        const double t = (double)shards[i][p] - bp;
        if (t == 0) continue;
        (t > 0 ? pos : neg)++;
        sum += weights[i] * t;
        wsum += weights[i];
        const double s = weights[i] * std::fabs(t);
        if (s > bestv) {
          bestv = s;
          best = i;
        }
      }
      double delta = 0;
      if (pos && neg) delta = (double)shards[best][p] - bp;
      else if ((pos || neg) && wsum > 0) delta = sum / wsum;
      out[p] = (float)(bp + delta);
    }
  }, (double)n * k * 3);
}

}  // namespace re
