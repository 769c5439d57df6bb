// binding_testing.cpp — the test and bench hooks, synchronous on the JS thread: runOp (one backend op on host
// arrays, for the op tests: native/optest.cpp), opNames (the op list) and benchLinear (native timing of linear()
// for bench/). Exported only through loadTesting(), which lib/testing.ts (the `repair-edit/testing` subpath) calls;
// production code never loads them.
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>

#include "binding.h"
#include "optest.h"

namespace rejs {

namespace {

Napi::Value RunOp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsString() || !info[2].IsObject())
    throw_js(env, RE_ERR_ARG, "runOp(backend, op, args)");
  std::string backend = info[0].As<Napi::String>().Utf8Value(), op = info[1].As<Napi::String>().Utf8Value();
  Napi::Object args = info[2].As<Napi::Object>();
  re::OpArgs a;
  Napi::Array keys = args.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
    Napi::Value v = args.Get(k);
    if (v.IsNumber()) {
      a.num[k] = v.As<Napi::Number>().DoubleValue();
    } else if (v.IsString()) {
      a.str[k] = v.As<Napi::String>().Utf8Value();
    } else if (v.IsTypedArray()) {
      auto t = v.As<Napi::TypedArray>();
      switch (t.TypedArrayType()) {
        case napi_float32_array: {
          auto f = v.As<Napi::Float32Array>();
          a.f32[k].assign(f.Data(), f.Data() + f.ElementLength());
          break;
        }
        case napi_int32_array: {
          auto f = v.As<Napi::Int32Array>();
          a.i32[k].assign(f.Data(), f.Data() + f.ElementLength());
          break;
        }
        case napi_uint16_array: {
          auto f = v.As<Napi::Uint16Array>();
          a.u16[k].assign(f.Data(), f.Data() + f.ElementLength());
          break;
        }
        default: throw_js(env, RE_ERR_ARG, "runOp: argument " + k + " has an unsupported typed array type");
      }
    } else {
      throw_js(env, RE_ERR_ARG, "runOp: argument " + k + " must be a number, string or typed array");
    }
  }
  try {
    static std::map<std::string, std::unique_ptr<re::Backend>> cpus;  // "cpu", "cpu:v3", ... (one per ISA level)
    static std::unique_ptr<re::Backend> cuda;
    static std::mutex mu;
    std::lock_guard<std::mutex> lk(mu);
    re::Backend* be;
    if (backend == "cpu" || backend.rfind("cpu:", 0) == 0) {
      auto& cpu = cpus[backend];
      if (!cpu) cpu = re::make_cpu_backend(0, backend.size() > 4 ? backend.substr(4) : std::string());
      be = cpu.get();
    } else if (backend == "cuda") {
      if (!cuda) cuda = re::make_cuda_backend(0);
      be = cuda.get();
    } else {
      throw Error(RE_ERR_ARG, "unknown backend " + backend);
    }
    re::OpResult r = re::run_op(*be, op, a);
    Napi::Object o = Napi::Object::New(env);
    for (auto& [name, vec] : r.out) {
      auto f = Napi::Float32Array::New(env, vec.size());
      if (!vec.empty()) std::memcpy(f.Data(), vec.data(), vec.size() * 4);
      o.Set(name, f);
    }
    o.Set("guardOk", Napi::Boolean::New(env, r.guard_ok));
    return o;
  } catch (const Error& e) {
    throw_js(env, e.code(), e.what());
  } catch (const std::exception& e) {
    throw_js(env, RE_ERR_INTERNAL, e.what());
  }
}

// opNames(): the ops of native/ops.def, in its order (what runOp runs; test/op_list.test.ts).
Napi::Value OpNames(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto names = re::op_names();
  Napi::Array a = Napi::Array::New(env, names.size());
  for (size_t i = 0; i < names.size(); ++i) a.Set((uint32_t)i, Napi::String::New(env, names[i]));
  return a;
}

// benchLinear(backend, M, N, K, dtype, iters[, threads]) -> seconds per linear() call; backend "cpu", "cpu:<isa>" or "cuda" (weights random, timed natively
// after one warm-up call, with a sync after the last call). For the matmul GFLOP/s figures in bench/.
Napi::Value BenchLinear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[4].IsString()) throw_js(env, RE_ERR_ARG, "benchLinear(backend, M, N, K, dtype, iters)");
  std::string backend = info[0].As<Napi::String>().Utf8Value(), dt = info[4].As<Napi::String>().Utf8Value();
  const int M = int_arg(env, info[1], "M"), N = int_arg(env, info[2], "N"), K = int_arg(env, info[3], "K");
  const int iters = std::max(1, int_arg(env, info[5], "iters"));
  if (M < 1 || N < 1 || K < 1) throw_js(env, RE_ERR_ARG, "benchLinear: sizes must be positive");
  try {
    const int threads = info.Length() > 6 && info[6].IsNumber() ? info[6].As<Napi::Number>().Int32Value() : 0;
    std::unique_ptr<re::Backend> be =
        backend == "cuda" ? re::make_cuda_backend(0)
        : backend == "cpu" || backend.rfind("cpu:", 0) == 0
            ? re::make_cpu_backend(threads, backend.size() > 4 ? backend.substr(4) : std::string())
            : (throw Error(RE_ERR_ARG, "benchLinear: unknown backend " + backend), nullptr);
    re::DType t = dt == "F16" ? re::DType::F16 : dt == "BF16" ? re::DType::BF16 : re::DType::F32;
    std::vector<float> hx((size_t)M * K);
    std::vector<uint16_t> hw16((size_t)N * K);
    std::vector<float> hw32((size_t)N * K);
    uint32_t r = 12345;
    auto rnd = [&] { r = r * 1664525u + 1013904223u; return ((r >> 8) * (1.0f / 16777216.0f)) - 0.5f; };
    for (auto& v : hx) v = rnd();
    for (size_t i = 0; i < hw32.size(); ++i) {
      hw32[i] = rnd();
      uint32_t u;
      std::memcpy(&u, &hw32[i], 4);
      hw16[i] = (uint16_t)(u >> 16);  // bf16 bits; also a valid (if odd-valued) f16 pattern mostly
      if (t == re::DType::F16) hw16[i] = (uint16_t)(0x3000 | (u & 0x3ff) | ((u >> 16) & 0x8000));
    }
    void* x = be->alloc(hx.size() * 4);
    void* w = be->alloc(t == re::DType::F32 ? hw32.size() * 4 : hw16.size() * 2);
    void* y = be->alloc((size_t)M * N * 4);
    be->upload(x, hx.data(), hx.size() * 4);
    if (t == re::DType::F32) be->upload(w, hw32.data(), hw32.size() * 4);
    else be->upload(w, hw16.data(), hw16.size() * 2);
    re::WeightRef W{w, t};
    be->linear((float*)y, (const float*)x, W, re::WeightRef{}, M, N, K, false);
    be->sync();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) be->linear((float*)y, (const float*)x, W, re::WeightRef{}, M, N, K, false);
    be->sync();
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
    be->free(x);
    be->free(w);
    be->free(y);
    return Napi::Number::New(env, sec);
  } catch (const Error& e) {
    throw_js(env, e.code(), e.what());
  }
}

}  // namespace

// loadTesting(): { runOp, opNames, benchLinear }.
Napi::Value LoadTesting(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("runOp", Napi::Function::New(env, RunOp));
  o.Set("opNames", Napi::Function::New(env, OpNames));
  o.Set("benchLinear", Napi::Function::New(env, BenchLinear));
  return o;
}

}  // namespace rejs
