// cli/eval_report.ts — the self-contained HTML report of `repair-edit eval` (no script, no network):
// the results table, Rel/Gen/Loc/OP against N per method as inline SVG line plots, per method a histogram
// of the routing scores of the edit, rephrase and unrelated prompts against the routing threshold, and
// per-case tables. Scales, round ticks and histogram bins come from d3-scale / d3-array; the SVGs size
// themselves to the page (viewBox, width 100%), so the report uses the window's full width. A report of
// an interrupted run carries a banner saying it is partial.

import { bin as d3bin, thresholdSturges } from 'd3-array';
import { scaleLinear, scalePoint } from 'd3-scale';
import { RepairError } from '../errors.js';
import type { EvalReport, EvalRun, RoutedCount, RoutePoint, RoutingBasis } from '../eval.js';
import { packageVersion } from '../info.js';
import { f2, legend, resultsTable, routingLines } from './eval_table.js';

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
export const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];

export interface Series {
  label: string;
  points: { n: number; y: number | null }[];
}

/** Geometry of svgPlot's viewBox (the SVG scales to its box). */
export const PLOT = { W: 340, H: 230, L: 44, R: 12, T: 26, B: 34 } as const;

/**
 * A line plot as inline SVG: x = the N values (evenly spaced, labelled), y = the metric on [0, 1], or on
 * [0, max] rounded up to a round number when a value is above 1 (PPL); round ticks. One polyline per
 * series; missing values break the line.
 */
export function svgPlot(title: string, ns: readonly number[], series: readonly Series[]): string {
  const { W, H, L, R, T, B } = PLOT;
  const vals = series.flatMap((s) => s.points.map((p) => p.y)).filter((y): y is number => y !== null && Number.isFinite(y));
  const y = scaleLinear()
    .domain([0, vals.some((v) => v > 1) ? Math.max(...vals) : 1])
    .nice(5)
    .range([H - B, T]);
  const x = scalePoint<number>()
    .domain([...ns])
    .range([L, W - R])
    .padding(ns.length === 1 ? 0.5 : 0.25);
  const fmt = y.tickFormat(5);
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)} against N">`);
  parts.push(`<text x="${W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">${esc(title)}</text>`);
  for (const t of y.ticks(5)) {
    const py = y(t).toFixed(1);
    parts.push(`<line x1="${L}" y1="${py}" x2="${W - R}" y2="${py}" stroke="#ddd" stroke-width="1"/>`);
    parts.push(`<text x="${L - 6}" y="${py}" text-anchor="end" dominant-baseline="middle" font-size="10">${esc(fmt(t))}</text>`);
  }
  for (const n of ns) {
    const px = x(n)!.toFixed(1);
    parts.push(`<line x1="${px}" y1="${H - B}" x2="${px}" y2="${H - B + 4}" stroke="#333"/>`);
    parts.push(`<text x="${px}" y="${H - B + 15}" text-anchor="middle" font-size="10">${n}</text>`);
  }
  parts.push(`<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#333"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#333"/>`);
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle" font-size="10">N (edits)</text>`);
  series.forEach((s, si) => {
    const color = PALETTE[si % PALETTE.length]!;
    const pts = ns.map((n) => {
      const p = s.points.find((q) => q.n === n);
      return p && p.y !== null && Number.isFinite(p.y) ? { x: x(n)!, y: y(p.y), v: p.y } : null;
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

// ---- routing-score histograms ----------------------------------------------------------------------------

/** Bin counts of several groups of values over [lo, hi]: bins [a, b), the last one closed. */
export interface Binned {
  lo: number;
  hi: number;
  /** The bins' common width. */
  width: number;
  /** The bin edges, lo first, hi last (edges.length = bins + 1). */
  edges: number[];
  /** counts[group][bin]; values outside [lo, hi] go to the first / last bin, non-finite values nowhere. */
  counts: number[][];
}

/**
 * Bin the groups over one shared range. With lo and hi given: `bins` equal bins over exactly [lo, hi].
 * Otherwise the range of the values and of `include` (e.g. the threshold) is widened to round numbers
 * (d3's nice) and cut at round edges: about `bins` of them, by default Sturges' rule on the number of
 * values (at least 5, at most 20), so a few prompts get a few wide bins, not a rug of thin ones.
 */
export function binValues(groups: readonly (readonly (number | null)[])[], bins?: number, range: { lo?: number; hi?: number; include?: readonly number[] } = {}): Binned {
  if (bins !== undefined && (!Number.isSafeInteger(bins) || bins < 1)) throw new RepairError('ERR_INVALID_ARG', `bins must be a positive integer, got ${bins}`);
  const finite = groups.flat().filter((v): v is number => v !== null && Number.isFinite(v));
  const all = [...finite, ...(range.include ?? [])].filter((v) => Number.isFinite(v));
  let edges: number[];
  if (range.lo !== undefined && range.hi !== undefined) {
    const { lo, hi } = range;
    if (!(hi > lo)) throw new RepairError('ERR_INVALID_ARG', `empty histogram range [${lo}, ${hi}]`);
    const k = bins ?? 10;
    edges = Array.from({ length: k + 1 }, (_, i) => (i === k ? hi : lo + ((hi - lo) * i) / k));
  } else {
    let lo = range.lo ?? (all.length ? Math.min(...all) : 0);
    let hi = range.hi ?? (all.length ? Math.max(...all) : 1);
    if (!(hi > lo)) {
      lo -= 0.5;
      hi += 0.5;
    }
    const k = bins ?? Math.min(20, Math.max(5, thresholdSturges(finite)));
    const s = scaleLinear().domain([lo, hi]).nice(k);
    edges = s.ticks(k);
    const [d0, d1] = s.domain() as [number, number];
    if (edges[0] !== d0) edges.unshift(d0);
    if (edges[edges.length - 1] !== d1) edges.push(d1);
  }
  const lo = edges[0]!;
  const hi = edges[edges.length - 1]!;
  const binner = d3bin<number, number>().domain([lo, hi]).thresholds(edges.slice(1, -1));
  const counts = groups.map((g) => {
    const vs = g.filter((v): v is number => v !== null && Number.isFinite(v)).map((v) => Math.min(hi, Math.max(lo, v)));
    return binner(vs).map((b) => b.length);
  });
  return { lo, hi, width: (hi - lo) / (edges.length - 1), edges, counts };
}

export interface HistogramGroup {
  label: string;
  color: string;
  values: readonly (number | null)[];
  /** Shown after the label in the legend (e.g. how many were routed). */
  note?: string;
}

/** Geometry of svgHistogram's viewBox (exported so tests can place the threshold line); the legend sits in the right margin R. */
export const HIST = { W: 560, H: 260, L: 44, R: 150, T: 40, B: 36 } as const;

const fmtNum = (x: number): string => (x === 0 ? '0' : Math.abs(x) >= 1e5 || Math.abs(x) < 1e-3 ? x.toExponential(2) : Number(x.toPrecision(3)).toString());

/**
 * A histogram as inline SVG: the groups side by side in each bin (one colour each, legend on the right, a
 * `<title>` tooltip and data-group / data-bin / data-count on every bar), y = counts with integer ticks,
 * round x ticks, and a dashed vertical line at `threshold` (class "threshold"). Empty bins draw no bar.
 */
export function svgHistogram(title: string, xLabel: string, groups: readonly HistogramGroup[], threshold: number | null, opts: { bins?: number; lo?: number; hi?: number } = {}): string {
  const { W, H, L, R, T, B } = HIST;
  const h = binValues(
    groups.map((g) => g.values),
    opts.bins,
    { lo: opts.lo, hi: opts.hi, include: threshold !== null && Number.isFinite(threshold) ? [threshold] : [] },
  );
  const nb = h.edges.length - 1;
  const yMax = Math.max(1, ...h.counts.flat());
  const y = scaleLinear().domain([0, yMax]).nice(Math.min(5, yMax)).range([H - B, T]);
  const x = scaleLinear().domain([h.lo, h.hi]).range([L, W - R]);
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">`);
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
  for (const c of y.ticks(Math.min(5, yMax)).filter((t) => Number.isInteger(t))) {
    const py = y(c).toFixed(1);
    parts.push(`<line x1="${L}" y1="${py}" x2="${W - R}" y2="${py}" stroke="#eee" stroke-width="1"/>`);
    parts.push(`<text x="${L - 6}" y="${py}" text-anchor="end" dominant-baseline="middle" font-size="10">${c}</text>`);
  }
  // bars: each bin split between the groups
  const gw = h.width / Math.max(1, groups.length);
  groups.forEach((g, gi) => {
    h.counts[gi]!.forEach((c, bi) => {
      if (c === 0) return;
      const a = h.edges[bi]!;
      const x0 = x(a + gi * gw);
      const x1 = x(a + (gi + 1) * gw);
      const py = y(c);
      const tip = `${g.label}: ${c} in [${fmtNum(a)}, ${fmtNum(h.edges[bi + 1]!)}${bi === nb - 1 ? ']' : ')'}`;
      parts.push(
        `<rect x="${x0.toFixed(2)}" y="${py.toFixed(1)}" width="${Math.max(0.5, x1 - x0 - 0.4).toFixed(2)}" height="${(H - B - py).toFixed(1)}" fill="${esc(g.color)}" fill-opacity="0.85" data-group="${gi}" data-bin="${bi}" data-count="${c}"><title>${esc(tip)}</title></rect>`,
      );
    });
  });
  // axes and round x ticks
  parts.push(`<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#333"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#333"/>`);
  const xf = x.tickFormat(6);
  for (const v of x.ticks(6)) {
    const px = x(v).toFixed(1);
    parts.push(`<line x1="${px}" y1="${H - B}" x2="${px}" y2="${H - B + 4}" stroke="#333"/>`);
    parts.push(`<text x="${px}" y="${H - B + 15}" text-anchor="middle" font-size="10">${esc(xf(v))}</text>`);
  }
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle" font-size="10">${esc(xLabel)}</text>`);
  parts.push(`<text x="12" y="${(T + H - B) / 2}" text-anchor="middle" font-size="10" transform="rotate(-90 12 ${(T + H - B) / 2})">prompts</text>`);
  if (threshold !== null && Number.isFinite(threshold) && threshold >= h.lo && threshold <= h.hi) {
    const tx0 = x(threshold);
    const px = tx0.toFixed(2);
    parts.push(`<line class="threshold" x1="${px}" y1="${T - 4}" x2="${px}" y2="${H - B}" stroke="#000" stroke-width="1.5" stroke-dasharray="5 3"><title>${esc(`threshold ${fmtNum(threshold)}`)}</title></line>`);
    const [tx, anchor] = tx0 < L + 50 ? [tx0 + 4, 'start'] : tx0 > W - R - 50 ? [tx0 - 4, 'end'] : [tx0, 'middle'];
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


export interface EvalRunFile {
  format: 'repair-edit.eval-run';
  version: 1;
  /** true when the run was interrupted: `results` hold the runs (variant × N) that finished. */
  partial?: boolean;
  /** For a partial file: which runs finished and which did not. */
  progress?: {
    runsDone: number;
    runsPlanned: number;
    done: { label: string; n: number }[];
    notDone: { label: string; n: number }[];
    reason: string;
    /** The run in progress when interrupted, kept in part (in `results`, with run.partial): N = editsDone. */
    partial?: { run: string; n: number; protocol: 'sequential' | 'single'; editsDone: number; of: number; casesEvaluated: number; phase: 'edit' | 'eval' };
  };
  config: Record<string, unknown>;
  results: EvalReport[];
}

/** The self-contained HTML report: configuration, results table, plots against N, per-case tables. */
export function renderHtmlReport(out: EvalRunFile): string {
  const reports = out.results;
  // the plots against N hold the complete runs; a partial run (run.partial) is in the table and per-case tables
  const ns = [...new Set(reports.flatMap((r) => r.runs.filter((x) => !x.partial).map((x) => x.n)))].sort((a, b) => a - b);
  const runs = reports.flatMap((r) => r.runs);
  const metric = (name: string, get: (s: EvalReport['runs'][number]['summary']) => number | null) => ({
    name,
    series: reports.map((r) => ({ label: r.label, points: r.runs.filter((x) => !x.partial).map((x) => ({ n: x.n, y: get(x.summary) })) })),
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
  const cls = (i: number) => [t.align[i] === 'r' ? 'r' : '', t.groupStarts.includes(i) ? 'gs' : ''].filter(Boolean).join(' ');
  const table = `<table class="results"><thead><tr>${t.header.map((h, i) => `<th class="${cls(i)}">${esc(h)}</th>`).join('')}</tr></thead><tbody>${t.rows.map((row) => `<tr>${row.map((c, i) => `<td class="${cls(i)}">${esc(c)}</td>`).join('')}</tr>`).join('')}</tbody></table>`;
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
      const cut = r.partial ? ` (partial: ${r.partial.editsDone} of ${r.partial.of} edits made, ${r.partial.casesEvaluated} evaluated)` : '';
      return `<details><summary>${esc(r.label)}, N = ${r.n}${cut}: ${r.cases.length} cases; edit ${r.timings.editSeconds.toFixed(2)} s, eval ${r.timings.evalSeconds.toFixed(2)} s${ev ? `; events: ${ev}` : ''}</summary><table><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${body}</tbody></table></details>`;
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
<p class="note">Per prompt, the top side-memory routing score on the final edited model (docs/algorithm.md, “Routing”), taken on ${esc(bases.map((b) => BASIS_TEXT[b]).join('; '))}: for edit prompts (should clear the threshold), their rephrases (should too) and the locality prompts (unrelated: should not). The dashed line is the threshold; where the memories' thresholds differ the x axis is score / threshold of the memory compared, with the line at 1. Methods without a router (ft) have no plot.</p>
${lines.map((l) => `<p class="note">${esc(l)}</p>`).join('\n')}
<div class="plots hist">
${main.join('\n')}
</div>
${rest.length ? `<details><summary>routing scores at the other N</summary><div class="plots hist">\n${rest.join('\n')}\n</div></details>` : ''}`;
  })();
  const c = out.config as { data?: string; file?: string; model?: string; backend?: string };
  const p = out.progress;
  const banner = out.partial
    ? `<p class="banner" role="alert">Partial results: the run was interrupted (${esc(p?.reason ?? 'a signal')}) after ${p?.runsDone ?? runs.length} of ${p?.runsPlanned ?? '?'} runs (method × N). Only finished runs are shown${p?.notDone.length ? `; not run or not finished: ${esc(p.notDone.map((x) => `${x.label} N=${x.n}`).join(', '))}` : ''}.${p?.partial ? ` Kept in part: ${esc(p.partial.run)} N=${p.partial.of}, ${p.partial.editsDone} of ${p.partial.of} edits made and ${p.partial.casesEvaluated} evaluated (${p.partial.protocol === 'single' ? 'the cases done' : p.partial.phase === 'edit' ? `editing stopped at an edit boundary: a sequential result at N = ${p.partial.editsDone}` : 'interrupted while evaluating'}), in the table as N = ${p.partial.editsDone} (partial), not in the plots.` : ''}</p>`
    : '';
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>repair-edit eval: ${esc(String(c.data ?? ''))}</title>
<style>
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 16px 20px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
table.results { width: 100%; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
th.gs, td.gs { border-left: 3px double #999; }
details table { width: 100%; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(290px, 1fr)); gap: 12px; }
.plots.hist { grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); }
.plots figure { margin: 0; border: 1px solid #eee; padding: 4px; }
.plots svg { display: block; width: 100%; height: auto; }
.key { margin-right: 14px; font-size: 13px; }
.sw { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: middle; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
.note { color: #555; font-size: 13px; }
.banner { background: #fff3cd; border: 2px solid #e0a800; color: #5c4400; padding: 8px 12px; font-weight: bold; }
</style>
</head>
<body>
<h1>repair-edit eval${out.partial ? ' (partial)' : ''}</h1>
${banner}
<p>Dataset <b>${esc(String(c.data ?? ''))}</b> (${esc(String(c.file ?? ''))}); model ${esc(String(c.model ?? ''))} on ${esc(String(c.backend ?? ''))}; repair-edit ${esc(packageVersion())}.</p>
${legend(reports)
  .map((l) => `<p class="note">${esc(l)}</p>`)
  .join('\n')}
<p class="note">What the metrics and the routing mean: docs/metrics.md and docs/algorithm.md in the repair-edit package.</p>
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
