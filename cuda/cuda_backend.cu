// cuda_backend.cu — re::Backend on one CUDA device, plus cuda_info() / make_cuda_backend() (twin of
// native/cpu/cpu_backend.cpp). The op overrides are generated from ops.def; each enqueues name##_launch from
// the cuda/<file>.cu ops.def names.
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

// defines: RE_CUDA_CHECK, RE_CUDA_LAUNCH, check_arg, wload/wpair/load_any, dispatch_dtype, warp sums, Scratch,
// and the launcher of every op of ops.def
#include "common.cuh"
// defines: philox4x32 / philox_keep (the mask RNG; masked_sgd in wise.cu uses it, included here so it stays nvcc-clean)
#include "philox.h"

namespace re {
namespace cuda {

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

  // ---- ops: one override per line of ops.def, enqueuing its launcher (cuda/<file>.cu) on this stream ---------
#define RE_OP(name, file, params, args)                                                   \
  void name params override {                                                              \
    enter(#name);                                                                          \
    run(#name, [&] { name##_launch(stream_, sm_count_, RE_UNPAREN args); });              \
  }
#include "ops.def"

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
