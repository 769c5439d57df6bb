// model.ts — loadModel() and the Model: config + tokenizer + one native model, with every long call
// serialised through a per-model queue, abortable, and refused after dispose().

import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import { readConfig, matchTensors, toNativeArch, type ModelConfig } from './config.js';
import { RepairError, abortedError, disposedError, toRepairError } from './errors.js';
import { loadNative, resolveAutoBackend } from './info.js';
import type { BackendName, NativeModel, NativeModelSpec } from './native.js';
import { firstStop, intArg, numArg, prepareBatch, type GenArgs } from './model/args.js';
import { DecodeStream, makeLogitsResult } from './model/results.js';
import type { FinishReason, GenerateOptions, GenerateResult, GenerateRouter, LoadModelOptions, LogitsOptions, LogitsResult, LogitsRouter, LogitsRow, ModelInternals, Prompt } from './model/types.js';
import { readSafetensorsDir } from './safetensors.js';
import { ModelTokenizer, type ChatMessage } from './tokenizer.js';

export type { BackendChoice, LoadModelOptions, Prompt, GeneratedToken, GenerateOptions, FinishReason, GenerateResult, LogitsPositions, LogitsOptions, LogitsRow, LogitsResult, ModelInternals, GenerateRouter, LogitsRouter } from './model/types.js';

const internalsMap = new WeakMap<Model, ModelInternals>();

/** In-package access to a model's native handle and queue. Not part of the public API. */
export function modelInternals(model: Model): ModelInternals {
  const i = internalsMap.get(model);
  if (!i) throw new RepairError('ERR_INVALID_ARG', 'not a repair-edit Model');
  return i;
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
      const cut = firstStop(completion, stop);
      const idx = cut >= 0 ? cut : Math.min(stopAt, completion.length);
      const promptText = this.tokenizer.decode(promptIds);
      const region = fullText.startsWith(promptText) ? fullText.slice(promptText.length) : undefined;
      if (region !== undefined && region.endsWith(completion)) {
        text = fullText.slice(0, promptText.length + (region.length - completion.length) + idx);
      } else if (region !== undefined) {
        const r = firstStop(region, stop);
        text = promptText + (r >= 0 ? region.slice(0, r) : region);
      }
      completion = completion.slice(0, idx);
    }
    return { text, completion, tokens: newIds, promptTokens: [...promptIds], finishReason: finish };
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
      prepared = prepareBatch(batch, opts.positions ?? 'last', (ids, what) => this.#checkIds(ids, what));
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

/** Load a Hugging Face model folder (config.json, *.safetensors, tokenizer.json) onto a backend. */
export function loadModel(dir: string, opts: LoadModelOptions = {}): Promise<Model> {
  return Model._create(dir, opts);
}
