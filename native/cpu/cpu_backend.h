// cpu_backend.h — the CPU backend: the reference implementation of every op in backend.h.
// Plain host memory; ops are multithreaded through a ThreadPool; their inner loops (the packed GEMM's
// micro-kernel, attention rows, norms, activations, losses) come from the kernel table of the ISA
// level chosen at construction (cpu/isa.h: baseline x86-64, x86-64-v3 AVX2/FMA, x86-64-v4 AVX-512).
#pragma once
#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "backend.h"
#include "cpu/isa.h"
#include "cpu/threadpool.h"

namespace re {

// Chunks of `chunk` elements covering n (size_t) elements, as the int count parallel_for takes; n past
// chunk·INT_MAX (3.5e13 elements at the smallest chunk used) is refused rather than wrapped.
inline int chunk_count(size_t n, size_t chunk) {
  const size_t c = (n + chunk - 1) / chunk;
  if (c > (size_t)0x7fffffff) fail(RE_ERR_ARG, "elementwise op: " + std::to_string(n) + " elements is too many");
  return (int)c;
}

// Exact f16/bf16 -> f32 conversions (table for f16, shift for bf16).
float f16_to_f32(uint16_t h);
inline float bf16_to_f32(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Element i of a weight tensor as f32.
inline float weight_at(WeightRef w, size_t i) {
  switch (w.dt) {
    case DType::F32: return static_cast<const float*>(w.p)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(w.p)[i]);
    default: return bf16_to_f32(static_cast<const uint16_t*>(w.p)[i]);
  }
}
// dst[0..n) = weight elements [off, off+n) as f32.
void weight_row_to_f32(float* dst, WeightRef w, size_t off, size_t n);

// The packed GEMM's output tile width (columns handed to an epilogue at once, cpu/matmul.cpp).
constexpr int kGemmTileN = 128;
// Pack B[k][j] = src[(k0 + k)·ld + n0 + j] for gemm_packed (a row-major operand read along its rows) as
// [ceil(nb/nr)][kc][nr] f32, zero-filled past nb (cpu/matmul.cpp; linear_dx and masked_sgd pack with it).
void gemm_pack_rows(float* dst, int nr, WeightRef src, size_t ld, int n0, int nb, int k0, int kc);

class CpuBackend final : public Backend {
 public:
  CpuBackend(int nthreads, const std::string& isa);
  const char* name() const override { return "cpu"; }
  int threads() const { return pool_.size(); }
  const CpuKernels& kernels() const { return *k_; }

  void* alloc(size_t bytes) override;
  void free(void* p) override;
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { std::memmove(dst, src, bytes); }
  void memset0(void* dst, size_t bytes) override { std::memset(dst, 0, bytes); }
  void sync() override {}
  size_t bytes_in_use() const override { return in_use_.load(); }
  size_t peak_bytes() const override { return peak_.load(); }
  void reset_peak() override { peak_ = in_use_.load(); }
  uint64_t fnv1a64(const void* src, size_t bytes, uint64_t h) override {  // in place: host memory
    const uint8_t* p = static_cast<const uint8_t*>(src);
    for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
    return h;
  }

  // every op of ops.def, defined in native/cpu/<file>.cpp (the file named in its line)
#define RE_OP(name, file, params, args) void name params override;
#include "ops.def"

  ThreadPool& pool() { return pool_; }

  // The packed GEMM behind linear, linear_dx and masked_sgd (cpu/matmul.cpp).
  using PackFn = std::function<void(float* wp, int n0, int nb, int k0, int kc)>;
  using EpiFn = std::function<void(const float* tile, int ldt, int m0, int mb, int n0, int nb)>;
  // x_trans: X is stored transposed (X[i][k] = X_ptr[k·ldx + i]). b_packed: B already packed whole
  // (packed_b), `pack` unused.
  void gemm_packed(int M, int N, int K, const float* X, size_t ldx, const PackFn& pack, const EpiFn& epi,
                   bool x_trans = false, const float* b_packed = nullptr);
  // B packed whole for a frozen weight, kept (nullptr when the 256 MiB budget is spent). layout tells
  // apart the two ways one weight is read (0: pack_w for linear, 1: pack_rows for linear_dx).
  const float* packed_b(const void* key, int layout, int N, int K, const PackFn& pack);

 private:
  const CpuKernels* k_;
  ThreadPool pool_;
  std::mutex gemm_mu_;           // gemm_packed's packed operands below are per backend
  // Packed X and B chunks (grow-only, 2 MiB-aligned and advised as huge pages: the packed panels are
  // streamed through once per tile, and 4 KiB pages made that TLB-bound under virtualisation).
  struct HugeBuf {
    float* p = nullptr;
    size_t n = 0;
    float* get(size_t count);
    ~HugeBuf();
  };
  HugeBuf pa_, pb_;
  // masked_sgd's keep mask for the last (seed, ρ, shape): drawn once per edit, not once per step.
  // RoPE cos/sin tables for the last (pos, inv_freq) seen (cpu/rope.cpp).
  const float* rope_table(const int32_t* pos, const float* inv_freq, int n_tok, int half);
  std::mutex rope_mu_;
  std::vector<int32_t> rope_pos_;
  std::vector<float> rope_freq_, rope_cs_;
  struct PackKey {
    const void* p;
    int layout, N, K, nr;
    bool operator==(const PackKey& o) const { return p == o.p && layout == o.layout && N == o.N && K == o.K && nr == o.nr; }
  };
  struct PackKeyHash {
    size_t operator()(const PackKey& k) const {
      return std::hash<const void*>()(k.p) ^ ((size_t)k.layout << 1) ^ ((size_t)k.N * 1000003u) ^ ((size_t)k.K * 7919u);
    }
  };
  std::mutex packed_mu_;
  std::unordered_map<PackKey, std::vector<float>, PackKeyHash> packed_;
  size_t packed_bytes_ = 0;
  std::mutex mask_mu_;
  std::vector<uint8_t> mask_;
  uint64_t mask_seed_ = 0;
  float mask_rho_ = -1.0f;
  int mask_n_ = -1;
  std::atomic<size_t> in_use_{0};
  std::atomic<size_t> peak_{0};
};

}  // namespace re
