// native.ts — loads the compiled addon and declares exactly what it exports.
// This file is the contract between lib/ and native/binding.cpp: keep the two in step.
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

export interface NativeModel {
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
    route?: { side: number; slots: Int32Array }, // per row: side-memory slot (-1 = main weight)
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

  // ---- side memories (f32 copies of one layer's FFN matrix, stacked; slot meaning is the caller's) ----
  /**
   * Returns a store id (no slots yet). target 0 (default): the value matrix (down_proj; GPT-2 mlp.c_proj as
   * [D, F], its bias added to every output); 1: the key matrix, GPT-2 only (mlp.c_fc as [F, D] with its bias;
   * the FFN activation is gelu of its output): the reference's choice, for parity studies.
   */
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
  /** Per-token routing distances of every slot, [slots * B*T] (slot-major); one stacked GEMM. */
  sideScore(side: number, tokens: Int32Array, B: number, T: number, pad: Int32Array, act: number): Promise<Float32Array>;
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
  /** Hex fingerprint (FNV-1a 64) of a layer's base down_proj bytes (target 1: GPT-2 c_fc). */
  baseFingerprint(layer: number, target?: 0 | 1): Promise<string>;
}

/** Op-level access for CPU-vs-CUDA tests: runs one backend op on host inputs. */
export interface NativeOpResult {
  [output: string]: Float32Array | boolean | number;
  guardOk: boolean; // the guard regions around every output were left untouched
}

export interface NativeAddon {
  info(): NativeInfo;
  NativeModel: new (spec: NativeModelSpec) => NativeModel;
  /** Seconds per backend linear() call of y[M,N] = x[M,K]·W[N,K]ᵀ (timed natively; for bench/). backend: 'cpu', 'cpu:<isa>' or 'cuda'. */
  benchLinear(backend: BackendName | string, M: number, N: number, K: number, dtype: NativeDType, iters: number, threads?: number): number;
  /** One backend op on host arrays (tests). backend: 'cpu', 'cpu:baseline' | 'cpu:v3' | 'cpu:v4' (forces an ISA level), or 'cuda'. */
  runOp(backend: BackendName | string, op: string, args: Record<string, Float32Array | Int32Array | Uint16Array | number | string>): NativeOpResult;
}

let cached: NativeAddon | undefined;

export function native(): NativeAddon {
  if (!cached) {
    const require = createRequire(import.meta.url);
    const load = require('node-gyp-build') as (dir: string) => NativeAddon;
    cached = load(packageRoot());
  }
  return cached;
}
