// `repair-edit eval` end to end on the shipped stories260K (tsx lib/cli.ts ..., as a user runs it): the
// results table, the JSON file (schema, every per-case value, the configuration), the HTML report
// (written, self-contained, its SVG plots well formed), and the exit codes of bad arguments and data.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../lib/native.js';
import { packageRoot } from '../lib/paths.js';
import { namedDatasetPath } from '../lib/datasets.js';
import { renderHtmlReport, svgPlot } from '../lib/cli/eval.js';

const ROOT = packageRoot();
const TSX = join(ROOT, 'node_modules', '.bin', 'tsx');
const haveDemo = existsSync(join(ROOT, 'models', 'stories260K', 'config.json'));
const haveAddon = (() => {
  try {
    native();
    return true;
  } catch {
    return false;
  }
})();
const haveHall = existsSync(namedDatasetPath('hallucination'));
if (!haveAddon || !haveDemo) console.warn('[cli_eval.test] the native addon or models/stories260K is missing: CLI runs that load a model are skipped');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(TSX, ['lib/cli.ts', ...args], { cwd: ROOT, env: { ...process.env, REPAIR_BACKEND: 'cpu' }, timeout: 110_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

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
    const open = (s.match(/<(polyline|line|circle|text|title)\b/g) ?? []).length;
    const selfClosed = (s.match(/<(polyline|line|circle)\b[^>]*\/>/g) ?? []).length;
    const closed = (s.match(/<\/(polyline|line|circle|text|title)>/g) ?? []).length;
    expect(open).toBe(selfClosed + closed);
    for (const m of s.matchAll(/\b(?:x|y|x1|x2|y1|y2|cx|cy)="([^"]*)"/g)) expect(Number.isFinite(Number(m[1])), m[0]).toBe(true);
    for (const m of s.matchAll(/points="([^"]*)"/g)) for (const p of m[1]!.split(' ')) expect(p).toMatch(/^-?\d+(\.\d+)?,-?\d+(\.\d+)?$/);
  }
  return out;
}

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

  it('runtime errors exit 1 with one line: missing file, bad record (with the --skip-invalid hint), unwritable --json', async () => {
    const bad = join(tmp, 'bad.jsonl');
    writeFileSync(bad, `${JSON.stringify({ prompt: 'a', target: 'b' })}\n${JSON.stringify({ prompt: 'a' })}\n`);
    const [missing, rec, json] = await Promise.all([
      cli(['eval', '--data', join(tmp, 'nope.jsonl')]),
      cli(['eval', '--data', bad, '--n', '1']),
      cli(['eval', '--data', data, '--n', '1', '--json', join(tmp, 'no', 'such', 'dir', 'x.json')]),
    ]);
    for (const r of [missing, rec, json]) {
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stdout).toBe('');
    }
    expect(missing.stderr).toMatch(/^repair-edit: ERR_IO: dataset file .*nope\.jsonl does not exist/);
    expect(rec.stderr).toMatch(/^repair-edit: ERR_DATASET: .*bad\.jsonl record 1 \(line 2\): missing field "target" \(pass --skip-invalid/);
    expect(json.stderr).toMatch(/^repair-edit: ERR_IO: cannot write .*x\.json \(--json\)/);
  });

  it('--help documents the options and where named datasets are read from', async () => {
    const h = await cli(['eval', '--help']);
    expect(h.code).toBe(0);
    for (const o of ['--data', '--n', '--method', '--ablate', '--protocol', '--metrics', '--backend', '--seed', '--save-freq', '--merge-freq', '--n-iter', '--json', '--report', '--skip-invalid']) expect(h.stdout).toContain(o);
    expect(h.stdout).toMatch(/\.\.\/shared\/data\/ relative to the package root/);
    const top = await cli(['--help']);
    expect(top.stdout).toMatch(/\beval\b/);
  });
});

describe.skipIf(!haveAddon || !haveDemo)('CLI eval end to end on stories260K', () => {
  let run: Run;
  const json = () => join(tmp, 'out.json');
  const html = () => join(tmp, 'out.html');
  beforeAll(async () => {
    run = await cli(['eval', '--data', data, '--n', '2,1', '--method', 'wise,repair', '--ablate', 'monitor', '--n-iter', '20', '--seed', '3', '--json', json(), '--report', html()]);
  });

  it('exits 0 with a results table on stdout: one row per method × N', () => {
    expect(run.code, run.stderr).toBe(0);
    const lines = run.stdout.split('\n');
    const header = lines.find((l) => l.startsWith('method'))!;
    for (const c of ['Rel', 'Gen', 'Loc', 'OP', 'EM-Rel', 'EM-Gen', 's/edit']) expect(header).toContain(c);
    const rows = lines.filter((l) => /^(wise|repair)( -\w+)? +\d/.test(l)).map((l) => l.split(/\s{2,}/).slice(0, 2).join(' '));
    expect(rows).toEqual(['wise 1', 'wise 2', 'repair 1', 'repair 2', 'repair -monitor 1', 'repair -monitor 2']);
    for (const l of lines.filter((x) => /^(wise|repair)( -\w+)? +\d/.test(x))) expect(l).toMatch(/(\d\.\d\d|-)\s+\|/);
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

  it('--protocol single with --metrics tf', async () => {
    const r = await cli(['eval', '--data', data, '--n', '2', '--protocol', 'single', '--metrics', 'tf', '--n-iter', '20', '--json', join(tmp, 's.json')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/protocol: single \(edit one, evaluate it, restore with a fresh editor\)/);
    expect(r.stdout).not.toContain('EM-Rel');
    const j = JSON.parse(readFileSync(join(tmp, 's.json'), 'utf8'));
    expect(j.results[0].runs[0].protocol).toBe('single');
    expect(j.results[0].runs[0].cases[0].emRel).toBeNull();
  });

  it.skipIf(!haveHall)('--data hallucination (named, ../shared/data): PPL column, invalid records skipped and reported', async () => {
    const r = await cli(['eval', '--data', 'hallucination', '--skip-invalid', '--n', '1', '--n-iter', '10', '--json', join(tmp, 'h.json')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/PPL/);
    expect(r.stderr).toMatch(/skipped .*hallucination-edit\.json record 86: field "locality_ground_truth"/);
    const j = JSON.parse(readFileSync(join(tmp, 'h.json'), 'utf8'));
    expect(j.config.metrics).toEqual(['tf', 'ppl']);
    expect(j.config.skipped).toHaveLength(7);
    const s = j.results[0].runs[0].summary;
    expect(s.ppl).toBeGreaterThan(0);
    expect(s.gen).toBeNull();
    expect(s.op).toBeNull();
  });
});

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
    expect(s).toContain('>20<'); // nice maximum above 12.5
    const unit = svgPlot('Rel', [5], [{ label: 'a', points: [{ n: 5, y: 0.5 }] }]);
    expect(unit).toContain('>1<');
  });

  it('renderHtmlReport escapes labels and writes no external reference', () => {
    const run = {
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
    };
    const h = renderHtmlReport({ format: 'repair-edit.eval-run', version: 1, config: { data: 'd&d' }, results: [{ label: 'x<y', runs: [run], config: { protocol: 'sequential', restore: 'fresh' } } as never] });
    expect(h).toContain('<td>&lt;b&gt;</td>');
    expect(h).not.toContain('<i>castle');
    expect(h).toContain('&lt;i&gt;castle&lt;/i&gt;');
    expect(h).toContain('d&amp;d');
    expect(h).toContain('x&lt;y');
    svgs(h);
  });
});
