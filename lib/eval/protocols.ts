// eval/protocols.ts — the two evaluation protocols of ALGORITHM.md §3 on one N: 'sequential' (N edits via
// editMany, then all N evaluated on the final editor, with routing scores when asked) and 'single' (edit
// one, evaluate it, restore with a fresh editor or rollback); per-case results and their summary. With
// EvalOptions.keepPartial an abort keeps what the run has: 'sequential' stops editing at the next edit
// boundary and evaluates the k finished edits (a sequential result at N = k), or, in its evaluation phase,
// keeps the cases evaluated; 'single' keeps the cases done. The run carries `partial`.
import { Editor, type EditMethod, type EditorOptions } from '../editor.js';
import type { EditRecord } from '../datasets.js';
import type { Model } from '../model.js';
import { abortedError, toRepairError } from '../errors.js';
import type { CaseResult, EvalOptions, EvalRun, EvalSummary, EvalTimings, ResolvedEvalOptions } from '../eval.js';
import { agreement, averageScore, exactMatchOf, fin, meanOf, measure, nz, overallScore, type GenerateSource, type MeasureOptions, type Measurement } from './metrics.js';
import { routingScores } from './routing.js';

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

/** Exact matches, one record after another, pushed to `out` (so that an abort keeps the records done). */
async function exactMatches(
  src: GenerateSource,
  model: Model,
  records: readonly EditRecord[],
  chat: boolean,
  signal: AbortSignal | undefined,
  tick: () => void,
  out: CaseParts['em'] = [],
): Promise<CaseParts['em']> {
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

const isAbort = (e: unknown): boolean => toRepairError(e).code === 'ERR_ABORTED';

/** What a protocol runs on: the N records of one variant, its pre-edit measurements and the options. */
export interface RunArgs {
  model: Model;
  records: readonly EditRecord[];
  label: string;
  method: EditMethod;
  editorOptions: EditorOptions;
  pre: Measurement;
  mopts: MeasureOptions;
  o: ResolvedEvalOptions;
  opts: Omit<EvalOptions, 'method' | 'editorOptions' | 'label'>;
}

/**
 * 'sequential': N edits via editMany, then all N evaluated on the final editor (and routed, when asked).
 * With opts.keepPartial, an abort while editing lets the edit in training finish and stops editMany at the
 * next edit (batch) boundary; the k trained records are then evaluated without the signal. An abort while
 * evaluating keeps the cases whose every value is measured (the teacher-forced batches run to their end,
 * then exact match stops at the next record). A partial run has no routing scores.
 */
export async function runSequential({ model, records, label, method, editorOptions, pre, mopts, o, opts }: RunArgs): Promise<EvalRun> {
  const metrics = o.metrics;
  const n = records.length;
  const signal = opts.signal;
  const keep = opts.keepPartial === true;
  const events: Record<string, number> = {};
  const ts = performance.now();
  const editor = await Editor.create(model, editorOptions);
  try {
    const setupMs = performance.now() - ts;
    const te = performance.now();
    opts.onProgress?.({ label, phase: 'edit', n, done: 0, total: n });
    let res: { gaveUp: string[]; retriggers: number };
    let done: readonly EditRecord[] = records;
    // keepPartial: the edit in training finishes; editMany stops at the next edit (batch) boundary
    const atBoundary = new AbortController();
    if (keep && signal?.aborted) throw abortedError('the evaluation');
    try {
      res = await editor.editMany(records, {
        signal: keep ? atBoundary.signal : signal,
        onEvent: (e) => {
          events[e.type] = (events[e.type] ?? 0) + 1;
          opts.onEvent?.(e, { label, n });
        },
        onProgress: (p) => {
          opts.onProgress?.({ label, phase: 'edit', n, done: p.done, total: p.total });
          if (keep && signal?.aborted) atBoundary.abort();
        },
      });
    } catch (e) {
      if (!keep || !isAbort(e)) throw e;
      // the records whose edit is trained (in the working memory or a frozen one; not still queued)
      done = records.filter((r) => {
        const info = editor.editInfo(r.id);
        return info !== undefined && info.memory !== 'queued';
      });
      if (!done.length) throw e;
      const ids = new Set(records.map((r) => r.id));
      res = { gaveUp: editor.pending().gaveUp.filter((id) => ids.has(id)), retriggers: events['shard-pruned'] ?? 0 };
    }
    // aborted while editing (stopped at a boundary, or during the last edit): evaluate the k edits made
    const stopped = keep && signal?.aborted === true;
    const k = done.length;
    const editMs = performance.now() - te;
    const tv = performance.now();
    const gens = metrics.includes('exact') ? done.reduce((a, r) => a + (r.rephrase !== undefined ? 2 : 1), 0) : 0;
    let batches = 0;
    let genDone = 0;
    // keepPartial: the batched teacher-forced metrics run to their end (all or nothing); after a stop, the
    // whole evaluation of the k edits runs without the signal (a second Ctrl-C in the CLI exits at once)
    const post = await measure(editor, model, done, {
      ...mopts,
      signal: keep ? undefined : signal,
      onProgress: (d, t) => {
        batches = t;
        opts.onProgress?.({ label, phase: 'eval', n, done: d, total: t + gens });
      },
    });
    const tg = performance.now();
    const em: CaseParts['em'] = [];
    let cut = false;
    if (metrics.includes('exact')) {
      try {
        await exactMatches(editor, model, done, mopts.useChatTemplate, stopped ? undefined : signal, () => opts.onProgress?.({ label, phase: 'eval', n, done: batches + ++genDone, total: batches + gens }), em);
      } catch (e) {
        if (!keep || !isAbort(e) || !em.length) throw e;
        cut = true;
      }
    } else em.push(...done.map(() => ({ rel: null, gen: null })));
    const genMs = performance.now() - tg;
    const evalMs = performance.now() - tv;
    const evaluated = done.slice(0, em.length);
    const cs = cases(evaluated, pre, { post, preIdx: evaluated.map((r) => records.indexOf(r)), em });
    const partial = stopped || cut || (keep && signal?.aborted === true);
    // Routing on the same final model, after the metrics (its time is kept apart from evalSeconds).
    const routing =
      o.routing && method !== 'ft' && !partial
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
      n: k,
      protocol: 'sequential',
      summary: summarize(cs),
      cases: cs,
      timings: timings(k, editMs, evalMs, genMs, setupMs),
      events,
      gaveUp: res.gaveUp,
      retriggers: res.retriggers,
      memories: { working: mem.working.edits.length, memories: mem.memories.length },
      ...(method === 'repair' && editor.marginScale !== undefined ? { marginScale: editor.marginScale } : {}),
      truncatedRows: post.truncatedRows,
      routing,
      ...(partial ? { partial: { editsDone: k, of: n, casesEvaluated: cs.length, phase: stopped ? ('edit' as const) : ('eval' as const) } } : {}),
    };
  } finally {
    await editor.dispose();
  }
}

/** 'single': edit one record, evaluate it, restore (a fresh editor or rollback), next. With
 * opts.keepPartial an abort keeps the cases done (the interrupted one is dropped). */
export async function runSingle({ model, records, label, method, editorOptions, pre, mopts, o, opts }: RunArgs): Promise<EvalRun> {
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
  let cut = false;
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
  } catch (e) {
    if (opts.keepPartial !== true || !isAbort(e) || !all.length) throw e;
    cut = true;
  } finally {
    await editor?.dispose();
  }
  const k = all.length;
  return {
    label,
    method,
    n: k,
    protocol: 'single',
    summary: summarize(all),
    cases: all,
    timings: timings(k, editMs, evalMs, genMs, setupMs),
    events,
    gaveUp,
    retriggers,
    memories: null,
    truncatedRows: truncated,
    routing: null,
    ...(cut ? { partial: { editsDone: k, of: n, casesEvaluated: k, phase: 'edit' as const } } : {}),
  };
}
