// editor/rows.ts — what an edit trains on (ALGORITHM.md §1.3): the edit request, the context templates
// generated once by the unedited model, the prompt text (chat template when enabled), the token rows of
// a batch (11 template rows per sample, then the irrelevant rows of the routing margin), REPAIR's replay
// rows and extra negatives (issue 12), and request validation (ERR_EDIT_REQUEST).
import { RepairError } from '../errors.js';
import type { Model } from '../model.js';
import type { NativeEditBatch } from '../native.js';
import type { EditorState, Pending } from './state.js';
import { mentions } from './subject.js';

/** One edit: make `target` the answer to `prompt`. */
export interface EditRequest {
  prompt: string;
  target: string;
  /** A paraphrase of the prompt (kept with the edit; used by evaluation). */
  rephrase?: string;
  /**
   * Unrelated text trained as the irrelevant row of the routing margin (§1.3; ZsRE uses the train
   * record's `loc + " " + loc_ans`). Default: cycled from the editor's irrelevant pool.
   */
  irrelevant?: string;
  /** Unrelated prompts whose answers must not change (kept with the edit; used by evaluation). */
  locality?: { prompt: string; answer: string }[];
  /** Caller-chosen id (default e1, e2, ...). Must be unique within the editor. */
  id?: string;
  /**
   * The subject the edit is about (a span of the prompt, as in ROME-style records: "Danielle Darrieux").
   * Optional; with repair's subjectRouting an input that mentions it goes to the memory holding the edit.
   */
  subject?: string;
}

const TEMPLATE_SEEDS = ['I', 'You', 'Because', 'Yes', 'Q: '];

const templateCache = new WeakMap<Model, Map<number, string[]>>();

/** §1.3: 10 short continuations of fixed seed words by the unedited model, once per model and seed. */
export async function contextTexts(model: Model, seed: number): Promise<string[]> {
  let bySeed = templateCache.get(model);
  if (!bySeed) templateCache.set(model, (bySeed = new Map()));
  const hit = bySeed.get(seed);
  if (hit) return hit;
  const gc = model.config.generationConfig ?? {};
  const sample = gc.do_sample === true;
  const out: string[] = [];
  let i = 0;
  for (const len of [5, 10]) {
    for (const s of TEMPLATE_SEEDS) {
      const r = await model.generate(s, {
        maxNewTokens: len,
        temperature: sample ? Number(gc.temperature ?? 1) : 0,
        topK: sample ? Number(gc.top_k ?? 0) : 0,
        topP: sample ? Number(gc.top_p ?? 1) : 1,
        seed: (seed + i++) >>> 0,
        stopOnEos: true,
      });
      out.push(r.text.replace(/\{|\}/g, ' '));
    }
  }
  bySeed.set(seed, out);
  return out;
}

/** Token rows left-padded to one length T (the layout of every native batch): tokens [B·T] and pad [B]. */
export function leftPad(rows: readonly (readonly number[])[]): { tokens: Int32Array; pad: Int32Array; B: number; T: number } {
  const B = rows.length;
  const T = Math.max(...rows.map((r) => r.length));
  const tokens = new Int32Array(B * T);
  const pad = new Int32Array(B);
  rows.forEach((r, b) => {
    pad[b] = T - r.length;
    tokens.set(r, b * T + pad[b]!);
  });
  return { tokens, pad, B, T };
}

/** Token ids of a text, cached (recalibration scores the same negatives on every call). */
export function tokensOf(ed: EditorState, text: string): number[] {
  let ids = ed.tokCache.get(text);
  if (!ids) {
    ids = ed.model.tokenizer.encode(text);
    if (ed.tokCache.size > 4096) ed.tokCache.clear();
    ed.tokCache.set(text, ids);
  }
  return ids;
}

/** The prompt text of a request as the model sees it (chat template when enabled). */
export function promptText(ed: EditorState, template: string, prompt: string): string {
  const body = template.replace('{}', prompt);
  if (!ed.config.useChatTemplate) return body;
  return ed.model.tokenizer.applyChatTemplate([{ role: 'user', content: body }], { addGenerationPrompt: true });
}

/**
 * Rows of a batch of samples: each sample's 11 template rows (its sample id), then every sample's
 * irrelevant rows. L_edit(B) = Σ over samples of L_edit(x) (each as §1.4: mean over its rows of
 * Σ CE / (#target + 1)) [ours: a sum, not a mean, so each sample gets the gradient of a single edit at
 * the same lr — with a mean, a batch of b trains each edit b× more weakly in the same n_iter steps].
 */
export function buildRows(
  ed: EditorState,
  samples: readonly { request: EditRequest; irrelevant: readonly string[]; templates?: readonly number[]; variants?: number }[],
  extra: readonly string[] = [],
): NativeEditBatch {
  const tok = ed.model.tokenizer;
  const edit: { ids: number[]; p: number; sample: number; rows: number }[] = [];
  samples.forEach(({ request: req, templates, variants }, si) => {
    // each row: a context template and the prompt; repair's paraphraseRows add bare-template rows of prompt variants
    const use: [string, string][] = (templates ? templates.map((i) => ed.templates[i]!) : ed.templates).map((t) => [t, req.prompt]);
    for (const v of promptVariants(req.prompt, variants ?? 0)) use.push(['{}', v]);
    for (const [t, prompt] of use) {
      let promptIds: number[];
      let ids: number[];
      if (ed.config.useChatTemplate) {
        const pt = promptText(ed, t, prompt);
        promptIds = tok.encode(pt);
        ids = tok.encode(`${pt} ${req.target}`);
      } else {
        const i = t.lastIndexOf('{}');
        const pre = t.slice(0, i);
        const post = t.slice(i + 2);
        promptIds = tok.encode(pre + prompt + post);
        ids = tok.encode(pre + prompt + ' ' + req.target + post);
      }
      if (ids.length <= promptIds.length) {
        throw new RepairError('ERR_EDIT_REQUEST', `the target ${JSON.stringify(req.target)} adds no token to the prompt`, { field: 'target' });
      }
      edit.push({ ids, p: promptIds.length, sample: si, rows: use.length });
    }
  });
  const rows = edit.map((e) => e.ids);
  const margin = ed.config.method !== 'ft';
  if (margin) for (const s of samples) for (const t of s.irrelevant) rows.push(tok.encode(t));
  if (margin) for (const t of extra) rows.push(tok.encode(t));
  const { tokens, pad, B: R, T } = leftPad(rows);
  if (T > ed.model.config.maxPositions) {
    throw new RepairError('ERR_CONTEXT_LENGTH', `an edit row has ${T} tokens, longer than the context length ${ed.model.config.maxPositions}`, {
      length: T,
      contextLength: ed.model.config.maxPositions,
    });
  }
  const labels = new Int32Array(R * T).fill(-1);
  const labelWeights = new Float32Array(R * T);
  const kind = new Int32Array(R);
  const sample = new Int32Array(R).fill(-1);
  edit.forEach((e, i) => {
    const n = e.ids.length - e.p;
    for (let j = e.p; j < e.ids.length; j++) {
      const pos = i * T + pad[i]! + j - 1; // logits at j-1 predict token j
      labels[pos] = e.ids[j]!;
      labelWeights[pos] = 1 / ((n + 1) * e.rows);
    }
    sample[i] = e.sample;
  });
  for (let i = edit.length; i < R; i++) kind[i] = 1;
  return { tokens, R, T, pad, labels, labelWeights, kind, ...(samples.length > 1 ? { sample } : {}) };
}

/**
 * Prompt variants for repair `paraphraseRows` [ours]: k copies of the prompt, each without one word of the
 * question's frame — an interior word that starts with a lowercase letter (the first and the last word
 * and capitalised words, usually the subject's, are kept) — picked from a hash of the prompt, so the rows
 * are the same on every run. A prompt with no such word is repeated as it is.
 */
export function promptVariants(prompt: string, k: number): string[] {
  if (k <= 0) return [];
  const words = prompt.split(' ');
  const frame = words.map((_, i) => i).filter((i) => i > 0 && i < words.length - 1 && /^\p{Ll}/u.test(words[i]!));
  let h = 2166136261;
  for (let i = 0; i < prompt.length; i++) h = Math.imul(h ^ prompt.charCodeAt(i), 16777619) >>> 0;
  return Array.from({ length: k }, (_, j) => {
    if (!frame.length) return prompt;
    const drop = frame[(h + j) % frame.length]!;
    return words.filter((_, i) => i !== drop).join(' ');
  });
}

/**
 * Shard replay (repair `replay`, issue 12): up to `replay` edits the working memory already holds (newest
 * first, not in this batch), each on `replayRows` template rows: the bare prompt, then context templates
 * rotating with the edit counter.
 */
export function replaySamples(ed: EditorState, items: readonly Pending[]): { request: EditRequest; irrelevant: string[]; templates: number[] }[] {
  const ro = ed.config.repair;
  if (!ro || ro.replay <= 0) return [];
  const inBatch = new Set(items.map((p) => p.id));
  const held = ed.working.edits.filter((id) => !inBatch.has(id) && ed.edits.has(id)).reverse().slice(0, ro.replay);
  const nT = ed.templates.length;
  return held.map((id, k) => {
    const templates = [0];
    for (let j = 1; j < Math.min(ro.replayRows, nT); j++) templates.push(1 + ((ed.editCount + k + j - 1) % Math.max(1, nT - 1)));
    return { request: ed.edits.get(id)!.request, irrelevant: [], templates: [...new Set(templates)] };
  });
}

/**
 * Negatives that generalise (repair `negatives`, issue 12): half (rounded up) the prompt + target rows of
 * edits held by other memories (memory separation), half earlier edits' irrelevant rows, each list walked
 * from a position that moves with the edit counter; one source fills in for the other when it is short.
 */
export function extraNegatives(ed: EditorState, items: readonly Pending[]): string[] {
  const ro = ed.config.repair;
  if (!ro || ro.negatives <= 0) return [];
  const inBatch = new Set(items.map((p) => p.id));
  const other = ed.memories.flatMap((m) => m.edits).filter((id) => !inBatch.has(id) && ed.edits.has(id));
  const inWorking = new Set(ed.working.edits);
  const seen = new Set(items.flatMap((p) => [p.request.irrelevant ?? '']));
  const irr: string[] = [];
  for (const [id, e] of ed.edits) {
    if (inBatch.has(id) || inWorking.has(id)) continue;
    for (const t of e.irrelevant) if (!seen.has(t)) (seen.add(t), irr.push(t));
  }
  const pick = <T>(xs: readonly T[], n: number): T[] => {
    if (!xs.length || n <= 0) return [];
    const start = (ed.editCount * 7) % xs.length;
    return Array.from({ length: Math.min(n, xs.length) }, (_, i) => xs[(start + i) % xs.length]!);
  };
  let nSep = Math.min(Math.ceil(ro.negatives / 2), other.length);
  const nIrr = Math.min(ro.negatives - nSep, irr.length);
  nSep = Math.min(ro.negatives - nIrr, other.length);
  const rowOf = (id: string): string => {
    const r = ed.edits.get(id)!.request;
    return ed.config.useChatTemplate ? `${promptText(ed, '{}', r.prompt)} ${r.target}` : `${r.prompt} ${r.target}`;
  };
  return [...pick(other, nSep).map(rowOf), ...pick(irr, nIrr)];
}

export function validateRequest(ed: EditorState, req: EditRequest, where = 'the edit request'): void {
  const fail = (msg: string, field?: string): never => {
    throw new RepairError('ERR_EDIT_REQUEST', `${where}: ${msg}`, field ? { field } : undefined);
  };
  if (typeof req !== 'object' || req === null) fail('an edit request must be an object');
  for (const k of ['prompt', 'target'] as const) {
    if (typeof req[k] !== 'string' || req[k].trim() === '') fail(`${k} must be a non-empty string`, k);
  }
  for (const k of ['rephrase', 'irrelevant', 'id', 'subject'] as const) {
    if (req[k] !== undefined && (typeof req[k] !== 'string' || req[k] === '')) fail(`${k} must be a non-empty string`, k);
  }
  if (req.subject !== undefined && (req.subject.trim() === '' || !mentions(req.prompt, req.subject))) fail(`subject ${JSON.stringify(req.subject)} must occur in the prompt (whole words, any case)`, 'subject');
  if (req.id !== undefined && (ed.edits.has(req.id) || ed.loop.queue.some((p) => p.id === req.id))) fail(`an edit with id ${req.id} already exists`, 'id');
  if (req.locality !== undefined && (!Array.isArray(req.locality) || !req.locality.every((l) => l && typeof l.prompt === 'string' && typeof l.answer === 'string')))
    fail('locality must be an array of {prompt, answer} strings', 'locality');
}

export function irrelevantFor(ed: EditorState, req: EditRequest): string[] {
  const pool = ed.irrelevantPool;
  const out: string[] = [];
  if (req.irrelevant !== undefined) out.push(req.irrelevant);
  if (pool.length === 0 && out.length === 0) throw new RepairError('ERR_EDIT_REQUEST', 'no irrelevant text: pass request.irrelevant or the irrelevantPool option');
  while (out.length < ed.config.irrelevantRows) out.push(pool[ed.irrCursor++ % pool.length]!);
  return out;
}
