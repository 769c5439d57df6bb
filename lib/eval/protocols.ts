// eval/protocols.ts — the two evaluation protocols of ALGORITHM.md §3 on one N: 'sequential' (N edits via
// editMany, then all N evaluated on the final editor, with routing scores when asked) and 'single' (edit
// one, evaluate it, restore with a fresh editor or rollback); per-case results and their summary.
import { Editor, type EditMethod, type EditorOptions } from '../editor.js';
import type { EditRecord } from '../datasets.js';
import type { Model } from '../model.js';
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

/** 'sequential': N edits via editMany, then all N evaluated on the final editor (and routed, when asked). */
export async function runSequential({ model, records, label, method, editorOptions, pre, mopts, o, opts }: RunArgs): Promise<EvalRun> {
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

/** 'single': edit one record, evaluate it, restore (a fresh editor or rollback), next. */
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
