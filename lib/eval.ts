// eval.ts — the metrics and protocols of ALGORITHM.md §3, exactly as the reference evaluation code
// computes them, plus the free-generation exact match (issue 6), reported beside them and labelled.
// The metrics (lib/eval/metrics.ts), the routing scores (lib/eval/routing.ts) and the protocols
// (lib/eval/protocols.ts) live beside this file; it holds the options, the report format and the driver.
//
// Protocols: 'sequential' (N edits via editMany, then all N evaluated on the final model) and 'single'
// (edit one, evaluate it, restore with a fresh editor or rollback). Each N gets a fresh editor on the same
// loaded model. Teacher-forced metrics run batched: many rows per logits call.
// Routing scores [beyond the reference; option `routing`, off by default, on in the CLI]: lib/eval/routing.ts;
// per case in run.routing.cases, routed fractions in run.routing.summary.
// Abort: ERR_ABORTED; with option `keepPartial` (the CLI's) the run in progress is first handed to onRun
// with what it has (run.partial: the edits made, the cases evaluated; lib/eval/protocols.ts).

import { Editor, type EditMethod, type EditorConfig, type EditorOptions, type RepairEvent } from './editor.js';
import { abortedError, RepairError } from './errors.js';
import { packageVersion } from './info.js';
import type { Model } from './model.js';
import { irrelevantText, type EditRecord } from './datasets.js';
import { METRIC_NAMES, OOD_THRESHOLD, measure, type MetricName, type Protocol, type RestoreMode, type Measurement } from './eval/metrics.js';
import { ROUTING_BASES, type RoutingBasis, type RoutingReport } from './eval/routing.js';
import { runSequential, runSingle } from './eval/protocols.js';

export { METRIC_NAMES, OOD_THRESHOLD, promptText, answerRow, textRow, rowLabels, argmax, nllOf, planBatches, scoreRows, tokenAccuracy, agreement, perplexity, oodScore, oodIndicator, overallScore, averageScore, exactMatch, meanOf, measure, exactMatchOf } from './eval/metrics.js';
export type { MetricName, Protocol, RestoreMode, LogitsSource, GenerateSource, ScoredRow, RowScores, ScoreOptions, Measurement, MeasureOptions } from './eval/metrics.js';
export { ROUTING_BASES, routingInputs, summarizeRouting, routingScores } from './eval/routing.js';
export type { RoutingBasis, RoutePoint, RoutingCase, RoutedCount, RoutingSummary, RoutingReport, RoutingSource, MemorySummary } from './eval/routing.js';
export { summarize } from './eval/protocols.js';

/** One evaluated case (record) of a run: every per-case value. */
export interface CaseResult {
  id: string;
  index: number;
  /** Teacher-forced token accuracy on the prompt (Rel) and the rephrase (Gen); null where not measured. */
  rel: number | null;
  gen: number | null;
  /** Mean over the record's locality pairs of the post-vs-pre argmax agreement. */
  loc: number | null;
  /** Per locality pair. */
  locPairs: (number | null)[];
  ppl: number | null;
  ood: number | null;
  oodIndicator: number | null;
  /** Exact match of the greedy generation (beyond the reference). */
  emRel: boolean | null;
  emGen: boolean | null;
  /** The greedy continuations behind emRel / emGen. */
  genRel: string | null;
  genGen: string | null;
  /** The same teacher-forced values on the unedited model. */
  pre: { rel: number | null; gen: number | null; ppl: number | null; ood: number | null };
}

export interface EvalSummary {
  /** Means over the cases with a value. */
  rel: number | null;
  gen: number | null;
  loc: number | null;
  /** REPAIR's OP (geometric mean of Rel, Gen, Loc) and WISE's Avg (arithmetic). */
  op: number | null;
  avg: number | null;
  ppl: number | null;
  ood: number | null;
  oodIndicator: number | null;
  emRel: number | null;
  emGen: number | null;
  /** What Rel and Gen measure: Gen is the OOD score for sets without rephrases but with OOD texts (temporal). */
  metricOf: { rel: 'tf-token-accuracy' | null; gen: 'tf-token-accuracy' | 'ood' | null };
  /** Cases that have each value. */
  counts: { cases: number; rel: number; gen: number; loc: number; ppl: number; ood: number; em: number };
  /** Means on the unedited model (pre-edit). */
  pre: { rel: number | null; gen: number | null; ppl: number | null; ood: number | null };
}

export interface EvalTimings {
  /** Training (editMany) time. */
  editSeconds: number;
  /** Metric time (teacher-forced batches + generations). */
  evalSeconds: number;
  /** The generation part of evalSeconds. */
  generateSeconds: number;
  /** Editor creation (and, for 'single' with rollback, restoring). */
  setupSeconds: number;
  editsPerSecond: number | null;
  secondsPerEdit: number | null;
}

export interface EvalRun {
  label: string;
  method: EditMethod;
  n: number;
  protocol: Protocol;
  summary: EvalSummary;
  cases: CaseResult[];
  timings: EvalTimings;
  /** REPAIR loop events seen through onEvent, counted by type. */
  events: Record<string, number>;
  gaveUp: string[];
  retriggers: number;
  /** The editor after the run ('sequential'): its memories. */
  memories: { working: number; memories: number } | null;
  /** repair, 'sequential': the margin scale the editor trained with (measured, under marginScale 'auto'). */
  marginScale?: number;
  truncatedRows: number;
  /**
   * Routing scores of the edit, rephrase and locality prompts on the final edited model (the one Rel/Gen/Loc
   * are measured on): 'sequential' runs of side-memory methods when EvalOptions.routing is set; else null
   * (ft has no router; 'single' runs are not covered).
   */
  routing: RoutingReport | null;
  /**
   * Set on a run cut short by an abort under EvalOptions.keepPartial: `editsDone` of the `of` planned edits
   * were made (n = editsDone), `casesEvaluated` of them evaluated ('sequential': the edit phase stopped at
   * an edit boundary, or the evaluation phase was cut; 'single': the cases done). The summary is over the
   * cases present. Absent on a complete run.
   */
  partial?: { editsDone: number; of: number; casesEvaluated: number; phase: 'edit' | 'eval' };
}

export interface EvalReport {
  format: 'repair-edit.eval';
  version: 1;
  label: string;
  config: {
    method: EditMethod;
    label: string;
    editorOptions: EditorOptions;
    /** The editor configuration as resolved (preset + options). */
    editorConfig: EditorConfig;
    ns: number[];
    protocol: Protocol;
    restore: RestoreMode;
    metrics: MetricName[];
    batchSize: number;
    /** The routing basis recorded per run (EvalOptions.routing), null when off. */
    routing: RoutingBasis | null;
    dataset: string | null;
    records: number;
    recordIds: string[];
    oodThreshold: number;
    model: { dir: string; backend: string; modelType: string; numLayers: number; hiddenSize: number; vocabSize: number; contextLength: number };
    packageVersion: string;
    node: string;
    started: string;
  };
  runs: EvalRun[];
  totalSeconds: number;
}

export interface EvalProgress {
  label: string;
  phase: 'pre' | 'edit' | 'eval' | 'routing';
  n: number;
  done: number;
  total: number;
}

/** One editor configuration to evaluate (a row group of the results table). */
export interface EvalVariant {
  /** Row label (default: the method). */
  label?: string;
  method: EditMethod;
  editorOptions?: EditorOptions;
}

export interface EvalOptions {
  method?: EditMethod;
  editorOptions?: EditorOptions;
  /** Numbers of edits; each N uses the first N records and a fresh editor. */
  ns: readonly number[];
  protocol?: Protocol;
  /** Default: tf and exact, plus ood when records carry OOD texts. */
  metrics?: readonly MetricName[];
  /** Rows per logits call (default 16). */
  batchSize?: number;
  /** 'single' only: restore the model after each case with a fresh editor (default) or rollback. */
  restore?: RestoreMode;
  /**
   * Record the routing score of every edit, rephrase and locality prompt on the final model of each
   * 'sequential' run (side-memory methods only): true = 'teacher-forced' (the Rel/Gen/Loc rows, as they are
   * routed when measured), or a basis. One Editor.explain per prompt. Default false (off: evaluate() stays
   * as cheap as the metrics); the CLI turns it on.
   */
  routing?: boolean | RoutingBasis;
  label?: string;
  /** Dataset name recorded in the configuration. */
  dataset?: string;
  onProgress?: (p: EvalProgress) => void;
  onEvent?: (e: RepairEvent, p: { label: string; n: number }) => void;
  /** Called when the run of one variant at one N is complete. */
  onRun?: (run: EvalRun) => void;
  signal?: AbortSignal;
  /**
   * On abort, keep what the run in progress has (see lib/eval/protocols.ts): the partial run (run.partial
   * set) is handed to onRun, then ERR_ABORTED is thrown as without it. 'sequential' evaluates the edits
   * finished before the abort without the signal. Default false (an abort stops at once).
   */
  keepPartial?: boolean;
}

/** The default metrics for a set of records: tf + exact, plus ood when they carry OOD texts. */
export function defaultMetrics(records: readonly EditRecord[]): MetricName[] {
  const m: MetricName[] = ['tf', 'exact'];
  if (records.some((r) => r.oodRephrase !== undefined)) m.push('ood');
  return m;
}

/** EvalOptions checked and defaulted (ERR_INVALID_ARG naming the field). */
export interface ResolvedEvalOptions {
  ns: number[];
  metrics: MetricName[];
  protocol: Protocol;
  restore: RestoreMode;
  batchSize: number;
  routing: RoutingBasis | null;
}

function checkOptions(model: Model, records: readonly EditRecord[], opts: EvalOptions): ResolvedEvalOptions {
  const bad = (msg: string, field: string) => new RepairError('ERR_INVALID_ARG', `evaluate: ${msg}`, { field });
  if (model.disposed) throw new RepairError('ERR_DISPOSED', 'the model has been disposed');
  if (!Array.isArray(records) || records.length === 0) throw bad('records must be a non-empty array', 'records');
  if (!Array.isArray(opts.ns) || opts.ns.length === 0) throw bad('ns must be a non-empty list of edit counts', 'ns');
  for (const n of opts.ns) {
    if (!Number.isSafeInteger(n) || n < 1) throw bad(`every N must be a positive integer, got ${JSON.stringify(n)}`, 'ns');
    if (n > records.length) throw bad(`N = ${n} is more than the ${records.length} records given`, 'ns');
  }
  const protocol = opts.protocol ?? 'sequential';
  if (protocol !== 'sequential' && protocol !== 'single') throw bad(`protocol must be 'sequential' or 'single', got ${JSON.stringify(protocol)}`, 'protocol');
  const restore = opts.restore ?? 'fresh';
  if (restore !== 'fresh' && restore !== 'rollback') throw bad(`restore must be 'fresh' or 'rollback', got ${JSON.stringify(restore)}`, 'restore');
  const metrics = [...(opts.metrics ?? defaultMetrics(records))];
  for (const m of metrics) if (!METRIC_NAMES.includes(m)) throw bad(`unknown metric ${JSON.stringify(m)} (known: ${METRIC_NAMES.join(', ')})`, 'metrics');
  const batchSize = opts.batchSize ?? 16;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) throw bad(`batchSize must be a positive integer, got ${batchSize}`, 'batchSize');
  const r = opts.routing ?? false;
  if (typeof r !== 'boolean' && !ROUTING_BASES.includes(r)) throw bad(`routing must be a boolean or one of ${ROUTING_BASES.join(', ')}, got ${JSON.stringify(r)}`, 'routing');
  const routing: RoutingBasis | null = r === true ? 'teacher-forced' : r === false ? null : r;
  const ids = new Set<string>();
  records.forEach((r, i) => {
    if (typeof r?.id !== 'string' || r.id === '') throw bad(`record ${i} has no id`, 'records');
    if (ids.has(r.id)) throw bad(`duplicate record id ${r.id}`, 'records');
    ids.add(r.id);
  });
  return { ns: [...opts.ns], metrics, protocol, restore, batchSize, routing };
}

/** Pre-edit measurements, shared by every variant and N (computed once per chat-template setting). */
type PreCache = Map<boolean, Measurement>;

/**
 * Evaluate one editor configuration at every N. See the file header for the metrics; the report is
 * JSON-serialisable and holds the full configuration, every per-case value, timings and event counts.
 */
export async function evaluate(model: Model, records: readonly EditRecord[], opts: EvalOptions): Promise<EvalReport> {
  const [r] = await evaluateVariants(model, records, [{ label: opts.label, method: opts.method ?? 'wise', editorOptions: opts.editorOptions }], opts);
  return r!;
}

/**
 * Evaluate several editor configurations (methods, ablations) on the same loaded model; the pre-edit
 * predictions are computed once, before any edit, and shared.
 */
export async function evaluateVariants(model: Model, records: readonly EditRecord[], variants: readonly EvalVariant[], opts: Omit<EvalOptions, 'method' | 'editorOptions' | 'label'>): Promise<EvalReport[]> {
  const o = checkOptions(model, records, opts);
  if (!Array.isArray(variants) || variants.length === 0) throw new RepairError('ERR_INVALID_ARG', 'evaluate: no variants', { field: 'variants' });
  const pre: PreCache = new Map();
  const out: EvalReport[] = [];
  for (const v of variants) out.push(await evaluateOne(model, records, v, o, opts, pre));
  return out;
}

function precheck(editor: Editor, records: readonly EditRecord[]): void {
  for (const r of records) {
    try {
      editor.buildBatch(r, r.irrelevant ?? 'x');
    } catch (e) {
      if (e instanceof RepairError) throw new RepairError(e.code, `record ${r.id} (index ${r.index}): ${e.message}`, { ...e.details, id: r.id, index: r.index });
      throw e;
    }
  }
}

async function evaluateOne(
  model: Model,
  records: readonly EditRecord[],
  variant: EvalVariant,
  o: ResolvedEvalOptions,
  opts: Omit<EvalOptions, 'method' | 'editorOptions' | 'label'>,
  preCache: PreCache,
): Promise<EvalReport> {
  const t0 = performance.now();
  const started = new Date().toISOString();
  const label = variant.label ?? variant.method;
  const editorOptions: EditorOptions = { ...(variant.editorOptions ?? {}), method: variant.method };
  const signal = opts.signal;
  const maxN = Math.max(...o.ns);
  const used = records.slice(0, maxN);

  // Resolve the configuration (and fail fast on records the editor cannot train) before any edit.
  const probe = await Editor.create(model, editorOptions);
  const editorConfig = { ...probe.config } as EditorConfig;
  try {
    precheck(probe, used);
  } finally {
    await probe.dispose();
  }
  const chat = editorConfig.useChatTemplate;
  const mopts = { useChatTemplate: chat, metrics: o.metrics, batchSize: o.batchSize, signal };

  // Pre-edit predictions on the unedited model, before any edit.
  let pre = preCache.get(chat);
  if (!pre) {
    pre = await measure(model, model, used, { ...mopts, onProgress: (d, t) => opts.onProgress?.({ label, phase: 'pre', n: maxN, done: d, total: t }) });
    preCache.set(chat, pre);
  }

  const runs: EvalRun[] = [];
  for (const n of o.ns) {
    const args = { model, records: used.slice(0, n), label, method: variant.method, editorOptions, pre, mopts, o, opts };
    const run = o.protocol === 'sequential' ? await runSequential(args) : await runSingle(args);
    runs.push(run);
    opts.onRun?.(run);
    if (run.partial) throw abortedError('the evaluation');
  }
  const c = model.config;
  return {
    format: 'repair-edit.eval',
    version: 1,
    label,
    config: {
      method: variant.method,
      label,
      editorOptions,
      editorConfig,
      ns: o.ns,
      protocol: o.protocol,
      restore: o.restore,
      metrics: o.metrics,
      batchSize: o.batchSize,
      routing: o.routing,
      dataset: opts.dataset ?? null,
      records: used.length,
      recordIds: used.map((r) => r.id),
      oodThreshold: OOD_THRESHOLD,
      model: { dir: model.dir, backend: model.backend, modelType: c.modelType, numLayers: c.numLayers, hiddenSize: c.hiddenSize, vocabSize: c.vocabSize, contextLength: model.contextLength },
      packageVersion: packageVersion(),
      node: process.version,
      started,
    },
    runs,
    totalSeconds: (performance.now() - t0) / 1000,
  };
}

export interface TooLongRecord {
  index: number;
  /** Tokens of its longest training row. */
  length: number;
  contextLength: number;
}

/**
 * The records whose training rows fit the model's context: every edit row (each context template of an
 * editor with these options, §1.3, with the chat template when it applies) and the record's own locality
 * pair as the irrelevant row it becomes for another edit. Returns the indices that do not fit; evaluation
 * rows (rephrase, locality, OOD) need no check: scoring truncates them to the context (ScoredRow.truncated).
 */
export async function recordsTooLong(model: Model, records: readonly EditRecord[], editorOptions: EditorOptions = {}): Promise<TooLongRecord[]> {
  // the rows are the same for every method; a `repair` section (eval --config with --method repair) is
  // not an option of the wise editor that measures them
  const { repair: _repair, ...rows } = editorOptions;
  const ed = await Editor.create(model, { ...rows, method: 'wise' });
  try {
    const out: TooLongRecord[] = [];
    records.forEach((r, index) => {
      try {
        ed.buildBatch(r, irrelevantText(r) ?? r.prompt);
      } catch (e) {
        if (!(e instanceof RepairError) || e.code !== 'ERR_CONTEXT_LENGTH') throw e;
        out.push({ index, length: Number(e.details?.length), contextLength: model.config.maxPositions });
      }
    });
    return out;
  } finally {
    await ed.dispose();
  }
}
