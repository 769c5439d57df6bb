// optest.cpp — re::run_op: run one backend op on host inputs (the op tests, test/ops*.test.ts, CPU vs CUDA).
// The op table is generated from ops.def: every op there needs its op_<name> here (a missing one fails to compile).
//
// Works with any Backend. Per call: validate every argument (ERR_INVALID_ARG on anything missing,
// mis-sized, non-integral or out of range), upload inputs, allocate each output with kGuard floats
// of sentinel on both sides (ggml test-backend-ops style) and the interior pre-filled with a NaN
// pattern (so an element the op forgot to write shows up as NaN), run, sync, download, compare the
// guards bit for bit, free everything (also on error).
//
// Argument names (the JS side passes Float32Array -> f32, Int32Array -> i32, Uint16Array -> u16,
// number -> num, string -> str):
//   linear      x[M*K], W[N*K] (f32 when dtype=="F32", else u16 bits), bias[N] optional (dtype
//               bias_dtype, default dtype), y[M*N] initial when accumulate=1; M N K accumulate dtype -> y
//   rmsnorm     x[M*D], w[D] (dtype); M D eps inplace(0|1) -> y
//   embedding   ids[n] (0 <= id < V), table[V*D] (dtype); D -> y[n*D]
//   rope        x[n_tok*n_head*head_dim], pos[n_tok], inv_freq[head_dim/2]; n_tok n_head head_dim -> x
//   kv_store    k,v[B*Tn*Hkv*hd], kc,vc[B*Hkv*S*hd] optional initial (zeros); B Tn Hkv hd S P -> kc vc
//   attention   q[B*Tn*Hq*hd], kc,vc[B*Hkv*S*hd], pad[B]; B Tn Hq Hkv hd S P scale(default 1/sqrt(hd)) -> out
//   swiglu      gate[n], up[n]; alias(0 none | 1 y=gate | 2 y=up) -> y
//   add         a[n], b[n]; alias(0 | 1 y=a | 2 y=b) -> y
//   gather_rows x[R*D], idx[n] (0 <= idx < R); D -> y[n*D]
// Editing ops (outputs that accumulate take their initial value as an input of the same name):
//   scatter_add_rows  x[n*D], idx[n] (distinct, 0 <= idx < R), y[R*D] initial; D -> y
//   linear_dx    dy[M*N], W[N*K] (dtype), dx[M*K] initial when accumulate=1; M N K accumulate dtype -> dx
//   rmsnorm_bwd  dy[M*D], x[M*D], w[D] (dtype), dx initial when accumulate=1; M D eps accumulate -> dx
//   rope_bwd     dx[n_tok*n_head*head_dim] (in place), pos[n_tok], inv_freq[head_dim/2]; n_tok n_head head_dim -> dx
//   attention_bwd dout,q[B*T*Hq*hd], kc,vc[B*Hkv*T*hd], pad[B] (0..T); B T Hq Hkv hd scale(default
//               1/sqrt(hd)) -> dq[B*T*Hq*hd] dk,dv[B*T*Hkv*hd]
//   swiglu_bwd   dy[n], gate[n], up[n] -> dgate dup
//   cross_entropy logits[R*V], labels[R] (< V; negative = no label), weight[R]; R V -> loss[R] dlogits[R*V]
//   act_dist     os[n*nm*D], om[n*D]; n nm D act(0|1|2) -> d[nm*n]
//   act_dist_bwd gd[n], os[n*D], om[n*D], dos initial when accumulate=1; n D act accumulate -> dos
//   masked_sgd   Wp[N*K] initial, G[M*N], A[M*K], Wv[N*K] (dtype); M(>=0) N K, seed (integer < 2^53) or
//               seed_lo + seed_hi (uint32 each), rho lr wd clamp -> Wp
//   ties_merge   shards[k*n] (shard i = elements i*n ..), weights[k], base[n] (dtype); k density(0..1),
//               alias (-1 none, else out starts as shard `alias` and is passed as that shard) -> out[n]
// GPT-2 family ops:
//   layernorm    x[M*D], w[D] (dtype), b[D] optional (dtype); M D eps inplace(0|1) -> y
//   layernorm_bwd dy[M*D], x[M*D], w[D] (dtype), dx initial when accumulate=1; M D eps accumulate -> dx
//   gelu         x[n]; inplace(0|1) -> y
//   gelu_bwd     dy[n], x[n]; inplace(0|1: dx aliases dy) -> dx
//   add_bias     y[M*N] initial, b[N] (dtype); M N -> y
// REPAIR kernels:
//   kd_loss      feat[b*D]; b(>=2) D lambda theta -> out[1+b] dfeat[b*D]
//   kl_distill   logits[rows*V], student[P] (distinct, 0 <= s < rows), teacher[P] (0 <= t < rows), w[P],
//               dlogits[rows*V] optional initial (zeros); rows V P(>=0) T(>0) -> loss[P] dlogits[rows*V]
//   loss_aware_merge shards[k*n], weights[k], base[n] (dtype); k, n optional (must match base), alias (-1 none,
//               else out starts as shard `alias` and is passed as that shard) -> out[n]
#include "optest.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace re {
namespace {

constexpr size_t kGuard = 64;                 // floats of sentinel each side of every output
constexpr uint32_t kGuardBits = 0x7FBAD5EDu;  // a NaN payload no op produces
constexpr uint32_t kUnsetBits = 0x7FC0DEADu;  // interior before the op runs (NaN if left unwritten)
constexpr int64_t kMaxElems = (int64_t)1 << 30;

[[noreturn]] void bad(const std::string& op, const std::string& msg) { fail(RE_ERR_ARG, "runOp " + op + ": " + msg); }

// ---- argument access -------------------------------------------------------------------------

struct Args {
  const std::string& op;
  const OpArgs& a;

  bool has_num(const char* k) const { return a.num.count(k) != 0; }

  double num(const char* k) const {
    auto it = a.num.find(k);
    if (it == a.num.end()) bad(op, std::string("missing number '") + k + "'");
    if (!std::isfinite(it->second)) bad(op, std::string("'") + k + "' is not finite");
    return it->second;
  }
  double num_or(const char* k, double def) const { return has_num(k) ? num(k) : def; }

  int integer(const char* k, int64_t lo, int64_t hi) const {
    double v = num(k);
    if (v != std::floor(v)) bad(op, std::string("'") + k + "' must be an integer");
    if (v < (double)lo || v > (double)hi)
      bad(op, std::string("'") + k + "' = " + std::to_string((long long)v) + " is out of range [" +
                  std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return (int)v;
  }
  int integer_or(const char* k, int def, int64_t lo, int64_t hi) const { return has_num(k) ? integer(k, lo, hi) : def; }

  bool flag(const char* k) const { return integer_or(k, 0, 0, 1) != 0; }

  const std::vector<float>& f32(const char* k, int64_t n) const {
    auto it = a.f32.find(k);
    if (it == a.f32.end()) bad(op, std::string("missing Float32Array '") + k + "'");
    check_len(k, (int64_t)it->second.size(), n);
    return it->second;
  }
  const std::vector<float>* f32_opt(const char* k, int64_t n) const {
    auto it = a.f32.find(k);
    if (it == a.f32.end()) return nullptr;
    check_len(k, (int64_t)it->second.size(), n);
    return &it->second;
  }
  const std::vector<int32_t>& i32(const char* k, int64_t n) const {
    auto it = a.i32.find(k);
    if (it == a.i32.end()) bad(op, std::string("missing Int32Array '") + k + "'");
    check_len(k, (int64_t)it->second.size(), n);
    return it->second;
  }
  // Length not known in advance (ids, idx): returned as is, must be non-empty.
  const std::vector<int32_t>& i32_any(const char* k) const {
    auto it = a.i32.find(k);
    if (it == a.i32.end()) bad(op, std::string("missing Int32Array '") + k + "'");
    if (it->second.empty()) bad(op, std::string("'") + k + "' is empty");
    return it->second;
  }
  const std::vector<float>& f32_any(const char* k) const {
    auto it = a.f32.find(k);
    if (it == a.f32.end()) bad(op, std::string("missing Float32Array '") + k + "'");
    if (it->second.empty()) bad(op, std::string("'") + k + "' is empty");
    return it->second;
  }

  DType dtype(const char* k, DType def) const {
    auto it = a.str.find(k);
    if (it == a.str.end()) return def;
    if (it->second == "F32") return DType::F32;
    if (it->second == "F16") return DType::F16;
    if (it->second == "BF16") return DType::BF16;
    bad(op, std::string("'") + k + "' must be F32, F16 or BF16 (got '" + it->second + "')");
  }

  // A weight in its stored dtype: f32 map for F32, u16 bits for F16/BF16. n < 0: any non-empty length
  // (returned in *len). Returns the raw bytes.
  std::vector<uint8_t> weight(const char* k, DType dt, int64_t n, bool required, bool* present = nullptr,
                              int64_t* len = nullptr) const {
    std::vector<uint8_t> bytes;
    if (present) *present = false;
    if (dt == DType::F32) {
      auto it = a.f32.find(k);
      if (it == a.f32.end()) {
        if (required) bad(op, std::string("missing Float32Array '") + k + "' (dtype F32)");
        if (a.u16.count(k)) bad(op, std::string("'") + k + "' is a Uint16Array but its dtype is F32");
        return bytes;
      }
      if (n >= 0) check_len(k, (int64_t)it->second.size(), n);
      if (len) *len = (int64_t)it->second.size();
      bytes.resize(it->second.size() * 4);
      if (!bytes.empty()) std::memcpy(bytes.data(), it->second.data(), bytes.size());
    } else {
      auto it = a.u16.find(k);
      if (it == a.u16.end()) {
        if (required) bad(op, std::string("missing Uint16Array '") + k + "' (dtype " + dtype_str(dt) + ")");
        if (a.f32.count(k)) bad(op, std::string("'") + k + "' is a Float32Array but its dtype is " + dtype_str(dt));
        return bytes;
      }
      if (n >= 0) check_len(k, (int64_t)it->second.size(), n);
      if (len) *len = (int64_t)it->second.size();
      bytes.resize(it->second.size() * 2);
      if (!bytes.empty()) std::memcpy(bytes.data(), it->second.data(), bytes.size());
    }
    if (present) *present = true;
    return bytes;
  }

  void check_len(const char* k, int64_t got, int64_t want) const {
    if (got != want)
      bad(op, std::string("'") + k + "' has " + std::to_string(got) + " elements, expected " + std::to_string(want));
  }

  static const char* dtype_str(DType t) { return t == DType::F32 ? "F32" : t == DType::F16 ? "F16" : "BF16"; }
};

int64_t prod(const std::string& op, std::initializer_list<int64_t> dims) {
  int64_t p = 1;
  for (int64_t d : dims) {
    p *= d;
    if (p > kMaxElems) bad(op, "tensor too large for an op test");
  }
  return p;
}

// ---- backend buffers (all freed when the Session ends, error or not) --------------------------

struct Out {
  std::string name;
  float* base = nullptr;  // start of the guarded allocation
  float* p = nullptr;     // what the op sees
  size_t n = 0;
};

class Session {
 public:
  explicit Session(Backend& be) : be_(be) {}
  ~Session() {
    for (void* p : ptrs_) be_.free(p);
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void* input_bytes(const void* host, size_t bytes) {
    void* p = be_.alloc(bytes);
    ptrs_.push_back(p);
    if (bytes) be_.upload(p, host, bytes);
    return p;
  }
  const float* input(const std::vector<float>& v) { return (const float*)input_bytes(v.data(), v.size() * 4); }
  const int32_t* input(const std::vector<int32_t>& v) { return (const int32_t*)input_bytes(v.data(), v.size() * 4); }
  WeightRef weight(const std::vector<uint8_t>& bytes, DType dt) {
    WeightRef w;
    w.p = input_bytes(bytes.data(), bytes.size());
    w.dt = dt;
    return w;
  }

  // A guarded output of n floats; `init` (n floats) or the NaN pattern fills the interior.
  float* output(const std::string& name, size_t n, const std::vector<float>* init = nullptr) {
    std::vector<float> host(n + 2 * kGuard);
    fill_bits(host.data(), kGuard, kGuardBits);
    if (init)
      std::memcpy(host.data() + kGuard, init->data(), n * 4);
    else
      fill_bits(host.data() + kGuard, n, kUnsetBits);
    fill_bits(host.data() + kGuard + n, kGuard, kGuardBits);
    void* base = be_.alloc(host.size() * 4);
    ptrs_.push_back(base);
    be_.upload(base, host.data(), host.size() * 4);
    Out o;
    o.name = name;
    o.base = (float*)base;
    o.p = o.base + kGuard;
    o.n = n;
    outs_.push_back(o);
    return o.p;
  }

  OpResult finish() {
    be_.sync();
    OpResult r;
    r.guard_ok = true;
    for (const Out& o : outs_) {
      std::vector<float> host(o.n + 2 * kGuard);
      be_.download(host.data(), o.base, host.size() * 4);
      if (!bits_are(host.data(), kGuard, kGuardBits) || !bits_are(host.data() + kGuard + o.n, kGuard, kGuardBits))
        r.guard_ok = false;
      r.out[o.name].assign(host.begin() + kGuard, host.begin() + kGuard + o.n);
    }
    return r;
  }

 private:
  static void fill_bits(float* p, size_t n, uint32_t bits) {
    for (size_t i = 0; i < n; ++i) std::memcpy(p + i, &bits, 4);
  }
  static bool bits_are(const float* p, size_t n, uint32_t bits) {
    for (size_t i = 0; i < n; ++i) {
      uint32_t b;
      std::memcpy(&b, p + i, 4);
      if (b != bits) return false;
    }
    return true;
  }

  Backend& be_;
  std::vector<void*> ptrs_;
  std::vector<Out> outs_;
};

constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();

// ---- ops -------------------------------------------------------------------------------------

OpResult op_linear(Backend& be, const Args& A) {
  const int M = A.integer("M", 1, kMaxDim), N = A.integer("N", 1, kMaxDim), K = A.integer("K", 1, kMaxDim);
  const DType dt = A.dtype("dtype", DType::F32);
  const DType bdt = A.dtype("bias_dtype", dt);
  const bool accumulate = A.flag("accumulate");
  const auto& x = A.f32("x", prod(A.op, {M, K}));
  const auto Wb = A.weight("W", dt, prod(A.op, {N, K}), true);
  bool has_bias = false;
  const auto bb = A.weight("bias", bdt, N, false, &has_bias);
  const std::vector<float>* y0 = nullptr;
  if (accumulate) y0 = &A.f32("y", prod(A.op, {M, N}));
  else if (A.a.f32.count("y")) bad(A.op, "'y' given but accumulate is 0");

  Session s(be);
  const float* dx = s.input(x);
  WeightRef W = s.weight(Wb, dt), bias;
  if (has_bias) bias = s.weight(bb, bdt);
  float* y = s.output("y", (size_t)M * N, y0);
  be.linear(y, dx, W, bias, M, N, K, accumulate);
  return s.finish();
}

OpResult op_rmsnorm(Backend& be, const Args& A) {
  const int M = A.integer("M", 1, kMaxDim), D = A.integer("D", 1, kMaxDim);
  const double eps = A.num("eps");
  if (!(eps >= 0)) bad(A.op, "'eps' must be >= 0");
  const DType dt = A.dtype("dtype", DType::F32);
  const bool inplace = A.flag("inplace");
  const auto& x = A.f32("x", prod(A.op, {M, D}));
  const auto wb = A.weight("w", dt, D, true);

  Session s(be);
  WeightRef w = s.weight(wb, dt);
  if (inplace) {
    float* y = s.output("y", x.size(), &x);
    be.rmsnorm(y, y, w, M, D, (float)eps);
  } else {
    const float* dx = s.input(x);
    float* y = s.output("y", x.size());
    be.rmsnorm(y, dx, w, M, D, (float)eps);
  }
  return s.finish();
}

OpResult op_embedding(Backend& be, const Args& A) {
  const int D = A.integer("D", 1, kMaxDim);
  const DType dt = A.dtype("dtype", DType::F32);
  const auto& ids = A.i32_any("ids");
  const int n = (int)ids.size();
  if (A.has_num("n") && A.integer("n", 1, kMaxDim) != n) bad(A.op, "'n' does not match ids.length");
  int64_t tlen = 0;
  const auto tb = A.weight("table", dt, -1, true, nullptr, &tlen);
  if (tlen == 0 || tlen % D != 0) bad(A.op, "'table' length must be a positive multiple of D");
  const int64_t V = tlen / D;
  for (int i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= V) bad(A.op, "ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) + " is out of range [0, " + std::to_string(V) + ")");
  prod(A.op, {n, D});

  Session s(be);
  WeightRef table = s.weight(tb, dt);
  const int32_t* dids = s.input(ids);
  float* y = s.output("y", (size_t)n * D);
  be.embedding(y, dids, table, n, D);
  return s.finish();
}

OpResult op_rope(Backend& be, const Args& A) {
  const int T = A.integer("n_tok", 1, kMaxDim), H = A.integer("n_head", 1, kMaxDim);
  const int hd = A.integer("head_dim", 2, kMaxDim);
  if (hd % 2) bad(A.op, "'head_dim' must be even");
  const auto& x = A.f32("x", prod(A.op, {T, H, hd}));
  const auto& pos = A.i32("pos", T);
  const auto& inv = A.f32("inv_freq", hd / 2);
  for (int t = 0; t < T; ++t)
    if (pos[t] < 0) bad(A.op, "pos[" + std::to_string(t) + "] is negative");

  Session s(be);
  const int32_t* dpos = s.input(pos);
  const float* dinv = s.input(inv);
  float* dx = s.output("x", x.size(), &x);
  be.rope(dx, dpos, dinv, T, H, hd);
  return s.finish();
}

OpResult op_kv_store(Backend& be, const Args& A) {
  const int B = A.integer("B", 1, kMaxDim), Tn = A.integer("Tn", 1, kMaxDim), Hkv = A.integer("Hkv", 1, kMaxDim);
  const int hd = A.integer("hd", 1, kMaxDim), S = A.integer("S", 1, kMaxDim), P = A.integer("P", 0, kMaxDim);
  if ((int64_t)P + Tn > S) bad(A.op, "P + Tn exceeds the cache capacity S");
  const int64_t nkv = prod(A.op, {B, Tn, Hkv, hd}), ncache = prod(A.op, {B, Hkv, S, hd});
  const auto& k = A.f32("k", nkv);
  const auto& v = A.f32("v", nkv);
  std::vector<float> zeros;
  const std::vector<float>* kc0 = A.f32_opt("kc", ncache);
  const std::vector<float>* vc0 = A.f32_opt("vc", ncache);
  if (!kc0 || !vc0) zeros.assign((size_t)ncache, 0.f);

  Session s(be);
  const float* dk = s.input(k);
  const float* dv = s.input(v);
  float* kc = s.output("kc", (size_t)ncache, kc0 ? kc0 : &zeros);
  float* vc = s.output("vc", (size_t)ncache, vc0 ? vc0 : &zeros);
  be.kv_store(kc, vc, dk, dv, B, Tn, Hkv, hd, S, P);
  return s.finish();
}

OpResult op_attention(Backend& be, const Args& A) {
  const int B = A.integer("B", 1, kMaxDim), Tn = A.integer("Tn", 1, kMaxDim);
  const int Hq = A.integer("Hq", 1, kMaxDim), Hkv = A.integer("Hkv", 1, kMaxDim);
  const int hd = A.integer("hd", 1, kMaxDim), S = A.integer("S", 1, kMaxDim), P = A.integer("P", 0, kMaxDim);
  if (Hq % Hkv) bad(A.op, "Hq must be a multiple of Hkv");
  if ((int64_t)P + Tn > S) bad(A.op, "P + Tn exceeds the cache capacity S");
  const double scale = A.num_or("scale", 1.0 / std::sqrt((double)hd));
  const int64_t nq = prod(A.op, {B, Tn, Hq, hd}), ncache = prod(A.op, {B, Hkv, S, hd});
  const auto& q = A.f32("q", nq);
  const auto& kc = A.f32("kc", ncache);
  const auto& vc = A.f32("vc", ncache);
  const auto& pad = A.i32("pad", B);
  for (int b = 0; b < B; ++b)
    if (pad[b] < 0 || pad[b] > S) bad(A.op, "pad[" + std::to_string(b) + "] is out of range [0, S]");

  Session s(be);
  const float* dq = s.input(q);
  const float* dkc = s.input(kc);
  const float* dvc = s.input(vc);
  const int32_t* dpad = s.input(pad);
  float* out = s.output("out", (size_t)nq);
  be.attention(out, dq, dkc, dvc, dpad, B, Tn, Hq, Hkv, hd, S, P, (float)scale);
  return s.finish();
}

// swiglu / add: y = f(a, b) with optional aliasing of y onto an input.
template <typename Run>
OpResult binary_op(Backend& be, const Args& A, const char* an, const char* bn, Run run) {
  const auto& a = A.f32_any(an);
  const auto& b = A.f32(bn, (int64_t)a.size());
  if ((int64_t)a.size() > kMaxDim) bad(A.op, "too many elements");
  const int n = (int)a.size();
  if (A.has_num("n") && A.integer("n", 1, kMaxDim) != n) bad(A.op, "'n' does not match the input length");
  const int alias = A.integer_or("alias", 0, 0, 2);

  Session s(be);
  if (alias == 1) {
    const float* db = s.input(b);
    float* y = s.output("y", (size_t)n, &a);
    run(y, y, db, n);
  } else if (alias == 2) {
    const float* da = s.input(a);
    float* y = s.output("y", (size_t)n, &b);
    run(y, da, y, n);
  } else {
    const float* da = s.input(a);
    const float* db = s.input(b);
    float* y = s.output("y", (size_t)n);
    run(y, da, db, n);
  }
  return s.finish();
}

OpResult op_swiglu(Backend& be, const Args& A) {
  return binary_op(be, A, "gate", "up", [&](float* y, const float* g, const float* u, int n) { be.swiglu(y, g, u, n); });
}
OpResult op_add(Backend& be, const Args& A) {
  return binary_op(be, A, "a", "b", [&](float* y, const float* a, const float* b, int n) { be.add(y, a, b, n); });
}

OpResult op_gather_rows(Backend& be, const Args& A) {
  const int D = A.integer("D", 1, kMaxDim);
  const auto& x = A.f32_any("x");
  if (x.size() % (size_t)D) bad(A.op, "'x' length must be a multiple of D");
  const int64_t R = (int64_t)x.size() / D;
  const auto& idx = A.i32_any("idx");
  const int n = (int)idx.size();
  if (A.has_num("n") && A.integer("n", 1, kMaxDim) != n) bad(A.op, "'n' does not match idx.length");
  for (int i = 0; i < n; ++i)
    if (idx[i] < 0 || idx[i] >= R) bad(A.op, "idx[" + std::to_string(i) + "] = " + std::to_string(idx[i]) + " is out of range [0, " + std::to_string(R) + ")");
  prod(A.op, {n, D});

  Session s(be);
  const float* dx = s.input(x);
  const int32_t* didx = s.input(idx);
  float* y = s.output("y", (size_t)n * D);
  be.gather_rows(y, dx, didx, n, D);
  return s.finish();
}


// ---- editing ops -------------------------------------------------------------------------------

// An output that the op accumulates into (or updates in place): its initial value is the input `name`.
const std::vector<float>* initial_if(const Args& A, const char* name, int64_t n, bool accumulate) {
  if (accumulate) return &A.f32(name, n);
  if (A.a.f32.count(name)) bad(A.op, std::string("'") + name + "' given but accumulate is 0");
  return nullptr;
}

OpResult op_scatter_add_rows(Backend& be, const Args& A) {
  const int D = A.integer("D", 1, kMaxDim);
  const auto& idx = A.i32_any("idx");
  const int n = (int)idx.size();
  if (A.has_num("n") && A.integer("n", 1, kMaxDim) != n) bad(A.op, "'n' does not match idx.length");
  const auto& x = A.f32("x", prod(A.op, {n, D}));
  const auto& y0 = A.f32_any("y");
  if (y0.size() % (size_t)D) bad(A.op, "'y' length must be a multiple of D");
  const int64_t R = (int64_t)y0.size() / D;
  std::vector<uint8_t> seen((size_t)R, 0);
  for (int i = 0; i < n; ++i) {
    if (idx[i] < 0 || idx[i] >= R)
      bad(A.op, "idx[" + std::to_string(i) + "] = " + std::to_string(idx[i]) + " is out of range [0, " + std::to_string(R) + ")");
    if (seen[(size_t)idx[i]]++) bad(A.op, "idx entries must be distinct (" + std::to_string(idx[i]) + " repeats)");
  }

  Session s(be);
  const float* dx = s.input(x);
  const int32_t* didx = s.input(idx);
  float* y = s.output("y", y0.size(), &y0);
  be.scatter_add_rows(y, dx, didx, n, D);
  return s.finish();
}

OpResult op_linear_dx(Backend& be, const Args& A) {
  const int M = A.integer("M", 1, kMaxDim), N = A.integer("N", 1, kMaxDim), K = A.integer("K", 1, kMaxDim);
  const DType dt = A.dtype("dtype", DType::F32);
  const bool accumulate = A.flag("accumulate");
  const auto& dy = A.f32("dy", prod(A.op, {M, N}));
  const auto Wb = A.weight("W", dt, prod(A.op, {N, K}), true);
  const auto* dx0 = initial_if(A, "dx", prod(A.op, {M, K}), accumulate);

  Session s(be);
  const float* ddy = s.input(dy);
  WeightRef W = s.weight(Wb, dt);
  float* dx = s.output("dx", (size_t)M * K, dx0);
  be.linear_dx(dx, ddy, W, M, N, K, accumulate);
  return s.finish();
}

OpResult op_rmsnorm_bwd(Backend& be, const Args& A) {
  const int M = A.integer("M", 1, kMaxDim), D = A.integer("D", 1, kMaxDim);
  const double eps = A.num("eps");
  if (!(eps >= 0)) bad(A.op, "'eps' must be >= 0");
  const DType dt = A.dtype("dtype", DType::F32);
  const bool accumulate = A.flag("accumulate");
  const int64_t nx = prod(A.op, {M, D});
  const auto& dy = A.f32("dy", nx);
  const auto& x = A.f32("x", nx);
  const auto wb = A.weight("w", dt, D, true);
  const auto* dx0 = initial_if(A, "dx", nx, accumulate);

  Session s(be);
  const float* ddy = s.input(dy);
  const float* dxx = s.input(x);
  WeightRef w = s.weight(wb, dt);
  float* dx = s.output("dx", (size_t)nx, dx0);
  be.rmsnorm_bwd(dx, ddy, dxx, w, M, D, (float)eps, accumulate);
  return s.finish();
}

OpResult op_rope_bwd(Backend& be, const Args& A) {
  const int T = A.integer("n_tok", 1, kMaxDim), H = A.integer("n_head", 1, kMaxDim);
  const int hd = A.integer("head_dim", 2, kMaxDim);
  if (hd % 2) bad(A.op, "'head_dim' must be even");
  const auto& dx0 = A.f32("dx", prod(A.op, {T, H, hd}));
  const auto& pos = A.i32("pos", T);
  const auto& inv = A.f32("inv_freq", hd / 2);
  for (int t = 0; t < T; ++t)
    if (pos[t] < 0) bad(A.op, "pos[" + std::to_string(t) + "] is negative");

  Session s(be);
  const int32_t* dpos = s.input(pos);
  const float* dinv = s.input(inv);
  float* dx = s.output("dx", dx0.size(), &dx0);
  be.rope_bwd(dx, dpos, dinv, T, H, hd);
  return s.finish();
}

OpResult op_attention_bwd(Backend& be, const Args& A) {
  const int B = A.integer("B", 1, kMaxDim), T = A.integer("T", 1, kMaxDim);
  const int Hq = A.integer("Hq", 1, kMaxDim), Hkv = A.integer("Hkv", 1, kMaxDim);
  const int hd = A.integer("hd", 1, kMaxDim);
  if (Hq % Hkv) bad(A.op, "Hq must be a multiple of Hkv");
  const double scale = A.num_or("scale", 1.0 / std::sqrt((double)hd));
  const int64_t nq = prod(A.op, {B, T, Hq, hd}), nkv = prod(A.op, {B, Hkv, T, hd});
  const auto& dout = A.f32("dout", nq);
  const auto& q = A.f32("q", nq);
  const auto& kc = A.f32("kc", nkv);
  const auto& vc = A.f32("vc", nkv);
  const auto& pad = A.i32("pad", B);
  for (int b = 0; b < B; ++b)
    if (pad[b] < 0 || pad[b] > T) bad(A.op, "pad[" + std::to_string(b) + "] is out of range [0, T]");

  Session s(be);
  const float* ddout = s.input(dout);
  const float* dq_in = s.input(q);
  const float* dkc = s.input(kc);
  const float* dvc = s.input(vc);
  const int32_t* dpad = s.input(pad);
  float* dq = s.output("dq", (size_t)nq);
  float* dk = s.output("dk", (size_t)nkv);
  float* dv = s.output("dv", (size_t)nkv);
  be.attention_bwd(dq, dk, dv, ddout, dq_in, dkc, dvc, dpad, B, T, Hq, Hkv, hd, (float)scale);
  return s.finish();
}

OpResult op_swiglu_bwd(Backend& be, const Args& A) {
  const auto& dy = A.f32_any("dy");
  if ((int64_t)dy.size() > kMaxDim) bad(A.op, "too many elements");
  const int n = (int)dy.size();
  if (A.has_num("n") && A.integer("n", 1, kMaxDim) != n) bad(A.op, "'n' does not match dy.length");
  const auto& gate = A.f32("gate", n);
  const auto& up = A.f32("up", n);

  Session s(be);
  const float* ddy = s.input(dy);
  const float* dg = s.input(gate);
  const float* du = s.input(up);
  float* dgate = s.output("dgate", (size_t)n);
  float* dup = s.output("dup", (size_t)n);
  be.swiglu_bwd(dgate, dup, ddy, dg, du, n);
  return s.finish();
}

OpResult op_cross_entropy(Backend& be, const Args& A) {
  const int R = A.integer("R", 1, kMaxDim), V = A.integer("V", 1, kMaxDim);
  const auto& logits = A.f32("logits", prod(A.op, {R, V}));
  const auto& labels = A.i32("labels", R);
  const auto& weight = A.f32("weight", R);
  for (int r = 0; r < R; ++r)
    if (labels[r] >= V) bad(A.op, "labels[" + std::to_string(r) + "] = " + std::to_string(labels[r]) + " is >= V");

  Session s(be);
  const float* dl = s.input(logits);
  const int32_t* dlab = s.input(labels);
  const float* dw = s.input(weight);
  float* loss = s.output("loss", (size_t)R);
  float* dlogits = s.output("dlogits", (size_t)R * V);
  be.cross_entropy(loss, dlogits, dl, dlab, dw, R, V);
  return s.finish();
}

OpResult op_act_dist(Backend& be, const Args& A) {
  const int n = A.integer("n", 1, kMaxDim), nm = A.integer("nm", 1, kMaxDim), D = A.integer("D", 1, kMaxDim);
  const int act = A.integer("act", 0, 2);
  const auto& os = A.f32("os", prod(A.op, {n, nm, D}));
  const auto& om = A.f32("om", prod(A.op, {n, D}));

  Session s(be);
  const float* dos = s.input(os);
  const float* dom = s.input(om);
  float* d = s.output("d", (size_t)nm * n);
  be.act_dist(d, dos, dom, n, nm, D, act);
  return s.finish();
}

OpResult op_act_dist_bwd(Backend& be, const Args& A) {
  const int n = A.integer("n", 1, kMaxDim), D = A.integer("D", 1, kMaxDim);
  const int act = A.integer("act", 0, 2);
  const bool accumulate = A.flag("accumulate");
  const int64_t nx = prod(A.op, {n, D});
  const auto& gd = A.f32("gd", n);
  const auto& os = A.f32("os", nx);
  const auto& om = A.f32("om", nx);
  const auto* dos0 = initial_if(A, "dos", nx, accumulate);

  Session s(be);
  const float* dgd = s.input(gd);
  const float* dos_in = s.input(os);
  const float* dom = s.input(om);
  float* dos = s.output("dos", (size_t)nx, dos0);
  be.act_dist_bwd(dos, dgd, dos_in, dom, n, D, act, accumulate);
  return s.finish();
}

uint64_t seed_arg(const Args& A) {
  const bool whole = A.has_num("seed"), lo = A.has_num("seed_lo"), hi = A.has_num("seed_hi");
  if (whole && (lo || hi)) bad(A.op, "give either 'seed' or 'seed_lo' + 'seed_hi', not both");
  if (whole) {
    const double v = A.num("seed");
    if (v != std::floor(v) || v < 0 || v >= 9007199254740992.0) bad(A.op, "'seed' must be an integer in [0, 2^53)");
    return (uint64_t)v;
  }
  if (lo != hi) bad(A.op, "'seed_lo' and 'seed_hi' must be given together");
  if (!lo) bad(A.op, "missing number 'seed' (or 'seed_lo' + 'seed_hi')");
  auto u32 = [&](const char* k) {
    const double v = A.num(k);
    if (v != std::floor(v) || v < 0 || v > 4294967295.0) bad(A.op, std::string("'") + k + "' must be an integer in [0, 2^32)");
    return (uint64_t)v;
  };
  return u32("seed_lo") | (u32("seed_hi") << 32);
}

OpResult op_masked_sgd(Backend& be, const Args& A) {
  const int M = A.integer("M", 0, kMaxDim), N = A.integer("N", 1, kMaxDim), K = A.integer("K", 1, kMaxDim);
  const DType dt = A.dtype("dtype", DType::F32);
  const uint64_t seed = seed_arg(A);
  const double rho = A.num("rho"), lr = A.num("lr"), wd = A.num("wd"), clamp = A.num("clamp");
  if (rho < 0) bad(A.op, "'rho' must be >= 0");
  const int64_t nw = prod(A.op, {N, K});
  const auto& Wp0 = A.f32("Wp", nw);
  const auto& G = A.f32("G", prod(A.op, {M, N}));
  const auto& Am = A.f32("A", prod(A.op, {M, K}));
  const auto Wvb = A.weight("Wv", dt, nw, true);

  Session s(be);
  const float* dG = s.input(G);
  const float* dA = s.input(Am);
  WeightRef Wv = s.weight(Wvb, dt);
  float* Wp = s.output("Wp", (size_t)nw, &Wp0);
  be.masked_sgd(Wp, dG, dA, Wv, M, N, K, seed, (float)rho, (float)lr, (float)wd, (float)clamp);
  return s.finish();
}

OpResult op_ties_merge(Backend& be, const Args& A) {
  const int k = A.integer("k", 0, 4096);
  const DType dt = A.dtype("dtype", DType::F32);
  const double density = A.num("density");
  if (density < 0 || density > 1) bad(A.op, "'density' must be in [0, 1]");
  int64_t n = 0;
  const auto bb = A.weight("base", dt, -1, true, nullptr, &n);
  if (n <= 0) bad(A.op, "'base' is empty");
  const int64_t total = prod(A.op, {k, n});
  static const std::vector<float> none;
  const std::vector<float>& sh = k > 0 ? A.f32("shards", total) : none;
  const std::vector<float>& w = k > 0 ? A.f32("weights", k) : none;
  const int alias = A.integer_or("alias", -1, -1, k - 1);

  Session s(be);
  WeightRef base = s.weight(bb, dt);
  std::vector<const float*> ptrs((size_t)k);
  std::vector<float> shard0;
  if (alias >= 0) shard0.assign(sh.begin() + (size_t)alias * n, sh.begin() + (size_t)(alias + 1) * n);
  float* out = s.output("out", (size_t)n, alias >= 0 ? &shard0 : nullptr);
  for (int i = 0; i < k; ++i) {
    if (i == alias) {
      ptrs[i] = out;
      continue;
    }
    ptrs[i] = (const float*)s.input_bytes(sh.data() + (size_t)i * n, (size_t)n * 4);
  }
  be.ties_merge(out, base, ptrs.data(), w.data(), k, (size_t)n, (float)density);
  return s.finish();
}

// ---- GPT-2 family ops -----------------------------------------------------------------------------

OpResult op_layernorm(Backend& be, const Args& A) {
  const int M = A.integer("M", 1, kMaxDim), D = A.integer("D", 1, kMaxDim);
  const double eps = A.num("eps");
  if (!(eps >= 0)) bad(A.op, "'eps' must be >= 0");
  const DType dt = A.dtype("dtype", DType::F32);
  const bool inplace = A.flag("inplace");
  const auto& x = A.f32("x", prod(A.op, {M, D}));
  const auto wb = A.weight("w", dt, D, true);
  bool has_b = false;
  const auto bb = A.weight("b", dt, D, false, &has_b);

  Session s(be);
  WeightRef w = s.weight(wb, dt), b;
  if (has_b) b = s.weight(bb, dt);
  if (inplace) {
    float* y = s.output("y", x.size(), &x);
    be.layernorm(y, y, w, b, M, D, (float)eps);
  } else {
    const float* dx = s.input(x);
    float* y = s.output("y", x.size());
    be.layernorm(y, dx, w, b, M, D, (float)eps);
  }
  return s.finish();
}

OpResult op_layernorm_bwd(Backend& be, const Args& A) {
  const int M = A.integer("M", 1, kMaxDim), D = A.integer("D", 1, kMaxDim);
  const double eps = A.num("eps");
  if (!(eps >= 0)) bad(A.op, "'eps' must be >= 0");
  const DType dt = A.dtype("dtype", DType::F32);
  const bool accumulate = A.flag("accumulate");
  const int64_t nx = prod(A.op, {M, D});
  const auto& dy = A.f32("dy", nx);
  const auto& x = A.f32("x", nx);
  const auto wb = A.weight("w", dt, D, true);
  const auto* dx0 = initial_if(A, "dx", nx, accumulate);

  Session s(be);
  const float* ddy = s.input(dy);
  const float* dxx = s.input(x);
  WeightRef w = s.weight(wb, dt);
  float* dx = s.output("dx", (size_t)nx, dx0);
  be.layernorm_bwd(dx, ddy, dxx, w, M, D, (float)eps, accumulate);
  return s.finish();
}

OpResult op_gelu(Backend& be, const Args& A) {
  const auto& x = A.f32_any("x");
  if ((int64_t)x.size() > kMaxDim) bad(A.op, "too many elements");
  const int n = (int)x.size();
  const bool inplace = A.flag("inplace");
  Session s(be);
  if (inplace) {
    float* y = s.output("y", (size_t)n, &x);
    be.gelu(y, y, n);
  } else {
    const float* dx = s.input(x);
    float* y = s.output("y", (size_t)n);
    be.gelu(y, dx, n);
  }
  return s.finish();
}

OpResult op_gelu_bwd(Backend& be, const Args& A) {
  const auto& dy = A.f32_any("dy");
  if ((int64_t)dy.size() > kMaxDim) bad(A.op, "too many elements");
  const int n = (int)dy.size();
  const auto& x = A.f32("x", n);
  const bool inplace = A.flag("inplace");
  Session s(be);
  const float* dxx = s.input(x);
  if (inplace) {
    float* dx = s.output("dx", (size_t)n, &dy);
    be.gelu_bwd(dx, dx, dxx, n);
  } else {
    const float* ddy = s.input(dy);
    float* dx = s.output("dx", (size_t)n);
    be.gelu_bwd(dx, ddy, dxx, n);
  }
  return s.finish();
}

OpResult op_add_bias(Backend& be, const Args& A) {
  const int M = A.integer("M", 1, kMaxDim), N = A.integer("N", 1, kMaxDim);
  const DType dt = A.dtype("dtype", DType::F32);
  const auto& y0 = A.f32("y", prod(A.op, {M, N}));
  const auto bb = A.weight("b", dt, N, true);
  Session s(be);
  WeightRef b = s.weight(bb, dt);
  float* y = s.output("y", y0.size(), &y0);
  be.add_bias(y, b, M, N);
  return s.finish();
}

// ---- REPAIR kernels ------------------------------------------------------------------------------

OpResult op_kd_loss(Backend& be, const Args& A) {
  const int b = A.integer("b", 2, 65535), D = A.integer("D", 1, kMaxDim);
  const double lambda = A.num("lambda"), theta = A.num("theta");
  const int64_t nf = prod(A.op, {b, D});
  const auto& feat = A.f32("feat", nf);

  Session s(be);
  const float* df = s.input(feat);
  float* out = s.output("out", (size_t)b + 1);
  float* dfeat = s.output("dfeat", (size_t)nf);
  be.kd_loss(out, dfeat, df, b, D, (float)lambda, (float)theta);
  return s.finish();
}

OpResult op_kl_distill(Backend& be, const Args& A) {
  const int rows = A.integer("rows", 1, kMaxDim), V = A.integer("V", 1, kMaxDim), P = A.integer("P", 0, kMaxDim);
  const float T = (float)A.num("T");
  if (!(T > 0) || !std::isfinite(T)) bad(A.op, "'T' must be > 0 and finite as an f32");
  const int64_t nl = prod(A.op, {rows, V});
  const auto& logits = A.f32("logits", nl);
  const auto& student = A.i32("student", P);
  const auto& teacher = A.i32("teacher", P);
  const auto& w = A.f32("w", P);
  const std::vector<float>* g0 = A.f32_opt("dlogits", nl);
  std::vector<char> seen((size_t)rows, 0);
  for (int i = 0; i < P; ++i) {
    if (student[i] < 0 || student[i] >= rows)
      bad(A.op, "student[" + std::to_string(i) + "] = " + std::to_string(student[i]) + " is out of range [0, " +
                    std::to_string(rows) + ")");
    if (teacher[i] < 0 || teacher[i] >= rows)
      bad(A.op, "teacher[" + std::to_string(i) + "] = " + std::to_string(teacher[i]) + " is out of range [0, " +
                    std::to_string(rows) + ")");
    if (seen[student[i]]) bad(A.op, "student row " + std::to_string(student[i]) + " appears twice");
    seen[student[i]] = 1;
  }
  const std::vector<float> zeros(g0 ? 0 : (size_t)nl, 0.0f);

  Session s(be);
  const float* dl = s.input(logits);
  const int32_t* ds = s.input(student);
  const int32_t* dt = s.input(teacher);
  const float* dw = s.input(w);
  float* loss = s.output("loss", (size_t)P);
  float* dlogits = s.output("dlogits", (size_t)nl, g0 ? g0 : &zeros);
  be.kl_distill(loss, dlogits, dl, ds, dt, dw, P, V, T);
  return s.finish();
}

OpResult op_loss_aware_merge(Backend& be, const Args& A) {
  const int k = A.integer("k", 0, 4096);
  const DType dt = A.dtype("dtype", DType::F32);
  int64_t n = 0;
  const auto bb = A.weight("base", dt, -1, true, nullptr, &n);
  if (n <= 0) bad(A.op, "'base' is empty");
  if (A.has_num("n") && A.integer("n", 1, kMaxElems) != n) bad(A.op, "'n' does not match base.length");
  const int64_t total = prod(A.op, {k, n});
  static const std::vector<float> none;
  const std::vector<float>& sh = k > 0 ? A.f32("shards", total) : none;
  const std::vector<float>& w = k > 0 ? A.f32("weights", k) : none;
  const int alias = A.integer_or("alias", -1, -1, k - 1);

  Session s(be);
  WeightRef base = s.weight(bb, dt);
  std::vector<const float*> ptrs((size_t)k);
  std::vector<float> shard0;
  if (alias >= 0) shard0.assign(sh.begin() + (size_t)alias * n, sh.begin() + (size_t)(alias + 1) * n);
  float* out = s.output("out", (size_t)n, alias >= 0 ? &shard0 : nullptr);
  for (int i = 0; i < k; ++i) {
    if (i == alias) {
      ptrs[i] = out;
      continue;
    }
    ptrs[i] = (const float*)s.input_bytes(sh.data() + (size_t)i * n, (size_t)n * 4);
  }
  be.loss_aware_merge(out, base, ptrs.data(), w.data(), k, (size_t)n);
  return s.finish();
}

// elementwise_big: the size_t element-count path of the elementwise ops past 2^31 elements, without host copies
// of the whole tensor (test/elementwise_big.test.ts). One backend buffer of n floats (two for swiglu_bwd) is
// filled with x = 1 + (i mod 7)/8 in 56 MiB uploads; the op runs in place (every input aliased to it, which each
// op allows); 16 elements are read back at the start, just below and above each multiple of 2^31 below n, and at
// the end, with their indices. An int count would wrap negative (the CPU loop then does nothing, a CUDA launch
// covers nothing or fails), leaving those samples at their inputs.
//   num n (elements, >= 16), str kind: add | swiglu | gelu | gelu_bwd | swiglu_bwd
//   out: "index" (as floats, exact below 2^24 only: also "index_hi"/"index_lo" = index / 2^16 and index mod 2^16),
//        "x" (the input there), "y" (the output there; swiglu_bwd: dgate then, in "y2", dup)
OpResult op_elementwise_big(Backend& be, const Args& A) {
  const double nd = A.num("n");
  if (nd != std::floor(nd) || nd < 16 || nd > 1e12) bad(A.op, "'n' must be an integer in [16, 1e12]");
  const size_t n = (size_t)nd;
  auto it = A.a.str.find("kind");
  if (it == A.a.str.end()) bad(A.op, "missing string 'kind'");
  const std::string kind = it->second;
  if (kind != "add" && kind != "swiglu" && kind != "gelu" && kind != "gelu_bwd" && kind != "swiglu_bwd")
    bad(A.op, "kind must be add, swiglu, gelu, gelu_bwd or swiglu_bwd");
  const bool two = kind == "swiglu_bwd";
  float* buf = (float*)be.alloc(n * sizeof(float));
  float* buf2 = nullptr;
  OpResult r;
  try {
    if (two) buf2 = (float*)be.alloc(n * sizeof(float));
    const size_t chunk = (size_t)7 << 21;  // 56 MiB of floats, a multiple of 7: one host pattern serves every chunk
    std::vector<float> host(chunk);
    for (size_t j = 0; j < chunk; ++j) host[j] = 1.0f + (float)(j % 7) / 8.0f;
    for (size_t i0 = 0; i0 < n; i0 += chunk) be.upload(buf + i0, host.data(), std::min(chunk, n - i0) * sizeof(float));
    if (kind == "add") be.add(buf, buf, buf, n);
    else if (kind == "swiglu") be.swiglu(buf, buf, buf, n);
    else if (kind == "gelu") be.gelu(buf, buf, n);
    else if (kind == "gelu_bwd") be.gelu_bwd(buf, buf, buf, n);
    else be.swiglu_bwd(buf, buf2, buf, buf, buf, n);  // dgate written in place over dy = gate = up; dup separately
    be.sync();
    std::vector<size_t> idx;
    auto span = [&](size_t a, size_t b) {
      for (size_t i = a; i < b && i < n; ++i)
        if (idx.empty() || i > idx.back()) idx.push_back(i);
    };
    span(0, 16);
    for (size_t b = (size_t)1 << 31; b < n; b += (size_t)1 << 31) span(b - 8, b + 8);
    span(n - 16, n);
    auto& oi = r.out["index"];
    auto& hi = r.out["index_hi"];
    auto& lo = r.out["index_lo"];
    auto& ox = r.out["x"];
    auto& oy = r.out["y"];
    for (size_t i : idx) {
      float v = 0, v2 = 0;
      be.download(&v, buf + i, sizeof(float));
      oi.push_back((float)i);
      hi.push_back((float)(i >> 16));
      lo.push_back((float)(i & 0xffff));
      ox.push_back(1.0f + (float)(i % 7) / 8.0f);
      oy.push_back(v);
      if (two) {
        be.download(&v2, buf2 + i, sizeof(float));
        r.out["y2"].push_back(v2);
      }
    }
  } catch (...) {
    be.free(buf);
    be.free(buf2);
    throw;
  }
  be.free(buf);
  be.free(buf2);
  return r;
}

// The op table: one row per line of ops.def, each op_<name> above. elementwise_big is a harness op (not in
// ops.def): the size_t element-count paths past 2^31 elements.
using OpFn = OpResult (*)(Backend&, const Args&);
struct OpRow {
  const char* name;
  OpFn fn;
};
const OpRow kOps[] = {
#define RE_OP(name, file, params, args) {#name, op_##name},
#include "ops.def"
};

}  // namespace

std::vector<std::string> op_names() {
  std::vector<std::string> v;
  for (const OpRow& r : kOps) v.push_back(r.name);
  return v;
}

OpResult run_op(Backend& be, const std::string& op, const OpArgs& args) {
  Args A{op, args};
  for (const OpRow& r : kOps)
    if (op == r.name) return r.fn(be, A);
  if (op == "elementwise_big") return op_elementwise_big(be, A);
  std::string known;
  for (const auto& n : op_names()) known += (known.empty() ? "" : ", ") + n;
  fail(RE_ERR_ARG, "runOp: unknown op '" + op + "' (known: " + known + ")");
}

}  // namespace re
