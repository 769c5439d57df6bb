// methods.ts — bench section "methods": the cost of each editing method (wise, repair, ft) at N = 1, 30 and
// 120 sequential edits (--quick: N = 1 and 10), on the CPU or CUDA backend of the run:
//   - edits/s and ms/edit: wall clock of Editor.editMany over the N records (a fresh editor per method × N);
//   - training steps (summed from the 'edit-trained' events) and ms/step = editMany time ÷ steps, so the cost
//     of REPAIR's retraining (re-batched, pruned and reintegrated edits) is visible next to its step count;
//   - evaluation throughput: teacher-forced Rel/Gen/Loc of the N edited cases through lib/eval.ts's
//     evaluateVariants (the same code as `repair-edit eval`), as prompts scored per second, with the
//     Rel/Gen/Loc/OP it returns so the timing is tied to the work done;
//   - peak memory: the backend's allocation high-water mark per phase (Model.memoryPeakBytes, counted
//     natively at every allocation; device memory on CUDA; each run loads the model afresh, so one run's
//     kept scratch buffers do not show in the next); and the process's maxRSS after each run;
//   - the repair/wise cost ratio (ms/edit) at each N, measured in the same run.
// Model: ../shared/models/facts-llama (stories260K when absent); records: ZsRE (../shared/data) with
// editSlice's irrelevant rows, as `repair-edit eval --data zsre --skip-invalid --save-freq 5 --merge-freq 10`.
//
//   npm run bench -- --only methods [--quick] [--backend cpu|cuda] [--json FILE]
//
// A full run on 2 quiet CPU cores takes roughly 20–30 minutes (REPAIR at N = 120 is about half of it: its retriggers
// can add up to one more pass); --quick (N = 1, 10) about 1 minute.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { editSlice, loadDataset, namedDatasetPath, type EditRecord } from '../lib/datasets.js';
import type { EditMethod, RepairEvent } from '../lib/editor.js';
import { evaluateVariants, type EvalProgress, type EvalRun } from '../lib/eval.js';
import { loadModel, type Model } from '../lib/model.js';
import type { BenchContext, BenchSection, SectionResult } from './run.js';

const MB = 2 ** 20;
const SAVE_FREQ = 5;
const MERGE_FREQ = 10;

interface Row {
  method: EditMethod;
  n: number;
  /** editMany wall clock (evaluate's timings.editSeconds), ms. */
  editMs: number;
  editsPerSecond: number;
  msPerEdit: number;
  /** Optimisation steps summed over the 'edit-trained' events (for repair one step trains a whole batch). */
  steps: number;
  msPerStep: number;
  /** Edit samples trained (sum of ids over 'edit-trained'): > N when REPAIR re-trains edits. */
  trainedSamples: number;
  /** 'edit-trained' events = training calls (single edits for wise/ft, batches for repair). */
  trainingCalls: number;
  retriggers: number;
  reintegrated: number;
  residualAdded: number;
  errorsDetected: number;
  shardsMerged: number;
  gaveUp: number;
  /** Teacher-forced evaluation: wall clock, rows actually scored (deduplicated) and nominal prompts. */
  evalMs: number;
  evalRowsScored: number;
  evalPrompts: number;
  evalPromptsPerSecond: number;
  /** Backend bytes in use, max over the samples of the run (edit phase, eval phase, both). */
  nativePeakBytes: number;
  nativePeakEditBytes: number;
  nativePeakEvalBytes: number;
  /** The freshly loaded model's bytes in use (weights) and its load time. */
  modelBytes: number;
  modelLoadMs: number;
  /** process.resourceUsage().maxRSS after the run (process-wide high-water mark since start), bytes. */
  hostMaxRssBytes: number;
  rel: number | null;
  gen: number | null;
  loc: number | null;
  op: number | null;
  memories: { working: number; memories: number } | null;
}

/**
 * The backend's allocation high-water mark per phase (Model.memoryPeakBytes: exact, counted natively at
 * every allocation — device memory on CUDA): the mark is reset when a phase starts and read when it ends.
 */
class NativePeak {
  phase: 'idle' | 'edit' | 'eval' = 'idle';
  edit = 0;
  eval = 0;
  constructor(private readonly model: Model) {}
  /** Close the current phase (record its peak) and start `next` from the bytes in use now. */
  enter(next: 'idle' | 'edit' | 'eval'): void {
    if (next === this.phase) return;
    const peak = this.model.memoryPeakBytes({ reset: true });
    if (this.phase === 'edit') this.edit = Math.max(this.edit, peak);
    else if (this.phase === 'eval') this.eval = Math.max(this.eval, peak);
    this.phase = next;
  }
}

/**
 * One method at one N on a freshly loaded model (facts-llama loads in milliseconds; a fresh model keeps
 * the native high-water mark of one run from carrying into the next, since the backend keeps its
 * scratch buffers for the model's life). Edit and evaluation go through evaluateVariants.
 */
async function runOne(ctx: BenchContext, modelDir: string, records: readonly EditRecord[], method: EditMethod, n: number): Promise<Row> {
  const tl = performance.now();
  const model = await loadModel(modelDir, { backend: ctx.backend });
  const loadMs = performance.now() - tl;
  const modelBytes = model.memoryBytes();
  const sampler = new NativePeak(model);
  let steps = 0;
  let samples = 0;
  let calls = 0;
  let reintegrated = 0;
  let residualAdded = 0;
  let errors = 0;
  let merges = 0;
  let evalRows = 0;
  let run: EvalRun | undefined;
  try {
    const [report] = await evaluateVariants(model, records.slice(0, n), [{ method, editorOptions: { saveFreq: SAVE_FREQ, mergeFreq: MERGE_FREQ } }], {
      ns: [n],
      protocol: 'sequential',
      metrics: ['tf'],
      dataset: 'zsre',
      onProgress: (p: EvalProgress) => {
        if (p.phase === 'pre') return; // the pre-edit pass on the unedited model: not part of the figures
        if (p.phase === 'edit') sampler.enter('edit');
        else {
          sampler.enter('eval');
          evalRows = p.total; // metrics ['tf']: rows scored (deduplicated), no generations
        }
      },
      onEvent: (e: RepairEvent) => {
        if (e.type === 'edit-trained') {
          steps += e.steps;
          samples += e.ids.length;
          calls++;
        } else if (e.type === 'edits-reintegrated') reintegrated += e.ids.length;
        else if (e.type === 'residual-added') residualAdded += e.ids.length;
        else if (e.type === 'error-detected') errors++;
        else if (e.type === 'shards-merged') merges++;
      },
      onRun: (r: EvalRun) => {
        sampler.enter('idle');
        run = r;
      },
    });
    run ??= report!.runs[0]!;
  } finally {
    sampler.enter('idle');
    await model.dispose();
  }
  const editMs = run.timings.editSeconds * 1000;
  const evalMs = run.timings.evalSeconds * 1000;
  const prompts = records.slice(0, n).reduce((a, r) => a + 1 + (r.rephrase !== undefined ? 1 : 0) + (r.locality?.length ?? 0), 0);
  const s = run.summary;
  return {
    method,
    n,
    editMs,
    editsPerSecond: n / (editMs / 1000),
    msPerEdit: editMs / n,
    steps,
    msPerStep: steps > 0 ? editMs / steps : Number.NaN,
    trainedSamples: samples,
    trainingCalls: calls,
    retriggers: run.retriggers,
    reintegrated,
    residualAdded,
    errorsDetected: errors,
    shardsMerged: merges,
    gaveUp: run.gaveUp.length,
    evalMs,
    evalRowsScored: evalRows,
    evalPrompts: prompts,
    evalPromptsPerSecond: prompts / (evalMs / 1000),
    nativePeakBytes: Math.max(sampler.edit, sampler.eval),
    nativePeakEditBytes: sampler.edit,
    nativePeakEvalBytes: sampler.eval,
    modelBytes,
    modelLoadMs: loadMs,
    hostMaxRssBytes: process.resourceUsage().maxRSS * 1024,
    rel: s.rel,
    gen: s.gen,
    loc: s.loc,
    op: s.op,
    memories: run.memories,
  };
}

const f = (x: number | null | undefined, d = 2): string => (x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(d));

export const section: BenchSection = {
  name: 'methods',
  description: 'per method (wise, repair, ft) at N = 1/30/120: edits/s, ms/edit, ms/step, eval prompts/s, peak native/device + host memory, repair/wise ratio',
  async run(ctx: BenchContext): Promise<SectionResult> {
    const zsreFile = namedDatasetPath('zsre');
    if (!existsSync(zsreFile)) {
      const why = `ZsRE not found at ${zsreFile}: section skipped`;
      ctx.log(`methods: ${why}`);
      return { markdown: `## Editing methods (${ctx.backend})\n\n${why}.\n`, json: { skipped: why } };
    }
    const facts = join(ctx.root, '..', 'shared', 'models', 'facts-llama');
    const [modelName, modelDir] = existsSync(join(facts, 'config.json')) ? ['facts-llama', facts] : ['stories260K', join(ctx.root, 'models', 'stories260K')];
    const methods: EditMethod[] = ['wise', 'repair', 'ft'];
    const ns = ctx.quick ? [1, 10] : [1, 30, 120];
    const maxN = Math.max(...ns);

    const ds = loadDataset('zsre', { skipInvalid: true });
    const records: EditRecord[] = editSlice(ds, maxN);

    ctx.log(`methods: ${modelName} on ${ctx.backend}, ${methods.join('/')} × N = ${ns.join(', ')} (ZsRE, ${records.length} records)`);
    const rows: Row[] = [];
    const t0 = performance.now();
    // N-major: the methods at one N run back to back, so their ratio sees the same machine conditions.
    for (const n of ns) {
      for (const method of methods) {
        ctx.log(`methods: ${method} N = ${n}: editing`);
        const row = await runOne(ctx, modelDir, records, method, n);
        rows.push(row);
        ctx.log(
          `methods: ${method} N = ${n}: ${f(row.msPerEdit, 0)} ms/edit, ${row.steps} steps (${f(row.msPerStep, 1)} ms/step), eval ${f(row.evalPromptsPerSecond, 0)} prompts/s, native ${f(row.nativePeakBytes / MB, 1)} MB, OP ${f(row.op)}`,
        );
      }
    }
    const totalMs = performance.now() - t0;
    rows.sort((a, b) => methods.indexOf(a.method) - methods.indexOf(b.method) || a.n - b.n);

    const ratios = ns.map((n) => {
      const w = rows.find((r) => r.method === 'wise' && r.n === n);
      const rp = rows.find((r) => r.method === 'repair' && r.n === n);
      return { n, wiseMsPerEdit: w?.msPerEdit ?? null, repairMsPerEdit: rp?.msPerEdit ?? null, ratio: w && rp ? rp.msPerEdit / w.msPerEdit : null, stepsRatio: w && rp && w.steps > 0 ? rp.steps / w.steps : null };
    });
    const modelBytes = rows[0]?.modelBytes ?? 0;

    const md = [
      `## Editing methods (${ctx.backend})`,
      '',
      `${modelName}, ZsRE (first ${maxN} valid records, train-record irrelevant rows), sequential protocol: N edits with editMany, then the N cases evaluated teacher-forced on the final editor, through lib/eval.ts's evaluateVariants; each method × N runs on a freshly loaded model with a fresh editor (saveFreq ${SAVE_FREQ}, mergeFreq ${MERGE_FREQ}, other settings the model's preset). ` +
        `edits/s and ms/edit: wall clock of editMany over the N records (for repair this includes its batching features, distillation, error monitor, retriggers and merges). ` +
        `steps: optimisation steps summed over the 'edit-trained' events (a REPAIR step trains a whole batch); ms/step = editMany time ÷ steps; trained = edit samples trained (more than N when REPAIR re-trains edits); ` +
        `retrig. / reint. = retriggers (prunes) / edits reintegrated. eval prompts/s: edit + rephrase + locality prompts of the N cases ÷ the teacher-forced measurement time (batched; identical rows are scored once). ` +
        `native MB: the backend's bytes in use${ctx.backend === 'cuda' ? ' (device memory)' : ''} — weights (${f(modelBytes / MB, 1)} MB), KV/scratch buffers (kept for the model's life) and the side memories — the high-water mark counted natively at every allocation during editMany and the evaluation. ` +
        `host maxRSS: process.resourceUsage().maxRSS read after each run, a process-wide high-water mark that never goes down (a row includes every earlier row). Rel/Gen/Loc/OP as \`repair-edit eval\` (ALGORITHM.md §3).`,
      '',
      '| method | N | edits/s | ms/edit | steps | ms/step | trained | retrig. / reint. | eval prompts/s | native MB | host maxRSS MB | Rel | Gen | Loc | OP |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
      ...rows.map(
        (r) =>
          `| ${r.method} | ${r.n} | ${f(r.editsPerSecond, 3)} | ${f(r.msPerEdit, 0)} | ${r.steps} | ${f(r.msPerStep, 1)} | ${r.trainedSamples} | ${r.method === 'repair' ? `${r.retriggers} / ${r.reintegrated}` : '–'} | ${f(r.evalPromptsPerSecond, 0)} | ${f(r.nativePeakBytes / MB, 1)} | ${f(r.hostMaxRssBytes / MB, 0)} | ${f(r.rel)} | ${f(r.gen)} | ${f(r.loc)} | ${f(r.op)} |`,
      ),
      '',
      ...ratios.map((x) => `- N = ${x.n}: repair / wise cost ratio **${f(x.ratio)}×** ms/edit (${f(x.repairMsPerEdit, 0)} vs ${f(x.wiseMsPerEdit, 0)} ms; steps ratio ${f(x.stepsRatio)}×)`),
      '',
      `Section time ${f(totalMs / 1000, 0)} s. Timings are figures, never test gates.`,
      '',
    ].join('\n');
    return {
      markdown: md,
      json: {
        config: { model: modelName, modelDir, backend: ctx.backend, dataset: 'zsre', datasetFile: ds.file, skippedRecords: ds.skipped.length, records: records.length, recordIds: records.map((r) => r.id), methods, ns, saveFreq: SAVE_FREQ, mergeFreq: MERGE_FREQ, protocol: 'sequential', metrics: ['tf'], quick: ctx.quick, nativeSampleIntervalMs: 25, freshModelPerRun: true },
        modelBytes,
        totalMs,
        rows,
        ratios,
      },
    };
  },
};
