// rope.cpp — CPU reference for rotary embeddings (twin: cuda/rope.cu), rotate_half convention, with the cos/sin
// table kept per (pos, inv_freq) that rope_bwd (backward.cpp) shares.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/cpu_backend.h"

namespace re {

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

}  // namespace re
