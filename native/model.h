// model.h — the decoder runtime, written once against the Backend interface: weight loading by file
// offset, a stateless batched forward with left padding, and batch-1 generation with a persistent KV
// cache and native sampling. Two architecture kinds share it (the runtime branches on the kind, never
// on the backend):
//   Llama family (llama, mistral, qwen2): RMSNorm, RoPE, GQA, SwiGLU MLP, optional q/k/v biases.
//   GPT-2 (gpt2): LayerNorm with bias, learned positions (wpe) added to the token embeddings, MHA with
//     q/k/v/o biases and no RoPE, MLP gelu_new(c_fc) → c_proj with biases, ln_f, tied lm_head (wte).
//     Conv1D weights are stored [in, out]; the loader transposes them into the nn.Linear [out, in]
//     layout once, so the same `linear` / `linear_dx` ops serve both kinds and the side memory of
//     mlp.c_proj is [D, F] like Llama's down_proj. The fused c_attn [D, 3D] is split into q, k, v.
#pragma once
#include <atomic>
#include <functional>
#include <map>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"

namespace re {

enum class ArchKind : int { Llama = 0, GPT2 = 1 };

struct Arch {
  ArchKind kind = ArchKind::Llama;
  int D = 0;    // hidden_size
  int F = 0;    // intermediate_size
  int L = 0;    // num_hidden_layers
  int Hq = 0;   // num_attention_heads
  int Hkv = 0;  // num_key_value_heads
  int hd = 0;   // head_dim
  int V = 0;    // vocab_size
  int S = 0;    // context length (KV cache capacity)
  float eps = 1e-5f;             // RMSNorm eps (Llama) or LayerNorm eps (GPT-2)
  int npos = 0;                  // GPT-2: rows of the learned position table wpe (n_positions >= S)
  std::vector<float> inv_freq;  // [hd/2] (Llama; empty for GPT-2)
  bool tie = false;
  bool qkv_bias = false;
};

struct TensorSpec {
  std::string name, file;
  uint64_t offset = 0, nbytes = 0;
  DType dt = DType::F32;
  std::vector<int64_t> shape;
};

struct SampleOptions {
  int max_tokens = 1;
  float temperature = 0.f;
  int top_k = 0;
  float top_p = 1.f;
  uint64_t seed = 0;
  uint64_t step0 = 0;
  bool reset = true;
  std::vector<int32_t> eos;
};

// One edit's (or batch's) training rows (§1.3), built in TS.
struct EditBatch {
  std::vector<int32_t> tokens;  // [R*T] left-padded ids
  int R = 0, T = 0;
  std::vector<int32_t> pad;      // [R] pad positions at the start of each row
  std::vector<int32_t> labels;   // [R*T] the id the logits at (r, t) must predict, or -1
  std::vector<float> label_w;    // [R*T] CE weight at (r, t) (L_edit's per-row 1/(n+1) and 1/rows)
  std::vector<int32_t> kind;     // [R] 0 = edit row, 1 = irrelevant row (routing margin only)
  std::vector<int32_t> sample;   // [R] sample index of each edit row (REPAIR batches; -1 for irrelevant rows);
                                 // empty = every edit row belongs to sample 0
};

struct EditHyper {
  int n_iter = 70;
  float lr = 1.f, wd = 1e-5f, clamp = 1.f, rho = 0.2f;  // SGD, weight decay, W ± c, mask density
  uint64_t seed = 0;                                    // the shard's Philox mask seed
  bool margin = true;                                   // add L_act (WISE); false = plain CE (FT-L)
  float alpha = 5.f, beta = 20.f, gamma = 10.f;         // act_margin [α, β, γ]
  int act = 1;                                          // φ: 0 identity (paper), 1 SiLU, 2 GELU-tanh
  bool early_stop = true;
  float fit_stop = 0.f;  // [ours] > 0: stop once L_act = 0 and every sample's CE <= fit_stop (0 = off)
  bool full_forward = false;  // recompute the frozen prefix every step (the slow path, for benchmarks)
  float act_weight = 1.f;     // λ_a of REPAIR Eq. 6 (WISE: 1)
  bool kd = false;            // REPAIR intra-batch distillation over the batch's samples (Eq. 4)
  float kd_weight = 1.f;      // λ_KD
  float kd_lambda = 0.2f;     // λ (cosine term)
  float kd_theta = 0.1f;      // ϑ (variance term; negative = diversity bonus)
  float kd_temp = 0.f;        // T of the optional logit KL (Eq. 4); 0 = off. Weighted by λ_KD·T².
};

struct EditResult {
  std::vector<float> loss, ce, act;  // per executed step
  int steps = 0;
  float threshold_stat = 0.f;  // mean over edit rows of the per-row mean distance (§1.5)
  float prompt_stat = 0.f;     // the same over each edit row's prompt tokens only (routing before generation)
  bool early = false;
  // per sample, at the last executed step
  std::vector<float> sample_stat, sample_prompt_stat, sample_ce, sample_kd;
  std::vector<float> kd;  // L_KD per step (0 when off)
};

// Row routing for a forward pass: rows whose slot is >= 0 use that side-memory slot at its layer.
struct Route {
  int side = 0;                    // side-memory store id (0 = none)
  std::vector<int32_t> slot;       // [B] per row (or [1] for generation)
};

using ProgressFn = std::function<void(int step, float loss)>;

// Index of the first element of `n` elements of `dt` at `p` (bytes, any alignment) that is NaN, Inf or,
// for F32/BF16, of magnitude >= 2^27 (no real weight is; a flipped exponent bit or FLT_MAX is, and overflows
// the forward into NaN), else -1. The test is on the exponent bits only; the scan is a branch-free
// OR-reduction over blocks (vectorised by the compiler), located exactly only when a block has one.
int64_t first_nonfinite(const void* p, uint64_t n, DType dt);

// Picks the next token from logits[V] (greedy when temperature <= 0; ties go to the lowest id).
int32_t sample_token(const float* logits, int V, const SampleOptions& o, uint64_t step);

class Model {
 public:
  Model(std::unique_ptr<Backend> be, Arch arch, std::vector<TensorSpec> specs);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Reads every tensor from disk (by offset) and uploads it. Checks names, shapes, sizes.
  void load(const std::atomic<bool>* abort);
  bool loaded() const { return loaded_; }
  // Refuse weights holding NaN or Inf at load (default on; one vectorised pass over the bytes as they are read).
  void set_check_finite(bool on) { check_finite_ = on; }

  // Stateless forward of B left-padded rows of length T; returns logits [rows.size(), V].
  std::vector<float> forward(const std::vector<int32_t>& tokens, int B, int T, const std::vector<int32_t>& pad,
                             const std::vector<int32_t>& rows, const std::atomic<bool>* abort,
                             const Route& route = Route());

  // Batch-1 generation over the persistent KV cache (see lib/native.ts NativeGenerateOptions).
  std::vector<int32_t> generate(const std::vector<int32_t>& ids, const SampleOptions& o,
                                const std::atomic<bool>* abort, const Route& route = Route());

  // ---- side memories (edit.cpp) ----------------------------------------------------------------
  // A store holds f32 copies of one layer's FFN matrix in one stacked buffer (slot i at i·D·F), so every
  // slot is scored with a single GEMM. Slot order and meaning are the caller's (TS) policy.
  // target 0 (value): down_proj / GPT-2 mlp.c_proj, [D, F], o = A·Wᵀ (+ c_proj bias), A = the FFN activation.
  // target 1 (key, GPT-2 only: the reference's mlp.c_fc choice): c_fc as [F, D], o = ln_2(h)·Wᵀ + c_fc bias,
  //   and the FFN activation is gelu(o); the routing score compares φ(o) of side and main (φ = gelu: the
  //   real activation). Every side-memory call below follows the store's target.
  int side_create(int layer, int target = 0);
  void side_free(int id);
  int side_slots(int id) const;
  int side_layer(int id) const;
  int side_add(int id, int from);  // copy of slot `from` (-1: the base weight); returns the new slot
  void side_remove(int id, std::vector<int32_t> slots);
  void side_reset(int id, int slot);  // slot <- base weight
  std::vector<float> side_read(int id, int slot);
  void side_write(int id, int slot, const std::vector<float>& w);
  void side_ties(int id, int dst, const std::vector<int32_t>& srcs, const std::vector<float>& weights, float density);
  // REPAIR Alg. 4 into dst (dst may be one of the sources); weights are the softmax(−α·L) shares.
  void side_merge_loss_aware(int id, const int dst, const std::vector<int32_t>& srcs, const std::vector<float>& weights);
  // ModelFeat for batching: mean over each row's valid tokens of the edited layer's FFN activation A: [B, F].
  std::vector<float> side_features(int id, const std::vector<int32_t>& tokens, int B, int T,
                                   const std::vector<int32_t>& pad, const std::atomic<bool>* abort);
  uint64_t base_fingerprint(int layer, int target = 0);  // FNV-1a 64 over the base matrix bytes
  // Per-token routing distances of every slot: [slots, B*T] (pads included; TS reduces per row); with a
  // non-empty `only`, of those slots alone, in that order: [only.size(), B*T] (one GEMM per slot).
  std::vector<float> side_score(int id, const std::vector<int32_t>& tokens, int B, int T,
                                const std::vector<int32_t>& pad, int act, const std::atomic<bool>* abort,
                                const std::vector<int32_t>& only = {});
  // Trains slot `slot` on the batch for up to n_iter steps in one call (the editing hot path).
  // On any failure (abort, NaN/Inf loss) the slot is restored to its value before the call.
  EditResult side_edit(int id, int slot, const EditBatch& batch, const EditHyper& h, const std::atomic<bool>* abort,
                       const ProgressFn& progress);

  int cache_length() const { return cache_len_; }
  size_t memory_bytes() const { return be_->bytes_in_use(); }
  size_t memory_peak_bytes() const { return be_->peak_bytes(); }
  void reset_memory_peak() { be_->reset_peak(); }
  const Arch& arch() const { return arch_; }
  Backend& backend() { return *be_; }

 private:
  struct Layer {
    WeightRef ln1, q, k, v, o, qb, kb, vb, ln2, gate, up, down;
    // GPT-2: LayerNorm biases, o/up(c_fc)/down(c_proj) biases (gate unused; up = c_fc, down = mlp.c_proj)
    WeightRef ln1b, ln2b, ob, upb, downb;
  };
  struct Buf {
    void* p = nullptr;
    size_t bytes = 0;
  };
  float* ensure(Buf& b, size_t bytes);
  void load_gpt2(const std::atomic<bool>* abort);
  void check_tokens(const std::vector<int32_t>& ids) const;
  // Runs layers [l0, l1) on x[B*T, D] in place. kc/vc(l) give each layer's cache [B, Hkv, S, hd].
  void run_layers(int l0, int l1, float* x, int B, int T, int P, int S, const int32_t* d_pos,
                  const int32_t* d_pad, bool per_layer_cache, const std::atomic<bool>* abort,
                  const Route* route = nullptr);
  // Layer l's attention half: x += o_proj(attn(...)) (stateless, P = 0, S = T, temp cache).
  void attn_block(int l, float* x, int B, int T, const int32_t* d_pos, const int32_t* d_pad);
  // Layer l's MLP up to the activation into `act` [BT, F]: silu(gate(rmsnorm(x)))·up(...) (Llama) or
  // gelu(c_fc(layernorm(x))) (GPT-2).
  void mlp_act(int l, const float* x, float* act, int BT);
  // Architecture-dispatched pieces (the only places the runtime looks at arch_.kind).
  bool gpt2() const { return arch_.kind == ArchKind::GPT2; }
  // x[n, D] = embedding of ids (+ wpe[pos] for GPT-2; `tmp` is [n, D] scratch).
  void embed(float* x, const int32_t* d_ids, const int32_t* d_pos, int n, float* tmp);
  void norm(float* y, const float* x, WeightRef w, WeightRef b, int M);
  void norm_bwd(float* dx, const float* dy, const float* x, WeightRef w, int M, bool accumulate);
  // RoPE on q and k (Llama only).
  void pos_rotate(float* q, float* k, const int32_t* d_pos, int BT);
  void upload_ids(const std::vector<int32_t>& tokens, int B, int T, const std::vector<int32_t>& pad,
                  int32_t** d_ids, int32_t** d_pos, int32_t** d_pad);
  float* slot_ptr(int id, int slot);
  struct SideStore {
    int layer = 0;
    int target = 0;  // 0 value (down_proj / c_proj [D, F]), 1 key (GPT-2 c_fc [F, D])
    int count = 0, cap = 0;
    float* buf = nullptr;
  };
  // The base matrix, bias and shape [N, K] (o = x[·, K]·Wᵀ + b) a store's slots stand for.
  WeightRef side_base(const SideStore& st) const;
  WeightRef side_bias(const SideStore& st) const;
  int side_N(const SideStore& st) const { return st.target ? arch_.F : arch_.D; }
  int side_K(const SideStore& st) const { return st.target ? arch_.D : arch_.F; }
  SideStore& store(int id);
  const SideStore& store(int id) const;
  // Final norm + lm_head on rows (backend int32 [R]) of x [*, D]; logits into host vector.
  void head(const float* x, const int32_t* d_rows, int R, std::vector<float>& out);
  // Feeds ids at the end of the generation cache; returns the logits of the last one.
  void feed(const std::vector<int32_t>& ids, std::vector<float>& logits, const std::atomic<bool>* abort,
            const Route* route);

  std::unique_ptr<Backend> be_;
  Arch arch_;
  std::vector<TensorSpec> specs_;
  std::vector<void*> weights_;  // owned backend allocations
  WeightRef embed_, norm_, lm_head_;
  WeightRef pos_embed_, norm_b_;  // GPT-2: wpe, ln_f.bias
  std::vector<Layer> layers_;
  float* inv_freq_ = nullptr;
  bool loaded_ = false;
  bool check_finite_ = true;

  // workspace (grown on demand, reused)
  Buf x_, xn_, q_, k_, v_, att_, gate_, up_, ids_, pos_, pad_, rows_, hrows_, logits_, kc_tmp_, vc_tmp_;
  // generation KV cache: per layer [1, Hkv, S, hd]
  std::vector<float*> kc_, vc_;
  int cache_len_ = 0;
  std::map<int, SideStore> sides_;
  int next_side_ = 1;
  std::vector<Buf> edit_bufs_;  // edit-session workspace (suffix activations), reused across edits
};

}  // namespace re
