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

  void linear(float* y, const float* x, WeightRef W, WeightRef bias, int M, int N, int K, bool accumulate) override;
  void rmsnorm(float* y, const float* x, WeightRef w, int M, int D, float eps) override;
  void embedding(float* y, const int32_t* ids, WeightRef table, int n, int D) override;
  void rope(float* x, const int32_t* pos, const float* inv_freq, int n_tok, int n_head, int head_dim) override;
  void kv_store(float* kc, float* vc, const float* k, const float* v, int B, int Tn, int Hkv, int hd, int S, int P) override;
  void attention(float* out, const float* q, const float* kc, const float* vc, const int32_t* pad, int B, int Tn,
                 int Hq, int Hkv, int hd, int S, int P, float scale) override;
  void swiglu(float* y, const float* gate, const float* up, size_t n) override;
  void add(float* y, const float* a, const float* b, size_t n) override;
  void gather_rows(float* y, const float* x, const int32_t* idx, int n, int D) override;
  // GPT-2 family ops (cpu/gpt2.cpp)
  void layernorm(float* y, const float* x, WeightRef w, WeightRef b, int M, int D, float eps) override;
  void gelu(float* y, const float* x, size_t n) override;
  void add_bias(float* y, WeightRef b, int M, int N) override;
  void layernorm_bwd(float* dx, const float* dy, const float* x, WeightRef w, int M, int D, float eps,
                     bool accumulate) override;
  void gelu_bwd(float* dx, const float* dy, const float* x, size_t n) override;

  // editing ops (cpu/backward.cpp, cpu/wise.cpp)
  void scatter_add_rows(float* y, const float* x, const int32_t* idx, int n, int D) override;
  void linear_dx(float* dx, const float* dy, WeightRef W, int M, int N, int K, bool accumulate) override;
  void rmsnorm_bwd(float* dx, const float* dy, const float* x, WeightRef w, int M, int D, float eps,
                   bool accumulate) override;
  void rope_bwd(float* dx, const int32_t* pos, const float* inv_freq, int n_tok, int n_head, int head_dim) override;
  void attention_bwd(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* kc,
                     const float* vc, const int32_t* pad, int B, int T, int Hq, int Hkv, int hd, float scale) override;
  void swiglu_bwd(float* dgate, float* dup, const float* dy, const float* gate, const float* up, size_t n) override;
  void cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* labels, const float* weight,
                     int R, int V) override;
  void act_dist(float* d, const float* os, const float* om, int n, int nm, int D, int act) override;
  void act_dist_bwd(float* dos, const float* gd, const float* os, const float* om, int n, int D, int act,
                    bool accumulate) override;
  void masked_sgd(float* Wp, const float* G, const float* A, WeightRef Wv, int M, int N, int K, uint64_t seed,
                  float rho, float lr, float wd, float clamp) override;
  void ties_merge(float* out, WeightRef base, const float* const* shards, const float* weights, int k, size_t n,
                  float density) override;

  void kd_loss(float* out, float* dfeat, const float* feat, int b, int D, float lambda, float theta) override;
  void kl_distill(float* loss, float* dlogits, const float* logits, const int32_t* student, const int32_t* teacher,
                  const float* w, int P, int V, float T) override;
  void loss_aware_merge(float* out, WeightRef base, const float* const* shards, const float* weights, int k,
                        size_t n) override;

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
  // RoPE cos/sin tables for the last (pos, inv_freq) seen (cpu/ops.cpp).
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
