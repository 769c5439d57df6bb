// model.h — the Llama-family transformer runtime (llama, mistral, qwen2), written once against the
// Backend interface: weight loading by file offset, a stateless batched forward with left padding,
// and batch-1 generation with a persistent KV cache and native sampling.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"

namespace re {

struct Arch {
  int D = 0;    // hidden_size
  int F = 0;    // intermediate_size
  int L = 0;    // num_hidden_layers
  int Hq = 0;   // num_attention_heads
  int Hkv = 0;  // num_key_value_heads
  int hd = 0;   // head_dim
  int V = 0;    // vocab_size
  int S = 0;    // context length (KV cache capacity)
  float eps = 1e-5f;
  std::vector<float> inv_freq;  // [hd/2]
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

  // Stateless forward of B left-padded rows of length T; returns logits [rows.size(), V].
  std::vector<float> forward(const std::vector<int32_t>& tokens, int B, int T, const std::vector<int32_t>& pad,
                             const std::vector<int32_t>& rows, const std::atomic<bool>* abort);

  // Batch-1 generation over the persistent KV cache (see lib/native.ts NativeGenerateOptions).
  std::vector<int32_t> generate(const std::vector<int32_t>& ids, const SampleOptions& o,
                                const std::atomic<bool>* abort);

  int cache_length() const { return cache_len_; }
  size_t memory_bytes() const { return be_->bytes_in_use(); }
  const Arch& arch() const { return arch_; }
  Backend& backend() { return *be_; }

 private:
  struct Layer {
    WeightRef ln1, q, k, v, o, qb, kb, vb, ln2, gate, up, down;
  };
  struct Buf {
    void* p = nullptr;
    size_t bytes = 0;
  };
  float* ensure(Buf& b, size_t bytes);
  void check_tokens(const std::vector<int32_t>& ids) const;
  // Runs layers [l0, l1) on x[B*T, D] in place. kc/vc(l) give each layer's cache [B, Hkv, S, hd].
  void run_layers(int l0, int l1, float* x, int B, int T, int P, int S, const int32_t* d_pos,
                  const int32_t* d_pad, bool per_layer_cache, const std::atomic<bool>* abort);
  // Final norm + lm_head on rows (backend int32 [R]) of x [*, D]; logits into host vector.
  void head(const float* x, const int32_t* d_rows, int R, std::vector<float>& out);
  // Feeds ids at the end of the generation cache; returns the logits of the last one.
  void feed(const std::vector<int32_t>& ids, std::vector<float>& logits, const std::atomic<bool>* abort);

  std::unique_ptr<Backend> be_;
  Arch arch_;
  std::vector<TensorSpec> specs_;
  std::vector<void*> weights_;  // owned backend allocations
  WeightRef embed_, norm_, lm_head_;
  std::vector<Layer> layers_;
  float* inv_freq_ = nullptr;
  bool loaded_ = false;

  // workspace (grown on demand, reused)
  Buf x_, xn_, q_, k_, v_, att_, gate_, up_, ids_, pos_, pad_, rows_, hrows_, logits_, kc_tmp_, vc_tmp_;
  // generation KV cache: per layer [1, Hkv, S, hd]
  std::vector<float*> kc_, vc_;
  int cache_len_ = 0;
};

}  // namespace re
