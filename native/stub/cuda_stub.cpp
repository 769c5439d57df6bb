// cuda_stub.cpp — linked instead of cuda/ when the CUDA backend is not built (no nvcc, or forced CPU).
#include "backend.h"

namespace re {

CudaInfo cuda_info() {
  CudaInfo info;
  info.built = false;
  info.available = false;
  info.reason = "this build of repair-edit has no CUDA backend (nvcc was not found at install time, or REPAIR_CPU_ONLY was set)";
  return info;
}

std::unique_ptr<Backend> make_cuda_backend(int) {
  fail(RE_ERR_CUDA_UNAVAILABLE, cuda_info().reason);
}

}  // namespace re
