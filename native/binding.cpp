// binding.cpp — the N-API module: exports info(), the NativeModel class and loadTesting() (the test/bench hooks,
// never loaded by production code), plus the helpers every binding_*.cpp shares (binding.h).
#include "binding.h"

#include <cstring>
#include <new>

namespace rejs {

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

[[noreturn]] void throw_js(Napi::Env env, const std::string& code, const std::string& msg) {
  throw make_error(env, code, msg);
}

// ---- argument helpers ------------------------------------------------------------------------------
double num_field(Napi::Env env, const Napi::Object& o, const char* key, const char* what) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw_js(env, RE_ERR_ARG, std::string(what) + "." + key + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}
int int_field(Napi::Env env, const Napi::Object& o, const char* key, const char* what, int lo, int hi) {
  double d = num_field(env, o, key, what);
  if (!(d >= lo && d <= hi) || d != (double)(int64_t)d)
    throw_js(env, RE_ERR_ARG, std::string(what) + "." + key + " must be an integer in [" + std::to_string(lo) + ", " +
                                  std::to_string(hi) + "]");
  return (int)d;
}
std::vector<int32_t> int32_vec(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_js(env, RE_ERR_ARG, std::string(what) + " must be an Int32Array");
  auto a = v.As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}
int int_arg(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw_js(env, RE_ERR_ARG, std::string(what) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= (1 << 30)) || d != (double)(int64_t)d)
    throw_js(env, RE_ERR_ARG, std::string(what) + " must be a non-negative integer");
  return (int)d;
}
std::vector<float> f32_vec(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_js(env, RE_ERR_ARG, std::string(what) + " must be a Float32Array");
  auto a = v.As<Napi::Float32Array>();
  return std::vector<float>(a.Data(), a.Data() + a.ElementLength());
}
Napi::Float32Array f32_array(Napi::Env env, const std::vector<float>& v) {
  auto a = Napi::Float32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * 4);
  return a;
}

// ---- Worker ----------------------------------------------------------------------------------------
void Worker::Execute() {
  try {
    Run();
  } catch (const Error& e) {
    code_ = e.code();
    msg_ = e.what();
  } catch (const std::bad_alloc&) {
    code_ = RE_ERR_OOM;
    msg_ = "out of host memory";
  } catch (const std::exception& e) {
    code_ = RE_ERR_INTERNAL;
    msg_ = e.what();
  }
}
void Worker::OnOK() {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  Done();
  if (!code_.empty()) {
    deferred_.Reject(make_error(env, code_, msg_).Value());
    return;
  }
  try {
    deferred_.Resolve(Result(env));
  } catch (const Napi::Error& e) {
    deferred_.Reject(e.Value());
  }
}
void Worker::OnError(const Napi::Error& e) {
  Done();
  deferred_.Reject(e.Value());
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData(data);  // deleted with the environment
  Napi::Function model = NativeModel::Init(env);
  data->model_ctor = Napi::Persistent(model);
  data->side_ctor = Napi::Persistent(NativeSideMemory::Init(env));
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("NativeModel", model);
  exports.Set("loadTesting", Napi::Function::New(env, LoadTesting));
  return exports;
}

}  // namespace rejs

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return rejs::Init(env, exports); }
NODE_API_MODULE(repair_edit, InitModule)
