// isa.cpp — which ISA level's kernels the CPU backend runs (see cpu/isa.h): detection once through
// __builtin_cpu_supports (which also checks that the OS saves the AVX / AVX-512 register state),
// the REPAIR_CPU_ISA override (and the REPAIR_CPU_ISA_MAX cap), and the kernel tables.
#include "cpu/isa.h"

#include <cstdlib>

#include "errors.h"

namespace re {
namespace k_baseline { void fill(CpuKernels& k); }
namespace k_v3 { void fill(CpuKernels& k); }
namespace k_v4 { void fill(CpuKernels& k); }

namespace {
struct Tables {
  CpuKernels t[3];
  Tables() {
    k_baseline::fill(t[0]);
    k_v3::fill(t[1]);
    k_v4::fill(t[2]);
  }
};
}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::v4: return "x86-64-v4";
    case CpuIsa::v3: return "x86-64-v3";
    default: return "x86-64";
  }
}

namespace {
// REPAIR_CPU_ISA_MAX caps what counts as supported (e.g. v3 makes an AVX-512 machine behave as an
// AVX2-only one: detection, forcing and refusal), for tests and for benchmarking a lower level.
CpuIsa cap() {
  const char* env = std::getenv("REPAIR_CPU_ISA_MAX");
  if (!env || !*env) return CpuIsa::v4;
  const std::string s(env);
  if (s == "baseline" || s == "x86-64" || s == "v1") return CpuIsa::baseline;
  if (s == "v3" || s == "x86-64-v3" || s == "avx2") return CpuIsa::v3;
  return CpuIsa::v4;
}
}  // namespace

bool cpu_isa_supported(CpuIsa isa) {
  if (isa == CpuIsa::baseline) return true;
  if ((int)isa > (int)cap()) return false;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
  if (isa == CpuIsa::v3) return v3;
  return v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd");
#else
  return false;
#endif
}

CpuIsa cpu_isa_detected() {
  return cpu_isa_supported(CpuIsa::v4) ? CpuIsa::v4 : cpu_isa_supported(CpuIsa::v3) ? CpuIsa::v3 : CpuIsa::baseline;
}

CpuIsa cpu_isa_parse(const std::string& s) {
  if (s == "baseline" || s == "x86-64" || s == "v1") return CpuIsa::baseline;
  if (s == "v3" || s == "x86-64-v3" || s == "avx2") return CpuIsa::v3;
  if (s == "v4" || s == "x86-64-v4" || s == "avx512") return CpuIsa::v4;
  fail(RE_ERR_ARG, "unknown CPU ISA level \"" + s + "\" (use baseline, v3 or v4)");
}

CpuIsa cpu_isa_choose(const std::string& forced) {
  std::string want = forced;
  const char* from = "the isa argument";
  if (want.empty()) {
    const char* env = std::getenv("REPAIR_CPU_ISA");
    if (env && *env && std::string(env) != "auto") {
      want = env;
      from = "REPAIR_CPU_ISA";
    }
  }
  if (want.empty() || want == "auto") return cpu_isa_detected();
  const CpuIsa isa = cpu_isa_parse(want);
  if (!cpu_isa_supported(isa))
    fail(RE_ERR_UNSUPPORTED_CPU, std::string(from) + " asks for " + cpu_isa_name(isa) + " kernels, but this CPU supports at most " +
                                     cpu_isa_name(cpu_isa_detected()));
  return isa;
}

const CpuKernels& cpu_kernels(CpuIsa isa) {
  static const Tables* tables = new Tables();  // never destroyed: usable during process exit
  return tables->t[(int)isa];
}

}  // namespace re
