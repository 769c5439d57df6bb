// native.ts — loads the compiled addon and declares exactly what it exports (the test/bench hooks: lib/testing.ts).
// This file is the contract between lib/ and native/binding*.cpp: keep the two in step.
import { createRequire } from 'node:module';
import { packageRoot } from './paths.js';

export type BackendName = 'cpu' | 'cuda';
export type NativeDType = 'F32' | 'F16' | 'BF16';

export interface NativeCudaDevice {
  index: number;
  name: string;
  computeCapability: string; // "9.0"
  totalMemory: number; // bytes
  freeMemory: number; // bytes
  multiprocessors: number;
  /** This build has a kernel image the device can run (probed with cudaFuncGetAttributes on a kernel). */
  kernelImage: boolean;
  /** The probe's CUDA error when it has none ('' otherwise). */
  kernelImageError: string;
}

/** The CPU kernels' ISA level (native/cpu/isa.h). */
export interface NativeCpuInfo {
  isaDetected: string; // best level this CPU supports: 'x86-64' | 'x86-64-v3' | 'x86-64-v4'
  isaSupported: string[]; // every level this CPU supports
  isaForced: string; // REPAIR_CPU_ISA as set ('' when unset)
  isa: string; // the level a new CPU backend runs ('' when REPAIR_CPU_ISA names one this CPU lacks)
  isaError: string; // why `isa` is empty
  kernels: Record<string, string>; // op family -> variant it runs, e.g. matmul: 'x86-64-v3 256-bit packed GEMM 6x16 + GEMV dots'
}

export interface NativeInfo {
  backends: BackendName[]; // built backends ("cpu" always)
  cpuThreads: number;
  cpu: NativeCpuInfo;
  cuda: {
    built: boolean;
    available: boolean;
    reason: string; // why CUDA is unavailable ('' when available)
    driverVersion: number; // e.g. 13000 (0 when there is no driver)
    runtimeVersion: number;
    /** CUDA architectures compiled in, CMake style: "80-real,90-real,90-virtual" ('' when CUDA is not built). */
    archs: string;
    devices: NativeCudaDevice[];
  };
}

/** One tensor to read natively from a safetensors file (offsets are absolute file offsets). */
export interface NativeTensorSpec {
  name: string; // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  file: string;
  offset: number;
  nbytes: number;
  dtype: NativeDType;
  shape: number[];
}

/** What the runtime needs of the architecture (validated in TS, re-checked natively). */
export interface NativeArch {
  /**
   * 'llama' (default: llama, mistral, qwen2) or 'gpt2' (LayerNorm with bias, learned positions, no RoPE,
   * GELU MLP, biases everywhere, tied head). GPT-2 tensors are passed under their canonical names without
   * the "transformer." prefix (wte.weight, h.N.attn.c_attn.weight, ...), Conv1D weights in their stored
   * [in, out] layout (transposed natively at load).
   */
  kind?: 'llama' | 'gpt2';
  /** gpt2: rows of the position table wpe (n_positions); must be >= maxPositions. */
  numPositions?: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositions: number; // context length the KV cache is sized for
  rmsNormEps: number; // the norm's eps: RMSNorm (llama) or LayerNorm layer_norm_epsilon (gpt2)
  invFreq: Float32Array; // [headDim/2] RoPE inverse frequencies, already scaled (llama3 etc.); empty for gpt2
  tieEmbeddings: boolean; // lm_head = embed_tokens
  qkvBias: boolean; // Qwen2: q/k/v projections have biases
}

export interface NativeModelSpec {
  backend: BackendName;
  device: number;
  threads?: number; // CPU backend threads (0 = all)
  checkFinite?: boolean; // refuse NaN/Inf weights at load (default true)
  arch: NativeArch;
  tensors: NativeTensorSpec[];
}

export interface NativeGenerateOptions {
  reset: boolean; // clear the KV cache before feeding `ids`
  maxTokens: number; // sample at most this many tokens in this call
  temperature: number; // 0 = greedy (argmax, ties to the lowest id)
  topK: number; // 0 = off
  topP: number; // 1 = off
  seed: number; // uint32
  step0: number; // index of the first token sampled by this call (RNG counter; makes chunking invisible)
  eos: Int32Array; // stop after sampling one of these (it is included in the result)
  route?: { side: number; slot: number }; // use side-memory slot `slot` (-1 = main weight) at the store's layer
}

/** One edit's training rows (docs/algorithm.md, "Training one edit"), left-padded. */
export interface NativeEditBatch {
  tokens: Int32Array; // [R*T]
  R: number;
  T: number;
  pad: Int32Array; // [R]
  labels: Int32Array; // [R*T]: the id the logits at (r, t) must predict, or -1
  labelWeights: Float32Array; // [R*T]: CE weight at (r, t)
  kind: Int32Array; // [R]: 0 = edit row, 1 = irrelevant row (routing margin only)
  sample?: Int32Array; // [R]: sample index of each edit row in a REPAIR batch (-1 on irrelevant rows); default: one sample
}

export interface NativeEditHyper {
  nIter: number;
  lr: number;
  weightDecay: number;
  clamp: number; // W' stays within W_v ± clamp (<= 0: off)
  maskRatio: number; // ρ (>= 1: no mask)
  seed: number; // the shard's Philox mask seed (safe integer)
  margin: boolean; // add the routing-margin loss (WISE); false: CE only (FT-L)
  alpha: number;
  beta: number;
  gamma: number;
  act: 0 | 1 | 2; // φ of the activation score: 0 identity (paper), 1 SiLU, 2 GELU-tanh
  earlyStop: boolean;
  fullForward: boolean; // recompute the frozen prefix every step (benchmark baseline)
  actWeight?: number; // λ_a (REPAIR Eq. 6), default 1
  kd?: boolean; // intra-batch distillation across the batch's samples (REPAIR Eq. 4), default off
  kdWeight?: number; // λ_KD, default 1
  kdLambda?: number; // λ of the cosine term, default 0.2
  kdTheta?: number; // ϑ of the variance term, default 0.1 (negative: a diversity bonus)
  kdTemperature?: number; // T of the optional logit KL of Eq. 4 (weighted λ_KD·T²); 0 or absent = off
  fitStop?: number; // [ours] > 0: stop once L_act = 0 and every sample's CE <= fitStop; default 0 (off)
}

export interface NativeEditResult {
  loss: Float32Array; // per step: ce + act
  ce: Float32Array;
  act: Float32Array;
  steps: number;
  kd: Float32Array; // L_KD per step (0 when off)
  sampleStat: Float32Array; // per sample at the last step: mean routing score of its edit rows
  samplePromptStat: Float32Array; // per sample: the same over prompt tokens
  sampleCe: Float32Array; // per sample: its weighted CE (its share of L_edit)
  sampleKd: Float32Array; // per sample: 1 − cos(o_i, o_teacher) (0 for the teacher or when KD is off)
  thresholdStat: number; // mean over edit rows of the per-row mean distance at the last step (§1.5)
  promptStat: number; // the same over the prompt tokens of each edit row only (routing of bare prompts)
  earlyStop: boolean;
}

/**
 * One side-memory store (native/binding_side.cpp): f32 copies of one layer's FFN matrix, stacked as slots (slot
 * meaning is the caller's). It keeps its model alive; dispose() frees it at once (its finalizer otherwise). Calls
 * on a disposed store or model reject or throw ERR_DISPOSED; they run on the model's queue (ERR_BUSY meanwhile).
 */
export interface NativeSideMemory {
  /** The store's id: what forward/generate routes name as `side`. */
  readonly id: number;
  readonly layer: number;
  readonly target: 0 | 1;
  slots(): number;
  add(from: number): Promise<number>; // copy of slot `from` (-1 = base weight); new slot index
  remove(slots: Int32Array): Promise<void>; // later slots move down
  reset(slot: number): Promise<void>; // slot <- base weight
  read(slot: number): Promise<Float32Array>; // [D*F]
  write(slot: number, weights: Float32Array): Promise<void>;
  /** TIES-merge source slots against the base weight into dst (dst may be one of the sources). */
  ties(dst: number, srcs: Int32Array, weights: Float32Array, density: number): Promise<void>;
  /** Per-token routing distances of every slot, [slots * B*T] (slot-major); one stacked GEMM. */
  score(tokens: Int32Array, B: number, T: number, pad: Int32Array, act: number, slots?: Int32Array): Promise<Float32Array>;
  /** One whole edit (all steps) in one call; the slot is restored on any failure. */
  edit(slot: number, batch: NativeEditBatch, hyper: NativeEditHyper, onProgress?: (step: number, loss: number) => void): Promise<NativeEditResult>;
  /** REPAIR's loss-aware merge (Alg. 4) of source slots into dst with the given weights. */
  mergeLossAware(dst: number, srcs: Int32Array, weights: Float32Array): Promise<void>;
  /** Batching features: mean over each row's valid tokens of the edited layer's FFN activation, [B * F]. */
  features(tokens: Int32Array, B: number, T: number, pad: Int32Array): Promise<Float32Array>;
  dispose(): void;
}

/** The compiled class (native/binding_model.cpp); lib/ uses NativeModel, which adds the id-keyed side API. */
export interface NativeModelCore {
  /** Read every tensor from disk and upload it to the backend. */
  load(): Promise<void>;
  /**
   * Batched forward without state. tokens: [B*T] left-padded (pad[b] = number of pad positions at the
   * start of row b; positions restart at 0 at the first real token). logitRows: flat indices b*T+t of
   * the positions whose logits are returned, in that order. Returns Float32Array [logitRows.length * vocab].
   */
  forward(
    tokens: Int32Array,
    B: number,
    T: number,
    pad: Int32Array,
    logitRows: Int32Array,
    route?: { side: number; slots: Int32Array }, // per row: side-memory slot (-1 = main weight) of store `side` (its id)
  ): Promise<Float32Array>;
  /** Batch-1 generation with a persistent KV cache (see NativeGenerateOptions). Returns the sampled ids. */
  generate(ids: Int32Array, opts: NativeGenerateOptions): Promise<Int32Array>;
  /** Ask the running call (if any) to stop at its next check; it then rejects with ERR_ABORTED. */
  abort(): void;
  /** Number of tokens currently in the generation KV cache. */
  cacheLength(): number;
  /** Backend memory held by this model (weights + caches), in bytes. */
  memoryBytes(): number;
  /** High-water mark of the backend's allocations since the last reset; reset = true restarts it from now. */
  memoryPeakBytes(reset?: boolean): number;
  /** Free everything now (waits for nothing: a running call finishes first, then memory is freed). */
  dispose(): void;
  /**
   * A new side-memory store (no slots yet). target 0 (default): the value matrix (down_proj; GPT-2 mlp.c_proj as
   * [D, F], its bias added to every output); 1: the key matrix, GPT-2 only (mlp.c_fc as [F, D] with its bias;
   * the FFN activation is gelu of its output): the reference's choice, for parity studies.
   */
  createSideMemory(layer: number, target?: 0 | 1): NativeSideMemory;
  /** Hex fingerprint (FNV-1a 64) of a layer's base down_proj bytes (target 1: GPT-2 c_fc). */
  baseFingerprint(layer: number, target?: 0 | 1): Promise<string>;
}

/**
 * A loaded model as lib/ sees it: the compiled class plus side memories by id (the stores' `id`), so the
 * Editor keeps plain numbers (routes name the store by id). sideCreate keeps the store object until sideFree.
 */
export interface NativeModel extends NativeModelCore {
  /** The store object behind an id (ERR_INVALID_ARG for an unknown or freed id). */
  sideMemory(side: number): NativeSideMemory;
  /** Returns a store id (no slots yet); see createSideMemory. */
  sideCreate(layer: number, target?: 0 | 1): number;
  sideFree(side: number): void;
  sideSlots(side: number): number;
  sideAdd(side: number, from: number): Promise<number>; // copy of slot `from` (-1 = base weight); new slot index
  sideRemove(side: number, slots: Int32Array): Promise<void>; // later slots move down
  sideReset(side: number, slot: number): Promise<void>; // slot <- base weight
  sideRead(side: number, slot: number): Promise<Float32Array>; // [D*F]
  sideWrite(side: number, slot: number, weights: Float32Array): Promise<void>;
  /** TIES-merge source slots against the base weight into dst (dst may be one of the sources). */
  sideTies(side: number, dst: number, srcs: Int32Array, weights: Float32Array, density: number): Promise<void>;
  /**
   * Per-token routing distances of every slot, [slots * B*T] (slot-major); one stacked GEMM. With `slots`,
   * of those slots alone in that order, [slots.length * B*T] (one GEMM each).
   */
  sideScore(side: number, tokens: Int32Array, B: number, T: number, pad: Int32Array, act: number, slots?: Int32Array): Promise<Float32Array>;
  /** One whole edit (all steps) in one call; the slot is restored on any failure. */
  sideEdit(
    side: number,
    slot: number,
    batch: NativeEditBatch,
    hyper: NativeEditHyper,
    onProgress?: (step: number, loss: number) => void,
  ): Promise<NativeEditResult>;
  /** REPAIR's loss-aware merge (Alg. 4) of source slots into dst with the given weights. */
  sideMergeLossAware(side: number, dst: number, srcs: Int32Array, weights: Float32Array): Promise<void>;
  /** Batching features: mean over each row's valid tokens of the edited layer's FFN activation, [B * F]. */
  sideFeatures(side: number, tokens: Int32Array, B: number, T: number, pad: Int32Array): Promise<Float32Array>;
}

export interface NativeAddon {
  info(): NativeInfo;
  NativeModel: new (spec: NativeModelSpec) => NativeModel;
}

/** What the compiled module exports (native/binding.cpp); loadTesting is reached only through lib/testing.ts. */
export interface NativeModule {
  info(): NativeInfo;
  NativeModel: new (spec: NativeModelSpec) => NativeModelCore;
  loadTesting(): unknown;
}

function unknownSide(side: number): Error {
  return Object.assign(new Error(`side-memory store ${side} does not exist`), { code: 'ERR_INVALID_ARG' });
}

// The compiled class with the id-keyed side API on top (a JS subclass: instances are still the native objects).
function withSideIds(Core: new (spec: NativeModelSpec) => NativeModelCore): new (spec: NativeModelSpec) => NativeModel {
  return class NativeModel extends Core {
    #sides = new Map<number, NativeSideMemory>();
    sideMemory(side: number): NativeSideMemory {
      const s = this.#sides.get(side);
      if (!s) throw unknownSide(side);
      return s;
    }
    // async calls on an unknown id reject (as the native id check inside the call did)
    #on<T>(side: number, f: (s: NativeSideMemory) => Promise<T>): Promise<T> {
      const s = this.#sides.get(side);
      return s ? f(s) : Promise.reject(unknownSide(side));
    }
    sideCreate(layer: number, target?: 0 | 1): number {
      const s = this.createSideMemory(layer, target);
      this.#sides.set(s.id, s);
      return s.id;
    }
    sideFree(side: number): void {
      const s = this.#sides.get(side);
      if (!s) return;
      this.#sides.delete(side);
      s.dispose();
    }
    sideSlots(side: number): number {
      return this.sideMemory(side).slots();
    }
    sideAdd(side: number, from: number): Promise<number> {
      return this.#on(side, (s) => s.add(from));
    }
    sideRemove(side: number, slots: Int32Array): Promise<void> {
      return this.#on(side, (s) => s.remove(slots));
    }
    sideReset(side: number, slot: number): Promise<void> {
      return this.#on(side, (s) => s.reset(slot));
    }
    sideRead(side: number, slot: number): Promise<Float32Array> {
      return this.#on(side, (s) => s.read(slot));
    }
    sideWrite(side: number, slot: number, weights: Float32Array): Promise<void> {
      return this.#on(side, (s) => s.write(slot, weights));
    }
    sideTies(side: number, dst: number, srcs: Int32Array, weights: Float32Array, density: number): Promise<void> {
      return this.#on(side, (s) => s.ties(dst, srcs, weights, density));
    }
    sideScore(side: number, tokens: Int32Array, B: number, T: number, pad: Int32Array, act: number, slots?: Int32Array): Promise<Float32Array> {
      return this.#on(side, (s) => s.score(tokens, B, T, pad, act, slots));
    }
    sideEdit(side: number, slot: number, batch: NativeEditBatch, hyper: NativeEditHyper, onProgress?: (step: number, loss: number) => void): Promise<NativeEditResult> {
      return this.#on(side, (s) => s.edit(slot, batch, hyper, onProgress));
    }
    sideMergeLossAware(side: number, dst: number, srcs: Int32Array, weights: Float32Array): Promise<void> {
      return this.#on(side, (s) => s.mergeLossAware(dst, srcs, weights));
    }
    sideFeatures(side: number, tokens: Int32Array, B: number, T: number, pad: Int32Array): Promise<Float32Array> {
      return this.#on(side, (s) => s.features(tokens, B, T, pad));
    }
  };
}

let loaded: NativeModule | undefined;
let cached: NativeAddon | undefined;

/** The compiled module itself (lib/testing.ts reaches the test hooks through it). */
export function nativeModule(): NativeModule {
  if (!loaded) {
    const require = createRequire(import.meta.url);
    const load = require('node-gyp-build') as (dir: string) => NativeModule;
    loaded = load(packageRoot());
  }
  return loaded;
}

export function native(): NativeAddon {
  if (!cached) {
    const m = nativeModule();
    cached = { info: () => m.info(), NativeModel: withSideIds(m.NativeModel) };
  }
  return cached;
}
