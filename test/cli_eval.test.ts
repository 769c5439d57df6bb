// `repair-edit eval` end to end on the shipped stories260K (tsx lib/cli.ts ..., as a user runs it): the
// results table, the JSON file (schema, every per-case value, the configuration, the routing scores), the
// HTML report (written, self-contained, its SVG plots well formed, one routing-score histogram per method
// whose bars add up to the prompts routed), and the exit codes of bad arguments and data. The histogram
// and line-plot renderers on hand-made inputs (bins, edges, the threshold line's position, escaping).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../lib/native.js';
import { packageRoot } from '../lib/paths.js';
import { sharedDataDir, NAMED_DATASETS } from '../lib/datasets.js';
import { variantsOf } from '../lib/cli/eval.js';
import { binValues, HIST, renderHtmlReport, routingPlot, svgHistogram, svgPlot } from '../lib/cli/eval_report.js';
import { summarizeRouting, type EvalRun, type RoutePoint, type RoutingCase } from '../lib/eval.js';
import { cliRunner, type CliRun as Run } from './helpers/cli.js';

const ROOT = packageRoot();
const haveDemo = existsSync(join(ROOT, 'models', 'stories260K', 'config.json'));
const haveAddon = (() => {
  try {
    native();
    return true;
  } catch {
    return false;
  }
})();
const haveHall = existsSync(join(sharedDataDir(), NAMED_DATASETS.hallucination));
if (!haveAddon || !haveDemo) console.warn('[cli_eval.test] the native addon or models/stories260K is missing: CLI runs that load a model are skipped');

const cli = cliRunner('source', { timeoutMs: 110_000, env: { REPAIR_BACKEND: 'cpu' } });

let tmp: string;
let data: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-cli-eval-'));
  data = join(tmp, 'two.jsonl');
  writeFileSync(
    data,
    [
      JSON.stringify({ id: 'zog', prompt: 'The wizard Zog lived in', target: 'a purple castle', rephrase: 'Zog the wizard made his home in', locality: [{ prompt: 'Once upon a time', answer: 'there was a little girl' }] }),
      JSON.stringify({ id: 'blix', prompt: 'The dragon Blix liked to eat', target: 'blue cheese', rephrase: 'The favourite food of Blix was', locality: [{ prompt: 'Lily and Tom went to the', answer: 'park to play' }] }),
    ].join('\n') + '\n',
  );
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

/** Every <svg>...</svg> of a page, checked for balanced tags and numeric coordinates. */
function svgs(html: string): string[] {
  const out = html.match(/<svg[\s\S]*?<\/svg>/g) ?? [];
  for (const s of out) {
    const open = (s.match(/<(polyline|line|circle|text|title|rect)\b/g) ?? []).length;
    const selfClosed = (s.match(/<(polyline|line|circle|rect)\b[^>]*\/>/g) ?? []).length;
    const closed = (s.match(/<\/(polyline|line|circle|text|title|rect)>/g) ?? []).length;
    expect(open).toBe(selfClosed + closed);
    for (const m of s.matchAll(/\b(?:x|y|x1|x2|y1|y2|cx|cy|width|height)="([^"]*)"/g)) expect(Number.isFinite(Number(m[1])), m[0]).toBe(true);
    for (const m of s.matchAll(/points="([^"]*)"/g)) for (const p of m[1]!.split(' ')) expect(p).toMatch(/^-?\d+(\.\d+)?,-?\d+(\.\d+)?$/);
  }
  return out;
}

/**
 * A strict XML well-formedness check of one fragment: every tag is `<name attr="v" ...>`, `</name>` or
 * `<name .../>`, tags nest, attribute values and text hold no raw `<` and only known entities after `&`.
 */
function wellFormed(xml: string): void {
  const stack: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/y;
  const text = /[^<]*/y;
  let i = 0;
  const entities = (t: string) => expect(t.replace(/&(amp|lt|gt|quot|#\d+);/g, ''), t).not.toMatch(/&/);
  while (i < xml.length) {
    text.lastIndex = i;
    const t = text.exec(xml)![0];
    entities(t);
    i += t.length;
    if (i >= xml.length) break;
    tag.lastIndex = i;
    const m = tag.exec(xml);
    expect(m, `bad tag at ${i}: ${xml.slice(i, i + 60)}`).not.toBeNull();
    entities(m![3]!);
    if (m![1]) expect(stack.pop(), `</${m![2]}> at ${i}`).toBe(m![2]);
    else if (!m![4]) stack.push(m![2]!);
    i += m![0].length;
  }
  expect(stack).toEqual([]);
}

/** The bars of a histogram SVG: group, bin, count. */
function bars(svg: string): { group: number; bin: number; count: number; x: number; width: number }[] {
  return [...svg.matchAll(/<rect x="([^"]+)" y="[^"]+" width="([^"]+)"[^>]*data-group="(\d+)" data-bin="(\d+)" data-count="(\d+)"/g)].map((m) => ({
    x: Number(m[1]),
    width: Number(m[2]),
    group: Number(m[3]),
    bin: Number(m[4]),
    count: Number(m[5]),
  }));
}
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
/** The y tick labels of a line plot (text anchored at the end, left of the axis). */
const ticks = (svg: string): string[] => [...svg.matchAll(/<text x="\d+" y="[^"]+" text-anchor="end" dominant-baseline="middle" font-size="10">([^<]*)<\/text>/g)].map((m) => m[1]!);
/** The x tick labels of a histogram (below the axis). */
const xTicks = (svg: string): string[] => [...svg.matchAll(/<text x="[^"]+" y="(\d+)" text-anchor="middle" font-size="10">([^<]*)<\/text>/g)].filter((m) => Number(m[1]) === HIST.H - HIST.B + 15).map((m) => m[2]!);
/** The x of the threshold line of a histogram SVG (null when none). */
const thresholdX = (svg: string): number | null => {
  const m = svg.match(/<line class="threshold" x1="([^"]+)" y1="[^"]+" x2="([^"]+)"/);
  if (!m) return null;
  expect(m[1]).toBe(m[2]);
  return Number(m[1]);
};

describe('CLI eval: bad arguments and data', () => {
  it('usage errors exit 2 with one ERR_USAGE line', async () => {
    const cases = [
      ['eval'],
      ['eval', '--data', data, '--n', '0'],
      ['eval', '--data', data, '--n', '1,x'],
      ['eval', '--data', data, '--n', '1,1'],
      ['eval', '--data', data, '--n', ''],
      ['eval', '--data', data, '--method', 'rome'],
      ['eval', '--data', data, '--method', 'wise,'],
      ['eval', '--data', data, '--ablate', 'routing'],
      ['eval', '--data', data, '--protocol', 'batch'],
      ['eval', '--data', data, '--metrics', 'bleu'],
      ['eval', '--data', data, '--format', 'csv'],
      ['eval', '--data', data, '--n-iter', '0'],
      ['eval', '--data', data, '--save-freq', '3', '--merge-freq', '4'],
      ['eval', '--data', data, '--restore', 'rollback'],
      ['eval', '--data', data, '--routing', 'maybe'],
      ['eval', '--data', data, '--n', '3'],
    ];
    const runs = await Promise.all(cases.map((a) => cli(a)));
    for (const [i, r] of runs.entries()) {
      expect(r.code, `${cases[i]!.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^repair-edit: ERR_USAGE: /);
      expect(r.stdout).toBe('');
    }
    expect(runs[0]!.stderr).toMatch(/--data/);
    expect(runs.at(-1)!.stderr).toMatch(/--n 3 is more than the 2 records of .*two\.jsonl/);
  });

  it('runtime errors exit 1 with one line: missing file, bad record (with the --skip-invalid hint), unwritable --json-file', async () => {
    const bad = join(tmp, 'bad.jsonl');
    writeFileSync(bad, `${JSON.stringify({ prompt: 'a', target: 'b' })}\n${JSON.stringify({ prompt: 'a' })}\n`);
    const [missing, rec, json] = await Promise.all([
      cli(['eval', '--data', join(tmp, 'nope.jsonl')]),
      cli(['eval', '--data', bad, '--n', '1']),
      cli(['eval', '--data', data, '--n', '1', '--json-file', join(tmp, 'no', 'such', 'dir', 'x.json')]),
    ]);
    for (const r of [missing, rec, json]) {
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stdout).toBe('');
    }
    expect(missing.stderr).toMatch(/^repair-edit: ERR_IO: dataset file .*nope\.jsonl does not exist/);
    expect(rec.stderr).toMatch(/^repair-edit: ERR_DATASET: .*bad\.jsonl record 1 \(line 2\): missing field "target" \(pass --skip-invalid/);
    expect(json.stderr).toMatch(/^repair-edit: ERR_IO: cannot write .*x\.json \(--json-file\)/);
  });

  it("records too long for the model's context: ERR_USAGE naming the record, or dropped and reported with --skip-invalid", async () => {
    const long = join(tmp, 'long.jsonl');
    const ok = (i: number) => JSON.stringify({ prompt: `Lily had a red ball number ${i}. The ball was`, target: 'red', locality: [{ prompt: 'Tom went to the', answer: 'park' }] });
    writeFileSync(long, [ok(0), JSON.stringify({ prompt: 'Once upon a time', target: Array(700).fill('sun').join(' ') }), ok(2)].join('\n') + '\n');
    const out = join(tmp, 'long.json');
    const [stop, skip] = await Promise.all([
      cli(['eval', '--data', long, '--n', '2', '--n-iter', '2']),
      cli(['eval', '--data', long, '--n', '2', '--n-iter', '2', '--skip-invalid', '--metrics', 'tf', '--routing', 'off', '--json-file', out]),
    ]);
    expect(stop.code, stop.stderr).toBe(2);
    expect(stop.stderr).toMatch(/^repair-edit: ERR_USAGE: .*long\.jsonl record 1 has a training row of \d+ tokens, longer than the model's context \(512\); 1 of 3 records do not fit \(pass --skip-invalid/);
    expect(stop.stdout).toBe('');
    expect(skip.code, skip.stderr).toBe(0);
    expect(skip.stderr).toMatch(/skipped .*long\.jsonl record 1: a training row of \d+ tokens exceeds the context length 512/);
    const j = JSON.parse(readFileSync(out, 'utf8'));
    expect(j.config.skipped).toEqual([{ index: 1, message: expect.stringMatching(/exceeds the context length 512/) }]);
    expect(j.results[0].runs[0].cases.map((c: { id: string }) => c.id)).toHaveLength(2);
  });

  it('--help documents the options and where named datasets are read from', async () => {
    const h = await cli(['eval', '--help']);
    expect(h.code).toBe(0);
    for (const o of ['--data', '--n', '--method', '--ablate', '--protocol', '--metrics', '--backend', '--seed', '--save-freq', '--merge-freq', '--n-iter', '--json', '--json-file', '--report', '--skip-invalid', '--routing', '--config', '--print-config']) expect(h.stdout).toContain(o);
    expect(h.stdout).toContain('docs/metrics.md');
    expect(h.stdout).not.toContain('ALGORITHM.md');
    expect(h.stdout).toMatch(/--data-dir/);
    expect(h.stdout.replace(/\s+/g, " ")).toMatch(/REPAIR_DATA_DIR, then \.\.\/shared\/data beside a checkout, then the slices shipped/);
    const top = await cli(['--help']);
    expect(top.stdout).toMatch(/\beval\b/);
  });
});

describe.skipIf(!haveAddon || !haveDemo)('CLI eval end to end on stories260K', () => {
  let run: Run;
  const json = () => join(tmp, 'out.json');
  const html = () => join(tmp, 'out.html');
  beforeAll(async () => {
    run = await cli(['eval', '--data', data, '--n', '2,1', '--method', 'wise,repair', '--ablate', 'monitor', '--n-iter', '20', '--seed', '3', '--json-file', json(), '--report', html()]);
  });

  it('exits 0 with a results table on stdout: one row per method × N', () => {
    expect(run.code, run.stderr).toBe(0);
    const lines = run.stdout.split('\n');
    const header = lines.find((l) => l.startsWith('method'))!;
    for (const c of ['Rel', 'Gen', 'Loc', 'OP', 'EM-Rel', 'EM-Gen', 's/edit']) expect(header).toContain(c);
    const rows = lines.filter((l) => /^(wise|repair)( -\w+)? +\d/.test(l)).map((l) => l.split(/\s{2,}/).slice(0, 2).join(' '));
    expect(rows).toEqual(['wise 1', 'wise 2', 'repair 1', 'repair 2', 'repair -monitor 1', 'repair -monitor 2']);
    // no literal separator columns: every column is a figure
    expect(header).not.toMatch(/(^|\s)\|(\s|$)/);
    for (const l of lines.filter((x) => /^(wise|repair)( -\w+)? +\d/.test(x))) expect(l).not.toMatch(/(^|\s)\|(\s|$)/);
    expect(run.stdout).toMatch(/protocol: sequential/);
    expect(run.stdout).toMatch(/exact match of the greedy generation/);
    // not a TTY: one progress line per run on stderr, no bars
    expect(run.stderr.trim().split('\n')).toHaveLength(6);
    expect(run.stderr).toMatch(/^wise N=1: 1 edit in \d+\.\d\d s/);
  });

  it('the JSON file holds the full configuration and every per-case value', () => {
    const j = JSON.parse(readFileSync(json(), 'utf8'));
    expect(j.format).toBe('repair-edit.eval-run');
    expect(j.config).toMatchObject({ format: 'jsonl', ns: [1, 2], methods: ['wise', 'repair'], ablate: ['monitor'], protocol: 'sequential', metrics: ['tf', 'exact'], backend: 'cpu', datasetRecords: 2, skipped: [] });
    expect(j.results.map((r: { label: string }) => r.label)).toEqual(['wise', 'repair', 'repair -monitor']);
    for (const r of j.results) {
      expect(r.config.editorConfig.nIter).toBe(20);
      expect(r.config.editorConfig.seed).toBe(3);
      expect(r.runs.map((x: { n: number }) => x.n)).toEqual([1, 2]);
      for (const x of r.runs) {
        expect(x.cases).toHaveLength(x.n);
        for (const c of x.cases) {
          for (const k of ['rel', 'gen', 'loc']) expect(typeof c[k]).toBe('number');
          expect(typeof c.emRel).toBe('boolean');
          expect(typeof c.genRel).toBe('string');
          expect(c.pre).toHaveProperty('rel');
        }
        expect(typeof x.summary.op).toBe('number');
        expect(x.timings.editSeconds).toBeGreaterThan(0);
        expect(x.events['edit-trained']).toBeGreaterThanOrEqual(1);
      }
    }
    expect(j.results[2].config.editorConfig.repair.monitor).toBe(false);
    expect(j.results[1].config.editorConfig.repair.monitor).toBe(true);
    // the table shows the JSON's numbers
    const wise2 = j.results[0].runs[1].summary;
    const row = run.stdout.split('\n').find((l) => /^wise\s+2\s/.test(l))!;
    expect(row).toContain(`${wise2.rel.toFixed(2)}  ${wise2.gen.toFixed(2)}  ${wise2.loc.toFixed(2)}  ${wise2.op.toFixed(2)}`);
  });

  it('the HTML report is written, self-contained, with Rel/Gen/Loc/OP plots against N per method', () => {
    const h = readFileSync(html(), 'utf8');
    expect(h.startsWith('<!DOCTYPE html>')).toBe(true);
    expect(h.trimEnd().endsWith('</html>')).toBe(true);
    expect(h).not.toMatch(/<script|<link|<img|src=|https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    const s = svgs(h);
    expect(s.length).toBeGreaterThanOrEqual(4);
    for (const t of ['Rel', 'Gen', 'Loc', 'OP']) expect(s.some((x) => x.includes(`aria-label="${t} against N"`))).toBe(true);
    for (const label of ['wise', 'repair', 'repair -monitor']) expect(h).toContain(`${label}: `); // point tooltips per series
    expect(h).toContain('zog');
    expect(h).toContain('full configuration');
  });

  it('routing scores: in the JSON (per case, summary), one line per method on stdout', () => {
    const j = JSON.parse(readFileSync(json(), 'utf8'));
    expect(j.config.routing).toBe('teacher-forced');
    const lines = run.stdout.split('\n').filter((l) => l.startsWith('routed to a side memory'));
    expect(lines).toHaveLength(3); // one per variant, at its largest N
    for (const [ri, r] of j.results.entries()) {
      expect(r.config.routing).toBe('teacher-forced');
      for (const x of r.runs) {
        const rt = x.routing;
        expect(Object.keys(rt).sort()).toEqual(['basis', 'cases', 'memories', 'seconds', 'summary']);
        // every memory of the final editor with its edits and threshold; each case names the one holding its edit
        const holders = new Map<string, number>();
        for (const m of rt.memories) for (const e of m.edits) holders.set(e, m.memory);
        expect(rt.memories[0].memory).toBe(-1);
        expect(rt.basis).toBe('teacher-forced');
        expect(rt.seconds).toBeGreaterThan(0);
        expect(rt.cases.map((c: RoutingCase) => c.id)).toEqual(x.cases.map((c: { id: string }) => c.id));
        for (const c of rt.cases as RoutingCase[]) {
          expect(Object.keys(c).sort()).toEqual(['edit', 'holder', 'id', 'rephrase', 'unrelated']);
          expect(c.holder).toBe(holders.get(c.id) ?? 'main');
          expect(c.unrelated).toHaveLength(1); // one locality pair per record
          for (const p of [c.edit!, c.rephrase!, ...c.unrelated]) {
            expect(Object.keys(p).sort()).toEqual(['route', 'routed', 'score', 'threshold', 'tokens']);
            expect(typeof p.score).toBe('number');
            expect(p.threshold).toBeGreaterThan(0);
            expect(p.tokens).toBeGreaterThan(1);
            expect(p.route === 'main' || (Number.isInteger(p.route) && p.route >= -1)).toBe(true);
            expect(p.routed).toBe(p.route !== 'main');
            if (p.routed) expect(p.score!).toBeGreaterThanOrEqual(p.threshold!);
            else expect(p.score!).toBeLessThanOrEqual(p.threshold!);
          }
        }
        const s = rt.summary;
        const cs = rt.cases as RoutingCase[];
        const routed = (ps: ({ routed: boolean } | null)[]) => ps.filter((p) => p?.routed).length;
        expect(s.edit).toEqual({ prompts: x.n, routed: routed(cs.map((c) => c.edit)), fraction: routed(cs.map((c) => c.edit)) / x.n });
        expect(s.rephrase).toEqual({ prompts: x.n, routed: routed(cs.map((c) => c.rephrase)), fraction: routed(cs.map((c) => c.rephrase)) / x.n });
        expect(s.unrelated).toEqual({ prompts: x.n, routed: routed(cs.flatMap((c) => c.unrelated)), fraction: routed(cs.flatMap((c) => c.unrelated)) / x.n });
        expect(typeof s.thresholdsDiffer).toBe('boolean');
      }
      const last = r.runs.at(-1);
      const s = last.routing.summary;
      const acc = s.accuracy.edit === null ? '' : `; to the memory holding the edit: edit ${s.accuracy.edit.toFixed(2)}, rephrase ${s.accuracy.rephrase.toFixed(2)}`;
      expect(lines[ri]).toBe(`routed to a side memory (teacher-forced), ${r.label} N=2: edit ${s.edit.routed}/2, rephrase ${s.rephrase.routed}/2, unrelated ${s.unrelated.routed}/2${acc}`);
    }
    // the edits reach their memory on the rows they were trained on
    expect(j.results[0].runs[1].routing.summary.edit.routed).toBeGreaterThanOrEqual(1);
  });

  it('the HTML report has one routing histogram per method (largest N up front), bars adding up to the prompts', () => {
    const h = readFileSync(html(), 'utf8');
    const j = JSON.parse(readFileSync(json(), 'utf8'));
    wellFormed(h.slice(h.indexOf('<body>'), h.indexOf('</body>') + 7));
    expect(h).toContain('<h2>Routing scores</h2>');
    const all = svgs(h);
    for (const r of j.results) {
      for (const x of r.runs) {
        const sv = all.filter((q) => q.includes(`aria-label="Routing scores: ${r.label}, N = ${x.n}"`));
        expect(sv, `${r.label} N=${x.n}`).toHaveLength(1);
        wellFormed(sv[0]!);
        const b = bars(sv[0]!);
        expect(sum(b.map((q) => q.count))).toBe(3 * x.n); // n edit + n rephrase + n unrelated prompts
        for (const g of [0, 1, 2]) expect(sum(b.filter((q) => q.group === g).map((q) => q.count))).toBe(x.n);
        expect(thresholdX(sv[0]!)).not.toBeNull();
        expect(sv[0]).toContain(`${x.routing.summary.edit.routed} routed`);
        expect(sv[0]).toContain(x.routing.summary.thresholdsDiffer ? 'score / threshold' : 'routing score (teacher-forced');
      }
    }
    // the largest N up front, the other Ns folded in a <details>
    const details = h.slice(h.indexOf('<details><summary>routing scores at the other N'));
    expect(details).toContain('aria-label="Routing scores: wise, N = 1"');
    expect(h.slice(h.indexOf('<h2>Routing scores</h2>'), h.indexOf('<details><summary>routing scores at the other N'))).not.toContain(', N = 1"');
    expect(h).toContain('<th>routed: edit</th>');
  });

  it('--routing prompt with ft (no router: no routing) and --routing off', async () => {
    const [p, off] = await Promise.all([
      cli(['eval', '--data', data, '--n', '1', '--method', 'wise,ft', '--metrics', 'tf', '--n-iter', '20', '--routing', 'prompt', '--json-file', join(tmp, 'rp.json'), '--report', join(tmp, 'rp.html')]),
      cli(['eval', '--data', data, '--n', '1', '--metrics', 'tf', '--n-iter', '20', '--routing', 'off', '--json-file', join(tmp, 'ro.json'), '--report', join(tmp, 'ro.html')]),
    ]);
    expect(p.code, p.stderr).toBe(0);
    expect(off.code, off.stderr).toBe(0);
    const jp = JSON.parse(readFileSync(join(tmp, 'rp.json'), 'utf8'));
    expect(jp.config.routing).toBe('prompt-only');
    expect(jp.results[0].runs[0].routing.basis).toBe('prompt-only');
    expect(jp.results[0].runs[0].routing.summary.edit.prompts).toBe(1);
    expect(jp.results[1].runs[0].routing).toBeNull(); // ft
    expect(p.stdout.split('\n').filter((l) => l.startsWith('routed to a side memory'))).toEqual([expect.stringMatching(/^routed to a side memory \(prompt-only\), wise N=1: edit \d\/1, rephrase \d\/1, unrelated \d\/1(; to the memory holding the edit: edit [\d.]+, rephrase [\d.]+)?$/)]);
    const hp = readFileSync(join(tmp, 'rp.html'), 'utf8');
    expect(svgs(hp).filter((q) => q.includes('aria-label="Routing scores:'))).toHaveLength(1);
    expect(hp).not.toContain('Routing scores: ft');
    const jo = JSON.parse(readFileSync(join(tmp, 'ro.json'), 'utf8'));
    expect(jo.config.routing).toBeNull();
    expect(jo.results[0].runs[0].routing).toBeNull();
    expect(off.stdout).not.toContain('routed to a side memory');
    expect(readFileSync(join(tmp, 'ro.html'), 'utf8')).not.toContain('Routing scores');
  });

  it('--protocol single with --metrics tf', async () => {
    const r = await cli(['eval', '--data', data, '--n', '2', '--protocol', 'single', '--metrics', 'tf', '--n-iter', '20', '--json-file', join(tmp, 's.json')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/protocol: single \(edit one, evaluate it, restore with a fresh editor\)/);
    expect(r.stdout).not.toContain('EM-Rel');
    const j = JSON.parse(readFileSync(join(tmp, 's.json'), 'utf8'));
    expect(j.results[0].runs[0].protocol).toBe('single');
    expect(j.results[0].runs[0].cases[0].emRel).toBeNull();
  });

  it.skipIf(!haveHall)('--data hallucination (named, ../shared/data): PPL column, invalid records skipped and reported', async () => {
    const r = await cli(['eval', '--data', 'hallucination', '--skip-invalid', '--n', '1', '--n-iter', '10', '--json-file', join(tmp, 'h.json')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/PPL/);
    expect(r.stderr).toMatch(/skipped .*hallucination-edit\.json record 86: field "locality_ground_truth"/);
    const j = JSON.parse(readFileSync(join(tmp, 'h.json'), 'utf8'));
    expect(j.config.metrics).toEqual(['tf', 'ppl']);
    // 7 invalid records, and 1 whose training rows exceed stories260K's 512-token context
    expect(j.config.skipped).toHaveLength(8);
    expect(j.config.skipped.filter((x: { message: string }) => /exceeds the context length 512/.test(x.message))).toHaveLength(1);
    expect(r.stderr).toMatch(/skipped .*hallucination-edit\.json record \d+: a training row of \d+ tokens exceeds the context length 512/);
    const s = j.results[0].runs[0].summary;
    expect(s.ppl).toBeGreaterThan(0);
    expect(s.gen).toBeNull();
    expect(s.op).toBeNull();
  });
});

/** A hand-made sequential run (for the renderers). */
function fakeRun(routing: EvalRun['routing'] = null): EvalRun {
  return {
    label: 'x<y',
    method: 'wise' as const,
    n: 1,
    protocol: 'sequential' as const,
    summary: {
      rel: 1,
      gen: 0.5,
      loc: 1,
      op: Math.cbrt(0.5),
      avg: 2.5 / 3,
      ppl: null,
      ood: null,
      oodIndicator: null,
      emRel: 1,
      emGen: 0,
      metricOf: { rel: 'tf-token-accuracy' as const, gen: 'tf-token-accuracy' as const },
      counts: { cases: 1, rel: 1, gen: 1, loc: 1, ppl: 0, ood: 0, em: 1 },
      pre: { rel: 0, gen: 0, ppl: null, ood: null },
    },
    cases: [{ id: '<b>', index: 0, rel: 1, gen: 0.5, loc: 1, locPairs: [1], ppl: null, ood: null, oodIndicator: null, emRel: true, emGen: false, genRel: '<i>castle</i>', genGen: 'x', pre: { rel: 0, gen: 0, ppl: null, ood: null } }],
    timings: { editSeconds: 1, evalSeconds: 0.1, generateSeconds: 0.05, setupSeconds: 0, editsPerSecond: 1, secondsPerEdit: 1 },
    events: { 'edit-trained': 1 },
    gaveUp: [],
    retriggers: 0,
    memories: { working: 1, memories: 0 },
    truncatedRows: 0,
    routing,
  };
}

describe('report rendering', () => {
  it('svgPlot: one polyline per series, gaps for missing values, y axis past 1 when needed', () => {
    const s = svgPlot('PPL', [1, 30, 120], [
      { label: 'a', points: [{ n: 1, y: 2 }, { n: 30, y: 12.5 }, { n: 120, y: null }] },
      { label: 'b <x>', points: [{ n: 1, y: 1 }, { n: 30, y: null }, { n: 120, y: 3 }] },
    ]);
    svgs(s);
    expect((s.match(/<polyline/g) ?? []).length).toBe(1); // b has no two consecutive points
    expect((s.match(/<circle/g) ?? []).length).toBe(4);
    expect(s).toContain('b &lt;x&gt;: 3.0000');
    expect(ticks(s)).toEqual(['0', '2', '4', '6', '8', '10', '12', '14']); // round ticks up to a round maximum above 12.5
    const unit = svgPlot('Rel', [5], [{ label: 'a', points: [{ n: 5, y: 0.5 }] }]);
    expect(ticks(unit)).toEqual(['0.0', '0.2', '0.4', '0.6', '0.8', '1.0']);
  });

  it('renderHtmlReport escapes labels and writes no external reference', () => {
    const run = fakeRun();
    const h = renderHtmlReport({ format: 'repair-edit.eval-run', version: 1, config: { data: 'd&d' }, results: [{ label: 'x<y', runs: [run], config: { protocol: 'sequential', restore: 'fresh' } } as never] });
    expect(h).toContain('<td>&lt;b&gt;</td>');
    expect(h).not.toContain('<i>castle');
    expect(h).toContain('&lt;i&gt;castle&lt;/i&gt;');
    expect(h).toContain('d&amp;d');
    expect(h).toContain('x&lt;y');
    svgs(h);
    wellFormed(h.slice(h.indexOf('<body>'), h.indexOf('</body>') + 7));
    expect(h).not.toContain('Routing scores'); // no routing, no section
  });

  it('binValues: one shared range, half-open bins (the last closed), out-of-range values in the edge bins, missing values skipped', () => {
    const b = binValues([[0, 0.5, 0.999, 1], [0.25, 2, -1], [null, Number.NaN]], 4, { lo: 0, hi: 1 });
    expect(b).toMatchObject({ lo: 0, hi: 1, width: 0.25 });
    expect(b.counts).toEqual([
      [1, 0, 1, 2],
      [1, 1, 0, 1],
      [0, 0, 0, 0],
    ]);
    // automatic ranges take in the threshold and are cut at round edges (d3's nice ticks)
    const auto = binValues([[1.13, 3.02]], 10, { include: [4.91] });
    expect(auto).toMatchObject({ lo: 1, hi: 5, width: 0.5, edges: [1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5] });
    expect(auto.counts).toEqual([[1, 0, 0, 0, 1, 0, 0, 0]]);
    const odd = binValues([[0.921, 1.14, 1.36]]);
    for (const e of odd.edges) expect(Math.abs(e * 20 - Math.round(e * 20)), `edge ${e}`).toBeLessThan(1e-9); // multiples of 0.05
    expect(sum(odd.counts[0]!)).toBe(3);
    // a few values: a few wide bins (Sturges, at least 5), not a rug of thin ones
    const few = binValues([[0.1, 0.15, 0.4], [0.8, 0.85, 0.9]]);
    expect(few.edges.length - 1).toBeGreaterThanOrEqual(4);
    expect(few.edges.length - 1).toBeLessThanOrEqual(10);
    expect(binValues([[2, 2]], 3)).toMatchObject({ lo: 1.5, hi: 2.5, counts: [[0, 2]] });
    expect(() => binValues([[1]], 0)).toThrow();
  });

  it('svgHistogram: a bar per group and non-empty bin with its count, the threshold line where it belongs, escaped text', () => {
    const { W, L, R } = HIST;
    const plotW = W - L - R;
    const groups = [
      { label: 'edit <e>', color: '#111111', values: [0.9, 0.95, 0.1] },
      { label: 'rephrase', color: '#222222', values: [0.55, 0.7] },
      { label: 'unrelated', color: '#333333', values: [0.05, 0.1, 0.12, null] },
    ];
    const s = svgHistogram('T & t', 'score', groups, 0.6, { bins: 5, lo: 0, hi: 1 });
    svgs(s);
    wellFormed(s);
    const counts = [
      [1, 0, 0, 0, 2],
      [0, 0, 1, 1, 0],
      [3, 0, 0, 0, 0],
    ];
    const b = bars(s);
    expect(b).toHaveLength(5); // empty bins draw nothing
    for (const q of b) expect(q.count).toBe(counts[q.group]![q.bin]);
    for (const [g, c] of counts.entries()) for (const [i, n] of c.entries()) if (n) expect(b.some((q) => q.group === g && q.bin === i)).toBe(true);
    expect(sum(b.map((q) => q.count))).toBe(8); // the finite values
    // bars side by side inside their bin: group 1, bin 2 starts a third of the way into [0.4, 0.6)
    expect(b.find((q) => q.group === 1 && q.bin === 2)!.x).toBeCloseTo(L + (0.4 + 0.2 / 3) * plotW, 1);
    expect(b.find((q) => q.group === 1 && q.bin === 2)!.width).toBeCloseTo((0.2 / 3) * plotW - 0.4, 1);
    expect(thresholdX(s)).toBeCloseTo(L + 0.6 * plotW, 1);
    expect(s).toContain('T &amp; t');
    expect(s).toContain('>edit &lt;e&gt;<');
    expect(s).toContain('n = 3'); // unrelated: the null is not a prompt scored
    expect(s).toContain('<title>unrelated: 3 in [0, 0.2)</title>');
    expect(s).toContain('<title>edit &lt;e&gt;: 2 in [0.8, 1]</title>'); // the last bin is closed
    expect(thresholdX(svgHistogram('t', 'x', groups, 1.5, { bins: 5, lo: 0, hi: 1 }))).toBeNull(); // off the axis: no line
    // an automatic range takes the threshold in
    const auto = svgHistogram('t', 'x', groups, 2);
    const r = binValues(groups.map((g) => g.values), undefined, { include: [2] });
    expect(thresholdX(auto)).toBeCloseTo(L + ((2 - r.lo) / (r.hi - r.lo)) * plotW, 1);
    expect(sum(bars(auto).map((q) => q.count))).toBe(8);
    // round x ticks, and bars wide enough to read (8 values: a handful of bins)
    for (const t of xTicks(auto)) expect(t).toMatch(/^-?\d+(\.\d)?$/);
    for (const q of bars(auto)) expect(q.width).toBeGreaterThan(8);
  });

  it('routingPlot: raw scores against one shared threshold; score / threshold with the line at 1 when thresholds differ; in the report', () => {
    const { W, L, R } = HIST;
    const plotW = W - L - R;
    const pt = (score: number, threshold: number, routed: boolean): RoutePoint => ({ score, threshold, routed, route: routed ? -1 : 'main', tokens: 5 });
    const rt = (cs: RoutingCase[]) => ({ basis: 'teacher-forced' as const, cases: cs, summary: summarizeRouting(cs), seconds: 0.01 });
    const same: RoutingCase[] = [
      { id: 'a', edit: pt(3, 2, true), rephrase: pt(1, 2, false), unrelated: [pt(0.5, 2, false), pt(0.2, 2, false)] },
      { id: 'b', edit: pt(2.5, 2, true), rephrase: null, unrelated: [pt(0.1, 2, false)] },
    ];
    expect(routingPlot(fakeRun())).toBeNull();
    const a = routingPlot(fakeRun(rt(same)))!;
    wellFormed(a);
    const ba = bars(a);
    expect([0, 1, 2].map((g) => sum(ba.filter((q) => q.group === g).map((q) => q.count)))).toEqual([2, 1, 3]);
    expect(a).toContain('routing score (teacher-forced');
    expect(a).toContain('2 routed');
    const ra = binValues([[3, 2.5], [1], [0.5, 0.2, 0.1]], undefined, { include: [2] });
    expect(thresholdX(a)).toBeCloseTo(L + ((2 - ra.lo) / (ra.hi - ra.lo)) * plotW, 1);
    // b's memory has threshold 4: plotted as score / threshold, line at 1
    const differ: RoutingCase[] = [same[0]!, { id: 'b', edit: pt(2.5, 4, false), rephrase: null, unrelated: [pt(0.1, 4, false)] }];
    expect(summarizeRouting(differ).thresholdsDiffer).toBe(true);
    expect(summarizeRouting(same).thresholdsDiffer).toBe(false);
    const d = routingPlot(fakeRun(rt(differ)))!;
    expect(d).toContain('score / threshold of its memory');
    const rd = binValues([[1.5, 0.625], [0.5], [0.25, 0.1, 0.025]], undefined, { include: [1] });
    expect(thresholdX(d)).toBeCloseTo(L + ((1 - rd.lo) / (rd.hi - rd.lo)) * plotW, 1);
    expect(d).toContain('1 routed');
    // in the report: the section, the per-method line, one histogram
    const h = renderHtmlReport({ format: 'repair-edit.eval-run', version: 1, config: { data: 'd' }, results: [{ label: 'x<y', runs: [fakeRun(rt(same))], config: { protocol: 'sequential', restore: 'fresh' } } as never] });
    wellFormed(h.slice(h.indexOf('<body>'), h.indexOf('</body>') + 7));
    expect(h).toContain('<h2>Routing scores</h2>');
    expect(h).toContain('routed to a side memory (teacher-forced), x&lt;y N=1: edit 2/2, rephrase 0/1, unrelated 0/3');
    expect(svgs(h).filter((q) => q.includes('aria-label="Routing scores: x&lt;y, N = 1"'))).toHaveLength(1);
    expect(h).not.toContain('routing scores at the other N');
  });
});

describe('variantsOf: the rows of the results table', () => {
  it('methods first, then one repair row per ablation with exactly that change', () => {
    const v = variantsOf(['wise', 'repair'], ['monitor', 'merge', 'bound'], { saveFreq: 5 });
    expect(v.map((x) => x.label)).toEqual(['wise', 'repair', 'repair -monitor', 'repair -merge', 'repair -bound']);
    expect(v[2]!.editorOptions).toEqual({ saveFreq: 5, repair: { monitor: false } });
    expect(v[3]!.editorOptions).toEqual({ saveFreq: 5, repair: { lossAwareMerge: false } });
    expect(v[4]!.editorOptions).toEqual({ saveFreq: 5, repair: { retrainShare: 1e9 } });
    expect(v.every((x, i) => (i === 0 ? x.method === 'wise' : x.method === 'repair'))).toBe(true);
  });
  it('rows that switch an option on are labelled +X', () => {
    const v = variantsOf([], ['negatives', 'auto', 'margins'], {});
    expect(v.map((x) => x.label)).toEqual(['repair +negatives', 'repair +auto-margins', 'repair -margins']);
    expect(v.map((x) => x.editorOptions)).toEqual([{ repair: { negatives: 4 } }, { repair: { marginScale: 'auto' } }, { repair: { marginScale: 1 } }]);
  });
});
