// editor.ts — the Editor: WISE side-memory editing (ALGORITHM.md §1) and, with method 'repair', the REPAIR
// closed loop (§2). A small facade: it holds the editor's state (lib/editor/state.ts), runs its mutating
// calls one at a time, turns a dispose mid-call into ERR_DISPOSED, and hands each call to the module that
// owns it — configuration (editor/config.ts), training rows (editor/rows.ts), training and the shard
// cadence (editor/train.ts), routing (editor/router.ts), rollback (editor/rollback.ts), memory files
// (editor/memory-file.ts), the closed loop (repair/loop.ts). Every bit of arithmetic is one native call.
import { RepairError, abortedError, disposedError, toRepairError } from './errors.js';
import { modelInternals, type GenerateOptions, type GenerateResult, type LogitsOptions, type LogitsResult, type Model, type Prompt } from './model.js';
import type { NativeEditBatch } from './native.js';
import { runEditMany, type EditManyResult, type RepairEvent } from './repair/loop.js';
import { resolveConfig, type EditorConfig, type EditorOptions } from './editor/config.js';
import { readEditorFile, restoreMemoryFile, saveMemoryFile } from './editor/memory-file.js';
import { rollbackEdit } from './editor/rollback.js';
import { explain, routeRows, routingTokens, type Calibration, type Explanation } from './editor/router.js';
import { buildRows, contextTexts, validateRequest, type EditRequest } from './editor/rows.js';
import { attach, EditorState, NO_ACT, restoreState, saveState, type EditInfo } from './editor/state.js';
import { marginScaleOf, shardSeed, train, type EditProgress, type EditResult } from './editor/train.js';

export { presetFor, looksInstruct } from './editor/config.js';
export type { EditMethod, ScoreMode, EditorConfig, EditorOptions } from './editor/config.js';
export type { EditRequest } from './editor/rows.js';
export type { EditProgress, EditResult } from './editor/train.js';
export type { EditInfo } from './editor/state.js';
export type { RouteScore, Calibration, Explanation } from './editor/router.js';
export type { RepairEvent, EditManyResult } from './repair/loop.js';
export { TRAIN_HOOK } from './editor/train.js';
export { FAIL_SAVE_AFTER, MEMORY_FORMAT, MEMORY_FORMAT_VERSION } from './editor/memory-file.js';

export class Editor {
  readonly model: Model;
  readonly config: Readonly<EditorConfig>;
  readonly #ed: EditorState;
  /** The tail of the chain of mutating calls (edit, editMany, rollback, save). */
  #lock: Promise<void> = Promise.resolve();

  private constructor(model: Model, config: EditorConfig) {
    this.model = model;
    this.config = Object.freeze({ ...config });
    this.#ed = new EditorState(model, this);
  }

  /** Create an editor on a loaded model. Generates the context templates with the unedited model. */
  static async create(model: Model, opts: EditorOptions = {}): Promise<Editor> {
    if (model.disposed) throw disposedError();
    const config = resolveConfig(model, opts ?? {});
    const e = new Editor(model, config);
    const ed = e.#ed;
    const texts = config.contextTemplates && config.irrelevantPool ? [] : await contextTexts(model, config.seed);
    ed.templates = config.contextTemplates ? [...config.contextTemplates] : ['{}', ...texts.map((t) => `${t} {}`)];
    ed.irrelevantPool = config.irrelevantPool ? [...config.irrelevantPool] : texts;
    await attach(ed);
    ed.working = { uid: ed.uid('w'), seed: shardSeed(config.seed, 0), minAct: NO_ACT, minPrompt: NO_ACT, edits: [] };
    ed.shardCount = 1;
    return e;
  }

  get disposed(): boolean {
    return this.#ed.disposed;
  }
  /** Number of edits trained (re-trained and rolled-back ones included: the cadence counter never goes back). */
  get editCount(): number {
    return this.#ed.editCount;
  }
  /**
   * The scale on the routing hinge's margins that repair trains with (issue 12): the configured number, or
   * with `repair.marginScale: 'auto'` the one measured on the first training call (undefined before it).
   * 1 for wise and ft (the reference margins).
   */
  get marginScale(): number | undefined {
    const auto = this.config.method === 'repair' && this.config.repair?.marginScale === 'auto';
    return auto ? this.#ed.marginScale : marginScaleOf(this.#ed);
  }
  /** The context templates used to build edit rows ("prefix {}"). */
  get templates(): readonly string[] {
    return this.#ed.templates;
  }
  /** Summary of the working memory and every side memory. */
  memories(): {
    working: { name: string; edits: string[]; threshold: number; calibration?: Calibration };
    memories: { name: string; kind: string; edits: string[]; threshold: number; calibration?: Calibration }[];
  } {
    const ed = this.#ed;
    const cal = (x: { cal?: Calibration }) => (ed.recal && x.cal ? { calibration: { positives: [...x.cal.positives], negatives: [...x.cal.negatives] } } : {});
    return {
      working: { name: ed.working.uid, edits: [...ed.working.edits], threshold: ed.thrOf(ed.working, 'full'), ...cal(ed.working) },
      memories: ed.memories.map((m) => ({ name: m.uid, kind: m.kind, edits: [...m.edits], threshold: ed.thrOf(m, 'full'), ...cal(m) })),
    };
  }
  /** The ids of the edits currently in effect, in order. */
  edits(): string[] {
    return [...this.#ed.edits.keys()];
  }
  /**
   * One edit: its request, where it lives ('working', a memory index, or 'queued' for an edit an
   * interrupted editMany has not trained yet), and its training figures; undefined for an unknown id.
   */
  editInfo(id: string): EditInfo | undefined {
    const ed = this.#ed;
    const st = ed.edits.get(id);
    if (st) {
      const mi = ed.memories.findIndex((m) => m.edits.includes(id));
      return { id, request: structuredClone(st.request), memory: mi >= 0 ? mi : 'working', score: st.score, promptScore: st.promptScore, loss: st.loss };
    }
    const q = ed.loop.queue.find((p) => p.id === id) ?? ed.loop.residual.find((p) => p.id === id);
    return q ? { id, request: structuredClone(q.request), memory: 'queued' } : undefined;
  }
  /** REPAIR loop state: edits still queued (an interrupted editMany resumes them), the residual and feedback pools. */
  pending(): { queued: string[]; residual: string[]; feedback: string[]; gaveUp: string[] } {
    const l = this.#ed.loop;
    return { queued: l.queue.map((p) => p.id), residual: l.residual.map((p) => p.id), feedback: [...l.feedback], gaveUp: [...l.gaveUp] };
  }

  /** Build the training rows of one edit: 11 template rows + (wise/repair) the irrelevant row(s). */
  buildBatch(req: EditRequest, irrelevant: string | readonly string[]): NativeEditBatch {
    return buildRows(this.#ed, [{ request: req, irrelevant: typeof irrelevant === 'string' ? [irrelevant] : irrelevant }]);
  }

  /**
   * Apply one edit (all n_iter steps in one native call). On failure or abort nothing changes.
   * With method 'repair' this is editMany([request]): the closed loop runs on it.
   */
  async edit(request: EditRequest, opts: { signal?: AbortSignal; onProgress?: (p: EditProgress) => void; onEvent?: (e: RepairEvent) => void } = {}): Promise<EditResult> {
    const ed = this.#ed;
    ed.check();
    return this.#exclusive(opts.signal, () => this.#disposeGuard(async () => {
      if (this.config.method === 'repair') {
        // one edit() is all or nothing: on failure (an abort during the monitor, after the edit was trained,
        // included) the editor returns to its state before the call, side memories and queue included
        const saved = await saveState(ed);
        let r: EditManyResult;
        try {
          r = await runEditMany(ed, [request], { signal: opts.signal, onEvent: opts.onEvent });
        } catch (e) {
          if (!ed.disposed) await restoreState(ed, saved);
          throw e;
        }
        const mine = r.results.filter((x) => x.id === (request.id ?? x.id));
        const last = mine.at(-1);
        if (!last) throw new RepairError('ERR_INTERNAL', 'the edit was not trained');
        return last;
      }
      validateRequest(ed, request);
      const id = request.id ?? ed.freshId();
      const { results } = await train(ed, [{ id, request, attempts: 0 }], false, opts);
      return results[0]!;
    }));
  }

  /**
   * Apply many edits. For 'wise'/'ft' they are applied one by one, in order. For 'repair' the closed loop
   * runs: distribution-aware batches (with the residual pool), intra-batch distillation, the error
   * monitor, pruning and reintegration of failing memories, loss-aware merges. The queue lives in the
   * editor: after an abort (ERR_ABORTED) nothing half-done is kept, and editMany([]) resumes.
   */
  async editMany(
    records: readonly EditRequest[],
    opts: { signal?: AbortSignal; onEvent?: (e: RepairEvent) => void; onProgress?: (p: { done: number; total: number }) => void } = {},
  ): Promise<EditManyResult> {
    this.#ed.check();
    return this.#exclusive(opts.signal, () => this.#disposeGuard(() => runEditMany(this.#ed, records, opts)));
  }

  /**
   * The editor's mutating calls (edit, editMany, rollback, save) run one at a time: each spans several
   * model-queue slots, and an interleaved one would see (or save) a half-updated editor.
   */
  async #exclusive<T>(signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    const prev = this.#lock;
    let release!: () => void;
    this.#lock = new Promise<void>((r) => (release = r));
    try {
      await prev;
      this.#ed.check();
      if (signal?.aborted) throw abortedError();
      return await fn();
    } finally {
      release();
    }
  }

  /** A call cut short by dispose() rejects with ERR_DISPOSED, whatever the native layer said (or if it finished). */
  async #disposeGuard<T>(fn: () => Promise<T>): Promise<T> {
    let r: T;
    try {
      r = await fn();
    } catch (e) {
      if (this.disposed) throw disposedError('the editor');
      throw e;
    }
    if (this.disposed) throw disposedError('the editor');
    return r;
  }

  /**
   * Which memory an input routes to, with every score and threshold. By default the input is a bare
   * prompt, routed as generate() routes it; `{ teacherForced: true }` routes it as logits() does (full
   * rows such as prompt + answer, against the reference thresholds).
   */
  async explain(prompt: Prompt, opts: { signal?: AbortSignal; teacherForced?: boolean } = {}): Promise<Explanation> {
    this.#ed.check();
    return explain(this.#ed, prompt, opts);
  }

  /**
   * Diagnostics: the per-token routing distance of every slot (0 = working, i + 1 = memory i) on one token
   * row, and which tokens count as content for repair `routeContent`.
   */
  async routingTokens(ids: readonly number[]): Promise<{ slots: number[][]; content: boolean[] }> {
    this.#ed.check();
    return routingTokens(this.#ed, ids);
  }

  /** Routed generation: the route is decided once on the prompt and kept for every new token. */
  generate(prompt: Prompt, opts: GenerateOptions = {}): Promise<GenerateResult> {
    const ed = this.#ed;
    try {
      ed.check();
    } catch (e) {
      return Promise.reject(e);
    }
    return modelInternals(this.model).generateRouted(prompt, opts, async (nm, ids) => {
      const [slot] = await routeRows(ed, nm, Int32Array.from(ids), 1, ids.length, new Int32Array(1), 'prompt');
      return { side: ed.side, slot: slot! };
    });
  }

  /** Routed logits: each row is routed on its own tokens (as the reference evaluates teacher-forced inputs). */
  logits(batch: readonly (readonly number[])[], opts: LogitsOptions = {}): Promise<LogitsResult> {
    const ed = this.#ed;
    try {
      ed.check();
    } catch (e) {
      return Promise.reject(e);
    }
    return modelInternals(this.model).logitsRouted(batch, opts, async (nm, b) => {
      const slots = await routeRows(ed, nm, b.tokens, b.B, b.T, b.pad, 'full');
      return { side: ed.side, slots: Int32Array.from(slots) };
    });
  }

  /**
   * Undo one edit. Every memory that holds it is retrained without it (same masks, same order) and, for a
   * merged memory, re-merged: the cost is one edit's training per remaining edit in those memories
   * (at most saveFreq for a shard, mergeFreq for a merged memory), plus one merge.
   */
  async rollback(editId: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    this.#ed.check();
    await this.#exclusive(opts.signal, () => this.#disposeGuard(() => rollbackEdit(this.#ed, editId, opts)));
  }

  /**
   * Save the side memories (never the base weights) as safetensors + JSON metadata. Atomic: written to a
   * temporary file, fsynced, then renamed over `path`; a crash mid-save leaves the old file intact.
   */
  async save(path: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    this.#ed.check();
    await this.#exclusive(opts.signal, () => saveMemoryFile(this.#ed, path, opts.signal));
  }

  /**
   * Load a memory file saved by save() onto the same base model. The file's checksum and the structure of
   * its metadata are verified first (ERR_MEMORY_FILE naming what failed); `allowUnverified` loads a
   * version-1 file, which has no checksum.
   */
  static async load(model: Model, path: string, opts: { signal?: AbortSignal; allowUnverified?: boolean } = {}): Promise<Editor> {
    if (model.disposed) throw disposedError();
    const file = readEditorFile(model, path, opts.allowUnverified === true);
    const e = new Editor(model, file.config);
    await attach(e.#ed);
    try {
      await restoreMemoryFile(e.#ed, file, opts.signal);
    } catch (err) {
      await e.dispose();
      throw toRepairError(err);
    }
    return e;
  }

  /** Free the side memories (idempotent). The model stays usable. */
  async dispose(): Promise<void> {
    const ed = this.#ed;
    if (ed.freed) return;
    ed.freed = true;
    ed.unhook();
    if (this.model.disposed) return;
    try {
      await modelInternals(this.model).enqueue(async (nm) => nm.sideFree(ed.side));
    } catch {
      /* the model went away meanwhile: it freed the store */
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}
