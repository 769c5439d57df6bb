// cuda_backend.cu — re::Backend on one CUDA device, plus cuda_info() / make_cuda_backend().
//
// One stream per backend; every op enqueues on it and returns (sync() waits). Memory comes from
// cudaMalloc (cudaErrorMemoryAllocation -> ERR_OOM); each allocation's size is tracked for
// bytes_in_use(). Host <-> device copies synchronise the stream before returning, so callers may
// reuse or free their host buffers at once.
//
// Errors: every CUDA failure throws re::Error(ERR_CUDA, "...name (string) in <call> at file:line").
// A sticky error (illegal address, launch failure, ...) leaves the context unusable: the backend
// remembers it and every later call throws at once with the original message.
//
// The static CUDA runtime opens libcuda lazily, so with no driver cudaGetDeviceCount fails
// (cudaErrorInsufficientDriver); cuda_info() treats any such error as "zero devices" and reports
// the reason instead of failing.
#include <algorithm>
#include <mutex>
#include <unordered_map>

// defines: RE_CUDA_CHECK, RE_CUDA_LAUNCH, check_arg, wload/wpair/load_any, dispatch_dtype, warp_sum/max, launchers
#include "common.cuh"
// defines: philox4x32 / philox_keep (the mask RNG; masked_sgd in wise.cu uses it, included here so it stays nvcc-clean)
#include "philox.h"

namespace re {
namespace cuda {

// ---- launchers of the editing ops (backward.cu, wise.cu, repair.cu; all enqueue on `st`) ------------------
void scatter_add_rows_backward(cudaStream_t st, float* y, const float* x, const int32_t* idx, int n, int D);
void linear_dx_backward(cudaStream_t st, int sm_count, float* dx, const float* dy, WeightRef W, int M, int N, int K,
                        bool accumulate);
void rmsnorm_bwd_backward(cudaStream_t st, float* dx, const float* dy, const float* x, WeightRef w, int M, int D,
                          float eps, bool accumulate);
void rope_bwd_backward(cudaStream_t st, float* dx, const int32_t* pos, const float* inv_freq, int n_tok, int n_head,
                       int head_dim);
void attention_bwd_backward(cudaStream_t st, float* dq, float* dk, float* dv, const float* dout, const float* q,
                            const float* kc, const float* vc, const int32_t* pad, int B, int T, int Hq, int Hkv, int hd,
                            float scale);
void swiglu_bwd_backward(cudaStream_t st, float* dgate, float* dup, const float* dy, const float* gate, const float* up,
                         size_t n);
void cross_entropy_backward(cudaStream_t st, float* loss, float* dlogits, const float* logits, const int32_t* labels,
                            const float* weight, int R, int V);
void act_dist_wise(cudaStream_t st, float* d, const float* os, const float* om, int n, int nm, int D, int act);
void act_dist_bwd_wise(cudaStream_t st, float* dos, const float* gd, const float* os, const float* om, int n, int D,
                       int act, bool accumulate);
void masked_sgd_wise(cudaStream_t st, float* Wp, const float* G, const float* A, WeightRef Wv, int M, int N, int K,
                     uint64_t seed, float rho, float lr, float wd, float clamp);
void ties_merge_wise(cudaStream_t st, int sm_count, float* out, WeightRef base, const float* const* shards,
                     const float* weights, int k, size_t n, float density);
// gpt2.cu
void layernorm_forward(cudaStream_t st, float* y, const float* x, WeightRef w, WeightRef b, int M, int D, float eps);
void layernorm_bwd_backward(cudaStream_t st, float* dx, const float* dy, const float* x, WeightRef w, int M, int D,
                            float eps, bool accumulate);
void gelu_forward(cudaStream_t st, float* y, const float* x, size_t n);
void gelu_bwd_backward(cudaStream_t st, float* dx, const float* dy, const float* x, size_t n);
void add_bias_forward(cudaStream_t st, float* y, WeightRef b, int M, int N);
// repair.cu
void kd_loss_repair(cudaStream_t st, float* out, float* dfeat, const float* feat, int b, int D, float lambda,
                    float theta);
void kl_distill_repair(cudaStream_t st, float* loss, float* dlogits, const float* logits, const int32_t* student,
                       const int32_t* teacher, const float* w, int P, int V, float T);
void loss_aware_merge_repair(cudaStream_t st, float* out, WeightRef base, const float* const* shards,
                             const float* weights, int k, size_t n);

class CudaBackend;

// Stream -> backend, so the launchers' stream-ordered scratch (Scratch in common.cuh) is counted in the backend's
// bytes_in_use()/peak_bytes() (memoryPeakBytes on CUDA would otherwise miss every cudaMallocAsync).
std::mutex g_streams_mu;
std::unordered_map<cudaStream_t, CudaBackend*> g_streams;

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    RE_CUDA_CHECK(cudaSetDevice(device_));
    RE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    RE_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device_));
    std::lock_guard<std::mutex> lk(g_streams_mu);
    g_streams[stream_] = this;
  }

  // Scratch bytes enqueued (+) or released (−) on this backend's stream.
  void account_scratch(long long delta) {
    std::lock_guard<std::mutex> lk(mu_);
    if (delta >= 0) {
      in_use_ += (size_t)delta;
      peak_ = std::max(peak_, in_use_);
    } else {
      in_use_ -= std::min(in_use_, (size_t)(-delta));
    }
  }

  ~CudaBackend() override {
    // Never throws: frees what is left, ignores errors (a broken context cannot free anyway).
    {
      std::lock_guard<std::mutex> lk(g_streams_mu);
      g_streams.erase(stream_);
    }
    cudaSetDevice(device_);
    if (stream_) cudaStreamSynchronize(stream_);
    for (auto& kv : sizes_) cudaFree(kv.first);
    sizes_.clear();
    if (stream_) cudaStreamDestroy(stream_);
    cudaGetLastError();
  }

  const char* name() const override { return "cuda"; }

  // ---- memory ----------------------------------------------------------------------------------
  void* alloc(size_t bytes) override {
    enter("alloc");
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 16);  // zero bytes still returns a valid pointer
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky: clear it
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw Error(RE_ERR_OOM, "CUDA out of memory: cannot allocate " + std::to_string(bytes) + " bytes on device " +
                                  std::to_string(device_) + " (" + std::to_string(free_b >> 20) + " MiB free of " +
                                  std::to_string(total_b >> 20) + " MiB)");
    }
    check(e, "cudaMalloc");
    std::lock_guard<std::mutex> lk(mu_);
    sizes_[p] = bytes;
    in_use_ += bytes;
    peak_ = std::max(peak_, in_use_);
    return p;
  }

  void free(void* p) override {
    if (!p) return;
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = sizes_.find(p);
      if (it == sizes_.end()) return;  // not ours (or already freed): ignore rather than corrupt
      in_use_ -= it->second;
      sizes_.erase(it);
    }
    cudaSetDevice(device_);
    cudaError_t e = cudaFree(p);  // implicitly synchronises; errors only mark the context
    if (e != cudaSuccess) note(e);
  }

  void upload(void* dst, const void* host_src, size_t bytes) override {
    enter("upload");
    if (!bytes) return;
    check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_), "upload (cudaMemcpyAsync H2D)");
    check(cudaStreamSynchronize(stream_), "upload (sync)");
  }

  void download(void* host_dst, const void* src, size_t bytes) override {
    enter("download");
    if (!bytes) return;
    check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "download (cudaMemcpyAsync D2H)");
    check(cudaStreamSynchronize(stream_), "download (sync)");
  }

  void copy(void* dst, const void* src, size_t bytes) override {
    enter("copy");
    if (!bytes) return;
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "copy (cudaMemcpyAsync D2D)");
  }

  void memset0(void* dst, size_t bytes) override {
    enter("memset0");
    if (!bytes) return;
    check(cudaMemsetAsync(dst, 0, bytes, stream_), "memset0 (cudaMemsetAsync)");
  }

  void sync() override {
    enter("sync");
    check(cudaStreamSynchronize(stream_), "sync (cudaStreamSynchronize)");
  }

  size_t bytes_in_use() const override {
    std::lock_guard<std::mutex> lk(mu_);
    return in_use_;
  }
  size_t peak_bytes() const override {
    std::lock_guard<std::mutex> lk(mu_);
    return peak_;
  }
  void reset_peak() override {
    std::lock_guard<std::mutex> lk(mu_);
    peak_ = in_use_;
  }

  // ---- ops -------------------------------------------------------------------------------------
  void linear(float* y, const float* x, WeightRef W, WeightRef bias, int M, int N, int K, bool accumulate) override {
    enter("linear");
    run("linear", [&] { linear_forward(stream_, sm_count_, y, x, W, bias, M, N, K, accumulate); });
  }
  void rmsnorm(float* y, const float* x, WeightRef w, int M, int D, float eps) override {
    enter("rmsnorm");
    run("rmsnorm", [&] { rmsnorm_forward(stream_, y, x, w, M, D, eps); });
  }
  void embedding(float* y, const int32_t* ids, WeightRef table, int n, int D) override {
    enter("embedding");
    run("embedding", [&] { embedding_forward(stream_, y, ids, table, n, D); });
  }
  void rope(float* x, const int32_t* pos, const float* inv_freq, int n_tok, int n_head, int head_dim) override {
    enter("rope");
    run("rope", [&] { rope_forward(stream_, x, pos, inv_freq, n_tok, n_head, head_dim); });
  }
  void kv_store(float* kc, float* vc, const float* k, const float* v, int B, int Tn, int Hkv, int hd, int S,
                int P) override {
    enter("kv_store");
    run("kv_store", [&] { kv_store_forward(stream_, kc, vc, k, v, B, Tn, Hkv, hd, S, P); });
  }
  void attention(float* out, const float* q, const float* kc, const float* vc, const int32_t* pad, int B, int Tn,
                 int Hq, int Hkv, int hd, int S, int P, float scale) override {
    enter("attention");
    run("attention", [&] { attention_forward(stream_, sm_count_, out, q, kc, vc, pad, B, Tn, Hq, Hkv, hd, S, P, scale); });
  }
  void swiglu(float* y, const float* gate, const float* up, size_t n) override {
    enter("swiglu");
    run("swiglu", [&] { swiglu_forward(stream_, y, gate, up, n); });
  }
  void add(float* y, const float* a, const float* b, size_t n) override {
    enter("add");
    run("add", [&] { add_forward(stream_, y, a, b, n); });
  }
  void gather_rows(float* y, const float* x, const int32_t* idx, int n, int D) override {
    enter("gather_rows");
    run("gather_rows", [&] { gather_rows_forward(stream_, y, x, idx, n, D); });
  }

  // ---- GPT-2 family ops (gpt2.cu) ------------------------------------------------------------------
  void layernorm(float* y, const float* x, WeightRef w, WeightRef b, int M, int D, float eps) override {
    enter("layernorm");
    run("layernorm", [&] { layernorm_forward(stream_, y, x, w, b, M, D, eps); });
  }
  void gelu(float* y, const float* x, size_t n) override {
    enter("gelu");
    run("gelu", [&] { gelu_forward(stream_, y, x, n); });
  }
  void add_bias(float* y, WeightRef b, int M, int N) override {
    enter("add_bias");
    run("add_bias", [&] { add_bias_forward(stream_, y, b, M, N); });
  }
  void layernorm_bwd(float* dx, const float* dy, const float* x, WeightRef w, int M, int D, float eps,
                     bool accumulate) override {
    enter("layernorm_bwd");
    run("layernorm_bwd", [&] { layernorm_bwd_backward(stream_, dx, dy, x, w, M, D, eps, accumulate); });
  }
  void gelu_bwd(float* dx, const float* dy, const float* x, size_t n) override {
    enter("gelu_bwd");
    run("gelu_bwd", [&] { gelu_bwd_backward(stream_, dx, dy, x, n); });
  }

  // ---- editing ops (backward.cu, wise.cu) ---------------------------------------------------------
  void scatter_add_rows(float* y, const float* x, const int32_t* idx, int n, int D) override {
    enter("scatter_add_rows");
    run("scatter_add_rows", [&] { scatter_add_rows_backward(stream_, y, x, idx, n, D); });
  }
  void linear_dx(float* dx, const float* dy, WeightRef W, int M, int N, int K, bool accumulate) override {
    enter("linear_dx");
    run("linear_dx", [&] { linear_dx_backward(stream_, sm_count_, dx, dy, W, M, N, K, accumulate); });
  }
  void rmsnorm_bwd(float* dx, const float* dy, const float* x, WeightRef w, int M, int D, float eps,
                   bool accumulate) override {
    enter("rmsnorm_bwd");
    run("rmsnorm_bwd", [&] { rmsnorm_bwd_backward(stream_, dx, dy, x, w, M, D, eps, accumulate); });
  }
  void rope_bwd(float* dx, const int32_t* pos, const float* inv_freq, int n_tok, int n_head, int head_dim) override {
    enter("rope_bwd");
    run("rope_bwd", [&] { rope_bwd_backward(stream_, dx, pos, inv_freq, n_tok, n_head, head_dim); });
  }
  void attention_bwd(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* kc,
                     const float* vc, const int32_t* pad, int B, int T, int Hq, int Hkv, int hd, float scale) override {
    enter("attention_bwd");
    run("attention_bwd",
        [&] { attention_bwd_backward(stream_, dq, dk, dv, dout, q, kc, vc, pad, B, T, Hq, Hkv, hd, scale); });
  }
  void swiglu_bwd(float* dgate, float* dup, const float* dy, const float* gate, const float* up, size_t n) override {
    enter("swiglu_bwd");
    run("swiglu_bwd", [&] { swiglu_bwd_backward(stream_, dgate, dup, dy, gate, up, n); });
  }
  void cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* labels, const float* weight,
                     int R, int V) override {
    enter("cross_entropy");
    run("cross_entropy", [&] { cross_entropy_backward(stream_, loss, dlogits, logits, labels, weight, R, V); });
  }
  void act_dist(float* d, const float* os, const float* om, int n, int nm, int D, int act) override {
    enter("act_dist");
    run("act_dist", [&] { act_dist_wise(stream_, d, os, om, n, nm, D, act); });
  }
  void act_dist_bwd(float* dos, const float* gd, const float* os, const float* om, int n, int D, int act,
                    bool accumulate) override {
    enter("act_dist_bwd");
    run("act_dist_bwd", [&] { act_dist_bwd_wise(stream_, dos, gd, os, om, n, D, act, accumulate); });
  }
  void masked_sgd(float* Wp, const float* G, const float* A, WeightRef Wv, int M, int N, int K, uint64_t seed,
                  float rho, float lr, float wd, float clamp) override {
    enter("masked_sgd");
    run("masked_sgd", [&] { masked_sgd_wise(stream_, Wp, G, A, Wv, M, N, K, seed, rho, lr, wd, clamp); });
  }
  void ties_merge(float* out, WeightRef base, const float* const* shards, const float* weights, int k, size_t n,
                  float density) override {
    enter("ties_merge");
    run("ties_merge", [&] { ties_merge_wise(stream_, sm_count_, out, base, shards, weights, k, n, density); });
  }

  // ---- REPAIR kernels (repair.cu) -------------------------------------------------------------------
  void kd_loss(float* out, float* dfeat, const float* feat, int b, int D, float lambda, float theta) override {
    enter("kd_loss");
    run("kd_loss", [&] { kd_loss_repair(stream_, out, dfeat, feat, b, D, lambda, theta); });
  }
  void kl_distill(float* loss, float* dlogits, const float* logits, const int32_t* student, const int32_t* teacher,
                  const float* w, int P, int V, float T) override {
    enter("kl_distill");
    run("kl_distill", [&] { kl_distill_repair(stream_, loss, dlogits, logits, student, teacher, w, P, V, T); });
  }
  void loss_aware_merge(float* out, WeightRef base, const float* const* shards, const float* weights, int k,
                        size_t n) override {
    enter("loss_aware_merge");
    run("loss_aware_merge", [&] { loss_aware_merge_repair(stream_, out, base, shards, weights, k, n); });
  }

 private:
  // Every entry point: reject if the context is already broken, and bind this device to the
  // calling thread (N-API async workers run on pool threads).
  void enter(const char* what) {
    if (broken_) throw Error(RE_ERR_CUDA, std::string("CUDA context unusable after an earlier error (") + sticky_msg_ +
                                              "); refused: " + what);
    check(cudaSetDevice(device_), "cudaSetDevice");
  }

  void note(cudaError_t e) {
    if (is_sticky(e) && !broken_) {
      sticky_msg_ = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
      broken_ = true;
    }
  }

  void check(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return;
    note(e);
    if (!is_sticky(e)) cudaGetLastError();  // clear a non-sticky error so later calls are not blamed
    throw_cuda(e, what, __FILE__, __LINE__);
  }

  // Runs a launcher; a CUDA error thrown from it marks the context if the error is sticky.
  template <typename F> void run(const char* what, F&& f) {
    try {
      f();
    } catch (const Error& err) {
      if (err.code() == RE_ERR_CUDA) {
        cudaError_t e = cudaPeekAtLastError();
        if (e != cudaSuccess) note(e);
        if (e == cudaSuccess || !is_sticky(e)) cudaGetLastError();
      }
      throw;
    }
    (void)what;
  }

  int device_ = 0;
  int sm_count_ = 1;
  cudaStream_t stream_ = nullptr;
  mutable std::mutex mu_;
  std::unordered_map<void*, size_t> sizes_;
  size_t in_use_ = 0;
  size_t peak_ = 0;
  bool broken_ = false;
  std::string sticky_msg_;
};

void scratch_account(cudaStream_t st, long long delta) {
  std::lock_guard<std::mutex> lk(g_streams_mu);
  auto it = g_streams.find(st);
  if (it != g_streams.end()) it->second->account_scratch(delta);
}

namespace {
// The kernel-image probe: cudaFuncGetAttributes on a kernel of this module fails with
// cudaErrorNoKernelImageForDevice (or InvalidDeviceFunction) when neither a cubin for the device's
// architecture nor PTX it can JIT was compiled in (e.g. an sm_75 card with the default 80/90 build).
__global__ void kernel_image_probe(int* p) {
  if (p) *p = 1;
}
}  // namespace

// Whether device `d` (made current) can run this build's kernels; `why` gets the reason when not.
bool has_kernel_image(int d, std::string& why) {
  if (cudaSetDevice(d) != cudaSuccess) {
    cudaGetLastError();
    why = "cudaSetDevice failed";
    return false;
  }
  cudaFuncAttributes a;
  cudaError_t e = cudaFuncGetAttributes(&a, kernel_image_probe);
  if (e == cudaSuccess) return true;
  cudaGetLastError();
  why = std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
  return false;
}

}  // namespace cuda

#ifndef REPAIR_CUDA_ARCH_LIST
#define REPAIR_CUDA_ARCH_LIST ""
#endif

// "80-real,90-real,90-virtual" -> "sm_80, sm_90 and PTX compute_90"
static std::string describe_archs(const std::string& list) {
  std::string out, cur;
  auto flush = [&](const std::string& a) {
    if (a.empty()) return;
    const size_t dash = a.find('-');
    const std::string num = a.substr(0, dash), kind = dash == std::string::npos ? "real" : a.substr(dash + 1);
    if (!out.empty()) out += ", ";
    out += kind == "virtual" ? "PTX compute_" + num : "sm_" + num;
  };
  for (char c : list) {
    if (c == ',') {
      flush(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  flush(cur);
  return out.empty() ? "(unknown architectures)" : out;
}

static std::string no_image_reason(const CudaDeviceInfo& di) {
  return "device " + std::to_string(di.index) + " (" + di.name + ", compute capability " + std::to_string(di.cc_major) +
         "." + std::to_string(di.cc_minor) + ") has no kernel image in this build (built for " +
         describe_archs(REPAIR_CUDA_ARCH_LIST) + "; " + di.kernel_image_error +
         "): rebuild with REPAIR_CUDA_ARCHS=" + std::to_string(di.cc_major * 10 + di.cc_minor);
}

// ---- info / factory --------------------------------------------------------------------------

CudaInfo cuda_info() {
  CudaInfo info;
  info.built = true;
  info.archs = REPAIR_CUDA_ARCH_LIST;
  int v = 0;
  if (cudaRuntimeGetVersion(&v) == cudaSuccess) info.runtime_version = v;
  v = 0;
  if (cudaDriverGetVersion(&v) == cudaSuccess) info.driver_version = v;  // 0 when no driver is installed
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    // No driver (cudaErrorInsufficientDriver), no device (cudaErrorNoDevice), broken install, ...:
    // all mean "no usable device" here.
    info.available = false;
    info.reason = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
    cudaGetLastError();
    return info;
  }
  if (count <= 0) {
    info.available = false;
    info.reason = "no CUDA device found";
    return info;
  }
  int prev = 0;
  bool have_prev = cudaGetDevice(&prev) == cudaSuccess;
  for (int d = 0; d < count; ++d) {
    CudaDeviceInfo di;
    di.index = d;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, d) == cudaSuccess) {
      di.name = prop.name;
      di.cc_major = prop.major;
      di.cc_minor = prop.minor;
      di.total_mem = prop.totalGlobalMem;
      di.sm_count = prop.multiProcessorCount;
    } else {
      cudaGetLastError();
      di.name = "(unreadable device)";
    }
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(d) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
      di.free_mem = free_b;
      if (!di.total_mem) di.total_mem = total_b;
    } else {
      cudaGetLastError();
    }
    di.kernel_image = cuda::has_kernel_image(d, di.kernel_image_error);
    info.devices.push_back(std::move(di));
  }
  if (have_prev) cudaSetDevice(prev);
  info.available = false;
  for (const auto& di : info.devices) info.available = info.available || di.kernel_image;
  if (!info.available) {
    for (const auto& di : info.devices) info.reason += (info.reason.empty() ? "" : "; ") + no_image_reason(di);
  }
  return info;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(RE_ERR_CUDA_UNAVAILABLE, std::string("no CUDA device: cudaGetDeviceCount failed: ") +
                                             cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
  }
  if (count <= 0) throw Error(RE_ERR_CUDA_UNAVAILABLE, "no CUDA device found");
  if (device < 0 || device >= count)
    throw Error(RE_ERR_CUDA_UNAVAILABLE, "CUDA device " + std::to_string(device) + " does not exist (" +
                                             std::to_string(count) + " device(s) present)");
  CudaDeviceInfo di;
  di.index = device;
  if (!cuda::has_kernel_image(device, di.kernel_image_error)) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) {
      di.name = prop.name;
      di.cc_major = prop.major;
      di.cc_minor = prop.minor;
    } else {
      cudaGetLastError();
    }
    throw Error(RE_ERR_CUDA_UNAVAILABLE, no_image_reason(di));
  }
  return std::unique_ptr<Backend>(new cuda::CudaBackend(device));
}

}  // namespace re
