// repair/loop.ts — the REPAIR closed loop (ALGORITHM.md §2.1, Alg. 1) behind Editor.editMany: the queue
// and the residual pool, distribution-aware batches (FORMBATCHES), intra-batch distillation with
// FILTERANDRECLUSTER, the error monitor (EVALUATE: a(x) of each edit through the router), RETRIGGER
// (prune a failing memory, reintegrate its edits into a fresh shard, give up past the budget). The pure
// pieces (options, batching, merge weights, error rates) are lib/repair.ts; training is lib/editor/train.ts.
import { RepairError } from '../errors.js';
import { modelInternals } from '../model.js';
import { errorRates, formBatches } from '../repair.js';
import { routeRows } from '../editor/router.js';
import { leftPad, promptText, validateRequest, type EditRequest } from '../editor/rows.js';
import { NO_ACT, type EditorState, type Pending } from '../editor/state.js';
import { saveWorking, train, type EditResult } from '../editor/train.js';

/** What the REPAIR loop reports through editMany's onEvent. */
export type RepairEvent =
  | { type: 'edit-trained'; ids: string[]; memory: string; steps: number; loss: number; kd: number; kdScores: number[] }
  | { type: 'residual-added'; ids: string[]; kdScores: number[] }
  | { type: 'residual-rebatched'; ids: string[] }
  | { type: 'error-detected'; id: string; score: number; memory: string; routedTo: string }
  | { type: 'shard-pruned'; memory: string; reason: 'error-rate' | 'feedback-pool'; errorRate: number; edits: string[] }
  | { type: 'edits-reintegrated'; ids: string[] }
  | { type: 'gave-up'; id: string; attempts: number }
  | { type: 'shards-merged'; into: string; from: string[]; rule: 'ties' | 'loss-aware'; weights: number[]; losses: number[] };

export interface EditManyResult {
  /** One entry per trained batch sample, in training order (a re-trained edit appears again). */
  results: EditResult[];
  /** Edits dropped after exhausting their retrigger budget (no longer in effect). */
  gaveUp: string[];
  /** Retriggers (prunes) run in this call. */
  retriggers: number;
}

/** editMany: for wise/ft the records one by one, for repair the closed loop (see Editor.editMany). */
export async function runEditMany(
  ed: EditorState,
  records: readonly EditRequest[],
  opts: { signal?: AbortSignal; onEvent?: (e: RepairEvent) => void; onProgress?: (p: { done: number; total: number }) => void },
): Promise<EditManyResult> {
  if (!Array.isArray(records)) throw new RepairError('ERR_EDIT_REQUEST', 'editMany: records must be an array');
  const ids = new Set<string>();
  records.forEach((r, i) => {
    validateRequest(ed, r, `record ${i}`);
    if (r.id !== undefined) {
      if (ids.has(r.id)) throw new RepairError('ERR_EDIT_REQUEST', `record ${i}: duplicate id ${r.id}`, { index: i, field: 'id' });
      ids.add(r.id);
    }
  });
  for (const r of records) ed.loop.queue.push({ id: r.id ?? ed.freshId(), request: structuredClone(r), attempts: 0 });
  const results: EditResult[] = [];
  const gaveUp: string[] = [];
  let retriggers = 0;
  ed.onEvent = opts.onEvent;
  try {
    if (ed.config.method !== 'repair') {
      const total = ed.loop.queue.length;
      while (ed.loop.queue.length) {
        if (opts.signal?.aborted) throw new RepairError('ERR_ABORTED', 'editMany was aborted');
        const p = ed.loop.queue[0]!;
        const t = await train(ed, [p], false, { signal: opts.signal });
        ed.loop.queue.shift();
        results.push(...t.results);
        opts.onEvent?.({ type: 'edit-trained', ids: [p.id], memory: t.memory, steps: t.res.steps, loss: t.res.loss.at(-1) ?? 0, kd: 0, kdScores: [0] });
        opts.onProgress?.({ done: total - ed.loop.queue.length, total });
      }
      return { results, gaveUp, retriggers };
    }
    const ro = ed.config.repair!;
    const loop = ed.loop;
    let total = loop.queue.length + loop.residual.length;
    // the retraining allowance of this call (retrainShare): reintegrated, re-queued and residual edits
    let allowance = Math.ceil(ro.retrainShare * total);
    let done = 0;
    for (;;) {
      if (!loop.queue.length && !loop.residual.length) {
        // [ours] The stream is done but E still holds failures: retrain them (into a fresh shard) while
        // their budget lasts, rather than end on known errors. Bounded by the budget like RETRIGGER.
        if (!ro.monitor || !loop.feedback.length) break;
        const again = loop.feedback.filter((id) => (loop.attempts[id] ?? 0) < ro.budget && ed.edits.has(id)).slice(0, allowance);
        if (!again.length) break;
        allowance -= again.length;
        if (ed.working.edits.length > 0) await saveWorking(ed);
        for (const id of again) {
          loop.attempts[id] = (loop.attempts[id] ?? 0) + 1;
          loop.queue.push({ id, request: ed.edits.get(id)!.request, attempts: loop.attempts[id]! });
          delete loop.status[id];
        }
        loop.feedback = loop.feedback.filter((id) => !again.includes(id));
        total += again.length;
        opts.onEvent?.({ type: 'edits-reintegrated', ids: again });
        continue;
      }
      if (opts.signal?.aborted) throw new RepairError('ERR_ABORTED', 'editMany was aborted');
      // FORMBATCHES over the next window of incoming edits plus the residual pool
      const incoming = loop.queue.slice(0, ro.batching ? ro.window : 1);
      const residual = ro.batching ? [...loop.residual] : loop.queue.length ? [] : loop.residual.slice(0, 1);
      const pool = [...incoming, ...residual];
      let batches: Pending[][];
      if (ro.batching && pool.length > 1) {
        const feats = await features(ed, pool.map((p) => p.request.prompt), opts.signal);
        batches = formBatches(feats, ro.batchSize).map((b) => b.map((i) => pool[i]!));
      } else {
        batches = pool.map((p) => [p]);
      }
      if (residual.length) opts.onEvent?.({ type: 'residual-rebatched', ids: residual.map((p) => p.id) });
      for (const batch of batches) {
        if (opts.signal?.aborted) throw new RepairError('ERR_ABORTED', 'editMany was aborted');
        const trained = await train(ed, batch, ro.kd, { signal: opts.signal });
        const res = trained.res;
        // the batch is in: take it off the queue / residual pool
        const bIds = new Set(batch.map((p) => p.id));
        loop.queue = loop.queue.filter((p) => !bIds.has(p.id));
        loop.residual = loop.residual.filter((p) => !bIds.has(p.id));
        results.push(...trained.results);
        done += batch.length;
        const kdScores = Array.from(res.sampleKd);
        opts.onEvent?.({ type: 'edit-trained', ids: batch.map((p) => p.id), memory: trained.memory, steps: res.steps, loss: res.loss.at(-1) ?? 0, kd: res.kd.at(-1) ?? 0, kdScores });
        // FILTERANDRECLUSTER: samples inconsistent with the batch teacher are re-batched later
        if (ro.kd && batch.length > 1) {
          const out = batch.filter((p, i) => i > 0 && kdScores[i]! >= ro.epsCons && p.attempts < ro.budget).slice(0, allowance);
          allowance -= out.length;
          for (const p of out) {
            p.attempts++;
            loop.residual.push(p);
            total++;
          }
          if (out.length) opts.onEvent?.({ type: 'residual-added', ids: out.map((p) => p.id), kdScores: out.map((p) => kdScores[batch.indexOf(p)]!) });
        }
        // EVALUATE + RETRIGGER
        if (ro.monitor) {
          await monitor(ed, batch, opts.signal, opts.onEvent);
          // [ours] at most one retrigger per mergeFreq edits of this call (and at least one): each retrains
          // up to a memory's worth of edits, so this bounds the loop's extra cost to about one more pass.
          const cap = Math.max(1, Math.ceil(total / ed.config.mergeFreq));
          const r = retriggers < cap ? await maybeRetrigger(ed, opts.onEvent, gaveUp, allowance) : 0;
          if (r) {
            retriggers++;
            total += r;
            allowance -= r;
            break; // the queue changed: form batches again
          }
        }
        opts.onProgress?.({ done, total });
      }
    }
    return { results, gaveUp, retriggers };
  } finally {
    ed.onEvent = undefined;
  }
}

/** ModelFeat(x) for batching: mean over tokens of the edited layer's activation A(x) (§2.4, §2.9). */
export async function features(ed: EditorState, prompts: string[], signal?: AbortSignal): Promise<Float32Array[]> {
  const ids = prompts.map((p) => ed.model.tokenizer.encode(promptText(ed, '{}', p)));
  const { tokens, pad, B, T } = leftPad(ids);
  const F = ed.model.config.intermediateSize;
  const flat = await modelInternals(ed.model).enqueue((nm) => nm.sideFeatures(ed.side, tokens, B, T, pad), signal);
  return Array.from({ length: B }, (_, b) => flat.subarray(b * F, (b + 1) * F));
}

/** EVALUATE (§2.2): a(x) of each edit on its routed prediction; failures go to the feedback pool E. */
export async function monitor(ed: EditorState, batch: Pending[], signal: AbortSignal | undefined, onEvent?: (e: RepairEvent) => void): Promise<void> {
  const ro = ed.config.repair!;
  const loop = ed.loop;
  for (const p of batch) {
    let score: number;
    let memory: string;
    if (ro.correctness === 'token') {
      const r = await routedTokenAccuracy(ed, p.request.prompt, p.request.target, signal);
      score = r.acc;
      memory = r.memory;
    } else {
      const tgt = ed.model.tokenizer.encode(p.request.target, { addSpecialTokens: false });
      let route = 'main';
      const g = await modelInternals(ed.model).generateRouted(promptText(ed, '{}', p.request.prompt), { maxNewTokens: tgt.length + 2, signal }, async (nm, pids) => {
        const [slot] = await routeRows(ed, nm, Int32Array.from(pids), 1, pids.length, new Int32Array(1), 'prompt');
        route = ed.slotUid(slot!);
        return { side: ed.side, slot: slot! };
      });
      score = g.completion.trim().startsWith(p.request.target.trim()) ? 1 : 0;
      memory = route;
    }
    const ok = score >= ro.tauCorrect;
    // Attribution (§2.2) [ours]: an edit is charged to the memory that holds it (it failed to serve its
    // edit — also when it no longer activates at all) and, when another memory out-scored it, to that
    // memory too (the paper's argmax-activation rule): a broken shard and a memory that steals
    // routes both show up in the per-memory error rates.
    loop.status[p.id] = { memory: ed.holder(p.id), routedTo: memory, score, ok };
    if (!ok) {
      if (!loop.feedback.includes(p.id)) loop.feedback.push(p.id);
      onEvent?.({ type: 'error-detected', id: p.id, score, memory: ed.holder(p.id), routedTo: memory });
    } else {
      loop.feedback = loop.feedback.filter((e) => e !== p.id);
    }
  }
}

/**
 * Teacher-forced token accuracy of prompt + " " + target through the router (full-row basis), and the
 * edit's most active memory (what §2.2's per-shard error rates attribute it to).
 */
export async function routedTokenAccuracy(ed: EditorState, prompt: string, target: string, signal?: AbortSignal): Promise<{ acc: number; memory: string }> {
  const tok = ed.model.tokenizer;
  const pt = promptText(ed, '{}', prompt);
  const ids = tok.encode(`${pt} ${target}`);
  const pl = tok.encode(pt).length;
  let memory = 'main';
  const lg = await modelInternals(ed.model).logitsRouted([ids], { positions: 'all', signal }, async (nm, b) => {
    const [slot] = await routeRows(ed, nm, b.tokens, b.B, b.T, b.pad, 'full');
    memory = ed.slotUid(slot!);
    return { side: ed.side, slots: Int32Array.of(slot!) };
  });
  let ok = 0;
  for (let j = pl; j < ids.length; j++) {
    const row = lg.at(0, j - 1);
    let best = 0;
    for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
    if (best === ids[j]) ok++;
  }
  return { acc: ids.length > pl ? ok / (ids.length - pl) : 0, memory };
}

/**
 * RETRIGGER (§2.3): when |E| > τ_E or a memory's error rate (over all monitored edits routed to it)
 * exceeds τ_prune, drop the worst memory with its threshold, and put its edits plus the failures at the
 * front of the queue; they are retrained into a fresh shard. An edit re-queued more than `budget` times
 * is given up (and no longer in effect). Returns the number of edits re-queued (0: nothing happened).
 */
export async function maybeRetrigger(ed: EditorState, onEvent: ((e: RepairEvent) => void) | undefined, gaveUp: string[], allowance = Infinity): Promise<number> {
  const ro = ed.config.repair!;
  const loop = ed.loop;
  const charged = Object.values(loop.status).flatMap((s) => [
    { memory: s.memory === 'main' ? undefined : s.memory, ok: s.ok },
    ...(s.routedTo && s.routedTo !== 'main' && s.routedTo !== s.memory ? [{ memory: s.routedTo, ok: s.ok }] : []),
  ]);
  const rates = [...errorRates(charged)].filter(([, r]) => r.n >= ro.minMonitored);
  const worst = rates.reduce<[string, { n: number; failed: number; rate: number }] | undefined>((a, b) => (!a || b[1].rate > a[1].rate ? b : a), undefined);
  const byRate = worst !== undefined && worst[1].rate > ro.tauPrune;
  const byPool = loop.feedback.length > ro.tauE;
  if (!byRate && !byPool) return 0;
  // the memory to prune: the worst by rate; with only a full feedback pool, the one most failures route to
  let target = worst?.[0];
  if (!byRate) {
    const counts = new Map<string, number>();
    for (const e of loop.feedback) {
      const m = loop.status[e]?.memory;
      if (m && m !== 'main') counts.set(m, (counts.get(m) ?? 0) + 1);
    }
    target = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0];
  }
  // retrainShare: a retrigger whose reintegration (the memory's edits + the failures) exceeds what is
  // left of this call's allowance does not run
  const isWorking = target !== undefined && target === ed.working.uid;
  const mi = target === undefined || isWorking ? -1 : ed.memories.findIndex((m) => m.uid === target);
  const pruned = isWorking ? [...ed.working.edits] : mi >= 0 ? [...ed.memories[mi]!.edits] : [];
  if (new Set([...pruned, ...loop.feedback]).size > allowance) return 0;
  if (target !== undefined) {
    if (isWorking) {
      await modelInternals(ed.model).enqueue((nm) => nm.sideReset(ed.side, 0));
      ed.working = { uid: ed.uid('w'), seed: ed.working.seed, minAct: NO_ACT, minPrompt: NO_ACT, edits: [] };
    } else if (mi >= 0) {
      await modelInternals(ed.model).enqueue((nm) => nm.sideRemove(ed.side, Int32Array.of(mi + 1)));
      ed.memories.splice(mi, 1);
    }
    onEvent?.({ type: 'shard-pruned', memory: target, reason: byRate ? 'error-rate' : 'feedback-pool', errorRate: worst?.[0] === target ? worst[1].rate : 0, edits: pruned });
  }
  // reintegrate: the pruned memory's edits + the failures, at the front of the queue, into a fresh shard
  if (ed.working.edits.length > 0) await saveWorking(ed);
  // Only failing edits spend budget: the pruned memory's passing edits are re-queued for free (they are
  // not at fault). Every retrigger needs a failure, so retriggers are bounded by Σ budget over edits.
  const failing = new Set(loop.feedback);
  const again = [...new Set([...pruned, ...loop.feedback])];
  const requeue: Pending[] = [];
  for (const id of again) {
    const st = ed.edits.get(id) ?? loop.queue.find((p) => p.id === id) ?? loop.residual.find((p) => p.id === id);
    if (!st) continue;
    const attempts = (loop.attempts[id] ?? 0) + (failing.has(id) ? 1 : 0);
    const stillHeld = ed.memories.some((m) => m.edits.includes(id)) || ed.working.edits.includes(id);
    if (attempts > ro.budget) {
      if (!stillHeld) {
        ed.edits.delete(id);
        loop.gaveUp.push(id);
        gaveUp.push(id);
        onEvent?.({ type: 'gave-up', id, attempts: attempts - 1 });
      }
      continue;
    }
    loop.attempts[id] = attempts;
    if (!stillHeld) ed.edits.delete(id);
    requeue.push({ id, request: 'request' in st ? st.request : (st as Pending).request, attempts });
  }
  for (const id of again) delete loop.status[id];
  loop.feedback = [];
  loop.queue = [...requeue, ...loop.queue.filter((p) => !requeue.some((r) => r.id === p.id))];
  loop.residual = loop.residual.filter((p) => !requeue.some((r) => r.id === p.id));
  if (requeue.length) onEvent?.({ type: 'edits-reintegrated', ids: requeue.map((p) => p.id) });
  return requeue.length || (target !== undefined ? 1 : 0);
}
