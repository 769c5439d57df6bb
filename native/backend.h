// backend.h — the op interface the model runtime is written against.
//
// The runtime (model.cpp) never branches on the backend: it calls these ops. Each op has a CPU
// implementation (native/cpu/, the reference) and a CUDA twin (cuda/), with the same arguments.
// All pointers passed to ops are *backend* pointers (host memory for CPU, device memory for CUDA),
// obtained from alloc(). Activations are always f32; weights stay in their stored dtype (DType).
//
// Errors: ops throw re::Error (never exit/abort); the binding turns it into a JS Error with a code.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "errors.h"

namespace re {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };
inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
const char* dtype_name(DType t);

// A weight tensor on the backend: pointer + stored dtype (+ element count for bounds sanity).
struct WeightRef {
  const void* p = nullptr;
  DType dt = DType::F32;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;  // "cpu" | "cuda"

  // ---- memory ---------------------------------------------------------------------------
  virtual void* alloc(size_t bytes) = 0;  // throws ERR_OOM; zero bytes returns a valid pointer
  virtual void free(void* p) = 0;         // free(nullptr) is a no-op
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // backend -> backend
  virtual void memset0(void* dst, size_t bytes) = 0;
  virtual void sync() = 0;  // wait for queued work; throws ERR_CUDA on a sticky error
  virtual size_t bytes_in_use() const = 0;

  // ---- ops (shapes are row-major, last index fastest) ---------------------------------------

  // y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N]);  W and bias in their stored dtype, y and x f32.
  // If accumulate, y += result instead of y = result. (HF nn.Linear layout.)
  virtual void linear(float* y, const float* x, WeightRef W, WeightRef bias, int M, int N, int K,
                      bool accumulate) = 0;

  // y[M,D] = x[M,D] / sqrt(mean(x²) + eps) * w[D]      (Llama RMSNorm; y may alias x)
  virtual void rmsnorm(float* y, const float* x, WeightRef w, int M, int D, float eps) = 0;

  // y[n,D] = table[ids[n], :]   (ids are backend int32; out-of-range ids were rejected earlier)
  virtual void embedding(float* y, const int32_t* ids, WeightRef table, int n, int D) = 0;

  // In-place rotary embedding, HF "rotate_half" convention, on x[n_tok, n_head, head_dim]:
  //   for i < head_dim/2, θ = pos[t] · inv_freq[i]:
  //   x1' = x1·cosθ − x2·sinθ,  x2' = x2·cosθ + x1·sinθ    (x1 = x[..., i], x2 = x[..., i + head_dim/2])
  // pos: backend int32 [n_tok]; inv_freq: backend f32 [head_dim/2] (already llama3-scaled if needed).
  virtual void rope(float* x, const int32_t* pos, const float* inv_freq, int n_tok, int n_head,
                    int head_dim) = 0;

  // Write new keys/values into the cache.
  //   k, v:   [B, Tn, Hkv, hd]       (the projections for Tn new tokens of each of B sequences)
  //   kc, vc: [B, Hkv, S, hd]        (S = cache capacity); writes rows P .. P+Tn-1.
  virtual void kv_store(float* kc, float* vc, const float* k, const float* v, int B, int Tn, int Hkv,
                        int hd, int S, int P) = 0;

  // Causal attention with GQA over a KV cache and left padding.
  //   q:   [B, Tn, Hq, hd]   queries for cache rows P .. P+Tn-1
  //   out: [B, Tn, Hq, hd]
  //   query row i = P+t of sequence b attends cache rows j with pad[b] <= j <= i;
  //   query head h uses kv head h / (Hq/Hkv). scores scaled by `scale` (1/sqrt(hd)).
  //   A query whose allowed range is empty (a padding row) produces zeros.
  virtual void attention(float* out, const float* q, const float* kc, const float* vc,
                         const int32_t* pad, int B, int Tn, int Hq, int Hkv, int hd, int S, int P,
                         float scale) = 0;

  // y[n] = silu(gate[n]) * up[n]      (y may alias gate or up)
  virtual void swiglu(float* y, const float* gate, const float* up, int n) = 0;

  // y[n] = a[n] + b[n]                (y may alias a or b)
  virtual void add(float* y, const float* a, const float* b, int n) = 0;

  // y[n, D] = x[idx[i], :]             (idx backend int32 [n]; gather rows before the lm_head)
  virtual void gather_rows(float* y, const float* x, const int32_t* idx, int n, int D) = 0;
};

// The CPU backend always exists. nthreads <= 0 picks the machine's parallelism.
std::unique_ptr<Backend> make_cpu_backend(int nthreads = 0);

// ---- CUDA (native/stub/cuda_stub.cpp when not built) ------------------------------------------
struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  size_t total_mem = 0, free_mem = 0;
  int sm_count = 0;
};
struct CudaInfo {
  bool built = false;          // the CUDA backend was compiled into this binary
  bool available = false;      // at least one usable device
  std::string reason;          // why it is unavailable (empty when available)
  int driver_version = 0;      // cudaDriverGetVersion (0 when no driver)
  int runtime_version = 0;     // cudaRuntimeGetVersion
  std::vector<CudaDeviceInfo> devices;
};
CudaInfo cuda_info();
// Throws ERR_CUDA_UNAVAILABLE when CUDA is not built or no device exists.
std::unique_ptr<Backend> make_cuda_backend(int device);

}  // namespace re
