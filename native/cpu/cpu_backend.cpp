// cpu_backend.cpp — the CPU backend object (twin: cuda/cuda_backend.cu): memory management, dtype conversions.
// Its ops live in the file ops.def names for each (norm.cpp, rope.cpp, attention.cpp, ...).
#include "cpu/cpu_backend.h"

#include <cstdlib>
#include <new>
#include <thread>

namespace re {

const char* dtype_name(DType t) { return t == DType::F32 ? "F32" : t == DType::F16 ? "F16" : "BF16"; }

static float f16_decode(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do { ++e; man <<= 1; } while (!(man & 0x400));
      u = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | man << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

namespace {
struct F16Table {
  float v[65536];
  F16Table() { for (uint32_t i = 0; i < 65536; ++i) v[i] = f16_decode((uint16_t)i); }
};
const F16Table& f16_table() {
  static const F16Table* t = new F16Table();  // never destroyed: safe during process exit
  return *t;
}
}  // namespace

float f16_to_f32(uint16_t h) { return f16_table().v[h]; }

void weight_row_to_f32(float* dst, WeightRef w, size_t off, size_t n) {
  switch (w.dt) {
    case DType::F32: std::memcpy(dst, static_cast<const float*>(w.p) + off, n * 4); break;
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(w.p) + off;
      const float* t = f16_table().v;
      for (size_t i = 0; i < n; ++i) dst[i] = t[s[i]];
      break;
    }
    default: {
      const uint16_t* s = static_cast<const uint16_t*>(w.p) + off;
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
    }
  }
}

CpuBackend::CpuBackend(int nthreads, const std::string& isa)
    : k_(&cpu_kernels(cpu_isa_choose(isa))),
      pool_(nthreads > 0 ? nthreads : (int)std::max(1u, std::thread::hardware_concurrency())) {
  (void)f16_table();
}

void* CpuBackend::alloc(size_t bytes) {
  size_t n = (bytes + 63) / 64 * 64;
  if (n == 0) n = 64;
  void* p = std::aligned_alloc(64, n + 64);  // one cache line of header for the size
  if (!p) fail(RE_ERR_OOM, "CPU backend: out of host memory allocating " + std::to_string(bytes) + " bytes");
  *static_cast<size_t*>(p) = n;
  const size_t now = in_use_ += n;
  size_t pk = peak_.load();
  while (now > pk && !peak_.compare_exchange_weak(pk, now)) {
  }
  return static_cast<char*>(p) + 64;
}

void CpuBackend::free(void* p) {
  if (!p) return;
  char* base = static_cast<char*>(p) - 64;
  in_use_ -= *reinterpret_cast<size_t*>(base);
  std::free(base);
}

std::unique_ptr<Backend> make_cpu_backend(int nthreads, const std::string& isa) {
  return std::make_unique<CpuBackend>(nthreads, isa);
}

}  // namespace re
