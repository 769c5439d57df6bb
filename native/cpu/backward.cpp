// backward.cpp — CPU reference for the suffix backward: input gradients of linear, RMSNorm, RoPE,
// attention (GQA, causal, left padding), SwiGLU, and the cross-entropy loss at label rows.
// No weight gradient is formed here (the side memory's is fused into masked_sgd, cpu/wise.cpp).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_backend.h"

namespace re {


void CpuBackend::scatter_add_rows(float* y, const float* x, const int32_t* idx, int n, int D) {
  for (int i = 0; i < n; ++i) {
    float* yr = y + (size_t)idx[i] * D;
    const float* xr = x + (size_t)i * D;
    for (int e = 0; e < D; ++e) yr[e] += xr[e];
  }
}

void CpuBackend::rmsnorm_bwd(float* dx, const float* dy, const float* x, WeightRef w, int M, int D, float eps,
                             bool accumulate) {
  std::vector<float> wf(D);
  weight_row_to_f32(wf.data(), w, 0, D);
  pool_.parallel_for(M, [&](int m) {
    const float* xr = x + (size_t)m * D;
    const float* gr = dy + (size_t)m * D;
    float* o = dx + (size_t)m * D;
    double ss = 0, dot = 0;
    for (int i = 0; i < D; ++i) {
      ss += (double)xr[i] * xr[i];
      dot += (double)wf[i] * gr[i] * xr[i];
    }
    const double r = 1.0 / std::sqrt(ss / D + (double)eps);
    const double c = r * r * r * dot / D;
    for (int i = 0; i < D; ++i) {
      const float v = (float)(r * wf[i] * gr[i] - xr[i] * c);
      o[i] = accumulate ? o[i] + v : v;
    }
  }, (double)M * D * 8);
}

void CpuBackend::rope_bwd(float* dx, const int32_t* pos, const float* inv_freq, int n_tok, int n_head, int hd) {
  const int half = hd / 2;
  pool_.parallel_for(n_tok, [&](int t) {
    for (int i = 0; i < half; ++i) {
      const float ang = (float)pos[t] * inv_freq[i];
      const float c = (float)std::cos((double)ang), s = (float)std::sin((double)ang);
      for (int h = 0; h < n_head; ++h) {
        float* v = dx + ((size_t)t * n_head + h) * hd;
        const float g1 = v[i], g2 = v[i + half];
        v[i] = g1 * c + g2 * s;
        v[i + half] = g2 * c - g1 * s;
      }
    }
  }, (double)n_tok * (n_head * hd + half * 40));
}

// One task per (sequence, kv head): it owns dk/dv of that group, so no two tasks write the same row.
void CpuBackend::attention_bwd(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* kc,
                               const float* vc, const int32_t* pad, int B, int T, int Hq, int Hkv, int hd,
                               float scale) {
  const int group = Hq / Hkv;
  pool_.parallel_for(B * Hkv, [&](int task) {
    const int b = task / Hkv, g = task % Hkv, j0 = std::max(0, (int)pad[b]);
    const float* kb = kc + ((size_t)b * Hkv + g) * T * hd;
    const float* vb = vc + ((size_t)b * Hkv + g) * T * hd;
    std::vector<double> dkg((size_t)T * hd, 0.0), dvg((size_t)T * hd, 0.0), p(T), dp(T), dqa(hd);
    for (int h = g * group; h < (g + 1) * group; ++h)
      for (int t = 0; t < T; ++t) {
        const size_t qo = (((size_t)b * T + t) * Hq + h) * hd;
        const float* qv = q + qo;
        const float* go = dout + qo;
        float* dqv = dq + qo;
        if (j0 > t) {
          std::fill(dqv, dqv + hd, 0.0f);
          continue;
        }
        double mx = -INFINITY;
        for (int j = j0; j <= t; ++j) {
          double s = 0;
          for (int e = 0; e < hd; ++e) s += (double)qv[e] * kb[(size_t)j * hd + e];
          p[j] = s * scale;
          mx = std::max(mx, p[j]);
        }
        double den = 0;
        for (int j = j0; j <= t; ++j) den += (p[j] = std::exp(p[j] - mx));
        double pdp = 0;
        for (int j = j0; j <= t; ++j) {
          p[j] /= den;
          double s = 0;
          for (int e = 0; e < hd; ++e) s += (double)go[e] * vb[(size_t)j * hd + e];
          dp[j] = s;
          pdp += p[j] * s;
        }
        std::fill(dqa.begin(), dqa.end(), 0.0);
        for (int j = j0; j <= t; ++j) {
          const double ds = p[j] * (dp[j] - pdp) * scale;
          for (int e = 0; e < hd; ++e) {
            dqa[e] += ds * kb[(size_t)j * hd + e];
            dkg[(size_t)j * hd + e] += ds * qv[e];
            dvg[(size_t)j * hd + e] += p[j] * go[e];
          }
        }
        for (int e = 0; e < hd; ++e) dqv[e] = (float)dqa[e];
      }
    for (int j = 0; j < T; ++j)
      for (int e = 0; e < hd; ++e) {
        const size_t o = (((size_t)b * T + j) * Hkv + g) * hd + e;
        dk[o] = (float)dkg[(size_t)j * hd + e];
        dv[o] = (float)dvg[(size_t)j * hd + e];
      }
  }, (double)B * Hq * T * T * hd * 3);
}

void CpuBackend::swiglu_bwd(float* dgate, float* dup, const float* dy, const float* gate, const float* up, int n) {
  for (int i = 0; i < n; ++i) {
    const double g = gate[i], s = 1.0 / (1.0 + std::exp(-g)), silu = g * s;
    const double ds = s * (1.0 + g * (1.0 - s));
    const float u = up[i], d = dy[i];
    dgate[i] = (float)(d * u * ds);
    dup[i] = (float)(d * silu);
  }
}

void CpuBackend::cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* labels,
                               const float* weight, int R, int V) {
  pool_.parallel_for(R, [&](int r) {
    const float* z = logits + (size_t)r * V;
    float* g = dlogits + (size_t)r * V;
    const int y = labels[r];
    if (y < 0 || y >= V) {
      loss[r] = 0.0f;
      std::fill(g, g + V, 0.0f);
      return;
    }
    double mx = -INFINITY;
    for (int i = 0; i < V; ++i) mx = std::max(mx, (double)z[i]);
    double den = 0;
    for (int i = 0; i < V; ++i) den += std::exp((double)z[i] - mx);
    const double lse = mx + std::log(den), w = weight[r];
    loss[r] = (float)((lse - z[y]) * w);
    for (int i = 0; i < V; ++i) g[i] = (float)((std::exp((double)z[i] - lse) - (i == y ? 1.0 : 0.0)) * w);
  }, (double)R * V * 20);
}

}  // namespace re
