// editor/train.ts — training and the shard cadence (ALGORITHM.md §1.5–1.8): the native hyper-parameters
// of an edit, one batch trained into the working memory in one sideEdit call (with progress and abort),
// the bookkeeping of what it learned, and the cadence: every saveFreq edits the working memory is frozen
// as a shard, every mergeFreq edits the last shards are TIES-merged (or loss-aware merged, REPAIR §2.6).
import { abortedError } from '../errors.js';
import { modelInternals } from '../model.js';
import type { NativeEditBatch, NativeEditHyper, NativeEditResult } from '../native.js';
import { lossAwareWeights } from '../repair.js';
import type { RepairEvent } from '../repair/loop.js';
import { actCode } from './config.js';
import { recalibrate, scores } from './router.js';
import { buildRows, extraNegatives, irrelevantFor, leftPad, replaySamples, tokensOf } from './rows.js';
import { NO_ACT, type EditorState, type MemoryState, type Pending } from './state.js';

/**
 * Test hook: a function (ids, hyper) => hyper applied to every native training call, so a test can make
 * chosen edits fail (e.g. an impossible learning rate) and watch the closed loop repair them.
 */
export const TRAIN_HOOK = Symbol.for('repair-edit.trainHook');

export interface EditProgress {
  step: number;
  nIter: number;
  loss: number;
}

export interface EditResult {
  id: string;
  /** Optimisation steps run (n_iter unless early-stopped). */
  steps: number;
  /** Loss per step (CE + routing margin). */
  losses: number[];
  /** Where the edit lives now: 'working' or the memory index (after a save/merge in this call). */
  memory: 'working' | number;
  /** The edit's threshold statistic (mean routing score of its rows at the last step). */
  score: number;
}


/** The mask seed of shard `shard` (§1.6: each shard trains under its own Bernoulli mask). */
export function shardSeed(seed: number, shard: number): number {
  // splitmix-style mix of (editor seed, shard index) into a 52-bit safe integer
  let x = BigInt(seed) * 0x9e3779b97f4a7c15n + BigInt(shard + 1) * 0xbf58476d1ce4e5b9n;
  x &= (1n << 64n) - 1n;
  x ^= x >> 31n;
  x = (x * 0x94d049bb133111ebn) & ((1n << 64n) - 1n);
  x ^= x >> 29n;
  return Number(x & ((1n << 52n) - 1n));
}

/**
 * repair's margin scale for the next training call: the configured number, or with 'auto' the scale measured
 * on the editor's first training call (1, the reference margins, before it: the probe's own setting).
 */
export function marginScaleOf(ed: EditorState): number {
  const r = ed.config.repair;
  if (!r) return 1;
  return r.marginScale === 'auto' ? (ed.marginScale ?? 1) : r.marginScale;
}

/** The bounds of a measured margin scale (a background far outside them means the probe measured nothing useful). */
export const AUTO_SCALE_RANGE = [0.25, 20] as const;

/**
 * repair marginScale 'auto' (issue 12 item 4): the scale that puts α at this model's background distance.
 * Trains `batch` into the working memory under `hyper` (the reference margins, × 1), scores the call's
 * irrelevant rows on those weights with the routing score, and restores the working memory (the
 * recalibration pool and the irrelevant pool are no background: the first is empty on a first call, the
 * second holds the context-template texts every edit row starts with). Scale = median score / α, clamped to
 * AUTO_SCALE_RANGE (1 when α is 0 or nothing was scored). One queued native sequence: no other call sees
 * the probe's weights.
 */
async function probeMarginScale(ed: EditorState, batch: NativeEditBatch, hyper: NativeEditHyper, irrelevant: readonly string[], signal?: AbortSignal): Promise<number> {
  const alpha = ed.config.actMargin[0];
  const texts = [...new Set(irrelevant)];
  if (!(alpha > 0) || texts.length === 0) return 1;
  const { tokens, pad, B, T } = leftPad(texts.map((t) => tokensOf(ed, t)));
  const bg = await modelInternals(ed.model).enqueue(async (nm) => {
    const before = await nm.sideRead(ed.side, 0);
    try {
      await nm.sideEdit(ed.side, 0, batch, hyper);
      return (await scores(ed, nm, tokens, B, T, pad, [0]))[0]!;
    } finally {
      await nm.sideWrite(ed.side, 0, before);
    }
  }, signal);
  const sorted = [...bg].sort((a, b) => a - b);
  const median = sorted.length % 2 ? sorted[(sorted.length - 1) / 2]! : (sorted[sorted.length / 2 - 1]! + sorted[sorted.length / 2]!) / 2;
  const s = median / alpha;
  return Number.isFinite(s) ? Math.min(AUTO_SCALE_RANGE[1], Math.max(AUTO_SCALE_RANGE[0], s)) : 1;
}

/** The native hyper-parameters of one training call (kd: intra-batch distillation, REPAIR §2.5). */
export function editHyper(ed: EditorState, seed: number, kd = false, scale?: number): NativeEditHyper {
  const c = ed.config;
  const r = c.repair;
  const ms = r ? (scale ?? marginScaleOf(ed)) : 1; // repair's margin scale [ours]; wise keeps the reference margins
  return {
    nIter: c.nIter,
    lr: c.lr,
    weightDecay: c.weightDecay,
    clamp: c.normConstraint,
    maskRatio: r?.denseShards ? 1 : c.maskRatio, // repair's dense shards [ours]: no gradient mask
    seed,
    margin: c.method !== 'ft',
    alpha: c.actMargin[0] * ms,
    beta: c.actMargin[1] * ms,
    gamma: c.actMargin[2] * ms,
    act: actCode(ed.model, c.scoreMode),
    earlyStop: c.earlyStop,
    fullForward: false,
    ...(r ? { actWeight: r.actWeight, fitStop: r.monitor ? r.fitStop : 0 } : {}),
    ...(r && kd ? { kd: true, kdWeight: r.kdWeight, kdLambda: r.kdLambda, kdTheta: r.kdVarianceSign * r.kdTheta, ...(r.kdLogits ? { kdTemperature: r.kdTemperature } : {}) } : {}),
  };
}

/**
 * Train a batch of samples into the working memory in one native call, record them, run the cadence.
 * Throws (leaving everything as it was) when the native edit fails or is aborted.
 */
export async function train(
  ed: EditorState,
  items: Pending[],
  kd: boolean,
  opts: { signal?: AbortSignal; onProgress?: (p: EditProgress) => void } = {},
): Promise<{ results: EditResult[]; memory: string; res: NativeEditResult }> {
  const cursor = ed.irrCursor;
  const variants = ed.config.repair?.paraphraseRows ?? 0;
  const samples = items.map((p) => ({ request: p.request, irrelevant: irrelevantFor(ed, p.request), variants }));
  let batch: NativeEditBatch;
  try {
    batch = buildRows(ed, [...samples, ...replaySamples(ed, items)], extraNegatives(ed, items));
  } catch (e) {
    ed.irrCursor = cursor;
    throw e;
  }
  const fresh = ed.working.edits.length === 0;
  const seed = fresh ? shardSeed(ed.config.seed, ed.shardCount) : ed.working.seed;
  // repair marginScale 'auto': measured on the first training call; kept only if the call succeeds
  let measured: number | undefined;
  let hyper: NativeEditHyper;
  try {
    if (ed.config.repair?.marginScale === 'auto' && ed.marginScale === undefined) {
      measured = await probeMarginScale(ed, batch, editHyper(ed, seed, false, 1), samples.flatMap((s) => s.irrelevant), opts.signal);
    }
    hyper = editHyper(ed, seed, kd && items.length > 1, measured);
    const hook = ed.hook<(ids: string[], h: NativeEditHyper) => NativeEditHyper>(TRAIN_HOOK);
    if (hook) hyper = hook(items.map((p) => p.id), hyper);
  } catch (e) {
    ed.irrCursor = cursor;
    throw e;
  }
  const nIter = ed.config.nIter;
  let res: NativeEditResult;
  // A progress callback that throws stops the edit (through an abort) and the call rejects with its error.
  const user = opts.onProgress;
  let userErr: { e: unknown } | undefined;
  const stop = user ? new AbortController() : undefined;
  const signal = stop ? (opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal) : opts.signal;
  const onStep = user
    ? (step: number, loss: number): void => {
        if (userErr) return;
        try {
          user({ step, nIter, loss });
        } catch (e) {
          userErr = { e };
          stop!.abort();
        }
      }
    : undefined;
  let snapshot: Float32Array | undefined;
  const mi = modelInternals(ed.model);
  try {
    res = await mi.enqueue(async (nm) => {
      if (user) snapshot = await nm.sideRead(ed.side, 0); // to undo an edit whose callback threw after its last step
      if (signal?.aborted) throw abortedError('the edit');
      return nm.sideEdit(ed.side, 0, batch, hyper, onStep);
    }, signal);
    if (user) await new Promise<void>((r) => setImmediate(r)); // let the last progress calls run
    if (userErr) {
      await mi.enqueue((nm) => nm.sideWrite(ed.side, 0, snapshot!));
      throw userErr.e;
    }
  } catch (e) {
    ed.irrCursor = cursor;
    if (userErr) throw userErr.e;
    throw e;
  }
  if (measured !== undefined) ed.marginScale = measured; // kept once the call's training succeeded
  if (fresh) {
    ed.working.seed = seed; // a new shard starts with a fresh mask (§1.6)
    ed.shardCount++;
  }
  const S = items.length;
  items.forEach((p, i) => {
    const score = S > 1 ? res.sampleStat[i]! : res.thresholdStat;
    const promptScore = S > 1 ? res.samplePromptStat[i]! : res.promptStat;
    ed.edits.set(p.id, { request: structuredClone(p.request), irrelevant: samples[i]!.irrelevant, score, promptScore, loss: res.sampleCe[i]! });
    if (!ed.working.edits.includes(p.id)) ed.working.edits.push(p.id);
    ed.working.minAct = Math.min(ed.working.minAct, score);
    ed.working.minPrompt = Math.min(ed.working.minPrompt, promptScore);
    ed.globalMinAct = Math.min(ed.globalMinAct, score);
    ed.globalMinPrompt = Math.min(ed.globalMinPrompt, promptScore);
  });
  const trainedInto = ed.working.uid;
  ed.dirty.add(trainedInto);
  const prev = ed.editCount;
  ed.editCount += S;
  if (ed.config.method !== 'ft') await cadence(ed, prev);
  await recalibrate(ed);
  const results = items.map((p, i) => {
    const mi = ed.memories.findIndex((m) => m.edits.includes(p.id));
    return {
      id: p.id,
      steps: res.steps,
      losses: Array.from(res.loss),
      memory: ed.working.edits.includes(p.id) || mi < 0 ? ('working' as const) : mi,
      score: S > 1 ? res.sampleStat[i]! : res.thresholdStat,
    };
  });
  return { results, memory: trainedInto, res };
}

/** §1.7: save whenever the edit counter crosses a multiple of saveFreq, merge when it crosses mergeFreq. */
export async function cadence(ed: EditorState, prev: number): Promise<void> {
  const c = ed.config;
  const now = ed.editCount;
  if (Math.floor(now / c.saveFreq) === Math.floor(prev / c.saveFreq)) return;
  await saveWorking(ed);
  // repair `keepShards` (issue 12): route over the shards, never merge them
  if (c.method === 'repair' && c.repair!.keepShards) return;
  if (Math.floor(now / c.mergeFreq) !== Math.floor(prev / c.mergeFreq)) await merge(ed);
}

/** Freeze the working memory as a shard (a copy) and reset it to the base weight. */
export async function saveWorking(ed: EditorState): Promise<void> {
  const c = ed.config;
  await modelInternals(ed.model).enqueue(async (nm) => {
    await nm.sideAdd(ed.side, 0);
    await nm.sideReset(ed.side, 0);
  });
  ed.memories.push({
    uid: ed.working.uid,
    kind: 'shard',
    minAct: ed.working.minAct,
    minPrompt: ed.working.minPrompt,
    edits: [...ed.working.edits],
    parts: [{ seed: ed.working.seed, edits: [...ed.working.edits] }],
    weights: [1],
    ...(ed.working.thr !== undefined ? { thr: ed.working.thr } : {}),
    ...(ed.working.cal ? { cal: ed.working.cal } : {}),
  });
  ed.working = {
    uid: ed.uid('w'),
    seed: ed.working.seed,
    minAct: c.retrieve ? NO_ACT : ed.working.minAct,
    minPrompt: c.retrieve ? NO_ACT : ed.working.minPrompt,
    edits: [],
  };
}

/** Mean final L_edit of a memory's edits: L_i of the loss-aware merge (§2.6). */
export function memoryLoss(ed: EditorState, m: { edits: string[] }): number {
  const ls = m.edits.map((e) => ed.edits.get(e)?.loss).filter((x): x is number => x !== undefined);
  return ls.length ? ls.reduce((a, b) => a + b, 0) / ls.length : 0;
}

/** The memory a merge of `from` makes: their edits and parts in order, the lowest threshold statistics. */
function mergedMemory(uid: string, from: readonly MemoryState[], weights: number[]): MemoryState {
  return {
    uid,
    kind: 'merged',
    minAct: Math.min(...from.map((m) => m.minAct)),
    minPrompt: Math.min(...from.map((m) => m.minPrompt)),
    edits: from.flatMap((m) => m.edits),
    parts: from.flatMap((m) => m.parts),
    weights,
  };
}

/**
 * The merge of the cadence (§1.8): WISE-Retrieve merges the last mergeFreq/saveFreq shards into one
 * memory, WISE-Merge folds every shard into the one merged memory; TIES, or REPAIR's loss-aware merge.
 */
export async function merge(ed: EditorState, onEvent?: (e: RepairEvent) => void): Promise<void> {
  const c = ed.config;
  const mi = modelInternals(ed.model);
  const lossAware = c.method === 'repair' && c.repair!.lossAwareMerge;
  const emit = onEvent ?? ed.onEvent;
  if (c.retrieve) {
    const k = c.mergeFreq / c.saveFreq;
    if (k < 2) return; // one shard per merge: nothing to merge
    const first = ed.memories.length - k;
    const group = ed.memories.slice(first);
    if (first < 0 || group.some((m) => m.kind !== 'shard')) return;
    const slots = Int32Array.from(group.map((_, i) => first + i + 1));
    const losses = group.map((m) => memoryLoss(ed, m));
    const w = lossAware ? lossAwareWeights(losses, c.repair!.mergeAlpha) : group.map(() => c.mergeWeight / k);
    await mi.enqueue(async (nm) => {
      if (lossAware) await nm.sideMergeLossAware(ed.side, slots[0]!, slots, Float32Array.from(w));
      else await nm.sideTies(ed.side, slots[0]!, slots, Float32Array.from(w), c.mergeDensity);
      await nm.sideRemove(ed.side, slots.slice(1));
    });
    const uid = ed.uid('m');
    ed.dirty.add(uid);
    ed.memories.splice(first, k, mergedMemory(uid, group, w));
    remapStatus(ed, group.map((m) => m.uid), uid);
    emit?.({ type: 'shards-merged', into: uid, from: group.map((m) => m.uid), rule: lossAware ? 'loss-aware' : 'ties', weights: w, losses });
  } else {
    // WISE-Merge: fold the pending shards into the one merged memory (memory 0).
    const merged = ed.memories[0]?.kind === 'merged' ? ed.memories[0] : undefined;
    const shards = ed.memories.filter((m) => m.kind === 'shard');
    if (shards.length === 0) return;
    const shardSlots = shards.map((m) => ed.memories.indexOf(m) + 1);
    const srcs = merged ? [...shardSlots, 1] : shardSlots;
    const all = merged ? [...shards, merged] : shards;
    const losses = all.map((m) => memoryLoss(ed, m));
    const weights = lossAware
      ? lossAwareWeights(losses, c.repair!.mergeAlpha)
      : merged
        ? [...shards.map(() => 0.4 / shards.length), 0.6]
        : shards.map(() => c.mergeWeight / shards.length);
    const dst = merged ? 1 : shardSlots[0]!;
    await mi.enqueue(async (nm) => {
      if (lossAware) await nm.sideMergeLossAware(ed.side, dst, Int32Array.from(srcs), Float32Array.from(weights));
      else await nm.sideTies(ed.side, dst, Int32Array.from(srcs), Float32Array.from(weights), c.mergeDensity);
      await nm.sideRemove(ed.side, Int32Array.from(shardSlots.filter((s) => s !== dst)));
    });
    const uid = ed.uid('m');
    ed.memories = [mergedMemory(uid, all, weights)];
    remapStatus(ed, all.map((m) => m.uid), uid);
    emit?.({ type: 'shards-merged', into: uid, from: all.map((m) => m.uid), rule: lossAware ? 'loss-aware' : 'ties', weights, losses });
  }
}

export function remapStatus(ed: EditorState, from: string[], to: string): void {
  for (const s of Object.values(ed.loop.status)) {
    if (from.includes(s.memory)) s.memory = to;
    if (s.routedTo && from.includes(s.routedTo)) s.routedTo = to;
  }
}
