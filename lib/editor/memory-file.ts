// editor/memory-file.ts — an editor's state as a memory file: the JSON metadata (config, base-model
// fingerprint, templates, counters, memories with their thresholds, stored edits, the REPAIR loop's
// queue) next to the side-memory tensors. save writes it atomically through lib/memfile.ts (the
// container: safetensors + checksum + structural validation); load verifies it against the base model
// (ERR_MEMORY_MISMATCH, ERR_MEMORY_FILE) before anything is used.
import { RepairError, disposedError, toRepairError } from '../errors.js';
import { MEMORY_FORMAT, MEMORY_FORMAT_VERSION, readMemoryFile, validateMemoryMeta, writeMemoryFile } from '../memfile.js';
import { modelInternals, type Model } from '../model.js';
import { resolveRepairOptions } from '../repair.js';
import { validateConfig, type EditorConfig } from './config.js';
import type { EditorState, LoopState, MemoryState, StoredEdit, WorkingState } from './state.js';

export { MEMORY_FORMAT, MEMORY_FORMAT_VERSION };

/** Test hook: fail a save after this many bytes (simulates a crash mid-write). */
export const FAIL_SAVE_AFTER = Symbol.for('repair-edit.failSaveAfter');

/** The editor JSON of a memory file. */
export interface Metadata {
  format: string;
  version: number;
  config: EditorConfig;
  /** modelDir (the folder the memories were trained on; files before issue 16 lack it): what the CLI names in a mismatch. */
  base: { modelType: string; layer: number; hiddenSize: number; intermediateSize: number; fingerprint: string; modelDir?: string };
  templates: string[];
  irrelevantPool: string[];
  editCount: number;
  shardCount: number;
  loop: LoopState;
  globalMinAct: number;
  globalMinPrompt: number;
  working: WorkingState;
  memories: MemoryState[];
  edits: Record<string, StoredEdit>;
  nextId: number;
  irrCursor: number;
  /** repair marginScale 'auto': the scale measured on the editor's first training call (absent until then). */
  marginScale?: number;
}

/** The editor JSON of the current state. */
export function metadata(ed: EditorState): Metadata {
  const c = ed.model.config;
  return {
    format: MEMORY_FORMAT,
    version: MEMORY_FORMAT_VERSION,
    config: { ...ed.config },
    base: { modelType: c.modelType, layer: ed.config.layer, hiddenSize: c.hiddenSize, intermediateSize: c.intermediateSize, fingerprint: ed.fingerprint, modelDir: ed.model.dir },
    templates: ed.templates,
    irrelevantPool: ed.irrelevantPool,
    editCount: ed.editCount,
    shardCount: ed.shardCount,
    loop: ed.loop,
    globalMinAct: ed.globalMinAct,
    globalMinPrompt: ed.globalMinPrompt,
    working: ed.working,
    memories: ed.memories,
    edits: Object.fromEntries(ed.edits),
    nextId: ed.nextId,
    irrCursor: ed.irrCursor,
    ...(ed.marginScale !== undefined ? { marginScale: ed.marginScale } : {}),
  };
}

/** Write the editor's side memories (never the base weights) and metadata to `path`, atomically. */
export async function saveMemoryFile(ed: EditorState, path: string, signal?: AbortSignal): Promise<void> {
  const slots = 1 + ed.memories.length;
  const data = await modelInternals(ed.model).enqueue(async (nm) => {
    const out: Float32Array[] = [];
    for (let s = 0; s < slots; s++) out.push(await nm.sideRead(ed.side, s));
    return out;
  }, signal);
  if (ed.disposed) throw disposedError('the editor');
  const { hiddenSize: D, intermediateSize: F } = ed.model.config;
  const meta = metadata(ed);
  writeMemoryFile(path, JSON.stringify({ ...meta, format: MEMORY_FORMAT, version: MEMORY_FORMAT_VERSION }), data, [D, F], ed.hook<number>(FAIL_SAVE_AFTER));
}

/** A memory file read and checked against the model's shape: the config to build the editor with. */
export interface EditorFile {
  path: string;
  meta: Metadata;
  tensors: Float32Array[];
  config: EditorConfig;
}

/**
 * Read a memory file for `model`: checksum and metadata structure (ERR_MEMORY_FILE), the model it was
 * saved for (ERR_MEMORY_MISMATCH), and its editor config (ERR_MEMORY_FILE naming the field).
 */
export function readEditorFile(model: Model, path: string, allowUnverified: boolean): EditorFile {
  const read = readMemoryFile(path, { allowUnverified });
  const tensors = read.tensors;
  const c = model.config;
  validateMemoryMeta(path, read.meta, tensors.length, read.shape);
  const meta = read.meta as Metadata;
  if (meta.base.modelType !== c.modelType || meta.base.hiddenSize !== c.hiddenSize || meta.base.intermediateSize !== c.intermediateSize || meta.base.layer >= c.numLayers) {
    throw new RepairError('ERR_MEMORY_MISMATCH', `${path} was saved for a different model (${meta.base.modelType} ${meta.base.hiddenSize}x${meta.base.intermediateSize}, layer ${meta.base.layer})`, { file: path });
  }
  const config: EditorConfig = { ...meta.config, editMatrix: meta.config.editMatrix ?? 'value' }; // older files: value
  try {
    validateConfig(config, c);
    if (config.method === 'repair') resolveRepairOptions(config.repair, config.mergeFreq);
  } catch (e) {
    const err = toRepairError(e);
    throw new RepairError('ERR_MEMORY_FILE', `${path}: metadata field config is invalid (${err.message})`, { file: path, failed: 'metadata', field: `config.${String(err.details?.field ?? '')}` }, { cause: e });
  }
  return { path, meta, tensors, config };
}

/**
 * Fill a freshly attached editor from a file read by readEditorFile: the base weight must have the
 * fingerprint the file was trained against; the tensors go into the side-memory slots, then the metadata
 * into the bookkeeping. Throws (the caller disposes the editor) when anything does not fit.
 */
export async function restoreMemoryFile(ed: EditorState, file: EditorFile, signal?: AbortSignal): Promise<void> {
  const { path, meta, tensors } = file;
  if (ed.fingerprint !== meta.base.fingerprint) {
    throw new RepairError('ERR_MEMORY_MISMATCH', `${path} was trained against a different base weight (fingerprint ${meta.base.fingerprint}, this model has ${ed.fingerprint} at layer ${meta.base.layer})`, { file: path });
  }
  const n = 1 + meta.memories.length;
  if (tensors.length !== n) throw new RepairError('ERR_MEMORY_FILE', `${path}: ${tensors.length} memory tensors for ${n} memories`, { file: path });
  await modelInternals(ed.model).enqueue(async (nm) => {
    for (let s = 0; s < n; s++) {
      if (s > 0) await nm.sideAdd(ed.side, -1);
      await nm.sideWrite(ed.side, s, tensors[s]!);
    }
  }, signal);
  ed.templates = meta.templates;
  ed.irrelevantPool = meta.irrelevantPool;
  ed.editCount = meta.editCount;
  ed.shardCount = meta.shardCount;
  ed.loop = meta.loop;
  ed.globalMinAct = meta.globalMinAct;
  ed.globalMinPrompt = meta.globalMinPrompt;
  ed.working = meta.working;
  ed.memories = meta.memories;
  ed.edits = new Map(Object.entries(meta.edits));
  ed.nextId = meta.nextId;
  ed.irrCursor = meta.irrCursor ?? 0;
  ed.marginScale = meta.marginScale;
}
