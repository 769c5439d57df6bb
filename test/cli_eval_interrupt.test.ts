// An interrupted eval keeps what it has of the run in progress (issue 16 item 4), on the shipped
// stories260K: the driver's keepPartial path (lib/eval.ts, lib/eval/protocols.ts) stopped at chosen
// points through its AbortSignal — while editing (a sequential result at N = k), while evaluating (the
// cases evaluated), 'single' (the cases done) — and `repair-edit eval` sent real SIGINTs: JSON and report
// marked partial with the run in progress kept and its summary over the cases present; a second Ctrl-C
// exits 130 at once with the finished runs only.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../lib/paths.js';
import { loadModel, type Model } from '../lib/model.js';
import { editSlice, loadDataset, type EditRecord } from '../lib/datasets.js';
import { evaluate, type EvalRun } from '../lib/eval.js';
import { RepairError } from '../lib/errors.js';
import { renderHtmlReport, type EvalRunFile } from '../lib/cli/eval_report.js';
import { addonError, STORIES } from './helpers/setup.js';
import { budget } from './helpers/time.js';

const ROOT = packageRoot();
const CLI = join(ROOT, 'dist', 'cli.js');
const ready = existsSync(CLI) && existsSync(join(STORIES, 'config.json')) && addonError === '';
if (!ready) console.warn('[cli_eval_interrupt.test] dist/cli.js (npx tsc), models/stories260K or the addon is missing: skipped');

const NAMES = ['Zog', 'Blix', 'Pim', 'Quor', 'Dax', 'Mel', 'Tup', 'Rin', 'Vex', 'Kel'];
const THINGS = ['a purple castle', 'blue cheese', 'the Silver Fox', 'a red hat', 'green apples', 'a tall tower', 'the Sea Wolf', 'a small boat', 'gold coins', 'a magic lamp'];
const LOC = [
  { prompt: 'Once upon a time', answer: 'there was a little girl' },
  { prompt: 'Lily and Tom went to the', answer: 'park to play' },
  { prompt: 'The sun was', answer: 'shining' },
];
const EDITS = NAMES.map((n, i) => ({ id: n.toLowerCase(), prompt: `The friend ${n} had`, target: THINGS[i]!, rephrase: `${n} the friend owned`, locality: [LOC[i % 3]!] }));

let tmp = '';
let edits = '';
let model: Model;
let records: EditRecord[];

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-cli-interrupt-'));
  edits = join(tmp, 'edits.jsonl');
  writeFileSync(edits, EDITS.map((e) => JSON.stringify(e)).join('\n') + '\n');
  if (!ready) return;
  model = await loadModel(STORIES, { backend: 'cpu' });
  records = editSlice(loadDataset(edits), 6);
}, budget(120_000));
afterAll(async () => {
  await model?.dispose();
  rmSync(tmp, { recursive: true, force: true });
});

const mean = (xs: (number | null)[]): number | null => {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
};

/** The summary of a partial run is over its cases only. */
function expectSummaryOverCases(run: EvalRun): void {
  expect(run.summary.counts.cases).toBe(run.cases.length);
  expect(run.summary.rel).toBeCloseTo(mean(run.cases.map((c) => c.rel))!, 12);
  expect(run.summary.loc).toBeCloseTo(mean(run.cases.map((c) => c.loc))!, 12);
}

/** evaluate() with keepPartial, aborted when `stop` says so; returns the runs handed to onRun and the error. */
async function interrupted(opts: { protocol?: 'sequential' | 'single'; metrics: ('tf' | 'exact')[]; stop: (phase: string, done: number) => boolean }) {
  const ac = new AbortController();
  const runs: EvalRun[] = [];
  let err: unknown;
  try {
    await evaluate(model, records, {
      ns: [6],
      protocol: opts.protocol,
      metrics: opts.metrics,
      editorOptions: { nIter: 20 },
      keepPartial: true,
      signal: ac.signal,
      onRun: (r) => runs.push(r),
      onProgress: (p) => {
        if (!ac.signal.aborted && opts.stop(p.phase, p.done)) ac.abort();
      },
    });
  } catch (e) {
    err = e;
  }
  return { runs, err };
}

describe.skipIf(!ready)('evaluate keepPartial: the run in progress kept', () => {
  it('sequential, aborted while editing: the edit in training finishes, the k made are evaluated (a result at N = k)', async () => {
    const { runs, err } = await interrupted({ metrics: ['tf', 'exact'], stop: (phase, done) => phase === 'edit' && done >= 2 });
    expect(err).toBeInstanceOf(RepairError);
    expect((err as RepairError).code).toBe('ERR_ABORTED');
    expect(runs).toHaveLength(1);
    const r = runs[0]!;
    expect(r.partial?.phase).toBe('edit');
    expect(r.partial?.of).toBe(6);
    const k = r.partial!.editsDone;
    expect(k).toBe(2); // aborted as edit 2 was reported: editing stopped before edit 3
    expect(r.n).toBe(k);
    expect(r.partial!.casesEvaluated).toBe(k);
    expect(r.cases.map((c) => c.id)).toEqual(records.slice(0, k).map((x) => x.id));
    expect(r.cases.every((c) => c.emRel !== null && typeof c.rel === 'number')).toBe(true);
    expect(r.routing).toBeNull();
    expectSummaryOverCases(r);
  }, budget(120_000));

  it('sequential, aborted while evaluating: the cases evaluated are kept', async () => {
    // eval progress counts the teacher-forced batches, then one per generation (2 per record here)
    let batches = -1;
    const { runs, err } = await interrupted({
      metrics: ['tf', 'exact'],
      stop: (phase, done) => {
        if (phase !== 'eval') return false;
        if (batches < 0) batches = done; // the first eval tick
        return done >= batches + 5; // 2 records and a half generated
      },
    });
    expect((err as RepairError).code).toBe('ERR_ABORTED');
    const r = runs[0]!;
    expect(r.partial?.phase).toBe('eval');
    expect(r.partial?.editsDone).toBe(6);
    expect(r.n).toBe(6);
    expect(r.cases.length).toBeGreaterThanOrEqual(2);
    expect(r.cases.length).toBeLessThan(6);
    expect(r.partial!.casesEvaluated).toBe(r.cases.length);
    expect(r.cases.every((c) => c.emRel !== null && c.emGen !== null)).toBe(true);
    expectSummaryOverCases(r);
  }, budget(120_000));

  it('single: the cases done are kept', async () => {
    const { runs, err } = await interrupted({ protocol: 'single', metrics: ['tf'], stop: (phase, done) => phase === 'edit' && done >= 3 });
    expect((err as RepairError).code).toBe('ERR_ABORTED');
    const r = runs[0]!;
    expect(r.protocol).toBe('single');
    expect(r.cases.map((c) => c.id)).toEqual(records.slice(0, r.cases.length).map((x) => x.id));
    expect(r.cases.length).toBeGreaterThanOrEqual(3);
    expect(r.cases.length).toBeLessThan(6);
    expect(r.partial).toEqual({ editsDone: r.cases.length, of: 6, casesEvaluated: r.cases.length, phase: 'edit' });
    expectSummaryOverCases(r);
  }, budget(120_000));

  it('without keepPartial an abort keeps nothing (the API as before)', async () => {
    const ac = new AbortController();
    const runs: EvalRun[] = [];
    const e = await evaluate(model, records, {
      ns: [6],
      metrics: ['tf'],
      editorOptions: { nIter: 20 },
      signal: ac.signal,
      onRun: (r) => runs.push(r),
      onProgress: (p) => {
        if (p.phase === 'edit' && p.done >= 2) ac.abort();
      },
    }).catch((x: unknown) => x);
    expect((e as RepairError).code).toBe('ERR_ABORTED');
    expect(runs).toHaveLength(0);
  }, budget(120_000));
});

interface Sent {
  code: number | null;
  stdout: string;
  stderr: string;
  json: string;
  html: string;
  /** ms from the last signal to the exit. */
  exitMs: number;
}

/**
 * `eval --n 1,10`: once the N = 1 run is reported (its line gives the seconds per edit), wait about two
 * edits into the N = 10 run and send SIGINT (`twice`: a second one 5 ms later).
 */
function interruptedEval(tag: string, extra: string[], twice = false): Promise<Sent> {
  const json = join(tmp, `${tag}.json`);
  const html = join(tmp, `${tag}.html`);
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI, 'eval', '--data', edits, '--n', '1,10', '--method', 'wise', '--n-iter', '150', '--json-file', json, '--report', html, ...extra], {
      cwd: ROOT,
      env: { ...process.env, REPAIR_BACKEND: 'cpu' },
    });
    let out = '';
    let err = '';
    let sent = false;
    let last = 0;
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /wise N=1: 1 edit in ([\d.]+) s/.exec(err);
      if (!sent && m) {
        sent = true;
        const perEdit = Number(m[1]) * 1000;
        setTimeout(() => {
          p.kill('SIGINT');
          last = performance.now();
          if (twice)
            setTimeout(() => {
              p.kill('SIGINT');
              last = performance.now();
            }, 5);
        }, 2.2 * perEdit);
      }
    });
    p.on('exit', (code) => resolve({ code, stdout: out, stderr: err, json, html, exitMs: performance.now() - last }));
  });
}

describe.skipIf(!ready)('repair-edit eval on SIGINT keeps the run in progress', () => {
  for (const protocol of ['sequential', 'single'] as const) {
    it(`${protocol}: exit 130, the finished run and the part of N = 10 done, in JSON, report and table`, async () => {
      const r = await interruptedEval(protocol, ['--protocol', protocol, '--metrics', 'tf,exact']);
      expect(r.code, r.stderr).toBe(130);
      expect(r.stderr.trim().split('\n').at(-1)).toMatch(/^repair-edit: ERR_ABORTED: interrupted after 1 of 2 runs; kept wise N=10 in part \((\d) of 10 edits, \1 evaluated\); the results are in .*\.json and .*\.html \(marked partial\)$/);
      const j = JSON.parse(readFileSync(r.json, 'utf8')) as EvalRunFile;
      expect(j.partial).toBe(true);
      expect(j.progress!.runsDone).toBe(1);
      expect(j.progress!.notDone).toEqual([{ label: 'wise', n: 10 }]);
      const p = j.progress!.partial!;
      expect(p).toMatchObject({ run: 'wise', n: 10, protocol, of: 10, phase: 'edit' });
      expect(p.editsDone).toBeGreaterThanOrEqual(1);
      expect(p.editsDone).toBeLessThan(10);
      expect(p.casesEvaluated).toBe(p.editsDone);
      const [whole, cut] = j.results[0]!.runs;
      expect(whole!.n).toBe(1);
      expect(whole!.partial).toBeUndefined();
      expect(cut!.n).toBe(p.editsDone);
      expect(cut!.partial).toEqual({ editsDone: p.editsDone, of: 10, casesEvaluated: p.editsDone, phase: 'edit' });
      expect(cut!.cases.map((c) => c.id)).toEqual(EDITS.slice(0, p.editsDone).map((e) => e.id));
      expectSummaryOverCases(cut!);
      // the JSON loads back into the report as written
      expect(renderHtmlReport(j)).toBe(readFileSync(r.html, 'utf8'));
      const h = readFileSync(r.html, 'utf8');
      expect(h).toContain(`Kept in part: wise N=10, ${p.editsDone} of 10 edits made and ${p.editsDone} evaluated`);
      expect(h).toContain(`wise, N = ${p.editsDone} (partial: ${p.editsDone} of 10 edits made, ${p.editsDone} evaluated)`);
      expect(r.stdout).toMatch(new RegExp(`^wise\\s+${p.editsDone} of 10\\*\\s+${cut!.summary.rel!.toFixed(2)}\\s`, 'm'));
      expect(r.stdout).toContain(`*: partial (interrupted): ${p.editsDone} of 10 edits made, figures over the ${p.editsDone} case`);
    }, budget(300_000));
  }

  it('a second Ctrl-C exits 130 at once, writing the finished runs only', async () => {
    const r = await interruptedEval('twice', ['--metrics', 'tf,exact'], true);
    expect(r.code, r.stderr).toBe(130);
    expect(r.exitMs).toBeLessThan(budget(5_000));
    expect(r.stderr).toMatch(/repair-edit: ERR_ABORTED: interrupted twice after 1 of 2 runs; the finished runs are in .*\.json and .*\.html \(marked partial\)\n$/);
    const j = JSON.parse(readFileSync(r.json, 'utf8')) as EvalRunFile;
    expect(j.partial).toBe(true);
    expect(j.progress!.partial).toBeUndefined();
    expect(j.results[0]!.runs.map((x) => x.n)).toEqual([1]);
    expect(readFileSync(r.html, 'utf8').trimEnd().endsWith('</html>')).toBe(true);
  }, budget(300_000));
});
