// backend.h — the op interface the model runtime is written against.
//
// The runtime (model.cpp, edit.cpp) never branches on the backend: it calls these ops. The ops are listed once,
// in ops.def (name, family file, parameters, contract); each has a CPU implementation in native/cpu/<file>.cpp
// (the reference) and a CUDA twin in cuda/<file>.cu, with the same arguments.
// All pointers passed to ops are *backend* pointers (host memory for CPU, device memory for CUDA),
// obtained from alloc(). Activations are always f32; weights stay in their stored dtype (DType).
//
// Errors: ops throw re::Error (never exit/abort); the binding turns it into a JS Error with a code.
#pragma once
#include <algorithm>
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

  // FNV-1a 64 of `bytes` bytes at backend pointer `src`, continuing from hash h (memory files carry the hash of
  // their base matrix: base_fingerprint). This default streams the bytes through an 8 MiB host buffer (the CUDA
  // backend: no host copy of the whole matrix); the CPU backend hashes them in place.
  virtual uint64_t fnv1a64(const void* src, size_t bytes, uint64_t h) {
    std::vector<uint8_t> buf(std::min(bytes, (size_t)8 << 20));
    for (size_t off = 0; off < bytes; off += buf.size()) {
      const size_t n = std::min(buf.size(), bytes - off);
      download(buf.data(), static_cast<const uint8_t*>(src) + off, n);
      for (size_t i = 0; i < n; ++i) h = (h ^ buf[i]) * 1099511628211ull;
    }
    return h;
  }

  // ---- ops: one pure virtual per line of ops.def (the op list, with each op's contract) --------------------
#define RE_OP(name, file, params, args) virtual void name params = 0;
#include "ops.def"
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
