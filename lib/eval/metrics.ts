// eval/metrics.ts — the per-case metrics of ALGORITHM.md §3, exactly as the reference evaluation code
// computes them, the batched row scoring they run on, and measure(): every metric of a set of records on
// one model or editor (lib/eval.ts runs the protocols).
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

import { RepairError } from '../errors.js';
import type { GenerateOptions, GenerateResult, LogitsOptions, LogitsResult, Model, Prompt } from '../model.js';
import type { ModelTokenizer } from '../tokenizer.js';
import type { EditRecord } from '../datasets.js';

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

/** A finite number (not null, undefined, NaN or ±Infinity). */
export const fin = (x: number | null | undefined): x is number => typeof x === 'number' && Number.isFinite(x);

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

/** A metric value, or null when it is not finite. */
export const nz = (x: number): number | null => (Number.isFinite(x) ? x : null);

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
