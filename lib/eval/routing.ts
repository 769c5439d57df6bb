// eval/routing.ts — routing scores of an evaluation [beyond the reference; option `routing`]: on the final
// model of each 'sequential' run of a side-memory method (wise, repair; ft has no router), one
// Editor.explain per edit, rephrase and locality (unrelated) prompt gives the top memory's score, the
// threshold it is compared with and whether the input reached a side memory (§1.9). The default basis,
// 'teacher-forced', routes the very rows Rel/Gen/Loc score, as logits() routes them (full-row
// thresholds); 'prompt-only' routes the bare prompts as generate() does (what exact match sees).
import type { Explanation } from '../editor.js';
import { RepairError } from '../errors.js';
import type { Model, Prompt } from '../model.js';
import type { ModelTokenizer } from '../tokenizer.js';
import type { EditRecord } from '../datasets.js';
import { answerRow, fin, promptText } from './metrics.js';

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
