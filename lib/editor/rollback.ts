// editor/rollback.ts — undoing one edit (Editor.rollback): every memory that holds it is retrained
// without it (same masks, same order) into temporary slots and, for a merged memory, re-merged; the
// temporaries replace the real slots only when all of them succeeded, so a failed rollback changes nothing.
import { RepairError, abortedError } from '../errors.js';
import { modelInternals } from '../model.js';
import type { NativeModel } from '../native.js';
import { lossAwareWeights } from '../repair.js';
import { recalibrate } from './router.js';
import { buildRows } from './rows.js';
import { NO_ACT, type EditorState, type MemoryState, type ShardPart, type WorkingState } from './state.js';
import { editHyper } from './train.js';

/**
 * Transactional: every affected memory is retrained into a temporary slot (appended after the real
 * ones); only when all of them succeeded are the temporaries copied over their slots, in one queue slot
 * with no abort point, and the bookkeeping updated. An abort, a NaN or a divergence during the replay
 * removes the temporaries and leaves the editor exactly as it was.
 */
export async function rollbackEdit(ed: EditorState, editId: string, opts: { signal?: AbortSignal }): Promise<void> {
  const loop = ed.loop;
  const queued = loop.queue.some((p) => p.id === editId) || loop.residual.some((p) => p.id === editId);
  if (!ed.edits.has(editId) && !queued) throw new RepairError('ERR_UNKNOWN_EDIT', `no edit with id ${editId}`, { id: editId });
  const mi = modelInternals(ed.model);
  const signal = opts.signal;
  const rescored = new Map<string, { score: number; promptScore: number; loss: number }>();
  const replay = async (nm: NativeModel, slot: number, part: ShardPart): Promise<{ minAct: number; minPrompt: number }> => {
    let minAct = NO_ACT;
    let minPrompt = NO_ACT;
    for (const e of part.edits) {
      if (signal?.aborted) throw abortedError('rollback');
      const st = ed.edits.get(e)!;
      const r = await nm.sideEdit(ed.side, slot, buildRows(ed, [{ request: st.request, irrelevant: st.irrelevant, variants: ed.config.repair?.paraphraseRows ?? 0 }]), editHyper(ed, part.seed));
      rescored.set(e, { score: r.thresholdStat, promptScore: r.promptStat, loss: r.sampleCe[0] ?? st.loss });
      minAct = Math.min(minAct, r.thresholdStat);
      minPrompt = Math.min(minPrompt, r.promptStat);
    }
    return { minAct, minPrompt };
  };
  // the plan: what each affected memory becomes (applied to the bookkeeping only after the commit)
  let newWorking: WorkingState | undefined;
  const newMemories = new Map<number, MemoryState | null>(); // memory index -> replacement (null = removed)
  const lossAware = ed.config.method === 'repair' && ed.config.repair!.lossAwareMerge;
  await mi.enqueue(async (nm) => {
    const temps: number[] = [];
    const swaps: [number, number][] = []; // [temporary slot, real slot]
    let committed = false;
    try {
      if (ed.working.edits.includes(editId)) {
        const part = { seed: ed.working.seed, edits: ed.working.edits.filter((e) => e !== editId) };
        const t = await nm.sideAdd(ed.side, -1);
        temps.push(t);
        const st = await replay(nm, t, part);
        swaps.push([t, 0]);
        newWorking = { ...ed.working, edits: part.edits, ...st };
      }
      for (let mIdx = ed.memories.length - 1; mIdx >= 0; mIdx--) {
        const m = ed.memories[mIdx]!;
        if (!m.edits.includes(editId)) continue;
        const slot = mIdx + 1;
        const parts = m.parts.map((p) => ({ seed: p.seed, edits: p.edits.filter((e) => e !== editId) }));
        const keep = parts.map((p, i) => ({ p, w: m.weights[i] ?? 1 })).filter((x) => x.p.edits.length > 0);
        if (keep.length === 0) {
          newMemories.set(mIdx, null);
        } else if (m.kind === 'shard') {
          const t = await nm.sideAdd(ed.side, -1);
          temps.push(t);
          const st = await replay(nm, t, keep[0]!.p);
          swaps.push([t, slot]);
          newMemories.set(mIdx, { ...m, ...st, edits: keep[0]!.p.edits, parts: [keep[0]!.p] });
        } else {
          const mn = { minAct: NO_ACT, minPrompt: NO_ACT };
          const partSlots: number[] = [];
          for (const { p } of keep) {
            const t = await nm.sideAdd(ed.side, -1);
            temps.push(t);
            partSlots.push(t);
            const r = await replay(nm, t, p);
            mn.minAct = Math.min(mn.minAct, r.minAct);
            mn.minPrompt = Math.min(mn.minPrompt, r.minPrompt);
          }
          const lossOf = (x: { p: ShardPart }): number => {
            const ls = x.p.edits.map((e) => rescored.get(e)?.loss ?? ed.edits.get(e)?.loss).filter((v): v is number => v !== undefined);
            return ls.length ? ls.reduce((a, b) => a + b, 0) / ls.length : 0;
          };
          const w = lossAware ? lossAwareWeights(keep.map(lossOf), ed.config.repair!.mergeAlpha) : keep.map((x) => x.w);
          const dst = await nm.sideAdd(ed.side, -1);
          temps.push(dst);
          if (lossAware) await nm.sideMergeLossAware(ed.side, dst, Int32Array.from(partSlots), Float32Array.from(w));
          else await nm.sideTies(ed.side, dst, Int32Array.from(partSlots), Float32Array.from(w), ed.config.mergeDensity);
          swaps.push([dst, slot]);
          newMemories.set(mIdx, { ...m, ...mn, edits: keep.flatMap((x) => x.p.edits), parts: keep.map((x) => x.p), weights: keep.map((x) => x.w) });
        }
      }
      if (signal?.aborted) throw abortedError('rollback');
      // commit: no abort point from here on (sideRead/sideWrite/sideRemove never check the abort flag)
      for (const [t, slot] of swaps) await nm.sideWrite(ed.side, slot, await nm.sideRead(ed.side, t));
      committed = true;
      const removed = [...newMemories].filter(([, v]) => v === null).map(([i]) => i + 1);
      await nm.sideRemove(ed.side, Int32Array.from([...temps, ...removed]));
    } finally {
      if (!committed && temps.length) await nm.sideRemove(ed.side, Int32Array.from(temps));
    }
  }, signal);
  // the side memories are committed: now the bookkeeping
  for (const [e, r] of rescored) {
    const st = ed.edits.get(e);
    if (st) Object.assign(st, r);
  }
  if (newWorking) ed.working = newWorking;
  for (let mIdx = ed.memories.length - 1; mIdx >= 0; mIdx--) {
    if (!newMemories.has(mIdx)) continue;
    const nm = newMemories.get(mIdx);
    if (nm === null) ed.memories.splice(mIdx, 1);
    else ed.memories[mIdx] = nm!;
  }
  ed.edits.delete(editId);
  // repair `recalibrate`: every memory that held the edit has new weights
  if (ed.working.edits.length) ed.dirty.add(ed.working.uid);
  for (const m of ed.memories) if (m.thr !== undefined) ed.dirty.add(m.uid);
  loop.queue = loop.queue.filter((p) => p.id !== editId);
  loop.residual = loop.residual.filter((p) => p.id !== editId);
  loop.feedback = loop.feedback.filter((e) => e !== editId);
  delete loop.status[editId];
  ed.globalMinAct = Math.min(NO_ACT, ...[...ed.edits.values()].map((e) => e.score));
  ed.globalMinPrompt = Math.min(NO_ACT, ...[...ed.edits.values()].map((e) => e.promptScore));
  await recalibrate(ed);
}
