// datasets.ts — loaders for the editing benchmarks (docs/metrics.md, "Datasets") (ZsRE in the MEND format,
// CounterFact in the flat EasyEdit format, SelfCheckGPT hallucination, Temporal) and a generic JSONL
// format, each turned into EditRecords (an EditRequest plus the fields evaluation needs).
//
// Validation is strict: a bad record is a RepairError 'ERR_DATASET' naming the file, the record index
// (0-based, in the file) and the field. Nothing is skipped unless `skipInvalid: true` is passed, and then
// every skipped record is listed in Dataset.skipped.

import { existsSync, readFileSync } from 'node:fs';
import { basename, extname, join, resolve } from 'node:path';
import { RepairError } from './errors.js';
import { mentions } from './editor/subject.js';
import type { EditRequest } from './editor.js';
import { packageRoot } from './paths.js';

export type DatasetFormat = 'zsre' | 'counterfact' | 'hallucination' | 'temporal' | 'jsonl';
export const DATASET_FORMATS: readonly DatasetFormat[] = ['zsre', 'counterfact', 'hallucination', 'temporal', 'jsonl'];

/** The datasets known by name, and their path inside a data folder (see datasetDirs). */
export const NAMED_DATASETS = {
  zsre: 'zsre/zsre_mend_train-1k.json',
  counterfact: 'counterfact/counterfact-edit.json',
  hallucination: 'hallucination-edit.json',
  temporal: 'temporal-edit.json',
} as const;
export type DatasetName = keyof typeof NAMED_DATASETS;

/** An edit request with the fields evaluation uses. `id` is always set (unique within the dataset). */
export interface EditRecord extends EditRequest {
  id: string;
  /** 0-based index of the record in its file (JSONL: among the non-blank lines). */
  index: number;
  /** JSONL only: the 1-based line number. */
  line?: number;
  subject?: string;
  /** The pre-edit answer: CounterFact ground_truth; ZsRE answers[0]. */
  groundTruth?: string;
  /** Temporal: the out-of-distribution paragraph scored by the OOD metric (§3). */
  oodRephrase?: string;
}

export interface SkippedRecord {
  index: number;
  field?: string;
  message: string;
}

export interface Dataset {
  /** 'zsre', 'counterfact', ... for the named sets; the file's base name otherwise. */
  name: string;
  format: DatasetFormat;
  /** Absolute path of the file read. */
  file: string;
  records: EditRecord[];
  /** Records dropped because of skipInvalid (empty otherwise: a bad record throws). */
  skipped: SkippedRecord[];
}

export interface LoadOptions {
  /** Drop invalid records (listed in Dataset.skipped) instead of throwing ERR_DATASET. */
  skipInvalid?: boolean;
  /** Where named datasets are looked for first (before REPAIR_DATA_DIR, ../shared/data and the shipped slices). */
  dataDir?: string;
}

// ---- helpers ---------------------------------------------------------------------------------------

class RecordError extends Error {
  constructor(
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

function datasetError(file: string, message: string, details: Record<string, unknown> = {}): RepairError {
  return new RepairError('ERR_DATASET', `${file}: ${message}`, { file, ...details });
}

function readText(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new RepairError('ERR_IO', code === 'ENOENT' ? `dataset file ${file} does not exist` : `cannot read ${file}: ${(e as Error).message}`, { file }, { cause: e });
  }
}

/** A JSON file holding an array of records (the four benchmark formats). */
function readJsonArray(file: string): unknown[] {
  const text = readText(file);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw datasetError(file, `invalid JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(v)) throw datasetError(file, `expected a JSON array of records, got ${v === null ? 'null' : typeof v}`);
  return v;
}

type Obj = Record<string, unknown>;

function asObject(v: unknown): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new RecordError(`expected a JSON object, got ${Array.isArray(v) ? 'an array' : v === null ? 'null' : typeof v}`);
  }
  return v as Obj;
}

function typeName(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

/** A required (or optional) non-empty string field. */
function str(o: Obj, k: string, required: true): string;
function str(o: Obj, k: string, required: false): string | undefined;
function str(o: Obj, k: string, required: boolean): string | undefined {
  const v = o[k];
  if (v === undefined) {
    if (required) throw new RecordError(`missing field "${k}"`, k);
    return undefined;
  }
  if (typeof v !== 'string') throw new RecordError(`field "${k}" must be a string, got ${typeName(v)}`, k);
  if (v.trim() === '') throw new RecordError(`field "${k}" must be a non-empty string`, k);
  return v;
}

/**
 * An optional subject field, which EditRequest.subject needs to be a span of the prompt (whole words, any
 * case). JSONL (`strict`): a subject elsewhere is an error in the record. The published sets: the record
 * is kept without it (its edit then routes as an edit without a subject).
 */
function subjectOf(o: Obj, k: string, prompt: string, strict = false): string | undefined {
  const v = str(o, k, false);
  if (v === undefined || mentions(prompt, v)) return v;
  if (strict) throw new RecordError(`field "${k}" (${JSON.stringify(v)}) does not occur in the prompt`, k);
  return undefined;
}
function strList(o: Obj, k: string): string[] | undefined {
  const v = o[k];
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) throw new RecordError(`field "${k}" must be an array of strings, got ${typeName(v)}`, k);
  v.forEach((x, i) => {
    if (typeof x !== 'string') throw new RecordError(`field "${k}[${i}]" must be a string, got ${typeName(x)}`, `${k}[${i}]`);
  });
  return v as string[];
}

/**
 * Run `parse` on every raw record: collect valid ones, throw on the first invalid one (or skip it with
 * skipInvalid). Ids must be unique.
 */
function parseAll(
  file: string,
  raw: readonly unknown[],
  parse: (v: unknown, index: number) => EditRecord,
  opts: LoadOptions,
  where: (index: number) => string = (i) => `record ${i}`,
): { records: EditRecord[]; skipped: SkippedRecord[] } {
  const records: EditRecord[] = [];
  const skipped: SkippedRecord[] = [];
  const ids = new Map<string, number>();
  raw.forEach((v, index) => {
    try {
      const r = parse(v, index);
      const prev = ids.get(r.id);
      if (prev !== undefined) throw new RecordError(`duplicate id "${r.id}" (first used by record ${prev})`, 'id');
      ids.set(r.id, index);
      records.push(r);
    } catch (e) {
      if (!(e instanceof RecordError)) throw e;
      if (opts.skipInvalid) {
        skipped.push({ index, ...(e.field ? { field: e.field } : {}), message: e.message });
        return;
      }
      throw new RepairError('ERR_DATASET', `${file} ${where(index)}: ${e.message}`, { file, index, ...(e.field ? { field: e.field } : {}) });
    }
  });
  if (records.length === 0) throw datasetError(file, raw.length === 0 ? 'no records' : `no valid records (${skipped.length} skipped)`);
  return { records, skipped };
}

function dataset(name: string, format: DatasetFormat, file: string, r: { records: EditRecord[]; skipped: SkippedRecord[] }): Dataset {
  return { name, format, file, records: r.records, skipped: r.skipped };
}

// ---- the formats -----------------------------------------------------------------------------------

/**
 * ZsRE, MEND format (§5.1): {subject, src, pred, rephrase, alt, answers, loc, loc_ans, cond}.
 * prompt = src, target = alt, rephrase = rephrase, locality = [{prompt: loc, answer: loc_ans}].
 */
export function loadZsre(file: string, opts: LoadOptions = {}): Dataset {
  const abs = resolve(file);
  const r = parseAll(
    abs,
    readJsonArray(abs),
    (v, index) => {
      const o = asObject(v);
      const prompt = str(o, 'src', true);
      const target = str(o, 'alt', true);
      const rephrase = str(o, 'rephrase', true);
      const loc = str(o, 'loc', true);
      const locAns = str(o, 'loc_ans', true);
      const subject = subjectOf(o, 'subject', prompt);
      str(o, 'pred', false);
      const answers = strList(o, 'answers');
      return {
        id: `zsre-${index}`,
        index,
        prompt,
        target,
        rephrase,
        locality: [{ prompt: loc, answer: locAns }],
        ...(subject !== undefined ? { subject } : {}),
        ...(answers?.[0] !== undefined ? { groundTruth: answers[0] } : {}),
      };
    },
    opts,
  );
  return dataset('zsre', 'zsre', abs, r);
}

/**
 * CounterFact, flat EasyEdit/KnowEdit format: {case_id, prompt, subject, ground_truth, target_new,
 * rephrase_prompt, locality_prompt, locality_ground_truth}.
 */
export function loadCounterFact(file: string, opts: LoadOptions = {}): Dataset {
  const abs = resolve(file);
  const r = parseAll(
    abs,
    readJsonArray(abs),
    (v, index) => {
      const o = asObject(v);
      let id = `counterfact-${index}`;
      if (o.case_id !== undefined) {
        if (typeof o.case_id !== 'number' || !Number.isSafeInteger(o.case_id) || o.case_id < 0) {
          throw new RecordError(`field "case_id" must be a non-negative integer, got ${JSON.stringify(o.case_id)}`, 'case_id');
        }
        id = `counterfact-${o.case_id}`;
      }
      const prompt = str(o, 'prompt', true);
      const target = str(o, 'target_new', true);
      const rephrase = str(o, 'rephrase_prompt', true);
      const lp = str(o, 'locality_prompt', true);
      const la = str(o, 'locality_ground_truth', true);
      const subject = subjectOf(o, 'subject', prompt);
      const groundTruth = str(o, 'ground_truth', false);
      return {
        id,
        index,
        prompt,
        target,
        rephrase,
        locality: [{ prompt: lp, answer: la }],
        ...(subject !== undefined ? { subject } : {}),
        ...(groundTruth !== undefined ? { groundTruth } : {}),
      };
    },
    opts,
  );
  return dataset('counterfact', 'counterfact', abs, r);
}

/** SelfCheckGPT hallucination (§5.2): {prompt, target_new, subject, locality_prompt, locality_ground_truth}; no rephrase. */
export function loadHallucination(file: string, opts: LoadOptions = {}): Dataset {
  const abs = resolve(file);
  const r = parseAll(
    abs,
    readJsonArray(abs),
    (v, index) => {
      const o = asObject(v);
      const prompt = str(o, 'prompt', true);
      const target = str(o, 'target_new', true);
      const lp = str(o, 'locality_prompt', true);
      const la = str(o, 'locality_ground_truth', true);
      const subject = subjectOf(o, 'subject', prompt);
      return { id: `hallucination-${index}`, index, prompt, target, locality: [{ prompt: lp, answer: la }], ...(subject !== undefined ? { subject } : {}) };
    },
    opts,
  );
  return dataset('hallucination', 'hallucination', abs, r);
}

/** Temporal (§5.3): {prompt, target_new, subject, ood_rephrase, locality_prompt, locality_ground_truth}. */
export function loadTemporal(file: string, opts: LoadOptions = {}): Dataset {
  const abs = resolve(file);
  const r = parseAll(
    abs,
    readJsonArray(abs),
    (v, index) => {
      const o = asObject(v);
      const prompt = str(o, 'prompt', true);
      const target = str(o, 'target_new', true);
      const oodRephrase = str(o, 'ood_rephrase', true);
      const lp = str(o, 'locality_prompt', true);
      const la = str(o, 'locality_ground_truth', true);
      const subject = subjectOf(o, 'subject', prompt);
      return { id: `temporal-${index}`, index, prompt, target, oodRephrase, locality: [{ prompt: lp, answer: la }], ...(subject !== undefined ? { subject } : {}) };
    },
    opts,
  );
  return dataset('temporal', 'temporal', abs, r);
}

const JSONL_FIELDS = ['prompt', 'target', 'rephrase', 'locality', 'irrelevant', 'id', 'subject'] as const;

/**
 * Generic JSONL: one {prompt, target, rephrase?, locality?: [{prompt, answer}], irrelevant?, id?, subject?}
 * per line; blank lines are skipped (they are not records). Unknown fields are errors.
 */
export function loadJsonl(file: string, opts: LoadOptions = {}): Dataset {
  const abs = resolve(file);
  const text = readText(abs);
  const lines: { line: number; text: string }[] = [];
  text.split(/\r?\n/).forEach((t, i) => {
    if (t.trim() !== '') lines.push({ line: i + 1, text: t });
  });
  const r = parseAll(
    abs,
    lines,
    (_line, index) => {
      const line = lines[index]!.line;
      let parsed: unknown;
      try {
        parsed = JSON.parse(lines[index]!.text);
      } catch (e) {
        throw new RecordError(`invalid JSON (${(e as Error).message})`);
      }
      const rec = asObject(parsed);
      for (const k of Object.keys(rec)) {
        if (!(JSONL_FIELDS as readonly string[]).includes(k)) throw new RecordError(`unknown field "${k}" (allowed: ${JSONL_FIELDS.join(', ')})`, k);
      }
      const out: EditRecord = { id: str(rec, 'id', false) ?? `line-${line}`, index, line, prompt: str(rec, 'prompt', true), target: str(rec, 'target', true) };
      for (const k of ['rephrase', 'irrelevant'] as const) {
        const v = str(rec, k, false);
        if (v !== undefined) out[k] = v;
      }
      const subject = subjectOf(rec, 'subject', out.prompt, true);
      if (subject !== undefined) out.subject = subject;
      if (rec.locality !== undefined) {
        if (!Array.isArray(rec.locality)) throw new RecordError(`field "locality" must be an array of {prompt, answer}, got ${typeName(rec.locality)}`, 'locality');
        out.locality = rec.locality.map((l: unknown, i: number) => {
          const f = `locality[${i}]`;
          if (typeof l !== 'object' || l === null || Array.isArray(l)) throw new RecordError(`field "${f}" must be an object {prompt, answer}, got ${typeName(l)}`, f);
          const lo = l as Obj;
          for (const k of Object.keys(lo)) if (k !== 'prompt' && k !== 'answer') throw new RecordError(`unknown field "${f}.${k}" (allowed: prompt, answer)`, `${f}.${k}`);
          const pr = lo.prompt;
          const an = lo.answer;
          for (const [k, v] of [['prompt', pr], ['answer', an]] as const) {
            if (v === undefined) throw new RecordError(`missing field "${f}.${k}"`, `${f}.${k}`);
            if (typeof v !== 'string') throw new RecordError(`field "${f}.${k}" must be a string, got ${typeName(v)}`, `${f}.${k}`);
            if (v.trim() === '') throw new RecordError(`field "${f}.${k}" must be a non-empty string`, `${f}.${k}`);
          }
          return { prompt: pr as string, answer: an as string };
        });
      }
      return out;
    },
    opts,
    (i) => `record ${i} (line ${lines[i]?.line ?? '?'})`,
  );
  return dataset(basename(abs, extname(abs)), 'jsonl', abs, r);
}

// ---- resolution ------------------------------------------------------------------------------------

/** The shared data folder of a source checkout: ../shared/data relative to the package root. */
export function sharedDataDir(): string {
  return resolve(packageRoot(), '..', 'shared', 'data');
}

/** The slices shipped in the package (data/datasets/, see its SOURCES.md): the first 75–200 records of each set. */
export function shippedDataDir(): string {
  return join(packageRoot(), 'data', 'datasets');
}

export interface DataDir {
  dir: string;
  /** 'option' (dataDir / --data-dir), 'env' (REPAIR_DATA_DIR), 'shared' (../shared/data) or 'shipped' (the package's slices). */
  source: 'option' | 'env' | 'shared' | 'shipped';
}

/** Where named datasets are looked for, in this order: dataDir, REPAIR_DATA_DIR, ../shared/data, the shipped slices. */
export function datasetDirs(dataDir?: string): DataDir[] {
  const out: DataDir[] = [];
  if (dataDir) out.push({ dir: resolve(dataDir), source: 'option' });
  if (process.env.REPAIR_DATA_DIR) out.push({ dir: resolve(process.env.REPAIR_DATA_DIR), source: 'env' });
  out.push({ dir: sharedDataDir(), source: 'shared' }, { dir: shippedDataDir(), source: 'shipped' });
  return out;
}

/**
 * The file of a named dataset (zsre, counterfact, hallucination, temporal): the first folder of
 * datasetDirs(dataDir) that holds it. An explicit dataDir or REPAIR_DATA_DIR that lacks it is an error
 * (ERR_IO naming the file to put there), never silently replaced by a later folder.
 */
export function namedDatasetPath(name: DatasetName, dataDir?: string): string {
  for (const d of datasetDirs(dataDir)) {
    const file = join(d.dir, NAMED_DATASETS[name]);
    if (existsSync(file)) return file;
    if (d.source === 'option' || d.source === 'env') {
      throw new RepairError(
        'ERR_IO',
        `the ${name} dataset is not in ${d.dir} (${d.source === 'option' ? 'the data directory given' : 'REPAIR_DATA_DIR'}): put the file at ${file}`,
        { file },
      );
    }
  }
  throw new RepairError(
    'ERR_IO',
    `the ${name} dataset was not found: put ${NAMED_DATASETS[name]} in a folder and pass it as dataDir / --data-dir, or set REPAIR_DATA_DIR`,
    { file: join(shippedDataDir(), NAMED_DATASETS[name]) },
  );
}

export function isDatasetName(s: string): s is DatasetName {
  return Object.prototype.hasOwnProperty.call(NAMED_DATASETS, s);
}

/**
 * The format of a file: .jsonl → jsonl; a .json array → by the fields of its first record (src/alt:
 * zsre; ood_rephrase: temporal; rephrase_prompt: counterfact; target_new + locality_prompt:
 * hallucination).
 */
export function detectFormat(file: string): DatasetFormat {
  const abs = resolve(file);
  if (extname(abs).toLowerCase() === '.jsonl') return 'jsonl';
  const arr = readJsonArray(abs);
  const first = arr[0];
  if (typeof first !== 'object' || first === null || Array.isArray(first)) throw datasetError(abs, 'record 0: expected a JSON object');
  const has = (k: string) => k in (first as Obj);
  if (has('src') && has('alt')) return 'zsre';
  if (has('ood_rephrase')) return 'temporal';
  if (has('rephrase_prompt') && has('target_new')) return 'counterfact';
  if (has('target_new') && has('locality_prompt')) return 'hallucination';
  throw datasetError(abs, `cannot tell the dataset format from record 0's fields (${Object.keys(first).join(', ')}); expected ZsRE (src, alt, ...), CounterFact (target_new, rephrase_prompt, ...), hallucination (target_new, locality_prompt, ...), temporal (ood_rephrase, ...) or a .jsonl file`);
}

const LOADERS: Record<DatasetFormat, (file: string, opts: LoadOptions) => Dataset> = {
  zsre: loadZsre,
  counterfact: loadCounterFact,
  hallucination: loadHallucination,
  temporal: loadTemporal,
  jsonl: loadJsonl,
};

/**
 * Load a named dataset (zsre | counterfact | hallucination | temporal, from the first folder of
 * datasetDirs(opts.dataDir) that holds it: dataDir, REPAIR_DATA_DIR, ../shared/data, the slices shipped in
 * the package) or a file (format detected unless given).
 */
export function loadDataset(nameOrFile: string, opts: LoadOptions & { format?: DatasetFormat } = {}): Dataset {
  if (opts.format !== undefined && !DATASET_FORMATS.includes(opts.format)) {
    throw new RepairError('ERR_INVALID_ARG', `dataset format must be one of ${DATASET_FORMATS.join(', ')}, got ${JSON.stringify(opts.format)}`, { field: 'format' });
  }
  if (isDatasetName(nameOrFile)) {
    const file = namedDatasetPath(nameOrFile, opts.dataDir);
    return LOADERS[opts.format ?? nameOrFile](file, opts);
  }
  const file = resolve(nameOrFile);
  if (!existsSync(file)) throw new RepairError('ERR_IO', `dataset file ${file} does not exist (named datasets: ${Object.keys(NAMED_DATASETS).join(', ')})`, { file });
  return LOADERS[opts.format ?? detectFormat(file)](file, opts);
}

// ---- the training-time irrelevant row (§1.3) -------------------------------------------------------

/** `loc + " " + loc_ans` of a train record (its first locality pair), or its own `irrelevant`. */
/** A record's text in the train role (§1.3): its first locality pair as "prompt answer", else its `irrelevant`. */
export function irrelevantText(r: EditRecord | EditRequest): string | undefined {
  const l = r.locality?.[0];
  if (l) return `${l.prompt} ${l.answer}`;
  return r.irrelevant;
}

/**
 * Set request.irrelevant for each record from the train records (§1.3): train[(i + offset) mod len]'s
 * `loc + " " + loc_ans` (ZsRE) or `locality_prompt + " " + locality_ground_truth` (hallucination,
 * temporal, CounterFact): its first locality pair. The reference repeats and shuffles the train records
 * when there are fewer than edits; this cycles them (deterministic).
 */
export function withIrrelevant<T extends EditRecord>(records: readonly T[], trainRecords: readonly (EditRecord | EditRequest)[], opts: { offset?: number } = {}): T[] {
  if (trainRecords.length === 0) throw new RepairError('ERR_INVALID_ARG', 'withIrrelevant: no train records');
  const offset = opts.offset ?? 0;
  if (!Number.isSafeInteger(offset) || offset < 0) throw new RepairError('ERR_INVALID_ARG', `withIrrelevant: offset must be a non-negative integer, got ${offset}`, { field: 'offset' });
  return records.map((r, i) => {
    const j = (i + offset) % trainRecords.length;
    const t = irrelevantText(trainRecords[j]!);
    if (t === undefined || t.trim() === '') throw new RepairError('ERR_DATASET', `withIrrelevant: train record ${j} has no locality pair (nor irrelevant text)`, { index: j });
    return { ...r, irrelevant: t };
  });
}

/**
 * The first `n` records of a dataset with their irrelevant rows taken from the same file. The shared
 * data holds no separate train split (the shared ZsRE file *is* the MEND train split; no
 * hallucination-train.json / temporal-train.json are shipped), so record i takes the locality pair of
 * record (i + n) mod len — outside the evaluated edits [0, n) whenever 2n <= len, so that no edit is
 * trained against its own (or another evaluated edit's) locality prompt (for larger n some irrelevant
 * rows are other evaluated edits' locality pairs; with n = len, record i + 1's, never its own). Records that already carry
 * `irrelevant` (JSONL) keep it; a JSONL file without locality pairs keeps the editor's default pool.
 */
export function editSlice(ds: Dataset, n: number): EditRecord[] {
  if (!Number.isSafeInteger(n) || n < 1) throw new RepairError('ERR_INVALID_ARG', `n must be a positive integer, got ${n}`, { field: 'n' });
  if (n > ds.records.length) {
    throw new RepairError('ERR_INVALID_ARG', `${ds.name} has ${ds.records.length} record${ds.records.length === 1 ? '' : 's'}, fewer than the ${n} edits asked for`, { field: 'n' });
  }
  const slice = ds.records.slice(0, n);
  const len = ds.records.length;
  // n = len: every record is an edit; take the next record's pair rather than the record's own.
  const offset = n % len === 0 && len > 1 ? 1 : n;
  if (ds.format === 'jsonl') {
    return slice.map((r, i) => {
      if (r.irrelevant !== undefined) return r;
      const t = irrelevantText(ds.records[(i + offset) % len]!);
      return t !== undefined ? { ...r, irrelevant: t } : r;
    });
  }
  return withIrrelevant(slice, ds.records, { offset });
}
