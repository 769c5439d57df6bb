// editor.ts — WISE side-memory editing (ALGORITHM.md §1): per-architecture presets, the edit rows of
// §1.3, the shard cadence and TIES merges of §1.7–1.8, routing at inference (§1.9), save/load and
// rollback. This file decides *what* happens; every bit of arithmetic is one native call (one whole
// edit per sideEdit call, all slots scored by one stacked GEMM in sideScore).
import { basename } from 'node:path';
import { readMemoryFile, validateMemoryMeta, writeMemoryFile, MEMORY_FORMAT, MEMORY_FORMAT_VERSION } from './memfile.js';
import { RepairError, abortedError, disposedError, toRepairError } from './errors.js';
import { modelInternals, type GenerateOptions, type GenerateResult, type LogitsOptions, type LogitsResult, type Model, type Prompt } from './model.js';
import type { ModelConfig } from './config.js';
import type { NativeEditBatch, NativeEditHyper, NativeEditResult, NativeModel } from './native.js';
import { calibrateThreshold, errorRates, formBatches, lossAwareWeights, resolveRepairOptions, topKMean, type RepairOptions } from './repair.js';

export { MEMORY_FORMAT, MEMORY_FORMAT_VERSION };

export type EditMethod = 'wise' | 'ft' | 'repair';
export type ScoreMode = 'code' | 'paper';

/** One edit: make `target` the answer to `prompt`. */
export interface EditRequest {
  prompt: string;
  target: string;
  /** A paraphrase of the prompt (kept with the edit; used by evaluation). */
  rephrase?: string;
  /**
   * Unrelated text trained as the irrelevant row of the routing margin (§1.3; ZsRE uses the train
   * record's `loc + " " + loc_ans`). Default: cycled from the editor's irrelevant pool.
   */
  irrelevant?: string;
  /** Unrelated prompts whose answers must not change (kept with the edit; used by evaluation). */
  locality?: { prompt: string; answer: string }[];
  /** Caller-chosen id (default e1, e2, ...). Must be unique within the editor. */
  id?: string;
}

/** Every hyper-parameter of the WISE engine; all optional in EditorOptions (presets fill the rest). */
export interface EditorConfig {
  method: EditMethod;
  /** Decoder layer whose FFN value matrix (mlp.down_proj; GPT-2: mlp.c_proj, as [D, F]) gets side memories. */
  layer: number;
  /**
   * Which FFN matrix holds the side memories: 'value' (default; down_proj, GPT-2 mlp.c_proj, §1.1) or 'key'
   * (GPT-2 only: mlp.c_fc as [F, D] with its bias, the matrix the reference's gpt2-xl.yaml edits; its routing
   * score with φ = gelu compares the real FFN activations). 'key' exists for parity studies with the reference.
   */
  editMatrix: 'value' | 'key';
  /** SGD learning rate (edit_lr). */
  lr: number;
  /** Optimisation steps per edit (n_iter). */
  nIter: number;
  /** [α, β, γ] of the routing margin (act_margin): irrelevant <= α, edit >= β, gap >= γ. */
  actMargin: [number, number, number];
  /** Threshold = actRatio × min over a memory's edits of the edit score (act_ratio). */
  actRatio: number;
  /** Bernoulli density ρ of each shard's gradient mask (mask_ratio); 1 = no mask. */
  maskRatio: number;
  /** SGD weight decay (applied after masking, to every element, §1.5). Default 0: see resolveConfig. */
  weightDecay: number;
  /** W' stays within W_v ± normConstraint (0 = off). */
  normConstraint: number;
  /** Every saveFreq edits the working memory is frozen as a shard. */
  saveFreq: number;
  /** Every mergeFreq edits the last mergeFreq/saveFreq shards are TIES-merged (retrieve) or folded in (merge). */
  mergeFreq: number;
  /** TIES trim density (densities). */
  mergeDensity: number;
  /** TIES weight (weights); each of k shards gets mergeWeight/k. */
  mergeWeight: number;
  /** true: WISE-Retrieve (one memory per merge, routed top-1); false: WISE-Merge (one merged memory). */
  retrieve: boolean;
  /** 'code' = ‖φ(o_side) − φ(o_main)‖ with φ = hidden_act (reference numbers); 'paper' = ‖o_side − o_main‖. */
  scoreMode: ScoreMode;
  /** Build edit rows (and Rel/Gen prompts) with the chat template. */
  useChatTemplate: boolean;
  /** Stop an edit early when the loss settles (§1.5 EarlyStopMeter). */
  earlyStop: boolean;
  /** Seed of the context templates' sampling and of the shard masks. */
  seed: number;
  /** At inference, sequences with more valid tokens than this are scored by their max token distance. */
  maxMeanTokens: number;
  /** Context templates ("prefix {}"); default: generated once by the unedited model (§1.3). */
  contextTemplates?: string[];
  /** Fallback irrelevant rows for requests without `irrelevant` (default: the generated template texts). */
  irrelevantPool?: string[];
  /**
   * Irrelevant rows per edit [ours]: 1 is the reference (the request's `irrelevant`); more rows add the
   * next texts of the irrelevant pool, which tightens routing on small models at a small cost per step.
   */
  irrelevantRows: number;
  /** REPAIR's closed-loop options (method 'repair' only; see lib/repair.ts for every default and its source). */
  repair?: RepairOptions;
  /** Where the defaults came from (preset name). */
  preset: string;
}

export type EditorOptions = Partial<Omit<EditorConfig, 'preset' | 'repair'>> & { repair?: Partial<RepairOptions> };

/** What the REPAIR loop reports through editMany's onEvent. */
export type RepairEvent =
  | { type: 'edit-trained'; ids: string[]; memory: string; steps: number; loss: number; kd: number; kdScores: number[] }
  | { type: 'residual-added'; ids: string[]; kdScores: number[] }
  | { type: 'residual-rebatched'; ids: string[] }
  | { type: 'error-detected'; id: string; score: number; memory: string; routedTo: string }
  | { type: 'shard-pruned'; memory: string; reason: 'error-rate' | 'feedback-pool'; errorRate: number; edits: string[] }
  | { type: 'edits-reintegrated'; ids: string[] }
  | { type: 'gave-up'; id: string; attempts: number }
  | { type: 'shards-merged'; into: string; from: string[]; rule: 'ties' | 'loss-aware'; weights: number[]; losses: number[] };

export interface EditManyResult {
  /** One entry per trained batch sample, in training order (a re-trained edit appears again). */
  results: EditResult[];
  /** Edits dropped after exhausting their retrigger budget (no longer in effect). */
  gaveUp: string[];
  /** Retriggers (prunes) run in this call. */
  retriggers: number;
}

export interface EditProgress {
  step: number;
  nIter: number;
  loss: number;
}

export interface EditResult {
  id: string;
  /** Optimisation steps run (n_iter unless early-stopped). */
  steps: number;
  /** Loss per step (CE + routing margin). */
  losses: number[];
  /** Where the edit lives now: 'working' or the memory index (after a save/merge in this call). */
  memory: 'working' | number;
  /** The edit's threshold statistic (mean routing score of its rows at the last step). */
  score: number;
}

/** Editor#editInfo: one edit and where it lives. */
export interface EditInfo {
  id: string;
  request: EditRequest;
  /** 'working', the index into memories(), or 'queued' (not trained yet: an interrupted editMany resumes it). */
  memory: 'working' | number | 'queued';
  /** The threshold statistic and prompt score at its last training step, and its share of L_edit (trained edits). */
  score?: number;
  promptScore?: number;
  loss?: number;
}

export interface RouteScore {
  /** -1 = the working memory, else the index into memories. */
  memory: number;
  kind: 'working' | 'shard' | 'merged';
  score: number;
  threshold: number;
  edits: number;
  /**
   * With repair's `recalibrate` (issue 12): the routing scores, on this memory's current weights, of its own
   * edit prompts (positives) and of the negatives its threshold was set between.
   */
  calibration?: Calibration;
}

/** The two score distributions a recalibrated threshold lies between (repair `recalibrate`). */
export interface Calibration {
  positives: number[];
  negatives: number[];
}

export interface Explanation {
  /** 'main' when no memory clears its threshold, else the chosen memory (-1 = working). */
  route: 'main' | number;
  score: number;
  threshold: number;
  scores: RouteScore[];
  tokens: number;
}

interface ShardPart {
  seed: number;
  edits: string[];
}
interface MemoryState {
  /** Stable name (survives slot moves; a merge makes a new one): what events and error rates refer to. */
  uid: string;
  kind: 'shard' | 'merged';
  /** repair `recalibrate`: the threshold recalibrated on the current weights, and its two distributions. */
  thr?: number;
  cal?: Calibration;
  minAct: number;
  /** min over its edits of the prompt-only score: the threshold base for routing bare prompts. */
  minPrompt: number;
  edits: string[];
  /** The shards it was merged from (one for a plain shard): what rollback retrains. */
  parts: ShardPart[];
  /** The TIES weights used for `parts` (retrieve merge) — kept for re-merging after rollback. */
  weights: number[];
}
interface WorkingState {
  uid: string;
  seed: number;
  thr?: number;
  cal?: Calibration;
  minAct: number;
  minPrompt: number;
  edits: string[];
}
interface StoredEdit {
  request: EditRequest;
  irrelevant: string[];
  score: number;
  promptScore: number;
  /** Its share of L_edit at the last training step (the loss-aware merge's L_i averages these). */
  loss: number;
}
/** An edit waiting to be trained (the queue, the residual pool). */
interface Pending {
  id: string;
  request: EditRequest;
  attempts: number;
}
/** The REPAIR loop's state: saved with the memory file so an interrupted editMany can resume. */
interface LoopState {
  queue: Pending[];
  residual: Pending[];
  /** E: edits whose last monitored prediction failed. */
  feedback: string[];
  /** Last monitored status of each edit: the memory it routed to (uid, or 'main') and a(x). */
  status: Record<string, { memory: string; routedTo?: string; score: number; ok: boolean }>;
  attempts: Record<string, number>;
  gaveUp: string[];
  uidCounter: number;
}

interface Metadata {
  format: string;
  version: number;
  config: EditorConfig;
  /** modelDir (the folder the memories were trained on; files before issue 16 lack it): what the CLI names in a mismatch. */
  base: { modelType: string; layer: number; hiddenSize: number; intermediateSize: number; fingerprint: string; modelDir?: string };
  templates: string[];
  irrelevantPool: string[];
  editCount: number;
  shardCount: number;
  loop: LoopState;
  globalMinAct: number;
  globalMinPrompt: number;
  working: WorkingState;
  memories: MemoryState[];
  edits: Record<string, StoredEdit>;
  nextId: number;
  irrCursor: number;
}

const TEMPLATE_SEEDS = ['I', 'You', 'Because', 'Yes', 'Q: '];
const NO_ACT = 1e9; // min_a before any edit (EditingMeanAct)

// ---- presets (ALGORITHM.md §1.10) ----------------------------------------------------------------
interface Preset extends Partial<EditorConfig> {
  preset: string;
}

/** The §1.10 preset for a model (recognised by type and shape), else a generic one. */
export function presetFor(cfg: ModelConfig): Preset {
  const { modelType: t, numLayers: L, hiddenSize: D, vocabSize: V } = cfg;
  const base = { lr: 1.0, nIter: 70, actMargin: [5, 20, 10] as [number, number, number], actRatio: 0.88, useChatTemplate: false };
  if (t === 'llama' && L === 32 && D === 4096 && V === 32000) return { ...base, preset: 'llama-7b (LLaMA-2)', layer: 27 };
  if (t === 'llama' && L === 32 && D === 4096 && V >= 128000) {
    if (cfg.ropeScaling && (cfg.ropeScaling as { type?: string }).type === 'llama3')
      return { ...base, preset: 'llama3.1-8b', layer: 29, lr: 0.9, nIter: 30, actMargin: [5, 10, 10], actRatio: 0.88, useChatTemplate: true };
    return { ...base, preset: 'llama3-8b', layer: 29, lr: 0.9, nIter: 30, actMargin: [2, 20, 10], actRatio: 0.5, useChatTemplate: true };
  }
  if (t === 'llama' && L === 28 && D === 3072) return { ...base, preset: 'llama3.2-3b', layer: 27, useChatTemplate: true };
  if (t === 'mistral' && L === 32 && D === 4096) return { ...base, preset: 'mistral-7b', layer: 27 };
  if (t === 'qwen2' && L === 28 && D === 3584) return { ...base, preset: 'qwen2.5-7b', layer: 23, useChatTemplate: true };
  if (t === 'gpt2') {
    // §1.10 gpt2-xl.yaml: lr 1.0, n_iter 40, act_margin [5, 20, 10], act_ratio 0.80, layer 8. That yaml's
    // model_name is ./hugging_cache/gpt2, i.e. the reference actually ran it on GPT-2 small (12 layers),
    // where layer 8 sits at 2/3 of the depth, inside the mid-to-late band WISE uses for value matrices.
    // We edit the value matrix mlp.c_proj there (the reference edits c_fc, the key matrix: §1.1).
    // gpt2-xl keeps the yaml's layer 8 for parity studies; other GPT-2 sizes take the same 2/3 depth.
    const g = { ...base, nIter: 40, actRatio: 0.8, actMargin: [5, 20, 10] as [number, number, number] };
    if (L === 48 && D === 1600) return { ...g, preset: 'gpt2-xl', layer: 8 };
    if (L === 12 && D === 768) return { ...g, preset: 'gpt2', layer: 8 };
    const layer = L <= 8 ? Math.max(0, L - 2) : Math.round((2 * L) / 3);
    return { ...g, preset: `gpt2 (generic, ${L} layers)`, layer };
  }
  // [ours] Unknown models: the reference layers sit at 82–91 % of depth; small models edit their
  // second-to-last layer so that one full block (attention + MLP) lies above the side memory.
  const layer = L <= 8 ? Math.max(0, L - 2) : Math.min(L - 1, Math.round(0.85 * L));
  return { ...base, preset: `generic (${t}, ${L} layers)`, layer, useChatTemplate: false };
}

/**
 * [ours] An instruct / chat model: its folder name or config `_name_or_path` says so (Instruct, chat, -it,
 * SFT, DPO, RLHF). Base models often ship a chat template too, so the template alone does not decide.
 */
export function looksInstruct(model: Model): boolean {
  const names = [basename(model.dir), String(model.config.raw._name_or_path ?? '')];
  return names.some((n) => /instruct|chat|(^|[-_.])it($|[-_.])|sft|dpo|rlhf/i.test(n));
}

function resolveConfig(model: Model, opts: EditorOptions): EditorConfig {
  const cfg = model.config;
  const p = presetFor(cfg);
  const method = opts.method ?? 'wise';
  const c: EditorConfig = {
    method,
    layer: p.layer!,
    editMatrix: 'value',
    lr: p.lr!,
    nIter: p.nIter!,
    actMargin: p.actMargin!,
    actRatio: p.actRatio!,
    maskRatio: method === 'ft' ? 1 : 0.2,
    // [ours] 0, not the yaml's 1e-5: the reference runs in fp16, where lr·wd·W' is below the fp16 spacing and
    // the decay never changes a weight. In f32 it would touch every element, so each shard's task vector
    // would stop being sparse (mask-only) and TIES would average real updates with decay noise.
    weightDecay: 0,
    normConstraint: 1.0,
    saveFreq: 500,
    mergeFreq: 1000,
    mergeDensity: 0.53,
    mergeWeight: 1.0,
    retrieve: true,
    scoreMode: 'code',
    // Edits are trained (and evaluated) through the chat template where chat queries will use it: the
    // presets that say so, and any instruct/chat model whose tokenizer has a template.
    useChatTemplate: ((p.useChatTemplate ?? false) || looksInstruct(model)) && model.tokenizer.hasChatTemplate,
    earlyStop: true,
    seed: 0,
    maxMeanTokens: 100,
    irrelevantRows: 1,
    preset: p.preset,
  };
  if (method === 'repair') {
    // REPAIR runs "frequent knowledge fusion": the REPAIR repo's yamls save every 5 edits; k = 2 shards
    // per merged memory is the best of the paper's Fig. 6a sweep [ALGORITHM.md §2.9].
    c.saveFreq = 5;
    c.mergeFreq = 10;
  }
  for (const [k, v] of Object.entries(opts)) {
    if (v === undefined || k === 'repair') continue;
    if (!(k in c) && k !== 'contextTemplates' && k !== 'irrelevantPool') throw bad(`unknown editor option '${k}'`, k);
    (c as unknown as Record<string, unknown>)[k] = v;
  }
  if (opts.repair !== undefined && method !== 'repair') throw bad("editor option repair is only for method 'repair'", 'repair');
  if (method === 'repair') c.repair = resolveRepairOptions(opts.repair, typeof c.mergeFreq === 'number' ? c.mergeFreq : 10);
  validateConfig(c, cfg);
  return c;
}

function bad(msg: string, field?: string): RepairError {
  return new RepairError('ERR_INVALID_ARG', msg, field ? { field } : undefined);
}

function validateConfig(c: EditorConfig, cfg: ModelConfig): void {
  const num = (k: keyof EditorConfig, ok: (x: number) => boolean, what: string) => {
    const v = c[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw bad(`editor option ${k} must be ${what}, got ${JSON.stringify(v)}`, k);
  };
  const int = (k: keyof EditorConfig, lo: number, hi: number) => num(k, (x) => Number.isInteger(x) && x >= lo && x <= hi, `an integer in [${lo}, ${hi}]`);
  if (c.method !== 'wise' && c.method !== 'ft' && c.method !== 'repair') throw bad(`editor option method must be 'wise', 'repair' or 'ft', got ${JSON.stringify(c.method)}`, 'method');
  int('layer', 0, cfg.numLayers - 1);
  if (c.editMatrix !== 'value' && c.editMatrix !== 'key') throw bad(`editor option editMatrix must be 'value' or 'key', got ${JSON.stringify(c.editMatrix)}`, 'editMatrix');
  if (c.editMatrix === 'key' && cfg.arch !== 'gpt2') throw bad("editor option editMatrix 'key' (the c_fc side memory of the reference) exists only for gpt2 models", 'editMatrix');
  num('lr', (x) => x > 0, 'a number > 0');
  int('nIter', 1, 100000);
  if (!Array.isArray(c.actMargin) || c.actMargin.length !== 3 || !c.actMargin.every((x) => typeof x === 'number' && Number.isFinite(x)))
    throw bad('editor option actMargin must be [alpha, beta, gamma] (three finite numbers)', 'actMargin');
  num('actRatio', (x) => x >= 0, 'a number >= 0');
  num('maskRatio', (x) => x > 0 && x <= 1, 'a number in (0, 1]');
  num('weightDecay', (x) => x >= 0, 'a number >= 0');
  num('normConstraint', (x) => x >= 0, 'a number >= 0');
  int('saveFreq', 1, 1e9);
  int('mergeFreq', 1, 1e9);
  if (c.mergeFreq % c.saveFreq !== 0) throw bad(`editor option mergeFreq (${c.mergeFreq}) must be a multiple of saveFreq (${c.saveFreq})`, 'mergeFreq');
  num('mergeDensity', (x) => x > 0 && x <= 1, 'a number in (0, 1]');
  num('mergeWeight', (x) => x > 0, 'a number > 0');
  if (typeof c.retrieve !== 'boolean') throw bad('editor option retrieve must be a boolean', 'retrieve');
  if (c.scoreMode !== 'code' && c.scoreMode !== 'paper') throw bad("editor option scoreMode must be 'code' or 'paper'", 'scoreMode');
  if (typeof c.useChatTemplate !== 'boolean') throw bad('editor option useChatTemplate must be a boolean', 'useChatTemplate');
  if (typeof c.earlyStop !== 'boolean') throw bad('editor option earlyStop must be a boolean', 'earlyStop');
  int('seed', 0, 0xffffffff);
  int('maxMeanTokens', 1, 1e9);
  int('irrelevantRows', 1, 64);
  for (const k of ['contextTemplates', 'irrelevantPool'] as const) {
    const v = c[k];
    if (v !== undefined && (!Array.isArray(v) || v.length === 0 || !v.every((s) => typeof s === 'string')))
      throw bad(`editor option ${k} must be a non-empty array of strings`, k);
  }
  if (c.contextTemplates && !c.contextTemplates.every((t) => t.includes('{}'))) throw bad('every context template must contain {}', 'contextTemplates');
}

/** The activation φ of the routing score (§1.2): 'paper' mode uses none. */
function actCode(model: Model, mode: ScoreMode): 0 | 1 | 2 {
  if (mode === 'paper') return 0;
  const act = model.config.arch === 'gpt2' ? model.config.hiddenAct : String(model.config.raw.hidden_act ?? model.config.raw.hidden_activation ?? 'silu');
  if (act === 'silu' || act === 'swish') return 1;
  if (act.startsWith('gelu')) return 2;
  return 1;
}

function shardSeed(seed: number, shard: number): number {
  // splitmix-style mix of (editor seed, shard index) into a 52-bit safe integer
  let x = BigInt(seed) * 0x9e3779b97f4a7c15n + BigInt(shard + 1) * 0xbf58476d1ce4e5b9n;
  x &= (1n << 64n) - 1n;
  x ^= x >> 31n;
  x = (x * 0x94d049bb133111ebn) & ((1n << 64n) - 1n);
  x ^= x >> 29n;
  return Number(x & ((1n << 52n) - 1n));
}

const templateCache = new WeakMap<Model, Map<number, string[]>>();

/** §1.3: 10 short continuations of fixed seed words by the unedited model, once per model and seed. */
async function contextTexts(model: Model, seed: number): Promise<string[]> {
  let bySeed = templateCache.get(model);
  if (!bySeed) templateCache.set(model, (bySeed = new Map()));
  const hit = bySeed.get(seed);
  if (hit) return hit;
  const gc = model.config.generationConfig ?? {};
  const sample = gc.do_sample === true;
  const out: string[] = [];
  let i = 0;
  for (const len of [5, 10]) {
    for (const s of TEMPLATE_SEEDS) {
      const r = await model.generate(s, {
        maxNewTokens: len,
        temperature: sample ? Number(gc.temperature ?? 1) : 0,
        topK: sample ? Number(gc.top_k ?? 0) : 0,
        topP: sample ? Number(gc.top_p ?? 1) : 1,
        seed: (seed + i++) >>> 0,
        stopOnEos: true,
      });
      out.push(r.text.replace(/\{|\}/g, ' '));
    }
  }
  bySeed.set(seed, out);
  return out;
}

// ---- the Editor --------------------------------------------------------------------------------------
export class Editor {
  readonly model: Model;
  readonly config: Readonly<EditorConfig>;
  #side = 0;
  #disposed = false;
  #unhook: () => void = () => {};
  #templates: string[] = [];
  #irrelevantPool: string[] = [];
  #fingerprint = '';
  #editCount = 0;
  #shardCount = 0;
  #globalMinAct = NO_ACT;
  #globalMinPrompt = NO_ACT;
  #working: WorkingState = { uid: 'w0', seed: 0, minAct: NO_ACT, minPrompt: NO_ACT, edits: [] };
  #memories: MemoryState[] = [];
  #edits = new Map<string, StoredEdit>();
  #nextId = 1;
  #irrCursor = 0;
  #loop: LoopState = { queue: [], residual: [], feedback: [], status: {}, attempts: {}, gaveUp: [], uidCounter: 1 };
  /** repair `recalibrate`: memories (uids) whose weights changed since their threshold was set. */
  #dirty = new Set<string>();
  /** Token ids of texts scored for recalibration (negatives recur across calls). */
  #tokCache = new Map<string, number[]>();
  #nonContent: Set<number> | undefined;

  private constructor(model: Model, config: EditorConfig) {
    this.model = model;
    this.config = Object.freeze({ ...config });
  }

  /** Create an editor on a loaded model. Generates the context templates with the unedited model. */
  static async create(model: Model, opts: EditorOptions = {}): Promise<Editor> {
    if (model.disposed) throw disposedError();
    const config = resolveConfig(model, opts ?? {});
    const ed = new Editor(model, config);
    const texts = config.contextTemplates && config.irrelevantPool ? [] : await contextTexts(model, config.seed);
    ed.#templates = config.contextTemplates ? [...config.contextTemplates] : ['{}', ...texts.map((t) => `${t} {}`)];
    ed.#irrelevantPool = config.irrelevantPool ? [...config.irrelevantPool] : texts;
    await ed.#attach();
    ed.#working = { uid: ed.#uid('w'), seed: shardSeed(config.seed, 0), minAct: NO_ACT, minPrompt: NO_ACT, edits: [] };
    ed.#shardCount = 1;
    return ed;
  }

  async #attach(): Promise<void> {
    const mi = modelInternals(this.model);
    await mi.enqueue(async (nm) => {
      const target = this.config.editMatrix === 'key' ? 1 : 0;
      this.#side = nm.sideCreate(this.config.layer, target);
      try {
        await nm.sideAdd(this.#side, -1); // slot 0: the working memory W' = W_v
        this.#fingerprint = await nm.baseFingerprint(this.config.layer, target);
      } catch (e) {
        nm.sideFree(this.#side);
        throw e;
      }
    });
    this.#unhook = mi.onDispose(() => {
      this.#disposed = true; // the model frees its stores itself
    });
  }

  #uid(prefix: string): string {
    return `${prefix}${this.#loop.uidCounter++}`;
  }

  get disposed(): boolean {
    return this.#disposed || this.model.disposed;
  }
  /** Number of edits trained (re-trained and rolled-back ones included: the cadence counter never goes back). */
  get editCount(): number {
    return this.#editCount;
  }
  /** The context templates used to build edit rows ("prefix {}"). */
  get templates(): readonly string[] {
    return this.#templates;
  }
  /** Summary of the working memory and every side memory. */
  memories(): {
    working: { name: string; edits: string[]; threshold: number; calibration?: Calibration };
    memories: { name: string; kind: string; edits: string[]; threshold: number; calibration?: Calibration }[];
  } {
    const cal = (x: { cal?: Calibration }) => (this.#recal && x.cal ? { calibration: { positives: [...x.cal.positives], negatives: [...x.cal.negatives] } } : {});
    return {
      working: { name: this.#working.uid, edits: [...this.#working.edits], threshold: this.#thrOf(this.#working, 'full'), ...cal(this.#working) },
      memories: this.#memories.map((m) => ({ name: m.uid, kind: m.kind, edits: [...m.edits], threshold: this.#thrOf(m, 'full'), ...cal(m) })),
    };
  }
  /** The ids of the edits currently in effect, in order. */
  edits(): string[] {
    return [...this.#edits.keys()];
  }
  /**
   * One edit: its request, where it lives ('working', a memory index, or 'queued' for an edit an
   * interrupted editMany has not trained yet), and its training figures; undefined for an unknown id.
   */
  editInfo(id: string): EditInfo | undefined {
    const st = this.#edits.get(id);
    if (st) {
      const mi = this.#memories.findIndex((m) => m.edits.includes(id));
      return { id, request: structuredClone(st.request), memory: mi >= 0 ? mi : 'working', score: st.score, promptScore: st.promptScore, loss: st.loss };
    }
    const q = this.#loop.queue.find((p) => p.id === id) ?? this.#loop.residual.find((p) => p.id === id);
    return q ? { id, request: structuredClone(q.request), memory: 'queued' } : undefined;
  }
  /** REPAIR loop state: edits still queued (an interrupted editMany resumes them), the residual and feedback pools. */
  pending(): { queued: string[]; residual: string[]; feedback: string[]; gaveUp: string[] } {
    const l = this.#loop;
    return { queued: l.queue.map((p) => p.id), residual: l.residual.map((p) => p.id), feedback: [...l.feedback], gaveUp: [...l.gaveUp] };
  }

  #check(): void {
    if (this.disposed) throw disposedError();
  }
  #threshold(minAct: number): number {
    return this.config.actRatio * minAct;
  }
  /** repair `recalibrate` (issue 12) is on (retrieve mode only: WISE-Merge keeps the reference thresholds). */
  get #recal(): boolean {
    return this.config.method === 'repair' && this.config.repair!.recalibrate && this.config.retrieve;
  }
  /** A memory's routing threshold: the recalibrated one (repair `recalibrate`), else act_ratio × its min statistic. */
  #thrOf(x: { minAct: number; minPrompt: number; thr?: number; edits: string[] }, basis: 'full' | 'prompt'): number {
    if (this.#recal && x.thr !== undefined) return x.thr;
    if (this.#recal && x.edits.length === 0) return this.#threshold(NO_ACT);
    return this.#threshold(basis === 'full' ? x.minAct : x.minPrompt);
  }

  // ---- rows (§1.3) ----
  /** The prompt text of a request as the model sees it (chat template when enabled). */
  #promptText(template: string, prompt: string): string {
    const body = template.replace('{}', prompt);
    if (!this.config.useChatTemplate) return body;
    return this.model.tokenizer.applyChatTemplate([{ role: 'user', content: body }], { addGenerationPrompt: true });
  }

  /** Build the training rows of one edit: 11 template rows + (wise/repair) the irrelevant row(s). */
  buildBatch(req: EditRequest, irrelevant: string | readonly string[]): NativeEditBatch {
    return this.#buildRows([{ request: req, irrelevant: typeof irrelevant === 'string' ? [irrelevant] : irrelevant }]);
  }

  /**
   * Rows of a batch of samples: each sample's 11 template rows (its sample id), then every sample's
   * irrelevant rows. L_edit(B) = Σ over samples of L_edit(x) (each as §1.4: mean over its rows of
   * Σ CE / (#target + 1)) [ours: a sum, not a mean, so each sample gets the gradient of a single edit at
   * the same lr — with a mean, a batch of b trains each edit b× more weakly in the same n_iter steps].
   */
  #buildRows(samples: readonly { request: EditRequest; irrelevant: readonly string[]; templates?: readonly number[] }[], extraNegatives: readonly string[] = []): NativeEditBatch {
    const tok = this.model.tokenizer;
    const edit: { ids: number[]; p: number; sample: number; rows: number }[] = [];
    samples.forEach(({ request: req, templates }, si) => {
      const use = templates ? templates.map((i) => this.#templates[i]!) : this.#templates;
      for (const t of use) {
        let promptIds: number[];
        let ids: number[];
        if (this.config.useChatTemplate) {
          const pt = this.#promptText(t, req.prompt);
          promptIds = tok.encode(pt);
          ids = tok.encode(`${pt} ${req.target}`);
        } else {
          const i = t.lastIndexOf('{}');
          const pre = t.slice(0, i);
          const post = t.slice(i + 2);
          promptIds = tok.encode(pre + req.prompt + post);
          ids = tok.encode(pre + req.prompt + ' ' + req.target + post);
        }
        if (ids.length <= promptIds.length) {
          throw new RepairError('ERR_EDIT_REQUEST', `the target ${JSON.stringify(req.target)} adds no token to the prompt`, { field: 'target' });
        }
        edit.push({ ids, p: promptIds.length, sample: si, rows: use.length });
      }
    });
    const rows = edit.map((e) => e.ids);
    const margin = this.config.method !== 'ft';
    if (margin) for (const s of samples) for (const t of s.irrelevant) rows.push(tok.encode(t));
    if (margin) for (const t of extraNegatives) rows.push(tok.encode(t));
    const R = rows.length;
    const T = Math.max(...rows.map((r) => r.length));
    if (T > this.model.config.maxPositions) {
      throw new RepairError('ERR_CONTEXT_LENGTH', `an edit row has ${T} tokens, longer than the context length ${this.model.config.maxPositions}`, {
        length: T,
        contextLength: this.model.config.maxPositions,
      });
    }
    const tokens = new Int32Array(R * T);
    const pad = new Int32Array(R);
    const labels = new Int32Array(R * T).fill(-1);
    const labelWeights = new Float32Array(R * T);
    const kind = new Int32Array(R);
    const sample = new Int32Array(R).fill(-1);
    rows.forEach((r, i) => {
      pad[i] = T - r.length;
      tokens.set(r, i * T + pad[i]!);
    });
    edit.forEach((e, i) => {
      const n = e.ids.length - e.p;
      for (let j = e.p; j < e.ids.length; j++) {
        const pos = i * T + pad[i]! + j - 1; // logits at j-1 predict token j
        labels[pos] = e.ids[j]!;
        labelWeights[pos] = 1 / ((n + 1) * e.rows);
      }
      sample[i] = e.sample;
    });
    for (let i = edit.length; i < R; i++) kind[i] = 1;
    return { tokens, R, T, pad, labels, labelWeights, kind, ...(samples.length > 1 ? { sample } : {}) };
  }

  /**
   * Shard replay (repair `replay`, issue 12): up to `replay` edits the working memory already holds (newest
   * first, not in this batch), each on `replayRows` template rows: the bare prompt, then context templates
   * rotating with the edit counter.
   */
  #replaySamples(items: readonly Pending[]): { request: EditRequest; irrelevant: string[]; templates: number[] }[] {
    const ro = this.config.repair;
    if (!ro || ro.replay <= 0) return [];
    const inBatch = new Set(items.map((p) => p.id));
    const held = this.#working.edits.filter((id) => !inBatch.has(id) && this.#edits.has(id)).reverse().slice(0, ro.replay);
    const nT = this.#templates.length;
    return held.map((id, k) => {
      const templates = [0];
      for (let j = 1; j < Math.min(ro.replayRows, nT); j++) templates.push(1 + ((this.#editCount + k + j - 1) % Math.max(1, nT - 1)));
      return { request: this.#edits.get(id)!.request, irrelevant: [], templates: [...new Set(templates)] };
    });
  }

  /**
   * Negatives that generalise (repair `negatives`, issue 12): half (rounded up) the prompt + target rows of
   * edits held by other memories (memory separation), half earlier edits' irrelevant rows, each list walked
   * from a position that moves with the edit counter; one source fills in for the other when it is short.
   */
  #extraNegatives(items: readonly Pending[]): string[] {
    const ro = this.config.repair;
    if (!ro || ro.negatives <= 0) return [];
    const inBatch = new Set(items.map((p) => p.id));
    const other = this.#memories.flatMap((m) => m.edits).filter((id) => !inBatch.has(id) && this.#edits.has(id));
    const inWorking = new Set(this.#working.edits);
    const seen = new Set(items.flatMap((p) => [p.request.irrelevant ?? '']));
    const irr: string[] = [];
    for (const [id, e] of this.#edits) {
      if (inBatch.has(id) || inWorking.has(id)) continue;
      for (const t of e.irrelevant) if (!seen.has(t)) (seen.add(t), irr.push(t));
    }
    const pick = <T>(xs: readonly T[], n: number): T[] => {
      if (!xs.length || n <= 0) return [];
      const start = (this.#editCount * 7) % xs.length;
      return Array.from({ length: Math.min(n, xs.length) }, (_, i) => xs[(start + i) % xs.length]!);
    };
    let nSep = Math.min(Math.ceil(ro.negatives / 2), other.length);
    const nIrr = Math.min(ro.negatives - nSep, irr.length);
    nSep = Math.min(ro.negatives - nIrr, other.length);
    const rowOf = (id: string): string => {
      const r = this.#edits.get(id)!.request;
      return this.config.useChatTemplate ? `${this.#promptText('{}', r.prompt)} ${r.target}` : `${r.prompt} ${r.target}`;
    };
    return [...pick(other, nSep).map(rowOf), ...pick(irr, nIrr)];
  }

  #hyper(seed: number, kd = false): NativeEditHyper {
    const c = this.config;
    const r = c.repair;
    return {
      nIter: c.nIter,
      lr: c.lr,
      weightDecay: c.weightDecay,
      clamp: c.normConstraint,
      maskRatio: c.maskRatio,
      seed,
      margin: c.method !== 'ft',
      alpha: c.actMargin[0],
      beta: c.actMargin[1],
      gamma: c.actMargin[2],
      act: actCode(this.model, c.scoreMode),
      earlyStop: c.earlyStop,
      fullForward: false,
      ...(r ? { actWeight: r.actWeight, fitStop: r.monitor ? r.fitStop : 0 } : {}),
      ...(r && kd ? { kd: true, kdWeight: r.kdWeight, kdLambda: r.kdLambda, kdTheta: r.kdVarianceSign * r.kdTheta, ...(r.kdLogits ? { kdTemperature: r.kdTemperature } : {}) } : {}),
    };
  }

  #validateRequest(req: EditRequest, where = 'the edit request'): void {
    const fail = (msg: string, field?: string): never => {
      throw new RepairError('ERR_EDIT_REQUEST', `${where}: ${msg}`, field ? { field } : undefined);
    };
    if (typeof req !== 'object' || req === null) fail('an edit request must be an object');
    for (const k of ['prompt', 'target'] as const) {
      if (typeof req[k] !== 'string' || req[k].trim() === '') fail(`${k} must be a non-empty string`, k);
    }
    for (const k of ['rephrase', 'irrelevant', 'id'] as const) {
      if (req[k] !== undefined && (typeof req[k] !== 'string' || req[k] === '')) fail(`${k} must be a non-empty string`, k);
    }
    if (req.id !== undefined && (this.#edits.has(req.id) || this.#loop.queue.some((p) => p.id === req.id))) fail(`an edit with id ${req.id} already exists`, 'id');
    if (req.locality !== undefined && (!Array.isArray(req.locality) || !req.locality.every((l) => l && typeof l.prompt === 'string' && typeof l.answer === 'string')))
      fail('locality must be an array of {prompt, answer} strings', 'locality');
  }

  #irrelevantFor(req: EditRequest): string[] {
    const pool = this.#irrelevantPool;
    const out: string[] = [];
    if (req.irrelevant !== undefined) out.push(req.irrelevant);
    if (pool.length === 0 && out.length === 0) throw new RepairError('ERR_EDIT_REQUEST', 'no irrelevant text: pass request.irrelevant or the irrelevantPool option');
    while (out.length < this.config.irrelevantRows) out.push(pool[this.#irrCursor++ % pool.length]!);
    return out;
  }

  /**
   * Apply one edit (all n_iter steps in one native call). On failure or abort nothing changes.
   * With method 'repair' this is editMany([request]): the closed loop runs on it.
   */
  async edit(request: EditRequest, opts: { signal?: AbortSignal; onProgress?: (p: EditProgress) => void; onEvent?: (e: RepairEvent) => void } = {}): Promise<EditResult> {
    this.#check();
    return this.#exclusive(opts.signal, () => this.#disposeGuard(async () => {
      if (this.config.method === 'repair') {
        // one edit() is all or nothing: on failure (an abort during the monitor, after the edit was trained,
        // included) the editor returns to its state before the call, side memories and queue included
        const saved = await this.#saveState();
        let r: EditManyResult;
        try {
          r = await this.#editMany([request], { signal: opts.signal, onEvent: opts.onEvent });
        } catch (e) {
          if (!this.disposed) await this.#restoreState(saved);
          throw e;
        }
        const mine = r.results.filter((x) => x.id === (request.id ?? x.id));
        const last = mine.at(-1);
        if (!last) throw new RepairError('ERR_INTERNAL', 'the edit was not trained');
        return last;
      }
      this.#validateRequest(request);
      const id = request.id ?? this.#freshId();
      const { results } = await this.#train([{ id, request, attempts: 0 }], false, opts);
      return results[0]!;
    }));
  }

  #lock: Promise<void> = Promise.resolve();
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
      this.#check();
      if (signal?.aborted) throw abortedError();
      return await fn();
    } finally {
      release();
    }
  }

  /** The whole editor state (bookkeeping and every side-memory slot), to undo a failed edit(). */
  async #saveState(): Promise<{ js: unknown; slots: Float32Array[] }> {
    const js = structuredClone({
      editCount: this.#editCount,
      shardCount: this.#shardCount,
      globalMinAct: this.#globalMinAct,
      globalMinPrompt: this.#globalMinPrompt,
      working: this.#working,
      memories: this.#memories,
      edits: this.#edits,
      nextId: this.#nextId,
      irrCursor: this.#irrCursor,
      loop: this.#loop,
    });
    const slots = await modelInternals(this.model).enqueue(async (nm) => {
      const out: Float32Array[] = [];
      const n = nm.sideSlots(this.#side);
      for (let s = 0; s < n; s++) out.push(await nm.sideRead(this.#side, s));
      return out;
    });
    return { js, slots };
  }

  async #restoreState(saved: { js: unknown; slots: Float32Array[] }): Promise<void> {
    await modelInternals(this.model).enqueue(async (nm) => {
      const n = nm.sideSlots(this.#side);
      const want = saved.slots.length;
      if (n > want) await nm.sideRemove(this.#side, Int32Array.from({ length: n - want }, (_, i) => want + i));
      for (let s = n; s < want; s++) await nm.sideAdd(this.#side, -1);
      for (let s = 0; s < want; s++) await nm.sideWrite(this.#side, s, saved.slots[s]!);
    });
    const j = structuredClone(saved.js) as {
      editCount: number; shardCount: number; globalMinAct: number; globalMinPrompt: number; working: WorkingState;
      memories: MemoryState[]; edits: Map<string, StoredEdit>; nextId: number; irrCursor: number; loop: LoopState;
    };
    this.#editCount = j.editCount;
    this.#shardCount = j.shardCount;
    this.#globalMinAct = j.globalMinAct;
    this.#globalMinPrompt = j.globalMinPrompt;
    this.#working = j.working;
    this.#memories = j.memories;
    this.#edits = j.edits;
    this.#nextId = j.nextId;
    this.#irrCursor = j.irrCursor;
    this.#loop = j.loop;
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

  #freshId(): string {
    while (this.#edits.has(`e${this.#nextId}`) || this.#loop.queue.some((p) => p.id === `e${this.#nextId}`)) this.#nextId++;
    return `e${this.#nextId++}`;
  }

  /**
   * Train a batch of samples into the working memory in one native call, record them, run the cadence.
   * Throws (leaving everything as it was) when the native edit fails or is aborted.
   */
  async #train(
    items: Pending[],
    kd: boolean,
    opts: { signal?: AbortSignal; onProgress?: (p: EditProgress) => void } = {},
  ): Promise<{ results: EditResult[]; memory: string; res: NativeEditResult }> {
    const cursor = this.#irrCursor;
    const samples = items.map((p) => ({ request: p.request, irrelevant: this.#irrelevantFor(p.request) }));
    let batch: NativeEditBatch;
    try {
      batch = this.#buildRows([...samples, ...this.#replaySamples(items)], this.#extraNegatives(items));
    } catch (e) {
      this.#irrCursor = cursor;
      throw e;
    }
    const fresh = this.#working.edits.length === 0;
    const seed = fresh ? shardSeed(this.config.seed, this.#shardCount) : this.#working.seed;
    let hyper = this.#hyper(seed, kd && items.length > 1);
    const hook = (this as unknown as Record<symbol, unknown>)[TRAIN_HOOK] as ((ids: string[], h: NativeEditHyper) => NativeEditHyper) | undefined;
    if (hook) hyper = hook(items.map((p) => p.id), hyper);
    const nIter = this.config.nIter;
    let res: NativeEditResult;
    // A progress callback that throws stops the edit (through an abort) and the call rejects with its error.
    const user = opts.onProgress;
    let userErr: { e: unknown } | undefined;
    const stop = user ? new AbortController() : undefined;
    const signal = stop ? (opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal) : opts.signal;
    const onStep = user
      ? (step: number, loss: number): void => {
          if (userErr) return;
          try {
            user({ step, nIter, loss });
          } catch (e) {
            userErr = { e };
            stop!.abort();
          }
        }
      : undefined;
    let snapshot: Float32Array | undefined;
    const mi = modelInternals(this.model);
    try {
      res = await mi.enqueue(async (nm) => {
        if (user) snapshot = await nm.sideRead(this.#side, 0); // to undo an edit whose callback threw after its last step
        if (signal?.aborted) throw abortedError('the edit');
        return nm.sideEdit(this.#side, 0, batch, hyper, onStep);
      }, signal);
      if (user) await new Promise<void>((r) => setImmediate(r)); // let the last progress calls run
      if (userErr) {
        await mi.enqueue((nm) => nm.sideWrite(this.#side, 0, snapshot!));
        throw userErr.e;
      }
    } catch (e) {
      this.#irrCursor = cursor;
      if (userErr) throw userErr.e;
      throw e;
    }
    if (fresh) {
      this.#working.seed = seed; // a new shard starts with a fresh mask (§1.6)
      this.#shardCount++;
    }
    const S = items.length;
    items.forEach((p, i) => {
      const score = S > 1 ? res.sampleStat[i]! : res.thresholdStat;
      const promptScore = S > 1 ? res.samplePromptStat[i]! : res.promptStat;
      this.#edits.set(p.id, { request: structuredClone(p.request), irrelevant: samples[i]!.irrelevant, score, promptScore, loss: res.sampleCe[i]! });
      if (!this.#working.edits.includes(p.id)) this.#working.edits.push(p.id);
      this.#working.minAct = Math.min(this.#working.minAct, score);
      this.#working.minPrompt = Math.min(this.#working.minPrompt, promptScore);
      this.#globalMinAct = Math.min(this.#globalMinAct, score);
      this.#globalMinPrompt = Math.min(this.#globalMinPrompt, promptScore);
    });
    const trainedInto = this.#working.uid;
    this.#dirty.add(trainedInto);
    const prev = this.#editCount;
    this.#editCount += S;
    if (this.config.method !== 'ft') await this.#cadence(prev);
    await this.#recalibrate();
    const results = items.map((p, i) => {
      const mi = this.#memories.findIndex((m) => m.edits.includes(p.id));
      return {
        id: p.id,
        steps: res.steps,
        losses: Array.from(res.loss),
        memory: this.#working.edits.includes(p.id) || mi < 0 ? ('working' as const) : mi,
        score: S > 1 ? res.sampleStat[i]! : res.thresholdStat,
      };
    });
    return { results, memory: trainedInto, res };
  }

  /** §1.7: save whenever the edit counter crosses a multiple of saveFreq, merge when it crosses mergeFreq. */
  async #cadence(prev: number): Promise<void> {
    const c = this.config;
    const now = this.#editCount;
    if (Math.floor(now / c.saveFreq) === Math.floor(prev / c.saveFreq)) return;
    await this.#saveWorking();
    // repair `keepShards` (issue 12): route over the shards, never merge them
    if (c.method === 'repair' && c.repair!.keepShards) return;
    if (Math.floor(now / c.mergeFreq) !== Math.floor(prev / c.mergeFreq)) await this.#merge();
  }

  /** Freeze the working memory as a shard (a copy) and reset it to the base weight. */
  async #saveWorking(): Promise<void> {
    const c = this.config;
    await modelInternals(this.model).enqueue(async (nm) => {
      await nm.sideAdd(this.#side, 0);
      await nm.sideReset(this.#side, 0);
    });
    this.#memories.push({
      uid: this.#working.uid,
      kind: 'shard',
      minAct: this.#working.minAct,
      minPrompt: this.#working.minPrompt,
      edits: [...this.#working.edits],
      parts: [{ seed: this.#working.seed, edits: [...this.#working.edits] }],
      weights: [1],
      ...(this.#working.thr !== undefined ? { thr: this.#working.thr } : {}),
      ...(this.#working.cal ? { cal: this.#working.cal } : {}),
    });
    this.#working = {
      uid: this.#uid('w'),
      seed: this.#working.seed,
      minAct: c.retrieve ? NO_ACT : this.#working.minAct,
      minPrompt: c.retrieve ? NO_ACT : this.#working.minPrompt,
      edits: [],
    };
  }

  /** Mean final L_edit of a memory's edits: L_i of the loss-aware merge (§2.6). */
  #memoryLoss(m: { edits: string[] }): number {
    const ls = m.edits.map((e) => this.#edits.get(e)?.loss).filter((x): x is number => x !== undefined);
    return ls.length ? ls.reduce((a, b) => a + b, 0) / ls.length : 0;
  }

  async #merge(onEvent?: (e: RepairEvent) => void): Promise<void> {
    const c = this.config;
    const mi = modelInternals(this.model);
    const lossAware = c.method === 'repair' && c.repair!.lossAwareMerge;
    const emit = onEvent ?? this.#onEvent;
    if (c.retrieve) {
      const k = c.mergeFreq / c.saveFreq;
      if (k < 2) return; // one shard per merge: nothing to merge
      const first = this.#memories.length - k;
      const group = this.#memories.slice(first);
      if (first < 0 || group.some((m) => m.kind !== 'shard')) return;
      const slots = Int32Array.from(group.map((_, i) => first + i + 1));
      const losses = group.map((m) => this.#memoryLoss(m));
      const w = lossAware ? lossAwareWeights(losses, c.repair!.mergeAlpha) : group.map(() => c.mergeWeight / k);
      await mi.enqueue(async (nm) => {
        if (lossAware) await nm.sideMergeLossAware(this.#side, slots[0]!, slots, Float32Array.from(w));
        else await nm.sideTies(this.#side, slots[0]!, slots, Float32Array.from(w), c.mergeDensity);
        await nm.sideRemove(this.#side, slots.slice(1));
      });
      const uid = this.#uid('m');
      this.#dirty.add(uid);
      this.#memories.splice(first, k, {
        uid,
        kind: 'merged',
        minAct: Math.min(...group.map((m) => m.minAct)),
        minPrompt: Math.min(...group.map((m) => m.minPrompt)),
        edits: group.flatMap((m) => m.edits),
        parts: group.flatMap((m) => m.parts),
        weights: w,
      });
      this.#remapStatus(group.map((m) => m.uid), uid);
      emit?.({ type: 'shards-merged', into: uid, from: group.map((m) => m.uid), rule: lossAware ? 'loss-aware' : 'ties', weights: w, losses });
    } else {
      // WISE-Merge: fold the pending shards into the one merged memory (memory 0).
      const merged = this.#memories[0]?.kind === 'merged' ? this.#memories[0] : undefined;
      const shards = this.#memories.filter((m) => m.kind === 'shard');
      if (shards.length === 0) return;
      const shardSlots = shards.map((m) => this.#memories.indexOf(m) + 1);
      const srcs = merged ? [...shardSlots, 1] : shardSlots;
      const all = merged ? [...shards, merged] : shards;
      const losses = all.map((m) => this.#memoryLoss(m));
      const weights = lossAware
        ? lossAwareWeights(losses, c.repair!.mergeAlpha)
        : merged
          ? [...shards.map(() => 0.4 / shards.length), 0.6]
          : shards.map(() => c.mergeWeight / shards.length);
      const dst = merged ? 1 : shardSlots[0]!;
      await mi.enqueue(async (nm) => {
        if (lossAware) await nm.sideMergeLossAware(this.#side, dst, Int32Array.from(srcs), Float32Array.from(weights));
        else await nm.sideTies(this.#side, dst, Int32Array.from(srcs), Float32Array.from(weights), c.mergeDensity);
        await nm.sideRemove(this.#side, Int32Array.from(shardSlots.filter((s) => s !== dst)));
      });
      const uid = this.#uid('m');
      this.#memories = [
        {
          uid,
          kind: 'merged',
          minAct: Math.min(...all.map((m) => m.minAct)),
          minPrompt: Math.min(...all.map((m) => m.minPrompt)),
          edits: all.flatMap((m) => m.edits),
          parts: all.flatMap((m) => m.parts),
          weights,
        },
      ];
      this.#remapStatus(all.map((m) => m.uid), uid);
      emit?.({ type: 'shards-merged', into: uid, from: all.map((m) => m.uid), rule: lossAware ? 'loss-aware' : 'ties', weights, losses });
    }
  }
  #onEvent: ((e: RepairEvent) => void) | undefined;

  #remapStatus(from: string[], to: string): void {
    for (const s of Object.values(this.#loop.status)) {
      if (from.includes(s.memory)) s.memory = to;
      if (s.routedTo && from.includes(s.routedTo)) s.routedTo = to;
    }
  }

  // ---- the REPAIR closed loop (ALGORITHM.md §2.1, Alg. 1) ----
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
    this.#check();
    return this.#exclusive(opts.signal, () => this.#disposeGuard(() => this.#editMany(records, opts)));
  }

  async #editMany(
    records: readonly EditRequest[],
    opts: { signal?: AbortSignal; onEvent?: (e: RepairEvent) => void; onProgress?: (p: { done: number; total: number }) => void },
  ): Promise<EditManyResult> {
    if (!Array.isArray(records)) throw new RepairError('ERR_EDIT_REQUEST', 'editMany: records must be an array');
    const ids = new Set<string>();
    records.forEach((r, i) => {
      this.#validateRequest(r, `record ${i}`);
      if (r.id !== undefined) {
        if (ids.has(r.id)) throw new RepairError('ERR_EDIT_REQUEST', `record ${i}: duplicate id ${r.id}`, { index: i, field: 'id' });
        ids.add(r.id);
      }
    });
    for (const r of records) this.#loop.queue.push({ id: r.id ?? this.#freshId(), request: structuredClone(r), attempts: 0 });
    const results: EditResult[] = [];
    const gaveUp: string[] = [];
    let retriggers = 0;
    this.#onEvent = opts.onEvent;
    try {
      if (this.config.method !== 'repair') {
        const total = this.#loop.queue.length;
        while (this.#loop.queue.length) {
          if (opts.signal?.aborted) throw new RepairError('ERR_ABORTED', 'editMany was aborted');
          const p = this.#loop.queue[0]!;
          const t = await this.#train([p], false, { signal: opts.signal });
          this.#loop.queue.shift();
          results.push(...t.results);
          opts.onEvent?.({ type: 'edit-trained', ids: [p.id], memory: t.memory, steps: t.res.steps, loss: t.res.loss.at(-1) ?? 0, kd: 0, kdScores: [0] });
          opts.onProgress?.({ done: total - this.#loop.queue.length, total });
        }
        return { results, gaveUp, retriggers };
      }
      const ro = this.config.repair!;
      const loop = this.#loop;
      let total = loop.queue.length + loop.residual.length;
      // the retraining allowance of this call (retrainShare): reintegrated, re-queued and residual edits
      let allowance = Math.ceil(ro.retrainShare * total);
      let done = 0;
      for (;;) {
        if (!loop.queue.length && !loop.residual.length) {
          // [ours] The stream is done but E still holds failures: retrain them (into a fresh shard) while
          // their budget lasts, rather than end on known errors. Bounded by the budget like RETRIGGER.
          if (!ro.monitor || !loop.feedback.length) break;
          const again = loop.feedback.filter((id) => (loop.attempts[id] ?? 0) < ro.budget && this.#edits.has(id)).slice(0, allowance);
          if (!again.length) break;
          allowance -= again.length;
          if (this.#working.edits.length > 0) await this.#saveWorking();
          for (const id of again) {
            loop.attempts[id] = (loop.attempts[id] ?? 0) + 1;
            loop.queue.push({ id, request: this.#edits.get(id)!.request, attempts: loop.attempts[id]! });
            delete loop.status[id];
          }
          loop.feedback = loop.feedback.filter((id) => !again.includes(id));
          total += again.length;
          opts.onEvent?.({ type: 'edits-reintegrated', ids: again });
          continue;
        }
        if (opts.signal?.aborted) throw new RepairError('ERR_ABORTED', 'editMany was aborted');
        // FORMBATCHES over the next window of incoming edits plus the residual pool
        const incoming = loop.queue.slice(0, ro.batching ? ro.window : 1);
        const residual = ro.batching ? [...loop.residual] : loop.queue.length ? [] : loop.residual.slice(0, 1);
        const pool = [...incoming, ...residual];
        let batches: Pending[][];
        if (ro.batching && pool.length > 1) {
          const feats = await this.#features(pool.map((p) => p.request.prompt), opts.signal);
          batches = formBatches(feats, ro.batchSize).map((b) => b.map((i) => pool[i]!));
        } else {
          batches = pool.map((p) => [p]);
        }
        if (residual.length) opts.onEvent?.({ type: 'residual-rebatched', ids: residual.map((p) => p.id) });
        for (const batch of batches) {
          if (opts.signal?.aborted) throw new RepairError('ERR_ABORTED', 'editMany was aborted');
          const trained = await this.#train(batch, ro.kd, { signal: opts.signal });
          const res = trained.res;
          // the batch is in: take it off the queue / residual pool
          const bIds = new Set(batch.map((p) => p.id));
          loop.queue = loop.queue.filter((p) => !bIds.has(p.id));
          loop.residual = loop.residual.filter((p) => !bIds.has(p.id));
          results.push(...trained.results);
          done += batch.length;
          const kdScores = Array.from(res.sampleKd);
          opts.onEvent?.({ type: 'edit-trained', ids: batch.map((p) => p.id), memory: trained.memory, steps: res.steps, loss: res.loss.at(-1) ?? 0, kd: res.kd.at(-1) ?? 0, kdScores });
          // FILTERANDRECLUSTER: samples inconsistent with the batch teacher are re-batched later
          if (ro.kd && batch.length > 1) {
            const out = batch.filter((p, i) => i > 0 && kdScores[i]! >= ro.epsCons && p.attempts < ro.budget).slice(0, allowance);
            allowance -= out.length;
            for (const p of out) {
              p.attempts++;
              loop.residual.push(p);
              total++;
            }
            if (out.length) opts.onEvent?.({ type: 'residual-added', ids: out.map((p) => p.id), kdScores: out.map((p) => kdScores[batch.indexOf(p)]!) });
          }
          // EVALUATE + RETRIGGER
          if (ro.monitor) {
            await this.#monitor(batch, opts.signal, opts.onEvent);
            // [ours] at most one retrigger per mergeFreq edits of this call (and at least one): each retrains
            // up to a memory's worth of edits, so this bounds the loop's extra cost to about one more pass.
            const cap = Math.max(1, Math.ceil(total / this.config.mergeFreq));
            const r = retriggers < cap ? await this.#maybeRetrigger(opts.onEvent, gaveUp, allowance) : 0;
            if (r) {
              retriggers++;
              total += r;
              allowance -= r;
              break; // the queue changed: form batches again
            }
          }
          opts.onProgress?.({ done, total });
        }
      }
      return { results, gaveUp, retriggers };
    } finally {
      this.#onEvent = undefined;
    }
  }

  /** ModelFeat(x) for batching: mean over tokens of the edited layer's activation A(x) (§2.4, §2.9). */
  async #features(prompts: string[], signal?: AbortSignal): Promise<Float32Array[]> {
    const ids = prompts.map((p) => this.model.tokenizer.encode(this.#promptText('{}', p)));
    const T = Math.max(...ids.map((x) => x.length));
    const B = ids.length;
    const tokens = new Int32Array(B * T);
    const pad = new Int32Array(B);
    ids.forEach((x, b) => {
      pad[b] = T - x.length;
      tokens.set(x, b * T + pad[b]!);
    });
    const F = this.model.config.intermediateSize;
    const flat = await modelInternals(this.model).enqueue((nm) => nm.sideFeatures(this.#side, tokens, B, T, pad), signal);
    return Array.from({ length: B }, (_, b) => flat.subarray(b * F, (b + 1) * F));
  }

  #slotUid(slot: number): string {
    return slot < 0 ? 'main' : slot === 0 ? this.#working.uid : this.#memories[slot - 1]!.uid;
  }

  /** EVALUATE (§2.2): a(x) of each edit on its routed prediction; failures go to the feedback pool E. */
  async #monitor(batch: Pending[], signal: AbortSignal | undefined, onEvent?: (e: RepairEvent) => void): Promise<void> {
    const ro = this.config.repair!;
    const loop = this.#loop;
    for (const p of batch) {
      let score: number;
      let memory: string;
      if (ro.correctness === 'token') {
        const r = await this.#routedTokenAccuracy(p.request.prompt, p.request.target, signal);
        score = r.acc;
        memory = r.memory;
      } else {
        const tgt = this.model.tokenizer.encode(p.request.target, { addSpecialTokens: false });
        let route = 'main';
        const g = await modelInternals(this.model).generateRouted(this.#promptText('{}', p.request.prompt), { maxNewTokens: tgt.length + 2, signal }, async (nm, pids) => {
          const sc = await this.#scores(nm, Int32Array.from(pids), 1, pids.length, new Int32Array(1));
          const d = this.#decide((s) => sc[s]![0]!, 'prompt');
          route = this.#slotUid(d.slot);
          return { side: this.#side, slot: d.slot };
        });
        score = g.completion.trim().startsWith(p.request.target.trim()) ? 1 : 0;
        memory = route;
      }
      const ok = score >= ro.tauCorrect;
      // Attribution (§2.2) [ours]: an edit is charged to the memory that holds it (it failed to serve its
      // edit — also when it no longer activates at all) and, when another memory out-scored it, to that
      // memory too (the paper's argmax-activation rule): a broken shard and a memory that steals
      // routes both show up in the per-memory error rates.
      loop.status[p.id] = { memory: this.#holder(p.id), routedTo: memory, score, ok };
      if (!ok) {
        if (!loop.feedback.includes(p.id)) loop.feedback.push(p.id);
        onEvent?.({ type: 'error-detected', id: p.id, score, memory: this.#holder(p.id), routedTo: memory });
      } else {
        loop.feedback = loop.feedback.filter((e) => e !== p.id);
      }
    }
  }

  /** The memory that holds an edit (the shard it was trained into; the latest when re-trained). */
  #holder(id: string): string {
    if (this.#working.edits.includes(id)) return this.#working.uid;
    for (let i = this.#memories.length - 1; i >= 0; i--) if (this.#memories[i]!.edits.includes(id)) return this.#memories[i]!.uid;
    return 'main';
  }

  /**
   * Teacher-forced token accuracy of prompt + " " + target through the router (full-row basis), and the
   * edit's most active memory (what §2.2's per-shard error rates attribute it to).
   */
  async #routedTokenAccuracy(prompt: string, target: string, signal?: AbortSignal): Promise<{ acc: number; memory: string }> {
    const tok = this.model.tokenizer;
    const pt = this.#promptText('{}', prompt);
    const ids = tok.encode(`${pt} ${target}`);
    const pl = tok.encode(pt).length;
    let memory = 'main';
    const lg = await modelInternals(this.model).logitsRouted([ids], { positions: 'all', signal }, async (nm, b) => {
      const sc = await this.#scores(nm, b.tokens, b.B, b.T, b.pad);
      const d = this.#decide((s) => sc[s]![0]!, 'full');
      memory = this.#slotUid(d.slot);
      return { side: this.#side, slots: Int32Array.of(d.slot) };
    });
    let ok = 0;
    for (let j = pl; j < ids.length; j++) {
      const row = lg.at(0, j - 1);
      let best = 0;
      for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
      if (best === ids[j]) ok++;
    }
    return { acc: ids.length > pl ? ok / (ids.length - pl) : 0, memory };
  }

  /**
   * RETRIGGER (§2.3): when |E| > τ_E or a memory's error rate (over all monitored edits routed to it)
   * exceeds τ_prune, drop the worst memory with its threshold, and put its edits plus the failures at the
   * front of the queue; they are retrained into a fresh shard. An edit re-queued more than `budget` times
   * is given up (and no longer in effect). Returns the number of edits re-queued (0: nothing happened).
   */
  async #maybeRetrigger(onEvent: ((e: RepairEvent) => void) | undefined, gaveUp: string[], allowance = Infinity): Promise<number> {
    const ro = this.config.repair!;
    const loop = this.#loop;
    const charged = Object.values(loop.status).flatMap((s) => [
      { memory: s.memory === 'main' ? undefined : s.memory, ok: s.ok },
      ...(s.routedTo && s.routedTo !== 'main' && s.routedTo !== s.memory ? [{ memory: s.routedTo, ok: s.ok }] : []),
    ]);
    const rates = [...errorRates(charged)].filter(([, r]) => r.n >= ro.minMonitored);
    const worst = rates.reduce<[string, { n: number; failed: number; rate: number }] | undefined>((a, b) => (!a || b[1].rate > a[1].rate ? b : a), undefined);
    const byRate = worst !== undefined && worst[1].rate > ro.tauPrune;
    const byPool = loop.feedback.length > ro.tauE;
    if (!byRate && !byPool) return 0;
    // the memory to prune: the worst by rate; with only a full feedback pool, the one most failures route to
    let target = worst?.[0];
    if (!byRate) {
      const counts = new Map<string, number>();
      for (const e of loop.feedback) {
        const m = loop.status[e]?.memory;
        if (m && m !== 'main') counts.set(m, (counts.get(m) ?? 0) + 1);
      }
      target = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0];
    }
    // retrainShare: a retrigger whose reintegration (the memory's edits + the failures) exceeds what is
    // left of this call's allowance does not run
    const isWorking = target !== undefined && target === this.#working.uid;
    const mi = target === undefined || isWorking ? -1 : this.#memories.findIndex((m) => m.uid === target);
    const pruned = isWorking ? [...this.#working.edits] : mi >= 0 ? [...this.#memories[mi]!.edits] : [];
    if (new Set([...pruned, ...loop.feedback]).size > allowance) return 0;
    if (target !== undefined) {
      if (isWorking) {
        await modelInternals(this.model).enqueue((nm) => nm.sideReset(this.#side, 0));
        this.#working = { uid: this.#uid('w'), seed: this.#working.seed, minAct: NO_ACT, minPrompt: NO_ACT, edits: [] };
      } else if (mi >= 0) {
        await modelInternals(this.model).enqueue((nm) => nm.sideRemove(this.#side, Int32Array.of(mi + 1)));
        this.#memories.splice(mi, 1);
      }
      onEvent?.({ type: 'shard-pruned', memory: target, reason: byRate ? 'error-rate' : 'feedback-pool', errorRate: worst?.[0] === target ? worst[1].rate : 0, edits: pruned });
    }
    // reintegrate: the pruned memory's edits + the failures, at the front of the queue, into a fresh shard
    if (this.#working.edits.length > 0) await this.#saveWorking();
    // Only failing edits spend budget: the pruned memory's passing edits are re-queued for free (they are
    // not at fault). Every retrigger needs a failure, so retriggers are bounded by Σ budget over edits.
    const failing = new Set(loop.feedback);
    const again = [...new Set([...pruned, ...loop.feedback])];
    const requeue: Pending[] = [];
    for (const id of again) {
      const st = this.#edits.get(id) ?? loop.queue.find((p) => p.id === id) ?? loop.residual.find((p) => p.id === id);
      if (!st) continue;
      const attempts = (loop.attempts[id] ?? 0) + (failing.has(id) ? 1 : 0);
      const stillHeld = this.#memories.some((m) => m.edits.includes(id)) || this.#working.edits.includes(id);
      if (attempts > ro.budget) {
        if (!stillHeld) {
          this.#edits.delete(id);
          loop.gaveUp.push(id);
          gaveUp.push(id);
          onEvent?.({ type: 'gave-up', id, attempts: attempts - 1 });
        }
        continue;
      }
      loop.attempts[id] = attempts;
      if (!stillHeld) this.#edits.delete(id);
      requeue.push({ id, request: 'request' in st ? st.request : (st as Pending).request, attempts });
    }
    for (const id of again) delete loop.status[id];
    loop.feedback = [];
    loop.queue = [...requeue, ...loop.queue.filter((p) => !requeue.some((r) => r.id === p.id))];
    loop.residual = loop.residual.filter((p) => !requeue.some((r) => r.id === p.id));
    if (requeue.length) onEvent?.({ type: 'edits-reintegrated', ids: requeue.map((p) => p.id) });
    return requeue.length || (target !== undefined ? 1 : 0);
  }

  // ---- threshold recalibration (repair `recalibrate`, issue 12) ----
  #tokens(text: string): number[] {
    let ids = this.#tokCache.get(text);
    if (!ids) {
      ids = this.model.tokenizer.encode(text);
      if (this.#tokCache.size > 4096) this.#tokCache.clear();
      this.#tokCache.set(text, ids);
    }
    return ids;
  }

  /**
   * Set the threshold of every memory whose weights changed (the dirty set) from its routing scores on its
   * current weights: positives = its own edit prompts (bare, as generation routes them — they score below
   * the teacher-forced prompt + answer rows); negatives = up to calibrationNegatives unrelated texts, the
   * irrelevant rows of the stored edits, newest first. Not the context-template texts: every edit row
   * starts with one, so a memory is trained to fire on them. Not other memories' edit prompts: those decide
   * between memories (the highest score / threshold wins), not between a memory and the main weight. A
   * memory calibrated while fewer negatives existed is recalibrated as the pool grows (until it holds
   * calibrationNegatives: a bounded number of times). One batched scoring call (every slot is scored at once).
   */
  async #recalibrate(): Promise<void> {
    if (!this.#recal) {
      this.#dirty.clear();
      return;
    }
    const ro = this.config.repair!;
    const all: { slot: number; x: MemoryState | WorkingState }[] = [{ slot: 0, x: this.#working }, ...this.#memories.map((m, i) => ({ slot: i + 1, x: m }))];
    const K = ro.calibrationNegatives;
    const avail = Math.min(K, new Set([...this.#edits.values()].flatMap((e) => e.irrelevant)).size);
    const todo = all.filter(({ x }) => this.#dirty.has(x.uid) || (x.edits.length > 0 && x.cal !== undefined && x.cal.negatives.length < avail));
    this.#dirty.clear();
    for (const { x } of todo) if (x.edits.length === 0) (x.thr = this.#threshold(NO_ACT), (x.cal = { positives: [], negatives: [] }));
    const work = todo.filter(({ x }) => x.edits.length > 0);
    if (!work.length) return;
    // negatives: irrelevant rows of the stored edits (newest first)
    const pool: string[] = [];
    const seen = new Set<string>();
    for (const e of [...this.#edits.values()].reverse()) for (const t of e.irrelevant) if (pool.length < K && !seen.has(t)) (seen.add(t), pool.push(t));
    const prompts = new Set<string>();
    for (const { x } of work) for (const id of x.edits) if (this.#edits.has(id)) prompts.add(id);
    const promptIds = [...prompts];
    const rows = [...promptIds.map((id) => this.#tokens(this.#promptText('{}', this.#edits.get(id)!.request.prompt))), ...pool.map((t) => this.#tokens(t))];
    const B = rows.length;
    const T = Math.max(...rows.map((r) => r.length));
    const tokens = new Int32Array(B * T);
    const pad = new Int32Array(B);
    rows.forEach((r, b) => {
      pad[b] = T - r.length;
      tokens.set(r, b * T + pad[b]!);
    });
    const sc = await modelInternals(this.model).enqueue((nm) => this.#scores(nm, tokens, B, T, pad));
    const rowOf = new Map(promptIds.map((id, i) => [id, i]));
    for (const { slot, x } of work) {
      const positives = x.edits.filter((id) => rowOf.has(id)).map((id) => sc[slot]![rowOf.get(id)!]!);
      const negatives = pool.map((_, i) => sc[slot]![promptIds.length + i]!);
      const thr = calibrateThreshold(positives, negatives, ro.calibrationPoint);
      x.thr = Number.isFinite(thr) ? thr : this.#threshold(NO_ACT);
      x.cal = { positives, negatives };
    }
  }

  // ---- routing (§1.9) ----
  /**
   * Token ids that are not content for repair `routeContent`: the tokenizer's special tokens (BOS, EOS, pad,
   * added specials: decoded to nothing when specials are skipped) and, with the chat template, every token
   * of the template's scaffold around an empty user turn.
   */
  #nonContentIds(): Set<number> {
    if (this.#nonContent) return this.#nonContent;
    const tok = this.model.tokenizer;
    const out = new Set<number>();
    for (const id of [tok.bosTokenId, tok.eosTokenId]) if (id !== undefined) out.add(id);
    if (this.config.useChatTemplate) for (const id of tok.encode(this.#promptText('{}', ''))) out.add(id);
    this.#nonContent = out;
    return out;
  }
  #isContent(id: number): boolean {
    if (this.#nonContentIds().has(id)) return false;
    const tok = this.model.tokenizer;
    // an added special token decodes to nothing once specials are skipped
    if (tok.decode([id], { skipSpecialTokens: true }) === '' && tok.decode([id], { skipSpecialTokens: false }) !== '') {
      this.#nonContent!.add(id);
      return false;
    }
    return true;
  }

  /**
   * Per-slot scores of each row, slot-major [slots][B]: the reference's mean over valid tokens (max past
   * maxMeanTokens), or with repair `routeContent` the mean of the distances over the
   * row's content tokens (every valid token when it has none).
   */
  async #scores(nm: NativeModel, tokens: Int32Array, B: number, T: number, pad: Int32Array): Promise<number[][]> {
    const raw = await nm.sideScore(this.#side, tokens, B, T, pad, actCode(this.model, this.config.scoreMode));
    const slots = raw.length / (B * T);
    const out: number[][] = [];
    const ro = this.config.method === 'repair' ? this.config.repair! : undefined;
    if (ro?.routeContent) {
      const content: number[][] = [];
      for (let b = 0; b < B; b++) {
        const c: number[] = [];
        for (let t = pad[b]!; t < T; t++) if (this.#isContent(tokens[b * T + t]!)) c.push(t);
        if (c.length === 0) for (let t = pad[b]!; t < T; t++) c.push(t);
        content.push(c);
      }
      for (let s = 0; s < slots; s++) out.push(content.map((c, b) => topKMean(c.map((t) => raw[s * B * T + b * T + t]!), ro.routeTopK)));
      return out;
    }
    for (let s = 0; s < slots; s++) {
      const row: number[] = [];
      for (let b = 0; b < B; b++) {
        const valid = T - pad[b]!;
        let sum = 0;
        let max = 0;
        for (let t = pad[b]!; t < T; t++) {
          const v = raw[s * B * T + b * T + t]!;
          sum += v;
          if (v > max) max = v;
        }
        row.push(valid > this.config.maxMeanTokens ? max : sum / valid);
      }
      out.push(row);
    }
    return out;
  }

  /**
   * The slot a row routes to (-1 = main weight) given its per-slot scores (§1.9). `basis` picks the
   * thresholds: 'full' = act_ratio × min edit-row score (the reference; rows hold prompt + answer, as in
   * teacher-forced evaluation), 'prompt' = act_ratio × min prompt-only score [ours]: a bare prompt
   * (routing before generation) carries no answer tokens, so its score is compared with its own kind.
   */
  #decide(score: (slot: number) => number, basis: 'full' | 'prompt'): { slot: number; score: number; threshold: number } {
    if (this.config.method === 'ft') return { slot: 0, score: Infinity, threshold: 0 };
    const minOf = (x: { minAct: number; minPrompt: number }) => (basis === 'full' ? x.minAct : x.minPrompt);
    if (!this.config.retrieve) {
      const thr = this.#threshold(basis === 'full' ? this.#globalMinAct : this.#globalMinPrompt);
      const merged = this.#memories[0]?.kind === 'merged' ? 1 : -1;
      const s1 = merged > 0 ? score(merged) : -Infinity;
      const s2 = score(0);
      if (s1 < thr && s2 < thr) return { slot: -1, score: Math.max(s1, s2), threshold: thr };
      return s1 > s2 ? { slot: merged, score: s1, threshold: thr } : { slot: 0, score: s2, threshold: thr };
    }
    if (this.#recal) {
      // recalibrated thresholds (issue 12): among the memories above their own threshold, the highest
      // score / threshold — scores of different memories live on different scales (a merged memory's deltas
      // add up), their thresholds carry that scale.
      let out = { slot: -1, score: -Infinity, threshold: Infinity };
      let bestRatio = -Infinity;
      const all: { slot: number; x: MemoryState | WorkingState }[] = [{ slot: 0, x: this.#working }, ...this.#memories.map((m, i) => ({ slot: i + 1, x: m }))];
      for (const { slot, x } of all) {
        if (x.edits.length === 0) continue;
        const s = score(slot);
        const thr = this.#thrOf(x, basis);
        const ratio = s / Math.max(thr, 1e-9);
        if (s > thr && ratio > bestRatio) {
          bestRatio = ratio;
          out = { slot, score: s, threshold: thr };
        }
      }
      return out;
    }
    let best = score(0);
    const thrW = this.#threshold(minOf(this.#working));
    let out = best < thrW ? { slot: -1, score: best, threshold: thrW } : { slot: 0, score: best, threshold: thrW };
    this.#memories.forEach((m, i) => {
      const s = score(i + 1);
      const thr = this.#threshold(minOf(m));
      if (s > best && s > thr) {
        out = { slot: i + 1, score: s, threshold: thr };
        best = s;
      }
    });
    return out;
  }

  /**
   * Which memory an input routes to, with every score and threshold. By default the input is a bare
   * prompt, routed as generate() routes it; `{ teacherForced: true }` routes it as logits() does (full
   * rows such as prompt + answer, against the reference thresholds).
   */
  async explain(prompt: Prompt, opts: { signal?: AbortSignal; teacherForced?: boolean } = {}): Promise<Explanation> {
    this.#check();
    const ids = this.model.promptTokens(prompt);
    const basis = opts.teacherForced ? 'full' : 'prompt';
    const thrOf = (x: { minAct: number; minPrompt: number; thr?: number; edits: string[] }) =>
      this.#recal
        ? this.#thrOf(x, basis)
        : this.#threshold(this.config.retrieve ? (basis === 'full' ? x.minAct : x.minPrompt) : basis === 'full' ? this.#globalMinAct : this.#globalMinPrompt);
    const cal = (x: { cal?: Calibration }) => (this.#recal && x.cal ? { calibration: { positives: [...x.cal.positives], negatives: [...x.cal.negatives] } } : {});
    return modelInternals(this.model).enqueue(async (nm) => {
      const sc = await this.#scores(nm, Int32Array.from(ids), 1, ids.length, new Int32Array(1));
      const d = this.#decide((s) => sc[s]![0]!, basis);
      const scores: RouteScore[] = [
        { memory: -1, kind: 'working', score: sc[0]![0]!, threshold: thrOf(this.#working), edits: this.#working.edits.length, ...cal(this.#working) },
        ...this.#memories.map((m, i) => ({ memory: i, kind: m.kind, score: sc[i + 1]![0]!, threshold: thrOf(m), edits: m.edits.length, ...cal(m) })),
      ];
      const best = d.slot === -1 ? scores.reduce((a, b) => (b.score > a.score ? b : a), scores[0]!) : undefined;
      return {
        route: d.slot === -1 ? 'main' : d.slot - 1,
        score: d.slot === -1 ? best!.score : d.score,
        threshold: d.slot === -1 ? best!.threshold : d.threshold,
        scores,
        tokens: ids.length,
      };
    }, opts.signal);
  }

  /**
   * Diagnostics: the per-token routing distance of every slot (0 = working, i + 1 = memory i) on one token
   * row, and which tokens count as content for repair `routeContent`.
   */
  async routingTokens(ids: readonly number[]): Promise<{ slots: number[][]; content: boolean[] }> {
    this.#check();
    const raw = await modelInternals(this.model).enqueue((nm) => nm.sideScore(this.#side, Int32Array.from(ids), 1, ids.length, new Int32Array(1), actCode(this.model, this.config.scoreMode)));
    const T = ids.length;
    return { slots: Array.from({ length: raw.length / T }, (_, s) => Array.from(raw.subarray(s * T, (s + 1) * T))), content: ids.map((id) => this.#isContent(id)) };
  }

  /** Routed generation: the route is decided once on the prompt and kept for every new token. */
  generate(prompt: Prompt, opts: GenerateOptions = {}): Promise<GenerateResult> {
    try {
      this.#check();
    } catch (e) {
      return Promise.reject(e);
    }
    return modelInternals(this.model).generateRouted(prompt, opts, async (nm, ids) => {
      const sc = await this.#scores(nm, Int32Array.from(ids), 1, ids.length, new Int32Array(1));
      const d = this.#decide((s) => sc[s]![0]!, 'prompt');
      return { side: this.#side, slot: d.slot };
    });
  }

  /** Routed logits: each row is routed on its own tokens (as the reference evaluates teacher-forced inputs). */
  logits(batch: readonly (readonly number[])[], opts: LogitsOptions = {}): Promise<LogitsResult> {
    try {
      this.#check();
    } catch (e) {
      return Promise.reject(e);
    }
    return modelInternals(this.model).logitsRouted(batch, opts, async (nm, b) => {
      const sc = await this.#scores(nm, b.tokens, b.B, b.T, b.pad);
      const slots = new Int32Array(b.B);
      for (let i = 0; i < b.B; i++) slots[i] = this.#decide((s) => sc[s]![i]!, 'full').slot;
      return { side: this.#side, slots };
    });
  }

  // ---- rollback ----
  /**
   * Undo one edit. Every memory that holds it is retrained without it (same masks, same order) and, for a
   * merged memory, re-merged: the cost is one edit's training per remaining edit in those memories
   * (at most saveFreq for a shard, mergeFreq for a merged memory), plus one merge.
   */
  async rollback(editId: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    this.#check();
    await this.#exclusive(opts.signal, () => this.#disposeGuard(() => this.#rollback(editId, opts)));
  }

  /**
   * Transactional: every affected memory is retrained into a temporary slot (appended after the real
   * ones); only when all of them succeeded are the temporaries copied over their slots, in one queue slot
   * with no abort point, and the bookkeeping updated. An abort, a NaN or a divergence during the replay
   * removes the temporaries and leaves the editor exactly as it was.
   */
  async #rollback(editId: string, opts: { signal?: AbortSignal }): Promise<void> {
    const loop = this.#loop;
    const queued = loop.queue.some((p) => p.id === editId) || loop.residual.some((p) => p.id === editId);
    if (!this.#edits.has(editId) && !queued) throw new RepairError('ERR_UNKNOWN_EDIT', `no edit with id ${editId}`, { id: editId });
    const mi = modelInternals(this.model);
    const signal = opts.signal;
    const rescored = new Map<string, { score: number; promptScore: number; loss: number }>();
    const replay = async (nm: NativeModel, slot: number, part: ShardPart): Promise<{ minAct: number; minPrompt: number }> => {
      let minAct = NO_ACT;
      let minPrompt = NO_ACT;
      for (const e of part.edits) {
        if (signal?.aborted) throw abortedError('rollback');
        const st = this.#edits.get(e)!;
        const r = await nm.sideEdit(this.#side, slot, this.#buildRows([{ request: st.request, irrelevant: st.irrelevant }]), this.#hyper(part.seed));
        rescored.set(e, { score: r.thresholdStat, promptScore: r.promptStat, loss: r.sampleCe[0] ?? st.loss });
        minAct = Math.min(minAct, r.thresholdStat);
        minPrompt = Math.min(minPrompt, r.promptStat);
      }
      return { minAct, minPrompt };
    };
    // the plan: what each affected memory becomes (applied to the bookkeeping only after the commit)
    let newWorking: WorkingState | undefined;
    const newMemories = new Map<number, MemoryState | null>(); // memory index -> replacement (null = removed)
    const lossAware = this.config.method === 'repair' && this.config.repair!.lossAwareMerge;
    await mi.enqueue(async (nm) => {
      const temps: number[] = [];
      const swaps: [number, number][] = []; // [temporary slot, real slot]
      let committed = false;
      try {
        if (this.#working.edits.includes(editId)) {
          const part = { seed: this.#working.seed, edits: this.#working.edits.filter((e) => e !== editId) };
          const t = await nm.sideAdd(this.#side, -1);
          temps.push(t);
          const st = await replay(nm, t, part);
          swaps.push([t, 0]);
          newWorking = { ...this.#working, edits: part.edits, ...st };
        }
        for (let mIdx = this.#memories.length - 1; mIdx >= 0; mIdx--) {
          const m = this.#memories[mIdx]!;
          if (!m.edits.includes(editId)) continue;
          const slot = mIdx + 1;
          const parts = m.parts.map((p) => ({ seed: p.seed, edits: p.edits.filter((e) => e !== editId) }));
          const keep = parts.map((p, i) => ({ p, w: m.weights[i] ?? 1 })).filter((x) => x.p.edits.length > 0);
          if (keep.length === 0) {
            newMemories.set(mIdx, null);
          } else if (m.kind === 'shard') {
            const t = await nm.sideAdd(this.#side, -1);
            temps.push(t);
            const st = await replay(nm, t, keep[0]!.p);
            swaps.push([t, slot]);
            newMemories.set(mIdx, { ...m, ...st, edits: keep[0]!.p.edits, parts: [keep[0]!.p] });
          } else {
            const mn = { minAct: NO_ACT, minPrompt: NO_ACT };
            const partSlots: number[] = [];
            for (const { p } of keep) {
              const t = await nm.sideAdd(this.#side, -1);
              temps.push(t);
              partSlots.push(t);
              const r = await replay(nm, t, p);
              mn.minAct = Math.min(mn.minAct, r.minAct);
              mn.minPrompt = Math.min(mn.minPrompt, r.minPrompt);
            }
            const lossOf = (x: { p: ShardPart }): number => {
              const ls = x.p.edits.map((e) => rescored.get(e)?.loss ?? this.#edits.get(e)?.loss).filter((v): v is number => v !== undefined);
              return ls.length ? ls.reduce((a, b) => a + b, 0) / ls.length : 0;
            };
            const w = lossAware ? lossAwareWeights(keep.map(lossOf), this.config.repair!.mergeAlpha) : keep.map((x) => x.w);
            const dst = await nm.sideAdd(this.#side, -1);
            temps.push(dst);
            if (lossAware) await nm.sideMergeLossAware(this.#side, dst, Int32Array.from(partSlots), Float32Array.from(w));
            else await nm.sideTies(this.#side, dst, Int32Array.from(partSlots), Float32Array.from(w), this.config.mergeDensity);
            swaps.push([dst, slot]);
            newMemories.set(mIdx, { ...m, ...mn, edits: keep.flatMap((x) => x.p.edits), parts: keep.map((x) => x.p), weights: keep.map((x) => x.w) });
          }
        }
        if (signal?.aborted) throw abortedError('rollback');
        // commit: no abort point from here on (sideRead/sideWrite/sideRemove never check the abort flag)
        for (const [t, slot] of swaps) await nm.sideWrite(this.#side, slot, await nm.sideRead(this.#side, t));
        committed = true;
        const removed = [...newMemories].filter(([, v]) => v === null).map(([i]) => i + 1);
        await nm.sideRemove(this.#side, Int32Array.from([...temps, ...removed]));
      } finally {
        if (!committed && temps.length) await nm.sideRemove(this.#side, Int32Array.from(temps));
      }
    }, signal);
    // the side memories are committed: now the bookkeeping
    for (const [e, r] of rescored) {
      const st = this.#edits.get(e);
      if (st) Object.assign(st, r);
    }
    if (newWorking) this.#working = newWorking;
    for (let mIdx = this.#memories.length - 1; mIdx >= 0; mIdx--) {
      if (!newMemories.has(mIdx)) continue;
      const nm = newMemories.get(mIdx);
      if (nm === null) this.#memories.splice(mIdx, 1);
      else this.#memories[mIdx] = nm!;
    }
    this.#edits.delete(editId);
    // repair `recalibrate`: every memory that held the edit has new weights
    if (this.#working.edits.length) this.#dirty.add(this.#working.uid);
    for (const m of this.#memories) if (m.thr !== undefined) this.#dirty.add(m.uid);
    loop.queue = loop.queue.filter((p) => p.id !== editId);
    loop.residual = loop.residual.filter((p) => p.id !== editId);
    loop.feedback = loop.feedback.filter((e) => e !== editId);
    delete loop.status[editId];
    this.#globalMinAct = Math.min(NO_ACT, ...[...this.#edits.values()].map((e) => e.score));
    this.#globalMinPrompt = Math.min(NO_ACT, ...[...this.#edits.values()].map((e) => e.promptScore));
    await this.#recalibrate();
  }

  // ---- save / load ----
  #metadata(): Metadata {
    const c = this.model.config;
    return {
      format: MEMORY_FORMAT,
      version: MEMORY_FORMAT_VERSION,
      config: { ...this.config },
      base: { modelType: c.modelType, layer: this.config.layer, hiddenSize: c.hiddenSize, intermediateSize: c.intermediateSize, fingerprint: this.#fingerprint, modelDir: this.model.dir },
      templates: this.#templates,
      irrelevantPool: this.#irrelevantPool,
      editCount: this.#editCount,
      shardCount: this.#shardCount,
      loop: this.#loop,
      globalMinAct: this.#globalMinAct,
      globalMinPrompt: this.#globalMinPrompt,
      working: this.#working,
      memories: this.#memories,
      edits: Object.fromEntries(this.#edits),
      nextId: this.#nextId,
      irrCursor: this.#irrCursor,
    };
  }

  /**
   * Save the side memories (never the base weights) as safetensors + JSON metadata. Atomic: written to a
   * temporary file, fsynced, then renamed over `path`; a crash mid-save leaves the old file intact.
   */
  async save(path: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    this.#check();
    await this.#exclusive(opts.signal, async () => {
      const slots = 1 + this.#memories.length;
      const data = await modelInternals(this.model).enqueue(async (nm) => {
        const out: Float32Array[] = [];
        for (let s = 0; s < slots; s++) out.push(await nm.sideRead(this.#side, s));
        return out;
      }, opts.signal);
      if (this.disposed) throw disposedError('the editor');
      const { hiddenSize: D, intermediateSize: F } = this.model.config;
      const meta = this.#metadata();
      writeMemoryFile(path, JSON.stringify({ ...meta, format: MEMORY_FORMAT, version: MEMORY_FORMAT_VERSION }), data, [D, F], (this as unknown as Record<symbol, unknown>)[FAIL_SAVE_AFTER] as number | undefined);
    });
  }

  /**
   * Load a memory file saved by save() onto the same base model. The file's checksum and the structure of
   * its metadata are verified first (ERR_MEMORY_FILE naming what failed); `allowUnverified` loads a
   * version-1 file, which has no checksum.
   */
  static async load(model: Model, path: string, opts: { signal?: AbortSignal; allowUnverified?: boolean } = {}): Promise<Editor> {
    if (model.disposed) throw disposedError();
    const read = readMemoryFile(path, { allowUnverified: opts.allowUnverified === true });
    const tensors = read.tensors;
    const c = model.config;
    validateMemoryMeta(path, read.meta, tensors.length, read.shape);
    const meta = read.meta as Metadata;
    if (meta.base.modelType !== c.modelType || meta.base.hiddenSize !== c.hiddenSize || meta.base.intermediateSize !== c.intermediateSize || meta.base.layer >= c.numLayers) {
      throw new RepairError('ERR_MEMORY_MISMATCH', `${path} was saved for a different model (${meta.base.modelType} ${meta.base.hiddenSize}x${meta.base.intermediateSize}, layer ${meta.base.layer})`, { file: path });
    }
    const ed = new Editor(model, { ...meta.config, editMatrix: meta.config.editMatrix ?? 'value' }); // older files: value
    try {
      validateConfig(ed.config as EditorConfig, c);
      if (ed.config.method === 'repair') resolveRepairOptions(ed.config.repair, ed.config.mergeFreq);
    } catch (e) {
      const err = toRepairError(e);
      throw new RepairError('ERR_MEMORY_FILE', `${path}: metadata field config is invalid (${err.message})`, { file: path, failed: 'metadata', field: `config.${String(err.details?.field ?? '')}` }, { cause: e });
    }
    await ed.#attach();
    try {
      if (ed.#fingerprint !== meta.base.fingerprint) {
        throw new RepairError('ERR_MEMORY_MISMATCH', `${path} was trained against a different base weight (fingerprint ${meta.base.fingerprint}, this model has ${ed.#fingerprint} at layer ${meta.base.layer})`, { file: path });
      }
      const n = 1 + meta.memories.length;
      if (tensors.length !== n) throw new RepairError('ERR_MEMORY_FILE', `${path}: ${tensors.length} memory tensors for ${n} memories`, { file: path });
      await modelInternals(model).enqueue(async (nm) => {
        for (let s = 0; s < n; s++) {
          if (s > 0) await nm.sideAdd(ed.#side, -1);
          await nm.sideWrite(ed.#side, s, tensors[s]!);
        }
      }, opts.signal);
    } catch (e) {
      await ed.dispose();
      throw toRepairError(e);
    }
    ed.#templates = meta.templates;
    ed.#irrelevantPool = meta.irrelevantPool;
    ed.#editCount = meta.editCount;
    ed.#shardCount = meta.shardCount;
    ed.#loop = meta.loop;
    ed.#globalMinAct = meta.globalMinAct;
    ed.#globalMinPrompt = meta.globalMinPrompt;
    ed.#working = meta.working;
    ed.#memories = meta.memories;
    ed.#edits = new Map(Object.entries(meta.edits));
    ed.#nextId = meta.nextId;
    ed.#irrCursor = meta.irrCursor ?? 0;
    return ed;
  }

  /** Free the side memories (idempotent). The model stays usable. */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#unhook();
    if (this.model.disposed) return;
    try {
      await modelInternals(this.model).enqueue(async (nm) => nm.sideFree(this.#side));
    } catch {
      /* the model went away meanwhile: it freed the store */
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

// ---- memory files ----------------------------------------------------------------------------------
/**
 * Test hook: a function (ids, hyper) => hyper applied to every native training call, so a test can make
 * chosen edits fail (e.g. an impossible learning rate) and watch the closed loop repair them.
 */
export const TRAIN_HOOK = Symbol.for('repair-edit.trainHook');
/** Test hook: fail a save after this many bytes (simulates a crash mid-write). */
export const FAIL_SAVE_AFTER = Symbol.for('repair-edit.failSaveAfter');
