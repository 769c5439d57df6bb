// binding_side.cpp — NativeSideMemory: one side-memory store of a model (f32 copies of one layer's FFN matrix,
// stacked as slots; slot meaning is the caller's). Created by model.createSideMemory(layer, target) — or
// `new` on its class with (model, layer, target) — it holds a strong reference to the model's JS object, so the
// model outlives every store; dispose() frees it at once, the finalizer when it is collected (after the model's
// running call, if one runs). Every call on a disposed store or a disposed model gives ERR_DISPOSED.
// The calls run on the model's queue (ERR_BUSY while another call of the model runs), like the model's own.
#include <cmath>
#include <cstring>

#include "binding.h"

namespace rejs {

namespace {
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
}  // namespace

Napi::Function NativeSideMemory::Init(Napi::Env env) {
  return DefineClass(env, "NativeSideMemory",
                     {InstanceAccessor("id", &NativeSideMemory::Id, nullptr),
                      InstanceAccessor("layer", &NativeSideMemory::Layer, nullptr),
                      InstanceAccessor("target", &NativeSideMemory::Target, nullptr),
                      InstanceMethod("slots", &NativeSideMemory::Slots), InstanceMethod("add", &NativeSideMemory::Add),
                      InstanceMethod("remove", &NativeSideMemory::Remove), InstanceMethod("reset", &NativeSideMemory::Reset),
                      InstanceMethod("read", &NativeSideMemory::Read), InstanceMethod("write", &NativeSideMemory::Write),
                      InstanceMethod("ties", &NativeSideMemory::Ties), InstanceMethod("score", &NativeSideMemory::Score),
                      InstanceMethod("edit", &NativeSideMemory::Edit),
                      InstanceMethod("mergeLossAware", &NativeSideMemory::MergeLossAware),
                      InstanceMethod("features", &NativeSideMemory::Features),
                      InstanceMethod("dispose", &NativeSideMemory::Dispose)});
}

// (model, layer, target?): target 0 (default) the value matrix (down_proj; GPT-2 mlp.c_proj as [D, F]), 1 the key
// matrix, GPT-2 only (mlp.c_fc as [F, D]).
NativeSideMemory::NativeSideMemory(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeSideMemory>(info) {
  Napi::Env env = info.Env();
  AddonData* data = env.GetInstanceData<AddonData>();
  if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(data->model_ctor.Value()))
    throw_js(env, RE_ERR_ARG, "NativeSideMemory(model, layer, target?): model must be a NativeModel");
  Napi::Object model_js = info[0].As<Napi::Object>();
  NativeModel* owner = NativeModel::Unwrap(model_js);
  re::Model* m = owner->live(env);
  if (owner->busy()) throw_js(env, "ERR_BUSY", "another call is running on this model");
  layer_ = int_arg(env, info[1], "layer");
  target_ = info.Length() > 2 && !info[2].IsUndefined() ? int_arg(env, info[2], "target") : 0;
  try {
    id_ = m->side_create(layer_, target_);
  } catch (const Error& e) {
    throw_js(env, e.code(), e.what());
  }
  model_ = owner->token();
  model_ref_ = Napi::Persistent(model_js);  // strong: the model is not collected before this store
}

NativeSideMemory::~NativeSideMemory() { free_store(); }

void NativeSideMemory::free_store() {
  if (disposed_) return;
  disposed_ = true;
  if (model_ && *model_) (*model_)->release_side(id_);
}

NativeModel* NativeSideMemory::owner(Napi::Env env) {
  if (disposed_) throw_js(env, RE_ERR_DISPOSED, "the side memory has been disposed");
  NativeModel* o = model_ ? *model_ : nullptr;
  if (!o) throw_js(env, RE_ERR_DISPOSED, "the model has been disposed");
  o->live(env);
  return o;
}

Napi::Value NativeSideMemory::Id(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), id_); }
Napi::Value NativeSideMemory::Layer(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), layer_); }
Napi::Value NativeSideMemory::Target(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), target_); }

Napi::Value NativeSideMemory::Dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bool was = disposed_;
  free_store();
  if (!was && model_ && *model_) (*model_)->report_memory(env);
  model_ref_.Reset();  // the model may be collected now
  return env.Undefined();
}

Napi::Value NativeSideMemory::Slots(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  re::Model* m = owner(env)->live(env);
  int n = 0;
  try {
    n = m->side_slots(id_);
  } catch (const Error& e) {
    throw_js(env, e.code(), e.what());
  }
  return Napi::Number::New(env, n);
}

// add(from): a copy of slot `from` (-1: the base weight) as a new slot; resolves with its index.
Napi::Value NativeSideMemory::Add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NativeModel* o = owner(env);
  if (!info[0].IsNumber()) throw_js(env, RE_ERR_ARG, "from must be a slot index or -1");
  const int from = info[0].As<Napi::Number>().Int32Value(), id = id_;
  auto out = std::make_shared<int>(0);
  return o->run_async(env, [id, from, out](re::Model* m) { *out = m->side_add(id, from); },
                      [out](Napi::Env e) { return Napi::Number::New(e, *out); });
}

// remove(slots): later slots move down.
Napi::Value NativeSideMemory::Remove(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NativeModel* o = owner(env);
  auto slots = int32_vec(env, info[0], "slots");
  const int id = id_;
  return o->run_async(env, [id, slots](re::Model* m) { m->side_remove(id, slots); }, nullptr);
}

// reset(slot): slot <- the base weight.
Napi::Value NativeSideMemory::Reset(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NativeModel* o = owner(env);
  const int slot = int_arg(env, info[0], "slot"), id = id_;
  return o->run_async(env, [id, slot](re::Model* m) { m->side_reset(id, slot); }, nullptr);
}

Napi::Value NativeSideMemory::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NativeModel* o = owner(env);
  const int slot = int_arg(env, info[0], "slot"), id = id_;
  auto out = std::make_shared<std::vector<float>>();
  return o->run_async(env, [id, slot, out](re::Model* m) { *out = m->side_read(id, slot); },
                      [out](Napi::Env e) -> Napi::Value { return f32_array(e, *out); });
}

Napi::Value NativeSideMemory::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NativeModel* o = owner(env);
  const int slot = int_arg(env, info[0], "slot"), id = id_;
  auto data = std::make_shared<std::vector<float>>(f32_vec(env, info[1], "weights"));
  return o->run_async(env, [id, slot, data](re::Model* m) { m->side_write(id, slot, *data); }, nullptr);
}

// ties(dst, srcs, weights, density): TIES-merge source slots against the base weight into dst.
Napi::Value NativeSideMemory::Ties(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NativeModel* o = owner(env);
  const int dst = int_arg(env, info[0], "dst"), id = id_;
  auto srcs = int32_vec(env, info[1], "srcs");
  auto weights = f32_vec(env, info[2], "weights");
  if (!info[3].IsNumber()) throw_js(env, RE_ERR_ARG, "density must be a number");
  const float density = info[3].As<Napi::Number>().FloatValue();
  return o->run_async(env, [=](re::Model* m) { m->side_ties(id, dst, srcs, weights, density); }, nullptr);
}

// score(tokens, B, T, pad, act[, slots]): per-token routing distances of every slot, [slots * B*T]; with an
// Int32Array of slots, of those alone in that order.
Napi::Value NativeSideMemory::Score(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NativeModel* o = owner(env);
  auto tokens = int32_vec(env, info[0], "tokens");
  const int B = int_arg(env, info[1], "B"), T = int_arg(env, info[2], "T"), id = id_;
  auto pad = int32_vec(env, info[3], "pad");
  const int act = int_arg(env, info[4], "act");
  std::vector<int32_t> only;
  if (info.Length() > 5 && !info[5].IsUndefined()) {
    only = int32_vec(env, info[5], "slots");
    if (only.empty()) throw_js(env, RE_ERR_ARG, "slots must name at least one slot");
  }
  auto out = std::make_shared<std::vector<float>>();
  const std::atomic<bool>* ab = o->abort_flag();
  return o->run_async(env, [=](re::Model* m) { *out = m->side_score(id, tokens, B, T, pad, act, ab, only); },
                      [out](Napi::Env e) -> Napi::Value { return f32_array(e, *out); });
}

Napi::Value NativeSideMemory::Edit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NativeModel* owner = this->owner(env);
  const int slot = int_arg(env, info[0], "slot");
  if (!info[1].IsObject() || !info[2].IsObject()) throw_js(env, RE_ERR_ARG, "edit(slot, batch, hyper, onProgress?)");
  Napi::Object bo = info[1].As<Napi::Object>(), ho = info[2].As<Napi::Object>();
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
  re::Model* m = owner->begin_call(env);
  auto* w = new EditWorker(env, owner, m, id_, slot, std::move(b), h, info[3]);
  w->Queue();
  return w->promise();
}

// mergeLossAware(dst, srcs, weights): REPAIR's loss-aware merge (Alg. 4) of source slots into dst.
Napi::Value NativeSideMemory::MergeLossAware(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NativeModel* o = owner(env);
  const int dst = int_arg(env, info[0], "dst"), id = id_;
  auto srcs = int32_vec(env, info[1], "srcs");
  auto weights = f32_vec(env, info[2], "weights");
  return o->run_async(env, [=](re::Model* m) { m->side_merge_loss_aware(id, dst, srcs, weights); }, nullptr);
}

// features(tokens, B, T, pad): mean over each row's valid tokens of the edited layer's FFN activation, [B * F].
Napi::Value NativeSideMemory::Features(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  NativeModel* o = owner(env);
  auto tokens = int32_vec(env, info[0], "tokens");
  const int B = int_arg(env, info[1], "B"), T = int_arg(env, info[2], "T"), id = id_;
  auto pad = int32_vec(env, info[3], "pad");
  auto out = std::make_shared<std::vector<float>>();
  const std::atomic<bool>* ab = o->abort_flag();
  return o->run_async(env, [=](re::Model* m) { *out = m->side_features(id, tokens, B, T, pad, ab); },
                      [out](Napi::Env e) -> Napi::Value { return f32_array(e, *out); });
}

}  // namespace rejs
