// cli/eval.ts — `repair-edit eval --data zsre|counterfact|hallucination|temporal|FILE --n 1,30,120
// --method wise,repair,ft [--ablate monitor,batching,kd,merge,bound] [--routing tf|prompt|off] [--json |
// --json-file out.json] [--report out.html] [--config FILE]`: the metrics of docs/metrics.md (lib/eval.ts)
// for every method × N on one loaded model, a results table on stdout (lib/cli/eval_table.ts), every
// per-case value in JSON, and a self-contained HTML report (lib/cli/eval_report.ts). On Ctrl-C or SIGTERM
// the runs that finished and what the run in progress has (sequential: editing stops at the next edit
// boundary and the k edits made are evaluated; else the cases evaluated) are written, JSON and report
// marked partial, and the command exits 130; a second Ctrl-C writes the finished runs only and exits 130.

import { resolve } from 'node:path';
import cliProgress from 'cli-progress';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { RepairError, toRepairError } from '../errors.js';
import { Editor, type EditMethod, type EditorOptions } from '../editor.js';
import { REPAIR_PAPER, type RepairOptions } from '../repair.js';
import { DATASET_FORMATS, editSlice, loadDataset, NAMED_DATASETS, type Dataset, type DatasetFormat } from '../datasets.js';
import { defaultMetrics, evaluateVariants, METRIC_NAMES, recordsTooLong, type EvalProgress, type EvalReport, type EvalRun, type EvalVariant, type MetricName, type Protocol, type RestoreMode, type RoutingBasis } from '../eval.js';
import { loadModel, type BackendChoice } from '../model.js';
import { packageVersion } from '../info.js';
import { checkWritable, choiceOption, floatOption, formatTable, givenOnCli, intOption, interruptSignal, resolveModelDir, usageError, writeFileAtomic, writeOut, type CliCommand } from './common.js';
import { addConfigOptions, mergeEditor, mergeRuntime, readConfigFile, withConfigErrors } from './config_file.js';
import { renderHtmlReport, type EvalRunFile } from './eval_report.js';
import { f2, legend, resultsTable, routingLines } from './eval_table.js';

export const ABLATIONS = ['monitor', 'batching', 'kd', 'merge', 'bound', 'recalibrate', 'content', 'replay', 'negatives', 'exact', 'shards', 'margins', 'auto', 'dense', 'paraphrase', 'keys', 'subject'] as const;
export type Ablation = (typeof ABLATIONS)[number];
/** The REPAIR options of each ablation: a mechanism off, or ('bound') no bound on retraining (retrainShare). */
const ABLATION_OPTIONS: Record<Ablation, Partial<RepairOptions>> = {
  monitor: { monitor: false },
  batching: { batching: false },
  kd: { kd: false },
  merge: { lossAwareMerge: false },
  bound: { retrainShare: 1e9 },
  // issue 12's mechanisms, each off in turn (exact = the monitor back on teacher-forced token accuracy)
  recalibrate: { recalibrate: false },
  content: { routeContent: false },
  replay: { replay: 0 },
  negatives: { negatives: 4 }, // off by default since N = 997: this row switches them on ('repair +negatives')
  exact: { correctness: 'token' },
  shards: { keepShards: false },
  margins: { marginScale: 1 },
  auto: { marginScale: 'auto' }, // the margins from the measured background distance instead of × 2 ('repair +auto-margins')
  dense: { denseShards: false },
  paraphrase: { paraphraseRows: 0 },
  keys: { keyRouting: false },
  subject: { subjectRouting: false },
};
/** The rows that switch an option on instead of off. */
const ADDED: Partial<Record<Ablation, string>> = { negatives: 'repair +negatives', auto: 'repair +auto-margins' };
/** 'repair-paper' = method 'repair' as the REPAIR paper specifies it (REPAIR_PAPER: every issue-12 mechanism off). */
const METHODS = ['wise', 'repair', 'repair-paper', 'ft'] as const;
type CliMethod = (typeof METHODS)[number];
const ROUTING_OF: Record<'tf' | 'prompt' | 'off', RoutingBasis | false> = { tf: 'teacher-forced', prompt: 'prompt-only', off: false };

interface EvalCliOptions {
  model?: string;
  data?: string;
  dataDir?: string;
  format?: DatasetFormat;
  skipInvalid?: boolean;
  n: number[];
  method: CliMethod[];
  ablate: Ablation[];
  protocol: Protocol;
  restore: RestoreMode;
  metrics?: MetricName[];
  batchSize: number;
  layer?: number;
  saveFreq?: number;
  mergeFreq?: number;
  nIter?: number;
  lr?: number;
  seed?: number;
  backend: BackendChoice;
  device?: number;
  threads?: number;
  /** --json (stdout), or the deprecated --json FILE (= --json-file FILE). */
  json?: boolean | string;
  jsonFile?: string;
  report?: string;
  routing: 'tf' | 'prompt' | 'off';
  config?: string;
  printConfig?: boolean;
}

/** A comma-separated list option, each item parsed by `item`; duplicates are refused. */
function listOption<T>(item: (s: string) => T, what: string) {
  return (value: string): T[] => {
    const parts = value.split(',').map((s) => s.trim());
    if (parts.length === 0 || parts.some((p) => p === '')) throw new InvalidArgumentError(`expected a comma-separated list of ${what}, got "${value}"`);
    const out = parts.map(item);
    if (new Set(out.map(String)).size !== out.length) throw new InvalidArgumentError(`duplicate entries in "${value}"`);
    return out;
  };
}

function choiceItem<T extends string>(choices: readonly T[]) {
  return (s: string): T => {
    if (!(choices as readonly string[]).includes(s)) throw new InvalidArgumentError(`expected one of ${choices.join(', ')}, got "${s}"`);
    return s as T;
  };
}

const positiveInt = (s: string): number => {
  const n = Number(s);
  if (!/^\d+$/.test(s) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`expected positive integers, got "${s}"`);
  return n;
};

/** The rows of the results table: the methods, then one 'repair -X' per ablation. */
export function variantsOf(methods: readonly (EditMethod | 'repair-paper')[], ablate: readonly Ablation[], base: EditorOptions): EvalVariant[] {
  // base.repair (from --config) applies to the repair rows only, under the paper's / an ablation's settings
  const { repair, ...rest } = base;
  const withRepair = (over?: Partial<RepairOptions>): EditorOptions => (repair === undefined && over === undefined ? { ...rest } : { ...rest, repair: { ...repair, ...over } });
  const v: EvalVariant[] = methods.map((m) =>
    m === 'repair-paper' ? { label: m, method: 'repair' as const, editorOptions: withRepair(REPAIR_PAPER) } : { label: m, method: m, editorOptions: m === 'repair' ? withRepair() : { ...rest } },
  );
  for (const a of ablate) v.push({ label: ADDED[a] ?? `repair -${a}`, method: 'repair', editorOptions: withRepair(ABLATION_OPTIONS[a]) });
  return v;
}

// ---- progress ------------------------------------------------------------------------------------------

function progress() {
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      { stream: process.stderr, format: '{what} [{bar}] {value}/{total}  {duration_formatted}', hideCursor: true, clearOnComplete: true, fps: 10 },
      cliProgress.Presets.shades_classic,
    );
    let key = '';
    let started = false;
    return {
      update(p: EvalProgress) {
        const k = `${p.label}/${p.n}/${p.phase}`;
        const what = `${p.label} N=${p.n} ${p.phase === 'pre' ? 'pre-edit' : p.phase === 'edit' ? 'editing' : p.phase === 'routing' ? 'routing scores' : 'evaluating'}`;
        if (!started) {
          bar.start(Math.max(1, p.total), p.done, { what });
          started = true;
        } else if (k !== key) {
          bar.setTotal(Math.max(1, p.total));
        } else if (p.total !== bar.getTotal()) bar.setTotal(Math.max(1, p.total));
        key = k;
        bar.update(p.done, { what });
      },
      run(_line: string) {},
      stop() {
        if (started) bar.stop();
      },
    };
  }
  return {
    update(_p: EvalProgress) {},
    run(line: string) {
      process.stderr.write(`${line}\n`);
    },
    stop() {},
  };
}

// ---- the command ---------------------------------------------------------------------------------------

/** The run file (JSON and report) of the variants' finished runs; `partial` when interrupted. */
function runFile(config: Record<string, unknown>, reports: EvalReport[], partial?: EvalRunFile['progress']): EvalRunFile {
  return { format: 'repair-edit.eval-run', version: 1, ...(partial ? { partial: true, progress: partial } : {}), config, results: reports };
}

export const evalCommand: CliCommand = {
  name: 'eval',
  register(program: Command): void {
    const c = program
      .command('eval')
      .description('measure editors (Rel, Gen, Loc, OP; PPL / OOD where the set has them; docs/metrics.md) plus exact match of the greedy generation, for every method × N')
      .option(
        '--data <name|file>',
        `required: ${Object.keys(NAMED_DATASETS).join(' | ')} (looked for in --data-dir, then REPAIR_DATA_DIR, then ../shared/data beside a checkout, then the slices shipped in the package) or a file: a .json array in one of those formats, or .jsonl with {prompt, target, rephrase?, locality?: [{prompt, answer}]} per line`,
      )
      .option('--data-dir <dir>', `folder holding the named datasets (${Object.values(NAMED_DATASETS).join(', ')})`)
      .option('--format <fmt>', `the file's format: ${DATASET_FORMATS.join(' | ')} (default: detected)`, choiceOption(DATASET_FORMATS))
      .option('--skip-invalid', 'drop invalid records (each reported on stderr) instead of failing on the first one')
      .option('--model <dir>', 'Hugging Face model folder (default: the shipped stories260K demo model)')
      .addOption(
        new Option('--n <list>', 'numbers of edits, comma-separated: each N edits the first N records with a fresh editor').argParser(listOption(positiveInt, 'positive integers')).default([1, 30, 120], '1,30,120'),
      )
      .addOption(new Option('--method <list>', "methods, comma-separated: wise, repair, repair-paper (repair with every issue-12 mechanism off: the paper's REPAIR), ft").argParser(listOption(choiceItem(METHODS), 'methods')).default(['wise'], 'wise'))
      .addOption(
        new Option('--ablate <list>', `REPAIR ablations, comma-separated (${ABLATIONS.join(', ')}): each adds a 'repair -X' row with that mechanism off (merge = the loss-aware merge; bound = no bound on retraining, retrainShare unlimited), or for negatives and auto a 'repair +X' row with it on (4 extra negatives; margins from the measured background distance)`)
          .argParser(listOption(choiceItem(ABLATIONS), 'ablations'))
          .default([], 'none'),
      )
      .option('--protocol <p>', 'sequential (N edits, then all N evaluated) | single (edit, evaluate, restore)', choiceOption(['sequential', 'single'] as const), 'sequential')
      .option('--restore <how>', 'with --protocol single: fresh (a new editor per case) | rollback', choiceOption(['fresh', 'rollback'] as const), 'fresh')
      .option('--metrics <list>', `metrics, comma-separated: ${METRIC_NAMES.join(', ')} (default: tf,exact; hallucination: tf,ppl; temporal: tf,ood)`, listOption(choiceItem(METRIC_NAMES), 'metrics'))
      .option('--batch-size <n>', 'rows per logits call of the teacher-forced metrics', intOption(1, 4096), 16)
      .option('--layer <n>', "decoder layer whose MLP down-projection gets side memories (default: the model's preset)", intOption(0))
      .option('--save-freq <n>', 'freeze the working memory every n edits (default: 500; repair 5)', intOption(1))
      .option('--merge-freq <n>', 'merge the frozen memories every n edits; a multiple of --save-freq (default: 1000; repair 10)', intOption(1))
      .option('--n-iter <n>', "optimisation steps per edit (default: the model's preset)", intOption(1, 100000))
      .option('--lr <x>', "learning rate (default: the model's preset)", floatOption((x) => x > 0, 'a number > 0'))
      .option('--seed <s>', 'seed of the context templates and shard masks (uint32, default 0)', intOption(0, 0xffffffff))
      .option('--backend <name>', 'auto | cpu | cuda (auto honours REPAIR_BACKEND)', choiceOption(['auto', 'cpu', 'cuda'] as const), 'auto')
      .option('--device <n>', 'CUDA device index', intOption(0, 1024))
      .option('--threads <n>', 'CPU threads (0 = all)', intOption(0, 4096))
      .option(
        '--routing <basis>',
        'routing scores of the edit, rephrase and locality prompts on the final model (sequential; wise/repair): tf (the teacher-forced Rel/Gen/Loc rows) | prompt (bare prompts, as generation routes them) | off',
        choiceOption(['tf', 'prompt', 'off'] as const),
        'tf',
      )
      .option('--json [file]', 'print every per-case value, timing, event count and the full configuration as JSON on stdout (instead of the table); --json FILE, the old form, still works as --json-file FILE, with a warning')
      .option('--json-file <file>', 'also write that JSON to this file (the table still goes to stdout)')
      .option('--report <file>', 'write an HTML report (results table, Rel/Gen/Loc/OP against N per method and routing-score histograms as inline SVG, per-case tables)');
    addConfigOptions(c, 'every editor option, e.g. lr, nIter, saveFreq, repair: {...}').action(async (o: EvalCliOptions, cmd: Command) => {
      if (typeof o.json === 'string') {
        if (o.jsonFile !== undefined) usageError(cmd, '--json FILE (deprecated) and --json-file cannot both be given');
        process.stderr.write(`repair-edit: warning: --json FILE is deprecated; use --json-file ${o.json} (--json alone prints the JSON on stdout)\n`);
        o.jsonFile = o.json;
        o.json = false;
      }
      if (o.data === undefined && !o.printConfig) usageError(cmd, "required option '--data <name|file>' not specified");
      if (o.saveFreq !== undefined && o.mergeFreq !== undefined && o.mergeFreq % o.saveFreq !== 0) {
        usageError(cmd, `--merge-freq (${o.mergeFreq}) must be a multiple of --save-freq (${o.saveFreq})`);
      }
      if (o.restore !== 'fresh' && o.protocol !== 'single') usageError(cmd, '--restore applies to --protocol single only');
      if (o.jsonFile !== undefined) checkWritable(o.jsonFile, '--json-file');
      if (o.report !== undefined) checkWritable(o.report, '--report');
      const cfg = o.config !== undefined ? readConfigFile(o.config) : undefined;
      const rt = mergeRuntime(cmd, o, cfg);
      const flags: EditorOptions = {};
      if (o.layer !== undefined) flags.layer = o.layer;
      if (o.saveFreq !== undefined) flags.saveFreq = o.saveFreq;
      if (o.mergeFreq !== undefined) flags.mergeFreq = o.mergeFreq;
      if (o.nIter !== undefined) flags.nIter = o.nIter;
      if (o.lr !== undefined) flags.lr = o.lr;
      if (o.seed !== undefined) flags.seed = o.seed;
      const { method: cfgMethod, ...base } = mergeEditor(cfg, flags);
      // the file's `method` stands for --method when the flag is not given
      const methods: CliMethod[] = !givenOnCli(cmd, 'method') && cfgMethod !== undefined ? [cfgMethod] : o.method;
      const variants = variantsOf(methods, o.ablate, base);
      const dir = resolveModelDir(rt.model);
      if (o.printConfig) {
        await using model = await loadModel(dir, { backend: rt.backend, device: rt.device, threads: rt.threads });
        const resolved: { label: string; method: string; editor: unknown }[] = [];
        for (const v of variants) {
          await using ed = await withConfigErrors(cfg, flags, () => Editor.create(model, { ...v.editorOptions, method: v.method }));
          resolved.push({ label: v.label ?? v.method, method: v.method, editor: ed.config });
        }
        await writeOut(`${JSON.stringify({ configFile: cfg?.file ?? null, ...rt, model: model.dir, backend: model.backend, variants: resolved }, null, 2)}\n`);
        return;
      }
      let ds: Dataset;
      try {
        ds = loadDataset(o.data!, { format: o.format, skipInvalid: o.skipInvalid, dataDir: o.dataDir });
      } catch (e) {
        if (e instanceof RepairError && e.code === 'ERR_DATASET' && e.details?.index !== undefined) {
          throw new RepairError(e.code, `${e.message} (pass --skip-invalid to drop invalid records)`, e.details);
        }
        throw e;
      }
      for (const s of ds.skipped) process.stderr.write(`repair-edit: skipped ${ds.file} record ${s.index}: ${s.message}\n`);
      const ns = [...o.n].sort((a, b) => a - b);
      const maxN = ns[ns.length - 1]!;
      const tooMany = (have: number, why = '') => usageError(cmd, `--n ${maxN} is more than the ${have} record${have === 1 ? '' : 's'} of ${ds.file}${why}`);
      if (maxN > ds.records.length) tooMany(ds.records.length);
      // a second Ctrl-C: the finished runs (not the one in progress) written at once, exit 130
      let onSecond: (() => void) | undefined;
      const intr = interruptSignal(() => onSecond?.());
      const bar = progress();
      const t0 = performance.now();
      try {
        await using model = await loadModel(dir, { backend: rt.backend, device: rt.device, threads: rt.threads, signal: intr.signal });
        // records whose training rows exceed the model's context cannot be edited: drop them with
        // --skip-invalid (reported like invalid records), else stop before any work
        // (indices of ds.records mapped to the record's index in its file)
        const long = (await withConfigErrors(cfg, flags, () => recordsTooLong(model, ds.records, base))).map((x) => ({ ...x, at: x.index, index: ds.records[x.index]!.index }));
        if (long.length) {
          const first = long[0]!;
          if (!o.skipInvalid) {
            usageError(cmd, `${ds.file} record ${first.index} has a training row of ${first.length} tokens, longer than the model's context (${first.contextLength}); ${long.length} of ${ds.records.length} records do not fit (pass --skip-invalid to drop them)`);
          }
          const drop = new Set(long.map((x) => x.at));
          for (const x of long) process.stderr.write(`repair-edit: skipped ${ds.file} record ${x.index}: a training row of ${x.length} tokens exceeds the context length ${x.contextLength}\n`);
          ds = {
            ...ds,
            records: ds.records.filter((_, i) => !drop.has(i)),
            skipped: [...ds.skipped, ...long.map((x) => ({ index: x.index, message: `a training row of ${x.length} tokens exceeds the context length ${x.contextLength}` }))],
          };
          if (maxN > ds.records.length) tooMany(ds.records.length, ` that fit the model's context`);
        }
        const records = editSlice(ds, maxN);
        const metrics: MetricName[] = o.metrics ?? (ds.format === 'hallucination' ? ['tf', 'ppl'] : ds.format === 'temporal' ? ['tf', 'ood'] : defaultMetrics(records));
        const config = () => ({
          data: o.data,
          dataset: ds.name,
          format: ds.format,
          file: ds.file,
          datasetRecords: ds.records.length,
          skipped: ds.skipped,
          irrelevant: ds.format === 'jsonl' ? 'the record\'s own "irrelevant", else record (i + N) mod len\'s locality pair, else the editor\'s pool' : 'record (i + N) mod len of the same file (its locality pair)',
          ns,
          methods,
          ablate: o.ablate,
          variants: variants.map((v) => ({ label: v.label, method: v.method, editorOptions: v.editorOptions })),
          protocol: o.protocol,
          restore: o.restore,
          metrics,
          batchSize: o.batchSize,
          routing: ROUTING_OF[o.routing] || null,
          configFile: cfg?.file ?? null,
          model: model.dir,
          backend: model.backend,
          packageVersion: packageVersion(),
          argv: process.argv.slice(2),
          wallSeconds: (performance.now() - t0) / 1000,
        });
        intr.signal.addEventListener('abort', () => process.stderr.write('\nrepair-edit: interrupted: keeping what the run in progress has (press Ctrl-C again to stop at once)\n'), { once: true });
        const finished: EvalRun[] = [];
        const runsPlanned = variants.length * ns.length;
        onSecond = () => {
          bar.stop();
          const whole = finished.filter((r) => !r.partial);
          const file = runFile(config(), partialReports(whole, variants, ns, o, metrics, ds.name), partialProgress(whole, variants, ns, o.protocol));
          const wrote = writeFiles(o, file);
          process.stderr.write(`\nrepair-edit: ERR_ABORTED: interrupted twice after ${whole.length} of ${runsPlanned} runs${wrote.length ? `; the finished runs are in ${wrote.join(' and ')} (marked partial)` : ''}\n`);
        };
        let reports: EvalReport[];
        try {
          reports = await withConfigErrors(cfg, flags, () =>
            evaluateVariants(model, records, variants, {
              ns,
              protocol: o.protocol,
              restore: o.restore,
              metrics,
              batchSize: o.batchSize,
              routing: ROUTING_OF[o.routing],
              dataset: ds.name,
              signal: intr.signal,
              keepPartial: true,
              onProgress: (p) => bar.update(p),
              onRun: (r) => {
                finished.push(r);
                if (r.partial) return;
                bar.run(`${r.label} N=${r.n}: ${r.n} edit${r.n === 1 ? '' : 's'} in ${r.timings.editSeconds.toFixed(2)} s (${f2(r.timings.secondsPerEdit, 3)} s/edit), evaluated in ${r.timings.evalSeconds.toFixed(2)} s`);
              },
            }),
          );
        } catch (e) {
          bar.stop();
          const err = toRepairError(e);
          if (err.code !== 'ERR_ABORTED') throw err;
          // Interrupted: keep the runs that finished and the part of the run in progress, marked partial.
          onSecond = undefined;
          const whole = finished.filter((r) => !r.partial).length;
          const cut = finished.find((r) => r.partial);
          const file = runFile(config(), partialReports(finished, variants, ns, o, metrics, ds.name), partialProgress(finished, variants, ns, o.protocol));
          const kept = cut ? `; kept ${cut.label} N=${cut.partial!.of} in part (${cut.partial!.editsDone} of ${cut.partial!.of} edits, ${cut.partial!.casesEvaluated} evaluated)` : '';
          const wrote = await writeResults(o, file, `repair-edit eval (PARTIAL: interrupted after ${whole} of ${runsPlanned} runs${kept}): ${ds.name}, model ${model.dir} (${model.backend})`);
          throw new RepairError('ERR_ABORTED', `interrupted after ${whole} of ${runsPlanned} runs${kept}${wrote.length ? `; the results are in ${wrote.join(' and ')} (marked partial)` : ''}`, { runsDone: whole });
        } finally {
          bar.stop();
        }
        onSecond = undefined; // complete: a late second Ctrl-C must not replace these results with fewer
        await writeResults(o, runFile(config(), reports), `repair-edit eval: ${ds.name} (${records.length} record${records.length === 1 ? '' : 's'} from ${ds.file}), model ${model.dir} (${model.backend})`);
      } finally {
        intr.done();
      }
    });
  },
};

/** Write --json-file and --report (synchronously); returns the files written. */
function writeFiles(o: EvalCliOptions, file: EvalRunFile): string[] {
  const wrote: string[] = [];
  if (o.jsonFile !== undefined) {
    writeFileAtomic(o.jsonFile, `${JSON.stringify(file, null, 2)}\n`);
    wrote.push(resolve(o.jsonFile));
  }
  if (o.report !== undefined) {
    writeFileAtomic(o.report, renderHtmlReport(file));
    wrote.push(resolve(o.report));
  }
  return wrote;
}

/** Write --json-file and --report, then the JSON (--json) or the table on stdout; returns the files written. */
async function writeResults(o: EvalCliOptions, file: EvalRunFile, title: string): Promise<string[]> {
  const wrote = writeFiles(o, file);
  if (o.json) {
    await writeOut(`${JSON.stringify(file, null, 2)}\n`);
    return wrote;
  }
  const reports = file.results;
  const t = resultsTable(reports);
  const lines = [title, '', formatTable(t.header, t.rows, t.align), '', ...legend(reports), ...routingLines(reports)];
  if (o.jsonFile !== undefined) lines.push(`JSON: ${resolve(o.jsonFile)}`);
  if (o.report !== undefined) lines.push(`report: ${resolve(o.report)}`);
  await writeOut(`${lines.join('\n')}\n`);
  return wrote;
}

/** The finished runs grouped by variant, as EvalReports whose config says what is known and that it is partial. */
function partialReports(finished: readonly EvalRun[], variants: readonly EvalVariant[], ns: readonly number[], o: EvalCliOptions, metrics: MetricName[], dataset: string): EvalReport[] {
  return variants.flatMap((v) => {
    const label = v.label ?? v.method;
    const runs = finished.filter((r) => r.label === label);
    if (!runs.length) return [];
    const config = { method: v.method, label, editorOptions: { ...v.editorOptions, method: v.method }, ns: [...ns], protocol: o.protocol, restore: o.restore, metrics, batchSize: o.batchSize, routing: ROUTING_OF[o.routing] || null, dataset, partial: true };
    return [{ format: 'repair-edit.eval', version: 1, label, config: config as unknown as EvalReport['config'], runs, totalSeconds: runs.reduce((a, r) => a + r.timings.editSeconds + r.timings.evalSeconds, 0) } satisfies EvalReport];
  });
}

function partialProgress(finished: readonly EvalRun[], variants: readonly EvalVariant[], ns: readonly number[], protocol: Protocol): NonNullable<EvalRunFile['progress']> {
  const planned = variants.flatMap((v) => ns.map((n) => ({ label: v.label ?? v.method, n })));
  const whole = finished.filter((r) => !r.partial);
  const isDone = (p: { label: string; n: number }) => whole.some((r) => r.label === p.label && r.n === p.n);
  const cut = finished.find((r) => r.partial);
  const partial = cut ? { run: cut.label, n: cut.partial!.of, protocol, ...cut.partial! } : undefined;
  return { runsDone: whole.length, runsPlanned: planned.length, done: planned.filter(isDone), notDone: planned.filter((p) => !isDone(p)), reason: 'Ctrl-C or SIGTERM', ...(partial ? { partial } : {}) };
}
