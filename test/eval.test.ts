// Evaluation (lib/eval.ts): the metric arithmetic on fixed numbers (token accuracy, agreement, PPL, the
// temporal OOD score, OP, Avg, exact match), the rows of §3, every batched metric against predictions
// computed here one row at a time with model.logits / editor.logits on stories260K, the §3 token
// accuracy against the independently computed numbers of the facts-llama model card, the
// sequential / single protocols end to end, and the routing scores (option routing): their inputs, their
// summary, each point against Editor.explain by hand and against what the routed logits did.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadModel, type Model } from '../lib/model.js';
import { Editor } from '../lib/editor.js';
import { RepairError } from '../lib/errors.js';
import { ModelTokenizer } from '../lib/tokenizer.js';
import { loadDataset, sharedDataDir, NAMED_DATASETS, type EditRecord } from '../lib/datasets.js';
import { addonError, FACTS, rejects, STORIES } from './helpers/setup.js';
import {
  agreement,
  answerRow,
  argmax,
  averageScore,
  evaluate,
  evaluateVariants,
  exactMatch,
  exactMatchOf,
  meanOf,
  measure,
  nllOf,
  oodIndicator,
  oodScore,
  overallScore,
  perplexity,
  planBatches,
  promptText,
  rowLabels,
  routingInputs,
  routingScores,
  scoreRows,
  summarize,
  recordsTooLong,
  summarizeRouting,
  textRow,
  tokenAccuracy,
  type CaseResult,
  type LogitsSource,
  type RoutePoint,
  type ScoredRow,
} from '../lib/eval.js';

const haveAddon = addonError === '';
const haveStories = haveAddon && existsSync(join(STORIES, 'config.json'));
const haveFacts = haveAddon && existsSync(join(FACTS, 'config.json')) && existsSync(join(sharedDataDir(), NAMED_DATASETS.counterfact)) && existsSync(join(sharedDataDir(), NAMED_DATASETS.zsre));
if (!haveStories) console.warn('[eval.test] the native addon or models/stories260K is missing: model tests are skipped');
if (!haveFacts) console.warn('[eval.test] ../shared/models/facts-llama or the shared data is missing: reference-number tests are skipped');

describe('metric arithmetic on fixed numbers', () => {
  it('token accuracy, agreement', () => {
    expect(tokenAccuracy([1, 2, 3], [1, 5, 3])).toBeCloseTo(2 / 3, 12);
    expect(tokenAccuracy([7], [7])).toBe(1);
    expect(tokenAccuracy([], [])).toBeNaN();
    expect(() => tokenAccuracy([1], [1, 2])).toThrow(RepairError);
    expect(agreement([4, 4, 9, 1], [4, 3, 9, 2])).toBe(0.5);
  });

  it('perplexity = exp(mean NLL)', () => {
    expect(perplexity([Math.LN2, Math.LN2])).toBeCloseTo(2, 12);
    expect(perplexity([0, 2])).toBeCloseTo(Math.E, 12);
    expect(perplexity([])).toBeNaN();
  });

  it('temporal OOD score: fraction of tokens with NLL < −ln 0.8 (strict); Eq. 10 indicator on the mean', () => {
    const t = -Math.log(0.8); // 0.22314...
    expect(oodScore([0.1, 0.3, t - 1e-9, t])).toBe(0.5);
    expect(oodScore([0, 0, 0])).toBe(1);
    expect(oodScore([5])).toBe(0);
    expect(oodScore([0.5, 0.5], 0.5)).toBe(1); // −ln 0.5 = 0.693: 0.5 < 0.693 → both count
    expect(oodScore([0.5, 0.8], 0.5)).toBe(0.5);
    expect(oodIndicator([0.1, 0.3])).toBe(1); // mean 0.2 < 0.223
    expect(oodIndicator([0.2, 0.3])).toBe(0);
  });

  it('OP = geometric mean (REPAIR Table 3 rows), Avg = arithmetic mean; missing values give null', () => {
    // ALGORITHM.md §3: FT-EWC N = 1 (0.96, 0.93, 0.02) → 0.26; GRACE N = 1000 (0.93, 0.08, 1.00) → 0.42
    expect(overallScore(0.96, 0.93, 0.02)!.toFixed(2)).toBe('0.26');
    expect(overallScore(0.93, 0.08, 1.0)!.toFixed(2)).toBe('0.42');
    expect(overallScore(0.5, 0.5, 0.5)).toBeCloseTo(0.5, 12);
    expect(overallScore(1, 0, 1)).toBe(0);
    expect(averageScore(0.96, 0.93, 0.02)).toBeCloseTo(0.636666, 5);
    expect(overallScore(null, 1, 1)).toBeNull();
    expect(averageScore(1, Number.NaN, 1)).toBeNull();
  });

  it('exact match: the trimmed continuation starts with the trimmed target', () => {
    expect(exactMatch(' unmanned aircraft, made by', 'unmanned aircraft')).toBe(true);
    expect(exactMatch('unmanned aircraft', ' unmanned aircraft ')).toBe(true);
    expect(exactMatch('unmanned', 'unmanned aircraft')).toBe(false);
    expect(exactMatch('an unmanned aircraft', 'unmanned aircraft')).toBe(false);
  });

  it('means skip missing values; argmax ties go to the lowest id; nll = −log softmax', () => {
    expect(meanOf([1, null, Number.NaN, 0, undefined])).toBe(0.5);
    expect(meanOf([])).toBeNull();
    expect(argmax([1, 3, 3, 2])).toBe(1);
    const v = [1, 2, 3];
    const z = Math.exp(1) + Math.exp(2) + Math.exp(3);
    expect(nllOf(v, 2)).toBeCloseTo(-Math.log(Math.exp(3) / z), 12);
    expect(nllOf([1000, 0], 0)).toBeCloseTo(Math.log(1 + Math.exp(-1000)), 12); // stable
  });

  it('summarize: means over cases, OP/Avg from the means, EM rates, counts; Gen = OOD for sets without rephrases', () => {
    const base = { locPairs: [], ppl: null, ood: null, oodIndicator: null, genRel: null, genGen: null, pre: { rel: 0, gen: 0, ppl: null, ood: null } };
    const cs: CaseResult[] = [
      { ...base, id: 'a', index: 0, rel: 1, gen: 0.5, loc: 1, emRel: true, emGen: false },
      { ...base, id: 'b', index: 1, rel: 0.5, gen: null, loc: 0.5, emRel: false, emGen: null, pre: { rel: 0.5, gen: null, ppl: null, ood: null } },
    ];
    const s = summarize(cs);
    expect(s).toMatchObject({ rel: 0.75, gen: 0.5, loc: 0.75, emRel: 0.5, emGen: 0, ppl: null, metricOf: { rel: 'tf-token-accuracy', gen: 'tf-token-accuracy' } });
    expect(s.op).toBeCloseTo(Math.cbrt(0.75 * 0.5 * 0.75), 12);
    expect(s.avg).toBeCloseTo((0.75 + 0.5 + 0.75) / 3, 12);
    expect(s.counts).toEqual({ cases: 2, rel: 2, gen: 1, loc: 2, ppl: 0, ood: 0, em: 2 });
    expect(s.pre).toEqual({ rel: 0.25, gen: 0, ppl: null, ood: null });
    const t = summarize([{ ...base, id: 'c', index: 0, rel: 0.9, gen: null, loc: 1, ood: 0.3, oodIndicator: 0, emRel: null, emGen: null }]);
    expect(t.gen).toBe(0.3);
    expect(t.metricOf.gen).toBe('ood');
    expect(t.avg).toBeCloseTo((0.9 + 0.3 + 1) / 3, 12);
  });

  it('summarizeRouting: prompts and routed counts per kind (missing rephrases not counted), fractions, whether thresholds differ', () => {
    const pt = (routed: boolean, threshold: number | null = 2): RoutePoint => ({ score: routed ? 3 : 1, threshold, routed, route: routed ? -1 : 'main', tokens: 4 });
    const s = summarizeRouting([
      { id: 'a', edit: pt(true), rephrase: pt(false), unrelated: [pt(false), pt(true), pt(false)] },
      { id: 'b', edit: pt(true), rephrase: null, unrelated: [] },
    ]);
    expect(s).toEqual({
      edit: { prompts: 2, routed: 2, fraction: 1 },
      rephrase: { prompts: 1, routed: 0, fraction: 0 },
      unrelated: { prompts: 3, routed: 1, fraction: 1 / 3 },
      accuracy: { edit: null, rephrase: null }, // no holders known
      thresholdsDiffer: false,
    });
    // routing accuracy: of the cases whose edit a memory holds, the share whose edit (rephrase) row went there
    const held = summarizeRouting([
      { id: 'a', holder: -1, edit: pt(true), rephrase: pt(false), unrelated: [] },
      { id: 'b', holder: 0, edit: pt(true), rephrase: pt(true), unrelated: [] },
      { id: 'c', holder: 'main', edit: pt(false), rephrase: null, unrelated: [] },
    ]);
    expect(held.accuracy).toEqual({ edit: 0.5, rephrase: 0 });
    expect(summarizeRouting([{ id: 'a', edit: pt(true, 2), rephrase: pt(false, 2 + 1e-6), unrelated: [pt(false, null)] }]).thresholdsDiffer).toBe(true);
    expect(summarizeRouting([]).rephrase).toEqual({ prompts: 0, routed: 0, fraction: null });
  });

  it('planBatches: longest rows first, at most batchSize rows and maxLogitFloats per call, empty rows skipped', () => {
    const row = (len: number, n: number): ScoredRow => ({ ids: Array(len).fill(5), start: len - n, end: len, truncated: false, fullLength: n });
    const rows = [row(3, 1), row(9, 2), row(5, 0), row(7, 3), row(4, 1)];
    expect(planBatches(rows, 10, { batchSize: 2 })).toEqual([[1, 3], [4, 0]]);
    expect(planBatches(rows, 10, { batchSize: 16, maxLogitFloats: 50 })).toEqual([[1, 3], [4, 0]]); // 20 + 30 = 50 fits, +10 does not
    expect(planBatches(rows, 10, { batchSize: 16, maxLogitFloats: 5 })).toEqual([[1], [3], [4], [0]]); // one row always goes
    expect(() => planBatches(rows, 10, { batchSize: 0 })).toThrow(RepairError);
  });
});

describe.skipIf(!haveStories)('rows and batched metrics on stories260K', () => {
  let model: Model;
  let tok: ModelTokenizer;
  beforeAll(async () => {
    model = await loadModel(STORIES, { backend: 'cpu' });
    tok = model.tokenizer;
  });
  afterAll(async () => {
    await model?.dispose();
  });

  const RECORDS: EditRecord[] = [
    { id: 'zog', index: 0, prompt: 'The wizard Zog lived in', target: 'a purple castle', rephrase: 'Zog the wizard made his home in', locality: [{ prompt: 'Once upon a time', answer: 'there was a little girl' }, { prompt: 'Tom liked to', answer: 'play with his ball' }] },
    { id: 'blix', index: 1, prompt: 'The dragon Blix liked to eat', target: 'blue cheese', locality: [{ prompt: 'Lily and Tom went to the', answer: 'park to play' }] },
    { id: 'pim', index: 2, prompt: 'Captain Pim sailed', target: 'a silver boat', oodRephrase: 'Captain Pim was a sailor. He sailed a silver boat on the big sea every day.' },
  ];

  it('recordsTooLong takes the options of a repair run (eval --config with a repair section and --method repair)', async () => {
    expect(await recordsTooLong(model, RECORDS, { saveFreq: 5, repair: { negatives: 0 } })).toEqual([]);
  });

  /** Hand computation, one row per logits call with every position: argmax and NLL on the scored span. */
  async function byHand(src: LogitsSource, ids: number[], start: number): Promise<{ pred: number[]; nll: number[] }> {
    const lg = await src.logits([ids], { positions: 'all' });
    const pred: number[] = [];
    const nll: number[] = [];
    for (let j = start; j < ids.length; j++) {
      const row = lg.at(0, j - 1);
      let best = 0;
      for (let v = 1; v < row.length; v++) if (row[v]! > row[best]!) best = v;
      pred.push(best);
      let m = -Infinity;
      for (const x of row) m = Math.max(m, x);
      let s = 0;
      for (const x of row) s += Math.exp(x - m);
      nll.push(m + Math.log(s) - row[ids[j]!]!);
    }
    return { pred, nll };
  }
  const acc = (pred: number[], ids: number[], start: number) => pred.filter((p, k) => p === ids[start + k]).length / pred.length;

  it('answerRow: "prompt target" with BOS, scored from the prompt\'s own token count; textRow from token 1; truncation', () => {
    const r = answerRow(tok, 'The wizard Zog lived in', 'a purple castle');
    const ids = tok.encode('The wizard Zog lived in a purple castle');
    expect(r.ids).toEqual(ids);
    expect(ids[0]).toBe(1); // BOS
    expect(r.start).toBe(tok.encode('The wizard Zog lived in').length);
    expect(r.end).toBe(ids.length);
    expect(r.fullLength).toBe(ids.length - r.start);
    expect(tok.decode(rowLabels(r))).toBe('a purple castle');
    const t = textRow(tok, 'Once upon a time there was a girl.');
    expect(t.start).toBe(1);
    expect(t.end).toBe(t.ids.length);
    const cut = answerRow(tok, 'The wizard Zog lived in', 'a purple castle', r.start + 2);
    expect(cut).toMatchObject({ truncated: true, start: r.start, end: r.start + 2, fullLength: r.fullLength });
    expect(cut.ids).toEqual(ids.slice(0, r.start + 2));
    const gone = answerRow(tok, 'The wizard Zog lived in', 'a purple castle', r.start - 1);
    expect(gone.end - gone.start).toBe(0);
  });

  it('promptText: the chat template wraps Rel/Gen prompts only when asked', () => {
    const tj = JSON.parse(readFileSync(join(STORIES, 'tokenizer.json'), 'utf8'));
    const chat = new ModelTokenizer(tj, { bos_token: '<s>', eos_token: '</s>' }, "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}");
    expect(promptText(chat, 'Where is Zog?', false)).toBe('Where is Zog?');
    const pt = promptText(chat, 'Where is Zog?', true);
    expect(pt).toBe('[user] Where is Zog?\n[assistant]');
    const row = answerRow(chat, pt, 'in a castle');
    expect(chat.decode(rowLabels(row))).toBe('in a castle');
  });

  it('measure on the base model = predictions computed by hand one row at a time (Rel, Gen, Loc predictions, PPL, OOD)', async () => {
    const m = await measure(model, model, RECORDS, { useChatTemplate: false, metrics: ['tf', 'ppl', 'ood'], batchSize: 16 });
    for (const [i, r] of RECORDS.entries()) {
      const rel = answerRow(tok, r.prompt, r.target);
      const h = await byHand(model, rel.ids, rel.start);
      expect(m.rel[i]).toBeCloseTo(acc(h.pred, rel.ids, rel.start), 12);
      expect(m.ppl[i]).toBeCloseTo(Math.exp(h.nll.reduce((a, b) => a + b, 0) / h.nll.length), 3);
      if (r.rephrase) {
        const g = answerRow(tok, r.rephrase, r.target);
        const hg = await byHand(model, g.ids, g.start);
        expect(m.gen[i]).toBeCloseTo(acc(hg.pred, g.ids, g.start), 12);
      } else expect(m.gen[i]).toBeNull();
      expect(m.locPred[i]).toHaveLength(r.locality?.length ?? 0);
      for (const [j, l] of (r.locality ?? []).entries()) {
        const lr = answerRow(tok, l.prompt, l.answer);
        expect(m.locPred[i]![j]).toEqual((await byHand(model, lr.ids, lr.start)).pred);
      }
      if (r.oodRephrase) {
        const o = textRow(tok, r.oodRephrase);
        const ho = await byHand(model, o.ids, 1);
        const t = -Math.log(0.8);
        expect(m.ood[i]).toBe(ho.nll.filter((x) => x < t).length / ho.nll.length);
        expect(m.oodIndicator[i]).toBe(ho.nll.reduce((a, b) => a + b, 0) / ho.nll.length < t ? 1 : 0);
      } else expect(m.ood[i]).toBeNull();
    }
    expect(m.truncatedRows).toBe(0);
  });

  it('batching does not change the scores (rows of different lengths in one call vs one row per call)', async () => {
    const rows = RECORDS.flatMap((r) => [answerRow(tok, r.prompt, r.target), ...(r.locality ?? []).map((l) => answerRow(tok, l.prompt, l.answer))]);
    const a = await scoreRows(model, rows, model.vocabSize, { batchSize: 1 });
    let calls = 0;
    const counting: LogitsSource = { logits: (b, o) => (calls++, model.logits(b, o)) };
    const b = await scoreRows(counting, rows, model.vocabSize, { batchSize: 32 });
    expect(calls).toBe(1);
    for (let i = 0; i < rows.length; i++) {
      expect(b[i]!.argmax).toEqual(a[i]!.argmax);
      b[i]!.nll.forEach((x, k) => expect(x).toBeCloseTo(a[i]!.nll[k]!, 4));
    }
  });

  it('after edits: Rel/Gen through the routed editor logits and Loc = agreement with the pre-edit argmax, by hand; EM by hand', async () => {
    const pre = await measure(model, model, RECORDS, { useChatTemplate: false, metrics: ['tf'] });
    const ed = await Editor.create(model, { method: 'wise', nIter: 20 });
    try {
      await ed.editMany(RECORDS);
      const post = await measure(ed, model, RECORDS, { useChatTemplate: false, metrics: ['tf'], batchSize: 4 });
      for (const [i, r] of RECORDS.entries()) {
        const rel = answerRow(tok, r.prompt, r.target);
        const h = await byHand(ed, rel.ids, rel.start);
        expect(post.rel[i]).toBeCloseTo(acc(h.pred, rel.ids, rel.start), 12);
        for (const [j, l] of (r.locality ?? []).entries()) {
          const lr = answerRow(tok, l.prompt, l.answer);
          const postPred = (await byHand(ed, lr.ids, lr.start)).pred;
          const prePred = (await byHand(model, lr.ids, lr.start)).pred;
          expect(post.locPred[i]![j]).toEqual(postPred);
          expect(agreement(post.locPred[i]![j]!, pre.locPred[i]![j]!)).toBe(postPred.filter((p, k) => p === prePred[k]).length / prePred.length);
        }
        const em = await exactMatchOf(ed, model, r.prompt, r.target, false);
        const g = await ed.generate(r.prompt, { maxNewTokens: rel.end - rel.start, temperature: 0 });
        expect(em.completion).toBe(g.completion);
        expect(em.match).toBe(g.completion.trim().startsWith(r.target));
      }
    } finally {
      await ed.dispose();
    }
  });

  const TWO = RECORDS.slice(0, 2).map((r, i) => ({ ...r, irrelevant: ['Tim ran to the park.', 'The sun was hot.'][i] }));

  it('evaluate (sequential): runs per N, per-case values, summaries, timings, events; JSON-serialisable; full configuration', async () => {
    const rep = await evaluate(model, TWO, { method: 'wise', editorOptions: { nIter: 20 }, ns: [1, 2], dataset: 'mini' });
    expect(JSON.parse(JSON.stringify(rep))).toEqual(rep);
    expect(rep.format).toBe('repair-edit.eval');
    expect(rep.config).toMatchObject({ method: 'wise', label: 'wise', ns: [1, 2], protocol: 'sequential', metrics: ['tf', 'exact'], batchSize: 16, dataset: 'mini', records: 2, recordIds: ['zog', 'blix'] });
    expect(rep.config.editorConfig.nIter).toBe(20);
    expect(rep.config.model.backend).toBe('cpu');
    expect(rep.runs.map((r) => [r.n, r.cases.length])).toEqual([
      [1, 1],
      [2, 2],
    ]);
    for (const run of rep.runs) {
      expect(run.events['edit-trained']).toBe(run.n);
      expect(run.timings.editSeconds).toBeGreaterThan(0);
      expect(run.timings.secondsPerEdit).toBeCloseTo(run.timings.editSeconds / run.n, 12);
      expect(run.timings.editsPerSecond).toBeCloseTo(run.n / run.timings.editSeconds, 9);
      expect(run.memories).toEqual({ working: run.n, memories: 0 });
      const s = run.summary;
      expect(s.rel).toBeCloseTo(meanOf(run.cases.map((c) => c.rel))!, 12);
      expect(s.loc).toBeCloseTo(meanOf(run.cases.map((c) => c.loc))!, 12);
      expect(s.op).toBeCloseTo(Math.cbrt(s.rel! * s.gen! * s.loc!), 12);
      for (const c of run.cases) {
        for (const v of [c.rel, c.loc]) expect(v! >= 0 && v! <= 1).toBe(true);
        expect(typeof c.emRel).toBe('boolean');
        expect(c.loc).toBeCloseTo(meanOf(c.locPairs)!, 12);
      }
    }
    expect(rep.runs[1]!.cases[1]!.gen).toBeNull(); // blix has no rephrase
    expect(rep.runs[1]!.cases[1]!.emGen).toBeNull();
    expect(rep.runs[0]!.cases[0]!.rel).toBeGreaterThan(rep.runs[0]!.cases[0]!.pre.rel!); // the edit took
  });

  it('evaluate (single): edit, evaluate, restore — the first case equals sequential N = 1; rollback restore also runs', async () => {
    const opts = { method: 'wise' as const, editorOptions: { nIter: 20 }, ns: [2] };
    const [seq] = (await evaluate(model, TWO, { ...opts, ns: [1] })).runs;
    const single = (await evaluate(model, TWO, { ...opts, protocol: 'single' })).runs[0]!;
    expect(single.protocol).toBe('single');
    expect(single.cases).toHaveLength(2);
    expect(single.cases[0]).toEqual(seq!.cases[0]);
    expect(single.memories).toBeNull();
    const rb = await evaluate(model, TWO, { ...opts, protocol: 'single', restore: 'rollback' });
    expect(rb.config.restore).toBe('rollback');
    expect(rb.runs[0]!.cases[0]).toEqual(seq!.cases[0]); // nothing edited before the first case
    expect(rb.runs[0]!.cases).toHaveLength(2);
  });

  it('evaluateVariants: REPAIR and an ablation share the pre-edit predictions; loop events are counted', async () => {
    const reps = await evaluateVariants(
      model,
      TWO,
      [
        { method: 'repair', editorOptions: { nIter: 20 } },
        { label: 'repair -monitor', method: 'repair', editorOptions: { nIter: 20, repair: { monitor: false } } },
      ],
      { ns: [2], metrics: ['tf'] },
    );
    expect(reps.map((r) => r.label)).toEqual(['repair', 'repair -monitor']);
    expect(reps[1]!.config.editorConfig.repair!.monitor).toBe(false);
    expect(reps[0]!.runs[0]!.events['edit-trained']).toBeGreaterThanOrEqual(1);
    expect(reps[1]!.runs[0]!.events['error-detected']).toBeUndefined();
    expect(reps[0]!.runs[0]!.cases.map((c) => c.pre)).toEqual(reps[1]!.runs[0]!.cases.map((c) => c.pre));
    expect(reps[0]!.runs[0]!.cases[0]!.emRel).toBeNull(); // 'exact' not asked for
  });

  it('routingInputs: the metric rows (teacher-forced) or the bare prompts (prompt-only), chat template on edit / rephrase only', () => {
    const [zog, blix] = RECORDS;
    const tf = routingInputs(tok, zog!, false, 'teacher-forced');
    expect(tf.edit).toEqual(answerRow(tok, zog!.prompt, zog!.target).ids);
    expect(tf.rephrase).toEqual(answerRow(tok, zog!.rephrase!, zog!.target).ids);
    expect(tf.unrelated).toEqual(zog!.locality!.map((l) => answerRow(tok, l.prompt, l.answer).ids));
    const po = routingInputs(tok, zog!, false, 'prompt-only');
    expect(po.edit).toEqual(tok.encode(zog!.prompt));
    expect(po.unrelated[1]).toEqual(tok.encode('Tom liked to'));
    expect(routingInputs(tok, blix!, false, 'teacher-forced').rephrase).toBeNull();
    expect(routingInputs(tok, zog!, false, 'teacher-forced', 5).edit).toEqual(tf.edit.slice(0, 5)); // cut as the rows are
    const tj = JSON.parse(readFileSync(join(STORIES, 'tokenizer.json'), 'utf8'));
    const chat = new ModelTokenizer(tj, { bos_token: '<s>', eos_token: '</s>' }, "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}");
    const c = routingInputs(chat, zog!, true, 'prompt-only');
    expect(c.edit).toEqual(chat.encode(promptText(chat, zog!.prompt, true)));
    expect(c.unrelated[0]).toEqual(chat.encode('Once upon a time')); // locality rows never get the template
  });

  it('routing scores: each point = Editor.explain of the metric row, and routed ⇔ the routed logits leave the main weight', async () => {
    const ed = await Editor.create(model, { method: 'wise', nIter: 20 });
    try {
      await ed.editMany(RECORDS);
      const rt = await routingScores(ed, model, RECORDS, { useChatTemplate: false, basis: 'teacher-forced' });
      expect(rt.basis).toBe('teacher-forced');
      expect(rt.cases.map((c) => [c.id, c.rephrase === null, c.unrelated.length])).toEqual([
        ['zog', false, 2],
        ['blix', true, 1],
        ['pim', true, 0],
      ]);
      expect(rt.summary.edit.prompts).toBe(3);
      expect(rt.summary.unrelated.prompts).toBe(3);
      let routedSeen = 0;
      let mainSeen = 0;
      for (const [i, r] of RECORDS.entries()) {
        const rows = [answerRow(tok, r.prompt, r.target), ...(r.rephrase ? [answerRow(tok, r.rephrase, r.target)] : []), ...(r.locality ?? []).map((l) => answerRow(tok, l.prompt, l.answer))];
        const c = rt.cases[i]!;
        const pts = [c.edit!, ...(c.rephrase ? [c.rephrase] : []), ...c.unrelated];
        for (const [k, row] of rows.entries()) {
          const e = await ed.explain({ tokens: row.ids }, { teacherForced: true });
          expect(pts[k]).toEqual({ score: e.score, threshold: e.threshold, routed: e.route !== 'main', route: e.route, tokens: row.ids.length });
          // what the metric saw: the editor's logits on this row equal the base model's iff it stayed on the main weight
          const a = (await ed.logits([row.ids], { positions: 'all' })).row(row.ids.length - 1);
          const b = (await model.logits([row.ids], { positions: 'all' })).row(row.ids.length - 1);
          let diff = 0;
          for (let v = 0; v < a.length; v++) diff = Math.max(diff, Math.abs(a[v]! - b[v]!));
          if (pts[k]!.routed) {
            expect(diff, `${r.id} row ${k}`).toBeGreaterThan(1e-4);
            routedSeen++;
          } else {
            expect(diff, `${r.id} row ${k}`).toBeLessThan(1e-5);
            mainSeen++;
          }
        }
      }
      expect(routedSeen).toBeGreaterThan(0);
      expect(mainSeen).toBeGreaterThan(0);
      expect(rt.cases.every((c) => c.edit!.routed)).toBe(true); // the edits reach their memory
      // prompt-only: the bare prompts, routed as generate() routes them
      const po = await routingScores(ed, model, RECORDS.slice(0, 1), { useChatTemplate: false, basis: 'prompt-only' });
      const e = await ed.explain(RECORDS[0]!.prompt);
      expect(po.cases[0]!.edit).toEqual({ score: e.score, threshold: e.threshold, routed: e.route !== 'main', route: e.route, tokens: e.tokens });
    } finally {
      await ed.dispose();
    }
  });

  it('evaluate with routing: per run on the final model, aligned with the cases; off by default, null for ft and single', async () => {
    const rep = await evaluate(model, TWO, { method: 'wise', editorOptions: { nIter: 20 }, ns: [1, 2], metrics: ['tf'], routing: true });
    expect(JSON.parse(JSON.stringify(rep))).toEqual(rep);
    expect(rep.config.routing).toBe('teacher-forced');
    for (const run of rep.runs) {
      const rt = run.routing!;
      expect(rt.basis).toBe('teacher-forced');
      expect(rt.cases.map((c) => c.id)).toEqual(run.cases.map((c) => c.id));
      expect(rt.summary).toEqual(summarizeRouting(rt.cases));
      expect(rt.summary.edit.prompts).toBe(run.n);
      expect(rt.summary.unrelated.prompts).toBe(TWO.slice(0, run.n).reduce((a, r) => a + (r.locality?.length ?? 0), 0));
      expect(rt.seconds).toBeGreaterThan(0);
    }
    // the same edits in an editor of our own give the same points at N = 2
    const ed = await Editor.create(model, { method: 'wise', nIter: 20 });
    try {
      await ed.editMany(TWO);
      const mine = await routingScores(ed, model, TWO, { useChatTemplate: false, basis: 'teacher-forced' });
      expect(mine.cases).toEqual(rep.runs[1]!.routing!.cases);
    } finally {
      await ed.dispose();
    }
    const off = await evaluate(model, TWO, { method: 'wise', editorOptions: { nIter: 20 }, ns: [1], metrics: ['tf'] });
    expect(off.config.routing).toBeNull();
    expect(off.runs[0]!.routing).toBeNull();
    const ft = await evaluate(model, TWO, { method: 'ft', editorOptions: { nIter: 5 }, ns: [1], metrics: ['tf'], routing: 'prompt-only' });
    const single = await evaluate(model, TWO, { method: 'wise', editorOptions: { nIter: 20 }, ns: [1], metrics: ['tf'], protocol: 'single', routing: true });
    expect(ft.config.routing).toBe('prompt-only');
    expect(ft.runs[0]!.routing).toBeNull();
    expect(single.runs[0]!.routing).toBeNull();
    await rejects(evaluate(model, TWO, { ns: [1], routing: 'sometimes' as never }), 'ERR_INVALID_ARG');
  });

  it('bad options and abort', async () => {
    await rejects(evaluate(model, TWO, { ns: [3] }), 'ERR_INVALID_ARG');
    await rejects(evaluate(model, TWO, { ns: [0] }), 'ERR_INVALID_ARG');
    await rejects(evaluate(model, TWO, { ns: [] }), 'ERR_INVALID_ARG');
    await rejects(evaluate(model, [], { ns: [1] }), 'ERR_INVALID_ARG');
    await rejects(evaluate(model, TWO, { ns: [1], metrics: ['bleu' as never] }), 'ERR_INVALID_ARG');
    await rejects(evaluate(model, TWO, { ns: [1], protocol: 'batch' as never }), 'ERR_INVALID_ARG');
    await rejects(evaluate(model, [TWO[0]!, { ...TWO[1]!, id: 'zog' }], { ns: [1] }), 'ERR_INVALID_ARG');
    // a record the editor cannot train fails before any edit, naming the record
    const e = await rejects(evaluate(model, [{ ...TWO[0]!, target: 'x'.repeat(2000) }], { ns: [1], editorOptions: { nIter: 20 } }), 'ERR_CONTEXT_LENGTH');
    expect(e.message).toMatch(/^record zog \(index 0\)/);
    const ac = new AbortController();
    ac.abort();
    await rejects(evaluate(model, TWO, { ns: [1], editorOptions: { nIter: 20 }, signal: ac.signal }), 'ERR_ABORTED');
  });
});

describe.skipIf(!haveFacts)('§3 token accuracy against the facts-llama model card (independent numbers)', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(FACTS, { backend: 'cpu' });
  });
  afterAll(async () => {
    await model?.dispose();
  });

  // ../shared/models/facts-llama/SOURCES.md, "Accuracy": EasyEdit teacher-forced accuracy, averaged per record.
  it('CounterFact 0..199 prompt + target_new = 0.6457; 2000..2199 prompt / rephrase + ground_truth = 0.7011 / 0.6836', async () => {
    const cf = loadDataset('counterfact').records;
    const a = await measure(model, model, cf.slice(0, 200), { useChatTemplate: false, metrics: ['tf'] });
    expect(meanOf(a.rel)!.toFixed(4)).toBe('0.6457');
    const b = await measure(
      model,
      model,
      cf.slice(2000, 2200).map((r) => ({ ...r, target: r.groundTruth! })),
      { useChatTemplate: false, metrics: ['tf'] },
    );
    expect(meanOf(b.rel)!.toFixed(4)).toBe('0.7011');
    expect(meanOf(b.gen)!.toFixed(4)).toBe('0.6836');
  });

  it('ZsRE src / rephrase + answers[0] (trained) = 1.0; an editor with no edits leaves Loc at 1', async () => {
    const z = loadDataset('zsre', { skipInvalid: true }).records.slice(0, 100);
    const m = await measure(model, model, z.map((r) => ({ ...r, target: r.groundTruth! })), { useChatTemplate: false, metrics: ['tf'] });
    expect(meanOf(m.rel)).toBe(1);
    expect(meanOf(m.gen)).toBe(1);
    const ed = await Editor.create(model, { method: 'wise' });
    try {
      const post = await measure(ed, model, z, { useChatTemplate: false, metrics: ['tf'] });
      const pre = await measure(model, model, z, { useChatTemplate: false, metrics: ['tf'] });
      expect(meanOf(post.locPred.map((p, i) => agreement(p[0]!, pre.locPred[i]![0]!)))).toBe(1);
    } finally {
      await ed.dispose();
    }
  });
});
