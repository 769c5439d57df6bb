// binding.cpp — the N-API surface (see lib/native.ts for the JS contract).
// One ObjectWrap (NativeModel) per loaded model; every long call is an AsyncWorker that resolves or
// rejects a Promise. Native failures are re::Error values that become JS Errors with a `code`.
#include <napi.h>

#include <atomic>
#include <cstdio>
#include <functional>
#include <cmath>
#include <memory>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "backend.h"
#include "cpu/cpu_backend.h"
#include "model.h"
#include "optest.h"

namespace {

using re::Error;

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

[[noreturn]] void throw_js(Napi::Env env, const std::string& code, const std::string& msg) {
  throw make_error(env, code, msg);
}

// ---- argument helpers (validate before anything reaches the runtime) ------------------------------
double num_field(Napi::Env env, const Napi::Object& o, const char* key, const char* what) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw_js(env, RE_ERR_ARG, std::string(what) + "." + key + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}
int int_field(Napi::Env env, const Napi::Object& o, const char* key, const char* what, int lo = 0,
              int hi = 1 << 30) {
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

// ---- async worker base ---------------------------------------------------------------------------
class Worker : public Napi::AsyncWorker {
 public:
  explicit Worker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  virtual void Run() = 0;
  virtual Napi::Value Result(Napi::Env env) { return env.Undefined(); }
  virtual void Done() {}

  void Execute() override {
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
  void OnOK() override {
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
  void OnError(const Napi::Error& e) override {
    Done();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string code_, msg_;
};

// ---- NativeModel -------------------------------------------------------------------------------------
class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "NativeModel",
                       {InstanceMethod("load", &NativeModel::Load), InstanceMethod("forward", &NativeModel::Forward),
                        InstanceMethod("generate", &NativeModel::Generate), InstanceMethod("abort", &NativeModel::Abort),
                        InstanceMethod("cacheLength", &NativeModel::CacheLength),
                        InstanceMethod("memoryBytes", &NativeModel::MemoryBytes),
                        InstanceMethod("memoryPeakBytes", &NativeModel::MemoryPeakBytes),
                        InstanceMethod("dispose", &NativeModel::Dispose),
                        InstanceMethod("sideCreate", &NativeModel::SideCreate),
                        InstanceMethod("sideFree", &NativeModel::SideFree),
                        InstanceMethod("sideSlots", &NativeModel::SideSlots),
                        InstanceMethod("sideAdd", &NativeModel::SideAdd),
                        InstanceMethod("sideRemove", &NativeModel::SideRemove),
                        InstanceMethod("sideReset", &NativeModel::SideReset),
                        InstanceMethod("sideRead", &NativeModel::SideRead),
                        InstanceMethod("sideWrite", &NativeModel::SideWrite),
                        InstanceMethod("sideTies", &NativeModel::SideTies),
                        InstanceMethod("sideScore", &NativeModel::SideScore),
                        InstanceMethod("sideEdit", &NativeModel::SideEdit),
                        InstanceMethod("baseFingerprint", &NativeModel::BaseFingerprint),
                        InstanceMethod("sideMergeLossAware", &NativeModel::SideMergeLossAware),
                        InstanceMethod("sideFeatures", &NativeModel::SideFeatures)});
  }

  NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw_js(env, RE_ERR_ARG, "NativeModel: a spec object is required");
    Napi::Object spec = info[0].As<Napi::Object>();
    std::string backend = spec.Get("backend").IsString() ? spec.Get("backend").As<Napi::String>().Utf8Value() : "cpu";
    int device = spec.Has("device") && spec.Get("device").IsNumber() ? int_field(env, spec, "device", "spec", 0, 1024) : 0;
    int threads = spec.Has("threads") && spec.Get("threads").IsNumber() ? int_field(env, spec, "threads", "spec", 0, 4096) : 0;
    if (!spec.Get("arch").IsObject()) throw_js(env, RE_ERR_ARG, "spec.arch must be an object");
    Napi::Object a = spec.Get("arch").As<Napi::Object>();
    re::Arch arch;
    if (a.Has("kind") && !a.Get("kind").IsUndefined()) {
      if (!a.Get("kind").IsString()) throw_js(env, RE_ERR_ARG, "arch.kind must be 'llama' or 'gpt2'");
      const std::string kind = a.Get("kind").As<Napi::String>().Utf8Value();
      if (kind == "gpt2") arch.kind = re::ArchKind::GPT2;
      else if (kind != "llama") throw_js(env, RE_ERR_ARG, "arch.kind must be 'llama' or 'gpt2', got '" + kind + "'");
    }
    if (arch.kind == re::ArchKind::GPT2) arch.npos = int_field(env, a, "numPositions", "arch", 1);
    arch.D = int_field(env, a, "hiddenSize", "arch", 1);
    arch.F = int_field(env, a, "intermediateSize", "arch", 1);
    arch.L = int_field(env, a, "numLayers", "arch", 1, 10000);
    arch.Hq = int_field(env, a, "numHeads", "arch", 1, 100000);
    arch.Hkv = int_field(env, a, "numKvHeads", "arch", 1, 100000);
    arch.hd = int_field(env, a, "headDim", "arch", 2, 100000);
    arch.V = int_field(env, a, "vocabSize", "arch", 1);
    arch.S = int_field(env, a, "maxPositions", "arch", 1);
    arch.eps = (float)num_field(env, a, "rmsNormEps", "arch");
    arch.tie = a.Get("tieEmbeddings").ToBoolean();
    arch.qkv_bias = a.Get("qkvBias").ToBoolean();
    Napi::Value inv = a.Get("invFreq");
    if (!inv.IsTypedArray() || inv.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw_js(env, RE_ERR_ARG, "arch.invFreq must be a Float32Array");
    auto invf = inv.As<Napi::Float32Array>();
    arch.inv_freq.assign(invf.Data(), invf.Data() + invf.ElementLength());

    if (!spec.Get("tensors").IsArray()) throw_js(env, RE_ERR_ARG, "spec.tensors must be an array");
    Napi::Array ts = spec.Get("tensors").As<Napi::Array>();
    std::vector<re::TensorSpec> specs;
    for (uint32_t i = 0; i < ts.Length(); ++i) {
      if (!ts.Get(i).IsObject()) throw_js(env, RE_ERR_ARG, "spec.tensors[" + std::to_string(i) + "] must be an object");
      Napi::Object t = ts.Get(i).As<Napi::Object>();
      re::TensorSpec s;
      if (!t.Get("name").IsString() || !t.Get("file").IsString() || !t.Get("dtype").IsString() || !t.Get("shape").IsArray())
        throw_js(env, RE_ERR_ARG, "spec.tensors[" + std::to_string(i) + "] needs name, file, dtype and shape");
      s.name = t.Get("name").As<Napi::String>().Utf8Value();
      s.file = t.Get("file").As<Napi::String>().Utf8Value();
      double off = num_field(env, t, "offset", "tensor"), nb = num_field(env, t, "nbytes", "tensor");
      if (!(off >= 0 && nb >= 0 && off <= 9.0e15 && nb <= 9.0e15))
        throw_js(env, RE_ERR_SAFETENSORS, "tensor " + s.name + ": bad offset or size");
      s.offset = (uint64_t)off;
      s.nbytes = (uint64_t)nb;
      std::string dt = t.Get("dtype").As<Napi::String>().Utf8Value();
      if (dt == "F32") s.dt = re::DType::F32;
      else if (dt == "F16") s.dt = re::DType::F16;
      else if (dt == "BF16") s.dt = re::DType::BF16;
      else throw_js(env, RE_ERR_SAFETENSORS, "tensor " + s.name + ": unsupported dtype " + dt);
      Napi::Array sh = t.Get("shape").As<Napi::Array>();
      for (uint32_t j = 0; j < sh.Length(); ++j) {
        Napi::Value d = sh.Get(j);
        if (!d.IsNumber() || d.As<Napi::Number>().DoubleValue() < 0)
          throw_js(env, RE_ERR_SAFETENSORS, "tensor " + s.name + ": bad shape");
        s.shape.push_back((int64_t)d.As<Napi::Number>().DoubleValue());
      }
      specs.push_back(std::move(s));
    }
    try {
      std::unique_ptr<re::Backend> be =
          backend == "cuda" ? re::make_cuda_backend(device)
          : backend == "cpu" ? re::make_cpu_backend(threads)
                             : (throw Error(RE_ERR_ARG, "unknown backend '" + backend + "' (cpu | cuda)"), nullptr);
      model_ = std::make_unique<re::Model>(std::move(be), std::move(arch), std::move(specs));
      if (spec.Has("checkFinite") && !spec.Get("checkFinite").IsUndefined()) model_->set_check_finite(spec.Get("checkFinite").ToBoolean());
    } catch (const Error& e) {
      throw_js(env, e.code(), e.what());
    }
  }

  ~NativeModel() override { release(); }

  // Called on the JS thread when a worker finishes: frees memory if dispose() came while it ran.
  void worker_done() {
    busy_ = false;
    if (dispose_pending_) release();
    Unref();
  }

 private:
  friend class ModelWorker;

  re::Model* begin_call(Napi::Env env) {
    if (!model_ || dispose_pending_) throw_js(env, RE_ERR_DISPOSED, "the model has been disposed");
    if (busy_) throw_js(env, "ERR_BUSY", "another call is running on this model (calls must be serialised)");
    busy_ = true;
    abort_ = false;
    Ref();
    return model_.get();
  }

  void release() {
    if (model_) {
      reported_ = 0;
      model_.reset();
    }
  }

  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value SideCreate(const Napi::CallbackInfo& info);
  Napi::Value SideFree(const Napi::CallbackInfo& info);
  Napi::Value SideSlots(const Napi::CallbackInfo& info);
  Napi::Value SideAdd(const Napi::CallbackInfo& info);
  Napi::Value SideRemove(const Napi::CallbackInfo& info);
  Napi::Value SideReset(const Napi::CallbackInfo& info);
  Napi::Value SideRead(const Napi::CallbackInfo& info);
  Napi::Value SideWrite(const Napi::CallbackInfo& info);
  Napi::Value SideTies(const Napi::CallbackInfo& info);
  Napi::Value SideScore(const Napi::CallbackInfo& info);
  Napi::Value SideEdit(const Napi::CallbackInfo& info);
  Napi::Value BaseFingerprint(const Napi::CallbackInfo& info);
  Napi::Value SideMergeLossAware(const Napi::CallbackInfo& info);
  Napi::Value SideFeatures(const Napi::CallbackInfo& info);
  // Queue a closure on the model as an async call (serialised by begin_call); resolves with result().
  Napi::Value run_async(Napi::Env env, std::function<void(re::Model*)> run,
                        std::function<Napi::Value(Napi::Env)> result);
  re::Model* live(Napi::Env env) {
    if (!model_ || dispose_pending_) throw_js(env, RE_ERR_DISPOSED, "the model has been disposed");
    return model_.get();
  }
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value Abort(const Napi::CallbackInfo& info) {
    abort_ = true;
    return info.Env().Undefined();
  }
  Napi::Value CacheLength(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), model_ ? model_->cache_length() : 0);
  }
  Napi::Value MemoryBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), model_ ? (double)model_->memory_bytes() : 0.0);
  }
  // memoryPeakBytes(reset?): the high-water mark of the backend's allocations (host or device) since the
  // last reset; with reset = true the mark restarts from the bytes in use now (after reading it).
  Napi::Value MemoryPeakBytes(const Napi::CallbackInfo& info) {
    if (!model_) return Napi::Number::New(info.Env(), 0.0);
    const double peak = (double)model_->memory_peak_bytes();
    if (info.Length() > 0 && info[0].ToBoolean()) model_->reset_memory_peak();
    return Napi::Number::New(info.Env(), peak);
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (reported_) Napi::MemoryManagement::AdjustExternalMemory(env, -(int64_t)reported_);
    reported_ = 0;
    if (busy_) {
      abort_ = true;
      dispose_pending_ = true;
    } else {
      release();
      dispose_pending_ = true;
    }
    return env.Undefined();
  }

 public:
  void report_memory(Napi::Env env) {
    if (!model_ || dispose_pending_) return;
    int64_t now = (int64_t)model_->memory_bytes();
    if (now != reported_) {
      Napi::MemoryManagement::AdjustExternalMemory(env, now - reported_);
      reported_ = now;
    }
  }

  std::unique_ptr<re::Model> model_;
  std::atomic<bool> abort_{false};
  bool busy_ = false;
  bool dispose_pending_ = false;
  int64_t reported_ = 0;
};

class ModelWorker : public Worker {
 public:
  ModelWorker(Napi::Env env, NativeModel* owner, re::Model* m) : Worker(env), owner_(owner), m_(m) {}

 protected:
  void Done() override {
    owner_->report_memory(Env());
    owner_->worker_done();
  }
  NativeModel* owner_;
  re::Model* m_;
  const std::atomic<bool>* abort_flag() const { return &owner_->abort_; }
};

class LoadWorker : public ModelWorker {
 public:
  using ModelWorker::ModelWorker;
  void Run() override { m_->load(abort_flag()); }
};

class ForwardWorker : public ModelWorker {
 public:
  ForwardWorker(Napi::Env env, NativeModel* o, re::Model* m, std::vector<int32_t> tokens, int B, int T,
                std::vector<int32_t> pad, std::vector<int32_t> rows, re::Route route)
      : ModelWorker(env, o, m), tokens_(std::move(tokens)), pad_(std::move(pad)), rows_(std::move(rows)), B_(B), T_(T),
        route_(std::move(route)) {}
  void Run() override { out_ = m_->forward(tokens_, B_, T_, pad_, rows_, abort_flag(), route_); }
  Napi::Value Result(Napi::Env env) override {
    auto a = Napi::Float32Array::New(env, out_.size());
    std::memcpy(a.Data(), out_.data(), out_.size() * 4);
    return a;
  }

 private:
  std::vector<int32_t> tokens_, pad_, rows_;
  int B_, T_;
  re::Route route_;
  std::vector<float> out_;
};

class GenerateWorker : public ModelWorker {
 public:
  GenerateWorker(Napi::Env env, NativeModel* o, re::Model* m, std::vector<int32_t> ids, re::SampleOptions so,
                 re::Route route)
      : ModelWorker(env, o, m), ids_(std::move(ids)), so_(std::move(so)), route_(std::move(route)) {}
  void Run() override { out_ = m_->generate(ids_, so_, abort_flag(), route_); }
  Napi::Value Result(Napi::Env env) override {
    auto a = Napi::Int32Array::New(env, out_.size());
    if (!out_.empty()) std::memcpy(a.Data(), out_.data(), out_.size() * 4);
    return a;
  }

 private:
  std::vector<int32_t> ids_;
  re::SampleOptions so_;
  re::Route route_;
  std::vector<int32_t> out_;
};

// A worker that runs a closure and converts its result on the JS thread.
class LambdaWorker : public ModelWorker {
 public:
  LambdaWorker(Napi::Env env, NativeModel* o, re::Model* m, std::function<void(re::Model*)> run,
               std::function<Napi::Value(Napi::Env)> result)
      : ModelWorker(env, o, m), run_(std::move(run)), result_(std::move(result)) {}
  void Run() override { run_(m_); }
  Napi::Value Result(Napi::Env env) override { return result_ ? result_(env) : env.Undefined(); }

 private:
  std::function<void(re::Model*)> run_;
  std::function<Napi::Value(Napi::Env)> result_;
};

// The edit worker reports progress through a thread-safe function (one call per step).
class EditWorker : public ModelWorker {
 public:
  EditWorker(Napi::Env env, NativeModel* o, re::Model* m, int side, int slot, re::EditBatch b, re::EditHyper h,
             Napi::Value progress)
      : ModelWorker(env, o, m), side_(side), slot_(slot), b_(std::move(b)), h_(h) {
    if (progress.IsFunction())
      tsfn_ = Napi::ThreadSafeFunction::New(env, progress.As<Napi::Function>(), "repair-edit:progress", 0, 1);
  }
  void Run() override {
    re::ProgressFn fn;
    if (tsfn_) {
      fn = [this](int step, float loss) {
        tsfn_.NonBlockingCall([step, loss](Napi::Env env, Napi::Function cb) {
          try {
            cb.Call({Napi::Number::New(env, step), Napi::Number::New(env, loss)});
          } catch (...) {
          }
        });
      };
    }
    res_ = m_->side_edit(side_, slot_, b_, h_, abort_flag(), fn);
  }
  void Done() override {
    if (tsfn_) tsfn_.Release();
    ModelWorker::Done();
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    auto arr = [&](const std::vector<float>& v) {
      auto a = Napi::Float32Array::New(env, v.size());
      if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * 4);
      return a;
    };
    o.Set("loss", arr(res_.loss));
    o.Set("ce", arr(res_.ce));
    o.Set("act", arr(res_.act));
    o.Set("steps", Napi::Number::New(env, res_.steps));
    o.Set("thresholdStat", Napi::Number::New(env, res_.threshold_stat));
    o.Set("promptStat", Napi::Number::New(env, res_.prompt_stat));
    o.Set("earlyStop", Napi::Boolean::New(env, res_.early));
    o.Set("kd", arr(res_.kd));
    o.Set("sampleStat", arr(res_.sample_stat));
    o.Set("samplePromptStat", arr(res_.sample_prompt_stat));
    o.Set("sampleCe", arr(res_.sample_ce));
    o.Set("sampleKd", arr(res_.sample_kd));
    return o;
  }

 private:
  int side_, slot_;
  re::EditBatch b_;
  re::EditHyper h_;
  re::EditResult res_;
  Napi::ThreadSafeFunction tsfn_;
};

static Napi::Float32Array f32_array(Napi::Env env, const std::vector<float>& v) {
  auto a = Napi::Float32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * 4);
  return a;
}

static std::vector<float> f32_vec(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_js(env, RE_ERR_ARG, std::string(what) + " must be a Float32Array");
  auto a = v.As<Napi::Float32Array>();
  return std::vector<float>(a.Data(), a.Data() + a.ElementLength());
}

// {side, slots} (forward) or {side, slot} (generate); undefined = no routing.
static re::Route route_arg(Napi::Env env, const Napi::Value& v, bool single) {
  re::Route r;
  if (v.IsUndefined() || v.IsNull()) return r;
  if (!v.IsObject()) throw_js(env, RE_ERR_ARG, "route must be an object");
  Napi::Object o = v.As<Napi::Object>();
  r.side = int_field(env, o, "side", "route", 1);
  if (single) r.slot = {int_field(env, o, "slot", "route", -1)};
  else r.slot = int32_vec(env, o.Get("slots"), "route.slots");
  return r;
}

Napi::Value NativeModel::Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  re::Model* m = begin_call(env);
  auto* w = new LoadWorker(env, this, m);
  w->Queue();
  return w->promise();
}

Napi::Value NativeModel::Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!model_ || dispose_pending_) throw_js(env, RE_ERR_DISPOSED, "the model has been disposed");
  auto tokens = int32_vec(env, info[0], "tokens");
  int B = int_arg(env, info[1], "B"), T = int_arg(env, info[2], "T");
  auto pad = int32_vec(env, info[3], "pad");
  auto rows = int32_vec(env, info[4], "logitRows");
  re::Route route = route_arg(env, info[5], false);
  re::Model* m = begin_call(env);
  auto* w = new ForwardWorker(env, this, m, std::move(tokens), B, T, std::move(pad), std::move(rows), std::move(route));
  w->Queue();
  return w->promise();
}

Napi::Value NativeModel::Generate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!model_ || dispose_pending_) throw_js(env, RE_ERR_DISPOSED, "the model has been disposed");
  auto ids = int32_vec(env, info[0], "ids");
  if (!info[1].IsObject()) throw_js(env, RE_ERR_ARG, "generate: options object required");
  Napi::Object o = info[1].As<Napi::Object>();
  re::SampleOptions so;
  so.reset = o.Get("reset").ToBoolean();
  so.max_tokens = int_field(env, o, "maxTokens", "options", 0);
  so.temperature = (float)num_field(env, o, "temperature", "options");
  so.top_k = int_field(env, o, "topK", "options", 0);
  so.top_p = (float)num_field(env, o, "topP", "options");
  double seed = num_field(env, o, "seed", "options"), step0 = num_field(env, o, "step0", "options");
  if (!(so.temperature >= 0) || !(so.top_p > 0 && so.top_p <= 1) || !(seed >= 0) || !(step0 >= 0))
    throw_js(env, RE_ERR_ARG, "generate: temperature >= 0, 0 < topP <= 1, seed >= 0 and step0 >= 0 are required");
  so.seed = (uint64_t)seed;
  so.step0 = (uint64_t)step0;
  so.eos = int32_vec(env, o.Get("eos"), "options.eos");
  re::Route route = route_arg(env, o.Get("route"), true);
  re::Model* m = begin_call(env);
  auto* w = new GenerateWorker(env, this, m, std::move(ids), std::move(so), std::move(route));
  w->Queue();
  return w->promise();
}

Napi::Value NativeModel::run_async(Napi::Env env, std::function<void(re::Model*)> run,
                                   std::function<Napi::Value(Napi::Env)> result) {
  re::Model* m = begin_call(env);
  auto* w = new LambdaWorker(env, this, m, std::move(run), std::move(result));
  w->Queue();
  return w->promise();
}

// ---- side memories ----------------------------------------------------------------------------------
#define RE_TRY(env, expr)                  \
  try {                                    \
    expr;                                  \
  } catch (const Error& e) {               \
    throw_js(env, e.code(), e.what());     \
  }

Napi::Value NativeModel::SideCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  re::Model* m = live(env);
  if (busy_) throw_js(env, "ERR_BUSY", "another call is running on this model");
  int layer = int_arg(env, info[0], "layer");
  const int target = info.Length() > 1 && !info[1].IsUndefined() ? int_arg(env, info[1], "target") : 0;
  int id = 0;
  RE_TRY(env, id = m->side_create(layer, target));
  return Napi::Number::New(env, id);
}

Napi::Value NativeModel::SideFree(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!model_ || dispose_pending_) return env.Undefined();  // the model took its stores with it
  if (busy_) throw_js(env, "ERR_BUSY", "another call is running on this model");
  model_->side_free(int_arg(env, info[0], "side"));
  report_memory(env);
  return env.Undefined();
}

Napi::Value NativeModel::SideSlots(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  re::Model* m = live(env);
  int n = 0;
  RE_TRY(env, n = m->side_slots(int_arg(env, info[0], "side")));
  return Napi::Number::New(env, n);
}

Napi::Value NativeModel::SideAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  const int side = int_arg(env, info[0], "side");
  if (!info[1].IsNumber()) throw_js(env, RE_ERR_ARG, "from must be a slot index or -1");
  const int from = info[1].As<Napi::Number>().Int32Value();
  auto out = std::make_shared<int>(0);
  return run_async(env, [side, from, out](re::Model* m) { *out = m->side_add(side, from); },
                             [out](Napi::Env e) { return Napi::Number::New(e, *out); });
}

Napi::Value NativeModel::SideRemove(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  const int side = int_arg(env, info[0], "side");
  auto slots = int32_vec(env, info[1], "slots");
  return run_async(env, [side, slots](re::Model* m) { m->side_remove(side, slots); }, nullptr);
}

Napi::Value NativeModel::SideReset(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  const int side = int_arg(env, info[0], "side"), slot = int_arg(env, info[1], "slot");
  return run_async(env, [side, slot](re::Model* m) { m->side_reset(side, slot); }, nullptr);
}

Napi::Value NativeModel::SideRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  const int side = int_arg(env, info[0], "side"), slot = int_arg(env, info[1], "slot");
  auto out = std::make_shared<std::vector<float>>();
  return run_async(env, [side, slot, out](re::Model* m) { *out = m->side_read(side, slot); },
                             [out](Napi::Env e) -> Napi::Value { return f32_array(e, *out); });
}

Napi::Value NativeModel::SideWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  const int side = int_arg(env, info[0], "side"), slot = int_arg(env, info[1], "slot");
  auto data = std::make_shared<std::vector<float>>(f32_vec(env, info[2], "weights"));
  return run_async(env, [side, slot, data](re::Model* m) { m->side_write(side, slot, *data); }, nullptr);
}

Napi::Value NativeModel::SideTies(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  const int side = int_arg(env, info[0], "side"), dst = int_arg(env, info[1], "dst");
  auto srcs = int32_vec(env, info[2], "srcs");
  auto weights = f32_vec(env, info[3], "weights");
  if (!info[4].IsNumber()) throw_js(env, RE_ERR_ARG, "density must be a number");
  const float density = info[4].As<Napi::Number>().FloatValue();
  return run_async(env, [=](re::Model* m) { m->side_ties(side, dst, srcs, weights, density); }, nullptr);
}

Napi::Value NativeModel::SideScore(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  const int side = int_arg(env, info[0], "side");
  auto tokens = int32_vec(env, info[1], "tokens");
  const int B = int_arg(env, info[2], "B"), T = int_arg(env, info[3], "T");
  auto pad = int32_vec(env, info[4], "pad");
  const int act = int_arg(env, info[5], "act");
  auto out = std::make_shared<std::vector<float>>();
  const std::atomic<bool>* ab = &abort_;
  return run_async(env, [=](re::Model* m) { *out = m->side_score(side, tokens, B, T, pad, act, ab); },
                             [out](Napi::Env e) -> Napi::Value { return f32_array(e, *out); });
}

Napi::Value NativeModel::SideEdit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  const int side = int_arg(env, info[0], "side"), slot = int_arg(env, info[1], "slot");
  if (!info[2].IsObject() || !info[3].IsObject()) throw_js(env, RE_ERR_ARG, "sideEdit(side, slot, batch, hyper, onProgress?)");
  Napi::Object bo = info[2].As<Napi::Object>(), ho = info[3].As<Napi::Object>();
  re::EditBatch b;
  b.tokens = int32_vec(env, bo.Get("tokens"), "batch.tokens");
  b.R = int_field(env, bo, "R", "batch", 1);
  b.T = int_field(env, bo, "T", "batch", 1);
  b.pad = int32_vec(env, bo.Get("pad"), "batch.pad");
  b.labels = int32_vec(env, bo.Get("labels"), "batch.labels");
  b.label_w = f32_vec(env, bo.Get("labelWeights"), "batch.labelWeights");
  b.kind = int32_vec(env, bo.Get("kind"), "batch.kind");
  if (bo.Has("sample") && !bo.Get("sample").IsUndefined()) b.sample = int32_vec(env, bo.Get("sample"), "batch.sample");
  re::EditHyper h;
  h.n_iter = int_field(env, ho, "nIter", "hyper", 1, 100000);
  h.lr = (float)num_field(env, ho, "lr", "hyper");
  h.wd = (float)num_field(env, ho, "weightDecay", "hyper");
  h.clamp = (float)num_field(env, ho, "clamp", "hyper");
  h.rho = (float)num_field(env, ho, "maskRatio", "hyper");
  const double seed = num_field(env, ho, "seed", "hyper");
  if (!(seed >= 0 && seed <= 9007199254740991.0)) throw_js(env, RE_ERR_ARG, "hyper.seed must be a safe non-negative integer");
  h.seed = (uint64_t)seed;
  h.margin = ho.Get("margin").ToBoolean();
  h.alpha = (float)num_field(env, ho, "alpha", "hyper");
  h.beta = (float)num_field(env, ho, "beta", "hyper");
  h.gamma = (float)num_field(env, ho, "gamma", "hyper");
  h.act = int_field(env, ho, "act", "hyper", 0, 2);
  h.early_stop = ho.Get("earlyStop").ToBoolean();
  h.full_forward = ho.Get("fullForward").ToBoolean();
  auto opt_num = [&](const char* k, float dflt) -> float {
    return ho.Has(k) && !ho.Get(k).IsUndefined() ? (float)num_field(env, ho, k, "hyper") : dflt;
  };
  h.act_weight = opt_num("actWeight", 1.f);
  h.kd = ho.Has("kd") && ho.Get("kd").ToBoolean();
  h.kd_weight = opt_num("kdWeight", 1.f);
  h.kd_lambda = opt_num("kdLambda", 0.2f);
  h.kd_theta = opt_num("kdTheta", 0.1f);
  h.kd_temp = opt_num("kdTemperature", 0.f);
  if (!(h.kd_temp >= 0.f) || !std::isfinite(h.kd_temp)) throw_js(env, RE_ERR_ARG, "hyper.kdTemperature must be a finite number >= 0");
  h.fit_stop = opt_num("fitStop", 0.f);
  if (!(h.fit_stop >= 0.f)) throw_js(env, RE_ERR_ARG, "hyper.fitStop must be >= 0");
  re::Model* m = begin_call(env);
  auto* w = new EditWorker(env, this, m, side, slot, std::move(b), h, info[4]);
  w->Queue();
  return w->promise();
}

Napi::Value NativeModel::SideMergeLossAware(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  const int side = int_arg(env, info[0], "side"), dst = int_arg(env, info[1], "dst");
  auto srcs = int32_vec(env, info[2], "srcs");
  auto weights = f32_vec(env, info[3], "weights");
  return run_async(env, [=](re::Model* m) { m->side_merge_loss_aware(side, dst, srcs, weights); }, nullptr);
}

Napi::Value NativeModel::SideFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  const int side = int_arg(env, info[0], "side");
  auto tokens = int32_vec(env, info[1], "tokens");
  const int B = int_arg(env, info[2], "B"), T = int_arg(env, info[3], "T");
  auto pad = int32_vec(env, info[4], "pad");
  auto out = std::make_shared<std::vector<float>>();
  const std::atomic<bool>* ab = &abort_;
  return run_async(env, [=](re::Model* m) { *out = m->side_features(side, tokens, B, T, pad, ab); },
                             [out](Napi::Env e) -> Napi::Value { return f32_array(e, *out); });
}

Napi::Value NativeModel::BaseFingerprint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env);
  const int layer = int_arg(env, info[0], "layer");
  const int target = info.Length() > 1 && !info[1].IsUndefined() ? int_arg(env, info[1], "target") : 0;
  auto out = std::make_shared<uint64_t>(0);
  return run_async(env, [=](re::Model* m) { *out = m->base_fingerprint(layer, target); }, [out](Napi::Env e) -> Napi::Value {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)*out);
    return Napi::String::New(e, buf);
  });
}

// ---- info() and runOp() ----------------------------------------------------------------------------
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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("benchLinear", Napi::Function::New(env, BenchLinear));
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("runOp", Napi::Function::New(env, RunOp));
  exports.Set("NativeModel", NativeModel::Init(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(repair_edit, Init)
