// ops.cpp — CPU reference for the non-matmul ops of backend.h: RMSNorm, embedding, RoPE, KV-cache
// store, causal GQA attention with left padding, SwiGLU, residual add, row gather.
// Reductions accumulate in double: these ops are the reference the CUDA twins are measured against.
// The row loops of RMSNorm, attention and SwiGLU run the ISA level's kernels (cpu/kernels.inc).
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
    for (int m = c * chunk; m < std::min(M, (c + 1) * chunk); ++m)
      k_->rmsnorm_row(y + (size_t)m * D, x + (size_t)m * D, wf.data(), D, eps);
  }, (double)M * D * 4);
}

// y[n,D] = table[ids[n], :]
void CpuBackend::embedding(float* y, const int32_t* ids, WeightRef table, int n, int D) {
  for (int i = 0; i < n; ++i) weight_row_to_f32(y + (size_t)i * D, table, (size_t)ids[i] * D, D);
}

// cos/sin of θ = pos[t]·inv_freq[i] as [n_tok][half] f32 tables, kept for the last (pos, inv_freq): the
// suffix's RoPE (forward and backward) sees the same positions at every step of an edit, so the
// double-precision trig runs once per edit instead of twice per layer per step.
const float* CpuBackend::rope_table(const int32_t* pos, const float* inv_freq, int n_tok, int half) {
  const bool same = rope_pos_.size() == (size_t)n_tok && rope_freq_.size() == (size_t)half &&
                    std::memcmp(rope_pos_.data(), pos, (size_t)n_tok * 4) == 0 &&
                    std::memcmp(rope_freq_.data(), inv_freq, (size_t)half * 4) == 0;
  if (!same) {
    rope_pos_.assign(pos, pos + n_tok);
    rope_freq_.assign(inv_freq, inv_freq + half);
    rope_cs_.resize((size_t)n_tok * half * 2);
    pool_.parallel_for(n_tok, [&](int t) {
      float* c = rope_cs_.data() + (size_t)t * half * 2;
      for (int i = 0; i < half; ++i) {
        // HF computes the angle as an f32 product, then cos/sin; we do the same, trig in double.
        const float ang = (float)pos[t] * inv_freq[i];
        c[i] = (float)std::cos((double)ang);
        c[half + i] = (float)std::sin((double)ang);
      }
    }, (double)n_tok * half * 40);
  }
  return rope_cs_.data();
}

// x[n_tok, n_head, hd] rotated in place (rotate_half convention), θ = pos[t]·inv_freq[i]
void CpuBackend::rope(float* x, const int32_t* pos, const float* inv_freq, int n_tok, int n_head, int hd) {
  const int half = hd / 2;
  std::lock_guard<std::mutex> lk(rope_mu_);
  const float* cs = rope_table(pos, inv_freq, n_tok, half);
  pool_.parallel_for(n_tok, [&](int t) {
    const float* c = cs + (size_t)t * half * 2;
    const float* s = c + half;
    for (int h = 0; h < n_head; ++h) {
      float* v = x + ((size_t)t * n_head + h) * hd;
      for (int i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c[i] - x2 * s[i];
        v[i + half] = x2 * c[i] + x1 * s[i];
      }
    }
  }, (double)n_tok * n_head * hd * 3);
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

// y = silu(g) * u,  silu(g) = g / (1 + e^-g)
void CpuBackend::swiglu(float* y, const float* gate, const float* up, size_t n) {
  const size_t chunk = 16384;
  pool_.parallel_for(chunk_count(n, chunk), [&](int c) {
    const size_t i0 = (size_t)c * chunk;
    k_->swiglu(y + i0, gate + i0, up + i0, std::min(chunk, n - i0));
  }, (double)n * 30);
}

void CpuBackend::add(float* y, const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void CpuBackend::gather_rows(float* y, const float* x, const int32_t* idx, int n, int D) {
  for (int i = 0; i < n; ++i) std::memcpy(y + (size_t)i * D, x + (size_t)idx[i] * D, (size_t)D * 4);
}

}  // namespace re
