// model.ts — loadModel() and the Model: config + tokenizer + one native model, with every long call
// serialised through a per-model queue, abortable, and refused after dispose().

import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import { readConfig, matchTensors, toNativeArch, type ModelConfig } from './config.js';
import { RepairError, abortedError, disposedError, toRepairError } from './errors.js';
import { loadNative, resolveAutoBackend } from './info.js';
import type { BackendName, NativeModel, NativeModelSpec } from './native.js';
import { readSafetensorsDir } from './safetensors.js';
import { ModelTokenizer, type ChatMessage } from './tokenizer.js';

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

interface GenArgs {
  maxNewTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  chunkSize: number;
  stop: string[];
  promptIds: number[];
}

const internalsMap = new WeakMap<Model, ModelInternals>();

/** In-package access to a model's native handle and queue. Not part of the public API. */
export function modelInternals(model: Model): ModelInternals {
  const i = internalsMap.get(model);
  if (!i) throw new RepairError('ERR_INVALID_ARG', 'not a repair-edit Model');
  return i;
}

function intArg(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new RepairError('ERR_INVALID_ARG', `${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`, { field: name });
  }
  return v;
}

function numArg(name: string, v: unknown, ok: (x: number) => boolean, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) {
    throw new RepairError('ERR_INVALID_ARG', `${name} must be ${what}, got ${JSON.stringify(v)}`, { field: name });
  }
  return v;
}

/** Resolve when `p` settles, or reject with ERR_ABORTED as soon as `signal` aborts. `p` must never reject. */
function untilOrAbort(p: Promise<void>, signal?: AbortSignal): Promise<void> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(abortedError());
  return new Promise<void>((res, rej) => {
    const onAbort = (): void => rej(abortedError());
    signal.addEventListener('abort', onAbort, { once: true });
    void p.then(() => {
      signal.removeEventListener('abort', onAbort);
      res();
    });
  });
}

/** Incremental detokenisation: the text each new id adds, decoding a short window with one token of left context. */
class DecodeStream {
  private ids: number[] = [];
  private prefixStart = 0;
  private readStart = 0;
  text = '';
  constructor(private readonly tok: ModelTokenizer) {}

  push(id: number): string {
    this.ids.push(id);
    const prefix = this.tok.decode(this.ids.slice(this.prefixStart, this.readStart));
    const full = this.tok.decode(this.ids.slice(this.prefixStart));
    if (full.length > prefix.length && full.startsWith(prefix) && !full.endsWith('\uFFFD')) {
      const delta = full.slice(prefix.length);
      this.prefixStart = this.readStart;
      this.readStart = this.ids.length;
      this.text += delta;
      return delta;
    }
    return '';
  }
}

export class Model {
  readonly config: ModelConfig;
  readonly tokenizer: ModelTokenizer;
  /** The backend in use. */
  readonly backend: BackendName;
  /** CUDA device index (0 on the CPU backend). */
  readonly device: number;
  /** The folder the model was loaded from (absolute). */
  readonly dir: string;

  #nm: NativeModel | null;
  #disposed = false;
  #inFlight = false;
  #tail: Promise<void> = Promise.resolve();
  #disposeHooks = new Set<() => void>();

  /** Use loadModel(). */
  private constructor(dir: string, config: ModelConfig, tokenizer: ModelTokenizer, backend: BackendName, device: number, nm: NativeModel, spec: NativeModelSpec) {
    this.dir = dir;
    this.config = config;
    this.tokenizer = tokenizer;
    this.backend = backend;
    this.device = device;
    this.#nm = nm;
    internalsMap.set(this, {
      spec,
      enqueue: (fn, signal) => this.#enqueue(signal, () => this.#nativeCall(fn, signal)),
      generateRouted: (prompt, opts, router) => {
        let args: GenArgs;
        try {
          args = this.#generateArgs(prompt, opts);
        } catch (e) {
          return Promise.reject(e);
        }
        return this.#enqueue(opts.signal, () => this.#generate(args, opts, router));
      },
      logitsRouted: (batch, opts, router) => this.#logits(batch, opts, router),
      onDispose: (fn) => {
        this.#disposeHooks.add(fn);
        return () => this.#disposeHooks.delete(fn);
      },
    });
  }

  /** @internal */
  static async _create(dir: string, opts: LoadModelOptions): Promise<Model> {
    const signal = opts.signal;
    if (signal?.aborted) throw abortedError('loadModel');
    const absDir = resolve(dir);
    let st;
    try {
      st = statSync(absDir);
    } catch (e) {
      throw new RepairError('ERR_IO', `model folder ${absDir} does not exist`, { file: absDir }, { cause: e });
    }
    if (!st.isDirectory()) throw new RepairError('ERR_IO', `${absDir} is not a folder (expected a Hugging Face model folder)`, { file: absDir });

    let config = readConfig(absDir, { contextLength: opts.contextLength });
    const tensors = matchTensors(config, readSafetensorsDir(absDir));
    const tokenizer = ModelTokenizer.fromDir(absDir);
    if (tokenizer.maxTokenId >= config.vocabSize) {
      // ids past the embedding table would only be caught at generate time
      throw new RepairError(
        'ERR_TOKENIZER',
        `${absDir}: the tokenizer produces token ids up to ${tokenizer.maxTokenId}, outside the model's vocabulary (vocab_size ${config.vocabSize})`,
        { file: absDir, field: 'vocab', maxTokenId: tokenizer.maxTokenId, vocabSize: config.vocabSize },
      );
    }
    if (config.eosTokenIds.length === 0 && tokenizer.eosTokenId !== undefined && tokenizer.eosTokenId < config.vocabSize) {
      config = { ...config, eosTokenIds: [tokenizer.eosTokenId] }; // no eos_token_id in the configs: the tokenizer's
    }
    config = Object.freeze({ ...config, eosTokenIds: Object.freeze([...config.eosTokenIds]) });

    const choice = opts.backend ?? 'auto';
    if (choice !== 'auto' && choice !== 'cpu' && choice !== 'cuda') {
      throw new RepairError('ERR_INVALID_ARG', `backend must be auto, cpu or cuda, got ${JSON.stringify(choice)}`, { field: 'backend' });
    }
    const device = intArg('device', opts.device ?? 0, 0, 1024);
    const threads = intArg('threads', opts.threads ?? 0, 0, 4096);
    const addon = loadNative();
    const ni = (() => {
      try {
        return addon.info();
      } catch (e) {
        throw toRepairError(e);
      }
    })();
    const backend: BackendName = choice === 'auto' ? resolveAutoBackend(ni.cuda.available) : choice;
    if (backend === 'cuda') {
      if (!ni.cuda.available) {
        throw new RepairError('ERR_CUDA_UNAVAILABLE', `the CUDA backend cannot be used: ${ni.cuda.reason || (ni.cuda.built ? 'no CUDA device' : 'not built')}`, {
          reason: ni.cuda.reason,
        });
      }
      if (device >= ni.cuda.devices.length) {
        throw new RepairError('ERR_INVALID_ARG', `CUDA device ${device} does not exist (${ni.cuda.devices.length} device(s))`, { field: 'device' });
      }
    }

    if (opts.checkFinite !== undefined && typeof opts.checkFinite !== 'boolean') {
      throw new RepairError('ERR_INVALID_ARG', `checkFinite must be a boolean, got ${JSON.stringify(opts.checkFinite)}`, { field: 'checkFinite' });
    }
    const spec: NativeModelSpec = { backend, device: backend === 'cuda' ? device : 0, threads, checkFinite: opts.checkFinite ?? true, arch: toNativeArch(config), tensors };
    let nm: NativeModel;
    try {
      nm = new addon.NativeModel(spec);
    } catch (e) {
      throw toRepairError(e);
    }
    const onAbort = (): void => nm.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await nm.load();
      if (signal?.aborted) throw abortedError('loadModel');
    } catch (e) {
      try {
        nm.dispose();
      } catch {
        /* already failing */
      }
      throw toRepairError(e);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    return new Model(absDir, config, tokenizer, backend, spec.device, nm, spec);
  }

  /** Tokens the model can attend to (prompt + generated); longer prompts are refused with ERR_CONTEXT_LENGTH. */
  get contextLength(): number {
    return this.config.maxPositions;
  }

  get vocabSize(): number {
    return this.config.vocabSize;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Backend memory held by this model (weights + caches), in bytes; 0 after dispose. */
  memoryBytes(): number {
    return this.#nm && !this.#disposed ? this.#nm.memoryBytes() : 0;
  }

  /**
   * High-water mark of the backend's allocations (host memory on the CPU backend, device memory on CUDA)
   * since the model was loaded or the last reset, in bytes; `{ reset: true }` restarts the mark from the
   * bytes in use now, after reading it. 0 after dispose.
   */
  memoryPeakBytes(opts: { reset?: boolean } = {}): number {
    return this.#nm && !this.#disposed ? this.#nm.memoryPeakBytes(opts.reset === true) : 0;
  }

  /** Token ids of a prompt as generate() feeds them. */
  promptTokens(prompt: Prompt): number[] {
    if (typeof prompt === 'string') return this.tokenizer.encode(prompt, { addSpecialTokens: true });
    if (Array.isArray(prompt)) {
      // The rendered template carries its own special tokens (e.g. BOS), like HF apply_chat_template(tokenize=True).
      return this.tokenizer.encode(this.tokenizer.applyChatTemplate(prompt as readonly ChatMessage[]), { addSpecialTokens: false });
    }
    if (typeof prompt === 'object' && prompt !== null && Array.isArray((prompt as { tokens?: unknown }).tokens)) {
      return [...(prompt as { tokens: readonly number[] }).tokens];
    }
    throw new RepairError('ERR_INVALID_ARG', 'prompt must be a string, an array of chat messages, or { tokens: number[] }');
  }

  #checkIds(ids: readonly number[], what: string): void {
    const V = this.config.vocabSize;
    if (ids.length === 0) throw new RepairError('ERR_INVALID_ARG', `${what} is empty`);
    if (ids.length > this.config.maxPositions) {
      throw new RepairError('ERR_CONTEXT_LENGTH', `${what} has ${ids.length} tokens, longer than the context length ${this.config.maxPositions}`, {
        length: ids.length,
        contextLength: this.config.maxPositions,
      });
    }
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= V) {
        throw new RepairError('ERR_INVALID_ARG', `${what}: token id ${id} at index ${i} is outside the vocabulary [0, ${V})`, { index: i });
      }
    }
  }

  /** Queue `task` behind every earlier call; reject early if `signal` aborts while waiting. */
  #enqueue<T>(signal: AbortSignal | undefined, task: () => Promise<T>): Promise<T> {
    if (this.#disposed) return Promise.reject(disposedError());
    if (signal?.aborted) return Promise.reject(abortedError());
    const prev = this.#tail;
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    this.#tail = prev.then(() => mine);
    return (async () => {
      try {
        await untilOrAbort(prev, signal);
        if (this.#disposed) throw disposedError();
        if (signal?.aborted) throw abortedError();
        return await task();
      } finally {
        release();
      }
    })();
  }

  /** One native call with abort wiring; errors re-wrapped (ERR_DISPOSED when dispose() cut it short). */
  async #nativeCall<T>(fn: (nm: NativeModel) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const nm = this.#nm;
    if (this.#disposed || !nm) throw disposedError();
    if (signal?.aborted) throw abortedError();
    const onAbort = (): void => {
      if (this.#inFlight) nm.abort();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    this.#inFlight = true;
    try {
      return await fn(nm);
    } catch (e) {
      const err = toRepairError(e);
      if (this.#disposed && (err.code === 'ERR_ABORTED' || err.code === 'ERR_DISPOSED')) throw disposedError();
      throw err;
    } finally {
      this.#inFlight = false;
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * Generate a continuation of `prompt` (batch 1, KV cache). Greedy by default.
   * Rejects with ERR_CONTEXT_LENGTH when the prompt is longer than the context, ERR_ABORTED on abort,
   * ERR_DISPOSED after dispose().
   */
  generate(prompt: Prompt, opts: GenerateOptions = {}): Promise<GenerateResult> {
    let args: GenArgs;
    try {
      args = this.#generateArgs(prompt, opts);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#enqueue(opts.signal, () => this.#generate(args, opts));
  }

  #generateArgs(prompt: Prompt, opts: GenerateOptions): GenArgs {
    if (this.#disposed) throw disposedError();
    const maxNewTokens = intArg('maxNewTokens', opts.maxNewTokens ?? 64, 0);
    const temperature = numArg('temperature', opts.temperature ?? 0, (x) => x >= 0, 'a number >= 0');
    const topK = intArg('topK', opts.topK ?? 0, 0, 0x7fffffff);
    const topP = numArg('topP', opts.topP ?? 1, (x) => x > 0 && x <= 1, 'a number in (0, 1]');
    const seed = intArg('seed', opts.seed ?? 0, 0, 0xffffffff);
    const chunkSize = intArg('chunkSize', opts.chunkSize ?? 8, 1, 1 << 20);
    const stop = [...(opts.stop ?? [])];
    for (const s of stop) {
      if (typeof s !== 'string' || s.length === 0) throw new RepairError('ERR_INVALID_ARG', 'stop strings must be non-empty strings', { field: 'stop' });
    }
    const promptIds = this.promptTokens(prompt);
    this.#checkIds(promptIds, 'the prompt');
    return { maxNewTokens, temperature, topK, topP, seed, chunkSize, stop, promptIds };
  }

  async #generate(a: GenArgs, opts: GenerateOptions, router?: GenerateRouter): Promise<GenerateResult> {
    const { promptIds, stop, chunkSize } = a;
    const signal = opts.signal;
    // The route is decided once, on the prompt, and kept for the whole generation.
    const route = router ? await this.#nativeCall((nm) => router(nm, promptIds), signal) : undefined;
    const stopOnEos = opts.stopOnEos ?? true;
    const eosIds = stopOnEos ? this.config.eosTokenIds : [];
    const eosSet = new Set(eosIds);
    const eos = Int32Array.from(eosIds);
    // Positions used = prompt + every sampled token but the last (which is never fed back).
    const budget = Math.min(a.maxNewTokens, this.config.maxPositions - promptIds.length + 1);
    const maxStop = stop.reduce((m, s) => Math.max(m, s.length), 0);
    const stream = new DecodeStream(this.tokenizer);
    const newIds: number[] = [];
    let finish: FinishReason = 'length';
    let stopAt = -1; // index in stream.text where a stop string starts
    let feed = Int32Array.from(promptIds);
    let reset = true;

    outer: while (newIds.length < budget) {
      if (this.#disposed) throw disposedError();
      if (signal?.aborted) throw abortedError('generate');
      const n = Math.min(chunkSize, budget - newIds.length);
      const out = await this.#nativeCall(
        (nm) =>
          nm.generate(feed, {
            reset,
            maxTokens: n,
            temperature: a.temperature,
            topK: a.topK,
            topP: a.topP,
            seed: a.seed,
            step0: newIds.length,
            eos,
            ...(route ? { route } : {}),
          }),
        signal,
      );
      if (out.length === 0 || out.length > n) {
        throw new RepairError('ERR_INTERNAL', `native generate returned ${out.length} tokens for a request of ${n}`);
      }
      for (const id of out) {
        const index = newIds.length;
        newIds.push(id);
        const before = stream.text.length;
        const text = stream.push(id);
        opts.onToken?.({ id, index, text });
        if (signal?.aborted) throw abortedError('generate');
        if (this.#disposed) throw disposedError();
        if (stopOnEos && eosSet.has(id)) {
          finish = 'eos';
          break outer;
        }
        if (maxStop > 0 && text.length > 0) {
          const from = Math.max(0, before - maxStop + 1);
          for (const s of stop) {
            const i = stream.text.indexOf(s, from);
            if (i >= 0 && (stopAt < 0 || i < stopAt)) stopAt = i;
          }
          if (stopAt >= 0) {
            finish = 'stop';
            break outer;
          }
        }
      }
      if (signal?.aborted) throw abortedError('generate');
      feed = Int32Array.of(newIds[newIds.length - 1]!);
      reset = false;
    }

    const fullText = this.tokenizer.decode([...promptIds, ...newIds]);
    let completion = this.tokenizer.decode(newIds);
    let text = fullText;
    if (finish === 'stop') {
      const cut = this.#firstStop(completion, stop);
      const idx = cut >= 0 ? cut : Math.min(stopAt, completion.length);
      const promptText = this.tokenizer.decode(promptIds);
      const region = fullText.startsWith(promptText) ? fullText.slice(promptText.length) : undefined;
      if (region !== undefined && region.endsWith(completion)) {
        text = fullText.slice(0, promptText.length + (region.length - completion.length) + idx);
      } else if (region !== undefined) {
        const r = this.#firstStop(region, stop);
        text = promptText + (r >= 0 ? region.slice(0, r) : region);
      }
      completion = completion.slice(0, idx);
    }
    return { text, completion, tokens: newIds, promptTokens: [...promptIds], finishReason: finish };
  }

  #firstStop(text: string, stop: readonly string[]): number {
    let best = -1;
    for (const s of stop) {
      const i = text.indexOf(s);
      if (i >= 0 && (best < 0 || i < best)) best = i;
    }
    return best;
  }

  /**
   * Logits of a batch of token-id sequences of any lengths (left-padded internally). See LogitsResult
   * for the layout. Rejects with ERR_CONTEXT_LENGTH for a sequence longer than the context and
   * ERR_INVALID_ARG for ids outside [0, vocab).
   */
  logits(batch: readonly (readonly number[])[], opts: LogitsOptions = {}): Promise<LogitsResult> {
    return this.#logits(batch, opts);
  }

  #logits(batch: readonly (readonly number[])[], opts: LogitsOptions, router?: LogitsRouter): Promise<LogitsResult> {
    let prepared: { tokens: Int32Array; B: number; T: number; pad: Int32Array; logitRows: Int32Array; rows: LogitsRow[] };
    try {
      if (this.#disposed) throw disposedError();
      prepared = this.#prepareBatch(batch, opts.positions ?? 'last');
    } catch (e) {
      return Promise.reject(e);
    }
    const V = this.config.vocabSize;
    return this.#enqueue(opts.signal, async () => {
      const { tokens, B, T, pad, logitRows, rows } = prepared;
      const route = router ? await this.#nativeCall((nm) => router(nm, { tokens, B, T, pad }), opts.signal) : undefined;
      const data = await this.#nativeCall((nm) => nm.forward(tokens, B, T, pad, logitRows, route), opts.signal);
      if (data.length !== rows.length * V) {
        throw new RepairError('ERR_INTERNAL', `native forward returned ${data.length} floats, expected ${rows.length} × ${V}`);
      }
      return makeLogitsResult(data, V, rows, batch.map((s) => s.length));
    });
  }

  #prepareBatch(batch: readonly (readonly number[])[], positions: LogitsPositions) {
    if (!Array.isArray(batch) || batch.length === 0) throw new RepairError('ERR_INVALID_ARG', 'logits: the batch must be a non-empty array of token-id arrays');
    batch.forEach((s, b) => {
      if (!Array.isArray(s)) throw new RepairError('ERR_INVALID_ARG', `logits: batch[${b}] must be an array of token ids`);
      this.#checkIds(s, `batch[${b}]`);
    });
    if (Array.isArray(positions) && positions.length !== batch.length) {
      throw new RepairError('ERR_INVALID_ARG', `logits: positions has ${positions.length} lists for a batch of ${batch.length}`, { field: 'positions' });
    }
    if (!Array.isArray(positions) && positions !== 'last' && positions !== 'all') {
      throw new RepairError('ERR_INVALID_ARG', "logits: positions must be 'last', 'all' or one list of positions per sequence", { field: 'positions' });
    }
    const B = batch.length;
    const T = Math.max(...batch.map((s) => s.length));
    const tokens = new Int32Array(B * T); // pad value 0
    const pad = new Int32Array(B);
    const rows: LogitsRow[] = [];
    const flat: number[] = [];
    for (let b = 0; b < B; b++) {
      const s = batch[b]!;
      const len = s.length;
      pad[b] = T - len;
      tokens.set(s, b * T + pad[b]!);
      let ps: readonly number[];
      if (positions === 'last') ps = [len - 1];
      else if (positions === 'all') ps = Array.from({ length: len }, (_, i) => i);
      else ps = (positions as readonly (readonly number[])[])[b]!;
      if (!Array.isArray(ps)) throw new RepairError('ERR_INVALID_ARG', `logits: positions[${b}] must be an array`, { field: 'positions' });
      for (const p0 of ps) {
        if (!Number.isInteger(p0) || p0 >= len || p0 < -len) {
          throw new RepairError('ERR_INVALID_ARG', `logits: position ${p0} is outside sequence ${b} (length ${len})`, { field: 'positions' });
        }
        const p = p0 < 0 ? len + p0 : p0;
        rows.push({ sequence: b, position: p });
        flat.push(b * T + pad[b]! + p);
      }
    }
    if (rows.length === 0) throw new RepairError('ERR_INVALID_ARG', 'logits: no positions requested', { field: 'positions' });
    return { tokens, B, T, pad, logitRows: Int32Array.from(flat), rows };
  }

  /** Free the native model (idempotent). Queued calls reject with ERR_DISPOSED; a running one is aborted and rejects too. Resolves once nothing runs. */
  dispose(): Promise<void> {
    if (!this.#disposed) {
      this.#disposed = true;
      const nm = this.#nm;
      this.#nm = null;
      for (const fn of [...this.#disposeHooks]) {
        try {
          fn();
        } catch {
          /* a hook must not keep the model alive */
        }
      }
      this.#disposeHooks.clear();
      if (nm) {
        if (this.#inFlight) nm.abort();
        try {
          nm.dispose();
        } catch {
          /* idempotent */
        }
      }
    }
    return this.#tail;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

function makeLogitsResult(data: Float32Array, vocab: number, rows: LogitsRow[], lengths: number[]): LogitsResult {
  let index: Map<number, number> | undefined;
  return {
    data,
    vocab,
    rows,
    row(i: number): Float32Array {
      if (!Number.isInteger(i) || i < 0 || i >= rows.length) throw new RepairError('ERR_INVALID_ARG', `row ${i} out of range [0, ${rows.length})`);
      return data.subarray(i * vocab, (i + 1) * vocab);
    },
    at(sequence: number, position: number): Float32Array {
      const len = lengths[sequence];
      if (len === undefined) throw new RepairError('ERR_INVALID_ARG', `sequence ${sequence} is not in the batch`);
      const p = position < 0 ? len + position : position;
      if (!index) {
        index = new Map();
        rows.forEach((r, i) => {
          const k = r.sequence * 0x100000000 + r.position;
          if (!index!.has(k)) index!.set(k, i);
        });
      }
      const i = index.get(sequence * 0x100000000 + p);
      if (i === undefined) throw new RepairError('ERR_INVALID_ARG', `logits of sequence ${sequence} position ${position} were not requested`);
      return data.subarray(i * vocab, (i + 1) * vocab);
    },
  };
}

/** Load a Hugging Face model folder (config.json, *.safetensors, tokenizer.json) onto a backend. */
export function loadModel(dir: string, opts: LoadModelOptions = {}): Promise<Model> {
  return Model._create(dir, opts);
}
