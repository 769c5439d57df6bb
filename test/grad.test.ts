// End-to-end check of the editing gradient (ALGORITHM.md §1.2–1.5, native/edit.cpp): one sideEdit step
// with lr = 1, no mask, no decay, no clamp gives W'_new = W' − ∇L, so ∇L = W' − W'_new. That native
// gradient is compared with central finite differences of a float64 reference forward + loss
// (test/helpers/ref64.ts) on tiny models: CE at the label rows, plus the three-hinge routing margin on
// per-row mean distances (φ = SiLU, GELU-tanh or identity). Also: the masked update moves ~ρ of the
// entries, each by exactly the unmasked gradient. GPT-2 (tiny-gpt2): the suffix runs LayerNorm with bias,
// GELU, attention without RoPE and biases; the side output carries the c_proj bias (o = A·W'ᵀ + b).
import { describe, it, expect, afterAll } from 'vitest';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadModel, modelInternals, type Model } from '../lib/model.js';
import { native, type NativeEditBatch, type NativeEditHyper, type NativeEditResult } from '../lib/native.js';
import { packageRoot } from '../lib/paths.js';
import { EditLoss64, loadRef64, type KdHyper, type LossParts, type MarginHyper, type Ref64Weights } from './helpers/ref64.js';
import { mulberry32 as rng } from './helpers/optest.js';

const addonError = (() => {
  try {
    native();
    return '';
  } catch (e) {
    return (e as Error).message.split('\n')[0]!;
  }
})();
const haveAddon = addonError === '';
if (!haveAddon) console.warn(`[grad.test] the native addon is not built (${addonError}): gradient checks are skipped`);

const FIX = join(packageRoot(), 'test', 'fixtures');
const LLAMA3 = join(FIX, 'tiny-llama3');
const QWEN2 = join(FIX, 'tiny-qwen2');
const GPT2 = join(FIX, 'tiny-gpt2');
const STORIES = join(packageRoot(), 'models', 'stories260K');

// ---- deterministic randomness (rng: mulberry32, test/helpers/optest.ts) ----
function gauss(u: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

/** 2 edit rows + 1 irrelevant row, T = 8, different left padding per row, labels on the last 3 positions of the edit rows. */
function makeBatch(V: number, seed: number): NativeEditBatch {
  const u = rng(seed);
  const R = 3;
  const T = 8;
  const pad = Int32Array.from([1, 0, 3]);
  const kind = Int32Array.from([0, 0, 1]);
  const tokens = new Int32Array(R * T);
  const labels = new Int32Array(R * T).fill(-1);
  const labelWeights = new Float32Array(R * T);
  const lw = [0.25, 0.5, 0.75];
  for (let r = 0; r < R; r++)
    for (let t = 0; t < T; t++) {
      tokens[r * T + t] = t < pad[r]! ? 2 : 3 + Math.floor(u() * (V - 3)); // pads hold eos (any id works)
      if (kind[r] === 0 && t >= T - 3) {
        labels[r * T + t] = 3 + Math.floor(u() * (V - 3));
        labelWeights[r * T + t] = lw[t - (T - 3)]! * (r + 1);
      }
    }
  return { tokens, R, T, pad, labels, labelWeights, kind };
}

function hyperOf(m: MarginHyper, over: Partial<NativeEditHyper> = {}): NativeEditHyper {
  return {
    nIter: 1,
    lr: 1,
    weightDecay: 0,
    clamp: 0,
    maskRatio: 1,
    seed: 0,
    margin: m.margin,
    alpha: m.alpha,
    beta: m.beta,
    gamma: m.gamma,
    act: m.act,
    earlyStop: false,
    fullForward: false,
    ...over,
  };
}

/**
 * Margins (f32-exact, as the addon narrows them) chosen from the distances at W' so that every hinge has
 * positive entries, away from their kinks: α = d_i/2; β between the two edit rows' distances (only the
 * smaller is active); γ such that only the pair with the smaller edit distance is active.
 */
function pickMargins(drow: number[], act: 0 | 1 | 2): MarginHyper {
  const [e0, e1, di] = drow as [number, number, number];
  const lo = Math.min(e0, e1);
  const hi = Math.max(e0, e1);
  const split = hi - lo > 0.05 * hi;
  return {
    margin: true,
    act,
    alpha: Math.fround(0.5 * di),
    beta: Math.fround(split ? 0.5 * (lo + hi) : 1.5 * hi),
    gamma: Math.fround(split ? 0.5 * (lo + hi) - di : 1.5 * hi - di),
  };
}

interface Prepared {
  model: Model;
  ref: Ref64Weights;
  batch: NativeEditBatch;
  lossFn: EditLoss64;
  Wp32: Float32Array; // W' as stored in the slot
  Wp: Float64Array;
  base: Float32Array;
  target: 'value' | 'key';
}

const models: Model[] = [];
afterAll(async () => {
  for (const m of models) await m.dispose();
});

async function prepare(dir: string, L: number, noiseRel: number, seed: number, marginOnly = false, target: 'value' | 'key' = 'value'): Promise<Prepared> {
  const ref = loadRef64(dir);
  const model = await loadModel(dir, { backend: 'cpu' });
  models.push(model);
  const batch = makeBatch(ref.V, seed);
  if (marginOnly) batch.labelWeights.fill(0);
  const base = await modelInternals(model).enqueue(async (nm) => {
    const side = nm.sideCreate(L, target === 'key' ? 1 : 0);
    const s = await nm.sideAdd(side, -1);
    const b = await nm.sideRead(side, s);
    nm.sideFree(side);
    return b;
  });
  // the base copy must be the layer's down_proj (key: GPT-2 c_fc as [F, D]) exactly
  const Wv = target === 'key' ? ref.layers[L]!.up : ref.layers[L]!.down;
  let same = true;
  for (let i = 0; i < Wv.length; i++) if (base[i] !== Wv[i]) same = false;
  expect(same).toBe(true);
  let ss = 0;
  for (const v of base) ss += v * v;
  const std = Math.sqrt(ss / base.length);
  const u = rng(seed * 7919 + 1);
  const Wp32 = new Float32Array(base.length);
  for (let i = 0; i < base.length; i++) Wp32[i] = base[i]! + noiseRel * std * gauss(u);
  return { model, ref, batch, lossFn: new EditLoss64(ref, L, batch, target), Wp32, Wp: Float64Array.from(Wp32), base, target };
}

/** One native step at W' on a fresh slot: the result and ∇L = W' − W'_new (float64, exact difference of f32s). */
async function nativeGrad(
  p: Prepared,
  L: number,
  hyper: NativeEditHyper,
): Promise<{ res: NativeEditResult; g: Float64Array; after: Float32Array }> {
  return modelInternals(p.model).enqueue(async (nm) => {
    const side = nm.sideCreate(L, p.target === 'key' ? 1 : 0);
    try {
      const s = await nm.sideAdd(side, -1);
      await nm.sideWrite(side, s, p.Wp32);
      const back = await nm.sideRead(side, s);
      expect(back).toEqual(p.Wp32);
      const res = await nm.sideEdit(side, s, p.batch, hyper);
      const after = await nm.sideRead(side, s);
      const g = new Float64Array(after.length);
      for (let i = 0; i < g.length; i++) g[i] = p.Wp32[i]! - after[i]!;
      return { res, g, after };
    } finally {
      nm.sideFree(side);
    }
  });
}

interface FdReport {
  maxG: number;
  checked: number;
  maxRelLarge: number;
  maxAbsSmall: number; // relative to maxG
  worst: string;
  fails: string[];
}

/** Central differences on ~30 entries (the 20 largest |g| + 10 random) against the native gradient. */
function fdCheck(p: Prepared, g: Float64Array, h: MarginHyper, seed: number, kd?: KdHyper): FdReport {
  let maxG = 0;
  for (const v of g) maxG = Math.max(maxG, Math.abs(v));
  const order = Array.from(g.keys()).sort((a, b) => Math.abs(g[b]!) - Math.abs(g[a]!));
  const pick = new Set(order.slice(0, 20));
  const u = rng(seed + 99);
  while (pick.size < 30) pick.add(Math.floor(u() * g.length));
  const W = Float64Array.from(p.Wp);
  const pos0 = p.lossFn.loss(W, h, kd).pos.join(',');
  const rep: FdReport = { maxG, checked: 0, maxRelLarge: 0, maxAbsSmall: 0, worst: '', fails: [] };
  for (const idx of pick) {
    const w = W[idx]!;
    const eps = 1e-4 * Math.max(1, Math.abs(w));
    W[idx] = w + eps;
    const lp: LossParts = p.lossFn.loss(W, h, kd);
    W[idx] = w - eps;
    const lm: LossParts = p.lossFn.loss(W, h, kd);
    W[idx] = w;
    // the hinges' active sets must not change across the stencil (no kink inside it)
    expect(lp.pos.join(',')).toBe(pos0);
    expect(lm.pos.join(',')).toBe(pos0);
    const fd = (lp.loss - lm.loss) / (2 * eps);
    const gn = g[idx]!;
    const err = Math.abs(fd - gn);
    rep.checked++;
    const K = p.target === 'key' ? p.ref.D : p.ref.F;
    const where = `[${Math.floor(idx / K)},${idx % K}] fd=${fd.toExponential(6)} native=${gn.toExponential(6)}`;
    if (Math.abs(gn) > 1e-2 * maxG) {
      const rel = err / Math.max(Math.abs(fd), 1e-300);
      if (rel > rep.maxRelLarge) (rep.maxRelLarge = rel), (rep.worst = where);
      if (rel > 2e-3) rep.fails.push(`rel ${rel.toExponential(2)} at ${where}`);
    } else {
      const a = err / maxG;
      rep.maxAbsSmall = Math.max(rep.maxAbsSmall, a);
      if (a > 1e-3) rep.fails.push(`abs ${a.toExponential(2)}·max|g| at ${where}`);
    }
  }
  return rep;
}

interface Case {
  name: string;
  dir: string;
  L: number;
  margin: boolean;
  act: 0 | 1 | 2;
  seed: number;
  /** Zero every label weight: CE = 0, so the gradient is the routing margin's alone. */
  marginOnly?: boolean;
  /** GPT-2: edit the key matrix c_fc (the reference's choice) instead of c_proj. */
  target?: 'value' | 'key';
}

const CASES: Case[] = [
  { name: '(a) tiny-llama3 L=1, margin, act=SiLU', dir: LLAMA3, L: 1, margin: true, act: 1, seed: 11 },
  { name: '(b) tiny-llama3 L=1, margin, act=identity (paper)', dir: LLAMA3, L: 1, margin: true, act: 0, seed: 12 },
  { name: '(c) tiny-llama3 L=1, CE only', dir: LLAMA3, L: 1, margin: false, act: 1, seed: 13 },
  { name: '(d) tiny-qwen2 L=0 (q/k/v bias, tied, GQA 4:1), margin, SiLU', dir: QWEN2, L: 0, margin: true, act: 1, seed: 14 },
  { name: '(e) stories260K L=3, margin, SiLU', dir: STORIES, L: 3, margin: true, act: 1, seed: 15 },
  { name: '(f) tiny-llama3 L=2 (last layer: empty suffix), margin, SiLU', dir: LLAMA3, L: 2, margin: true, act: 1, seed: 16 },
  { name: '(g) tiny-llama3 L=1, margin only (CE weights 0), SiLU', dir: LLAMA3, L: 1, margin: true, act: 1, seed: 17, marginOnly: true },
  { name: '(h) tiny-llama3 L=1, margin only (CE weights 0), identity', dir: LLAMA3, L: 1, margin: true, act: 0, seed: 18, marginOnly: true },
  { name: '(i) tiny-gpt2 L=0 (LayerNorm, GELU, biases, wpe, no RoPE), margin, act=GELU', dir: GPT2, L: 0, margin: true, act: 2, seed: 19 },
  { name: '(j) tiny-gpt2 L=0, CE only', dir: GPT2, L: 0, margin: false, act: 2, seed: 20 },
  { name: '(k) tiny-gpt2 L=0, margin only (CE weights 0), GELU: the c_proj bias inside φ', dir: GPT2, L: 0, margin: true, act: 2, seed: 22, marginOnly: true },
  { name: '(l) tiny-gpt2 L=1 (last layer: empty suffix), margin, GELU', dir: GPT2, L: 1, margin: true, act: 2, seed: 23 },
  { name: '(m) tiny-gpt2 L=0, key matrix c_fc (through gelu and c_proj), margin, GELU', dir: GPT2, L: 0, margin: true, act: 2, seed: 24, target: 'key' },
  { name: '(n) tiny-gpt2 L=1, key matrix c_fc, CE only', dir: GPT2, L: 1, margin: false, act: 2, seed: 25, target: 'key' },
  { name: '(o) tiny-gpt2 L=1, key matrix c_fc, margin only (CE weights 0), identity', dir: GPT2, L: 1, margin: true, act: 0, seed: 26, marginOnly: true, target: 'key' },
];

describe.skipIf(!haveAddon)('edit gradient vs float64 finite differences (CPU backend)', () => {
  for (const c of CASES) {
    it.skipIf(!existsSync(join(c.dir, 'config.json')))(c.name, async () => {
      const p = await prepare(c.dir, c.L, 0.5, c.seed, c.marginOnly, c.target);
      let h: MarginHyper = { margin: false, alpha: 0, beta: 0, gamma: 0, act: c.act };
      if (c.margin) {
        const d0 = p.lossFn.loss(p.Wp, { margin: true, alpha: 0, beta: 0, gamma: 0, act: c.act }).drow;
        h = pickMargins(d0, c.act);
      }
      const ref = p.lossFn.loss(p.Wp, h);
      if (c.margin) {
        // every hinge has strictly positive entries
        expect(ref.pos.every((n) => n > 0)).toBe(true);
        expect(ref.h1 > 0 && ref.h2 > 0 && ref.h3 > 0).toBe(true);
      }
      const { res, g } = await nativeGrad(p, c.L, hyperOf(h));
      expect(res.steps).toBe(1);
      const relLoss = Math.abs(res.loss[0]! - ref.loss) / Math.abs(ref.loss);
      const relCe = Math.abs(res.ce[0]! - ref.ce) / Math.max(Math.abs(ref.ce), 1e-6);
      const act = ref.h1 + ref.h2 + ref.h3;
      const errAct = Math.abs(res.act[0]! - act);
      const editRows = ref.drow.filter((_, r) => p.batch.kind[r] === 0);
      const thr = editRows.length ? editRows.reduce((a, b) => a + b, 0) / editRows.length : 0;
      const rep = fdCheck(p, g, h, c.seed);
      console.log(
        `[grad] ${c.name}: loss ref=${ref.loss.toFixed(6)} native=${res.loss[0]!.toFixed(6)} (rel ${relLoss.toExponential(2)}), ` +
          `ce ${ref.ce.toFixed(6)}, hinges h1=${ref.h1.toExponential(3)} h2=${ref.h2.toExponential(3)} h3=${ref.h3.toExponential(3)} ` +
          `(positive ${ref.pos.join('/')}; α=${h.alpha.toPrecision(4)} β=${h.beta.toPrecision(4)} γ=${h.gamma.toPrecision(4)}; ` +
          `drow=${ref.drow.map((d) => d.toPrecision(4)).join(',')}); thresholdStat ${res.thresholdStat.toPrecision(6)} vs ${thr.toPrecision(6)}\n` +
          `        FD: ${rep.checked} entries, max|g|=${rep.maxG.toExponential(3)}, max rel err (large) ${rep.maxRelLarge.toExponential(2)} ` +
          `at ${rep.worst}, max abs err (small) ${rep.maxAbsSmall.toExponential(2)}·max|g|` +
          (rep.fails.length ? `\n        FAILS:\n          ${rep.fails.join('\n          ')}` : ''),
      );
      if (c.marginOnly) expect(res.ce[0]).toBe(0);
      expect(relLoss).toBeLessThan(1e-4);
      expect(relCe).toBeLessThan(1e-4);
      expect(errAct).toBeLessThan(1e-4 * Math.max(1, act));
      if (c.margin) expect(Math.abs(res.thresholdStat - thr)).toBeLessThan(1e-4 * Math.max(thr, 1e-6));
      expect(rep.maxG).toBeGreaterThan(0);
      expect(rep.fails).toEqual([]);
    });
  }

  // REPAIR batches (Eq. 4): two samples of two edit rows each + an irrelevant row, label spans of different
  // lengths (the logit KL aligns them from the first answer token). The teacher (sample 0) is a stop-gradient:
  // the reference freezes its features and logits at W'. (p) cosine + variance, (q) + logit KL at T = 2,
  // (r) logit KL alone (λ = ϑ = 0), (s) ϑ < 0 (the diversity reading) with the KL at T = 0.7.
  const KD_CASES: { name: string; lambda: number; theta: number; T: number; seed: number }[] = [
    { name: '(p) KD cosine + variance, no logit KL', lambda: 0.7, theta: 0.3, T: 0, seed: 41 },
    { name: '(q) KD cosine + variance + logit KL (T = 2)', lambda: 0.7, theta: 0.3, T: 2, seed: 42 },
    { name: '(r) logit KL alone (T = 2)', lambda: 0, theta: 0, T: 2, seed: 43 },
    { name: '(s) ϑ < 0 and logit KL (T = 0.7)', lambda: 0.4, theta: -0.2, T: 0.7, seed: 44 },
  ];
  for (const c of KD_CASES) {
    it(`${c.name}: tiny-llama3 L=1, two samples, CE + L_KD`, async () => {
      const L = 1;
      const p = await prepare(LLAMA3, L, 0.5, c.seed);
      // 5 rows: sample 0 = rows 0, 1 (3 labels each), sample 1 = rows 2 (2 labels), 3 (4 labels), row 4 irrelevant
      const u = rng(c.seed);
      const R = 5;
      const T = 9;
      const V = p.ref.V;
      const pad = Int32Array.from([1, 0, 2, 0, 3]);
      const kind = Int32Array.from([0, 0, 0, 0, 1]);
      const sample = Int32Array.from([0, 0, 1, 1, -1]);
      const nLab = [3, 3, 2, 4, 0];
      const tokens = new Int32Array(R * T);
      const labels = new Int32Array(R * T).fill(-1);
      const labelWeights = new Float32Array(R * T);
      for (let r = 0; r < R; r++)
        for (let t = 0; t < T; t++) {
          tokens[r * T + t] = t < pad[r]! ? 2 : 3 + Math.floor(u() * (V - 3));
          if (t >= T - nLab[r]!) {
            labels[r * T + t] = 3 + Math.floor(u() * (V - 3));
            labelWeights[r * T + t] = 0.2 + 0.1 * r;
          }
        }
      const batch = { tokens, R, T, pad, labels, labelWeights, kind, sample };
      const lossFn = new EditLoss64(p.ref, L, batch);
      const q: Prepared = { ...p, batch, lossFn };
      const h: MarginHyper = { margin: false, alpha: 0, beta: 0, gamma: 0, act: 1 };
      const kd = { sample, weight: 1.3, lambda: c.lambda, theta: c.theta, temperature: c.T, teacherAt: p.Wp };
      const ref = lossFn.loss(p.Wp, h, kd);
      const { res, g } = await nativeGrad(q, L, hyperOf(h, { kd: true, kdWeight: kd.weight, kdLambda: c.lambda, kdTheta: c.theta, ...(c.T > 0 ? { kdTemperature: c.T } : {}) }));
      // finite differences of the reference with the teacher frozen at W' (stop-gradient)
      const rep = fdCheck(q, g, h, c.seed, kd);
      console.log(
        `[grad] ${c.name}: loss ref=${ref.loss.toFixed(6)} native=${res.loss[0]!.toFixed(6)}, ce ${ref.ce.toFixed(6)}, ` +
          `kd ref=${ref.kd.toExponential(4)} native=${res.kd[0]!.toExponential(4)} (logit KL ${ref.kl.toExponential(4)})\n` +
          `        FD: ${rep.checked} entries, max|g|=${rep.maxG.toExponential(3)}, max rel err (large) ${rep.maxRelLarge.toExponential(2)} ` +
          `at ${rep.worst}, max abs err (small) ${rep.maxAbsSmall.toExponential(2)}·max|g|` +
          (rep.fails.length ? `\n        FAILS:\n          ${rep.fails.join('\n          ')}` : ''),
      );
      if (c.T > 0) expect(ref.kl).toBeGreaterThan(1e-4); // the term is really there
      else expect(ref.kl).toBe(0);
      expect(Math.abs(res.kd[0]! - ref.kd)).toBeLessThan(1e-4 * Math.max(1, Math.abs(ref.kd)));
      expect(Math.abs(res.loss[0]! - ref.loss) / Math.abs(ref.loss)).toBeLessThan(1e-4);
      expect(rep.maxG).toBeGreaterThan(0);
      expect(rep.fails).toEqual([]);
    });
  }

  it('at W\' = W_v the distance gradient is taken as 0: margin on gives exactly the CE-only update', async () => {
    const L = 1;
    const p = await prepare(LLAMA3, L, 0, 31); // noise 0: W' = W_v
    expect(p.Wp32).toEqual(p.base);
    const h: MarginHyper = { margin: true, alpha: 0.5, beta: 1, gamma: 0.25, act: 1 };
    const ref = p.lossFn.loss(p.Wp, h);
    expect(ref.drow).toEqual([0, 0, 0]);
    const withMargin = await nativeGrad(p, L, hyperOf(h));
    const ceOnly = await nativeGrad(p, L, hyperOf({ ...h, margin: false }));
    expect(withMargin.res.loss[0]! - ceOnly.res.loss[0]!).toBeCloseTo(ref.h1 + ref.h2 + ref.h3, 5); // h1 = γ, h3 = β
    for (const v of withMargin.g) expect(Number.isFinite(v)).toBe(true);
    expect(withMargin.after).toEqual(ceOnly.after);
  });

  it('masked update (ρ = 0.2, seed 7): ~20% of the entries move, each by exactly the unmasked gradient', async () => {
    const L = 1;
    const p = await prepare(LLAMA3, L, 0.5, 21);
    const d0 = p.lossFn.loss(p.Wp, { margin: true, alpha: 0, beta: 0, gamma: 0, act: 1 }).drow;
    const h = pickMargins(d0, 1);
    const full = await nativeGrad(p, L, hyperOf(h));
    const masked = await nativeGrad(p, L, hyperOf(h, { maskRatio: 0.2, seed: 7 }));
    const again = await nativeGrad(p, L, hyperOf(h, { maskRatio: 0.2, seed: 7 }));
    const other = await nativeGrad(p, L, hyperOf(h, { maskRatio: 0.2, seed: 8 }));
    expect(masked.res.loss[0]).toBe(full.res.loss[0]); // the mask acts after the loss
    let nz = 0;
    let moved = 0;
    let wrong = 0;
    let strayMoves = 0;
    let overlap = 0;
    let movedOther = 0;
    for (let i = 0; i < p.Wp32.length; i++) {
      const gFull = full.after[i] !== p.Wp32[i];
      const mv = masked.after[i] !== p.Wp32[i];
      if (gFull) nz++;
      if (mv) {
        moved++;
        if (!gFull) strayMoves++;
        if (masked.after[i] !== full.after[i]) wrong++;
      }
      const mo = other.after[i] !== p.Wp32[i];
      if (mo) movedOther++;
      if (mv && mo) overlap++;
    }
    const rho = 0.2;
    const sigma = Math.sqrt(nz * rho * (1 - rho));
    console.log(
      `[grad] mask: ${moved}/${nz} entries with nonzero gradient moved (${((100 * moved) / nz).toFixed(2)}%, expected ${(rho * nz).toFixed(0)} ± ${(3 * sigma).toFixed(0)}); ` +
        `seed 8 moved ${movedOther}, overlap with seed 7 ${overlap} (expected ≈ ${(rho * rho * nz).toFixed(0)})`,
    );
    expect(nz).toBeGreaterThan(0.99 * p.Wp32.length);
    expect(Math.abs(moved - rho * nz)).toBeLessThan(3 * sigma);
    expect(strayMoves).toBe(0);
    expect(wrong).toBe(0);
    expect(again.after).toEqual(masked.after); // the mask is a function of (seed, index)
    expect(Math.abs(movedOther - rho * nz)).toBeLessThan(3 * sigma);
    const s2 = Math.sqrt(nz * rho * rho * (1 - rho * rho));
    expect(Math.abs(overlap - rho * rho * nz)).toBeLessThan(4 * s2); // independent masks for different seeds
  });
});
