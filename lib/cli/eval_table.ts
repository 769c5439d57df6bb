// cli/eval_table.ts — the text side of `repair-edit eval`: the results table (one row per variant × N,
// its column groups), the legend lines that say what each column measures (citing docs/metrics.md), and
// the one-line routing summaries. Shared by stdout and the HTML report (lib/cli/eval_report.ts).

import type { EvalReport, RoutedCount } from '../eval.js';

export const f2 = (x: number | null | undefined, d = 2): string => (x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));

export interface TableShape {
  header: string[];
  rows: string[][];
  align: ('l' | 'r')[];
  /** Indices of the columns that start a new group (the HTML report draws a rule before them). */
  groupStarts: number[];
}

/** One row per variant × N: Rel Gen Loc OP [PPL] · EM-Rel EM-Gen · unrel→mem route-acc · s/edit. */
export function resultsTable(reports: readonly EvalReport[]): TableShape {
  const runs = reports.flatMap((r) => r.runs);
  const ppl = runs.some((r) => r.summary.ppl !== null);
  const ood = runs.some((r) => r.summary.metricOf.gen === 'ood');
  const em = runs.some((r) => r.summary.counts.em > 0);
  const rt = runs.some((r) => r.routing);
  const header = ['method', 'N', 'Rel', ood ? 'Gen(OOD)' : 'Gen', 'Loc', 'OP', ...(ppl ? ['PPL'] : [])];
  const groupStarts: number[] = [];
  const group = (cols: string[]) => {
    groupStarts.push(header.length);
    header.push(...cols);
  };
  if (em) group(['EM-Rel', 'EM-Gen']);
  if (rt) group(['unrel→mem', 'route-acc']);
  group(['s/edit']);
  const rows = runs.map((r) => {
    const s = r.summary;
    const g = r.routing?.summary;
    return [
      r.label,
      r.partial ? `${r.n} of ${r.partial.of}*` : String(r.n),
      f2(s.rel),
      f2(s.gen),
      f2(s.loc),
      f2(s.op),
      ...(ppl ? [f2(s.ppl)] : []),
      ...(em ? [f2(s.emRel), f2(s.emGen)] : []),
      ...(rt ? [f2(g?.unrelated.fraction), f2(g?.accuracy?.edit)] : []),
      f2(r.timings.secondsPerEdit, 3),
    ];
  });
  return { header, rows, align: header.map((_, i) => (i === 0 ? 'l' : 'r')), groupStarts };
}

/** What the columns mean, one line each (stdout and the report). */
export function legend(reports: readonly EvalReport[]): string[] {
  if (!reports.length) return [];
  const c = reports[0]!.config;
  const runs = reports.flatMap((r) => r.runs);
  const out = [
    `protocol: ${c.protocol === 'sequential' ? 'sequential (N edits, then all N evaluated on the final model)' : `single (edit one, evaluate it, restore with ${c.restore === 'fresh' ? 'a fresh editor' : 'rollback'})`}`,
    'Rel, Gen, Loc: teacher-forced token accuracy (docs/metrics.md; Loc = agreement with the pre-edit argmax); OP = (Rel*Gen*Loc)^(1/3)',
  ];
  if (runs.some((r) => r.summary.counts.em > 0)) out.push(`EM-Rel, EM-Gen: exact match of the greedy generation through the editor (beyond the reference), same protocol`);
  if (runs.some((r) => r.summary.metricOf.gen === 'ood')) out.push('Gen(OOD): fraction of ood_rephrase tokens with probability > 0.8 (the reference ood_acc)');
  if (runs.some((r) => r.summary.ppl !== null)) out.push('PPL: exp(mean NLL of the target given the prompt), lower is better (the reference Rel for hallucination)');
  const basis = runs.find((r) => r.routing)?.routing?.basis;
  if (basis) out.push(`unrel→mem: share of unrelated (locality) prompts routed to a side memory; route-acc: share of edit prompts routed to the memory that holds their edit (${basis} inputs)`);
  const cut = runs.find((r) => r.partial);
  if (cut) out.push(`*: partial (interrupted): ${cut.partial!.editsDone} of ${cut.partial!.of} edits made, figures over the ${cut.partial!.casesEvaluated} case${cut.partial!.casesEvaluated === 1 ? '' : 's'} evaluated`);
  if (runs.length) {
    const pre = runs[0]!.summary.pre;
    out.push(`unedited model (first ${runs.reduce((m, r) => Math.max(m, r.n), 0)} records): Rel ${f2(pre.rel)}, Gen ${f2(pre.gen)}${pre.ppl !== null ? `, PPL ${f2(pre.ppl)}` : ''}${pre.ood !== null ? `, OOD ${f2(pre.ood)}` : ''}`);
  }
  return out;
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
