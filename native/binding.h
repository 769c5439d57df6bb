// binding.h — the pieces the N-API files share (lib/native.ts is the JS contract):
//   binding.cpp          module init: exports info, NativeModel and loadTesting
//   binding_model.cpp    NativeModel, one per loaded model (forward, generate, side-memory creation, fingerprints)
//   binding_side.cpp     NativeSideMemory, one per side-memory store of a model
//   binding_info.cpp     info(): backends, CPU ISA levels, CUDA devices
//   binding_testing.cpp  the test/bench hooks (runOp, opNames, benchLinear), reached only through loadTesting()
// Long calls are AsyncWorkers that resolve or reject a Promise; native failures are re::Error values that become
// JS Errors with a `code`. Nothing here may crash the process: a disposed model or store gives ERR_DISPOSED.
#pragma once
#include <napi.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model.h"

namespace rejs {

using re::Error;

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& msg);
[[noreturn]] void throw_js(Napi::Env env, const std::string& code, const std::string& msg);

// ---- argument helpers (validate before anything reaches the runtime) ------------------------------
double num_field(Napi::Env env, const Napi::Object& o, const char* key, const char* what);
int int_field(Napi::Env env, const Napi::Object& o, const char* key, const char* what, int lo = 0, int hi = 1 << 30);
int int_arg(Napi::Env env, const Napi::Value& v, const char* what);  // a non-negative integer
std::vector<int32_t> int32_vec(Napi::Env env, const Napi::Value& v, const char* what);
std::vector<float> f32_vec(Napi::Env env, const Napi::Value& v, const char* what);
Napi::Float32Array f32_array(Napi::Env env, const std::vector<float>& v);

// Per-environment data: the class constructors (a side-memory store checks its model with instanceof).
struct AddonData {
  Napi::FunctionReference model_ctor, side_ctor;
};

// ---- async worker base ---------------------------------------------------------------------------
class Worker : public Napi::AsyncWorker {
 public:
  explicit Worker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  virtual void Run() = 0;
  virtual Napi::Value Result(Napi::Env env) { return env.Undefined(); }
  virtual void Done() {}

  void Execute() override;
  void OnOK() override;
  void OnError(const Napi::Error& e) override;

 private:
  Napi::Promise::Deferred deferred_;
  std::string code_, msg_;
};

// ---- NativeModel ---------------------------------------------------------------------------------
// Calls are serialised (ERR_BUSY while one runs); dispose() during a call aborts it and frees memory when it ends.
class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::Function Init(Napi::Env env);
  NativeModel(const Napi::CallbackInfo& info);
  ~NativeModel() override;

  // A live model or ERR_DISPOSED.
  re::Model* live(Napi::Env env);
  // Start a call: ERR_DISPOSED / ERR_BUSY, else marks the model busy (and referenced) until worker_done().
  re::Model* begin_call(Napi::Env env);
  // Called on the JS thread when a worker finishes: frees the stores released while it ran, and the memory
  // if dispose() came while it ran; reports the model's memory to V8.
  void worker_done(Napi::Env env);
  // Queue a closure on the model as an async call (serialised by begin_call); resolves with result().
  Napi::Value run_async(Napi::Env env, std::function<void(re::Model*)> run, std::function<Napi::Value(Napi::Env)> result);
  void report_memory(Napi::Env env);
  // Free side-memory store `id` now, or when the running call ends (a store released by dispose() or collected
  // while its model works). Nothing when the model is gone (its stores went with it).
  void release_side(int id);
  // Cleared when this object is destroyed: stores check it before touching the model (finalizers run in any order
  // at environment teardown).
  std::shared_ptr<NativeModel*> token() const { return self_; }
  const std::atomic<bool>* abort_flag() const { return &abort_; }
  bool busy() const { return busy_; }

 private:
  void release();
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value Abort(const Napi::CallbackInfo& info);
  Napi::Value CacheLength(const Napi::CallbackInfo& info);
  Napi::Value MemoryBytes(const Napi::CallbackInfo& info);
  Napi::Value MemoryPeakBytes(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value CreateSideMemory(const Napi::CallbackInfo& info);
  Napi::Value BaseFingerprint(const Napi::CallbackInfo& info);

  std::unique_ptr<re::Model> model_;
  std::shared_ptr<NativeModel*> self_;
  std::vector<int> pending_free_;  // stores released while a call ran
  std::atomic<bool> abort_{false};
  bool busy_ = false;
  bool dispose_pending_ = false;
  int64_t reported_ = 0;
};

class ModelWorker : public Worker {
 public:
  ModelWorker(Napi::Env env, NativeModel* owner, re::Model* m) : Worker(env), owner_(owner), m_(m) {}

 protected:
  void Done() override { owner_->worker_done(Env()); }
  NativeModel* owner_;
  re::Model* m_;
  const std::atomic<bool>* abort_flag() const { return owner_->abort_flag(); }
};

// ---- NativeSideMemory ----------------------------------------------------------------------------
// One side-memory store: `new NativeSideMemory(model, layer, target)` (what model.createSideMemory does) creates
// it natively; it holds a strong reference to its model's JS object, so the model outlives it, and is freed by
// dispose() or by its finalizer. Its calls run on the model's queue (serialised with the model's own calls).
class NativeSideMemory : public Napi::ObjectWrap<NativeSideMemory> {
 public:
  static Napi::Function Init(Napi::Env env);
  NativeSideMemory(const Napi::CallbackInfo& info);
  ~NativeSideMemory() override;

 private:
  // The live model for a call on this store, or ERR_DISPOSED (store disposed, or its model).
  NativeModel* owner(Napi::Env env);
  void free_store();
  Napi::Value Id(const Napi::CallbackInfo& info);
  Napi::Value Layer(const Napi::CallbackInfo& info);
  Napi::Value Target(const Napi::CallbackInfo& info);
  Napi::Value Slots(const Napi::CallbackInfo& info);
  Napi::Value Add(const Napi::CallbackInfo& info);
  Napi::Value Remove(const Napi::CallbackInfo& info);
  Napi::Value Reset(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value Ties(const Napi::CallbackInfo& info);
  Napi::Value Score(const Napi::CallbackInfo& info);
  Napi::Value Edit(const Napi::CallbackInfo& info);
  Napi::Value MergeLossAware(const Napi::CallbackInfo& info);
  Napi::Value Features(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  Napi::ObjectReference model_ref_;      // keeps the model's JS object alive while this store exists
  std::shared_ptr<NativeModel*> model_;  // the model's liveness token
  int id_ = 0, layer_ = 0, target_ = 0;
  bool disposed_ = false;
};

// binding_info.cpp / binding_testing.cpp
Napi::Value Info(const Napi::CallbackInfo& info);
Napi::Value LoadTesting(const Napi::CallbackInfo& info);

}  // namespace rejs
