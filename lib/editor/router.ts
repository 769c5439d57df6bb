// editor/router.ts — routing at inference (ALGORITHM.md §1.9): the per-slot routing scores of token rows
// (one stacked sideScore GEMM; repair `routeContent` averages content tokens only), the thresholds and the
// route decision (WISE-Retrieve top-1, WISE-Merge, recalibrated thresholds of issue 12), explain(), and
// threshold recalibration (repair `recalibrate`).
import { modelInternals, type Prompt } from '../model.js';
import type { NativeModel } from '../native.js';
import { calibrateThreshold, topKMean } from '../repair.js';
import { actCode } from './config.js';
import { leftPad, promptText, tokensOf } from './rows.js';
import { mentions } from './subject.js';
import { NO_ACT, type EditorState } from './state.js';

export interface RouteScore {
  /** -1 = the working memory, else the index into memories. */
  memory: number;
  kind: 'working' | 'shard' | 'merged';
  score: number;
  threshold: number;
  edits: number;
  /**
   * With repair's `recalibrate` (issue 12): the routing scores, on this memory's current weights, of its own
   * edit prompts (positives) and of the negatives its threshold was set between.
   */
  calibration?: Calibration;
}

/** The two score distributions a recalibrated threshold lies between (repair `recalibrate`). */
export interface Calibration {
  positives: number[];
  negatives: number[];
}

export interface Explanation {
  /** 'main' when no memory clears its threshold, else the chosen memory (-1 = working). */
  route: 'main' | number;
  score: number;
  threshold: number;
  scores: RouteScore[];
  tokens: number;
  /**
   * With repair's `keyRouting` (issue 12), when the input goes to a memory: the stored edit whose key is
   * nearest (cosine of the unedited layer's mean FFN activation); `route` is the memory holding it, and
   * `score` / `threshold` are that memory's.
   */
  key?: { edit: string; similarity: number; subject?: string };
}

/**
 * Set the threshold of every memory whose weights changed (the dirty set) from its routing scores on its
 * current weights: positives = its own edit prompts (bare, as generation routes them — they score below
 * the teacher-forced prompt + answer rows); negatives = up to calibrationNegatives unrelated texts, the
 * irrelevant rows of the stored edits, newest first. Not the context-template texts: every edit row
 * starts with one, so a memory is trained to fire on them. Not other memories' edit prompts: those decide
 * between memories (the highest score / threshold wins), not between a memory and the main weight. A
 * memory calibrated while fewer negatives existed is recalibrated as the pool grows (until it holds
 * calibrationNegatives: a bounded number of times). One batched scoring call (every slot is scored at once).
 */
export async function recalibrate(ed: EditorState): Promise<void> {
  if (!ed.recal) {
    ed.dirty.clear();
    return;
  }
  const ro = ed.config.repair!;
  const all = ed.slots();
  const K = ro.calibrationNegatives;
  const avail = Math.min(K, new Set([...ed.edits.values()].flatMap((e) => e.irrelevant)).size);
  const todo = all.filter(({ x }) => ed.dirty.has(x.uid) || (x.edits.length > 0 && x.cal !== undefined && x.cal.negatives.length < avail));
  ed.dirty.clear();
  for (const { x } of todo) if (x.edits.length === 0) (x.thr = ed.threshold(NO_ACT), (x.cal = { positives: [], negatives: [] }));
  const work = todo.filter(({ x }) => x.edits.length > 0);
  if (!work.length) return;
  // negatives: irrelevant rows of the stored edits (newest first)
  const pool: string[] = [];
  const seen = new Set<string>();
  for (const e of [...ed.edits.values()].reverse()) for (const t of e.irrelevant) if (pool.length < K && !seen.has(t)) (seen.add(t), pool.push(t));
  const prompts = new Set<string>();
  for (const { x } of work) for (const id of x.edits) if (ed.edits.has(id)) prompts.add(id);
  const promptIds = [...prompts];
  const rows = [...promptIds.map((id) => tokensOf(ed, promptText(ed, '{}', ed.edits.get(id)!.request.prompt))), ...pool.map((t) => tokensOf(ed, t))];
  const { tokens, pad, B, T } = leftPad(rows);
  // only the memories being recalibrated are scored (one or two among hundreds of shards)
  const sc = await modelInternals(ed.model).enqueue((nm) => scores(ed, nm, tokens, B, T, pad, work.map((w) => w.slot)));
  const rowOf = new Map(promptIds.map((id, i) => [id, i]));
  for (const [j, { x }] of work.entries()) {
    const positives = x.edits.filter((id) => rowOf.has(id)).map((id) => sc[j]![rowOf.get(id)!]!);
    const negatives = pool.map((_, i) => sc[j]![promptIds.length + i]!);
    const thr = calibrateThreshold(positives, negatives, ro.calibrationPoint);
    x.thr = Number.isFinite(thr) ? thr : ed.threshold(NO_ACT);
    x.cal = { positives, negatives };
  }
}
/**
 * Token ids that are not content for repair `routeContent`: the tokenizer's special tokens (BOS, EOS, pad,
 * added specials: decoded to nothing when specials are skipped) and, with the chat template, every token
 * of the template's scaffold around an empty user turn.
 */
export function nonContentIds(ed: EditorState): Set<number> {
  if (ed.nonContent) return ed.nonContent;
  const tok = ed.model.tokenizer;
  const out = new Set<number>();
  for (const id of [tok.bosTokenId, tok.eosTokenId]) if (id !== undefined) out.add(id);
  if (ed.config.useChatTemplate) for (const id of tok.encode(promptText(ed, '{}', ''))) out.add(id);
  ed.nonContent = out;
  return out;
}
export function isContent(ed: EditorState, id: number): boolean {
  if (nonContentIds(ed).has(id)) return false;
  const tok = ed.model.tokenizer;
  // an added special token decodes to nothing once specials are skipped
  if (tok.decode([id], { skipSpecialTokens: true }) === '' && tok.decode([id], { skipSpecialTokens: false }) !== '') {
    ed.nonContent!.add(id);
    return false;
  }
  return true;
}

/**
 * Per-slot scores of each row, slot-major [slots][B] (with `only`: [only.length][B], those slots in that
 * order): the reference's mean over valid tokens (max past
 * maxMeanTokens), or with repair `routeContent` the mean of the distances over the
 * row's content tokens (every valid token when it has none).
 */
export async function scores(ed: EditorState, nm: NativeModel, tokens: Int32Array, B: number, T: number, pad: Int32Array, only?: readonly number[]): Promise<number[][]> {
  const raw = await nm.sideScore(ed.side, tokens, B, T, pad, actCode(ed.model, ed.config.scoreMode), only ? Int32Array.from(only) : undefined);
  const slots = raw.length / (B * T);
  const out: number[][] = [];
  const ro = ed.config.method === 'repair' ? ed.config.repair! : undefined;
  if (ro?.routeContent) {
    const content: number[][] = [];
    for (let b = 0; b < B; b++) {
      const c: number[] = [];
      for (let t = pad[b]!; t < T; t++) if (isContent(ed, tokens[b * T + t]!)) c.push(t);
      if (c.length === 0) for (let t = pad[b]!; t < T; t++) c.push(t);
      content.push(c);
    }
    for (let s = 0; s < slots; s++) out.push(content.map((c, b) => topKMean(c.map((t) => raw[s * B * T + b * T + t]!), ro.routeTopK)));
    return out;
  }
  for (let s = 0; s < slots; s++) {
    const row: number[] = [];
    for (let b = 0; b < B; b++) {
      const valid = T - pad[b]!;
      let sum = 0;
      let max = 0;
      for (let t = pad[b]!; t < T; t++) {
        const v = raw[s * B * T + b * T + t]!;
        sum += v;
        if (v > max) max = v;
      }
      row.push(valid > ed.config.maxMeanTokens ? max : sum / valid);
    }
    out.push(row);
  }
  return out;
}

/**
 * The slot a row routes to (-1 = main weight) given its per-slot scores (§1.9). `basis` picks the
 * thresholds: 'full' = act_ratio × min edit-row score (the reference; rows hold prompt + answer, as in
 * teacher-forced evaluation), 'prompt' = act_ratio × min prompt-only score [ours]: a bare prompt
 * (routing before generation) carries no answer tokens, so its score is compared with its own kind.
 */
export function decide(ed: EditorState, score: (slot: number) => number, basis: 'full' | 'prompt'): { slot: number; score: number; threshold: number } {
  if (ed.config.method === 'ft') return { slot: 0, score: Infinity, threshold: 0 };
  const minOf = (x: { minAct: number; minPrompt: number }) => (basis === 'full' ? x.minAct : x.minPrompt);
  if (!ed.config.retrieve) {
    const thr = ed.threshold(basis === 'full' ? ed.globalMinAct : ed.globalMinPrompt);
    const merged = ed.memories[0]?.kind === 'merged' ? 1 : -1;
    const s1 = merged > 0 ? score(merged) : -Infinity;
    const s2 = score(0);
    if (s1 < thr && s2 < thr) return { slot: -1, score: Math.max(s1, s2), threshold: thr };
    return s1 > s2 ? { slot: merged, score: s1, threshold: thr } : { slot: 0, score: s2, threshold: thr };
  }
  if (ed.recal) {
    // recalibrated thresholds (issue 12): among the memories above their own threshold, the highest
    // score / threshold — scores of different memories live on different scales (a merged memory's deltas
    // add up), their thresholds carry that scale.
    let out = { slot: -1, score: -Infinity, threshold: Infinity };
    let bestRatio = -Infinity;
    const all = ed.slots();
    for (const { slot, x } of all) {
      if (x.edits.length === 0) continue;
      const s = score(slot);
      const thr = ed.thrOf(x, basis);
      const ratio = s / Math.max(thr, 1e-9);
      if (s > thr && ratio > bestRatio) {
        bestRatio = ratio;
        out = { slot, score: s, threshold: thr };
      }
    }
    return out;
  }
  let best = score(0);
  const thrW = ed.threshold(minOf(ed.working));
  let out = best < thrW ? { slot: -1, score: best, threshold: thrW } : { slot: 0, score: best, threshold: thrW };
  ed.memories.forEach((m, i) => {
    const s = score(i + 1);
    const thr = ed.threshold(minOf(m));
    if (s > best && s > thr) {
      out = { slot: i + 1, score: s, threshold: thr };
      best = s;
    }
  });
  return out;
}

/**
 * Which memory an input routes to, with every score and threshold. By default the input is a bare
 * prompt, routed as generate() routes it; `{ teacherForced: true }` routes it as logits() does (full
 * rows such as prompt + answer, against the reference thresholds).
 */
export async function explain(ed: EditorState, prompt: Prompt, opts: { signal?: AbortSignal; teacherForced?: boolean } = {}): Promise<Explanation> {
  const ids = ed.model.promptTokens(prompt);
  const basis = opts.teacherForced ? 'full' : 'prompt';
  const thrOf = (x: { minAct: number; minPrompt: number; thr?: number; edits: string[] }) =>
    ed.recal
      ? ed.thrOf(x, basis)
      : ed.threshold(ed.config.retrieve ? (basis === 'full' ? x.minAct : x.minPrompt) : basis === 'full' ? ed.globalMinAct : ed.globalMinPrompt);
  const cal = (x: { cal?: Calibration }) => (ed.recal && x.cal ? { calibration: { positives: [...x.cal.positives], negatives: [...x.cal.negatives] } } : {});
  return modelInternals(ed.model).enqueue(async (nm) => {
    const sc = await scores(ed, nm, Int32Array.from(ids), 1, ids.length, new Int32Array(1));
    const d = decide(ed, (s) => sc[s]![0]!, basis);
    let key: { edit: string; similarity: number } | undefined;
    if (ed.keyed && (d.slot >= 0 || ed.subjectKeyed)) {
      // key routing: the memory holding the nearest stored edit, reported with its own score and threshold
      // (subject routing: also an input below every threshold that mentions a stored edit's subject)
      const slot = [d.slot];
      const near: { edit: string; similarity: number; subject?: string }[] = [];
      await keyRoute(ed, nm, Int32Array.from(ids), ids.length, new Int32Array(1), basis, slot, near);
      if (slot[0]! >= 0) {
        const x = slot[0] === 0 ? ed.working : ed.memories[slot[0]! - 1]!;
        Object.assign(d, { slot: slot[0]!, score: sc[slot[0]!]![0]!, threshold: ed.thrOf(x, basis) });
        if (near[0]) key = near[0];
      } else d.slot = -1;
    }
    const all: RouteScore[] = [
      { memory: -1, kind: 'working', score: sc[0]![0]!, threshold: thrOf(ed.working), edits: ed.working.edits.length, ...cal(ed.working) },
      ...ed.memories.map((m, i) => ({ memory: i, kind: m.kind, score: sc[i + 1]![0]!, threshold: thrOf(m), edits: m.edits.length, ...cal(m) })),
    ];
    const best = d.slot === -1 ? all.reduce((a, b) => (b.score > a.score ? b : a), all[0]!) : undefined;
    return {
      route: d.slot === -1 ? 'main' : d.slot - 1,
      score: d.slot === -1 ? best!.score : d.score,
      threshold: d.slot === -1 ? best!.threshold : d.threshold,
      scores: all,
      tokens: ids.length,
      ...(key ? { key } : {}),
    };
  }, opts.signal);
}

/**
 * Diagnostics: the per-token routing distance of every slot (0 = working, i + 1 = memory i) on one token
 * row, and which tokens count as content for repair `routeContent`.
 */
export async function routingTokens(ed: EditorState, ids: readonly number[]): Promise<{ slots: number[][]; content: boolean[] }> {
  const raw = await modelInternals(ed.model).enqueue((nm) => nm.sideScore(ed.side, Int32Array.from(ids), 1, ids.length, new Int32Array(1), actCode(ed.model, ed.config.scoreMode)));
  const T = ids.length;
  return { slots: Array.from({ length: raw.length / T }, (_, s) => Array.from(raw.subarray(s * T, (s + 1) * T))), content: ids.map((id) => isContent(ed, id)) };
}

/**
 * The slot each row routes to (-1 = the main weight): the routed forward passes of generate() ('prompt'
 * basis: a bare prompt) and logits() ('full' basis: teacher-forced rows) call this in their queue slot.
 */
export async function routeRows(ed: EditorState, nm: NativeModel, tokens: Int32Array, B: number, T: number, pad: Int32Array, basis: 'full' | 'prompt'): Promise<number[]> {
  const sc = await scores(ed, nm, tokens, B, T, pad);
  const out = Array.from({ length: B }, (_, b) => decide(ed, (s) => sc[s]![b]!, basis).slot);
  if (ed.keyed) await keyRoute(ed, nm, tokens, T, pad, basis, out);
  return out;
}

/** Unit-norm copies of feature rows (the edited layer's mean FFN activation, [B * F]). */
function unitRows(flat: Float32Array, B: number): Float32Array[] {
  const F = flat.length / B;
  return Array.from({ length: B }, (_, b) => {
    const v = flat.slice(b * F, (b + 1) * F);
    let n = 0;
    for (let i = 0; i < F; i++) n += v[i]! * v[i]!;
    n = Math.sqrt(n) || 1;
    for (let i = 0; i < F; i++) v[i]! /= n;
    return v;
  });
}

/** The text of an edit's key row: its bare prompt ('prompt' basis) or prompt + " " + target ('full'). */
function keyText(ed: EditorState, id: string, basis: 'full' | 'prompt'): string {
  const r = ed.edits.get(id)!.request;
  const p = promptText(ed, '{}', r.prompt);
  return basis === 'full' ? `${p} ${r.target}` : p;
}

/**
 * Key routing (repair `keyRouting`, issue 12) [ours]: the activation scores decide whether a row goes to a
 * side memory at all (some memory above its recalibrated threshold: `decide`); which memory is decided by
 * content — the memory holding the stored edit whose key row (same basis) is nearest to the row in cosine
 * of the unedited layer's mean FFN activation (REPAIR's batching feature). A paraphrase shares its edit's
 * subject and meaning but not its wording; the memories' scores, trained on the wording, often rank
 * another memory first. Rows routed to the main weight stay there. `out` is updated in place.
 */
export async function keyRoute(
  ed: EditorState,
  nm: NativeModel,
  tokens: Int32Array,
  T: number,
  pad: Int32Array,
  basis: 'full' | 'prompt',
  out: number[],
  nearest?: { edit: string; similarity: number; subject?: string }[],
): Promise<void> {
  // the latest holder of every stored edit (a re-trained edit is listed again in a later memory)
  const holder = new Map<string, number>();
  for (const { slot, x } of ed.slots().slice(1)) for (const id of x.edits) if (ed.edits.has(id)) holder.set(id, slot);
  for (const id of ed.working.edits) if (ed.edits.has(id)) holder.set(id, 0);
  // subject routing: which stored edits each row mentions the subject of (every row, routed or not)
  const bySubject = ed.subjectKeyed ? subjectEdits(ed, [...holder.keys()]) : undefined;
  const candidates: (string[] | undefined)[] = out.map(() => undefined); // undefined = every stored edit
  if (bySubject && bySubject.size) {
    const tok = ed.model.tokenizer;
    // the stored edits that name no subject: the only candidates of a row that names none
    const loose = [...holder.keys()].filter((id) => ed.edits.get(id)!.request.subject === undefined);
    for (let b = 0; b < out.length; b++) {
      const text = tok.decode(Array.from(tokens.subarray(b * T + pad[b]!, (b + 1) * T)), { skipSpecialTokens: true });
      const lower = text.toLowerCase();
      const hit = [...bySubject].filter(([s, { needle }]) => lower.includes(needle) && mentions(text, s)).flatMap(([, { ids }]) => ids);
      if (hit.length) candidates[b] = hit;
      else if (out[b]! >= 0) {
        candidates[b] = loose;
        if (!loose.length) out[b] = -1; // every stored edit names a subject and the row mentions none
      }
      if (hit.length && out[b]! < 0) out[b] = holder.get(hit[0]!)!;
    }
  }
  const routed = out.map((s, b) => (s >= 0 && (candidates[b] === undefined ? holder.size >= 2 : candidates[b]!.length > 0) ? b : -1)).filter((b) => b >= 0);
  if (!routed.length) return;
  // keys of the stored edits, computed once per text
  const missing = [...new Set([...holder.keys()].map((id) => keyText(ed, id, basis)).filter((t) => !ed.keyCache.has(t)))];
  for (let i = 0; i < missing.length; i += 64) {
    const part = missing.slice(i, i + 64);
    const k = leftPad(part.map((t) => tokensOf(ed, t)));
    const f = unitRows(await nm.sideFeatures(ed.side, k.tokens, k.B, k.T, k.pad), k.B);
    part.forEach((t, j) => ed.keyCache.set(t, f[j]!));
  }
  const keys = [...holder].map(([id, slot]) => ({ id, slot, key: ed.keyCache.get(keyText(ed, id, basis))! }));
  // the routed rows' features (one call)
  const sub = new Int32Array(routed.length * T);
  const subPad = new Int32Array(routed.length);
  routed.forEach((b, j) => (sub.set(tokens.subarray(b * T, (b + 1) * T), j * T), (subPad[j] = pad[b]!)));
  const feats = unitRows(await nm.sideFeatures(ed.side, sub, routed.length, T, subPad), routed.length);
  routed.forEach((b, j) => {
    const f = feats[j]!;
    const allowed = candidates[b] ? new Set(candidates[b]) : undefined;
    let best = -Infinity;
    let edit = '';
    for (const { id, slot, key } of keys) {
      if (allowed && !allowed.has(id)) continue;
      let c = 0;
      for (let i = 0; i < f.length; i++) c += f[i]! * key[i]!;
      if (c > best) (best = c), (out[b] = slot), (edit = id);
    }
    const subject = allowed ? ed.edits.get(edit)?.request.subject : undefined;
    if (nearest) nearest[b] = { edit, similarity: best, ...(subject !== undefined && bySubject ? { subject } : {}) };
  });
}

/** The stored edits (among `ids`) by the subject they name (repair `subjectRouting`). */
function subjectEdits(ed: EditorState, ids: readonly string[]): Map<string, { needle: string; ids: string[] }> {
  const out = new Map<string, { needle: string; ids: string[] }>();
  for (const id of ids) {
    const s = ed.edits.get(id)?.request.subject;
    if (s === undefined) continue;
    // a cheap pre-test before the whole-word pattern: the subject's longest word, lower-cased
    const e = out.get(s) ?? { needle: s.trim().split(/\s+/).reduce((a, w) => (w.length > a.length ? w : a), '').toLowerCase(), ids: [] };
    e.ids.push(id);
    out.set(s, e);
  }
  return out;
}
