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
  // The bytes never change while the backend lives (a model weight): a backend may keep derived data
  // (the CPU backend keeps packed GEMM panels). Never set for side memories or activations.
  bool frozen = false;
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
  virtual size_t peak_bytes() const = 0;  // high-water mark of bytes_in_use() since the last reset_peak()
  virtual void reset_peak() = 0;          // peak := bytes in use now

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

  // Elementwise ops take size_t element counts: a [tokens, d_ff] activation passes 2^31 elements at about
  // 150k tokens for d_ff 14336 (callers form the count in size_t too).
  // y[n] = silu(gate[n]) * up[n]      (y may alias gate or up)
  virtual void swiglu(float* y, const float* gate, const float* up, size_t n) = 0;

  // y[n] = a[n] + b[n]                (y may alias a or b)
  virtual void add(float* y, const float* a, const float* b, size_t n) = 0;

  // y[n, D] = x[idx[i], :]             (idx backend int32 [n]; gather rows before the lm_head)
  virtual void gather_rows(float* y, const float* x, const int32_t* idx, int n, int D) = 0;

  // ---- GPT-2 family ops ----------------------------------------------------------------------------
  // LayerNorm with bias: y[M,D] = (x − μ) / sqrt(σ² + eps) · w[D] + b[D], μ and σ² (biased) over each row.
  //   w, b in their stored dtype; b.p == nullptr means no bias. y may alias x. Reductions in double.
  virtual void layernorm(float* y, const float* x, WeightRef w, WeightRef b, int M, int D, float eps) = 0;

  // y[n] = gelu_tanh(x[n]) = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))   (HF gelu_new; y may alias x)
  virtual void gelu(float* y, const float* x, size_t n) = 0;

  // y[M,N] += b[N]  (b in its stored dtype; the bias of M stacked rows, e.g. of every side-memory slot)
  virtual void add_bias(float* y, WeightRef b, int M, int N) = 0;

  // ---- editing: input gradients of the ops above (the suffix backward) ----------------------------
  // Only input gradients exist here: the one weight gradient ever formed is the side memory's, inside
  // masked_sgd. "accumulate" adds into the output instead of overwriting it.

  // y[idx[i], :] += x[i, :]   (the gradient of gather_rows; idx entries are distinct)
  virtual void scatter_add_rows(float* y, const float* x, const int32_t* idx, int n, int D) = 0;

  // dx[M,K] (+)= dy[M,N] · W[N,K]
  virtual void linear_dx(float* dx, const float* dy, WeightRef W, int M, int N, int K, bool accumulate) = 0;

  // RMSNorm input gradient. y = x·r·w with r = 1/sqrt(mean(x²) + eps):
  //   dx = r·(w⊙dy) − x·r³·mean(w⊙dy⊙x)
  virtual void rmsnorm_bwd(float* dx, const float* dy, const float* x, WeightRef w, int M, int D, float eps,
                           bool accumulate) = 0;

  // RoPE input gradient: the inverse rotation (θ → −θ), in place on dx[n_tok, n_head, head_dim].
  virtual void rope_bwd(float* dx, const int32_t* pos, const float* inv_freq, int n_tok, int n_head, int head_dim) = 0;

  // Attention backward for the stateless batched forward (P = 0, S = T):
  //   q, dout, dq: [B, T, Hq, hd];  kc, vc: [B, Hkv, T, hd] (as written by kv_store);  dk, dv: [B, T, Hkv, hd]
  //   (dk/dv summed over the Hq/Hkv query heads of each group; all three outputs overwritten).
  //   Probabilities are recomputed from q, kc (no stored attention matrix).
  virtual void attention_bwd(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* kc,
                             const float* vc, const int32_t* pad, int B, int T, int Hq, int Hkv, int hd,
                             float scale) = 0;

  // LayerNorm input gradient (the bias has none). x̂ = (x − μ)·r, r = 1/sqrt(σ² + eps), g = w⊙dy:
  //   dx = r·(g − mean(g) − x̂·mean(g⊙x̂))
  virtual void layernorm_bwd(float* dx, const float* dy, const float* x, WeightRef w, int M, int D, float eps,
                             bool accumulate) = 0;

  // GELU (tanh form) input gradient: dx[n] = dy[n]·gelu'(x[n])   (dx may alias dy)
  virtual void gelu_bwd(float* dx, const float* dy, const float* x, size_t n) = 0;

  // SwiGLU backward, y = silu(g)·u:  dg = dy·u·silu'(g),  du = dy·silu(g),  silu'(g) = σ(g)(1 + g(1 − σ(g)))
  virtual void swiglu_bwd(float* dgate, float* dup, const float* dy, const float* gate, const float* up, size_t n) = 0;

  // Cross-entropy over R rows of logits[R, V]:
  //   loss[r] = −log softmax(logits[r])[labels[r]]·weight[r],  dlogits[r] = (softmax(logits[r]) − onehot)·weight[r]
  //   A row with label < 0 gets loss 0 and a zero gradient.
  virtual void cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* labels,
                             const float* weight, int R, int V) = 0;

  // ---- WISE kernels -------------------------------------------------------------------------------
  // Activation-score distance per token between nm side outputs and the main output (§1.2):
  //   os: [n, nm·D] (memory i in columns i·D .. i·D+D−1, i.e. one stacked GEMM), om: [n, D] → d: [nm, n]
  //   d[i, t] = ‖φ(os_i[t]) − φ(om[t])‖₂ with φ chosen by act: 0 = identity ("paper" mode),
  //   1 = SiLU, 2 = GELU (tanh form, gelu_new)   ("code" mode uses the model's hidden_act).
  virtual void act_dist(float* d, const float* os, const float* om, int n, int nm, int D, int act) = 0;
  // Its gradient for nm = 1: dos[t] (+)= gd[t]·∂d[t]/∂os[t]  (zero where d[t] == 0).
  virtual void act_dist_bwd(float* dos, const float* gd, const float* os, const float* om, int n, int D, int act,
                            bool accumulate) = 0;

  // Fused masked SGD step of a side memory (§1.5), W' [N,K] f32, base Wv [N,K] in its dtype:
  //   g = Gᵀ·A with G [M,N], A [M,K];  keep(n,k) = philox_keep(seed, n·K + k, rho)  (rho >= 1 keeps all)
  //   W' ← clamp(W' − lr·(keep·g + wd·W'),  Wv − c,  Wv + c)                         (c <= 0: no clamp)
  virtual void masked_sgd(float* Wp, const float* G, const float* A, WeightRef Wv, int M, int N, int K,
                          uint64_t seed, float rho, float lr, float wd, float clamp) = 0;

  // TIES merge (§1.8) of k f32 shards [n] against base [n] (stored dtype); out [n] f32 = base + δ:
  //   τ_i = shard_i − base, trimmed to its floor(density·n) largest |τ_i| (ties keep the lower index);
  //   u_i = w_i·τ_i;  s = +1 if Σ_i u_i >= 0 else −1;  agree_i = (u_i != 0 and sign(u_i) == s);
  //   δ = Σ agree_i·u_i / Σ agree_i·w_i  (a zero denominator counts as 1).
  //   shards: host array of k backend pointers; weights: host array of k floats.
  virtual void ties_merge(float* out, WeightRef base, const float* const* shards, const float* weights, int k,
                          size_t n, float density) = 0;

  // ---- REPAIR kernels ------------------------------------------------------------------------------
  // Intra-batch distillation (REPAIR Eq. 4) on b pooled features feat[b, D]; row 0 is the teacher.
  //   o_i = feat_i / ‖feat_i‖;  L_cos = mean_{i>=1} (1 − o_i·o_0);  L_var = (1/b)·Σ_i ‖o_i − ō‖², ō = mean_i o_i
  //   L = lambda·L_cos + theta·L_var   (theta < 0 flips the variance term into a diversity bonus)
  //   out[0] = L, out[1 + i] = 1 − o_i·o_0 (the per-sample consistency score; out[1] = 0).
  //   dfeat[i] = ∂L/∂feat_i for i >= 1; dfeat[0] = 0 (the teacher is a stop-gradient). A zero feature row
  //   counts as direction 0 with zero gradient. b >= 2.
  virtual void kd_loss(float* out, float* dfeat, const float* feat, int b, int D, float lambda, float theta) = 0;

  // Logit distillation (REPAIR Eq. 4's optional term, ALGORITHM.md §2.5) over P (student, teacher) row pairs of
  // logits [rows, V]:  p = softmax(logits[teacher[i]] / T), q = softmax(logits[student[i]] / T)
  //   loss[i] = w[i]·T²·KL(p ‖ q) = w[i]·T²·Σ_v p_v·(log p_v − log q_v)
  //   dlogits[student[i]] += w[i]·T·(q − p)          (the teacher row gets no gradient: stop-gradient)
  // Student rows must be distinct (each student row accumulates from exactly one pair); T > 0.
  virtual void kl_distill(float* loss, float* dlogits, const float* logits, const int32_t* student,
                          const int32_t* teacher, const float* w, int P, int V, float T) = 0;

  // Loss-aware merge (REPAIR Alg. 4) of k f32 shards [n] against base [n] with weights w (softmax(−α·L)):
  //   τ_i = shard_i − base; zeros are neutral (a masked entry takes no part, in the sign test or the weights);
  //   all non-zero τ_i[p] of one sign → δ = Σ_i w_i·τ_i[p] / Σ_i w_i over those i (the weighted mean of the
  //   shards that touched p: a sum would scale every edit of a k-shard merge by ~1/k where masks do not
  //   overlap);  mixed signs → δ = τ_j[p], j = argmax_i w_i·|τ_i[p]|
  //   (ties → lower i); no non-zero τ → δ = 0.  out = base + δ.  out may alias a shard.
  virtual void loss_aware_merge(float* out, WeightRef base, const float* const* shards, const float* weights, int k,
                                size_t n) = 0;
};

// The CPU backend always exists. nthreads <= 0 picks the machine's parallelism. isa: "" (REPAIR_CPU_ISA
// or the best level this CPU supports), "baseline", "v3" or "v4" (cpu/isa.h); ERR_UNSUPPORTED_CPU when
// the CPU lacks the level asked for.
std::unique_ptr<Backend> make_cpu_backend(int nthreads = 0, const std::string& isa = "");

// ---- CUDA (native/stub/cuda_stub.cpp when not built) ------------------------------------------
struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  size_t total_mem = 0, free_mem = 0;
  int sm_count = 0;
  bool kernel_image = false;  // this build has a kernel image (cubin or JIT-able PTX) for the device
  std::string kernel_image_error;  // why not (the probe's CUDA error), empty when it has one
};
struct CudaInfo {
  bool built = false;          // the CUDA backend was compiled into this binary
  bool available = false;      // at least one usable device (present, and with a kernel image in this build)
  std::string reason;          // why it is unavailable (empty when available)
  int driver_version = 0;      // cudaDriverGetVersion (0 when no driver)
  int runtime_version = 0;     // cudaRuntimeGetVersion
  std::string archs;           // CUDA architectures compiled in, e.g. "80-real,90-real,90-virtual" ("" when not built)
  std::vector<CudaDeviceInfo> devices;
};
CudaInfo cuda_info();
// Throws ERR_CUDA_UNAVAILABLE when CUDA is not built or no device exists.
std::unique_ptr<Backend> make_cuda_backend(int device);

}  // namespace re
