// model.cpp — see model.h. The forward pass of a decoder:
//   x = embed(ids)                                     (GPT-2: + wpe[pos])
//   per layer: x += o_proj(attn(rope(q), rope(k), v)) on norm1(x)      (GPT-2: no RoPE, biases on q/k/v/o)
//              x += down(silu(gate)·up) on norm2(x)                    (GPT-2: c_proj(gelu(c_fc)) + biases)
//   logits = lm_head(norm_f(x)) only at the rows asked for.
// norm = RMSNorm (Llama) or LayerNorm with bias (GPT-2).
#include "model.h"
#include "cpu/isa.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <numeric>

#include "philox.h"

namespace re {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

struct File {
  FILE* f = nullptr;
  ~File() {
    if (f) std::fclose(f);
  }
};

// out[c, r] = in[r, c] for in [R, C], in 64×64 tiles (cache friendly for GPT-2 XL's 1600×6400 matrices).
template <typename T>
void transpose_blocked(const T* in, T* out, int64_t R, int64_t C) {
  constexpr int64_t B = 64;
  for (int64_t r0 = 0; r0 < R; r0 += B)
    for (int64_t c0 = 0; c0 < C; c0 += B) {
      const int64_t r1 = std::min(R, r0 + B), c1 = std::min(C, c0 + B);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) out[c * R + r] = in[r * C + c];
    }
}

// The bytes of an [R, C] tensor of T, transposed (typed copies keep the access well defined).
template <typename T>
std::vector<uint8_t> transpose_bytes(const std::vector<uint8_t>& in, int64_t R, int64_t C) {
  std::vector<T> a((size_t)(R * C)), b((size_t)(R * C));
  std::memcpy(a.data(), in.data(), a.size() * sizeof(T));
  transpose_blocked(a.data(), b.data(), R, C);
  std::vector<uint8_t> out(in.size());
  std::memcpy(out.data(), b.data(), b.size() * sizeof(T));
  return out;
}

// Blocks are scanned with the CPU kernel of the best ISA level here (cpu/kernels.inc any_exp_ge*,
// vectorised); only a block that holds a hit is walked again to find the first element.
template <typename U>
int64_t first_nonfinite_t(const uint8_t* p, uint64_t n, U mask, U thr) {
  const CpuKernels& k = cpu_kernels(cpu_isa_detected());  // resolved once per call, not per block
  constexpr uint64_t BLK = 16384;
  for (uint64_t b0 = 0; b0 < n; b0 += BLK) {
    const uint64_t b1 = std::min<uint64_t>(n, b0 + BLK);
    const bool any = sizeof(U) == 4 ? k.any_exp_ge32(p + b0 * 4, b1 - b0, (uint32_t)mask, (uint32_t)thr)
                                    : k.any_exp_ge16(p + b0 * 2, b1 - b0, (uint16_t)mask, (uint16_t)thr);
    if (any)
      for (uint64_t i = b0; i < b1; ++i) {
        U u;
        std::memcpy(&u, p + i * sizeof(U), sizeof(U));
        if ((U)(u & mask) >= thr) return (int64_t)i;
      }
  }
  return -1;
}

}  // namespace

int64_t first_nonfinite(const void* p, uint64_t n, DType dt) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  switch (dt) {
    // F32/BF16: biased exponent >= 127 + 27, i.e. |w| >= 2^27 (~1.3e8), Inf and NaN included; F16: Inf/NaN
    case DType::F32: return first_nonfinite_t<uint32_t>(b, n, 0x7f800000u, 154u << 23);
    case DType::BF16: return first_nonfinite_t<uint16_t>(b, n, (uint16_t)0x7f80u, (uint16_t)(154u << 7));
    case DType::F16: return first_nonfinite_t<uint16_t>(b, n, (uint16_t)0x7c00u, (uint16_t)0x7c00u);
  }
  return -1;
}

namespace {
// ERR_SAFETENSORS naming the tensor and the element when `bytes` of `name` hold a NaN, an Inf or a value
// past 2^27 in magnitude (see first_nonfinite).
void check_finite_bytes(const std::string& name, const std::string& file, const void* p, uint64_t bytes, DType dt,
                        uint64_t first_elem) {
  const uint64_t n = bytes / dtype_size(dt);
  const int64_t i = first_nonfinite(p, n, dt);
  if (i >= 0)
    fail(RE_ERR_SAFETENSORS, "tensor " + name + " in " + file + " holds a NaN, an Inf or a value of magnitude >= 2^27 (element " +
                                 std::to_string(first_elem + (uint64_t)i) +
                                 "): the weights are corrupt (pass checkFinite: false to load them anyway)");
}
}  // namespace

Model::Model(std::unique_ptr<Backend> be, Arch arch, std::vector<TensorSpec> specs)
    : be_(std::move(be)), arch_(std::move(arch)), specs_(std::move(specs)) {
  const Arch& a = arch_;
  auto bad = [](const std::string& m) { fail(RE_ERR_ARG, "invalid model architecture: " + m); };
  if (a.D <= 0 || a.F <= 0 || a.L <= 0 || a.Hq <= 0 || a.Hkv <= 0 || a.hd <= 0 || a.V <= 0 || a.S <= 0)
    bad("every size must be positive");
  if (a.Hq % a.Hkv) bad("num_attention_heads must be a multiple of num_key_value_heads");
  if (a.kind == ArchKind::GPT2) {
    if (a.Hq != a.Hkv) bad("gpt2 has as many key/value heads as query heads");
    if (a.Hq * a.hd != a.D) bad("gpt2 needs n_head * head_dim == n_embd");
    if (a.npos < a.S) bad("gpt2 needs n_positions >= the context length");
    if (!(a.eps > 0)) bad("layer_norm_epsilon must be positive");
    return;
  }
  if (a.kind != ArchKind::Llama) bad("unknown architecture kind");
  if (a.hd % 2) bad("head_dim must be even");
  if ((int)a.inv_freq.size() != a.hd / 2) bad("invFreq must have head_dim/2 entries");
  if (!(a.eps > 0)) bad("rms_norm_eps must be positive");
}

Model::~Model() {
  for (void* p : weights_) be_->free(p);
  for (Buf* b : {&x_, &xn_, &q_, &k_, &v_, &att_, &gate_, &up_, &ids_, &pos_, &pad_, &rows_, &hrows_, &logits_,
                 &kc_tmp_, &vc_tmp_})
    be_->free(b->p);
  for (auto& [id, st] : sides_) be_->free(st.buf);
  for (Buf& b : edit_bufs_) be_->free(b.p);
  for (float* p : kc_) be_->free(p);
  for (float* p : vc_) be_->free(p);
  be_->free(inv_freq_);
}

float* Model::ensure(Buf& b, size_t bytes) {
  if (b.bytes < bytes) {
    be_->free(b.p);
    b.p = nullptr;
    b.bytes = 0;
    b.p = be_->alloc(bytes);
    b.bytes = bytes;
  }
  return static_cast<float*>(b.p);
}

void Model::load(const std::atomic<bool>* abort) {
  if (loaded_) return;
  const Arch& a = arch_;
  if (gpt2()) {
    load_gpt2(abort);
    return;
  }
  // The tensors this architecture needs, with their shapes.
  std::map<std::string, std::vector<int64_t>> want;
  want["model.embed_tokens.weight"] = {a.V, a.D};
  want["model.norm.weight"] = {a.D};
  if (!a.tie) want["lm_head.weight"] = {a.V, a.D};
  const int64_t qd = (int64_t)a.Hq * a.hd, kd = (int64_t)a.Hkv * a.hd;
  for (int l = 0; l < a.L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    want[p + "input_layernorm.weight"] = {a.D};
    want[p + "post_attention_layernorm.weight"] = {a.D};
    want[p + "self_attn.q_proj.weight"] = {qd, a.D};
    want[p + "self_attn.k_proj.weight"] = {kd, a.D};
    want[p + "self_attn.v_proj.weight"] = {kd, a.D};
    want[p + "self_attn.o_proj.weight"] = {a.D, qd};
    if (a.qkv_bias) {
      want[p + "self_attn.q_proj.bias"] = {qd};
      want[p + "self_attn.k_proj.bias"] = {kd};
      want[p + "self_attn.v_proj.bias"] = {kd};
    }
    want[p + "mlp.gate_proj.weight"] = {a.F, a.D};
    want[p + "mlp.up_proj.weight"] = {a.F, a.D};
    want[p + "mlp.down_proj.weight"] = {a.D, a.F};
  }
  std::map<std::string, const TensorSpec*> by_name;
  for (const auto& s : specs_) by_name[s.name] = &s;
  for (const auto& [name, shape] : want) {
    auto it = by_name.find(name);
    if (it == by_name.end()) fail("ERR_MISSING_TENSOR", "missing tensor " + name);
    const TensorSpec& s = *it->second;
    if (s.shape != shape)
      fail("ERR_SHAPE", "tensor " + name + " has shape " + shape_str(s.shape) + ", expected " + shape_str(shape));
    uint64_t n = 1;
    for (int64_t d : s.shape) n *= (uint64_t)d;
    if (n * dtype_size(s.dt) != s.nbytes)
      fail(RE_ERR_SAFETENSORS, "tensor " + name + ": byte size " + std::to_string(s.nbytes) + " does not match " +
                                   shape_str(s.shape) + " x " + dtype_name(s.dt));
  }

  // Read each tensor in chunks through a staging buffer, upload to the backend.
  std::map<std::string, WeightRef> refs;
  std::vector<char> stage;
  std::map<std::string, std::unique_ptr<File>> files;
  for (const auto& [name, shape] : want) {
    check_abort(abort);
    const TensorSpec& s = *by_name[name];
    auto& fh = files[s.file];
    if (!fh) {
      fh = std::make_unique<File>();
      fh->f = std::fopen(s.file.c_str(), "rb");
      if (!fh->f) fail(RE_ERR_IO, "cannot open " + s.file);
    }
    if (std::fseek(fh->f, 0, SEEK_END) != 0) fail(RE_ERR_IO, "cannot seek in " + s.file);
    const long long fsize = std::ftell(fh->f);
    if (fsize < 0 || s.offset + s.nbytes > (uint64_t)fsize)
      fail(RE_ERR_SAFETENSORS, "tensor " + name + " lies past the end of " + s.file);
    void* dst = be_->alloc(s.nbytes);
    weights_.push_back(dst);
    if (std::fseek(fh->f, (long)s.offset, SEEK_SET) != 0) fail(RE_ERR_IO, "cannot seek in " + s.file);
    const size_t chunk = 1u << 20;  // 1 MiB: the finite check and the upload read it while it is in cache
    stage.resize(std::min<uint64_t>(chunk, std::max<uint64_t>(s.nbytes, 1)));
    for (uint64_t done = 0; done < s.nbytes;) {
      const size_t n = (size_t)std::min<uint64_t>(chunk, s.nbytes - done);
      if (std::fread(stage.data(), 1, n, fh->f) != n) fail(RE_ERR_IO, "short read of tensor " + name + " in " + s.file);
      if (check_finite_) check_finite_bytes(name, s.file, stage.data(), n, s.dt, done / dtype_size(s.dt));
      be_->upload(static_cast<char*>(dst) + done, stage.data(), n);
      done += n;
    }
    refs[name] = WeightRef{dst, s.dt, true};
  }
  embed_ = refs["model.embed_tokens.weight"];
  norm_ = refs["model.norm.weight"];
  lm_head_ = a.tie ? embed_ : refs["lm_head.weight"];
  layers_.resize(a.L);
  for (int l = 0; l < a.L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer& y = layers_[l];
    y.ln1 = refs[p + "input_layernorm.weight"];
    y.ln2 = refs[p + "post_attention_layernorm.weight"];
    y.q = refs[p + "self_attn.q_proj.weight"];
    y.k = refs[p + "self_attn.k_proj.weight"];
    y.v = refs[p + "self_attn.v_proj.weight"];
    y.o = refs[p + "self_attn.o_proj.weight"];
    if (a.qkv_bias) {
      y.qb = refs[p + "self_attn.q_proj.bias"];
      y.kb = refs[p + "self_attn.k_proj.bias"];
      y.vb = refs[p + "self_attn.v_proj.bias"];
    }
    y.gate = refs[p + "mlp.gate_proj.weight"];
    y.up = refs[p + "mlp.up_proj.weight"];
    y.down = refs[p + "mlp.down_proj.weight"];
  }
  inv_freq_ = static_cast<float*>(be_->alloc(a.inv_freq.size() * 4));
  be_->upload(inv_freq_, a.inv_freq.data(), a.inv_freq.size() * 4);
  be_->sync();
  loaded_ = true;
}

// GPT-2: canonical tensor names (lib/config.ts strips a "transformer." prefix). Conv1D weights are
// stored [in, out]: each is read whole, transposed on the host into the nn.Linear [out, in] layout and
// uploaded; c_attn (and its bias) is split into q, k, v. The dtype stays as stored.
void Model::load_gpt2(const std::atomic<bool>* abort) {
  const Arch& a = arch_;
  const int64_t D = a.D, F = a.F;
  std::map<std::string, std::vector<int64_t>> want;
  std::map<std::string, bool> conv1d;  // names stored [in, out]
  want["wte.weight"] = {a.V, D};
  want["wpe.weight"] = {a.npos, D};
  want["ln_f.weight"] = {D};
  want["ln_f.bias"] = {D};
  for (int l = 0; l < a.L; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    for (const char* n : {"ln_1", "ln_2"}) {
      want[p + n + ".weight"] = {D};
      want[p + n + ".bias"] = {D};
    }
    want[p + "attn.c_attn.weight"] = {D, 3 * D};
    want[p + "attn.c_attn.bias"] = {3 * D};
    want[p + "attn.c_proj.weight"] = {D, D};
    want[p + "attn.c_proj.bias"] = {D};
    want[p + "mlp.c_fc.weight"] = {D, F};
    want[p + "mlp.c_fc.bias"] = {F};
    want[p + "mlp.c_proj.weight"] = {F, D};
    want[p + "mlp.c_proj.bias"] = {D};
    for (const char* n : {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"})
      conv1d[p + n] = true;
  }
  std::map<std::string, const TensorSpec*> by_name;
  for (const auto& s : specs_) by_name[s.name] = &s;
  for (const auto& [name, shape] : want) {
    auto it = by_name.find(name);
    if (it == by_name.end()) fail("ERR_MISSING_TENSOR", "missing tensor " + name);
    const TensorSpec& s = *it->second;
    if (s.shape != shape)
      fail("ERR_SHAPE", "tensor " + name + " has shape " + shape_str(s.shape) + ", expected " + shape_str(shape) +
                            (conv1d.count(name) ? " (GPT-2 Conv1D layout [in, out])" : ""));
    uint64_t n = 1;
    for (int64_t d : s.shape) n *= (uint64_t)d;
    if (n * dtype_size(s.dt) != s.nbytes)
      fail(RE_ERR_SAFETENSORS, "tensor " + name + ": byte size " + std::to_string(s.nbytes) + " does not match " +
                                   shape_str(s.shape) + " x " + dtype_name(s.dt));
  }
  std::map<std::string, std::unique_ptr<File>> files;
  auto read_all = [&](const std::string& name, std::vector<uint8_t>& out) -> const TensorSpec& {
    const TensorSpec& s = *by_name[name];
    auto& fh = files[s.file];
    if (!fh) {
      fh = std::make_unique<File>();
      fh->f = std::fopen(s.file.c_str(), "rb");
      if (!fh->f) fail(RE_ERR_IO, "cannot open " + s.file);
    }
    if (std::fseek(fh->f, 0, SEEK_END) != 0) fail(RE_ERR_IO, "cannot seek in " + s.file);
    const long long fsize = std::ftell(fh->f);
    if (fsize < 0 || s.offset + s.nbytes > (uint64_t)fsize)
      fail(RE_ERR_SAFETENSORS, "tensor " + name + " lies past the end of " + s.file);
    if (std::fseek(fh->f, (long)s.offset, SEEK_SET) != 0) fail(RE_ERR_IO, "cannot seek in " + s.file);
    out.resize(s.nbytes);
    if (s.nbytes && std::fread(out.data(), 1, s.nbytes, fh->f) != s.nbytes)
      fail(RE_ERR_IO, "short read of tensor " + name + " in " + s.file);
    if (check_finite_) check_finite_bytes(name, s.file, out.data(), s.nbytes, s.dt, 0);
    return s;
  };
  auto upload = [&](const uint8_t* p, size_t bytes, DType dt) {
    void* dst = be_->alloc(bytes);
    weights_.push_back(dst);
    be_->upload(dst, p, bytes);
    return WeightRef{dst, dt, true};
  };
  // [R, C] -> [C, R] for elements of `es` bytes (2 or 4)
  auto transpose = [](const std::vector<uint8_t>& in, int64_t R, int64_t C, size_t es) {
    return es == 4 ? transpose_bytes<uint32_t>(in, R, C) : transpose_bytes<uint16_t>(in, R, C);
  };
  std::vector<uint8_t> raw;
  auto plain = [&](const std::string& name) {
    const TensorSpec& s = read_all(name, raw);
    return upload(raw.data(), raw.size(), s.dt);
  };
  auto linear_w = [&](const std::string& name) {  // Conv1D [in, out] -> Linear [out, in]
    const TensorSpec& s = read_all(name, raw);
    std::vector<uint8_t> t = transpose(raw, s.shape[0], s.shape[1], dtype_size(s.dt));
    return upload(t.data(), t.size(), s.dt);
  };
  embed_ = plain("wte.weight");
  pos_embed_ = plain("wpe.weight");
  norm_ = plain("ln_f.weight");
  norm_b_ = plain("ln_f.bias");
  lm_head_ = embed_;  // tied
  layers_.resize(a.L);
  for (int l = 0; l < a.L; ++l) {
    check_abort(abort);
    const std::string p = "h." + std::to_string(l) + ".";
    Layer& y = layers_[l];
    y.ln1 = plain(p + "ln_1.weight");
    y.ln1b = plain(p + "ln_1.bias");
    y.ln2 = plain(p + "ln_2.weight");
    y.ln2b = plain(p + "ln_2.bias");
    {
      const TensorSpec& s = read_all(p + "attn.c_attn.weight", raw);
      const size_t es = dtype_size(s.dt), piece = (size_t)D * D * es;
      std::vector<uint8_t> t = transpose(raw, D, 3 * D, es);  // [3D, D]: rows q | k | v
      y.q = upload(t.data(), piece, s.dt);
      y.k = upload(t.data() + piece, piece, s.dt);
      y.v = upload(t.data() + 2 * piece, piece, s.dt);
      const TensorSpec& sb = read_all(p + "attn.c_attn.bias", raw);
      const size_t bpiece = (size_t)D * dtype_size(sb.dt);
      y.qb = upload(raw.data(), bpiece, sb.dt);
      y.kb = upload(raw.data() + bpiece, bpiece, sb.dt);
      y.vb = upload(raw.data() + 2 * bpiece, bpiece, sb.dt);
    }
    y.o = linear_w(p + "attn.c_proj.weight");
    y.ob = plain(p + "attn.c_proj.bias");
    y.up = linear_w(p + "mlp.c_fc.weight");
    y.upb = plain(p + "mlp.c_fc.bias");
    y.down = linear_w(p + "mlp.c_proj.weight");
    y.downb = plain(p + "mlp.c_proj.bias");
  }
  be_->sync();
  loaded_ = true;
}

void Model::embed(float* x, const int32_t* d_ids, const int32_t* d_pos, int n, float* tmp) {
  be_->embedding(x, d_ids, embed_, n, arch_.D);
  if (gpt2()) {
    be_->embedding(tmp, d_pos, pos_embed_, n, arch_.D);
    be_->add(x, x, tmp, (size_t)n * arch_.D);
  }
}

void Model::norm(float* y, const float* x, WeightRef w, WeightRef b, int M) {
  if (gpt2()) be_->layernorm(y, x, w, b, M, arch_.D, arch_.eps);
  else be_->rmsnorm(y, x, w, M, arch_.D, arch_.eps);
}

void Model::norm_bwd(float* dx, const float* dy, const float* x, WeightRef w, int M, bool accumulate) {
  if (gpt2()) be_->layernorm_bwd(dx, dy, x, w, M, arch_.D, arch_.eps, accumulate);
  else be_->rmsnorm_bwd(dx, dy, x, w, M, arch_.D, arch_.eps, accumulate);
}

void Model::pos_rotate(float* q, float* k, const int32_t* d_pos, int BT) {
  if (gpt2()) return;
  be_->rope(q, d_pos, inv_freq_, BT, arch_.Hq, arch_.hd);
  be_->rope(k, d_pos, inv_freq_, BT, arch_.Hkv, arch_.hd);
}

void Model::check_tokens(const std::vector<int32_t>& ids) const {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= arch_.V)
      fail(RE_ERR_ARG, "token id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                           " is outside the vocabulary [0, " + std::to_string(arch_.V) + ")");
}

void Model::run_layers(int l0, int l1, float* x, int B, int T, int P, int S, const int32_t* d_pos,
                       const int32_t* d_pad, bool per_layer_cache, const std::atomic<bool>* abort,
                       const Route* route) {
  const Arch& a = arch_;
  const int BT = B * T, qd = a.Hq * a.hd, kd = a.Hkv * a.hd;
  float* xn = ensure(xn_, (size_t)BT * a.D * 4);
  float* q = ensure(q_, (size_t)BT * qd * 4);
  float* k = ensure(k_, (size_t)BT * kd * 4);
  float* v = ensure(v_, (size_t)BT * kd * 4);
  float* att = ensure(att_, (size_t)BT * qd * 4);
  float* gate = ensure(gate_, (size_t)BT * a.F * 4);
  float* up = gpt2() ? nullptr : ensure(up_, (size_t)BT * a.F * 4);
  float *kc = nullptr, *vc = nullptr;
  if (!per_layer_cache) {
    kc = ensure(kc_tmp_, (size_t)B * kd * S * 4);
    vc = ensure(vc_tmp_, (size_t)B * kd * S * 4);
  }
  const float scale = (float)(1.0 / std::sqrt((double)a.hd));
  for (int l = l0; l < l1; ++l) {
    check_abort(abort);
    const Layer& w = layers_[l];
    if (per_layer_cache) {
      kc = kc_[l];
      vc = vc_[l];
    }
    norm(xn, x, w.ln1, w.ln1b, BT);
    be_->linear(q, xn, w.q, w.qb, BT, qd, a.D, false);
    be_->linear(k, xn, w.k, w.kb, BT, kd, a.D, false);
    be_->linear(v, xn, w.v, w.vb, BT, kd, a.D, false);
    pos_rotate(q, k, d_pos, BT);
    be_->kv_store(kc, vc, k, v, B, T, a.Hkv, a.hd, S, P);
    be_->attention(att, q, kc, vc, d_pad, B, T, a.Hq, a.Hkv, a.hd, S, P, scale);
    be_->linear(x, att, w.o, w.ob, BT, a.D, qd, true);
    norm(xn, x, w.ln2, w.ln2b, BT);
    // Routed rows use their side-memory slot in place of the store's matrix (value: down_proj / c_proj;
    // key: GPT-2 c_fc); consecutive rows with the same choice share a call.
    const bool routed = route && route->side && store(route->side).layer == l;
    const bool route_key = routed && store(route->side).target == 1;
    auto by_rows = [&](const WeightRef& basew, const std::function<void(int, int, WeightRef)>& run) {
      for (int b0 = 0; b0 < B;) {
        int b1 = b0 + 1;
        while (b1 < B && route->slot[b1] == route->slot[b0]) ++b1;
        const int s = route->slot[b0];
        run(b0, b1, s >= 0 ? WeightRef{slot_ptr(route->side, s), DType::F32} : basew);
        b0 = b1;
      }
    };
    if (gpt2()) {
      if (route_key) {
        by_rows(w.up, [&](int b0, int b1, WeightRef W) {
          be_->linear(gate + (size_t)b0 * T * a.F, xn + (size_t)b0 * T * a.D, W, w.upb, (b1 - b0) * T, a.F, a.D, false);
        });
      } else {
        be_->linear(gate, xn, w.up, w.upb, BT, a.F, a.D, false);
      }
      be_->gelu(gate, gate, (size_t)BT * a.F);
    } else {
      be_->linear(gate, xn, w.gate, WeightRef{}, BT, a.F, a.D, false);
      be_->linear(up, xn, w.up, WeightRef{}, BT, a.F, a.D, false);
      be_->swiglu(gate, gate, up, (size_t)BT * a.F);
    }
    if (routed && !route_key) {
      by_rows(w.down, [&](int b0, int b1, WeightRef W) {
        be_->linear(x + (size_t)b0 * T * a.D, gate + (size_t)b0 * T * a.F, W, w.downb, (b1 - b0) * T, a.D, a.F, true);
      });
    } else {
      be_->linear(x, gate, w.down, w.downb, BT, a.D, a.F, true);
    }
  }
}

void Model::head(const float* x, const int32_t* d_rows, int R, std::vector<float>& out) {
  const Arch& a = arch_;
  float* h = ensure(hrows_, (size_t)R * a.D * 4);
  float* lg = ensure(logits_, (size_t)R * a.V * 4);
  be_->gather_rows(h, x, d_rows, R, a.D);
  norm(h, h, norm_, norm_b_, R);
  be_->linear(lg, h, lm_head_, WeightRef{}, R, a.V, a.D, false);
  out.resize((size_t)R * a.V);
  be_->download(out.data(), lg, out.size() * 4);
  be_->sync();
}

std::vector<float> Model::forward(const std::vector<int32_t>& tokens, int B, int T, const std::vector<int32_t>& pad,
                                  const std::vector<int32_t>& rows, const std::atomic<bool>* abort,
                                  const Route& route) {
  if (!loaded_) fail(RE_ERR_ARG, "the model is not loaded");
  const Arch& a = arch_;
  if (B <= 0 || T <= 0) fail(RE_ERR_ARG, "forward: B and T must be positive");
  if ((size_t)B * T != tokens.size()) fail(RE_ERR_ARG, "forward: tokens must hold B*T ids");
  if ((int)pad.size() != B) fail(RE_ERR_ARG, "forward: pad must hold B entries");
  if (T > a.S)
    fail(RE_ERR_CONTEXT, "sequence length " + std::to_string(T) + " exceeds the context length " + std::to_string(a.S));
  for (int b = 0; b < B; ++b)
    if (pad[b] < 0 || pad[b] >= T) fail(RE_ERR_ARG, "forward: pad[" + std::to_string(b) + "] must be in [0, T)");
  for (int32_t r : rows)
    if (r < 0 || r >= B * T) fail(RE_ERR_ARG, "forward: logit row " + std::to_string(r) + " is out of range");
  check_tokens(tokens);
  if (route.side) {
    const SideStore& st = store(route.side);
    if ((int)route.slot.size() != B) fail(RE_ERR_ARG, "forward: the route needs one slot per row");
    for (int32_t s : route.slot)
      if (s < -1 || s >= st.count) fail(RE_ERR_ARG, "forward: route slot " + std::to_string(s) + " does not exist");
  }
  const int BT = B * T;
  std::vector<int32_t> pos(BT);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) pos[b * T + t] = std::max(0, t - pad[b]);
  int32_t* d_ids = reinterpret_cast<int32_t*>(ensure(ids_, (size_t)BT * 4));
  int32_t* d_pos = reinterpret_cast<int32_t*>(ensure(pos_, (size_t)BT * 4));
  int32_t* d_pad = reinterpret_cast<int32_t*>(ensure(pad_, (size_t)B * 4));
  int32_t* d_rows = reinterpret_cast<int32_t*>(ensure(rows_, std::max<size_t>(rows.size(), 1) * 4));
  be_->upload(d_ids, tokens.data(), (size_t)BT * 4);
  be_->upload(d_pos, pos.data(), (size_t)BT * 4);
  be_->upload(d_pad, pad.data(), (size_t)B * 4);
  if (!rows.empty()) be_->upload(d_rows, rows.data(), rows.size() * 4);
  float* x = ensure(x_, (size_t)BT * a.D * 4);
  embed(x, d_ids, d_pos, BT, gpt2() ? ensure(xn_, (size_t)BT * a.D * 4) : nullptr);
  run_layers(0, a.L, x, B, T, 0, T, d_pos, d_pad, false, abort, route.side ? &route : nullptr);
  std::vector<float> out;
  if (rows.empty()) {
    be_->sync();
    return out;
  }
  head(x, d_rows, (int)rows.size(), out);
  return out;
}

void Model::feed(const std::vector<int32_t>& ids, std::vector<float>& logits, const std::atomic<bool>* abort,
                 const Route* route) {
  const Arch& a = arch_;
  const int T = (int)ids.size(), P = cache_len_;
  std::vector<int32_t> pos(T);
  for (int t = 0; t < T; ++t) pos[t] = P + t;
  const int32_t zero = 0, last = T - 1;
  int32_t* d_ids = reinterpret_cast<int32_t*>(ensure(ids_, (size_t)T * 4));
  int32_t* d_pos = reinterpret_cast<int32_t*>(ensure(pos_, (size_t)T * 4));
  int32_t* d_pad = reinterpret_cast<int32_t*>(ensure(pad_, 4));
  int32_t* d_rows = reinterpret_cast<int32_t*>(ensure(rows_, 4));
  be_->upload(d_ids, ids.data(), (size_t)T * 4);
  be_->upload(d_pos, pos.data(), (size_t)T * 4);
  be_->upload(d_pad, &zero, 4);
  be_->upload(d_rows, &last, 4);
  float* x = ensure(x_, (size_t)T * a.D * 4);
  embed(x, d_ids, d_pos, T, gpt2() ? ensure(xn_, (size_t)T * a.D * 4) : nullptr);
  run_layers(0, a.L, x, 1, T, P, a.S, d_pos, d_pad, true, abort, route);
  head(x, d_rows, 1, logits);
  cache_len_ = P + T;
}

std::vector<int32_t> Model::generate(const std::vector<int32_t>& ids, const SampleOptions& o,
                                     const std::atomic<bool>* abort, const Route& route) {
  if (!loaded_) fail(RE_ERR_ARG, "the model is not loaded");
  const Arch& a = arch_;
  if (route.side) {
    if (route.slot.size() != 1) fail(RE_ERR_ARG, "generate: the route needs exactly one slot");
    if (route.slot[0] < -1 || route.slot[0] >= store(route.side).count)
      fail(RE_ERR_ARG, "generate: route slot " + std::to_string(route.slot[0]) + " does not exist");
  }
  const Route* rp = route.side ? &route : nullptr;
  if (ids.empty()) fail(RE_ERR_ARG, "generate: at least one input token is needed");
  if (o.max_tokens < 0) fail(RE_ERR_ARG, "generate: maxTokens must be >= 0");
  check_tokens(ids);
  if (o.reset) cache_len_ = 0;
  if (cache_len_ + (int64_t)ids.size() > a.S)
    fail(RE_ERR_CONTEXT, "generate: " + std::to_string(cache_len_ + ids.size()) +
                             " tokens exceed the context length " + std::to_string(a.S));
  if (kc_.empty()) {
    const size_t per = (size_t)a.Hkv * a.S * a.hd * 4;
    for (int l = 0; l < a.L; ++l) {
      kc_.push_back(static_cast<float*>(be_->alloc(per)));
      vc_.push_back(static_cast<float*>(be_->alloc(per)));
    }
  }
  std::vector<int32_t> out;
  std::vector<float> logits;
  try {
    feed(ids, logits, abort, rp);
    for (int i = 0; i < o.max_tokens; ++i) {
      check_abort(abort);
      const int32_t tok = sample_token(logits.data(), a.V, o, o.step0 + i);
      out.push_back(tok);
      if (std::find(o.eos.begin(), o.eos.end(), tok) != o.eos.end()) break;
      if (i + 1 == o.max_tokens || cache_len_ + 1 > a.S) break;
      feed({tok}, logits, abort, rp);
    }
  } catch (...) {
    cache_len_ = 0;  // the cache may hold a half-written step: make the next call start over
    throw;
  }
  return out;
}

int32_t sample_token(const float* logits, int V, const SampleOptions& o, uint64_t step) {
  if (!(o.temperature > 0.f)) {
    int best = 0;
    for (int i = 1; i < V; ++i)
      if (logits[i] > logits[best]) best = i;
    return best;
  }
  std::vector<int32_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  auto by_logit = [&](int32_t x, int32_t y) { return logits[x] > logits[y] || (logits[x] == logits[y] && x < y); };
  int n = V;
  if (o.top_k > 0 && o.top_k < V) {
    std::nth_element(idx.begin(), idx.begin() + o.top_k, idx.end(), by_logit);
    n = o.top_k;
  }
  std::sort(idx.begin(), idx.begin() + n, by_logit);
  std::vector<double> p(n);
  const double mx = logits[idx[0]];
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += (p[i] = std::exp(((double)logits[idx[i]] - mx) / o.temperature));
  if (o.top_p < 1.f) {
    double c = 0;
    int keep = n;
    for (int i = 0; i < n; ++i) {
      c += p[i] / sum;
      if (c >= o.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
    sum = 0;
    for (int i = 0; i < n; ++i) sum += p[i];
  }
  const double u = (double)philox_uniform(o.seed, step) * sum;
  double c = 0;
  for (int i = 0; i < n; ++i) {
    c += p[i];
    if (u < c) return idx[i];
  }
  return idx[n - 1];
}

}  // namespace re
