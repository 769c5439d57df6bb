// ops.cpp — CPU reference for the non-matmul ops of backend.h: RMSNorm, embedding, RoPE, KV-cache
// store, causal GQA attention with left padding, SwiGLU, residual add, row gather.
// Reductions accumulate in double: these ops are the reference the CUDA twins are measured against.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_backend.h"

namespace re {

// y[M,D] = x / sqrt(mean(x²) + eps) * w
void CpuBackend::rmsnorm(float* y, const float* x, WeightRef w, int M, int D, float eps) {
  std::vector<float> wf(D);
  weight_row_to_f32(wf.data(), w, 0, D);
  const int chunk = 16;
  pool_.parallel_for((M + chunk - 1) / chunk, [&](int c) {
    for (int m = c * chunk; m < std::min(M, (c + 1) * chunk); ++m) {
      const float* xr = x + (size_t)m * D;
      float* yr = y + (size_t)m * D;
      double ss = 0;
      for (int i = 0; i < D; ++i) ss += (double)xr[i] * xr[i];
      const float inv = (float)(1.0 / std::sqrt(ss / D + (double)eps));
      for (int i = 0; i < D; ++i) yr[i] = (xr[i] * inv) * wf[i];
    }
  }, (double)M * D * 4);
}

// y[n,D] = table[ids[n], :]
void CpuBackend::embedding(float* y, const int32_t* ids, WeightRef table, int n, int D) {
  for (int i = 0; i < n; ++i) weight_row_to_f32(y + (size_t)i * D, table, (size_t)ids[i] * D, D);
}

// x[n_tok, n_head, hd] rotated in place (rotate_half convention), θ = pos[t]·inv_freq[i]
void CpuBackend::rope(float* x, const int32_t* pos, const float* inv_freq, int n_tok, int n_head, int hd) {
  const int half = hd / 2;
  pool_.parallel_for(n_tok, [&](int t) {
    std::vector<float> c(half), s(half);
    for (int i = 0; i < half; ++i) {
      // HF computes the angle as an f32 product, then cos/sin; we do the same, trig in double.
      const float ang = (float)pos[t] * inv_freq[i];
      c[i] = (float)std::cos((double)ang);
      s[i] = (float)std::sin((double)ang);
    }
    for (int h = 0; h < n_head; ++h) {
      float* v = x + ((size_t)t * n_head + h) * hd;
      for (int i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x2 * c[i] + x1 * s[i];
      }
    }
  }, (double)n_tok * (n_head * hd + half * 40));
}

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

// out[b,t,h,:] = Σ_j softmax_j(scale · q·k_j) v_j over cache rows pad[b] <= j <= P+t, kv head h/(Hq/Hkv)
void CpuBackend::attention(float* out, const float* q, const float* kc, const float* vc, const int32_t* pad, int B,
                           int Tn, int Hq, int Hkv, int hd, int S, int P, float scale) {
  const int group = Hq / Hkv;
  pool_.parallel_for(B * Tn, [&](int bt) {
    const int b = bt / Tn, t = bt % Tn, i = P + t;
    const int j0 = std::max(0, (int)pad[b]);
    std::vector<double> sc(std::max(0, i - j0 + 1));
    std::vector<double> acc(hd);
    for (int h = 0; h < Hq; ++h) {
      const float* qv = q + (((size_t)b * Tn + t) * Hq + h) * hd;
      float* o = out + (((size_t)b * Tn + t) * Hq + h) * hd;
      if (j0 > i) {
        std::fill(o, o + hd, 0.0f);
        continue;
      }
      const int g = h / group;
      const float* kb = kc + ((size_t)b * Hkv + g) * S * hd;
      const float* vb = vc + ((size_t)b * Hkv + g) * S * hd;
      double mx = -INFINITY;
      for (int j = j0; j <= i; ++j) {
        double d = 0;
        const float* kr = kb + (size_t)j * hd;
        for (int e = 0; e < hd; ++e) d += (double)qv[e] * kr[e];
        d *= scale;
        sc[j - j0] = d;
        mx = std::max(mx, d);
      }
      double den = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int j = j0; j <= i; ++j) {
        const double p = std::exp(sc[j - j0] - mx);
        den += p;
        const float* vr = vb + (size_t)j * hd;
        for (int e = 0; e < hd; ++e) acc[e] += p * vr[e];
      }
      for (int e = 0; e < hd; ++e) o[e] = (float)(acc[e] / den);
    }
  }, (double)B * Tn * Hq * hd * 2 * (P + Tn));
}

// y = silu(g) * u,  silu(g) = g / (1 + e^-g)
void CpuBackend::swiglu(float* y, const float* gate, const float* up, int n) {
  for (int i = 0; i < n; ++i) {
    const float g = gate[i];
    y[i] = (float)((double)g / (1.0 + std::exp(-(double)g))) * up[i];
  }
}

void CpuBackend::add(float* y, const float* a, const float* b, int n) {
  for (int i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void CpuBackend::gather_rows(float* y, const float* x, const int32_t* idx, int n, int D) {
  for (int i = 0; i < n; ++i) std::memcpy(y + (size_t)i * D, x + (size_t)idx[i] * D, (size_t)D * 4);
}

}  // namespace re
