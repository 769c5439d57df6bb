// philox.h — Philox4x32-10 counter-based RNG (Salmon et al., SC'11), usable from host and device.
// Same (key, counter) -> same bits on the CPU and the GPU: shard masks and sampling draw from it and
// are never stored.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define RE_HD __host__ __device__ __forceinline__
#else
#define RE_HD inline
#endif

namespace re {

struct Philox4 {
  uint32_t v[4];
};

RE_HD uint32_t philox_mulhi(uint32_t a, uint32_t b, uint32_t* lo) {
  uint64_t p = (uint64_t)a * (uint64_t)b;
  *lo = (uint32_t)p;
  return (uint32_t)(p >> 32);
}

// 10 rounds of Philox4x32 on counter (c0..c3) with key (k0, k1).
RE_HD Philox4 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint32_t lo0, lo1;
    uint32_t hi0 = philox_mulhi(M0, c0, &lo0);
    uint32_t hi1 = philox_mulhi(M1, c2, &lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += W0; k1 += W1;
  }
  Philox4 out;
  out.v[0] = c0; out.v[1] = c1; out.v[2] = c2; out.v[3] = c3;
  return out;
}

// One uniform in [0, 1) with 24 random bits, for element `index` of stream `seed`.
RE_HD float philox_uniform(uint64_t seed, uint64_t index) {
  Philox4 r = philox4x32((uint32_t)index, (uint32_t)(index >> 32), 0u, 0u, (uint32_t)seed, (uint32_t)(seed >> 32));
  return (float)(r.v[0] >> 8) * (1.0f / 16777216.0f);
}

// Bernoulli(rho) keep-bit for element `index` of the shard mask drawn from `seed`.
RE_HD bool philox_keep(uint64_t seed, uint64_t index, float rho) { return philox_uniform(seed, index) < rho; }

}  // namespace re
