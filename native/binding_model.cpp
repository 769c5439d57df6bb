// binding_model.cpp — NativeModel: one loaded model (weights on its backend, KV cache, side-memory stores).
// load / forward / generate and the store calls run as AsyncWorkers, one at a time (ERR_BUSY otherwise);
// dispose() during a call aborts it and frees the memory when it ends. Side-memory stores are NativeSideMemory
// objects (binding_side.cpp), created by createSideMemory(layer, target).
#include <cstdio>
#include <cstring>

#include "binding.h"

namespace rejs {

Napi::Function NativeModel::Init(Napi::Env env) {
  return DefineClass(env, "NativeModel",
                     {InstanceMethod("load", &NativeModel::Load), InstanceMethod("forward", &NativeModel::Forward),
                      InstanceMethod("generate", &NativeModel::Generate), InstanceMethod("abort", &NativeModel::Abort),
                      InstanceMethod("cacheLength", &NativeModel::CacheLength),
                      InstanceMethod("memoryBytes", &NativeModel::MemoryBytes),
                      InstanceMethod("memoryPeakBytes", &NativeModel::MemoryPeakBytes),
                      InstanceMethod("dispose", &NativeModel::Dispose),
                      InstanceMethod("createSideMemory", &NativeModel::CreateSideMemory),
                      InstanceMethod("baseFingerprint", &NativeModel::BaseFingerprint)});
}

NativeModel::NativeModel(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<NativeModel>(info), self_(std::make_shared<NativeModel*>(this)) {
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

NativeModel::~NativeModel() {
  *self_ = nullptr;  // stores outliving this object (finalizer order at teardown) leave the model alone
  release();
}

void NativeModel::release() {
  if (model_) {
    reported_ = 0;
    pending_free_.clear();  // the stores go with the model
    model_.reset();
  }
}

re::Model* NativeModel::live(Napi::Env env) {
  if (!model_ || dispose_pending_) throw_js(env, RE_ERR_DISPOSED, "the model has been disposed");
  return model_.get();
}

re::Model* NativeModel::begin_call(Napi::Env env) {
  re::Model* m = live(env);
  if (busy_) throw_js(env, "ERR_BUSY", "another call is running on this model (calls must be serialised)");
  busy_ = true;
  abort_ = false;
  Ref();
  return m;
}

void NativeModel::worker_done(Napi::Env env) {
  busy_ = false;
  if (dispose_pending_) release();
  if (model_) {
    for (int id : pending_free_) {
      try {
        model_->side_free(id);
      } catch (const Error&) {  // never: the ids are the stores' own
      }
    }
  }
  pending_free_.clear();
  report_memory(env);
  Unref();
}

void NativeModel::release_side(int id) {
  if (!model_ || dispose_pending_) return;
  if (busy_) {
    pending_free_.push_back(id);
    return;
  }
  try {
    model_->side_free(id);
  } catch (const Error&) {  // never: the ids are the stores' own
  }
}

void NativeModel::report_memory(Napi::Env env) {
  if (!model_ || dispose_pending_) return;
  int64_t now = (int64_t)model_->memory_bytes();
  if (now != reported_) {
    Napi::MemoryManagement::AdjustExternalMemory(env, now - reported_);
    reported_ = now;
  }
}

Napi::Value NativeModel::Abort(const Napi::CallbackInfo& info) {
  abort_ = true;
  return info.Env().Undefined();
}
Napi::Value NativeModel::CacheLength(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), model_ ? model_->cache_length() : 0);
}
Napi::Value NativeModel::MemoryBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), model_ ? (double)model_->memory_bytes() : 0.0);
}
// memoryPeakBytes(reset?): the high-water mark of the backend's allocations (host or device) since the
// last reset; with reset = true the mark restarts from the bytes in use now (after reading it).
Napi::Value NativeModel::MemoryPeakBytes(const Napi::CallbackInfo& info) {
  if (!model_) return Napi::Number::New(info.Env(), 0.0);
  const double peak = (double)model_->memory_peak_bytes();
  if (info.Length() > 0 && info[0].ToBoolean()) model_->reset_memory_peak();
  return Napi::Number::New(info.Env(), peak);
}
Napi::Value NativeModel::Dispose(const Napi::CallbackInfo& info) {
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

// {side, slots} (forward) or {side, slot} (generate): side is a store id (NativeSideMemory.id); undefined = no routing.
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


// createSideMemory(layer, target?): a new store (no slots yet), as a NativeSideMemory holding this model.
Napi::Value NativeModel::CreateSideMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<napi_value> args = {Value()};
  for (size_t i = 0; i < info.Length() && i < 2; ++i) args.push_back(info[i]);
  return env.GetInstanceData<AddonData>()->side_ctor.New(args);
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

}  // namespace rejs
