// eval.ts — the metrics and protocols of ALGORITHM.md §3, exactly as the reference evaluation code
// computes them, plus the free-generation exact match (issue 6), reported beside them and labelled.
//
// Metrics (per case, then averaged over the cases that have a value):
//   - Rel / Gen: teacher-forced token accuracy. Row = prompt (chat template when the editor uses it) +
//     " " + target, tokenised with special tokens; the scored span starts at the length of the prompt
//     tokenised alone; prediction = argmax of the logits at the previous position. Rel uses the prompt,
//     Gen the rephrase. A fraction in [0, 1], not all-or-nothing.
//   - Loc: for each locality pair, the argmax tokens on the answer positions of "loc + ' ' + loc_ans"
//     (teacher-forced with the ground-truth answer, never the chat template) after the edits, compared
//     with the same predictions of the unedited model, all computed before any edit. Per case: the mean
//     over its pairs of the fraction of positions that agree.
//   - PPL (hallucination): exp(mean NLL of the target tokens given the prompt, target after a space; no
//     chat template).
//   - OOD (temporal): the fraction of the tokens of the ood_rephrase text (all but the first, each given the
//     text before it) whose probability exceeds 0.8, i.e. NLL < −ln 0.8. This is the reference's `ood_acc`,
//     which overwrites the rewrite score: it is reported as Gen for the temporal set. `oodIndicator` is the
//     WISE paper's Eq. 10 reading (1 when the mean NLL of the text is below −ln 0.8).
//   - OP = (Rel·Gen·Loc)^(1/3) (REPAIR, geometric), Avg = (Rel + Gen + Loc)/3 (WISE), from the means.
//   - Exact match [beyond the reference]: greedy generation through the editor (routed on the prompt),
//     max new tokens = the answer's token count in the teacher-forced row; a match when the generated
//     continuation, trimmed, starts with the target, trimmed. Reported as emRel / emGen.
// Protocols: 'sequential' (N edits via editMany, then all N evaluated on the final model) and 'single'
// (edit one, evaluate it, restore with a fresh editor or rollback). Each N gets a fresh editor on the same
// loaded model. Teacher-forced metrics run batched: many rows per logits call.
// Routing scores [beyond the reference; option `routing`, off by default, on in the CLI]: on the final
// model of each 'sequential' run of a side-memory method (wise, repair; ft has no router), one
// Editor.explain per edit, rephrase and locality (unrelated) prompt gives the top memory's score, the
// threshold it is compared with and whether the input reached a side memory (§1.9). The default basis,
// 'teacher-forced', routes the very rows Rel/Gen/Loc score, as logits() routes them (full-row
// thresholds); 'prompt-only' routes the bare prompts as generate() does (what exact match sees). Per case
// in run.routing.cases, routed fractions in run.routing.summary.

import { Editor, type EditMethod, type EditorConfig, type EditorOptions, type Explanation, type RepairEvent } from './editor.js';
import { RepairError } from './errors.js';
import { packageVersion } from './info.js';
import type { GenerateOptions, GenerateResult, LogitsOptions, LogitsResult, Model, Prompt } from './model.js';
import type { ModelTokenizer } from './tokenizer.js';
import { irrelevantText, type EditRecord } from './datasets.js';

export type MetricName = 'tf' | 'exact' | 'ppl' | 'ood';
export const METRIC_NAMES: readonly MetricName[] = ['tf', 'exact', 'ppl', 'ood'];
export type Protocol = 'sequential' | 'single';
export type RestoreMode = 'fresh' | 'rollback';

/** Probability threshold of the temporal OOD score (the reference's OOD_PPL threshold). */
export const OOD_THRESHOLD = 0.8;

/** Anything with routed or plain logits: a Model or an Editor. */
export interface LogitsSource {
  logits(batch: readonly (readonly number[])[], opts?: LogitsOptions): Promise<LogitsResult>;
}
/** Anything that generates: a Model or an Editor. */
export interface GenerateSource {
  generate(prompt: Prompt, opts?: GenerateOptions): Promise<GenerateResult>;
}

// ---- rows --------------------------------------------------------------------------------------------

/**
 * A teacher-forced row: its token ids and the span [start, end) of scored tokens; token j is predicted
 * from the logits at position j − 1. `truncated`: the row was cut to the context length (the end dropped,
 * as the reference tokenizer's truncation does).
 */
export interface ScoredRow {
  ids: number[];
  start: number;
  end: number;
  truncated: boolean;
  /** Scored tokens before truncation (the answer's token count for answer rows). */
  fullLength: number;
}

/** The prompt as Rel/Gen rows see it: the chat template's user turn + generation prompt when enabled. */
export function promptText(tok: ModelTokenizer, prompt: string, useChatTemplate: boolean): string {
  return useChatTemplate ? tok.applyChatTemplate([{ role: 'user', content: prompt }], { addGenerationPrompt: true }) : prompt;
}

function cut(ids: number[], start0: number, contextLength: number): ScoredRow {
  const end = ids.length;
  const start = Math.max(1, start0); // token 0 has no previous position to be predicted from
  const fullLength = Math.max(0, end - start);
  if (ids.length <= contextLength) return { ids, start: Math.min(start, end), end, truncated: false, fullLength };
  const c = ids.slice(0, contextLength);
  return { ids: c, start: Math.min(start, c.length), end: c.length, truncated: true, fullLength };
}

/** `prompt + " " + answer` tokenised with special tokens; scored from the prompt's own token count (§3 step 3). */
export function answerRow(tok: ModelTokenizer, prompt: string, answer: string, contextLength = Infinity): ScoredRow {
  const ids = tok.encode(`${prompt} ${answer}`);
  const p = tok.encode(prompt).length;
  return cut(ids, p, contextLength);
}

/** A text scored on all its tokens but the first (OOD score): start = 1. */
export function textRow(tok: ModelTokenizer, text: string, contextLength = Infinity): ScoredRow {
  return cut(tok.encode(text), 1, contextLength);
}

/** The labels of a row (its scored tokens). */
export function rowLabels(row: ScoredRow): number[] {
  return row.ids.slice(row.start, row.end);
}

/** Per scored token of a row: the argmax prediction and the NLL of the actual token. */
export interface RowScores {
  argmax: number[];
  nll: number[];
}

/** argmax with ties to the lowest id. */
export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  return best;
}

/** −log softmax(v)[label], computed stably. */
export function nllOf(v: ArrayLike<number>, label: number): number {
  let m = -Infinity;
  for (let i = 0; i < v.length; i++) if (v[i]! > m) m = v[i]!;
  let s = 0;
  for (let i = 0; i < v.length; i++) s += Math.exp(v[i]! - m);
  return m + Math.log(s) - v[label]!;
}

export interface ScoreOptions {
  /** Rows per logits call (default 16). */
  batchSize?: number;
  /** Cap on the logits floats of one call (rows × scored positions × vocab; default 2^26 = 256 MB). */
  maxLogitFloats?: number;
  signal?: AbortSignal;
  /** Called after each logits call with the rows done so far. */
  onBatch?: (done: number, total: number) => void;
}

/** The logits calls scoreRows will make: lists of row indices (longest rows first; empty rows need none). */
export function planBatches(rows: readonly ScoredRow[], vocab: number, opts: ScoreOptions = {}): number[][] {
  const batchSize = opts.batchSize ?? 16;
  const maxFloats = opts.maxLogitFloats ?? 2 ** 26;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) throw new RepairError('ERR_INVALID_ARG', `batchSize must be a positive integer, got ${batchSize}`, { field: 'batchSize' });
  const order = rows
    .map((r, i) => ({ i, len: r.ids.length, n: r.end - r.start }))
    .filter((x) => x.n > 0)
    .sort((a, b) => b.len - a.len || a.i - b.i);
  const out: number[][] = [];
  let cur: number[] = [];
  let floats = 0;
  for (const x of order) {
    const f = x.n * vocab;
    if (cur.length > 0 && (cur.length >= batchSize || floats + f > maxFloats)) {
      out.push(cur);
      cur = [];
      floats = 0;
    }
    cur.push(x.i);
    floats += f;
  }
  if (cur.length) out.push(cur);
  return out;
}

/**
 * Score rows teacher-forced, many per logits call (similar lengths together). Only the positions that
 * predict scored tokens are asked for. Rows with nothing to score get empty arrays.
 */
export async function scoreRows(src: LogitsSource, rows: readonly ScoredRow[], vocab: number, opts: ScoreOptions = {}): Promise<RowScores[]> {
  const out: RowScores[] = rows.map(() => ({ argmax: [], nll: [] }));
  const plan = planBatches(rows, vocab, opts);
  let done = 0;
  for (const batch of plan) {
    if (opts.signal?.aborted) throw new RepairError('ERR_ABORTED', 'evaluation was aborted');
    const seqs = batch.map((i) => rows[i]!.ids);
    const positions = batch.map((i) => {
      const r = rows[i]!;
      return Array.from({ length: r.end - r.start }, (_, k) => r.start - 1 + k);
    });
    const res = await src.logits(seqs, { positions, signal: opts.signal });
    let k = 0;
    batch.forEach((i) => {
      const r = rows[i]!;
      const o = out[i]!;
      for (let j = r.start; j < r.end; j++) {
        const lg = res.row(k++);
        o.argmax.push(argmax(lg));
        o.nll.push(nllOf(lg, r.ids[j]!));
      }
    });
    done += batch.length;
    opts.onBatch?.(done, plan.reduce((a, b) => a + b.length, 0));
  }
  return out;
}

// ---- metric arithmetic ------------------------------------------------------------------------------

/** Mean of (pred == label) over positions: the per-case Rel/Gen value. NaN when there is nothing to score. */
export function tokenAccuracy(pred: ArrayLike<number>, labels: ArrayLike<number>): number {
  if (pred.length !== labels.length) throw new RepairError('ERR_INVALID_ARG', `tokenAccuracy: ${pred.length} predictions for ${labels.length} labels`);
  if (pred.length === 0) return Number.NaN;
  let ok = 0;
  for (let i = 0; i < pred.length; i++) if (pred[i] === labels[i]) ok++;
  return ok / pred.length;
}

/** Loc of one pair: the fraction of answer positions where the post-edit argmax equals the pre-edit one. */
export function agreement(post: ArrayLike<number>, pre: ArrayLike<number>): number {
  return tokenAccuracy(post, pre);
}

/** exp(mean NLL). NaN when empty. */
export function perplexity(nll: ArrayLike<number>): number {
  if (nll.length === 0) return Number.NaN;
  let s = 0;
  for (let i = 0; i < nll.length; i++) s += nll[i]!;
  return Math.exp(s / nll.length);
}

/** Temporal OOD score: the fraction of tokens with NLL < −ln(threshold) (probability above it). */
export function oodScore(nll: ArrayLike<number>, threshold = OOD_THRESHOLD): number {
  if (nll.length === 0) return Number.NaN;
  const t = -Math.log(threshold);
  let n = 0;
  for (let i = 0; i < nll.length; i++) if (nll[i]! < t) n++;
  return n / nll.length;
}

/** WISE-paper Eq. 10: 1 when the mean NLL of the text is below −ln(threshold), else 0. */
export function oodIndicator(nll: ArrayLike<number>, threshold = OOD_THRESHOLD): number {
  if (nll.length === 0) return Number.NaN;
  let s = 0;
  for (let i = 0; i < nll.length; i++) s += nll[i]!;
  return s / nll.length < -Math.log(threshold) ? 1 : 0;
}

const fin = (x: number | null | undefined): x is number => typeof x === 'number' && Number.isFinite(x);

/** REPAIR's OP: (Rel·Gen·Loc)^(1/3). null when one is missing. */
export function overallScore(rel: number | null, gen: number | null, loc: number | null): number | null {
  if (!fin(rel) || !fin(gen) || !fin(loc)) return null;
  return Math.cbrt(rel * gen * loc);
}

/** WISE's Avg: (Rel + Gen + Loc)/3. null when one is missing. */
export function averageScore(rel: number | null, gen: number | null, loc: number | null): number | null {
  if (!fin(rel) || !fin(gen) || !fin(loc)) return null;
  return (rel + gen + loc) / 3;
}

/** The generated continuation, trimmed, starts with the target, trimmed. */
export function exactMatch(completion: string, target: string): boolean {
  return completion.trim().startsWith(target.trim());
}

/** Mean over the finite values (null when there are none). */
export function meanOf(values: readonly (number | null | undefined)[]): number | null {
  const v = values.filter(fin);
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
}

const nz = (x: number): number | null => (Number.isFinite(x) ? x : null);

// ---- measuring a set of records ----------------------------------------------------------------------

/** What one pass over the records measures, per record (before or after editing). */
export interface Measurement {
  rel: (number | null)[];
  gen: (number | null)[];
  /** Argmax predictions on each locality pair's answer positions (per record, per pair). */
  locPred: number[][][];
  ppl: (number | null)[];
  ood: (number | null)[];
  oodIndicator: (number | null)[];
  /** Rows cut to the context length. */
  truncatedRows: number;
}

export interface MeasureOptions extends ScoreOptions {
  useChatTemplate: boolean;
  metrics: readonly MetricName[];
  onProgress?: (done: number, total: number) => void;
}

/** Teacher-forced measurements of `records` through `src` (the base model or an editor), batched. */
export async function measure(src: LogitsSource, model: Model, records: readonly EditRecord[], opts: MeasureOptions): Promise<Measurement> {
  const tok = model.tokenizer;
  const ctx = model.contextLength;
  const tf = opts.metrics.includes('tf');
  const rows: ScoredRow[] = [];
  const keys = new Map<string, number>();
  const add = (r: ScoredRow): number => {
    const k = `${r.start}:${r.end}:${r.ids.join(',')}`;
    let i = keys.get(k);
    if (i === undefined) {
      i = rows.length;
      rows.push(r);
      keys.set(k, i);
    }
    return i;
  };
  const plan = records.map((r) => ({
    rel: tf ? add(answerRow(tok, promptText(tok, r.prompt, opts.useChatTemplate), r.target, ctx)) : -1,
    gen: tf && r.rephrase !== undefined ? add(answerRow(tok, promptText(tok, r.rephrase, opts.useChatTemplate), r.target, ctx)) : -1,
    loc: tf ? (r.locality ?? []).map((l) => add(answerRow(tok, l.prompt, l.answer, ctx))) : [],
    ppl: opts.metrics.includes('ppl') ? add(answerRow(tok, r.prompt, r.target, ctx)) : -1,
    ood: opts.metrics.includes('ood') && r.oodRephrase !== undefined ? add(textRow(tok, r.oodRephrase, ctx)) : -1,
  }));
  const sc = await scoreRows(src, rows, model.vocabSize, { ...opts, onBatch: opts.onProgress });
  const acc = (i: number): number | null => (i < 0 ? null : nz(tokenAccuracy(sc[i]!.argmax, rowLabels(rows[i]!))));
  return {
    rel: plan.map((p) => acc(p.rel)),
    gen: plan.map((p) => acc(p.gen)),
    locPred: plan.map((p) => p.loc.map((i) => sc[i]!.argmax)),
    ppl: plan.map((p) => (p.ppl < 0 ? null : nz(perplexity(sc[p.ppl]!.nll)))),
    ood: plan.map((p) => (p.ood < 0 ? null : nz(oodScore(sc[p.ood]!.nll)))),
    oodIndicator: plan.map((p) => (p.ood < 0 ? null : nz(oodIndicator(sc[p.ood]!.nll)))),
    truncatedRows: rows.filter((r) => r.truncated).length,
  };
}

/** Greedy exact match of one prompt through `src`: max new tokens = the answer's token count in its row. */
export async function exactMatchOf(
  src: GenerateSource,
  model: Model,
  prompt: string,
  target: string,
  useChatTemplate: boolean,
  signal?: AbortSignal,
): Promise<{ match: boolean; completion: string }> {
  const tok = model.tokenizer;
  const pt = promptText(tok, prompt, useChatTemplate);
  const row = answerRow(tok, pt, target);
  const k = Math.max(1, row.fullLength);
  const g = await src.generate(pt, { maxNewTokens: k, temperature: 0, stopOnEos: true, signal });
  return { match: exactMatch(g.completion, target), completion: g.completion };
}

// ---- routing scores (§1.9) --------------------------------------------------------------------------

/**
 * Which input a routing score is taken on. 'teacher-forced': the very rows Rel/Gen/Loc score (prompt +
 * " " + target, rephrase + " " + target, locality prompt + " " + answer), routed as editor.logits() routes
 * them (full-row thresholds): the routing behind the Rel/Gen/Loc figures. 'prompt-only': the bare prompts
 * (chat template for edit and rephrase prompts when enabled), routed as editor.generate() routes them
 * (prompt-only thresholds): the routing behind the exact-match figures.
 */
export type RoutingBasis = 'teacher-forced' | 'prompt-only';
export const ROUTING_BASES: readonly RoutingBasis[] = ['teacher-forced', 'prompt-only'];

/** What the router did with one input (from Editor.explain). */
export interface RoutePoint {
  /** The chosen memory's score; when routed to the main weight, the highest score over the memories. */
  score: number | null;
  /** The threshold that score was compared with (that memory's; all memories share one unless retrieve). */
  threshold: number | null;
  /** The input went to a side memory (not the main weight). */
  routed: boolean;
  /** Editor.explain's route: 'main', or the memory index (-1 = the working memory). */
  route: 'main' | number;
  /** Tokens scored. */
  tokens: number;
}

/** The routing of one case: its edit prompt, its rephrase (null without one), its locality (unrelated) prompts. */
export interface RoutingCase {
  id: string;
  /** The memory that holds this record's edit (explain's numbering: -1 = working), 'main' when none does; undefined when unknown. */
  holder?: 'main' | number;
  edit: RoutePoint | null;
  rephrase: RoutePoint | null;
  unrelated: RoutePoint[];
}

export interface RoutedCount {
  /** Inputs of this kind. */
  prompts: number;
  /** Of those, routed to a side memory. */
  routed: number;
  /** routed / prompts (null when there are none). */
  fraction: number | null;
}

export interface RoutingSummary {
  /** Ideally 1 (edits reach their memory), 1 (rephrases too) and 0 (unrelated prompts stay on the main weight). */
  edit: RoutedCount;
  rephrase: RoutedCount;
  unrelated: RoutedCount;
  /**
   * Routing accuracy: of the edit (rephrase) prompts whose edit a memory holds, the share routed to that very
   * memory (null when the holders are unknown).
   */
  accuracy: { edit: number | null; rephrase: number | null };
  /** The thresholds of the points are not all the same (several memories with their own thresholds). */
  thresholdsDiffer: boolean;
}

/** Routing scores of every case of a run (sequential protocol, side-memory methods, final edited model). */
export interface RoutingReport {
  basis: RoutingBasis;
  /** Every memory of the final editor (explain's numbering: index; the working memory first as -1) with its threshold and, when recalibrated, its positives / negatives. */
  memories?: ({ memory: number } & MemorySummary)[];
  cases: RoutingCase[];
  summary: RoutingSummary;
  /** Time spent on the explain calls (not part of timings.evalSeconds). */
  seconds: number;
}

/** Anything that explains its routing: an Editor. */
export interface RoutingSource {
  explain(prompt: Prompt, opts?: { signal?: AbortSignal; teacherForced?: boolean }): Promise<Explanation>;
  /** Which memory holds which edit, each memory's threshold (and, recalibrated, its two distributions). */
  memories?(): { working: MemorySummary; memories: MemorySummary[] };
}

/** A memory as Editor.memories() describes it. */
export interface MemorySummary {
  name: string;
  edits: string[];
  threshold: number;
  calibration?: { positives: number[]; negatives: number[] };
}

/** The token ids routed for one record: the metric rows (teacher-forced) or the bare prompts, cut to the context. */
export function routingInputs(
  tok: ModelTokenizer,
  record: EditRecord,
  useChatTemplate: boolean,
  basis: RoutingBasis,
  contextLength = Infinity,
): { edit: number[]; rephrase: number[] | null; unrelated: number[][] } {
  const ids = (prompt: string, answer: string): number[] => (basis === 'teacher-forced' ? answerRow(tok, prompt, answer, contextLength).ids : tok.encode(prompt).slice(0, contextLength));
  return {
    edit: ids(promptText(tok, record.prompt, useChatTemplate), record.target),
    rephrase: record.rephrase === undefined ? null : ids(promptText(tok, record.rephrase, useChatTemplate), record.target),
    unrelated: (record.locality ?? []).map((l) => ids(l.prompt, l.answer)),
  };
}

/** Routed counts and the threshold check over per-case routing points. */
export function summarizeRouting(cs: readonly RoutingCase[]): RoutingSummary {
  const count = (pts: readonly (RoutePoint | null)[]): RoutedCount => {
    const p = pts.filter((x): x is RoutePoint => x !== null);
    const routed = p.filter((x) => x.routed).length;
    return { prompts: p.length, routed, fraction: p.length ? routed / p.length : null };
  };
  const thr = cs.flatMap((c) => [c.edit, c.rephrase, ...c.unrelated]).flatMap((p) => (p && fin(p.threshold) ? [p.threshold] : []));
  const lo = thr.length ? Math.min(...thr) : 0;
  const hi = thr.length ? Math.max(...thr) : 0;
  const acc = (pick: (c: RoutingCase) => RoutePoint | null): number | null => {
    const known = cs.filter((c) => c.holder !== undefined && c.holder !== 'main' && pick(c) !== null);
    return known.length ? known.filter((c) => pick(c)!.route === c.holder).length / known.length : null;
  };
  return {
    edit: count(cs.map((c) => c.edit)),
    rephrase: count(cs.map((c) => c.rephrase)),
    unrelated: count(cs.flatMap((c) => c.unrelated)),
    accuracy: { edit: acc((c) => c.edit), rephrase: acc((c) => c.rephrase) },
    thresholdsDiffer: hi - lo > 1e-9 * Math.max(Math.abs(hi), Math.abs(lo)),
  };
}

/**
 * Route every edit, rephrase and locality prompt of `records` through `src` (one explain call each) and
 * record the top score, its threshold and whether it reached a side memory.
 */
export async function routingScores(
  src: RoutingSource,
  model: Model,
  records: readonly EditRecord[],
  opts: { useChatTemplate: boolean; basis: RoutingBasis; signal?: AbortSignal; onProgress?: (done: number, total: number) => void },
): Promise<RoutingReport> {
  const t0 = performance.now();
  const inputs = records.map((r) => routingInputs(model.tokenizer, r, opts.useChatTemplate, opts.basis, model.contextLength));
  const total = inputs.reduce((a, x) => a + 1 + (x.rephrase ? 1 : 0) + x.unrelated.length, 0);
  let done = 0;
  const point = async (ids: number[]): Promise<RoutePoint> => {
    if (opts.signal?.aborted) throw new RepairError('ERR_ABORTED', 'evaluation was aborted');
    const e = await src.explain({ tokens: ids }, { teacherForced: opts.basis === 'teacher-forced', signal: opts.signal });
    opts.onProgress?.(++done, total);
    return { score: fin(e.score) ? e.score : null, threshold: fin(e.threshold) ? e.threshold : null, routed: e.route !== 'main', route: e.route, tokens: e.tokens };
  };
  const mem = src.memories?.();
  const holder = new Map<string, number>();
  if (mem) {
    for (const e of mem.working.edits) holder.set(e, -1);
    mem.memories.forEach((m, i) => m.edits.forEach((e) => holder.set(e, i)));
  }
  const cs: RoutingCase[] = [];
  for (const [i, r] of records.entries()) {
    const x = inputs[i]!;
    const edit = x.edit.length ? await point(x.edit) : null;
    const rephrase = x.rephrase?.length ? await point(x.rephrase) : null;
    const unrelated: RoutePoint[] = [];
    for (const u of x.unrelated) if (u.length) unrelated.push(await point(u));
    cs.push({ id: r.id, ...(mem ? { holder: holder.get(r.id) ?? ('main' as const) } : {}), edit, rephrase, unrelated });
  }
  return {
    basis: opts.basis,
    ...(mem ? { memories: [{ memory: -1, ...mem.working }, ...mem.memories.map((m, i) => ({ memory: i, ...m }))] } : {}),
    cases: cs,
    summary: summarizeRouting(cs),
    seconds: (performance.now() - t0) / 1000,
  };
}

// ---- the evaluation ---------------------------------------------------------------------------------

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
  truncatedRows: number;
  /**
   * Routing scores of the edit, rephrase and locality prompts on the final edited model (the one Rel/Gen/Loc
   * are measured on): 'sequential' runs of side-memory methods when EvalOptions.routing is set; else null
   * (ft has no router; 'single' runs are not covered).
   */
  routing: RoutingReport | null;
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
}

/** The default metrics for a set of records: tf + exact, plus ood when they carry OOD texts. */
export function defaultMetrics(records: readonly EditRecord[]): MetricName[] {
  const m: MetricName[] = ['tf', 'exact'];
  if (records.some((r) => r.oodRephrase !== undefined)) m.push('ood');
  return m;
}

function checkOptions(
  model: Model,
  records: readonly EditRecord[],
  opts: EvalOptions,
): { ns: number[]; metrics: MetricName[]; protocol: Protocol; restore: RestoreMode; batchSize: number; routing: RoutingBasis | null } {
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
  o: ReturnType<typeof checkOptions>,
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
    const run =
      o.protocol === 'sequential'
        ? await runSequential(model, used.slice(0, n), label, variant.method, editorOptions, pre, mopts, o, opts)
        : await runSingle(model, used.slice(0, n), label, variant.method, editorOptions, pre, mopts, o, opts);
    runs.push(run);
    opts.onRun?.(run);
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

interface CaseParts {
  post: Measurement;
  preIdx: number[];
  em: { rel: { match: boolean; completion: string } | null; gen: { match: boolean; completion: string } | null }[];
}

/** Per-case results from post measurements (indices into the pre measurements). */
function cases(records: readonly EditRecord[], pre: Measurement, parts: CaseParts): CaseResult[] {
  const { post, preIdx, em } = parts;
  return records.map((r, i) => {
    const p = preIdx[i]!;
    const locPairs = post.locPred[i]!.map((pred, j) => nz(agreement(pred, pre.locPred[p]![j]!)));
    return {
      id: r.id,
      index: r.index,
      rel: post.rel[i]!,
      gen: post.gen[i]!,
      loc: meanOf(locPairs),
      locPairs,
      ppl: post.ppl[i]!,
      ood: post.ood[i]!,
      oodIndicator: post.oodIndicator[i]!,
      emRel: em[i]?.rel ? em[i]!.rel!.match : null,
      emGen: em[i]?.gen ? em[i]!.gen!.match : null,
      genRel: em[i]?.rel ? em[i]!.rel!.completion : null,
      genGen: em[i]?.gen ? em[i]!.gen!.completion : null,
      pre: { rel: pre.rel[p]!, gen: pre.gen[p]!, ppl: pre.ppl[p]!, ood: pre.ood[p]! },
    };
  });
}

export function summarize(cs: readonly CaseResult[]): EvalSummary {
  const rel = meanOf(cs.map((c) => c.rel));
  const tfGen = meanOf(cs.map((c) => c.gen));
  const ood = meanOf(cs.map((c) => c.ood));
  const useOod = tfGen === null && ood !== null;
  const gen = useOod ? ood : tfGen;
  const loc = meanOf(cs.map((c) => c.loc));
  const b = (x: boolean | null) => (x === null ? null : x ? 1 : 0);
  const count = (f: (c: CaseResult) => unknown) => cs.filter((c) => fin(f(c) as number)).length;
  return {
    rel,
    gen,
    loc,
    op: overallScore(rel, gen, loc),
    avg: averageScore(rel, gen, loc),
    ppl: meanOf(cs.map((c) => c.ppl)),
    ood,
    oodIndicator: meanOf(cs.map((c) => c.oodIndicator)),
    emRel: meanOf(cs.map((c) => b(c.emRel))),
    emGen: meanOf(cs.map((c) => b(c.emGen))),
    metricOf: { rel: rel === null ? null : 'tf-token-accuracy', gen: gen === null ? null : useOod ? 'ood' : 'tf-token-accuracy' },
    counts: { cases: cs.length, rel: count((c) => c.rel), gen: count((c) => c.gen), loc: count((c) => c.loc), ppl: count((c) => c.ppl), ood: count((c) => c.ood), em: cs.filter((c) => c.emRel !== null).length },
    pre: { rel: meanOf(cs.map((c) => c.pre.rel)), gen: meanOf(cs.map((c) => c.pre.gen)), ppl: meanOf(cs.map((c) => c.pre.ppl)), ood: meanOf(cs.map((c) => c.pre.ood)) },
  };
}

async function exactMatches(
  src: GenerateSource,
  model: Model,
  records: readonly EditRecord[],
  chat: boolean,
  signal: AbortSignal | undefined,
  tick: () => void,
): Promise<CaseParts['em']> {
  const out: CaseParts['em'] = [];
  for (const r of records) {
    const rel = await exactMatchOf(src, model, r.prompt, r.target, chat, signal);
    tick();
    let gen = null;
    if (r.rephrase !== undefined) {
      gen = await exactMatchOf(src, model, r.rephrase, r.target, chat, signal);
      tick();
    }
    out.push({ rel, gen });
  }
  return out;
}

function timings(n: number, editMs: number, evalMs: number, genMs: number, setupMs: number): EvalTimings {
  const s = editMs / 1000;
  return {
    editSeconds: s,
    evalSeconds: evalMs / 1000,
    generateSeconds: genMs / 1000,
    setupSeconds: setupMs / 1000,
    editsPerSecond: s > 0 ? n / s : null,
    secondsPerEdit: n > 0 ? s / n : null,
  };
}

async function runSequential(
  model: Model,
  records: readonly EditRecord[],
  label: string,
  method: EditMethod,
  editorOptions: EditorOptions,
  pre: Measurement,
  mopts: MeasureOptions,
  o: ReturnType<typeof checkOptions>,
  opts: Omit<EvalOptions, 'method' | 'editorOptions' | 'label'>,
): Promise<EvalRun> {
  const metrics = o.metrics;
  const n = records.length;
  const signal = opts.signal;
  const events: Record<string, number> = {};
  const ts = performance.now();
  const editor = await Editor.create(model, editorOptions);
  try {
    const setupMs = performance.now() - ts;
    const te = performance.now();
    opts.onProgress?.({ label, phase: 'edit', n, done: 0, total: n });
    const res = await editor.editMany(records, {
      signal,
      onEvent: (e) => {
        events[e.type] = (events[e.type] ?? 0) + 1;
        opts.onEvent?.(e, { label, n });
      },
      onProgress: (p) => opts.onProgress?.({ label, phase: 'edit', n, done: p.done, total: p.total }),
    });
    const editMs = performance.now() - te;
    const tv = performance.now();
    const gens = metrics.includes('exact') ? records.reduce((a, r) => a + (r.rephrase !== undefined ? 2 : 1), 0) : 0;
    let batches = 0;
    let genDone = 0;
    const post = await measure(editor, model, records, {
      ...mopts,
      onProgress: (d, t) => {
        batches = t;
        opts.onProgress?.({ label, phase: 'eval', n, done: d, total: t + gens });
      },
    });
    const tg = performance.now();
    const em = metrics.includes('exact')
      ? await exactMatches(editor, model, records, mopts.useChatTemplate, signal, () => opts.onProgress?.({ label, phase: 'eval', n, done: batches + ++genDone, total: batches + gens }))
      : records.map(() => ({ rel: null, gen: null }));
    const genMs = performance.now() - tg;
    const evalMs = performance.now() - tv;
    const cs = cases(records, pre, { post, preIdx: records.map((_, i) => i), em });
    // Routing on the same final model, after the metrics (its time is kept apart from evalSeconds).
    const routing =
      o.routing && method !== 'ft'
        ? await routingScores(editor, model, records, {
            useChatTemplate: mopts.useChatTemplate,
            basis: o.routing,
            signal,
            onProgress: (d, t) => opts.onProgress?.({ label, phase: 'routing', n, done: d, total: t }),
          })
        : null;
    const mem = editor.memories();
    return {
      label,
      method,
      n,
      protocol: 'sequential',
      summary: summarize(cs),
      cases: cs,
      timings: timings(n, editMs, evalMs, genMs, setupMs),
      events,
      gaveUp: res.gaveUp,
      retriggers: res.retriggers,
      memories: { working: mem.working.edits.length, memories: mem.memories.length },
      truncatedRows: post.truncatedRows,
      routing,
    };
  } finally {
    await editor.dispose();
  }
}

async function runSingle(
  model: Model,
  records: readonly EditRecord[],
  label: string,
  method: EditMethod,
  editorOptions: EditorOptions,
  pre: Measurement,
  mopts: MeasureOptions,
  o: ReturnType<typeof checkOptions>,
  opts: Omit<EvalOptions, 'method' | 'editorOptions' | 'label'>,
): Promise<EvalRun> {
  const n = records.length;
  const signal = opts.signal;
  const events: Record<string, number> = {};
  let editMs = 0;
  let evalMs = 0;
  let genMs = 0;
  let setupMs = 0;
  let truncated = 0;
  const gaveUp: string[] = [];
  let retriggers = 0;
  const all: CaseResult[] = [];
  let editor: Editor | undefined;
  try {
    for (const [i, r] of records.entries()) {
      const ts = performance.now();
      if (!editor || o.restore === 'fresh') {
        await editor?.dispose();
        editor = await Editor.create(model, editorOptions);
      }
      setupMs += performance.now() - ts;
      opts.onProgress?.({ label, phase: 'edit', n, done: i, total: n });
      const te = performance.now();
      const res = await editor.editMany([r], {
        signal,
        onEvent: (e) => {
          events[e.type] = (events[e.type] ?? 0) + 1;
          opts.onEvent?.(e, { label, n });
        },
      });
      editMs += performance.now() - te;
      gaveUp.push(...res.gaveUp);
      retriggers += res.retriggers;
      const tv = performance.now();
      const post = await measure(editor, model, [r], mopts);
      truncated += post.truncatedRows;
      const tg = performance.now();
      const em = o.metrics.includes('exact') ? await exactMatches(editor, model, [r], mopts.useChatTemplate, signal, () => {}) : [{ rel: null, gen: null }];
      genMs += performance.now() - tg;
      evalMs += performance.now() - tv;
      all.push(...cases([r], pre, { post, preIdx: [i], em }));
      opts.onProgress?.({ label, phase: 'edit', n, done: i + 1, total: n });
      if (o.restore === 'rollback') {
        const tr = performance.now();
        for (const id of editor.edits()) await editor.rollback(id, { signal });
        setupMs += performance.now() - tr;
      }
    }
  } finally {
    await editor?.dispose();
  }
  return {
    label,
    method,
    n,
    protocol: 'single',
    summary: summarize(all),
    cases: all,
    timings: timings(n, editMs, evalMs, genMs, setupMs),
    events,
    gaveUp,
    retriggers,
    memories: null,
    truncatedRows: truncated,
    routing: null,
  };
}

/** A record that cannot be edited on a model: one of its training rows is longer than the context. */
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
  const ed = await Editor.create(model, { ...editorOptions, method: 'wise' });
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
