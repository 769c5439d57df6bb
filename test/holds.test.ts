// Issue 12, "edits that hold": each of repair's new mechanisms against a behaviour that fails without it, on
// the facts model — shard replay (every edit of a 5-edit shard is still recalled), threshold recalibration
// (after a merge, the locality rows of the edited records route to the main weight; explain() shows the
// recalibrated threshold and the two distributions it lies between), routing on content tokens (a long
// unrelated row does not route) — and, with every new mechanism off, 'repair' reproduces its outputs from
// before these mechanisms existed (test/fixtures/repair-paper-golden.json, written by
// scripts/repair-paper-golden.ts at commit eb80718).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, type Model } from '../lib/model.js';
import { Editor, TRAIN_HOOK, type EditRequest } from '../lib/editor.js';
import type { NativeEditHyper } from '../lib/native.js';
import { calibrateThreshold, REPAIR_DEFAULTS, REPAIR_PAPER, resolveRepairOptions, topKMean } from '../lib/repair.js';
import { promptVariants } from '../lib/editor/rows.js';
import { mentions } from '../lib/editor/subject.js';
import { editSlice, loadDataset } from '../lib/datasets.js';
import { explanationJson, routeSummary } from '../lib/cli/memory.js';
import { packageRoot } from '../lib/paths.js';
import { FACTS, haveFacts, loadZsreRecords, rejects, tfAcc, zsreEdit } from './helpers/setup.js';

/** Each facts-model test trains 8–20 edits: minutes on a loaded 2-core machine. */
const SLOW = 900_000;
if (!haveFacts) console.warn('[holds.test] ../shared/models/facts-llama or the ZsRE file is absent: the issue-12 behaviour tests are skipped');

describe('calibrateThreshold, topKMean, options', () => {
  it('puts the threshold between separated distributions, else at the fewest (share-weighted) errors', () => {
    expect(calibrateThreshold([10, 12], [2, 4], 0.3)).toBeCloseTo(4 + 0.3 * 6, 12);
    expect(calibrateThreshold([10, 12], [2, 4], 0)).toBe(4);
    // overlap: pos {5, 9, 10}, neg {1, 2, 6}: t = 6 misroutes pos 5 only (1/3); t = 2 misroutes neg 6 (1/3) too:
    // the tie goes to the higher threshold
    expect(calibrateThreshold([5, 9, 10], [1, 2, 6], 0.3)).toBe(6);
    expect(calibrateThreshold([], [1], 0.3)).toBe(Infinity);
    expect(calibrateThreshold([3], [], 0.3)).toBeLessThan(3);
    expect(topKMean([1, 9, 3, 7], 2)).toBe(8);
    expect(topKMean([1, 9], 4)).toBe(5);
    expect(topKMean([], 4)).toBe(0);
  });
  it('every new option is validated; REPAIR_PAPER switches every new mechanism off', () => {
    expect(() => resolveRepairOptions({ replay: -1 }, 10)).toThrow(/replay/);
    expect(() => resolveRepairOptions({ routeTopK: -1 }, 10)).toThrow(/routeTopK/);
    expect(topKMean([1, 9, 3, 7], 0)).toBe(5);
    expect(() => resolveRepairOptions({ calibrationPoint: 2 }, 10)).toThrow(/calibrationPoint/);
    expect(() => resolveRepairOptions({ recalibrate: 1 as unknown as boolean }, 10)).toThrow(/recalibrate/);
    expect(() => resolveRepairOptions({ negatives: 65 }, 10)).toThrow(/negatives/);
    expect(() => resolveRepairOptions({ marginScale: 0 }, 10)).toThrow(/marginScale/);
    expect(() => resolveRepairOptions({ marginScale: Number.NaN }, 10)).toThrow(/marginScale/);
    expect(resolveRepairOptions({ ...REPAIR_PAPER }, 10).marginScale).toBe(1);
    expect(REPAIR_DEFAULTS.marginScale).toBe(2);
    expect(resolveRepairOptions({ marginScale: 'auto' }, 10).marginScale).toBe('auto');
    expect(() => resolveRepairOptions({ marginScale: 'Auto' as unknown as number }, 10)).toThrow(/marginScale/);
    expect(() => resolveRepairOptions({ denseShards: 'yes' as unknown as boolean }, 10)).toThrow(/denseShards/);
    expect([REPAIR_DEFAULTS.denseShards, resolveRepairOptions({ ...REPAIR_PAPER }, 10).denseShards]).toEqual([true, false]);
    const on = resolveRepairOptions(undefined, 10);
    expect([on.recalibrate, on.routeContent, on.replay > 0, on.negatives, on.correctness]).toEqual([true, true, true, 0, 'exact']);
    const off = resolveRepairOptions({ ...REPAIR_PAPER }, 10);
    expect([off.recalibrate, off.routeContent, off.replay, off.negatives, off.correctness]).toEqual([false, false, 0, 0, 'token']);
    expect(REPAIR_DEFAULTS.recalibrate).toBe(true);
    expect(() => resolveRepairOptions({ paraphraseRows: -1 }, 10)).toThrow(/paraphraseRows/);
    expect(() => resolveRepairOptions({ paraphraseRows: 1.5 }, 10)).toThrow(/paraphraseRows/);
    expect(resolveRepairOptions({ ...REPAIR_PAPER }, 10).paraphraseRows).toBe(0);
  });
  it('the CLI JSON and summary of an explanation carry the nearest edit under key routing, and the true score / threshold relation', () => {
    const e = { route: 2, score: 30, threshold: 32, tokens: 9, scores: [], key: { edit: 'z7', similarity: 0.97 } } as unknown as Parameters<typeof explanationJson>[0];
    expect(explanationJson(e).key).toEqual({ edit: 'z7', similarity: 0.97 });
    expect(routeSummary(e)).toBe('memory 2 (score 30.00 < threshold 32.00, nearest edit z7)');
    const plainE = { ...e, score: 35, key: undefined };
    expect(explanationJson(plainE)).not.toHaveProperty('key');
    expect(routeSummary(plainE)).toBe('memory 2 (score 35.00 >= threshold 32.00)');
    expect(routeSummary({ ...e, key: { edit: 'c1', similarity: 0.5, subject: 'Danielle Darrieux' } })).toBe('memory 2 (score 30.00 < threshold 32.00, nearest edit c1, subject "Danielle Darrieux")');
  });
  it('promptVariants drops one interior lowercase word of the question frame, never the subject, the same on every call', () => {
    const p = 'What is the product made by UniFirst?';
    const v = promptVariants(p, 3);
    expect(v).toHaveLength(3);
    expect(new Set(v).size).toBe(3);
    for (const x of v) {
      expect(x.split(' ')).toHaveLength(p.split(' ').length - 1);
      expect(x.startsWith('What ')).toBe(true);
      expect(x.endsWith(' UniFirst?')).toBe(true);
    }
    expect(promptVariants(p, 3)).toEqual(v);
    expect(promptVariants(p, 0)).toEqual([]);
    // no frame word to drop: the prompt itself
    expect(promptVariants('Founder of Acme Corp?', 2)).toEqual(['Founder Acme Corp?', 'Founder Acme Corp?']);
    expect(promptVariants('Acme founder?', 2)).toEqual(['Acme founder?', 'Acme founder?']);
    expect(promptVariants('Where is Émile Zola buried?', 1)[0]).toBe('Where Émile Zola buried?');
  });
});

describe.skipIf(!haveFacts)('edits that hold (issue 12) on the facts model', () => {
  const zsre = loadZsreRecords();
  const rec = (i: number): EditRequest => zsreEdit(zsre, i, { id: true });
  let model: Model;
  /** Teacher-forced token accuracy of prompt + " " + target through the editor's router. */
  const routedAcc = (ed: Editor, r: EditRequest): Promise<number> => tfAcc(model, ed, r.prompt, r.target);
  // one edit per training call, no retraining: what a shard keeps is what its training left
  const plain = { monitor: false, batching: false, kd: false };
  beforeAll(async () => {
    model = await loadModel(FACTS, { backend: 'cpu' });
  });
  afterAll(async () => {
    await model?.dispose();
  }, SLOW);

  it('margin scale: repair trains with the margins × marginScale (2 by default), wise and marginScale 1 with the reference margins', async () => {
    const margins = async (opts: Parameters<typeof Editor.create>[1]) => {
      const ed = await Editor.create(model, { ...opts, nIter: 2 });
      const seen: number[][] = [];
      (ed as unknown as Record<symbol, unknown>)[TRAIN_HOOK] = (_ids: string[], h: NativeEditHyper) => (seen.push([h.alpha!, h.beta!, h.gamma!]), h);
      await ed.edit(rec(0));
      await ed.dispose();
      return seen[0];
    };
    expect(await margins({ method: 'repair', repair: plain })).toEqual([10, 40, 20]);
    expect(await margins({ method: 'repair', repair: { ...plain, marginScale: 1 } })).toEqual([5, 20, 10]);
    expect(await margins({ method: 'repair', actMargin: [1, 2, 3], repair: { ...plain, marginScale: 3 } })).toEqual([3, 6, 9]);
    expect(await margins({ method: 'wise' })).toEqual([5, 20, 10]);
  }, SLOW);

  it("margin scale 'auto': measured on the first training call (α = the background score of its irrelevant rows under the reference margins), the probe undone, kept by save/load, not kept by a failed call", async () => {
    const opts = { method: 'repair' as const, nIter: 8, repair: { ...plain, marginScale: 'auto' as const } };
    const hooked = (ed: Editor) => {
      const seen: number[][] = [];
      (ed as unknown as Record<symbol, unknown>)[TRAIN_HOOK] = (_ids: string[], h: NativeEditHyper) => (seen.push([h.alpha!, h.beta!, h.gamma!]), h);
      return seen;
    };
    // a first call that fails measures nothing that stays
    const failed = await Editor.create(model, opts);
    // (the training hook throws: after the probe, before the training proper)
    (failed as unknown as Record<symbol, unknown>)[TRAIN_HOOK] = () => {
      throw new Error('stop here');
    };
    await expect(failed.edit(rec(0))).rejects.toThrow('stop here');
    expect(failed.marginScale).toBeUndefined();
    await failed.dispose();

    const ed = await Editor.create(model, opts);
    expect(ed.marginScale).toBeUndefined();
    const seen = hooked(ed);
    await ed.edit(rec(0));
    const s = ed.marginScale!;
    expect(s).toBeGreaterThanOrEqual(0.25);
    expect(s).toBeLessThanOrEqual(20);
    expect(s).not.toBe(1); // this model's background is not the 7B models' α = 5
    expect(seen[0]![0]).toBeCloseTo(5 * s, 9);
    expect(seen[0]![1]).toBeCloseTo(20 * s, 9);
    await ed.edit(rec(1));
    expect(ed.marginScale).toBe(s); // measured once
    expect(seen[1]![0]).toBeCloseTo(5 * s, 9);

    // the probe leaves no trace: the same edits with the measured scale as a number give the same memory
    const fixed = await Editor.create(model, { ...opts, repair: { ...plain, marginScale: s } });
    await fixed.edit(rec(0));
    await fixed.edit(rec(1));
    const probe = rec(2).prompt;
    const [a, b] = [await ed.explain(probe), await fixed.explain(probe)];
    expect(a.scores.map((x) => x.score)).toEqual(b.scores.map((x) => x.score));
    await fixed.dispose();

    // save / load keeps the measured scale (no new probe on the loaded editor's next call)
    const dir = mkdtempSync(join(tmpdir(), 'repair-auto-'));
    try {
      await ed.save(join(dir, 'm.safetensors'));
      const back = await Editor.load(model, join(dir, 'm.safetensors'));
      expect(back.marginScale).toBe(s);
      const seen2 = hooked(back);
      await back.edit(rec(3));
      expect(seen2[0]![0]).toBeCloseTo(5 * s, 9);
      expect(back.marginScale).toBe(s);
      await back.dispose();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    await ed.dispose();
    // wise and a numeric scale report what they train with
    const w = await Editor.create(model, { method: 'wise' });
    expect(w.marginScale).toBe(1);
    await w.dispose();
  }, SLOW);

  it('dense shards: repair trains without the gradient mask (density 1); with denseShards off, REPAIR_PAPER and wise under the mask (maskRatio)', async () => {
    const density = async (opts: Parameters<typeof Editor.create>[1]) => {
      const ed = await Editor.create(model, { ...opts, nIter: 2 });
      const seen: number[] = [];
      (ed as unknown as Record<symbol, unknown>)[TRAIN_HOOK] = (_ids: string[], h: NativeEditHyper) => (seen.push(h.maskRatio), h);
      await ed.edit(rec(0));
      await ed.dispose();
      return seen[0];
    };
    expect(await density({ method: 'repair', repair: plain })).toBe(1);
    expect(await density({ method: 'repair', repair: { ...plain, denseShards: false } })).toBe(0.2);
    expect(await density({ method: 'repair', maskRatio: 0.5, repair: { ...plain, denseShards: false } })).toBe(0.5);
    expect(await density({ method: 'repair', repair: { ...REPAIR_PAPER } })).toBe(0.2);
    expect(await density({ method: 'wise' })).toBe(0.2);
  }, SLOW);

  it('dense shards answer the rephrased questions of 10 edits exactly (greedy, routed) more often than the 20 % mask; paraphrase rows answer prompts with two frame words dropped (never trained) more often', async () => {
    const recs = Array.from({ length: 10 }, (_, i) => zsreEdit(zsre, i, { id: true, rephrase: true }));
    const exact = async (ed: Editor, prompt: string, target: string) => {
      const k = model.tokenizer.encode(`${prompt} ${target}`).length - model.tokenizer.encode(prompt).length;
      return (await ed.generate(prompt, { maxNewTokens: k, temperature: 0 })).completion.trim().startsWith(target.trim());
    };
    const answered = async (denseShards: boolean, paraphraseRows: number) => {
      const ed = await Editor.create(model, { method: 'repair', saveFreq: 5, mergeFreq: 10, repair: { ...plain, denseShards, paraphraseRows } });
      await ed.editMany(recs);
      let rephrase = 0;
      let unseen = 0;
      for (const r of recs) {
        if (await exact(ed, r.rephrase!, r.target)) rephrase++;
        // a variant the paraphrase rows never trained: two frame words dropped
        if (await exact(ed, promptVariants(promptVariants(r.prompt, 2)[1]!, 1)[0]!, r.target)) unseen++;
      }
      await ed.dispose();
      return { rephrase, unseen };
    };
    const dense = await answered(true, 0);
    const masked = await answered(false, 0);
    const rows = await answered(true, 4);
    console.log(`[holds.test] of 10 — rephrases: dense ${dense.rephrase}, masked ${masked.rephrase}; two words dropped: 4 paraphrase rows ${rows.unseen}, none ${dense.unseen}`);
    expect(dense.rephrase).toBeGreaterThanOrEqual(masked.rephrase + 2); // 6 against 3 when written
    expect(rows.unseen).toBeGreaterThanOrEqual(dense.unseen + 2); // 5 against 3 when written
  }, SLOW);

  it('key routing: rephrased questions reach the memory that holds their edit more often than by the memories scores; explain() names the nearest edit', async () => {
    const recs = Array.from({ length: 30 }, (_, i) => zsreEdit(zsre, i, { id: true, rephrase: true }));
    const ed = await Editor.create(model, { method: 'repair', saveFreq: 5, mergeFreq: 10, repair: plain });
    await ed.editMany(recs);
    const mem = ed.memories().memories;
    expect(mem.length).toBe(6);
    let byKey = 0;
    let byScore = 0;
    for (const r of recs) {
      const e = await ed.explain(r.rephrase!);
      if (e.route === 'main') continue;
      expect(e.key).toBeDefined();
      expect(mem[e.route]!.edits).toContain(e.key!.edit);
      if (mem[e.route]!.edits.includes(r.id!)) byKey++;
      // the rule key routing replaces: among the memories above their threshold, the highest score / threshold
      const top = e.scores.filter((s) => s.score > s.threshold).sort((a, b) => b.score / b.threshold - a.score / a.threshold)[0]!;
      if (top.memory >= 0 && mem[top.memory]!.edits.includes(r.id!)) byScore++;
    }
    // an edit prompt's nearest key is its own (similarity 1), in the memory that holds it
    const e = await ed.explain(recs[7]!.prompt);
    expect(e.key!.edit).toBe('z7');
    expect(e.key!.similarity).toBeCloseTo(1, 4);
    expect(mem[e.route as number]!.edits).toContain('z7');
    await ed.dispose();
    const off = await Editor.create(model, { method: 'repair', repair: { ...plain, keyRouting: false } });
    await off.edit(recs[0]!);
    expect((await off.explain(recs[0]!.prompt)).key).toBeUndefined();
    await off.dispose();
    console.log(`[holds.test] rephrases reaching their memory of 30: keys ${byKey}, scores ${byScore}`);
    expect(byKey).toBeGreaterThanOrEqual(byScore + 2);
  }, SLOW);

  it('subject routing: CounterFact edits naming their subject — locality prompts (another subject, the same relation) stay on the main weight and every rephrase reaches its memory; without it neither holds; edits without a subject route as before', async () => {
    const cf = editSlice(loadDataset('counterfact'), 10);
    const reqs = cf.map((r, i) => ({ id: `c${i}`, prompt: r.prompt, target: r.target, rephrase: r.rephrase, irrelevant: r.irrelevant, subject: r.subject }));
    const run = async (subjectRouting: boolean, withSubject = true) => {
      const ed = await Editor.create(model, { method: 'repair', saveFreq: 5, mergeFreq: 10, repair: { subjectRouting } });
      await ed.editMany(reqs.map((r) => (withSubject ? r : { ...r, subject: undefined })));
      const holder = new Map(ed.memories().memories.flatMap((m, i) => m.edits.map((e) => [e, i] as const)));
      const loc: (number | 'main')[] = [];
      const reph: boolean[] = [];
      const keys: (string | undefined)[] = [];
      for (const [i, r] of cf.entries()) {
        if (!cf.some((o) => mentions(r.locality![0]!.prompt, o.subject!))) loc.push((await ed.explain(r.locality![0]!.prompt)).route);
        const x = await ed.explain(r.rephrase!);
        reph.push(x.route === holder.get(`c${i}`));
        keys.push(x.key?.subject);
      }
      await ed.dispose();
      return { loc, reph, keys };
    };
    const on = await run(true);
    expect(on.loc.length).toBeGreaterThan(5);
    expect(on.loc.every((r) => r === 'main')).toBe(true);
    expect(on.reph.every(Boolean)).toBe(true);
    expect(on.keys).toEqual(cf.map((r) => r.subject));
    const off = await run(false);
    expect(off.loc.some((r) => r !== 'main') || off.reph.filter(Boolean).length < on.reph.length).toBe(true);
    expect(off.reph.filter(Boolean).length).toBeLessThan(on.reph.length);
    // no subject named: subject routing changes nothing
    const [bare, bareOff] = [await run(true, false), await run(false, false)];
    expect(bare).toEqual(bareOff);
    // a subject must be a span of the prompt
    const ed = await Editor.create(model, { method: 'repair' });
    await rejects(ed.edit({ ...reqs[0]!, subject: 'Nobody Here' }), 'ERR_EDIT_REQUEST', /subject/);
    await rejects(ed.edit({ ...reqs[0]!, subject: ' ' }), 'ERR_EDIT_REQUEST', /subject/);
    await ed.dispose();
  }, SLOW);

  it('mentions: whole words, any case, any white space', () => {
    expect(mentions('The mother tongue of danielle  darrieux is', 'Danielle Darrieux')).toBe(true);
    expect(mentions('Applebee is', 'Apple')).toBe(false);
    expect(mentions('Zolana', 'Zola')).toBe(false);
    expect(mentions('Émile Zola wrote', 'Zola')).toBe(true);
    expect(mentions('C++ (the language)', 'C++')).toBe(true);
  });

  it('shard replay: after 5 edits in one (masked) shard every edit is still recalled (teacher-forced, every answer token); without replay some are not', async () => {
    const recs = Array.from({ length: 5 }, (_, i) => rec(i));
    const accs = async (replay: number) => {
      const ed = await Editor.create(model, { method: 'repair', saveFreq: 5, mergeFreq: 10, repair: { ...plain, replay, denseShards: false } }); // masked shards: dense ones (the default) hold 5 edits without replay
      for (const r of recs) await ed.edit(r);
      expect(ed.memories().memories.length).toBe(1); // all five in one shard
      const out = [];
      for (const r of recs) out.push(await routedAcc(ed, r));
      await ed.dispose();
      return out;
    };
    expect(await accs(4)).toEqual([1, 1, 1, 1, 1]);
    expect((await accs(0)).some((a) => a < 1)).toBe(true);
  }, SLOW);

  it('recalibration: where the paper would merge (10 edits, save 5 / merge 10), the locality prompts of the edited records stay on the main weight; without it most route (reference margins); ×2 margins alone keep them too', async () => {
    const recs = Array.from({ length: 10 }, (_, i) => rec(i));
    const routed = async (recalibrate: boolean, marginScale = 1) => {
      const ed = await Editor.create(model, { method: 'repair', saveFreq: 5, mergeFreq: 10, repair: { ...plain, recalibrate, marginScale } });
      await ed.editMany(recs);
      let n = 0;
      for (let i = 0; i < 10; i++) {
        if ((await ed.explain({ tokens: model.tokenizer.encode(`${zsre[i]!.loc} ${zsre[i]!.loc_ans}`) }, { teacherForced: true })).route !== 'main') n++;
        if ((await ed.explain(zsre[i]!.loc)).route !== 'main') n++;
      }
      let own = 0;
      for (const r of recs) if ((await ed.explain(r.prompt)).route !== 'main') own++;
      await ed.dispose();
      return { n, own };
    };
    const on = await routed(true);
    expect(on.n).toBeLessThanOrEqual(3); // of 20 (teacher-forced rows and bare prompts)
    expect(on.own).toBe(10);
    expect((await routed(false)).n).toBeGreaterThanOrEqual(6);
    // marginScale (issue 12 item 4): the hinge's margins scaled past this model's background distance keep the
    // unrelated rows low even with the reference's thresholds
    expect((await routed(false, 2)).n).toBeLessThanOrEqual(3);
  }, SLOW);

  it('recalibration after a merge (keepShards off): the merged memory gets a threshold set on its own weights, shown by explain() with both distributions', async () => {
    const recs = Array.from({ length: 10 }, (_, i) => rec(i));
    const make = async (recalibrate: boolean) => {
      const ed = await Editor.create(model, { method: 'repair', saveFreq: 5, mergeFreq: 10, repair: { ...plain, keepShards: false, recalibrate, marginScale: 1, negatives: 4 } }); // the scenario of issue 12's finding 1 (extra negatives as when it was written)
      await ed.editMany(recs);
      expect(ed.memories().memories.map((m) => m.kind)).toEqual(['merged']);
      return ed;
    };
    const on = await make(true);
    const e = await on.explain(recs[0]!.prompt);
    const m = e.scores.find((s) => s.kind === 'merged')!;
    expect(m.calibration!.positives.length).toBe(10);
    expect(m.calibration!.negatives.length).toBe(10); // the ten edits' irrelevant rows
    expect(m.threshold).toBeCloseTo(calibrateThreshold(m.calibration!.positives, m.calibration!.negatives, REPAIR_DEFAULTS.calibrationPoint), 9);
    expect(m.threshold).toBeGreaterThan(Math.max(...m.calibration!.negatives));
    expect(on.memories().memories[0]!.threshold).toBe(m.threshold);
    expect(e.route).toBe(0);
    // the reference keeps act_ratio × the min of its shards' statistics, taken on weights the merged memory no
    // longer has: most unrelated rows score above it on the merged weights (the merge raised every score)
    const off = await make(false);
    const thrOff = off.memories().memories[0]!.threshold;
    expect(thrOff).toBeLessThan(m.threshold);
    expect(m.calibration!.negatives.filter((x) => x > thrOff).length).toBeGreaterThanOrEqual(5);
    await on.dispose();
    await off.dispose();
  }, SLOW);

  it('routing on content tokens: a long unrelated row does not route (the reference switches to the max past 100 tokens and routes it)', async () => {
    const recs = Array.from({ length: 5 }, (_, i) => rec(i));
    // unrelated questions and answers joined until the row is past 100 tokens (the vocabulary is character-level)
    let long = '';
    for (let i = 700; model.tokenizer.encode(long).length <= 120; i++) long += `${zsre[i]!.loc} ${zsre[i]!.loc_ans}. `;
    const ids = model.tokenizer.encode(long.trim());
    expect(ids.length).toBeGreaterThan(100);
    expect(ids.length).toBeLessThanOrEqual(model.config.maxPositions);
    const route = async (routeContent: boolean) => {
      const ed = await Editor.create(model, { method: 'repair', saveFreq: 5, mergeFreq: 10, repair: { ...plain, routeContent } });
      await ed.editMany(recs);
      const r = (await ed.explain({ tokens: ids }, { teacherForced: true })).route;
      const own = (await ed.explain(recs[2]!.prompt)).route;
      await ed.dispose();
      return { r, own };
    };
    const on = await route(true);
    expect(on.r).toBe('main');
    expect(on.own).toBe(0);
    expect((await route(false)).r).not.toBe('main');
  }, SLOW);

  it("with every new mechanism off, 'repair' reproduces its pre-issue-12 outputs (golden fixture)", async () => {
    const golden = JSON.parse(readFileSync(join(packageRoot(), 'test', 'fixtures', 'repair-paper-golden.json'), 'utf8'));
    // The fixture was written with the baseline (SSE2) CPU kernels, whose sums run in the same order on
    // every x86-64 CPU; the AVX2 / AVX-512 kernels sum in wider lanes and, over 8 edits of 70 steps, move
    // the figures by ~1e-3 (still far inside every op's float64 bound).
    const savedIsa = process.env.REPAIR_CPU_ISA;
    process.env.REPAIR_CPU_ISA = 'baseline';
    const pinned = await loadModel(FACTS, { backend: 'cpu', threads: 1 });
    if (savedIsa === undefined) delete process.env.REPAIR_CPU_ISA;
    else process.env.REPAIR_CPU_ISA = savedIsa;
    const ed = await Editor.create(pinned, { method: 'repair', saveFreq: 3, mergeFreq: 6, seed: 3, repair: { ...REPAIR_PAPER } });
    const recs = Array.from({ length: 8 }, (_, i) => rec(i));
    const events: string[] = [];
    const r = await ed.editMany(recs, { onEvent: (e) => events.push(e.type) });
    expect(events).toEqual(golden.events);
    expect(r.results.map((x) => [x.id, x.steps, x.memory])).toEqual(golden.results.map((x: { id: string; steps: number; memory: number }) => [x.id, x.steps, x.memory]));
    // float figures within 1e-4 relative (CPU kernels may be re-tuned; routes and tokens must not move)
    const close = (a: number, b: number) => expect(Math.abs(a - b)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(b)));
    r.results.forEach((x, i) => (close(x.losses.at(-1)!, golden.results[i].loss), close(x.score, golden.results[i].score)));
    const mem = ed.memories();
    expect(mem.memories.map((m) => [m.name, m.kind, m.edits])).toEqual(golden.memories.memories.map((m: { name: string; kind: string; edits: string[] }) => [m.name, m.kind, m.edits]));
    mem.memories.forEach((m, i) => close(m.threshold, golden.memories.memories[i].threshold));
    const probes = [...recs.map((x) => x.prompt), zsre[40]!.loc, zsre[41]!.loc];
    for (let i = 0; i < probes.length; i++) {
      const e = await ed.explain(probes[i]!);
      const t = await ed.explain(probes[i]!, { teacherForced: true });
      const g = golden.explain[i];
      expect([e.route, t.route]).toEqual([g.route, g.tfRoute]);
      close(e.score, g.score);
      close(e.threshold, g.threshold);
      close(t.score, g.tfScore);
    }
    for (let i = 0; i < 4; i++) expect((await ed.generate(recs[i]!.prompt, { maxNewTokens: 6 })).tokens).toEqual(golden.gen[i]);
    await ed.dispose();
    await pinned.dispose();
  }, SLOW);
});
