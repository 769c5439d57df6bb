// cli/eval.ts — `repair-edit eval --data zsre|counterfact|hallucination|temporal|FILE --n 1,30,120
// --method wise,repair,ft [--ablate monitor,batching,kd,merge,bound] [--routing tf|prompt|off] [--json out.json]
// [--report out.html]`: the metrics of ALGORITHM.md §3 (lib/eval.ts) for every method × N on one loaded
// model, a results table on stdout, every per-case value in JSON, and a self-contained HTML report with
// hand-written SVG plots (no script, no network): Rel/Gen/Loc/OP against N per method, and per method a
// histogram of the routing scores of the edit, rephrase and unrelated (locality) prompts on the final model
// against the routing threshold (score / threshold with the line at 1 when the memories' thresholds differ;
// the largest N shown, the other Ns folded). Routing scores are on by default (--routing tf: the teacher-
// forced Rel/Gen/Loc rows); stdout gets one line per method with the fractions routed to a side memory.

import { statSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import cliProgress from 'cli-progress';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { RepairError } from '../errors.js';
import type { EditMethod, EditorOptions } from '../editor.js';
import { REPAIR_PAPER, type RepairOptions } from '../repair.js';
import { DATASET_FORMATS, editSlice, loadDataset, NAMED_DATASETS, type Dataset, type DatasetFormat } from '../datasets.js';
import {
  defaultMetrics,
  evaluateVariants,
  METRIC_NAMES,
  recordsTooLong,
  type EvalProgress,
  type EvalReport,
  type EvalRun,
  type EvalVariant,
  type MetricName,
  type Protocol,
  type RestoreMode,
  type RoutedCount,
  type RoutePoint,
  type RoutingBasis,
} from '../eval.js';
import { loadModel, type BackendChoice } from '../model.js';
import { packageVersion } from '../info.js';
import { choiceOption, floatOption, formatTable, intOption, interruptSignal, resolveModelDir, usageError, writeOut, type CliCommand } from './common.js';

export const ABLATIONS = ['monitor', 'batching', 'kd', 'merge', 'bound', 'recalibrate', 'content', 'replay', 'negatives', 'exact', 'shards'] as const;
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
  negatives: { negatives: 0 },
  exact: { correctness: 'token' },
  shards: { keepShards: false },
};
/** 'repair-paper' = method 'repair' as the REPAIR paper specifies it (REPAIR_PAPER: every issue-12 mechanism off). */
const METHODS = ['wise', 'repair', 'repair-paper', 'ft'] as const;
type CliMethod = (typeof METHODS)[number];
const ROUTING_OF: Record<'tf' | 'prompt' | 'off', RoutingBasis | false> = { tf: 'teacher-forced', prompt: 'prompt-only', off: false };

interface EvalCliOptions {
  model?: string;
  data: string;
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
  json?: string;
  report?: string;
  routing: 'tf' | 'prompt' | 'off';
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
  const v: EvalVariant[] = methods.map((m) =>
    m === 'repair-paper' ? { label: m, method: 'repair' as const, editorOptions: { ...base, repair: { ...REPAIR_PAPER } } } : { label: m, method: m, editorOptions: { ...base } },
  );
  for (const a of ablate) v.push({ label: `repair -${a}`, method: 'repair', editorOptions: { ...base, repair: { ...ABLATION_OPTIONS[a] } } });
  return v;
}

function checkWritable(file: string, flag: string): void {
  const dir = dirname(resolve(file));
  let ok = false;
  try {
    ok = statSync(dir).isDirectory();
  } catch {
    /* reported below */
  }
  if (!ok) throw new RepairError('ERR_IO', `cannot write ${file} (${flag}): the folder ${dir} does not exist`, { file });
}

// ---- formatting ----------------------------------------------------------------------------------------

const f2 = (x: number | null | undefined, d = 2): string => (x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));

interface TableShape {
  header: string[];
  rows: string[][];
  align: ('l' | 'r')[];
}

/** One row per variant × N: Rel Gen Loc OP | EM-Rel EM-Gen | s/edit (PPL for hallucination). */
export function resultsTable(reports: readonly EvalReport[]): TableShape {
  const runs = reports.flatMap((r) => r.runs);
  const ppl = runs.some((r) => r.summary.ppl !== null);
  const ood = runs.some((r) => r.summary.metricOf.gen === 'ood');
  const em = runs.some((r) => r.summary.counts.em > 0);
  const rt = runs.some((r) => r.routing);
  const header = [
    'method',
    'N',
    'Rel',
    ood ? 'Gen(OOD)' : 'Gen',
    'Loc',
    'OP',
    ...(ppl ? ['PPL'] : []),
    '|',
    ...(em ? ['EM-Rel', 'EM-Gen', '|'] : []),
    ...(rt ? ['unrel→mem', 'route-acc', '|'] : []),
    's/edit',
  ];
  const rows = runs.map((r) => {
    const s = r.summary;
    const g = r.routing?.summary;
    return [
      r.label,
      String(r.n),
      f2(s.rel),
      f2(s.gen),
      f2(s.loc),
      f2(s.op),
      ...(ppl ? [f2(s.ppl)] : []),
      '|',
      ...(em ? [f2(s.emRel), f2(s.emGen), '|'] : []),
      ...(rt ? [f2(g?.unrelated.fraction), f2(g?.accuracy?.edit), '|'] : []),
      f2(r.timings.secondsPerEdit, 3),
    ];
  });
  return { header, rows, align: header.map((_, i) => (i === 0 ? 'l' : 'r')) };
}

function legend(reports: readonly EvalReport[]): string[] {
  const c = reports[0]!.config;
  const runs = reports.flatMap((r) => r.runs);
  const out = [
    `protocol: ${c.protocol === 'sequential' ? 'sequential (N edits, then all N evaluated on the final model)' : `single (edit one, evaluate it, restore with ${c.restore === 'fresh' ? 'a fresh editor' : 'rollback'})`}`,
    'Rel, Gen, Loc: teacher-forced token accuracy as ALGORITHM.md §3 (Loc = agreement with the pre-edit argmax); OP = (Rel*Gen*Loc)^(1/3)',
  ];
  if (runs.some((r) => r.summary.counts.em > 0)) out.push(`EM-Rel, EM-Gen: exact match of the greedy generation through the editor (beyond the reference), same protocol`);
  if (runs.some((r) => r.summary.metricOf.gen === 'ood')) out.push('Gen(OOD): fraction of ood_rephrase tokens with probability > 0.8 (the reference ood_acc)');
  if (runs.some((r) => r.summary.ppl !== null)) out.push('PPL: exp(mean NLL of the target given the prompt), lower is better (the reference Rel for hallucination)');
  const basis = runs.find((r) => r.routing)?.routing?.basis;
  if (basis) out.push(`unrel→mem: share of unrelated (locality) prompts routed to a side memory; route-acc: share of edit prompts routed to the memory that holds their edit (${basis} inputs)`);
  const pre = runs[0]!.summary.pre;
  out.push(`unedited model (first ${runs.reduce((m, r) => Math.max(m, r.n), 0)} records): Rel ${f2(pre.rel)}, Gen ${f2(pre.gen)}${pre.ppl !== null ? `, PPL ${f2(pre.ppl)}` : ''}${pre.ood !== null ? `, OOD ${f2(pre.ood)}` : ''}`);
  return out;
}

// ---- the HTML report -----------------------------------------------------------------------------------

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];

interface Series {
  label: string;
  points: { n: number; y: number | null }[];
}

/**
 * A line plot as inline SVG: x = the N values (evenly spaced, labelled), y = the metric ([0, 1] unless a value
 * falls outside, then [0, max]). One polyline per series; missing values break the line.
 */
export function svgPlot(title: string, ns: readonly number[], series: readonly Series[]): string {
  const W = 340;
  const H = 230;
  const L = 44;
  const R = 12;
  const T = 26;
  const B = 34;
  const vals = series.flatMap((s) => s.points.map((p) => p.y)).filter((y): y is number => y !== null && Number.isFinite(y));
  const yMax = vals.some((y) => y > 1) ? niceMax(Math.max(...vals)) : 1;
  const xs = (i: number) => (ns.length === 1 ? L + (W - L - R) / 2 : L + (i * (W - L - R)) / (ns.length - 1));
  const ys = (y: number) => T + (H - T - B) * (1 - y / yMax);
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)} against N">`);
  parts.push(`<text x="${W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">${esc(title)}</text>`);
  for (let k = 0; k <= 4; k++) {
    const y = (yMax * k) / 4;
    const py = ys(y).toFixed(1);
    parts.push(`<line x1="${L}" y1="${py}" x2="${W - R}" y2="${py}" stroke="#ddd" stroke-width="1"/>`);
    parts.push(`<text x="${L - 6}" y="${py}" text-anchor="end" dominant-baseline="middle" font-size="10">${esc(fmtTick(y))}</text>`);
  }
  ns.forEach((n, i) => {
    const px = xs(i).toFixed(1);
    parts.push(`<line x1="${px}" y1="${H - B}" x2="${px}" y2="${H - B + 4}" stroke="#333"/>`);
    parts.push(`<text x="${px}" y="${H - B + 15}" text-anchor="middle" font-size="10">${n}</text>`);
  });
  parts.push(`<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#333"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#333"/>`);
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle" font-size="10">N (edits)</text>`);
  series.forEach((s, si) => {
    const color = PALETTE[si % PALETTE.length]!;
    const pts = ns.map((n, i) => {
      const p = s.points.find((q) => q.n === n);
      return p && p.y !== null && Number.isFinite(p.y) ? { x: xs(i), y: ys(p.y), v: p.y } : null;
    });
    // polyline segments between consecutive present points
    let seg: string[] = [];
    const flush = () => {
      if (seg.length > 1) parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${seg.join(' ')}"/>`);
      seg = [];
    };
    for (const p of pts) {
      if (!p) flush();
      else seg.push(`${p.x.toFixed(1)},${p.y.toFixed(1)}`);
    }
    flush();
    for (const p of pts) if (p) parts.push(`<circle cx="${p.x.toFixed(1)}" cy="${p.y.toFixed(1)}" r="3.5" fill="${color}"><title>${esc(`${s.label}: ${p.v.toFixed(4)}`)}</title></circle>`);
  });
  parts.push('</svg>');
  return parts.join('');
}

function niceMax(x: number): number {
  if (!(x > 0)) return 1;
  const e = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * e >= x) return m * e;
  return 10 * e;
}

function fmtTick(y: number): string {
  return Math.abs(y) >= 100 ? y.toFixed(0) : Number(y.toFixed(2)).toString();
}

// ---- routing-score histograms ----------------------------------------------------------------------------

/** Bin counts of several groups of values over [lo, hi] in `bins` equal bins ([a, b), the last one closed). */
export interface Binned {
  lo: number;
  hi: number;
  width: number;
  /** counts[group][bin]; values outside [lo, hi] go to the first / last bin, non-finite values nowhere. */
  counts: number[][];
}

/**
 * Bin the groups over one shared range: [lo, hi] when given, else the range of the values and of `include`
 * (e.g. the threshold), widened by 3% each side (by 0.5 when it is a single point).
 */
export function binValues(groups: readonly (readonly (number | null)[])[], bins: number, range: { lo?: number; hi?: number; include?: readonly number[] } = {}): Binned {
  if (!Number.isSafeInteger(bins) || bins < 1) throw new RepairError('ERR_INVALID_ARG', `bins must be a positive integer, got ${bins}`);
  const all = [...groups.flat(), ...(range.include ?? [])].filter((v): v is number => v !== null && Number.isFinite(v));
  let lo = range.lo ?? (all.length ? Math.min(...all) : 0);
  let hi = range.hi ?? (all.length ? Math.max(...all) : 1);
  if (range.lo === undefined && range.hi === undefined) {
    if (hi > lo) {
      const pad = 0.03 * (hi - lo);
      lo -= pad;
      hi += pad;
    } else {
      lo -= 0.5;
      hi += 0.5;
    }
  }
  if (!(hi > lo)) throw new RepairError('ERR_INVALID_ARG', `empty histogram range [${lo}, ${hi}]`);
  const width = (hi - lo) / bins;
  const counts = groups.map((g) => {
    const c = new Array<number>(bins).fill(0);
    for (const v of g) {
      if (v === null || !Number.isFinite(v)) continue;
      c[Math.min(bins - 1, Math.max(0, Math.floor((v - lo) / width)))]!++;
    }
    return c;
  });
  return { lo, hi, width, counts };
}

export interface HistogramGroup {
  label: string;
  color: string;
  values: readonly (number | null)[];
  /** Shown after the label in the legend (e.g. how many were routed). */
  note?: string;
}

/** Geometry of svgHistogram (exported so tests can place the threshold line); the legend sits in the right margin R. */
export const HIST = { W: 560, H: 260, L: 44, R: 150, T: 40, B: 36 } as const;

const fmtNum = (x: number): string => (x === 0 ? '0' : Math.abs(x) >= 1e5 || Math.abs(x) < 1e-3 ? x.toExponential(2) : Number(x.toPrecision(3)).toString());

/**
 * A histogram as inline SVG: the groups side by side in each bin (one colour each, legend on the right, a
 * `<title>` tooltip and data-group / data-bin / data-count on every bar), y = counts, and a dashed
 * vertical line at `threshold` (class "threshold"). Bins with a zero count draw no bar.
 */
export function svgHistogram(title: string, xLabel: string, groups: readonly HistogramGroup[], threshold: number | null, opts: { bins?: number; lo?: number; hi?: number } = {}): string {
  const { W, H, L, R, T, B } = HIST;
  const bins = opts.bins ?? 24;
  const h = binValues(
    groups.map((g) => g.values),
    bins,
    { lo: opts.lo, hi: opts.hi, include: threshold !== null && Number.isFinite(threshold) ? [threshold] : [] },
  );
  const yMax = Math.max(1, ...h.counts.flat());
  // integer count ticks: a step of 1, 2 or 5 × 10^k giving at most 5 intervals
  let step = 1;
  for (let e = 1; step * 5 < yMax; e *= 10) step = [1, 2, 5, 10].map((m) => m * e).find((x) => x * 5 >= yMax) ?? 10 * e;
  const yTop = step * Math.ceil(yMax / step);
  const xs = (v: number) => L + ((v - h.lo) / (h.hi - h.lo)) * (W - L - R);
  const ys = (c: number) => T + (H - T - B) * (1 - c / yTop);
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">`);
  parts.push(`<text x="${W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">${esc(title)}</text>`);
  // legend (right margin): the label, then n and the note
  groups.forEach((g, gi) => {
    const n = g.values.filter((v) => v !== null && Number.isFinite(v)).length;
    const lx = W - R + 14;
    const ly = T + gi * 34;
    parts.push(`<rect x="${lx}" y="${ly}" width="10" height="10" fill="${esc(g.color)}"/>`);
    parts.push(`<text x="${lx + 14}" y="${ly + 9}" font-size="11">${esc(g.label)}</text>`);
    parts.push(`<text x="${lx + 14}" y="${ly + 22}" font-size="10" fill="#555">${esc(`n = ${n}${g.note ? `, ${g.note}` : ''}`)}</text>`);
  });
  // y grid and ticks (integer counts)
  for (let c = 0; c <= yTop; c += step) {
    const py = ys(c).toFixed(1);
    parts.push(`<line x1="${L}" y1="${py}" x2="${W - R}" y2="${py}" stroke="#eee" stroke-width="1"/>`);
    parts.push(`<text x="${L - 6}" y="${py}" text-anchor="end" dominant-baseline="middle" font-size="10">${esc(fmtTick(c))}</text>`);
  }
  // bars
  const gw = h.width / Math.max(1, groups.length);
  groups.forEach((g, gi) => {
    h.counts[gi]!.forEach((c, bi) => {
      if (c === 0) return;
      const a = h.lo + bi * h.width;
      const x0 = xs(a + gi * gw);
      const x1 = xs(a + (gi + 1) * gw);
      const y = ys(c);
      const tip = `${g.label}: ${c} in [${fmtNum(a)}, ${fmtNum(a + h.width)}${bi === bins - 1 ? ']' : ')'}`;
      parts.push(
        `<rect x="${x0.toFixed(2)}" y="${y.toFixed(1)}" width="${Math.max(0.5, x1 - x0 - 0.4).toFixed(2)}" height="${(H - B - y).toFixed(1)}" fill="${esc(g.color)}" fill-opacity="0.85" data-group="${gi}" data-bin="${bi}" data-count="${c}"><title>${esc(tip)}</title></rect>`,
      );
    });
  });
  // axes and x ticks
  parts.push(`<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#333"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#333"/>`);
  for (let k = 0; k <= 4; k++) {
    const v = h.lo + ((h.hi - h.lo) * k) / 4;
    const px = xs(v).toFixed(1);
    parts.push(`<line x1="${px}" y1="${H - B}" x2="${px}" y2="${H - B + 4}" stroke="#333"/>`);
    parts.push(`<text x="${px}" y="${H - B + 15}" text-anchor="middle" font-size="10">${esc(fmtNum(v))}</text>`);
  }
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle" font-size="10">${esc(xLabel)}</text>`);
  parts.push(`<text x="12" y="${(T + H - B) / 2}" text-anchor="middle" font-size="10" transform="rotate(-90 12 ${(T + H - B) / 2})">prompts</text>`);
  if (threshold !== null && Number.isFinite(threshold) && threshold >= h.lo && threshold <= h.hi) {
    const px = xs(threshold).toFixed(2);
    parts.push(`<line class="threshold" x1="${px}" y1="${T - 4}" x2="${px}" y2="${H - B}" stroke="#000" stroke-width="1.5" stroke-dasharray="5 3"><title>${esc(`threshold ${fmtNum(threshold)}`)}</title></line>`);
    const x = xs(threshold);
    const [tx, anchor] = x < L + 50 ? [x + 4, 'start'] : x > W - R - 50 ? [x - 4, 'end'] : [x, 'middle'];
    parts.push(`<text x="${tx.toFixed(2)}" y="${T - 6}" text-anchor="${anchor}" font-size="10">${esc(`threshold ${fmtNum(threshold)}`)}</text>`);
  }
  parts.push('</svg>');
  return parts.join('');
}

/** Colours of the routing histograms: edit, rephrase, unrelated (locality) prompts. */
export const ROUTING_COLORS = { edit: '#1f77b4', rephrase: '#ff7f0e', unrelated: '#2ca02c' } as const;

const BASIS_TEXT: Record<RoutingBasis, string> = {
  'teacher-forced': 'teacher-forced rows (prompt + answer, as Rel/Gen/Loc are measured)',
  'prompt-only': 'bare prompts (as generation routes them)',
};

/**
 * The routing histogram of one run: the top routing score of each edit, rephrase and unrelated (locality)
 * prompt against the threshold; when the points' thresholds differ (several memories), score / threshold
 * with the line at 1. Null when the run has no routing scores.
 */
export function routingPlot(run: EvalRun): string | null {
  const r = run.routing;
  if (!r) return null;
  const ratio = r.summary.thresholdsDiffer;
  const val = (p: RoutePoint | null): number | null => {
    if (!p || p.score === null) return null;
    if (!ratio) return p.score;
    return p.threshold !== null && p.threshold > 0 ? p.score / p.threshold : null;
  };
  const thr = ratio ? 1 : (r.cases.flatMap((c) => [c.edit, c.rephrase, ...c.unrelated]).find((p) => p && p.threshold !== null)?.threshold ?? null);
  const s = r.summary;
  const note = (x: RoutedCount) => `${x.routed} routed`;
  const groups: HistogramGroup[] = [
    { label: 'edit', color: ROUTING_COLORS.edit, values: r.cases.map((c) => val(c.edit)), note: note(s.edit) },
    { label: 'rephrase', color: ROUTING_COLORS.rephrase, values: r.cases.flatMap((c) => (c.rephrase ? [val(c.rephrase)] : [])), note: note(s.rephrase) },
    { label: 'unrelated', color: ROUTING_COLORS.unrelated, values: r.cases.flatMap((c) => c.unrelated.map(val)), note: note(s.unrelated) },
  ];
  const xLabel = ratio ? `score / threshold of its memory (${r.basis}; right of 1 = routed)` : `routing score (${r.basis}; right of the line = routed)`;
  return svgHistogram(`Routing scores: ${run.label}, N = ${run.n}`, xLabel, groups, thr);
}

/** One line per variant (its largest N with routing scores): the fractions routed to a side memory. */
export function routingLines(reports: readonly EvalReport[]): string[] {
  const out: string[] = [];
  for (const rep of reports) {
    const run = [...rep.runs].reverse().find((x) => x.routing);
    if (!run) continue;
    const s = run.routing!.summary;
    const c = (x: RoutedCount) => `${x.routed}/${x.prompts}`;
    const acc = s.accuracy?.edit !== null && s.accuracy?.edit !== undefined ? `; to the memory holding the edit: edit ${f2(s.accuracy.edit)}, rephrase ${f2(s.accuracy.rephrase)}` : '';
    out.push(`routed to a side memory (${run.routing!.basis}), ${run.label} N=${run.n}: edit ${c(s.edit)}, rephrase ${c(s.rephrase)}, unrelated ${c(s.unrelated)}${acc}`);
  }
  return out;
}

export interface EvalRunFile {
  format: 'repair-edit.eval-run';
  version: 1;
  config: Record<string, unknown>;
  results: EvalReport[];
}

/** The self-contained HTML report: configuration, results table, plots against N, per-case tables. */
export function renderHtmlReport(out: EvalRunFile): string {
  const reports = out.results;
  const ns = [...new Set(reports.flatMap((r) => r.runs.map((x) => x.n)))].sort((a, b) => a - b);
  const runs = reports.flatMap((r) => r.runs);
  const metric = (name: string, get: (s: EvalReport['runs'][number]['summary']) => number | null) => ({
    name,
    series: reports.map((r) => ({ label: r.label, points: r.runs.map((x) => ({ n: x.n, y: get(x.summary) })) })),
  });
  const ood = runs.some((r) => r.summary.metricOf.gen === 'ood');
  const plots = [
    metric('Rel', (s) => s.rel),
    metric(ood ? 'Gen (OOD)' : 'Gen', (s) => s.gen),
    metric('Loc', (s) => s.loc),
    metric('OP', (s) => s.op),
    ...(runs.some((r) => r.summary.counts.em > 0) ? [metric('EM-Rel (greedy generation)', (s) => s.emRel), metric('EM-Gen (greedy generation)', (s) => s.emGen)] : []),
    ...(runs.some((r) => r.summary.ppl !== null) ? [metric('PPL (lower is better)', (s) => s.ppl)] : []),
  ].filter((p) => p.series.some((s) => s.points.some((q) => q.y !== null)));
  const legendHtml = reports.map((r, i) => `<span class="key"><span class="sw" style="background:${PALETTE[i % PALETTE.length]}"></span>${esc(r.label)}</span>`).join(' ');
  const t = resultsTable(reports);
  const table = `<table><thead><tr>${t.header.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${t.rows.map((row) => `<tr>${row.map((c, i) => `<td class="${t.align[i] === 'r' ? 'r' : ''}">${esc(c)}</td>`).join('')}</tr>`).join('')}</tbody></table>`;
  const caseTables = runs
    .map((r) => {
      const routed = r.routing ? new Map(r.routing.cases.map((x) => [x.id, x])) : null;
      const yn = (p: RoutePoint | null | undefined) => (p ? (p.routed ? 'yes' : 'no') : '-');
      const routeCells = (id: string) => {
        const x = routed!.get(id);
        return `<td>${yn(x?.edit)}</td><td>${yn(x?.rephrase)}</td><td>${x && x.unrelated.length ? `${x.unrelated.filter((p) => p.routed).length}/${x.unrelated.length}` : '-'}</td>`;
      };
      const head = ['id', 'Rel', 'Gen', 'Loc', 'PPL', 'OOD', 'EM-Rel', 'EM-Gen', ...(routed ? ['routed: edit', 'rephrase', 'unrelated'] : []), 'generated (Rel prompt)'];
      const body = r.cases
        .map(
          (c) =>
            `<tr><td>${esc(c.id)}</td><td class="r">${f2(c.rel)}</td><td class="r">${f2(c.gen)}</td><td class="r">${f2(c.loc)}</td><td class="r">${f2(c.ppl)}</td><td class="r">${f2(c.ood)}</td><td>${c.emRel === null ? '-' : c.emRel ? 'yes' : 'no'}</td><td>${c.emGen === null ? '-' : c.emGen ? 'yes' : 'no'}</td>${routed ? routeCells(c.id) : ''}<td>${esc(c.genRel ?? '')}</td></tr>`,
        )
        .join('');
      const ev = Object.entries(r.events)
        .map(([k, v]) => `${esc(k)} ${v}`)
        .join(', ');
      return `<details><summary>${esc(r.label)}, N = ${r.n}: ${r.cases.length} cases; edit ${r.timings.editSeconds.toFixed(2)} s, eval ${r.timings.evalSeconds.toFixed(2)} s${ev ? `; events: ${ev}` : ''}</summary><table><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${body}</tbody></table></details>`;
    })
    .join('\n');
  // Routing histograms: each variant at its largest N up front, the other Ns folded away.
  const routingHtml = (() => {
    const withRouting = reports.map((r) => r.runs.filter((x) => x.routing));
    if (!withRouting.some((x) => x.length)) return '';
    const fig = (x: EvalRun) => `<figure>${routingPlot(x)}</figure>`;
    const main = withRouting.filter((x) => x.length).map((x) => fig(x[x.length - 1]!));
    const rest = withRouting.flatMap((x) => x.slice(0, -1)).map(fig);
    const bases = [...new Set(runs.flatMap((x) => (x.routing ? [x.routing.basis] : [])))];
    const lines = routingLines(reports);
    return `<h2>Routing scores</h2>
<p class="note">Per prompt, the top side-memory routing score on the final edited model (ALGORITHM.md §1.9), taken on ${esc(bases.map((b) => BASIS_TEXT[b]).join('; '))}: for edit prompts (should clear the threshold), their rephrases (should too) and the locality prompts (unrelated: should not). The dashed line is the threshold; where the memories' thresholds differ the x axis is score / threshold of the memory compared, with the line at 1. Methods without a router (ft) have no plot.</p>
${lines.map((l) => `<p class="note">${esc(l)}</p>`).join('\n')}
<div class="plots">
${main.join('\n')}
</div>
${rest.length ? `<details><summary>routing scores at the other N</summary><div class="plots">\n${rest.join('\n')}\n</div></details>` : ''}`;
  })();
  const c = out.config as { data?: string; file?: string; model?: string; backend?: string };
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>repair-edit eval: ${esc(String(c.data ?? ''))}</title>
<style>
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; }
td.r { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots figure { margin: 0; border: 1px solid #eee; padding: 4px; }
.key { margin-right: 14px; font-size: 13px; }
.sw { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: middle; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
.note { color: #555; font-size: 13px; }
</style>
</head>
<body>
<h1>repair-edit eval</h1>
<p>Dataset <b>${esc(String(c.data ?? ''))}</b> (${esc(String(c.file ?? ''))}); model ${esc(String(c.model ?? ''))} on ${esc(String(c.backend ?? ''))}; repair-edit ${esc(packageVersion())}.</p>
${legend(reports)
  .map((l) => `<p class="note">${esc(l)}</p>`)
  .join('\n')}
<h2>Results</h2>
${table}
<h2>Against N</h2>
<p>${legendHtml}</p>
<div class="plots">
${plots.map((p) => `<figure>${svgPlot(p.name, ns, p.series)}</figure>`).join('\n')}
</div>
${routingHtml}
<h2>Per case</h2>
${caseTables}
<h2>Configuration</h2>
<details><summary>full configuration (JSON)</summary><pre>${esc(JSON.stringify({ run: out.config, variants: reports.map((r) => r.config) }, null, 2))}</pre></details>
</body>
</html>
`;
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

export const evalCommand: CliCommand = {
  name: 'eval',
  register(program: Command): void {
    program
      .command('eval')
      .description('measure editors as ALGORITHM.md §3 does (Rel, Gen, Loc, OP; PPL / OOD where the set has them) plus exact match of the greedy generation, for every method × N')
      .requiredOption(
        '--data <name|file>',
        `${Object.keys(NAMED_DATASETS).join(' | ')} (looked for in --data-dir, then REPAIR_DATA_DIR, then ../shared/data beside a checkout, then the slices shipped in the package) or a file: a .json array in one of those formats, or .jsonl with {prompt, target, rephrase?, locality?: [{prompt, answer}]} per line`,
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
        new Option('--ablate <list>', `REPAIR ablations, comma-separated (${ABLATIONS.join(', ')}): each adds a 'repair -X' row with that mechanism off (merge = the loss-aware merge; bound = no bound on retraining, retrainShare unlimited)`)
          .argParser(listOption(choiceItem(ABLATIONS), 'ablations'))
          .default([], 'none'),
      )
      .option('--protocol <p>', "sequential (N edits, then all N evaluated) | single (edit, evaluate, restore)", choiceOption(['sequential', 'single'] as const), 'sequential')
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
      .option('--json <file>', 'write every per-case value, timing, event count and the full configuration as JSON')
      .option('--report <file>', 'write an HTML report (results table, Rel/Gen/Loc/OP against N per method and routing-score histograms as inline SVG, per-case tables)')
      .action(async (o: EvalCliOptions, cmd: Command) => {
        if (o.saveFreq !== undefined && o.mergeFreq !== undefined && o.mergeFreq % o.saveFreq !== 0) {
          usageError(cmd, `--merge-freq (${o.mergeFreq}) must be a multiple of --save-freq (${o.saveFreq})`);
        }
        if (o.restore !== 'fresh' && o.protocol !== 'single') usageError(cmd, '--restore applies to --protocol single only');
        if (o.json !== undefined) checkWritable(o.json, '--json');
        if (o.report !== undefined) checkWritable(o.report, '--report');
        let ds: Dataset;
        try {
          ds = loadDataset(o.data, { format: o.format, skipInvalid: o.skipInvalid, dataDir: o.dataDir });
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
        const base: EditorOptions = {};
        if (o.layer !== undefined) base.layer = o.layer;
        if (o.saveFreq !== undefined) base.saveFreq = o.saveFreq;
        if (o.mergeFreq !== undefined) base.mergeFreq = o.mergeFreq;
        if (o.nIter !== undefined) base.nIter = o.nIter;
        if (o.lr !== undefined) base.lr = o.lr;
        if (o.seed !== undefined) base.seed = o.seed;
        const variants = variantsOf(o.method, o.ablate, base);
        const dir = resolveModelDir(o.model);
        const intr = interruptSignal();
        const bar = progress();
        const t0 = performance.now();
        try {
          await using model = await loadModel(dir, { backend: o.backend, device: o.device, threads: o.threads, signal: intr.signal });
          // records whose training rows exceed the model's context cannot be edited: drop them with
          // --skip-invalid (reported like invalid records), else stop before any work
          // (indices of ds.records mapped to the record's index in its file)
          const long = (await recordsTooLong(model, ds.records, base)).map((x) => ({ ...x, at: x.index, index: ds.records[x.index]!.index }));
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
          let reports: EvalReport[];
          try {
            reports = await evaluateVariants(model, records, variants, {
              ns,
              protocol: o.protocol,
              restore: o.restore,
              metrics,
              batchSize: o.batchSize,
              routing: ROUTING_OF[o.routing],
              dataset: ds.name,
              signal: intr.signal,
              onProgress: (p) => bar.update(p),
              onRun: (r) =>
                bar.run(
                  `${r.label} N=${r.n}: ${r.n} edit${r.n === 1 ? '' : 's'} in ${r.timings.editSeconds.toFixed(2)} s (${f2(r.timings.secondsPerEdit, 3)} s/edit), evaluated in ${r.timings.evalSeconds.toFixed(2)} s`,
                ),
            });
          } finally {
            bar.stop();
          }
          const file: EvalRunFile = {
            format: 'repair-edit.eval-run',
            version: 1,
            config: {
              data: o.data,
              dataset: ds.name,
              format: ds.format,
              file: ds.file,
              datasetRecords: ds.records.length,
              skipped: ds.skipped,
              irrelevant: ds.format === 'jsonl' ? 'the record\'s own "irrelevant", else record (i + N) mod len\'s locality pair, else the editor\'s pool' : 'record (i + N) mod len of the same file (its locality pair)',
              ns,
              methods: o.method,
              ablate: o.ablate,
              variants: variants.map((v) => ({ label: v.label, method: v.method, editorOptions: v.editorOptions })),
              protocol: o.protocol,
              restore: o.restore,
              metrics,
              batchSize: o.batchSize,
              routing: ROUTING_OF[o.routing] || null,
              model: model.dir,
              backend: model.backend,
              packageVersion: packageVersion(),
              argv: process.argv.slice(2),
              wallSeconds: (performance.now() - t0) / 1000,
            },
            results: reports,
          };
          if (o.json !== undefined) writeFileSync(o.json, `${JSON.stringify(file, null, 2)}\n`);
          if (o.report !== undefined) writeFileSync(o.report, renderHtmlReport(file));
          const t = resultsTable(reports);
          const lines = [
            `repair-edit eval: ${ds.name} (${records.length} record${records.length === 1 ? '' : 's'} from ${ds.file}), model ${model.dir} (${model.backend})`,
            '',
            formatTable(t.header, t.rows, t.align),
            '',
            ...legend(reports),
            ...routingLines(reports),
          ];
          if (o.json !== undefined) lines.push(`JSON: ${resolve(o.json)}`);
          if (o.report !== undefined) lines.push(`report: ${resolve(o.report)}`);
          await writeOut(`${lines.join('\n')}\n`);
        } finally {
          intr.done();
        }
      });
  },
};
