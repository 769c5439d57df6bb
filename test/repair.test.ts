// REPAIR (method 'repair'): the pure pieces (FORMBATCHES, merge weights, error rates, options) against
// hand-computed values, then the closed loop on the facts model: a shard made to fail is pruned and its
// edits reintegrated until they pass, the loop terminates within its budget, an aborted editMany
// resumes (also across save/load), and with every mechanism off 'repair' is 'wise'.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { join } from 'node:path';
import { loadModel, type Model } from '../lib/model.js';
import { Editor, TRAIN_HOOK, type EditRequest, type RepairEvent } from '../lib/editor.js';
import { cosine, errorRates, formBatches, lossAwareWeights, REPAIR_PAPER, resolveRepairOptions } from '../lib/repair.js';
import { RepairError } from '../lib/errors.js';
import type { NativeEditHyper } from '../lib/native.js';
import { FACTS, haveFacts, loadZsreRecords, tfAcc, useTempDir, zsreEdit } from './helpers/setup.js';

if (!haveFacts) console.warn('[repair.test] ../shared/models/facts-llama or the ZsRE file is absent: closed-loop tests are skipped');

describe('FORMBATCHES (§2.4)', () => {
  it('groups hand-made features exactly as the greedy procedure does', () => {
    // Two tight clusters on the axes and one in between. Cosines:
    //   a0=(1,0) a1=(0.98,0.2) a2=(0.95,0.31) ; b0=(0,1) b1=(0.2,0.98) ; c=(0.7,0.7)
    const f = [
      [1, 0],
      [0.98, 0.2],
      [0.95, 0.31],
      [0, 1],
      [0.2, 0.98],
      [0.7, 0.7],
    ];
    // Step 1: the highest mean similarity to the others is c (index 5); its 2 nearest: a2 (0.893...) then a1.
    // Step 2 over {0, 3, 4}: means — a0: (0 + 0.2)/2, b0: (0 + 0.98)/2, b1: (0.2+0.98)/2 = 0.59 → b1 seeds; nearest b0, a0.
    const sims = f.map((x) => f.map((y) => cosine(x, y)));
    const mean = (i: number, set: number[]) => set.filter((j) => j !== i).reduce((a, j) => a + sims[i]![j]!, 0) / (set.length - 1);
    const all = [0, 1, 2, 3, 4, 5];
    expect(all.map((i) => mean(i, all)).indexOf(Math.max(...all.map((i) => mean(i, all))))).toBe(5);
    expect(formBatches(f, 3)).toEqual([
      [5, 2, 1],
      [4, 3, 0],
    ]);
    // b = 2: after [5, 2], a1 and b1 tie exactly on mean similarity (the set is mirror-symmetric), so the
    // lower index a1 seeds [1, 0]; then [3, 4]. b larger than the set: c, then by similarity to c with
    // the mirror ties (a1 = b1, a0 = b0) broken by index.
    expect(formBatches(f, 2)).toEqual([
      [5, 2],
      [1, 0],
      [3, 4],
    ]);
    expect(formBatches(f, 10)).toEqual([[5, 2, 1, 4, 0, 3]]);
    expect(formBatches([[1, 0]], 4)).toEqual([[0]]);
    expect(formBatches([], 4)).toEqual([]);
  });

  it('breaks ties by the lowest index, both for the seed and for the neighbours', () => {
    const f = [
      [1, 0],
      [1, 0],
      [0, 1],
      [0, 1],
    ];
    expect(formBatches(f, 2)).toEqual([
      [0, 1],
      [2, 3],
    ]);
  });
});

describe('loss-aware weights, error rates, options', () => {
  it('softmax(−α·L) weights', () => {
    const w = lossAwareWeights([0.1, 0.5, 2], 1);
    const e = [Math.exp(-0.1), Math.exp(-0.5), Math.exp(-2)];
    const z = e.reduce((a, b) => a + b);
    w.forEach((v, i) => expect(v).toBeCloseTo(e[i]! / z, 12));
    expect(lossAwareWeights([3, 3], 5)).toEqual([0.5, 0.5]);
    expect(lossAwareWeights([0, 1000], 1)[0]).toBeCloseTo(1, 12); // stable for large losses
  });

  it('error rates count every monitored edit routed to a memory (§2.2), not the failures only', () => {
    const r = errorRates([
      { memory: 'm1', ok: true },
      { memory: 'm1', ok: false },
      { memory: 'm1', ok: true },
      { memory: 'm2', ok: false },
      { memory: undefined, ok: false },
    ]);
    expect(r.get('m1')).toEqual({ n: 3, failed: 1, rate: 1 / 3 });
    expect(r.get('m2')).toEqual({ n: 1, failed: 1, rate: 1 });
    expect(r.size).toBe(2);
  });

  it('every option is validated and named in the error', () => {
    const bad = (o: object, field: string) => {
      try {
        resolveRepairOptions(o, 10);
      } catch (e) {
        expect(e).toBeInstanceOf(RepairError);
        expect((e as RepairError).code).toBe('ERR_INVALID_ARG');
        expect((e as RepairError).message).toContain(field);
        return;
      }
      throw new Error(`accepted ${JSON.stringify(o)}`);
    };
    bad({ batchSize: 0 }, 'batchSize');
    bad({ tauCorrect: 2 }, 'tauCorrect');
    bad({ kdVarianceSign: 0 }, 'kdVarianceSign');
    bad({ correctness: 'fuzzy' }, 'correctness');
    bad({ budget: -1 }, 'budget');
    bad({ monitor: 'yes' }, 'monitor');
    bad({ nonsense: 1 }, 'nonsense');
    bad({ fitStop: -0.1 }, 'fitStop');
    bad({ kdLogits: 1 }, 'kdLogits');
    bad({ kdTemperature: 0 }, 'kdTemperature');
    bad({ kdTemperature: Number.NaN }, 'kdTemperature');
    const d = resolveRepairOptions(undefined, 10);
    expect(d).toMatchObject({ batchSize: 4, window: 8, kdLambda: 0.2, kdTheta: 0.1, kdWeight: 1, tauCorrect: 0.85, tauPrune: 0.5, tauE: 20, mergeAlpha: 1, epsCons: 0.5, kdLogits: false, kdTemperature: 2, fitStop: 0.02 });
    expect(resolveRepairOptions({ batchSize: 3 }, 10).window).toBe(6);
  });
});

// The paper's closed loop (monitor, prune, reintegrate, batching + KD) is tested as the paper specifies it
// (REPAIR_PAPER: issue 12's mechanisms off, the monitor on token accuracy); test/holds.test.ts tests those.
describe.skipIf(!haveFacts)('the closed loop on the facts model', () => {
  const zsre = loadZsreRecords();
  const rec = (i: number): EditRequest => zsreEdit(zsre, i, { id: true });
  let model: Model;
  const tmp = useTempDir('repair-loop-');
  /** Teacher-forced token accuracy of prompt + target through the editor's router. */
  const routedAcc = (ed: Editor, r: EditRequest): Promise<number> => tfAcc(model, ed, r.prompt, r.target);
  /** Train `ids` with a vanishing learning rate the first time they are trained (a shard made to fail). */
  const poisonFirst = (ed: Editor, ids: readonly string[]): void => {
    const poisoned = new Set(ids);
    const seen = new Set<string>();
    (ed as unknown as Record<symbol, unknown>)[TRAIN_HOOK] = (batch: string[], h: NativeEditHyper): NativeEditHyper => {
      const first = batch.some((id) => poisoned.has(id) && !seen.has(id));
      batch.forEach((id) => seen.add(id));
      return first ? { ...h, lr: 1e-9 } : h;
    };
  };
  beforeAll(async () => {
    model = await loadModel(FACTS, { backend: 'cpu' });
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it('a shard made to fail is pruned, its edits are reintegrated and then pass; the loop ends within its budget', async () => {
    const ed = await Editor.create(model, { method: 'repair', saveFreq: 4, mergeFreq: 8, repair: { ...REPAIR_PAPER, batching: false, kd: false, budget: 2, retrainShare: 1e9 } });
    // z4..z7 are trained with an impossible (vanishing) learning rate on their first attempt only.
    const poisoned = new Set(['z4', 'z5', 'z6', 'z7']);
    poisonFirst(ed, [...poisoned]);
    const events: RepairEvent[] = [];
    const r = await ed.editMany(
      Array.from({ length: 8 }, (_, i) => rec(i)),
      { onEvent: (e) => events.push(e) },
    );
    const types = events.map((e) => e.type);
    expect(types).toContain('error-detected');
    expect(types).toContain('shard-pruned');
    expect(types).toContain('edits-reintegrated');
    const pruned = events.find((e) => e.type === 'shard-pruned') as Extract<RepairEvent, { type: 'shard-pruned' }>;
    expect(pruned.edits.some((id) => poisoned.has(id))).toBe(true);
    const reint = events.filter((e) => e.type === 'edits-reintegrated').flatMap((e) => (e as Extract<RepairEvent, { type: 'edits-reintegrated' }>).ids);
    for (const id of poisoned) expect(reint).toContain(id);
    expect(r.retriggers).toBeGreaterThanOrEqual(1);
    expect(r.retriggers).toBeLessThanOrEqual(8 * 2); // every retrigger spends at least one edit's budget
    expect(r.gaveUp).toEqual([]);
    expect(ed.pending()).toMatchObject({ queued: [], residual: [], gaveUp: [] });
    // Reintegration fixes what retraining can fix; an edit whose prompt is out-scored by another memory
    // (a routing conflict) can stay in E — at most one of the four here.
    expect([...poisoned].filter((id) => ed.pending().feedback.includes(id)).length).toBeLessThanOrEqual(1);
    // afterwards every edit passes (teacher-forced accuracy through the router >= τ_correct)
    expect(new Set(ed.edits())).toEqual(new Set(Array.from({ length: 8 }, (_, i) => `z${i}`)));
    await ed.dispose();
  });

  it('retrainShare bounds the retraining of one call: 0 retrains nothing, 0.25 at most ceil(N/4) edits', async () => {
    const run = async (retrainShare: number) => {
      const ed = await Editor.create(model, { method: 'repair', saveFreq: 4, mergeFreq: 8, repair: { ...REPAIR_PAPER, batching: false, kd: false, budget: 2, retrainShare } });
      poisonFirst(ed, ['z4', 'z5', 'z6', 'z7']);
      const events: RepairEvent[] = [];
      await ed.editMany(Array.from({ length: 8 }, (_, i) => rec(i)), { onEvent: (e) => events.push(e) });
      const trained = events.filter((e) => e.type === 'edit-trained').reduce((a, e) => a + (e as Extract<RepairEvent, { type: 'edit-trained' }>).ids.length, 0);
      const types = events.map((e) => e.type);
      const failing = ed.pending().feedback;
      await ed.dispose();
      return { trained, types, failing };
    };
    const none = await run(0);
    expect(none.trained).toBe(8);
    expect(none.types).toContain('error-detected'); // the monitor still sees the failures ...
    expect(none.types).not.toContain('shard-pruned'); // ... but nothing is retrained
    expect(none.types).not.toContain('edits-reintegrated');
    expect(none.failing.length).toBeGreaterThanOrEqual(3);
    const quarter = await run(0.25);
    expect(quarter.trained).toBeGreaterThan(8);
    expect(quarter.trained).toBeLessThanOrEqual(8 + 2);
    expect(quarter.failing.length).toBeLessThan(none.failing.length); // what was retrained now passes
  }, 600_000);

  it('an edit that can never be learned is given up after its budget and the loop still terminates', async () => {
    const ed = await Editor.create(model, { method: 'repair', saveFreq: 2, mergeFreq: 4, repair: { ...REPAIR_PAPER, batching: false, kd: false, budget: 1, minMonitored: 1, tauPrune: 0.4, retrainShare: 1e9 } });
    (ed as unknown as Record<symbol, unknown>)[TRAIN_HOOK] = (ids: string[], h: NativeEditHyper) => (ids.includes('z1') ? { ...h, lr: 1e-9 } : h);
    const r = await ed.editMany([rec(0), rec(1), rec(2), rec(3)]);
    expect(r.gaveUp).toEqual(['z1']);
    expect(ed.edits()).not.toContain('z1');
    expect(ed.pending().gaveUp).toEqual(['z1']);
    await ed.dispose();
  }, 600_000);

  it('batching + KD: batches are formed, KD runs, and the edits are learned', async () => {
    const ed = await Editor.create(model, { method: 'repair', saveFreq: 4, mergeFreq: 8, repair: { ...REPAIR_PAPER } });
    const events: RepairEvent[] = [];
    const recs = Array.from({ length: 8 }, (_, i) => rec(i));
    await ed.editMany(recs, { onEvent: (e) => events.push(e) });
    const trained = events.filter((e) => e.type === 'edit-trained') as Extract<RepairEvent, { type: 'edit-trained' }>[];
    expect(trained.some((e) => e.ids.length > 1)).toBe(true);
    expect(trained.some((e) => e.kd > 0)).toBe(true);
    expect(events.some((e) => e.type === 'shards-merged' && e.rule === 'loss-aware')).toBe(true);
    let pass = 0;
    for (const r of recs) if ((await routedAcc(ed, r)) >= 0.85) pass++;
    expect(pass).toBeGreaterThanOrEqual(6);
    await ed.dispose();
  }, 600_000);

  it('fit stop: a batch stops once its CE is learnt and the margin no longer improves; the edit is still recalled', async () => {
    // the monitor on (fit stop is part of it) but never retraining: each edit() is one training
    const off = { batching: false, kd: false, retrainShare: 0 };
    const fit = await Editor.create(model, { method: 'repair', nIter: 70, earlyStop: false, repair: { ...off, fitStop: 0.02 } });
    const full = await Editor.create(model, { method: 'repair', nIter: 70, earlyStop: false, repair: { ...off, fitStop: 0 } });
    let fitSteps = 0;
    let early = 0;
    for (const i of [0, 1, 2]) {
      const a = await fit.edit(rec(i));
      const b = await full.edit(rec(i));
      expect(b.steps).toBe(70);
      expect(a.steps).toBeLessThanOrEqual(70);
      if (a.steps < 70) early++;
      fitSteps += a.steps;
      // the CE was learnt when it stopped: the edit is recalled as well as with every step
      expect(await routedAcc(fit, rec(i))).toBeGreaterThanOrEqual(Math.min(1, await routedAcc(full, rec(i))) - 0.2);
      expect(await routedAcc(fit, rec(i))).toBeGreaterThanOrEqual(0.85);
    }
    // The plateau test ("no 1 % gain in 10 steps") is a knife edge: the order of the kernels' sums (the
    // ISA level) can move one edit past it (39 vs 70 steps on record 1), so: most stop, and steps are saved.
    expect(early).toBeGreaterThanOrEqual(2);
    expect(fitSteps).toBeLessThan(0.85 * 3 * 70);
    await fit.dispose();
    await full.dispose();
  });

  it('the optional logit KL (kdLogits, T): it adds to L_KD of batched samples and changes the training', async () => {
    const common = { saveFreq: 8, mergeFreq: 8, nIter: 12 };
    const kdOf = async (kdLogits: boolean) => {
      const ed = await Editor.create(model, { method: 'repair', ...common, repair: { monitor: false, kdLogits, kdTemperature: 2, fitStop: 0 } });
      const events: RepairEvent[] = [];
      await ed.editMany([0, 1, 2, 3].map(rec), { onEvent: (e) => events.push(e) });
      const mem = await ed.logits([model.tokenizer.encode(`${rec(1).prompt} ${rec(1).target}`)], { positions: 'all' });
      await ed.dispose();
      const t = events.filter((e) => e.type === 'edit-trained') as Extract<RepairEvent, { type: 'edit-trained' }>[];
      return { t, mem };
    };
    const a = await kdOf(false);
    const b = await kdOf(true);
    // the same batches (features come from the unedited model) ...
    expect(b.t.map((e) => e.ids)).toEqual(a.t.map((e) => e.ids));
    const batched = a.t.findIndex((e) => e.ids.length > 1);
    expect(batched).toBeGreaterThanOrEqual(0);
    // ... but the KL term is in L_KD and the trained memory differs
    expect(b.t[batched]!.kd).toBeGreaterThan(a.t[batched]!.kd);
    let diff = 0;
    for (let i = 0; i < a.mem.data.length; i++) diff = Math.max(diff, Math.abs(a.mem.data[i]! - b.mem.data[i]!));
    expect(diff).toBeGreaterThan(1e-4);
  });

  it('an aborted editMany leaves a consistent state and resumes where it stopped, also after save/load', async () => {
    const ed = await Editor.create(model, { method: 'repair', saveFreq: 2, mergeFreq: 4, repair: { batching: false, kd: false } });
    const ac = new AbortController();
    let n = 0;
    const p = ed.editMany(
      Array.from({ length: 6 }, (_, i) => rec(i)),
      { signal: ac.signal, onEvent: (e) => e.type === 'edit-trained' && ++n === 3 && ac.abort() },
    );
    await expect(p).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(ed.edits()).toEqual(['z0', 'z1', 'z2']);
    expect(ed.pending().queued).toEqual(['z3', 'z4', 'z5']);
    const file = join(tmp(), 'loop.mem');
    await ed.save(file);
    const ed2 = await Editor.load(model, file);
    expect(ed2.pending().queued).toEqual(['z3', 'z4', 'z5']);
    await ed2.editMany([]);
    expect(ed2.edits()).toEqual(['z0', 'z1', 'z2', 'z3', 'z4', 'z5']);
    expect(ed2.pending().queued).toEqual([]);
    // and the original editor resumes the same way, to the same weights
    await ed.editMany([]);
    const probe = [model.tokenizer.encode(`${zsre[4]!.src} ${zsre[4]!.alt}`)];
    const a = await ed.logits(probe, { positions: 'all' });
    const b = await ed2.logits(probe, { positions: 'all' });
    expect(Buffer.from(a.data.buffer).equals(Buffer.from(b.data.buffer))).toBe(true);
    await ed.dispose();
    await ed2.dispose();
  });

  it("with every mechanism off, 'repair' gives the same outputs as 'wise' for the same seed", async () => {
    const common = { saveFreq: 2, mergeFreq: 4, seed: 7 };
    const wise = await Editor.create(model, { method: 'wise', ...common });
    // the paper's four mechanisms off and issue 12's (REPAIR_PAPER) off too
    const rep = await Editor.create(model, { method: 'repair', ...common, repair: { ...REPAIR_PAPER, monitor: false, batching: false, kd: false, lossAwareMerge: false } });
    const recs = Array.from({ length: 5 }, (_, i) => rec(i));
    await wise.editMany(recs);
    await rep.editMany(recs);
    expect(rep.memories()).toEqual(wise.memories());
    const probe = recs.map((r) => model.tokenizer.encode(`${r.prompt} ${r.target}`)).concat([model.tokenizer.encode(zsre[40]!.loc)]);
    const a = await wise.logits(probe, { positions: 'all' });
    const b = await rep.logits(probe, { positions: 'all' });
    expect(Buffer.from(a.data.buffer).equals(Buffer.from(b.data.buffer))).toBe(true);
    const ga = await wise.generate(recs[3]!.prompt, { maxNewTokens: 8 });
    const gb = await rep.generate(recs[3]!.prompt, { maxNewTokens: 8 });
    expect(gb.tokens).toEqual(ga.tokens);
    await wise.dispose();
    await rep.dispose();
  });
});
