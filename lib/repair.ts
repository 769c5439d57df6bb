// repair.ts — the REPAIR closed loop's pure pieces (docs/algorithm.md, "REPAIR"): its options with their defaults
// and sources (one table), distribution-aware batching (§2.4 FORMBATCHES), the loss-aware merge
// weights (§2.6), and per-shard error rates (§2.2). The loop itself is lib/repair/loop.ts (behind
// Editor.editMany); the arithmetic (training, KD, merges) is native.
import { RepairError } from './errors.js';

/** What a(x), the correctness score of an edit, is measured with (§2.2). */
export type Correctness = 'token' | 'exact';
/** ModelFeat(x) for batching (§2.4): the mean over tokens of the edited layer's FFN activation A(x). */
export type BatchFeature = 'activation';

/**
 * Every REPAIR constant, with its default and where it comes from ("Table 6" = REPAIR paper Table 6,
 * "§2.9" = our proposed defaults for constants the paper does not give, docs/algorithm.md "Constants the papers do not give", [ours] = our choice).
 */
export interface RepairOptions {
  /** Closed-loop error monitor (Alg. 1 lines EVALUATE/RETRIGGER). Default on. */
  monitor: boolean;
  /** Distribution-aware batching (FORMBATCHES). Off = one edit per batch, in arrival order. Default on. */
  batching: boolean;
  /** Intra-batch distillation (Eq. 4) and FILTERANDRECLUSTER. Default on. */
  kd: boolean;
  /** Loss-aware merge (Alg. 4). Off = plain TIES (§1.8). Default on. */
  lossAwareMerge: boolean;

  /** Batch size b. Default 4 (§2.9). */
  batchSize: number;
  /** Incoming edits grouped per FORMBATCHES call (with the residual pool). Default 2·b [ours]. */
  window: number;
  /** Batching feature. Default 'activation' (§2.9). */
  feature: BatchFeature;
  /** λ of the cosine term. Default 0.2 (Table 6, ZsRE LLaMA-3). */
  kdLambda: number;
  /** ϑ of the variance term. Default 0.1 (§2.9). */
  kdTheta: number;
  /** +1 = Eq. 4 as written (variance minimised), −1 = the prose's diversity-preserving reading (§2.5). */
  kdVarianceSign: 1 | -1;
  /** λ_KD of Eq. 6. Default 1.0 (Table 6). */
  kdWeight: number;
  /**
   * Add Eq. 4's optional logit term: λ_KD·T²·mean KL(p_teacher ‖ p_student), p = softmax(logits / T), over
   * each student's edit rows paired with the teacher's (same context template), aligned from the first
   * answer token over their common answer positions [ours: the alignment; the reference pads to a common
   * length]. Default off (optional in Eq. 4; the reference ships it disabled).
   */
  kdLogits: boolean;
  /** T of the logit KL. Default 2.0 (Table 6). */
  kdTemperature: number;
  /** λ_a of Eq. 6 (routing margin weight). Default 1.0 (Table 6, ZsRE LLaMA-3). */
  actWeight: number;
  /** ε_cons: a sample whose 1 − cos to the batch teacher stays >= this goes to the residual pool. Default 0.5 (§2.9). */
  epsCons: number;
  /** τ_correct: an edit with a(x) below this is an error. Default 0.85 (Table 6 "Err Thresh"). */
  tauCorrect: number;
  /** a(x): 'token' = teacher-forced token accuracy (default), 'exact' = the greedy answer equals the target. */
  correctness: Correctness;
  /** τ_prune: a memory whose error rate exceeds this is pruned. Default 0.5 (§2.9). */
  tauPrune: number;
  /** τ_E: the feedback pool size that triggers a retrigger. Default 2·mergeFreq (§2.9). */
  tauE: number;
  /** A memory's error rate is only trusted after this many monitored edits routed to it. Default 2 [ours]. */
  minMonitored: number;
  /** α of the merge weights softmax(−α·L_i). Default 1.0 (§2.9). */
  mergeAlpha: number;
  /**
   * Fit stop [ours]: a batch stops training once it is learnt — every routing-margin hinge satisfied and
   * each sample's CE <= fitStop — instead of running all n_iter steps (the reference's EarlyStopMeter
   * almost never fires with margin losses, §1.5). 0 = off. Default 0.02 (the EarlyStopMeter's loss bound).
   * Part of the monitor (active only with `monitor` on): past that point the hinges give little gradient
   * and the CE almost none, and the monitor catches an edit that stopped too soon. So with the four
   * mechanisms off, 'repair' runs every step exactly as 'wise' does.
   */
  fitStop: number;
  /**
   * Retraining allowance [ours]: in one editMany call, the edits trained again — reintegrated after a
   * retrigger, re-queued at the end of the stream, or moved to the residual pool — number at most
   * ceil(retrainShare × the edits queued when the call starts). A retrigger whose reintegration would
   * exceed what is left does not run. This bounds the loop's cost at about (1 + retrainShare) trainings
   * per edit, whatever the model. A large value (e.g. 1e9) = no bound (only `budget` limits it). Default 0.5.
   */
  retrainShare: number;
  /** Times one edit may be re-queued (reintegration or residual re-batching): the termination budget. Default 3 [ours]. */
  budget: number;

  // ---- issue 12, "edits that hold" [ours]: each is switchable; REPAIR_PAPER switches them all off ----
  /**
   * Threshold recalibration [ours]: whenever a memory's weights change (a training call into the working
   * memory, a shard save, a merge, a retrigger, a rollback), re-score its own edit prompts (positives) and a
   * pool of negatives (earlier edits' irrelevant rows, the template texts, other memories' edit prompts) on
   * the new weights with the routing rule, and set its threshold between the two distributions (see
   * `calibrateThreshold`). Routing then picks, among the memories above their thresholds, the highest
   * score / threshold. Off = the reference's act_ratio × min training statistic, kept through merges (a
   * TIES merge raises every score, so every prompt then clears the old threshold). Default on.
   */
  recalibrate: boolean;
  /** Where between max(negatives) and min(positives) the recalibrated threshold sits (0 = at the negatives). Default 0.3 [ours]. */
  calibrationPoint: number;
  /** Unrelated texts (the stored edits' irrelevant rows, newest first) scored per recalibration. Default 64 [ours]. */
  calibrationNegatives: number;
  /**
   * Routing on content tokens [ours]: a row's score is the mean of its per-token distances over its content
   * tokens (special tokens — BOS, EOS, chat-template tokens — excluded; or the mean of the `routeTopK`
   * largest of them), with the
   * same rule for bare prompts (generation) and teacher-forced rows and no switch to the max past
   * maxMeanTokens. Off = the reference's mean over every position (max past 100). Default on.
   */
  routeContent: boolean;
  /**
   * k of a top-k mean for routeContent; 0 = the mean over every content token. Default 0: on facts-llama
   * (a character-level vocabulary) the plain content mean separates a memory's edit prompts from unrelated
   * questions best (AUC .99 vs .94 for the top-4 mean, N = 30, scratch measurement) [ours].
   */
  routeTopK: number;
  /**
   * Shard replay [ours]: a training call into the working memory also trains up to `replay` of the edits the
   * working memory already holds (newest first) as positives (their CE and in-memory routing hinge) on
   * `replayRows` of their template rows each, so later edits stop overwriting them. 0 = off. Default 4.
   */
  replay: number;
  /** Template rows per replayed edit (the bare prompt first, then rotating context templates). Default 2 [ours]. */
  replayRows: number;
  /**
   * Negatives that generalise [ours]: extra irrelevant (negative) rows per training call — half the prompts
   * + targets of edits held by other memories (WISE's memory separation: other memories' edits stay below α
   * on the current shard), half earlier edits' irrelevant rows — on top of the request's own irrelevant row.
   * 0 = off. Default 0 [ours, measured]: on facts-llama at N = 997 (ZsRE), with dense shards and key routing,
   * 4 extra negatives per call cost 1.9× the CPU time (1711 s against 915 s) and bought nothing (OP .96 both,
   * EM-Gen .49 against .51, unrelated prompts routed 7 % against 2 %; bench/results/repair12-holds-2026-12-05.md).
   * On masked shards (denseShards off) they cut unrelated routing at N = 120 from 17 % to 7 %.
   */
  negatives: number;
  /**
   * Keep shards [ours]: route over the saved shards themselves and never TIES-merge them (mergeFreq then
   * only paces nothing). A merge of near-disjoint masks adds the shard deltas, so a merged memory answers
   * every input with the sum of its shards' background while each edit keeps only its own shard's signal:
   * on facts-llama (N = 30, scratch measurement) merged memories separated their edit prompts from
   * unrelated questions poorly (thresholds between overlapping distributions) and sent edit prompts to
   * the memory holding them 70 % of the time; kept shards did so 100 %, with 1 / 30 unrelated prompts
   * routed. The cost: N / saveFreq memories instead of N / mergeFreq (memory and routing GEMM width).
   * Off = the cadence of §1.7 with REPAIR's loss-aware merge. Default on.
   */
  keepShards: boolean;
  /**
   * Margin scale [ours]: the routing hinge's margins [α, β, γ] (EditorConfig.actMargin) are multiplied by
   * this for repair's training calls. The reference margins (5, 20, 10) are constants tuned on 7B models;
   * on facts-llama a trained memory's distances are ≈ 12 for unrelated tokens, ≈ 20 for edit prompts and
   * ≈ 38 for answer tokens, so α = 5 never switches off and the hinge keeps pushing the background.
   * A number: that scale (1 = the reference margins; a sweep at N = 120 chose 2 on facts-llama,
   * bench/results/repair12-margins-n997.md). 'auto': measured once per editor, on its first training call
   * — a probe trains that call's rows with the reference margins, scores unrelated texts (the call's
   * irrelevant rows and the irrelevant pool) on the probe's weights, and sets the scale so that α equals
   * their median routing score (the background distance an edit gives unrelated inputs on this model); the
   * probe is undone and the call trains with the measured scale, which the memory file keeps
   * (Editor.marginScale reports it). Default 2.
   */
  marginScale: number | 'auto';
  /**
   * Dense shards [ours]: repair trains every shard without the Bernoulli gradient mask (density 1 instead of
   * maskRatio, 0.2). The reference masks each shard so that a TIES merge of shards averages near-disjoint
   * updates (§1.6); kept shards (keepShards) are never merged, so the mask only takes 80 % of the value
   * matrix away from each edit. On facts-llama (N = 60, ZsRE, scratch measurement) dense shards answered
   * 53 % of the rephrased questions exactly, against 22 % with the mask, and trained faster (fewer steps to
   * the fit stop). With keepShards off the dense shards are still TIES-merged (trimmed to mergeDensity by
   * magnitude, signs elected). Off = the editor's maskRatio, as wise. Default on.
   */
  denseShards: boolean;
  /**
   * Paraphrase rows [ours]: each new edit also trains on this many variants of its prompt, each without one
   * word of the question's frame (an interior lowercase word; see promptVariants in lib/editor/rows.ts), so
   * the memory learns the answer for the fact rather than for one wording. The records' own rephrases are
   * the Gen test set and are never trained on. On facts-llama (ZsRE, N = 120, dense shards, scratch
   * measurement) 0 / 3 / 6 rows answered 40 / 46 / 49 % of the rephrased questions exactly, at 1.0 / 0.9 /
   * 1.2× the training time; 4 is the default. 0 = off. Default 4.
   */
  paraphraseRows: number;
  /**
   * Key routing [ours]: with recalibrate on, the memories' activation scores decide whether an input goes
   * to a side memory at all (some memory above its threshold); which memory is decided by content: the
   * one holding the stored edit whose key — the unedited layer's mean FFN activation over the edit's
   * prompt (generation) or prompt + target (teacher-forced rows), REPAIR's batching feature — is nearest
   * in cosine. On facts-llama (N = 120, scratch measurement) the memories' scores sent 74 % of the
   * rephrased questions to the memory holding their edit, the nearest key 94 % (90 % behind the gate).
   * Costs one extra pass up to the edited layer for an input that routes, and F floats per stored edit and
   * basis (F = the FFN width). Off = the highest score / threshold. Default on.
   */
  keyRouting: boolean;
  /**
   * Subject routing [ours] (acts within keyRouting): an edit request may name its subject (EditRequest.subject,
   * as ROME-style records do; it must occur in the prompt). An input that mentions a stored edit's subject
   * (case-insensitive, whole words) goes to the memory holding the nearest such edit by key, whether or not
   * a memory's score clears its threshold; an input that mentions none of them goes to a memory only
   * through the score gate and only among the edits that name no subject (none: the main weight). On
   * CounterFact the locality prompts are other subjects with the edit's relation worded the same way, and
   * the rephrases put the subject after unrelated text: scores and keys cannot tell them apart (facts-llama,
   * N = 120: 41 % of locality prompts and 40 % of rephrases clear the gate, key similarity medians .56 and
   * .64), the subject can. The catch: a question about an edited subject's other relations also reaches
   * the memory (no benchmark here measures it). Edits without a subject route as before. Default on.
   */
  subjectRouting: boolean;
}

/**
 * `repair` as the REPAIR paper specifies it (our pre-issue-12 defaults): every issue-12 mechanism off and
 * the monitor judging teacher-forced token accuracy. `{ method: 'repair', repair: REPAIR_PAPER }`.
 */
export const REPAIR_PAPER: Readonly<Partial<RepairOptions>> = Object.freeze({
  keepShards: false,
  recalibrate: false,
  routeContent: false,
  replay: 0,
  negatives: 0,
  correctness: 'token' as Correctness,
  marginScale: 1,
  denseShards: false,
  paraphraseRows: 0,
  keyRouting: false,
  subjectRouting: false,
});

export const REPAIR_DEFAULTS: Omit<RepairOptions, 'tauE'> & { tauE?: number } = {
  monitor: true,
  batching: true,
  kd: true,
  lossAwareMerge: true,
  batchSize: 4,
  window: 8,
  feature: 'activation',
  kdLambda: 0.2,
  kdTheta: 0.1,
  kdVarianceSign: 1,
  kdWeight: 1.0,
  kdLogits: false,
  kdTemperature: 2.0,
  actWeight: 1.0,
  epsCons: 0.5,
  tauCorrect: 0.85,
  // [ours, issue 12] what users see: the greedy answer. Token accuracy (REPAIR_PAPER) passes answers
  // that greedy decoding gets wrong (§2.2: Alg. 3 EVALUATE itself is an exact match).
  correctness: 'exact',
  tauPrune: 0.5,
  minMonitored: 2,
  mergeAlpha: 1.0,
  budget: 3,
  fitStop: 0.02,
  retrainShare: 0.5,
  recalibrate: true,
  calibrationPoint: 0.3,
  calibrationNegatives: 64,
  routeContent: true,
  routeTopK: 0,
  replay: 4,
  replayRows: 2,
  negatives: 0,
  keepShards: true,
  marginScale: 2,
  denseShards: true,
  paraphraseRows: 4,
  keyRouting: true,
  subjectRouting: true,
};

/** Fill the defaults and validate every field (typed errors naming the field). */
export function resolveRepairOptions(o: Partial<RepairOptions> | undefined, mergeFreq: number): RepairOptions {
  const r = { ...REPAIR_DEFAULTS, tauE: 2 * mergeFreq, ...(o ?? {}) } as RepairOptions;
  if (o && o.batchSize !== undefined && o.window === undefined) r.window = 2 * o.batchSize;
  const bad = (k: string, what: string) => new RepairError('ERR_INVALID_ARG', `repair option ${k} must be ${what}, got ${JSON.stringify((r as unknown as Record<string, unknown>)[k])}`, { field: k });
  for (const k of Object.keys(o ?? {})) if (!(k in REPAIR_DEFAULTS) && k !== 'tauE') throw new RepairError('ERR_INVALID_ARG', `unknown repair option '${k}'`, { field: k });
  for (const k of ['monitor', 'batching', 'kd', 'lossAwareMerge', 'kdLogits', 'recalibrate', 'routeContent', 'keepShards', 'denseShards', 'keyRouting', 'subjectRouting'] as const) if (typeof r[k] !== 'boolean') throw bad(k, 'a boolean');
  const int = (k: keyof RepairOptions, lo: number, hi: number) => {
    const v = r[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) throw bad(k, `an integer in [${lo}, ${hi}]`);
  };
  const num = (k: keyof RepairOptions, ok: (x: number) => boolean, what: string) => {
    const v = r[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw bad(k, what);
  };
  int('batchSize', 1, 64);
  int('window', 1, 100000);
  if (r.feature !== 'activation') throw bad('feature', "'activation'");
  num('kdLambda', (x) => x >= 0, 'a number >= 0');
  num('kdTheta', (x) => x >= 0, 'a number >= 0');
  if (r.kdVarianceSign !== 1 && r.kdVarianceSign !== -1) throw bad('kdVarianceSign', '1 or -1');
  num('kdWeight', (x) => x >= 0, 'a number >= 0');
  num('kdTemperature', (x) => x > 0 && x <= 100, 'a number in (0, 100]');
  num('actWeight', (x) => x >= 0, 'a number >= 0');
  num('epsCons', (x) => x >= 0, 'a number >= 0');
  num('tauCorrect', (x) => x >= 0 && x <= 1, 'a number in [0, 1]');
  if (r.correctness !== 'token' && r.correctness !== 'exact') throw bad('correctness', "'token' or 'exact'");
  num('tauPrune', (x) => x >= 0 && x <= 1, 'a number in [0, 1]');
  int('tauE', 1, 1e9);
  int('minMonitored', 1, 1e9);
  num('mergeAlpha', (x) => x >= 0, 'a number >= 0');
  int('budget', 0, 1000);
  num('fitStop', (x) => x >= 0, 'a number >= 0');
  num('retrainShare', (x) => x >= 0, 'a finite number >= 0');
  num('calibrationPoint', (x) => x >= 0 && x <= 1, 'a number in [0, 1]');
  int('calibrationNegatives', 1, 100000);
  int('routeTopK', 0, 100000);
  int('replay', 0, 1000);
  int('replayRows', 1, 1000);
  int('negatives', 0, 64);
  int('paraphraseRows', 0, 64);
  if (r.marginScale !== 'auto') num('marginScale', (x) => x > 0 && x <= 1000, "a number in (0, 1000] or 'auto'");
  return r;
}

/** Cosine similarity of two vectors (0 when either is all zeros). */
export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!;
    aa += a[i]! * a[i]!;
    bb += b[i]! * b[i]!;
  }
  return aa > 0 && bb > 0 ? ab / Math.sqrt(aa * bb) : 0;
}

/**
 * FORMBATCHES (§2.4), exactly: repeat until no sample is left — the seed is the remaining sample with the
 * highest mean cosine similarity to all *other* remaining samples (ties: the lowest index), the batch is
 * the seed followed by its b − 1 most similar remaining samples (ties: the lowest index). Returns index
 * lists; the first entry of each batch is its teacher x⁽⁰⁾.
 */
export function formBatches(features: readonly ArrayLike<number>[], b: number): number[][] {
  const n = features.length;
  const sim: number[][] = features.map((f, i) => features.map((g, j) => (i === j ? 1 : cosine(f, g))));
  const left = new Set<number>(Array.from({ length: n }, (_, i) => i));
  const out: number[][] = [];
  while (left.size > 0) {
    const rest = [...left];
    let seed = rest[0]!;
    let bestMean = -Infinity;
    for (const i of rest) {
      let s = 0;
      for (const j of rest) if (j !== i) s += sim[i]![j]!;
      const mean = rest.length > 1 ? s / (rest.length - 1) : 0;
      if (mean > bestMean) {
        bestMean = mean;
        seed = i;
      }
    }
    const others = rest.filter((j) => j !== seed).sort((x, y) => sim[seed]![y]! - sim[seed]![x]! || x - y);
    const batch = [seed, ...others.slice(0, b - 1)];
    for (const i of batch) left.delete(i);
    out.push(batch);
  }
  return out;
}

/** Loss-aware merge weights (§2.6): softmax(−α·L_i), computed stably. */
export function lossAwareWeights(losses: readonly number[], alpha: number): number[] {
  const z = losses.map((l) => -alpha * l);
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/** §2.2 with the recommended reading: r_i = failures / monitored edits routed to memory i. */
export function errorRates(status: Iterable<{ memory: string | undefined; ok: boolean }>): Map<string, { n: number; failed: number; rate: number }> {
  const m = new Map<string, { n: number; failed: number; rate: number }>();
  for (const s of status) {
    if (s.memory === undefined) continue;
    const e = m.get(s.memory) ?? { n: 0, failed: 0, rate: 0 };
    e.n++;
    if (!s.ok) e.failed++;
    e.rate = e.failed / e.n;
    m.set(s.memory, e);
  }
  return m;
}

/**
 * The recalibrated threshold of one memory [ours, issue 12] from the routing scores of its own edit prompts
 * (pos) and of negatives (neg) on its current weights. Separated (min pos > max neg): the point `point` of
 * the way from max(neg) to min(pos) — nearer the negatives, so paraphrases (which score between the two)
 * still route. Overlapping: the threshold with the fewest errors, each side's errors counted as a share of
 * its size (ties: the higher threshold, which keeps unrelated prompts on the main weight). No positives:
 * Infinity (the memory is never routed); no negatives: just below min(pos).
 */
export function calibrateThreshold(pos: readonly number[], neg: readonly number[], point: number): number {
  if (pos.length === 0) return Infinity;
  const hi = Math.min(...pos);
  if (neg.length === 0) return hi * (1 - 1e-6);
  const lo = Math.max(...neg);
  if (hi > lo) return lo + point * (hi - lo);
  // candidate thresholds: just above each score (a score routes when score > threshold)
  const cands = [...pos, ...neg].sort((a, b) => a - b);
  let best = Infinity;
  let bestErr = Infinity;
  for (const t of cands) {
    const fp = neg.filter((x) => x > t).length / neg.length;
    const fn = pos.filter((x) => x <= t).length / pos.length;
    const err = fp + fn;
    if (err < bestErr - 1e-12 || (Math.abs(err - bestErr) <= 1e-12 && t > best)) {
      bestErr = err;
      best = t;
    }
  }
  return best;
}

/** Mean of the k largest values (all of them when fewer, or when k = 0); 0 for none. */
export function topKMean(values: readonly number[], k: number): number {
  if (values.length === 0) return 0;
  const s = k > 0 ? [...values].sort((a, b) => b - a).slice(0, k) : values;
  return s.reduce((a, b) => a + b, 0) / s.length;
}
