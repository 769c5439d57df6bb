// model/types.ts — the Model API's shapes: load options, prompts, generate() and logits() options and
// results, and the in-package ModelInternals (the queue, routed generate/logits) the Editor uses.
import type { BackendName, NativeModel, NativeModelSpec } from '../native.js';
import type { ChatMessage } from '../tokenizer.js';

export type BackendChoice = 'auto' | BackendName;

export interface LoadModelOptions {
  /** 'auto' (default): REPAIR_BACKEND when set, else CUDA when a device is available, else CPU. */
  backend?: BackendChoice;
  /** CUDA device index (default 0). */
  device?: number;
  /** CPU backend threads (default 0 = all cores). */
  threads?: number;
  /** Cap on the context length / KV cache size (default 4096; never more than max_position_embeddings). */
  contextLength?: number;
  /**
   * Refuse weights that hold NaN, Inf or values of magnitude >= 2^27 (a flipped exponent bit; such values
   * overflow the forward into NaN), with ERR_SAFETENSORS naming the tensor and element. Default true: one
   * vectorised pass over the bytes as they are read (cost: bench/results/finite-check.md); false skips it.
   */
  checkFinite?: boolean;
  signal?: AbortSignal;
}

/** A prompt: plain text (BOS added), chat messages (rendered with the chat template), or token ids as they are. */
export type Prompt = string | readonly ChatMessage[] | { readonly tokens: readonly number[] };

export interface GeneratedToken {
  /** The sampled token id. */
  id: number;
  /** Its index among the new tokens (0-based). */
  index: number;
  /** Text this token adds to the completion ('' while a multi-byte character or a special token is pending). */
  text: string;
}

export interface GenerateOptions {
  /** Default 64. Generation also stops ('length') where the context (Model.contextLength) is full. */
  maxNewTokens?: number;
  /** 0 (default) = greedy (argmax, ties to the lowest id). */
  temperature?: number;
  /** 0 (default) = off. */
  topK?: number;
  /** 1 (default) = off. */
  topP?: number;
  /** uint32 seed of the sampler (default 0). The same seed gives the same tokens, whatever the chunking. */
  seed?: number;
  /** Stop when the completion text contains one of these; the text is cut before it. */
  stop?: readonly string[];
  /** Stop after an end-of-sequence token (default true). */
  stopOnEos?: boolean;
  signal?: AbortSignal;
  /** Called for each new token, in order, as chunks arrive. */
  onToken?: (token: GeneratedToken) => void;
  /** Tokens sampled per native call (default 8); never changes the result, only the latency of onToken/abort. */
  chunkSize?: number;
}

export type FinishReason = 'eos' | 'stop' | 'length';

export interface GenerateResult {
  /** decode(promptTokens ++ tokens, skipSpecialTokens), cut at a stop string: the prompt and its continuation. */
  text: string;
  /** decode(tokens, skipSpecialTokens) alone, cut at a stop string (a leading space of the first piece is dropped by the decoder). */
  completion: string;
  /** The new token ids (an EOS that ended generation is included; with a stop string, up to the token that completed it). */
  tokens: number[];
  /** The prompt's token ids as fed to the model. */
  promptTokens: number[];
  finishReason: FinishReason;
}

/**
 * Which positions' logits to return: 'last' (default, one row per sequence), 'all' (every position of
 * every sequence), or for each sequence a list of positions (0-based within that sequence; negative
 * counts from its end, -1 = last).
 */
export type LogitsPositions = 'last' | 'all' | readonly (readonly number[])[];

export interface LogitsOptions {
  positions?: LogitsPositions;
  signal?: AbortSignal;
}

export interface LogitsRow {
  /** Index of the sequence in the batch. */
  sequence: number;
  /** Position within that (unpadded) sequence, 0-based. */
  position: number;
}

/**
 * Logits of a batch. Layout: `data` is row-major [rows.length × vocab]; row i holds the logits at
 * rows[i] = { sequence, position }, i.e. the next-token distribution after tokens[0..position] of that
 * sequence. Rows come in sequence order, then in the order the positions were asked for.
 */
export interface LogitsResult {
  data: Float32Array;
  vocab: number;
  rows: readonly LogitsRow[];
  /** Row i as a view into `data` (no copy). */
  row(i: number): Float32Array;
  /** The row of (sequence, position); negative positions count from the end. Throws if it was not requested. */
  at(sequence: number, position: number): Float32Array;
}

/** What the Editor and other in-package code need beyond the public API. */
export interface ModelInternals {
  readonly spec: NativeModelSpec;
  /** Run `fn` on the native model inside this model's queue (serialised with generate/logits), with abort wiring. */
  enqueue<T>(fn: (nm: NativeModel) => Promise<T>, signal?: AbortSignal): Promise<T>;
  /** Register a hook run once when the model is disposed (e.g. dispose editors). Returns an unsubscribe. */
  onDispose(fn: () => void): () => void;
  /** generate() with a router run inside the same queue slot, on the prompt ids, before generation. */
  generateRouted(prompt: Prompt, opts: GenerateOptions, router: GenerateRouter): Promise<GenerateResult>;
  /** logits() with a per-row router run inside the same queue slot before the forward. */
  logitsRouted(batch: readonly (readonly number[])[], opts: LogitsOptions, router: LogitsRouter): Promise<LogitsResult>;
}

/** Decides the side-memory route of one prompt (undefined = main weight everywhere). */
export type GenerateRouter = (nm: NativeModel, promptIds: readonly number[]) => Promise<{ side: number; slot: number } | undefined>;
/** Decides the route of every row of a left-padded batch. */
export type LogitsRouter = (
  nm: NativeModel,
  batch: { tokens: Int32Array; B: number; T: number; pad: Int32Array },
) => Promise<{ side: number; slots: Int32Array } | undefined>;
