// config.ts — read and validate a Hugging Face config.json (+ generation_config.json), compute the RoPE
// inverse frequencies, and check the checkpoint's tensors against the architecture.

import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { RepairError } from './errors.js';
import type { NativeArch, NativeTensorSpec } from './native.js';
import { toNativeSpec, type SafetensorsTensor } from './safetensors.js';

export const SUPPORTED_MODEL_TYPES = ['llama', 'mistral', 'qwen2', 'gpt2'] as const;
export type ModelType = (typeof SUPPORTED_MODEL_TYPES)[number];
/** The runtime's architecture kind: 'llama' (llama, mistral, qwen2) or 'gpt2'. */
export type ArchKind = 'llama' | 'gpt2';

/** Architectures we know of and plan to support (refused with "not supported yet"). */
const PLANNED_MODEL_TYPES = new Set<string>(['gptj', 'gpt_neox']);

/** GPT-2 activation_function values that are the tanh-form GELU the runtime computes. */
const GPT2_TANH_GELUS = new Set(['gelu_new', 'gelu_pytorch_tanh', 'gelu_fast']);

export const DEFAULT_CONTEXT_LENGTH = 4096;

/** Upper bounds past which a config is considered corrupt, not merely large. */
export const CONFIG_LIMITS = {
  hidden_size: 1_000_000,
  intermediate_size: 10_000_000,
  num_hidden_layers: 1000,
  num_attention_heads: 10_000,
  num_key_value_heads: 10_000,
  head_dim: 100_000,
  vocab_size: 10_000_000,
  max_position_embeddings: 1 << 30,
} as const;

export type RopeScaling =
  | { type: 'default' }
  | { type: 'linear'; factor: number }
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number };

export interface ModelConfig {
  /** The folder the config was read from. */
  readonly dir: string;
  readonly modelType: ModelType;
  /** The runtime's architecture kind. */
  readonly arch: ArchKind;
  /** The MLP activation: 'silu' (llama family) or the GPT-2 activation_function (a tanh-form GELU). */
  readonly hiddenAct: string;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly vocabSize: number;
  /** max_position_embeddings as stored in config.json (gpt2: n_positions, the rows of wpe). */
  readonly maxPositionEmbeddings: number;
  /** The context length the runtime is sized for: min(max_position_embeddings, contextLength option, sliding window). */
  readonly maxPositions: number;
  /** The norm's eps: rms_norm_eps (llama family) or layer_norm_epsilon (gpt2). */
  readonly rmsNormEps: number;
  /** rope_theta (0 for gpt2, which has no RoPE). */
  readonly ropeTheta: number;
  readonly ropeScaling: RopeScaling;
  /** RoPE inverse frequencies [headDim/2] (float64-computed, rounded to f32), scaling applied; empty for gpt2. */
  readonly invFreq: Float32Array;
  readonly tieEmbeddings: boolean;
  readonly qkvBias: boolean;
  readonly bosTokenId?: number;
  /** End-of-sequence ids: generation_config.json's eos_token_id, else config.json's. */
  readonly eosTokenIds: readonly number[];
  readonly padTokenId?: number;
  readonly torchDtype?: string;
  /** The raw config.json and generation_config.json objects. */
  readonly raw: Readonly<Record<string, unknown>>;
  readonly generationConfig?: Readonly<Record<string, unknown>>;
}

export interface ReadConfigOptions {
  /** Cap on the context length (KV cache size). Default 4096. */
  contextLength?: number;
}

type Json = Record<string, unknown>;

function isObj(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function configError(file: string, message: string, field?: string): never {
  throw new RepairError('ERR_CONFIG', `${file}: ${message}`, field ? { file, field } : { file });
}

function readJson(file: string, what: 'ERR_CONFIG'): Json {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new RepairError(what, code === 'ENOENT' ? `${file} not found` : `${file}: cannot read (${code ?? (e as Error).message})`, { file }, { cause: e });
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new RepairError(what, `${file}: not valid JSON (${(e as Error).message})`, { file }, { cause: e });
  }
  if (!isObj(v)) configError(file, 'must hold a JSON object');
  return v;
}

function posInt(file: string, cfg: Json, field: string, max: number, fallback?: number): number {
  const v = cfg[field] ?? fallback;
  if (v === undefined || v === null) configError(file, `missing "${field}"`, field);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    configError(file, `"${field}" must be a positive integer, got ${JSON.stringify(v)}`, field);
  }
  if (v > max) configError(file, `"${field}" = ${v} is absurd (more than ${max})`, field);
  return v;
}

function posNumber(file: string, cfg: Json, field: string, fallback: number, max = Infinity, min = 0): number {
  const v = cfg[field] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > max || v < min) {
    const range = min > 0 ? ` in [${min}, ${max}]` : max < Infinity ? ` at most ${max}` : '';
    configError(file, `"${field}" must be a positive number${range}, got ${JSON.stringify(v)}`, field);
  }
  return v;
}

/** Norm epsilons below this underflow (or nearly) in f32 and the runtime would divide by ~0. */
export const MIN_NORM_EPS = 1e-30;
/** rope_theta below 1 makes θ^(-2i/d) grow instead of shrink (1e-300 overflows f32 and gives NaN logits). */
export const MIN_ROPE_THETA = 1;

/** An optional boolean field: absent/null → fallback; anything but true/false (e.g. "true", 1) → ERR_CONFIG. */
function optBool(file: string, cfg: Json, field: string, fallback: boolean): boolean {
  const v = cfg[field];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') configError(file, `"${field}" must be true or false, got ${JSON.stringify(v)}`, field);
  return v;
}

/** An optional token id (bos/pad): absent/null → undefined; a non-integer → ERR_CONFIG; negative (pad -1 in some configs) → undefined. */
function optTokenId(file: string, v: unknown, field: string, vocabSize: number): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) configError(file, `"${field}" must be an integer token id, got ${JSON.stringify(v)}`, field);
  if (v < 0) return undefined;
  if (v >= vocabSize) configError(file, `"${field}" ${v} is outside the vocabulary (${vocabSize})`, field);
  return v;
}

/** eos_token_id: an id or a list of ids; absent/null/[] → undefined. */
function tokenIds(file: string, v: unknown, field: string, vocabSize: number): number[] | undefined {
  if (v === undefined || v === null) return undefined;
  const arr = Array.isArray(v) ? v : [v];
  for (const x of arr) {
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) configError(file, `"${field}" must be a token id or a list of token ids, got ${JSON.stringify(v)}`, field);
    if (x >= vocabSize) configError(file, `${field} ${x} is outside the vocabulary (${vocabSize})`, field);
  }
  return arr.length > 0 ? (arr as number[]) : undefined;
}

/** The RoPE frequencies must be finite and positive (a huge scaling factor or tiny theta would give NaN logits). */
function checkInvFreq(file: string, inv: Float32Array): void {
  for (const f of inv) {
    if (!Number.isFinite(f) || !(f > 0)) {
      configError(file, `"rope_theta"/"rope_scaling" give a non-finite or zero RoPE frequency (${f}): the values are out of range`, 'rope_theta');
    }
  }
}

function parseRopeScaling(file: string, v: unknown): RopeScaling {
  if (v === undefined || v === null) return { type: 'default' };
  if (!isObj(v)) configError(file, '"rope_scaling" must be an object or null', 'rope_scaling');
  const t = v.rope_type ?? v.type;
  if (t === undefined || t === 'default') return { type: 'default' };
  const num = (k: string): number => {
    const x = v[k];
    if (typeof x !== 'number' || !Number.isFinite(x) || x <= 0) {
      configError(file, `"rope_scaling.${k}" must be a positive number, got ${JSON.stringify(x)}`, `rope_scaling.${k}`);
    }
    return x;
  };
  if (t === 'linear') return { type: 'linear', factor: num('factor') };
  if (t === 'llama3') {
    const lowFreqFactor = num('low_freq_factor');
    const highFreqFactor = num('high_freq_factor');
    if (highFreqFactor <= lowFreqFactor) {
      configError(file, `"rope_scaling.high_freq_factor" (${highFreqFactor}) must exceed low_freq_factor (${lowFreqFactor})`, 'rope_scaling.high_freq_factor');
    }
    return {
      type: 'llama3',
      factor: num('factor'),
      lowFreqFactor,
      highFreqFactor,
      originalMaxPositionEmbeddings: num('original_max_position_embeddings'),
    };
  }
  throw new RepairError('ERR_UNSUPPORTED_ARCH', `${file}: rope_scaling type ${JSON.stringify(t)} is not supported (supported: default, linear, llama3)`, {
    file,
    field: 'rope_scaling',
    ropeType: t,
  });
}

/**
 * RoPE inverse frequencies, computed in float64 and rounded to float32.
 * default: θ^(-2i/d); linear: divided by factor; llama3: HF `_compute_llama3_parameters`.
 */
export function computeInvFreq(headDim: number, theta: number, scaling: RopeScaling = { type: 'default' }): Float32Array {
  const half = headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    let f = 1 / Math.pow(theta, (2 * i) / headDim);
    if (scaling.type === 'linear') {
      f /= scaling.factor;
    } else if (scaling.type === 'llama3') {
      const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: old } = scaling;
      const lowFreqWavelen = old / lowFreqFactor;
      const highFreqWavelen = old / highFreqFactor;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > lowFreqWavelen) {
        f = f / factor; // low frequencies: fully scaled
      } else if (wavelen >= highFreqWavelen) {
        // medium: interpolate between scaled and unscaled
        const smooth = (old / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
        f = ((1 - smooth) * f) / factor + smooth * f;
      }
      // high frequencies (wavelen < highFreqWavelen) are kept
    }
    out[i] = f;
  }
  return out;
}

/** Read config.json (+ generation_config.json) from a model folder and validate it. */
export function readConfig(dir: string, opts: ReadConfigOptions = {}): ModelConfig {
  const file = join(dir, 'config.json');
  const cfg = readJson(file, 'ERR_CONFIG');
  return parseConfig(cfg, { dir, file, contextLength: opts.contextLength, generationConfig: readGenerationConfig(dir) });
}

function readGenerationConfig(dir: string): Json | undefined {
  const file = join(dir, 'generation_config.json');
  if (!existsSync(file)) return undefined;
  return readJson(file, 'ERR_CONFIG');
}

export interface ParseConfigOptions {
  dir?: string;
  file?: string; // for messages
  contextLength?: number;
  generationConfig?: Json;
}

/** Validate an already-parsed config.json object. */
export function parseConfig(cfg: Json, opts: ParseConfigOptions = {}): ModelConfig {
  const file = opts.file ?? 'config.json';
  const mt = cfg.model_type;
  if (typeof mt !== 'string' || mt.length === 0) {
    throw new RepairError('ERR_UNSUPPORTED_ARCH', `${file}: missing "model_type" (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`, {
      file,
      field: 'model_type',
    });
  }
  if (!(SUPPORTED_MODEL_TYPES as readonly string[]).includes(mt)) {
    const why = PLANNED_MODEL_TYPES.has(mt) ? 'is not supported yet' : 'is not supported';
    throw new RepairError('ERR_UNSUPPORTED_ARCH', `${file}: model_type "${mt}" ${why} (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`, {
      file,
      field: 'model_type',
      modelType: mt,
    });
  }
  const modelType = mt as ModelType;
  if (modelType === 'gpt2') return parseGpt2(cfg, file, opts);

  const act = cfg.hidden_act ?? cfg.hidden_activation ?? 'silu';
  if (act !== 'silu') {
    throw new RepairError('ERR_UNSUPPORTED_ARCH', `${file}: hidden_act ${JSON.stringify(act)} is not supported (only "silu")`, {
      file,
      field: 'hidden_act',
    });
  }

  const L = CONFIG_LIMITS;
  const hiddenSize = posInt(file, cfg, 'hidden_size', L.hidden_size);
  const intermediateSize = posInt(file, cfg, 'intermediate_size', L.intermediate_size);
  const numLayers = posInt(file, cfg, 'num_hidden_layers', L.num_hidden_layers);
  const numHeads = posInt(file, cfg, 'num_attention_heads', L.num_attention_heads);
  const numKvHeads = posInt(file, cfg, 'num_key_value_heads', L.num_key_value_heads, numHeads);
  const vocabSize = posInt(file, cfg, 'vocab_size', L.vocab_size);
  const maxPositionEmbeddings = posInt(file, cfg, 'max_position_embeddings', L.max_position_embeddings);

  let headDim: number;
  if (cfg.head_dim !== undefined && cfg.head_dim !== null) {
    headDim = posInt(file, cfg, 'head_dim', L.head_dim);
  } else {
    if (hiddenSize % numHeads !== 0) {
      configError(file, `"num_attention_heads" (${numHeads}) must divide "hidden_size" (${hiddenSize})`, 'num_attention_heads');
    }
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) configError(file, `head dimension ${headDim} must be even for RoPE`, 'head_dim');
  if (numKvHeads > numHeads || numHeads % numKvHeads !== 0) {
    configError(file, `"num_key_value_heads" (${numKvHeads}) must divide "num_attention_heads" (${numHeads})`, 'num_key_value_heads');
  }

  const rmsNormEps = posNumber(file, cfg, 'rms_norm_eps', 1e-6, 1, MIN_NORM_EPS);
  const ropeTheta = posNumber(file, cfg, 'rope_theta', 10000, 1e15, MIN_ROPE_THETA);
  const ropeScaling = parseRopeScaling(file, cfg.rope_scaling);
  if (cfg.partial_rotary_factor !== undefined && cfg.partial_rotary_factor !== null && cfg.partial_rotary_factor !== 1) {
    throw new RepairError('ERR_UNSUPPORTED_ARCH', `${file}: partial_rotary_factor ${JSON.stringify(cfg.partial_rotary_factor)} is not supported`, {
      file,
      field: 'partial_rotary_factor',
    });
  }

  // Biases: qwen2 always has q/k/v biases. Llama's attention_bias puts biases on q, k, v AND o; the
  // runtime has no o_proj bias, so that (rare) variant is refused, as is mlp_bias.
  let qkvBias = modelType === 'qwen2';
  const attentionBias = optBool(file, cfg, 'attention_bias', false);
  if (modelType === 'llama' || modelType === 'mistral') {
    if (attentionBias) {
      throw new RepairError('ERR_UNSUPPORTED_ARCH', `${file}: attention_bias true (biases on q/k/v/o projections) is not supported for ${modelType}`, {
        file,
        field: 'attention_bias',
      });
    }
    qkvBias = false;
  }
  if (optBool(file, cfg, 'mlp_bias', false)) {
    throw new RepairError('ERR_UNSUPPORTED_ARCH', `${file}: mlp_bias true is not supported`, { file, field: 'mlp_bias' });
  }
  const tieEmbeddings = optBool(file, cfg, 'tie_word_embeddings', false); // LlamaConfig, MistralConfig and Qwen2Config all default to false

  const ctx = opts.contextLength ?? DEFAULT_CONTEXT_LENGTH;
  if (!Number.isSafeInteger(ctx) || ctx <= 0) {
    throw new RepairError('ERR_INVALID_ARG', `contextLength must be a positive integer, got ${ctx}`, { field: 'contextLength' });
  }
  let maxPositions = Math.min(maxPositionEmbeddings, ctx);
  // Sliding-window attention equals full attention within the window: cap the context there rather than
  // silently computing something else past it.
  const useSliding = modelType === 'mistral' || (modelType === 'qwen2' && optBool(file, cfg, 'use_sliding_window', false));
  if (useSliding && cfg.sliding_window !== undefined && cfg.sliding_window !== null) {
    maxPositions = Math.min(maxPositions, posInt(file, cfg, 'sliding_window', L.max_position_embeddings));
  }

  const { eosTokenIds, bosTokenId, padTokenId } = specialIds(file, cfg, opts.generationConfig, vocabSize);

  const invFreq = computeInvFreq(headDim, ropeTheta, ropeScaling);
  checkInvFreq(file, invFreq);
  const gen = opts.generationConfig;
  const out: { -readonly [K in keyof ModelConfig]: ModelConfig[K] } = {
    dir: opts.dir ?? '',
    modelType,
    arch: 'llama',
    hiddenAct: 'silu',
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    maxPositionEmbeddings,
    maxPositions,
    rmsNormEps,
    ropeTheta,
    ropeScaling,
    invFreq,
    tieEmbeddings,
    qkvBias,
    eosTokenIds,
    raw: Object.freeze({ ...cfg }),
  };
  if (bosTokenId !== undefined) out.bosTokenId = bosTokenId;
  if (padTokenId !== undefined) out.padTokenId = padTokenId;
  if (typeof cfg.torch_dtype === 'string') out.torchDtype = cfg.torch_dtype;
  else if (typeof cfg.dtype === 'string') out.torchDtype = cfg.dtype;
  if (gen) out.generationConfig = Object.freeze({ ...gen });
  return out;
}

/** eos/bos/pad ids: generation_config.json's, else config.json's; each typed and inside the vocabulary. */
function specialIds(file: string, cfg: Json, gen: Json | undefined, vocabSize: number): { eosTokenIds: number[]; bosTokenId?: number; padTokenId?: number } {
  const gfile = file.replace(/config\.json$/, 'generation_config.json');
  const eosTokenIds = tokenIds(gfile, gen?.eos_token_id, 'eos_token_id', vocabSize) ?? tokenIds(file, cfg.eos_token_id, 'eos_token_id', vocabSize) ?? [];
  const bosTokenId = optTokenId(gfile, gen?.bos_token_id, 'bos_token_id', vocabSize) ?? optTokenId(file, cfg.bos_token_id, 'bos_token_id', vocabSize);
  const padTokenId = optTokenId(gfile, gen?.pad_token_id, 'pad_token_id', vocabSize) ?? optTokenId(file, cfg.pad_token_id, 'pad_token_id', vocabSize);
  const out: { eosTokenIds: number[]; bosTokenId?: number; padTokenId?: number } = { eosTokenIds };
  if (bosTokenId !== undefined) out.bosTokenId = bosTokenId;
  if (padTokenId !== undefined) out.padTokenId = padTokenId;
  return out;
}

function contextLengthOpt(opts: ParseConfigOptions): number {
  const ctx = opts.contextLength ?? DEFAULT_CONTEXT_LENGTH;
  if (!Number.isSafeInteger(ctx) || ctx <= 0) {
    throw new RepairError('ERR_INVALID_ARG', `contextLength must be a positive integer, got ${ctx}`, { field: 'contextLength' });
  }
  return ctx;
}

/**
 * GPT-2 (HF GPT2Config): n_embd, n_layer, n_head, n_positions (n_ctx), n_inner (default 4·n_embd),
 * layer_norm_epsilon (1e-5), activation_function (tanh-form GELU only), vocab_size; the head is always
 * tied to wte. Variants the runtime does not compute are refused: scale_attn_weights false,
 * scale_attn_by_inverse_layer_idx true, add_cross_attention true.
 */
function parseGpt2(cfg: Json, file: string, opts: ParseConfigOptions): ModelConfig {
  const unsupported = (field: string, msg: string): never => {
    throw new RepairError('ERR_UNSUPPORTED_ARCH', `${file}: ${msg} is not supported for gpt2`, { file, field });
  };
  const act = cfg.activation_function ?? 'gelu_new';
  if (typeof act !== 'string' || !GPT2_TANH_GELUS.has(act)) {
    unsupported('activation_function', `activation_function ${JSON.stringify(act)} (supported: ${[...GPT2_TANH_GELUS].join(', ')})`);
  }
  if (cfg.scale_attn_weights === false) unsupported('scale_attn_weights', 'scale_attn_weights false');
  if (cfg.scale_attn_by_inverse_layer_idx === true) unsupported('scale_attn_by_inverse_layer_idx', 'scale_attn_by_inverse_layer_idx true');
  if (cfg.add_cross_attention === true) unsupported('add_cross_attention', 'add_cross_attention true');
  if (!optBool(file, cfg, 'tie_word_embeddings', true)) unsupported('tie_word_embeddings', 'tie_word_embeddings false (GPT2LMHeadModel ties lm_head to wte)');

  const L = CONFIG_LIMITS;
  const hiddenSize = posInt(file, cfg, 'n_embd', L.hidden_size, cfg.hidden_size as number | undefined);
  const numLayers = posInt(file, cfg, 'n_layer', L.num_hidden_layers, cfg.num_hidden_layers as number | undefined);
  const numHeads = posInt(file, cfg, 'n_head', L.num_attention_heads, cfg.num_attention_heads as number | undefined);
  const vocabSize = posInt(file, cfg, 'vocab_size', L.vocab_size);
  const maxPositionEmbeddings = posInt(file, cfg, 'n_positions', L.max_position_embeddings, (cfg.n_ctx ?? cfg.max_position_embeddings) as number | undefined);
  const intermediateSize =
    cfg.n_inner === undefined || cfg.n_inner === null ? 4 * hiddenSize : posInt(file, cfg, 'n_inner', L.intermediate_size);
  if (intermediateSize > L.intermediate_size) configError(file, `"n_inner" = ${intermediateSize} is absurd (more than ${L.intermediate_size})`, 'n_inner');
  if (hiddenSize % numHeads !== 0) configError(file, `"n_head" (${numHeads}) must divide "n_embd" (${hiddenSize})`, 'n_head');
  const headDim = hiddenSize / numHeads;
  const eps = posNumber(file, cfg, 'layer_norm_epsilon', 1e-5, 1, MIN_NORM_EPS);

  const maxPositions = Math.min(maxPositionEmbeddings, contextLengthOpt(opts));
  const gen = opts.generationConfig;
  const { eosTokenIds, bosTokenId, padTokenId } = specialIds(file, cfg, opts.generationConfig, vocabSize);
  const out: { -readonly [K in keyof ModelConfig]: ModelConfig[K] } = {
    dir: opts.dir ?? '',
    modelType: 'gpt2',
    arch: 'gpt2',
    hiddenAct: act as string,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads: numHeads,
    headDim,
    vocabSize,
    maxPositionEmbeddings,
    maxPositions,
    rmsNormEps: eps,
    ropeTheta: 0,
    ropeScaling: { type: 'default' },
    invFreq: new Float32Array(0),
    tieEmbeddings: true,
    qkvBias: true,
    eosTokenIds,
    raw: Object.freeze({ ...cfg }),
  };
  if (bosTokenId !== undefined) out.bosTokenId = bosTokenId;
  if (padTokenId !== undefined) out.padTokenId = padTokenId;
  if (typeof cfg.torch_dtype === 'string') out.torchDtype = cfg.torch_dtype;
  else if (typeof cfg.dtype === 'string') out.torchDtype = cfg.dtype;
  if (gen) out.generationConfig = Object.freeze({ ...gen });
  return out;
}

/** The arch block of the native model spec. */
export function toNativeArch(c: ModelConfig): NativeArch {
  if (c.arch === 'gpt2') {
    return {
      kind: 'gpt2',
      numPositions: c.maxPositionEmbeddings,
      hiddenSize: c.hiddenSize,
      intermediateSize: c.intermediateSize,
      numLayers: c.numLayers,
      numHeads: c.numHeads,
      numKvHeads: c.numKvHeads,
      headDim: c.headDim,
      vocabSize: c.vocabSize,
      maxPositions: c.maxPositions,
      rmsNormEps: c.rmsNormEps,
      invFreq: c.invFreq,
      tieEmbeddings: true,
      qkvBias: true,
    };
  }
  return {
    hiddenSize: c.hiddenSize,
    intermediateSize: c.intermediateSize,
    numLayers: c.numLayers,
    numHeads: c.numHeads,
    numKvHeads: c.numKvHeads,
    headDim: c.headDim,
    vocabSize: c.vocabSize,
    maxPositions: c.maxPositions,
    rmsNormEps: c.rmsNormEps,
    invFreq: c.invFreq,
    tieEmbeddings: c.tieEmbeddings,
    qkvBias: c.qkvBias,
  };
}

export interface ExpectedTensor {
  name: string;
  shape: number[];
  /** gpt2: a Conv1D weight, stored [in, out] (transposed natively into [out, in] at load). */
  conv1d?: boolean;
}

/** GPT-2 tensors (canonical names, without the "transformer." prefix some checkpoints carry). */
function gpt2Tensors(c: ModelConfig): ExpectedTensor[] {
  const D = c.hiddenSize;
  const F = c.intermediateSize;
  const out: ExpectedTensor[] = [
    { name: 'wte.weight', shape: [c.vocabSize, D] },
    { name: 'wpe.weight', shape: [c.maxPositionEmbeddings, D] },
  ];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `h.${l}.`;
    out.push({ name: `${p}ln_1.weight`, shape: [D] });
    out.push({ name: `${p}ln_1.bias`, shape: [D] });
    out.push({ name: `${p}attn.c_attn.weight`, shape: [D, 3 * D], conv1d: true });
    out.push({ name: `${p}attn.c_attn.bias`, shape: [3 * D] });
    out.push({ name: `${p}attn.c_proj.weight`, shape: [D, D], conv1d: true });
    out.push({ name: `${p}attn.c_proj.bias`, shape: [D] });
    out.push({ name: `${p}ln_2.weight`, shape: [D] });
    out.push({ name: `${p}ln_2.bias`, shape: [D] });
    out.push({ name: `${p}mlp.c_fc.weight`, shape: [D, F], conv1d: true });
    out.push({ name: `${p}mlp.c_fc.bias`, shape: [F] });
    out.push({ name: `${p}mlp.c_proj.weight`, shape: [F, D], conv1d: true });
    out.push({ name: `${p}mlp.c_proj.bias`, shape: [D] });
  }
  out.push({ name: 'ln_f.weight', shape: [D] });
  out.push({ name: 'ln_f.bias', shape: [D] });
  return out;
}

/** The tensors the runtime needs for this architecture, with their HF names and shapes. */
export function expectedTensors(c: ModelConfig): ExpectedTensor[] {
  if (c.arch === 'gpt2') return gpt2Tensors(c);
  const D = c.hiddenSize;
  const Q = c.numHeads * c.headDim;
  const KV = c.numKvHeads * c.headDim;
  const I = c.intermediateSize;
  const V = c.vocabSize;
  const out: ExpectedTensor[] = [{ name: 'model.embed_tokens.weight', shape: [V, D] }];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    out.push({ name: `${p}input_layernorm.weight`, shape: [D] });
    out.push({ name: `${p}self_attn.q_proj.weight`, shape: [Q, D] });
    out.push({ name: `${p}self_attn.k_proj.weight`, shape: [KV, D] });
    out.push({ name: `${p}self_attn.v_proj.weight`, shape: [KV, D] });
    if (c.qkvBias) {
      out.push({ name: `${p}self_attn.q_proj.bias`, shape: [Q] });
      out.push({ name: `${p}self_attn.k_proj.bias`, shape: [KV] });
      out.push({ name: `${p}self_attn.v_proj.bias`, shape: [KV] });
    }
    out.push({ name: `${p}self_attn.o_proj.weight`, shape: [D, Q] });
    out.push({ name: `${p}post_attention_layernorm.weight`, shape: [D] });
    out.push({ name: `${p}mlp.gate_proj.weight`, shape: [I, D] });
    out.push({ name: `${p}mlp.up_proj.weight`, shape: [I, D] });
    out.push({ name: `${p}mlp.down_proj.weight`, shape: [D, I] });
  }
  out.push({ name: 'model.norm.weight', shape: [D] });
  if (!c.tieEmbeddings) out.push({ name: 'lm_head.weight', shape: [V, D] });
  return out;
}

/**
 * Check the checkpoint's tensors against the architecture and return the native load list, in
 * expectedTensors() order. Missing → ERR_MISSING_TENSOR; wrong shape → ERR_SHAPE; a non-float dtype
 * → ERR_SAFETENSORS. Extra tensors (e.g. an lm_head with tied embeddings, rotary buffers) are ignored.
 */
export function matchTensors(c: ModelConfig, tensors: ReadonlyMap<string, SafetensorsTensor>): NativeTensorSpec[] {
  const out: NativeTensorSpec[] = [];
  // GPT-2 checkpoints name their tensors with or without "transformer." (GPT2LMHeadModel vs GPT2Model saves).
  const prefix = c.arch === 'gpt2' && !tensors.has('wte.weight') && tensors.has('transformer.wte.weight') ? 'transformer.' : '';
  // A config with fewer layers than the checkpoint would load and silently ignore the rest: refuse it.
  const layerRe = c.arch === 'gpt2' ? /^(?:transformer\.)?h\.(\d+)\./ : /^model\.layers\.(\d+)\./;
  let stored = -1;
  for (const name of tensors.keys()) {
    const m = layerRe.exec(name);
    if (m) stored = Math.max(stored, Number(m[1]));
  }
  if (stored + 1 > c.numLayers) {
    const field = c.arch === 'gpt2' ? 'n_layer' : 'num_hidden_layers';
    throw new RepairError(
      'ERR_CONFIG',
      `${c.dir ? join(c.dir, 'config.json') : 'config.json'}: "${field}" is ${c.numLayers} but the checkpoint holds ${stored + 1} layers: the config does not match the weights`,
      { field, numLayers: c.numLayers, checkpointLayers: stored + 1 },
    );
  }
  for (const e of expectedTensors(c)) {
    const stored = prefix + e.name;
    const t = tensors.get(stored);
    if (!t) {
      throw new RepairError('ERR_MISSING_TENSOR', `${c.dir || 'model'}: missing tensor "${stored}" (expected shape [${e.shape.join(', ')}] for ${c.modelType})`, {
        tensor: stored,
        expected: e.shape,
      });
    }
    if (t.shape.length !== e.shape.length || t.shape.some((d, i) => d !== e.shape[i])) {
      const transposed = e.conv1d && t.shape.length === 2 && t.shape[0] === e.shape[1] && t.shape[1] === e.shape[0];
      const layout = e.conv1d
        ? ` (GPT-2 Conv1D layout [in, out]${transposed ? '; this tensor is stored transposed, [out, in] as in nn.Linear' : ''})`
        : '';
      throw new RepairError(
        'ERR_SHAPE',
        `${t.file}: tensor "${stored}" has shape [${t.shape.join(', ')}], expected [${e.shape.join(', ')}] from config.json${layout}`,
        { file: t.file, tensor: stored, expected: e.shape, actual: t.shape },
      );
    }
    out.push({ ...toNativeSpec(t), name: e.name });
  }
  return out;
}
