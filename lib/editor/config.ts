// editor/config.ts — an editor's configuration: every option of the WISE engine with its meaning, the
// per-architecture presets of ALGORITHM.md §1.10, how options resolve over a preset (resolveConfig) and
// their validation (ERR_INVALID_ARG naming the field). REPAIR's own options live in lib/repair.ts.
import { basename } from 'node:path';
import { RepairError } from '../errors.js';
import type { ModelConfig } from '../config.js';
import type { Model } from '../model.js';
import { resolveRepairOptions, type RepairOptions } from '../repair.js';

export type EditMethod = 'wise' | 'ft' | 'repair';
export type ScoreMode = 'code' | 'paper';

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

export function resolveConfig(model: Model, opts: EditorOptions): EditorConfig {
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

export function validateConfig(c: EditorConfig, cfg: ModelConfig): void {
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
export function actCode(model: Model, mode: ScoreMode): 0 | 1 | 2 {
  if (mode === 'paper') return 0;
  const act = model.config.arch === 'gpt2' ? model.config.hiddenAct : String(model.config.raw.hidden_act ?? model.config.raw.hidden_activation ?? 'silu');
  if (act === 'silu' || act === 'swish') return 1;
  if (act.startsWith('gelu')) return 2;
  return 1;
}
