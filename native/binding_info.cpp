// binding_info.cpp — info(): the backends built into this binary, the CPU's ISA levels and each op family's kernel
// variant, and the CUDA runtime/driver and devices (lib/native.ts NativeInfo).
#include <algorithm>
#include <cstdlib>
#include <thread>

#include "binding.h"
#include "cpu/isa.h"

namespace rejs {

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  re::CudaInfo ci = re::cuda_info();
  Napi::Array backends = Napi::Array::New(env);
  backends.Set(0u, Napi::String::New(env, "cpu"));
  if (ci.built) backends.Set(1u, Napi::String::New(env, "cuda"));
  o.Set("backends", backends);
  o.Set("cpuThreads", Napi::Number::New(env, std::max(1u, std::thread::hardware_concurrency())));
  // CPU kernels: the detected ISA level, the one a new CPU backend runs (REPAIR_CPU_ISA or detected),
  // the levels this CPU supports, and each op family's kernel variant.
  Napi::Object cpu = Napi::Object::New(env);
  const re::CpuIsa best = re::cpu_isa_detected();
  cpu.Set("isaDetected", Napi::String::New(env, re::cpu_isa_name(best)));
  Napi::Array sup = Napi::Array::New(env);
  uint32_t ns = 0;
  for (re::CpuIsa l : {re::CpuIsa::baseline, re::CpuIsa::v3, re::CpuIsa::v4})
    if (re::cpu_isa_supported(l)) sup.Set(ns++, Napi::String::New(env, re::cpu_isa_name(l)));
  cpu.Set("isaSupported", sup);
  const char* env_isa = std::getenv("REPAIR_CPU_ISA");
  cpu.Set("isaForced", Napi::String::New(env, env_isa ? env_isa : ""));
  try {
    const re::CpuKernels& k = re::cpu_kernels(re::cpu_isa_choose(""));
    cpu.Set("isa", Napi::String::New(env, k.name));
    cpu.Set("isaError", Napi::String::New(env, ""));
    const std::string v = std::string(k.name) + " " + std::to_string(k.vec_bits) + "-bit";
    Napi::Object fam = Napi::Object::New(env);
    fam.Set("matmul", Napi::String::New(env, v + " packed GEMM " + std::to_string(k.gemm_mr) + "x" + std::to_string(k.gemm_nr) +
                                                 " + GEMV dots"));
    for (const char* f : {"linear_dx", "masked_sgd"}) fam.Set(f, Napi::String::New(env, v + " packed GEMM"));
    for (const char* f : {"attention", "attention_bwd", "rmsnorm", "rmsnorm_bwd", "swiglu", "swiglu_bwd",
                          "cross_entropy", "act_dist", "act_dist_bwd"})
      fam.Set(f, Napi::String::New(env, v));
    cpu.Set("kernels", fam);
  } catch (const Error& e) {
    cpu.Set("isa", Napi::String::New(env, ""));
    cpu.Set("isaError", Napi::String::New(env, std::string(e.code()) + ": " + e.what()));
    cpu.Set("kernels", Napi::Object::New(env));
  }
  o.Set("cpu", cpu);
  Napi::Object c = Napi::Object::New(env);
  c.Set("built", Napi::Boolean::New(env, ci.built));
  c.Set("available", Napi::Boolean::New(env, ci.available));
  c.Set("reason", Napi::String::New(env, ci.reason));
  c.Set("driverVersion", Napi::Number::New(env, ci.driver_version));
  c.Set("runtimeVersion", Napi::Number::New(env, ci.runtime_version));
  c.Set("archs", Napi::String::New(env, ci.archs));
  Napi::Array devs = Napi::Array::New(env);
  for (size_t i = 0; i < ci.devices.size(); ++i) {
    const auto& d = ci.devices[i];
    Napi::Object dv = Napi::Object::New(env);
    dv.Set("index", Napi::Number::New(env, d.index));
    dv.Set("name", Napi::String::New(env, d.name));
    dv.Set("computeCapability", Napi::String::New(env, std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor)));
    dv.Set("totalMemory", Napi::Number::New(env, (double)d.total_mem));
    dv.Set("freeMemory", Napi::Number::New(env, (double)d.free_mem));
    dv.Set("multiprocessors", Napi::Number::New(env, d.sm_count));
    dv.Set("kernelImage", Napi::Boolean::New(env, d.kernel_image));
    dv.Set("kernelImageError", Napi::String::New(env, d.kernel_image_error));
    devs.Set((uint32_t)i, dv);
  }
  c.Set("devices", devs);
  o.Set("cuda", c);
  return o;
}

}  // namespace rejs
