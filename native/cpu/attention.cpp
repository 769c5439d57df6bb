// attention.cpp — CPU reference for the KV-cache store and causal GQA attention with left padding (twin:
// cuda/attention.cu). Scores and sums in double; the row kernels are the ISA level's (cpu/kernels.inc).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/cpu_backend.h"

namespace re {

// k,v [B,Tn,Hkv,hd] -> kc,vc [B,Hkv,S,hd] rows P..P+Tn-1
void CpuBackend::kv_store(float* kc, float* vc, const float* k, const float* v, int B, int Tn, int Hkv, int hd, int S,
                          int P) {
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t)
      for (int h = 0; h < Hkv; ++h) {
        const size_t src = (((size_t)b * Tn + t) * Hkv + h) * hd;
        const size_t dst = (((size_t)b * Hkv + h) * S + (P + t)) * hd;
        std::memcpy(kc + dst, k + src, hd * 4);
        std::memcpy(vc + dst, v + src, hd * 4);
      }
}

// out[b,t,h,:] = Σ_j softmax_j(scale · q·k_j) v_j over cache rows pad[b] <= j <= P+t, kv head h/(Hq/Hkv).
// Prefill and the edit's suffix (many query rows per kv head): one task per (sequence, kv head) whose
// kernel transposes K once. Decode (few query rows): one task per (sequence, token), rows straight.
void CpuBackend::attention(float* out, const float* q, const float* kc, const float* vc, const int32_t* pad, int B,
                           int Tn, int Hq, int Hkv, int hd, int S, int P, float scale) {
  const int group = Hq / Hkv;
  if (Tn * group >= 4) {
    pool_.parallel_for(B * Hkv, [&](int task) {
      const int b = task / Hkv, g = task % Hkv, j0 = std::max(0, (int)pad[b]);
      thread_local std::vector<float> kt;
      thread_local std::vector<double> sc, acc;
      kt.resize((size_t)(P + Tn) * hd);
      sc.resize(P + Tn);
      acc.resize(hd);
      const size_t qb = (size_t)b * Tn * Hq * hd;
      k_->attn_group(out + qb, q + qb, kc + ((size_t)b * Hkv + g) * S * hd, vc + ((size_t)b * Hkv + g) * S * hd, j0, P, Tn,
                     g * group, group, hd, (size_t)Hq * hd, scale, kt.data(), sc.data(), acc.data());
    }, (double)B * Tn * Hq * hd * 2 * (P + Tn));
    return;
  }
  pool_.parallel_for(B * Tn, [&](int bt) {
    const int b = bt / Tn, t = bt % Tn, i = P + t;
    const int j0 = std::max(0, (int)pad[b]);
    thread_local std::vector<double> sc, acc;
    sc.resize(std::max(1, i - j0 + 1));
    acc.resize(hd);
    for (int h = 0; h < Hq; ++h) {
      const float* qv = q + (((size_t)b * Tn + t) * Hq + h) * hd;
      float* o = out + (((size_t)b * Tn + t) * Hq + h) * hd;
      if (j0 > i) {
        std::fill(o, o + hd, 0.0f);
        continue;
      }
      const int g = h / group;
      k_->attn_row(o, qv, kc + ((size_t)b * Hkv + g) * S * hd, vc + ((size_t)b * Hkv + g) * S * hd, j0, i, hd, scale,
                   sc.data(), acc.data());
    }
  }, (double)B * Tn * Hq * hd * 2 * (P + Tn));
}

}  // namespace re
