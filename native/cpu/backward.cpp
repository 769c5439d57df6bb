// backward.cpp — CPU reference for the suffix backward (twin: cuda/backward.cu): input gradients of gather_rows
// (scatter_add_rows), linear (linear_dx, on the packed GEMM of matmul.cpp), RMSNorm, RoPE, attention (GQA, causal,
// left padding), SwiGLU, and the cross-entropy loss at label rows.
// No weight gradient is formed here (the side memory's is fused into masked_sgd, cpu/wise.cpp).
#include <algorithm>
#include <cmath>
#include <cstring>
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
    k_->rmsnorm_bwd_row(dx + (size_t)m * D, dy + (size_t)m * D, x + (size_t)m * D, wf.data(), D, eps, accumulate);
  }, (double)M * D * 8);
}

void CpuBackend::rope_bwd(float* dx, const int32_t* pos, const float* inv_freq, int n_tok, int n_head, int hd) {
  const int half = hd / 2;
  std::lock_guard<std::mutex> lk(rope_mu_);
  const float* cs = rope_table(pos, inv_freq, n_tok, half);  // cpu/rope.cpp
  pool_.parallel_for(n_tok, [&](int t) {
    const float* cr = cs + (size_t)t * half * 2;
    const float* sr = cr + half;
    for (int h = 0; h < n_head; ++h) {
      float* v = dx + ((size_t)t * n_head + h) * hd;
      for (int i = 0; i < half; ++i) {
        const float c = cr[i], s = sr[i];
        const float g1 = v[i], g2 = v[i + half];
        v[i] = g1 * c + g2 * s;
        v[i + half] = g2 * c - g1 * s;
      }
    }
  }, (double)n_tok * n_head * hd * 3);
}

// One task per (sequence, kv head): it owns dk/dv of that group, so no two tasks write the same row.
void CpuBackend::attention_bwd(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* kc,
                               const float* vc, const int32_t* pad, int B, int T, int Hq, int Hkv, int hd,
                               float scale) {
  const int group = Hq / Hkv;
  pool_.parallel_for(B * Hkv, [&](int task) {
    const int b = task / Hkv, g = task % Hkv, j0 = std::max(0, (int)pad[b]);
    thread_local std::vector<double> dkg, dvg, p, dp, dqa;
    thread_local std::vector<float> kt, vt;
    kt.resize((size_t)T * hd);
    vt.resize((size_t)T * hd);
    dkg.resize((size_t)T * hd);
    dvg.resize((size_t)T * hd);
    p.resize(T);
    dp.resize(T);
    dqa.resize(hd);
    const size_t qb = (size_t)b * T * Hq * hd, kb = (size_t)b * T * Hkv * hd + (size_t)g * hd;
    k_->attn_bwd_group(dq + qb, dk + kb, dv + kb, dout + qb, q + qb, kc + ((size_t)b * Hkv + g) * T * hd,
                       vc + ((size_t)b * Hkv + g) * T * hd, j0, T, g * group, group, hd, (size_t)Hq * hd,
                       (size_t)Hkv * hd, scale, dkg.data(), dvg.data(), p.data(), dp.data(), dqa.data(), kt.data(), vt.data());
  }, (double)B * Hq * T * T * hd * 3);
}

void CpuBackend::swiglu_bwd(float* dgate, float* dup, const float* dy, const float* gate, const float* up, size_t n) {
  const size_t chunk = 16384;
  pool_.parallel_for(chunk_count(n, chunk), [&](int c) {
    const size_t i0 = (size_t)c * chunk;
    k_->swiglu_bwd(dgate + i0, dup + i0, dy + i0, gate + i0, up + i0, std::min(chunk, n - i0));
  }, (double)n * 40);
}

void CpuBackend::cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* labels,
                               const float* weight, int R, int V) {
  pool_.parallel_for(R, [&](int r) {
    float* g = dlogits + (size_t)r * V;
    const int y = labels[r];
    if (y < 0 || y >= V) {
      loss[r] = 0.0f;
      std::fill(g, g + V, 0.0f);
      return;
    }
    k_->ce_row(loss + r, g, logits + (size_t)r * V, y, V, weight[r]);
  }, (double)R * V * 20);
}

// dx[M,K] (+)= dy[M,N] · W[N,K]: the packed GEMM with W read along its rows (reduction over N).
void CpuBackend::linear_dx(float* dx, const float* dy, WeightRef W, int M, int N, int K, bool accumulate) {
  const PackFn pack = [&](float* wp, int n0, int nb, int k0, int kc) { gemm_pack_rows(wp, k_->gemm_nr, W, (size_t)K, n0, nb, k0, kc); };
  const float* bp = W.frozen ? packed_b(W.p, 1, K, N, pack) : nullptr;
  gemm_packed(M, K, N, dy, (size_t)N, pack,
              [&](const float* tile, int ldt, int m0, int mb, int n0, int nb) {
                for (int i = 0; i < mb; ++i) {
                  float* o = dx + (size_t)(m0 + i) * K + n0;
                  const float* t = tile + (size_t)i * ldt;
                  if (accumulate)
                    for (int j = 0; j < nb; ++j) o[j] += t[j];
                  else
                    std::memcpy(o, t, (size_t)nb * 4);
                }
              },
              false, bp);
}

}  // namespace re
