// cli/demo.ts — `repair-edit demo [--backend] [--json]`: knowledge editing end to end on the model and
// data the package ships (models/stories260K, data/demo-edits.jsonl), with no downloads.
//
// For each edit: the prompt's greedy continuation before and after editing, three unrelated story
// prompts before and after (expected unchanged), the routing decision for the edit prompt and for an
// unrelated one, and the wall time.

import { join } from 'node:path';
import type { Command } from 'commander';
import { Editor, type EditorOptions, type EditRequest, type Explanation } from '../editor.js';
import { evaluateVariants } from '../eval.js';
import type { EditRecord } from '../datasets.js';
import { loadModel, type BackendChoice, type Model } from '../model.js';
import { packageRoot } from '../paths.js';
import { addJsonOptions, checkWritable, choiceOption, emit, intOption, interruptSignal, resolveModelDir, type CliCommand, type JsonOutput } from './common.js';
import { explanationJson, fmtNum, readEditsFile, routeLabel, routeSummary } from './memory.js';

interface DemoCliOptions extends JsonOutput {
  backend: BackendChoice;
  device?: number;
  threads?: number;
}

/** Greedy tokens shown per continuation. */
const DEMO_TOKENS = 12;

/**
 * The demo's editor: every edit is frozen into its own side memory (save every edit, WISE-Retrieve
 * routes each prompt to the best-scoring memory), so that six edits on a 260K-parameter model do not
 * overwrite one another in a single shared working memory.
 */
const DEMO_EDITOR: EditorOptions = { method: 'wise', saveFreq: 1, mergeFreq: 1000, seed: 0 };

/** Unrelated story prompts: three per edit, in order (edit i gets 3i .. 3i+2; cycled if there are more edits). */
export const DEMO_UNRELATED = [
  'Once upon a time',
  'One day, a little girl',
  'Lily and Tom went to the',
  'She was happy because',
  'The sun was shining and',
  'Tim wanted to play with',
  'They went to the park',
  'Mom said, "Let\'s go',
  'The little bird flew',
  'Ben saw a big',
  'At night, the stars',
  'The bunny hopped',
  'Sue had a red',
  'He ran very fast',
  'The tree was tall and',
  'Anna liked to sing',
  'The boat was on the',
  'After lunch, the kids',
];

export function demoEditsFile(): string {
  return join(packageRoot(), 'data', 'demo-edits.jsonl');
}

interface RouteJson {
  prompt: string;
  route: string;
  memory: number | null;
  score: number;
  threshold: number;
}

interface DemoEditResult {
  id: string;
  prompt: string;
  target: string;
  /** Greedy continuations (completion only), before and after editing. */
  before: string;
  after: string;
  /** The same as decoded with the prompt (prompt + continuation). */
  beforeText: string;
  afterText: string;
  learned: boolean;
  steps: number;
  loss: number;
  editMs: number;
  memory: string;
  unrelated: { prompt: string; before: string; after: string; unchanged: boolean }[];
  routing: { edit: RouteJson; unrelated: RouteJson };
}

export interface DemoResult {
  model: string;
  backend: string;
  editsFile: string;
  editor: Record<string, unknown>;
  maxNewTokens: number;
  edits: DemoEditResult[];
  summary: { edits: number; learned: number; unrelated: number; unchanged: number; unrelatedRoutedMain: number };
  /** wise vs repair on the demo edits (sequential protocol, §3 metrics + greedy exact match). */
  comparison: { label: string; n: number; rel: number | null; gen: number | null; loc: number | null; op: number | null; emRel: number | null; secondsPerEdit: number }[];
  timings: { loadMs: number; editMs: number; totalMs: number };
}

function routeJson(prompt: string, e: Explanation): RouteJson {
  const j = explanationJson(e);
  return { prompt, route: j.route as string, memory: j.memory as number | null, score: e.score, threshold: e.threshold };
}

/**
 * wise vs repair on the demo edits: each method edits all of them on a fresh editor (sequential
 * protocol), then Rel / Gen / Loc / OP (teacher-forced, docs/metrics.md) and the exact match of the greedy
 * answer are measured by lib/eval.ts. Same cadence for both (one memory per save), so the rows differ only
 * by REPAIR's four mechanisms.
 */
async function methodComparison(model: Model, records: EditRequest[], signal: AbortSignal): Promise<DemoResult['comparison']> {
  const recs: EditRecord[] = records.map((r, i) => ({ ...r, id: r.id ?? `d${i}`, index: i }));
  const common = { saveFreq: 1, mergeFreq: 1000, seed: 0 };
  const reports = await evaluateVariants(
    model,
    recs,
    [
      { label: 'wise', method: 'wise', editorOptions: common },
      { label: 'repair', method: 'repair', editorOptions: common },
    ],
    { ns: [recs.length], metrics: ['tf', 'exact'], signal },
  );
  return reports.flatMap((rep) =>
    rep.runs.map((run) => ({ label: run.label, n: run.n, rel: run.summary.rel, gen: run.summary.gen, loc: run.summary.loc, op: run.summary.op, emRel: run.summary.emRel, secondsPerEdit: run.timings.editSeconds / Math.max(1, run.n) })),
  );
}

/** Text for the comparison section. */
function renderComparison(rows: DemoResult['comparison']): string[] {
  if (!rows.length) return [];
  const f = (x: number | null) => (x === null ? '  - ' : x.toFixed(2));
  return [
    '',
    `wise vs repair on the ${rows[0]!.n} demo edits (sequential protocol; teacher-forced Rel/Gen/Loc as docs/metrics.md, OP = geometric mean; EM = greedy answer matches):`,
    '  method    Rel   Gen   Loc    OP   EM-Rel  s/edit',
    ...rows.map((r) => `  ${r.label.padEnd(8)}  ${f(r.rel)}  ${f(r.gen)}  ${f(r.loc)}  ${f(r.op)}  ${f(r.emRel).padStart(6)}  ${r.secondsPerEdit.toFixed(2).padStart(6)}`),
  ];
}

export async function runDemo(o: DemoCliOptions, signal: AbortSignal): Promise<DemoResult> {
  const t0 = performance.now();
  const file = demoEditsFile();
  const records = readEditsFile(file);
  await using model = await loadModel(resolveModelDir(undefined), { backend: o.backend, device: o.device, threads: o.threads, signal });
  const loadMs = performance.now() - t0;
  const gen = async (g: { generate: Model['generate'] }, p: string) => {
    const r = await g.generate(p, { maxNewTokens: DEMO_TOKENS, temperature: 0, signal });
    return { text: r.text, completion: r.completion };
  };

  const unrelatedOf = (i: number) => [0, 1, 2].map((k) => DEMO_UNRELATED[(3 * i + k) % DEMO_UNRELATED.length]!);
  const before = new Map<string, { text: string; completion: string }>();
  for (const [i, r] of records.entries()) {
    for (const p of [r.request.prompt, ...unrelatedOf(i)]) if (!before.has(p)) before.set(p, await gen(model, p));
  }

  const tEdit = performance.now();
  await using editor = await Editor.create(model, DEMO_EDITOR);
  const trained: { id: string; steps: number; loss: number; ms: number }[] = [];
  for (const r of records) {
    const te = performance.now();
    const res = await editor.edit(r.request, { signal });
    trained.push({ id: res.id, steps: res.steps, loss: res.losses.at(-1) ?? Number.NaN, ms: performance.now() - te });
  }
  const editMs = performance.now() - tEdit;

  // "after" = through the editor with every demo edit applied.
  const edits: DemoEditResult[] = [];
  for (const [i, r] of records.entries()) {
    const { prompt, target } = r.request;
    const after = await gen(editor, prompt);
    const unrelated = [];
    for (const u of unrelatedOf(i)) {
      const a = (await gen(editor, u)).completion;
      const b = before.get(u)!.completion;
      unrelated.push({ prompt: u, before: b, after: a, unchanged: a === b });
    }
    const eRoute = await editor.explain(prompt, { signal });
    const uRoute = await editor.explain(unrelated[0]!.prompt, { signal });
    const t = trained[i]!;
    edits.push({
      id: t.id,
      prompt,
      target,
      before: before.get(prompt)!.completion,
      after: after.completion,
      beforeText: before.get(prompt)!.text,
      afterText: after.text,
      learned: after.completion.startsWith(target),
      steps: t.steps,
      loss: t.loss,
      editMs: t.ms,
      memory: routeLabel(eRoute.route),
      unrelated,
      routing: { edit: routeJson(prompt, eRoute), unrelated: routeJson(unrelated[0]!.prompt, uRoute) },
    });
  }
  const comparison = await methodComparison(model, records.map((r) => r.request), signal);
  const all = edits.flatMap((e) => e.unrelated);
  return {
    model: model.dir,
    backend: model.backend,
    editsFile: file,
    editor: { ...editor.config },
    maxNewTokens: DEMO_TOKENS,
    edits,
    summary: {
      edits: edits.length,
      learned: edits.filter((e) => e.learned).length,
      unrelated: all.length,
      unchanged: all.filter((u) => u.unchanged).length,
      unrelatedRoutedMain: edits.filter((e) => e.routing.unrelated.route === 'main').length,
    },
    comparison,
    timings: { loadMs, editMs, totalMs: performance.now() - t0 },
  };
}

const q = (s: string) => JSON.stringify(s);

export function renderDemo(d: DemoResult): string {
  const out: string[] = [];
  const cfg = d.editor as { layer: number; nIter: number; lr: number };
  out.push(`repair-edit demo: WISE side memories on the shipped stories260K model (${d.backend})`);
  out.push(`${d.summary.edits} edits from ${d.editsFile}; layer ${cfg.layer}, ${cfg.nIter} steps per edit, lr ${cfg.lr}; one side memory per edit.`);
  out.push(`Greedy continuations of ${d.maxNewTokens} tokens. "after" = through the editor with all ${d.summary.edits} edits applied.`);
  d.edits.forEach((e, i) => {
    out.push('');
    out.push(`[${i + 1}/${d.edits.length}] ${e.id}: ${q(e.prompt)} -> ${q(e.target)}   (${e.steps} steps, final loss ${fmtNum(e.loss, 3)}, ${(e.editMs / 1000).toFixed(2)} s)`);
    out.push(`  before: ${e.beforeText}`);
    out.push(`  after:  ${e.afterText}`);
    out.push(`          ${e.learned ? 'learned: the continuation starts with the target' : 'NOT LEARNED: the continuation does not start with the target'}`);
    out.push(`  route:  ${routeSummary(routeExpl(e.routing.edit))}`);
    out.push('  unrelated prompts:');
    for (const u of e.unrelated) {
      out.push(`    ${q(u.prompt)}`);
      out.push(`      before: ${u.before}`);
      out.push(`      after:  ${u.unchanged ? '(unchanged)' : `${u.after}   CHANGED`}`);
    }
    out.push(`  route of ${q(e.routing.unrelated.prompt)}: ${routeSummary(routeExpl(e.routing.unrelated))}`);
  });
  out.push(...renderComparison(d.comparison));
  out.push('');
  const s = d.summary;
  out.push(`summary: ${s.learned}/${s.edits} edits learned, ${s.unchanged}/${s.unrelated} unrelated continuations unchanged, ${s.unrelatedRoutedMain}/${s.edits} unrelated prompts routed to the main weights`);
  out.push(`wall time: ${(d.timings.totalMs / 1000).toFixed(1)} s (model load ${(d.timings.loadMs / 1000).toFixed(1)} s, editing ${(d.timings.editMs / 1000).toFixed(1)} s)`);
  return `${out.join('\n')}\n`;
}

function routeExpl(r: RouteJson): Explanation {
  return { route: r.memory === null ? 'main' : r.memory, score: r.score, threshold: r.threshold, scores: [], tokens: 0 };
}

export const demoCommand: CliCommand = {
  name: 'demo',
  register(program: Command): void {
    const c = program
      .command('demo')
      .description('edit the shipped stories260K model with the shipped demo edits and show each prompt before/after, unrelated prompts, and the routing')
      .option('--backend <name>', 'auto | cpu | cuda (auto honours REPAIR_BACKEND)', choiceOption(['auto', 'cpu', 'cuda'] as const), 'auto')
      .option('--device <n>', 'CUDA device index', intOption(0, 1024))
      .option('--threads <n>', 'CPU threads (0 = all)', intOption(0, 4096));
    addJsonOptions(c, 'the structured result').action(async (o: DemoCliOptions) => {
        if (o.jsonFile !== undefined) checkWritable(o.jsonFile, '--json-file');
        const intr = interruptSignal();
        try {
          const d = await runDemo(o, intr.signal);
          await emit(o, d, () => renderDemo(d));
        } finally {
          intr.done();
        }
      });
  },
};
