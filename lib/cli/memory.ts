// cli/memory.ts — shared pieces of the commands that work with side memories (edit, explain, generate
// --memory, demo): the edit-file reader, editor options from flags, route labels and tables.

import { readFileSync } from 'node:fs';
import { RepairError, toRepairError } from '../errors.js';
import { Editor, type EditRequest, type EditorOptions, type Explanation, type RouteScore } from '../editor.js';
import type { Model } from '../model.js';
import { parseSafetensorsHeader } from '../safetensors.js';
import { formatTable } from './common.js';
import { mentions } from '../editor/subject.js';

/** One validated record of an edits file, with the line it came from (1-based). */
export interface EditRecord {
  line: number;
  request: EditRequest;
}

const RECORD_FIELDS = ['prompt', 'target', 'rephrase', 'irrelevant', 'locality', 'id', 'subject'] as const;

function recordError(file: string, line: number, msg: string, field?: string): RepairError {
  return new RepairError('ERR_EDIT_REQUEST', `${file} line ${line}: ${msg}`, { file, line, ...(field ? { field } : {}) });
}

/** Validate one parsed JSONL value as an edit request; errors name the file, line and field. */
export function parseEditRecord(value: unknown, file: string, line: number): EditRequest {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw recordError(file, line, `expected a JSON object {prompt, target, ...}, got ${Array.isArray(value) ? 'an array' : value === null ? 'null' : typeof value}`);
  }
  const o = value as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!(RECORD_FIELDS as readonly string[]).includes(k)) throw recordError(file, line, `unknown field "${k}" (allowed: ${RECORD_FIELDS.join(', ')})`, k);
  }
  const str = (k: 'prompt' | 'target' | 'rephrase' | 'irrelevant' | 'id' | 'subject', required: boolean): string | undefined => {
    const v = o[k];
    if (v === undefined) {
      if (required) throw recordError(file, line, `missing field "${k}"`, k);
      return undefined;
    }
    if (typeof v !== 'string') throw recordError(file, line, `field "${k}" must be a string, got ${v === null ? 'null' : typeof v}`, k);
    if (v.trim() === '') throw recordError(file, line, `field "${k}" must be a non-empty string`, k);
    return v;
  };
  const req: EditRequest = { prompt: str('prompt', true)!, target: str('target', true)! };
  for (const k of ['rephrase', 'irrelevant', 'id', 'subject'] as const) {
    const v = str(k, false);
    if (v !== undefined) req[k] = v;
  }
  if (req.subject !== undefined && !mentions(req.prompt, req.subject)) throw recordError(file, line, `field "subject" (${JSON.stringify(req.subject)}) does not occur in the prompt`, 'subject');
  if (o.locality !== undefined) {
    if (!Array.isArray(o.locality)) throw recordError(file, line, 'field "locality" must be an array of {prompt, answer}', 'locality');
    req.locality = o.locality.map((l: unknown, i: number) => {
      const where = `locality[${i}]`;
      if (typeof l !== 'object' || l === null || Array.isArray(l)) throw recordError(file, line, `field "${where}" must be an object {prompt, answer}`, where);
      const r = l as Record<string, unknown>;
      for (const k of ['prompt', 'answer'] as const) {
        if (typeof r[k] !== 'string' || (r[k] as string).trim() === '') throw recordError(file, line, `field "${where}.${k}" must be a non-empty string`, `${where}.${k}`);
      }
      for (const k of Object.keys(r)) if (k !== 'prompt' && k !== 'answer') throw recordError(file, line, `unknown field "${where}.${k}" (allowed: prompt, answer)`, `${where}.${k}`);
      return { prompt: r.prompt as string, answer: r.answer as string };
    });
  }
  return req;
}

/** Read and validate an edits file (JSONL, one record per line; blank lines skipped). */
export function readEditsFile(file: string): EditRecord[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new RepairError('ERR_IO', `cannot read ${file}: ${(e as Error).message}`, { file }, { cause: e });
  }
  const out: EditRecord[] = [];
  const ids = new Map<string, number>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = i + 1;
    const s = raw.trim();
    if (s === '') return;
    let v: unknown;
    try {
      v = JSON.parse(s);
    } catch (e) {
      throw recordError(file, line, `invalid JSON (${(e as Error).message})`);
    }
    const request = parseEditRecord(v, file, line);
    if (request.id !== undefined) {
      const prev = ids.get(request.id);
      if (prev !== undefined) throw recordError(file, line, `duplicate id "${request.id}" (first used on line ${prev})`, 'id');
      ids.set(request.id, line);
    }
    out.push({ line, request });
  });
  if (out.length === 0) throw new RepairError('ERR_EDIT_REQUEST', `${file}: no edit records (expected JSONL: one {prompt, target, ...} object per line)`, { file });
  return out;
}

/**
 * Check every record against the editor before any training (target adds tokens, rows fit the
 * context, ids are new), so that a bad record fails fast with its line number.
 */
export function precheckRecords(editor: Editor, records: readonly EditRecord[], file: string): void {
  const existing = new Set(editor.edits());
  for (const r of records) {
    if (r.request.id !== undefined && existing.has(r.request.id)) throw recordError(file, r.line, `an edit with id "${r.request.id}" is already in the memory`, 'id');
    try {
      editor.buildBatch(r.request, r.request.irrelevant ?? 'x');
    } catch (e) {
      if (e instanceof RepairError) {
        const field = typeof e.details?.field === 'string' ? e.details.field : undefined;
        throw new RepairError(e.code, `${file} line ${r.line}: ${e.message}`, { ...e.details, file, line: r.line, ...(field ? { field } : {}) });
      }
      throw e;
    }
  }
}

/** Editor flags shared by `edit` (undefined = the preset's value). */
export interface EditorCliOptions {
  method?: 'wise' | 'ft';
  layer?: number;
  saveFreq?: number;
  mergeFreq?: number;
  nIter?: number;
  lr?: number;
  seed?: number;
  /** --chat / --no-chat: useChatTemplate (undefined: the default for the model). */
  chat?: boolean;
}

export function editorOptions(o: EditorCliOptions): EditorOptions {
  const r: EditorOptions = {};
  if (o.method !== undefined) r.method = o.method;
  if (o.layer !== undefined) r.layer = o.layer;
  if (o.saveFreq !== undefined) r.saveFreq = o.saveFreq;
  if (o.mergeFreq !== undefined) r.mergeFreq = o.mergeFreq;
  if (o.nIter !== undefined) r.nIter = o.nIter;
  if (o.lr !== undefined) r.lr = o.lr;
  if (o.seed !== undefined) r.seed = o.seed;
  if (o.chat !== undefined) r.useChatTemplate = o.chat;
  return r;
}

/**
 * Editor.load for the CLI: a memory file made for another model says how to fix it — `--model DIR`
 * naming the folder it was trained on when the file records it (files since issue 16), else the kind and
 * shape of that model.
 */
export async function loadEditor(model: Model, file: string, signal?: AbortSignal): Promise<Editor> {
  try {
    return await Editor.load(model, file, { signal });
  } catch (e) {
    const err = toRepairError(e);
    if (err.code !== 'ERR_MEMORY_MISMATCH') throw err;
    let base: { modelType?: string; hiddenSize?: number; intermediateSize?: number; layer?: number; modelDir?: string } = {};
    try {
      base = (JSON.parse(parseSafetensorsHeader(file).metadata.editor ?? '{}') as { base?: typeof base }).base ?? {};
    } catch {
      /* the load already read it; keep the plain message if it cannot be read again */
    }
    const shape = `a ${base.modelType ?? '?'} with hidden size ${base.hiddenSize ?? '?'} and intermediate size ${base.intermediateSize ?? '?'}`;
    const hint =
      typeof base.modelDir !== 'string'
        ? `pass --model DIR naming the model it was made for (${shape}; the file does not record its folder)`
        : base.modelDir !== model.dir
          ? `pass --model ${base.modelDir} (the model it was made for)`
          : `it was made for this folder, whose weights have changed since: restore those weights or edit again`;
    throw new RepairError('ERR_MEMORY_MISMATCH', `${err.message}; this is ${model.dir}: ${hint}`, { ...err.details, ...(base.modelDir ? { modelDir: base.modelDir } : {}) }, { cause: e });
  }
}

/** 'main', 'working' or 'memory i' for a route (explain's -1 = the working memory). */
export function routeLabel(route: 'main' | number): string {
  if (route === 'main') return 'main';
  return route === -1 ? 'working' : `memory ${route}`;
}

/** Where an edit lives now: 'working', a memory index, or undefined (not in this editor). */
export function editLocation(editor: Editor, id: string): 'working' | number | undefined {
  const m = editor.memories();
  if (m.working.edits.includes(id)) return 'working';
  const i = m.memories.findIndex((x) => x.edits.includes(id));
  return i >= 0 ? i : undefined;
}

export function fmtNum(x: number, digits = 2): string {
  if (!Number.isFinite(x)) return String(x);
  if (Math.abs(x) >= 1e6) return x.toExponential(2);
  return x.toFixed(digits);
}

/** A compact JSON form of an explanation (route as a label plus the raw index). */
export function explanationJson(e: Explanation): Record<string, unknown> {
  return {
    route: routeLabel(e.route),
    memory: e.route === 'main' ? null : e.route,
    score: e.score,
    threshold: e.threshold,
    tokens: e.tokens,
    scores: e.scores.map((s) => ({ memory: s.memory === -1 ? 'working' : s.memory, kind: s.kind, score: s.score, threshold: s.threshold, edits: s.edits })),
    ...(e.key ? { key: e.key } : {}),
  };
}

/** One-line summary: `memory 2 (score 15.78 >= threshold 12.26)` / `main (best score 8.47 < threshold 11.25)`. */
export function routeSummary(e: Explanation): string {
  if (e.route === 'main') return `main (best score ${fmtNum(e.score)} < threshold ${fmtNum(e.threshold)})`;
  const key = e.key ? `, nearest edit ${e.key.edit}${e.key.subject !== undefined ? `, subject "${e.key.subject}"` : ''}` : '';
  return `${routeLabel(e.route)} (score ${fmtNum(e.score)} ${e.score >= e.threshold ? '>=' : '<'} threshold ${fmtNum(e.threshold)}${key})`;
}

/** The table of every memory's score, threshold and edit count; the chosen one is marked. */
export function scoresTable(e: Explanation): string {
  const chosen = (s: RouteScore) => e.route !== 'main' && s.memory === e.route;
  return formatTable(
    ['memory', 'kind', 'edits', 'score', 'threshold', 'route'],
    e.scores.map((s) => [
      s.memory === -1 ? 'working' : String(s.memory),
      s.kind,
      String(s.edits),
      fmtNum(s.score),
      s.edits === 0 ? '-' : fmtNum(s.threshold),
      chosen(s) ? '<- chosen' : '',
    ]),
    ['l', 'l', 'r', 'r', 'r', 'l'],
  );
}
