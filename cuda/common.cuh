// common.cuh — shared helpers of the CUDA backend (cuda/*.cu only; never include from native/*.cpp): error checks,
// dtype loads, warp reductions (float and double), the stream-ordered Scratch allocator, and the declaration of
// each op launcher (generated from ops.def).
//
// Rules of this folder:
//   - errors THROW re::Error (ERR_CUDA / ERR_OOM / ERR_INVALID_ARG); nothing here exits or aborts.
//   - every kernel indexes with 64-bit offsets (vocab x hidden tensors pass 2^31 elements).
//   - weights arrive in their stored dtype (f32 / f16 / bf16) and are widened to f32 exactly on load;
//     activations are f32 everywhere.
//   - kernels run on the backend's stream; launchers only enqueue (the caller syncs).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "activation.h"  // SiLU / GELU-tanh / WISE φ and derivatives (host and device, shared with the CPU)
#include "backend.h"
#include "errors.h"

namespace re {
namespace cuda {

// ---- error checks ----------------------------------------------------------------------------

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  std::string msg = std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") in " +
                    what + " at " + file + ":" + std::to_string(line);
  if (e == cudaErrorMemoryAllocation) throw Error(RE_ERR_OOM, msg);
  throw Error(RE_ERR_CUDA, msg);
}

// RE_CUDA_CHECK(cudaMemcpyAsync(...));  throws re::Error on failure.
#define RE_CUDA_CHECK(expr)                                                   \
  do {                                                                        \
    cudaError_t re_err_ = (expr);                                             \
    if (re_err_ != cudaSuccess) ::re::cuda::throw_cuda(re_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a <<<...>>> launch: reports launch-configuration errors (asynchronous faults show at sync).
#define RE_CUDA_LAUNCH(name)                                                  \
  do {                                                                        \
    cudaError_t re_err_ = cudaGetLastError();                                 \
    if (re_err_ != cudaSuccess) ::re::cuda::throw_cuda(re_err_, name, __FILE__, __LINE__); \
  } while (0)

// Errors after which the context is unusable (every later call fails with the same error).
inline bool is_sticky(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
    case cudaErrorContextIsDestroyed:
      return true;
    default:
      return false;
  }
}

inline void check_arg(bool ok, const char* op, const char* what) {
  if (!ok) throw Error(RE_ERR_ARG, std::string("cuda ") + op + ": " + what);
}

inline unsigned grid_for(size_t n, int block, unsigned cap = 65535u * 32u) {
  size_t g = (n + (size_t)block - 1) / (size_t)block;
  if (g < 1) g = 1;
  if (g > cap) g = cap;  // grid-stride loops cover the rest
  return (unsigned)g;
}

// ---- dtype loads (exact widening to f32) -----------------------------------------------------

// bf16 -> f32 is a 16-bit shift; done on the raw bits so it is exact and identical to the CPU.
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t b) { return __uint_as_float(((uint32_t)b) << 16); }
__device__ __forceinline__ float f16_bits_to_f32(uint16_t b) { return __half2float(__ushort_as_half(b)); }

// Tag types for templates over the stored weight type.
struct WF32 { using storage = float; };
struct WF16 { using storage = uint16_t; };
struct WBF16 { using storage = uint16_t; };

template <typename WT> __device__ __forceinline__ float wload(const typename WT::storage* p, size_t i);
template <> __device__ __forceinline__ float wload<WF32>(const float* p, size_t i) { return __ldg(p + i); }
template <> __device__ __forceinline__ float wload<WF16>(const uint16_t* p, size_t i) { return f16_bits_to_f32(__ldg(p + i)); }
template <> __device__ __forceinline__ float wload<WBF16>(const uint16_t* p, size_t i) { return bf16_bits_to_f32(__ldg(p + i)); }

// Convert a raw 16-bit pair word (little endian: element 2i in the low half) to two floats.
template <typename WT> __device__ __forceinline__ void wpair(uint32_t w, float& a, float& b);
template <> __device__ __forceinline__ void wpair<WF16>(uint32_t w, float& a, float& b) {
  a = f16_bits_to_f32((uint16_t)(w & 0xFFFFu));
  b = f16_bits_to_f32((uint16_t)(w >> 16));
}
template <> __device__ __forceinline__ void wpair<WBF16>(uint32_t w, float& a, float& b) {
  a = __uint_as_float(w << 16);
  b = __uint_as_float(w & 0xFFFF0000u);
}

// Runtime-dtype load, for small side tensors (bias) where a template would multiply instantiations.
__device__ __forceinline__ float load_any(const void* p, int dt, size_t i) {
  if (dt == (int)DType::F32) return __ldg((const float*)p + i);
  uint16_t b = __ldg((const uint16_t*)p + i);
  return dt == (int)DType::BF16 ? bf16_bits_to_f32(b) : f16_bits_to_f32(b);
}

// Calls f(WF32{}) / f(WF16{}) / f(WBF16{}) for a runtime dtype.
template <typename F> inline void dispatch_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::F32: f(WF32{}); return;
    case DType::F16: f(WF16{}); return;
    case DType::BF16: f(WBF16{}); return;
  }
  throw Error(RE_ERR_ARG, "cuda: unknown weight dtype");
}

// ---- warp reductions -------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

inline bool aligned16(const void* p) { return ((uintptr_t)p & 15u) == 0; }
// x rounded up to a multiple of a (offsets of the parts of one Scratch allocation).
inline size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// ---- stream-ordered scratch ----------------------------------------------------------------------
// Counts `delta` bytes of scratch on the backend that owns stream `st` (cuda_backend.cu), so bytes_in_use() and
// peak_bytes() (memoryPeakBytes) include it. Unknown streams (none in practice) are ignored.
void scratch_account(cudaStream_t st, long long delta);

// cudaMallocAsync on the backend's stream, cudaFreeAsync when the launcher returns (also when it throws). Kernels
// enqueued before the free still see valid memory. Counted in the backend's memory figures from the enqueue of
// the allocation to the enqueue of the free: the stream runs them in that order, so the high-water mark taken
// on the host is the device's.
class Scratch {
 public:
  Scratch(cudaStream_t st, size_t bytes) : st_(st) {
    if (bytes) {
      RE_CUDA_CHECK(cudaMallocAsync(&p_, bytes, st_));
      bytes_ = bytes;
      scratch_account(st_, (long long)bytes_);
    }
  }
  ~Scratch() {
    if (p_) {
      cudaFreeAsync(p_, st_);  // errors here surface at the next sync
      scratch_account(st_, -(long long)bytes_);
    }
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T> T* as() const { return (T*)p_; }
  char* bytes() const { return (char*)p_; }

 private:
  cudaStream_t st_;
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// ---- launchers: one per op of ops.def, `name_launch` in cuda/<file>.cu (the file named in its line) ---------
// All enqueue on `st` and return; sm_count is the device's multiprocessor count (for split-K / grid sizing; the
// launchers that do not size grids by it ignore it). CudaBackend's overrides (cuda_backend.cu) call them.
#define RE_UNPAREN(...) __VA_ARGS__
#define RE_OP(name, file, params, args) void name##_launch(cudaStream_t st, int sm_count, RE_UNPAREN params);
#include "ops.def"

}  // namespace cuda
}  // namespace re
