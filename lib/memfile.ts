// memfile.ts — side-memory files: safetensors (memory.0 … memory.{n-1}, F32 [D, F]) whose
// __metadata__ holds the format name, the format version, the editor state as JSON ("editor") and, since
// version 2, a SHA-256 over everything that decides behaviour ("checksum"). Saves are atomic (temp file,
// fsync, rename; a temp file is removed on any failure, and orphans of killed saves are swept by the next
// save to the same path). Loads verify the checksum and the full metadata structure before anything is
// used, so a flipped byte or an edited threshold is ERR_MEMORY_FILE naming what failed, never a silent
// change of behaviour or a TypeError later.

import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readSync, renameSync, unlinkSync, writeSync, statSync, readdirSync } from 'node:fs';
import { dirname, basename, join, resolve } from 'node:path';
import { RepairError } from './errors.js';
import { parseSafetensorsHeader } from './safetensors.js';

export const MEMORY_FORMAT = 'repair-edit.side-memory';
/** 2: adds the checksum. Version-1 files (no checksum) load only with { allowUnverified: true }. */
export const MEMORY_FORMAT_VERSION = 2;

/**
 * The checksum of a memory file: SHA-256 over the format, the version, the editor JSON, the tensor table
 * (name, dtype, shape, offsets) and the whole data section, each part length-prefixed.
 */
export function memoryChecksum(format: string, version: string, editor: string, table: readonly { name: string; dtype: string; shape: readonly number[]; begin: number; end: number }[], data: Uint8Array | readonly Uint8Array[]): string {
  const h = createHash('sha256');
  const part = (s: string | Uint8Array): void => {
    const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(b.byteLength));
    h.update(len);
    h.update(b);
  };
  part(format);
  part(version);
  part(editor);
  part(table.map((t) => `${t.name} ${t.dtype} ${t.shape.join('x')} ${t.begin} ${t.end}`).join('\n'));
  const chunks = data instanceof Uint8Array ? [data] : data;
  const total = chunks.reduce((a, c) => a + c.byteLength, 0);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(total));
  h.update(len);
  for (const c of chunks) h.update(c);
  return `sha256:${h.digest('hex')}`;
}

function ioError(path: string, what: string, e: unknown): RepairError {
  const code = (e as NodeJS.ErrnoException)?.code;
  return new RepairError('ERR_IO', `cannot ${what} ${path}: ${code ? `${code}, ` : ''}${(e as Error)?.message ?? String(e)}`, { file: path, errno: code }, { cause: e });
}

const TMP_RE = /^\.(.+)\.(\d+)\.(\d+)\.tmp$/;

function pidAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, not ours
  }
}

/** Remove temp files of earlier saves to `path` whose writer process is gone (a kill -9 mid-save). Returns their names. */
export function sweepOrphanTemps(path: string): string[] {
  const dir = dirname(path);
  const base = basename(path);
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return removed;
  }
  for (const n of names) {
    const m = TMP_RE.exec(n);
    if (!m || m[1] !== base || pidAlive(Number(m[2]))) continue;
    try {
      unlinkSync(join(dir, n));
      removed.push(n);
    } catch {
      /* gone meanwhile, or not ours to remove */
    }
  }
  return removed;
}

/**
 * Write a memory file atomically. `editor` is the metadata JSON; `slots` the F32 tensors, each of `shape`.
 * Every failure is a RepairError (ERR_IO naming the path) and leaves no temp file; the old file stays.
 */
export function writeMemoryFile(path: string, editor: string, slots: readonly Float32Array[], shape: [number, number], failAfter?: number): void {
  if (typeof path !== 'string' || path.length === 0) throw new RepairError('ERR_IO', 'save: the path must be a non-empty string', { file: String(path) });
  try {
    if (statSync(path).isDirectory()) throw new RepairError('ERR_IO', `cannot save to ${path}: it is a directory`, { file: path, errno: 'EISDIR' });
  } catch (e) {
    if (e instanceof RepairError) throw e;
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(path, 'save to', e);
  }
  const table: { name: string; dtype: string; shape: number[]; begin: number; end: number }[] = [];
  let off = 0;
  slots.forEach((s, i) => {
    table.push({ name: `memory.${i}`, dtype: 'F32', shape: [...shape], begin: off, end: off + s.byteLength });
    off += s.byteLength;
  });
  const bytes = slots.map((s) => new Uint8Array(s.buffer, s.byteOffset, s.byteLength));
  const version = String(MEMORY_FORMAT_VERSION);
  const checksum = memoryChecksum(MEMORY_FORMAT, version, editor, table, bytes);
  const header: Record<string, unknown> = { __metadata__: { format: MEMORY_FORMAT, version, editor, checksum } };
  for (const t of table) header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [t.begin, t.end] };
  let hjson = JSON.stringify(header);
  hjson += ' '.repeat((8 - (Buffer.byteLength(hjson) % 8)) % 8);
  const hbuf = Buffer.from(hjson, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hbuf.length));

  sweepOrphanTemps(path);
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now()}${Math.floor(Math.random() * 1e6)}.tmp`);
  let fd: number;
  try {
    fd = openSync(tmp, 'wx');
  } catch (e) {
    throw ioError(path, 'save to', e);
  }
  const removeTmp = (): void => {
    try {
      unlinkSync(tmp);
    } catch {
      /* best effort */
    }
  };
  let written = 0;
  try {
    const put = (b: Uint8Array) => {
      if (failAfter !== undefined && written + b.length > failAfter) {
        writeSync(fd, b, 0, Math.max(0, failAfter - written));
        throw new RepairError('ERR_IO', `simulated failure after ${failAfter} bytes while saving ${path}`, { file: path });
      }
      let done = 0;
      while (done < b.length) done += writeSync(fd, b, done, b.length - done);
      written += b.length;
    };
    put(len);
    put(hbuf);
    for (const b of bytes) put(b);
    fsyncSync(fd);
  } catch (e) {
    try {
      closeSync(fd);
    } catch {
      /* already failing */
    }
    removeTmp();
    throw e instanceof RepairError ? e : ioError(path, 'write', e);
  }
  try {
    closeSync(fd);
    renameSync(tmp, path);
  } catch (e) {
    removeTmp();
    throw ioError(path, 'save to', e);
  }
  try {
    const dfd = openSync(dirname(resolve(path)), 'r');
    fsyncSync(dfd);
    closeSync(dfd);
  } catch {
    /* directories cannot be fsynced everywhere */
  }
}

export interface ReadMemoryOptions {
  /** Load a version-1 file, which has no checksum (nothing can tell whether it was changed). Default false. */
  allowUnverified?: boolean;
}

/**
 * Read a memory file: header, format/version, checksum, tensor table. Returns the parsed editor JSON
 * (structure not yet validated: see validateMemoryMeta) and the tensors. Every failure is typed: ERR_IO
 * (cannot read), ERR_MEMORY_VERSION (newer format), ERR_MEMORY_FILE naming what failed.
 */
export function readMemoryFile(path: string, opts: ReadMemoryOptions = {}): { meta: unknown; tensors: Float32Array[]; shape: number[]; version: number } {
  const fail = (msg: string, what: string): never => {
    throw new RepairError('ERR_MEMORY_FILE', `${path}: ${msg}`, { file: path, failed: what });
  };
  if (typeof path !== 'string' || path.length === 0) throw new RepairError('ERR_IO', 'load: the path must be a non-empty string', { file: String(path) });
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    throw ioError(path, 'read', e);
  }
  if (!st.isFile()) throw new RepairError('ERR_IO', `cannot read ${path}: not a regular file${st.isDirectory() ? ' (a directory)' : ''}`, { file: path });
  if (st.size < 8) fail('the file is too short to be a memory file', 'header');
  let parsed;
  try {
    parsed = parseSafetensorsHeader(path, { strict: true });
  } catch (e) {
    const err = e as RepairError;
    if (err instanceof RepairError && err.code === 'ERR_SAFETENSORS') {
      const field = (err.details?.field as string | undefined) ?? 'header';
      throw new RepairError('ERR_MEMORY_FILE', `${path}: not a valid memory file (${err.message.replace(`${path}: `, '')})`, { file: path, failed: field, tensor: err.details?.tensor }, { cause: e });
    }
    throw err instanceof RepairError && err.code !== 'ERR_INTERNAL' ? err : ioError(path, 'read', e);
  }
  const md = parsed.metadata;
  const extraMd = Object.keys(md).filter((k) => !['format', 'version', 'editor', 'checksum'].includes(k));
  if (extraMd.length) fail(`unexpected __metadata__ field(s) ${extraMd.map((k) => JSON.stringify(k)).join(', ')}`, 'metadata');
  if (md.format !== MEMORY_FORMAT) fail(`not a ${MEMORY_FORMAT} file`, 'format');
  if (!/^[0-9]+$/.test(md.version ?? '')) fail('no format version', 'version');
  const version = Number(md.version);
  if (version > MEMORY_FORMAT_VERSION) {
    throw new RepairError('ERR_MEMORY_VERSION', `${path} has memory format version ${version}; this repair-edit reads up to ${MEMORY_FORMAT_VERSION} (upgrade repair-edit)`, { file: path, version });
  }
  if (version < 1) fail(`format version ${version} does not exist`, 'version');
  if (typeof md.editor !== 'string') fail('no editor metadata', 'editor');
  const table = [...parsed.tensors.values()].sort((a, b) => a.offset - b.offset);
  table.forEach((t, i) => {
    if (t.name !== `memory.${i}`) fail(`unexpected tensor "${t.name}" (expected memory.${i} in file order)`, 'tensors');
    if (t.dtype !== 'F32' || t.shape.length !== 2) fail(`tensor ${t.name} must be F32 [D, F], got ${t.dtype} [${t.shape.join(', ')}]`, 'tensors');
  });
  if (table.length === 0) fail('the file holds no memory tensor', 'tensors');
  const shape = table[0]!.shape;
  for (const t of table) if (t.shape[0] !== shape[0] || t.shape[1] !== shape[1]) fail(`tensor ${t.name} has shape [${t.shape.join(', ')}], memory.0 [${shape.join(', ')}]`, 'tensors');
  const dataBytes = parsed.fileSize - parsed.dataOffset;
  const data = Buffer.alloc(dataBytes);
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw ioError(path, 'read', e);
  }
  try {
    let got = 0;
    while (got < dataBytes) {
      const n = readSync(fd, data, got, dataBytes - got, parsed.dataOffset + got);
      if (n === 0) break;
      got += n;
    }
    if (got !== dataBytes) fail('short read of the memory tensors (the file changed while being read?)', 'tensors');
  } catch (e) {
    if (e instanceof RepairError) throw e;
    throw ioError(path, 'read', e);
  } finally {
    closeSync(fd);
  }
  if (version >= 2) {
    if (typeof md.checksum !== 'string') fail('no checksum in the metadata', 'checksum');
    const rel = table.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, begin: t.offset - parsed.dataOffset, end: t.offset - parsed.dataOffset + t.nbytes }));
    const want = memoryChecksum(md.format, md.version!, md.editor, rel, data);
    if (want !== md.checksum) fail('checksum mismatch: the metadata or the memory weights were changed or corrupted after saving', 'checksum');
  } else if (!opts.allowUnverified) {
    fail('format version 1 has no checksum, so its integrity cannot be verified; load it with { allowUnverified: true } and save it again', 'checksum');
  }
  let meta: unknown;
  try {
    meta = JSON.parse(md.editor);
  } catch {
    fail('the editor metadata is not JSON', 'editor');
  }
  const tensors = table.map((t) => {
    const off = t.offset - parsed.dataOffset;
    const f = new Float32Array(t.nbytes / 4);
    new Uint8Array(f.buffer).set(data.subarray(off, off + t.nbytes));
    for (let i = 0; i < f.length; i++) if (!Number.isFinite(f[i]!)) fail(`tensor ${t.name} holds a NaN or Inf (element ${i})`, 'tensors');
    return f;
  });
  return { meta, tensors, shape: [...shape], version };
}

// ---- structure of the editor metadata ----------------------------------------------------------------
type Json = Record<string, unknown>;

/** Structural validation of the editor JSON of a memory file; throws ERR_MEMORY_FILE naming the field. */
export function validateMemoryMeta(path: string, meta: unknown, tensorCount: number, tensorShape: readonly number[]): void {
  const fail = (field: string, what: string): never => {
    throw new RepairError('ERR_MEMORY_FILE', `${path}: metadata field ${field} ${what}`, { file: path, failed: 'metadata', field });
  };
  const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
  const obj = (v: unknown, f: string): Json => (isObj(v) ? v : fail(f, 'must be an object'));
  const str = (v: unknown, f: string): string => (typeof v === 'string' ? v : fail(f, 'must be a string'));
  const num = (v: unknown, f: string): number => (typeof v === 'number' && Number.isFinite(v) ? v : fail(f, 'must be a finite number'));
  const int = (v: unknown, f: string, lo: number, hi: number): number =>
    typeof v === 'number' && Number.isSafeInteger(v) && v >= lo && v <= hi ? v : fail(f, `must be an integer in [${lo}, ${hi}]`);
  const arr = (v: unknown, f: string): unknown[] => (Array.isArray(v) ? v : fail(f, 'must be an array'));
  const strs = (v: unknown, f: string): string[] => arr(v, f).map((x, i) => str(x, `${f}[${i}]`));
  const request = (v: unknown, f: string): void => {
    const r = obj(v, f);
    str(r.prompt, `${f}.prompt`);
    str(r.target, `${f}.target`);
    for (const k of ['rephrase', 'irrelevant', 'id', 'subject'] as const) {
      if (r[k] === undefined) continue;
      if (k === 'irrelevant' && Array.isArray(r[k])) strs(r[k], `${f}.${k}`);
      else str(r[k], `${f}.${k}`);
    }
  };
  const pending = (v: unknown, f: string): void => {
    const p = obj(v, f);
    str(p.id, `${f}.id`);
    request(p.request, `${f}.request`);
    int(p.attempts, `${f}.attempts`, 0, 1e9);
  };

  const m = obj(meta, 'editor');
  const config = obj(m.config, 'config');
  if (config.method !== 'wise' && config.method !== 'repair' && config.method !== 'ft') fail('config.method', "must be 'wise', 'repair' or 'ft'");
  if (typeof config.retrieve !== 'boolean') fail('config.retrieve', 'must be a boolean');
  const base = obj(m.base, 'base');
  str(base.modelType, 'base.modelType');
  int(base.layer, 'base.layer', 0, 1e6);
  const D = int(base.hiddenSize, 'base.hiddenSize', 1, 1e7);
  const F = int(base.intermediateSize, 'base.intermediateSize', 1, 1e8);
  str(base.fingerprint, 'base.fingerprint');
  const templates = strs(m.templates, 'templates');
  if (templates.length === 0 || !templates.every((t) => t.includes('{}'))) fail('templates', 'must be a non-empty list of strings holding {}');
  strs(m.irrelevantPool, 'irrelevantPool');
  int(m.editCount, 'editCount', 0, 1e12);
  int(m.shardCount, 'shardCount', 0, 1e12);
  num(m.globalMinAct, 'globalMinAct');
  num(m.globalMinPrompt, 'globalMinPrompt');
  int(m.nextId, 'nextId', 0, 1e15);
  if (m.irrCursor !== undefined) int(m.irrCursor, 'irrCursor', 0, 1e15);
  if (m.marginScale !== undefined) {
    const v = num(m.marginScale, 'marginScale');
    if (!(v > 0 && v <= 1000)) fail('marginScale', 'must be a number in (0, 1000]');
  }

  const edits = obj(m.edits, 'edits');
  for (const [id, e] of Object.entries(edits)) {
    const f = `edits.${id}`;
    const se = obj(e, f);
    request(se.request, `${f}.request`);
    strs(se.irrelevant, `${f}.irrelevant`);
    num(se.score, `${f}.score`);
    num(se.promptScore, `${f}.promptScore`);
    num(se.loss, `${f}.loss`);
  }
  const known = (ids: string[], f: string): void => {
    ids.forEach((id, i) => {
      if (!Object.prototype.hasOwnProperty.call(edits, id)) fail(`${f}[${i}]`, `names edit ${JSON.stringify(id)}, which the file does not hold`);
    });
  };
  const w = obj(m.working, 'working');
  str(w.uid, 'working.uid');
  int(w.seed, 'working.seed', 0, 2 ** 52);
  num(w.minAct, 'working.minAct');
  num(w.minPrompt, 'working.minPrompt');
  known(strs(w.edits, 'working.edits'), 'working.edits');
  const memories = arr(m.memories, 'memories');
  memories.forEach((x, i) => {
    const f = `memories[${i}]`;
    const mm = obj(x, f);
    str(mm.uid, `${f}.uid`);
    if (mm.kind !== 'shard' && mm.kind !== 'merged') fail(`${f}.kind`, "must be 'shard' or 'merged'");
    num(mm.minAct, `${f}.minAct`);
    num(mm.minPrompt, `${f}.minPrompt`);
    known(strs(mm.edits, `${f}.edits`), `${f}.edits`);
    const parts = arr(mm.parts, `${f}.parts`);
    if (parts.length === 0) fail(`${f}.parts`, 'must not be empty');
    parts.forEach((p, j) => {
      const pp = obj(p, `${f}.parts[${j}]`);
      int(pp.seed, `${f}.parts[${j}].seed`, 0, 2 ** 52);
      known(strs(pp.edits, `${f}.parts[${j}].edits`), `${f}.parts[${j}].edits`);
    });
    const weights = arr(mm.weights, `${f}.weights`).map((v, j) => num(v, `${f}.weights[${j}]`));
    if (weights.length !== parts.length) fail(`${f}.weights`, `must have one weight per part (${parts.length})`);
  });
  const loop = obj(m.loop, 'loop');
  arr(loop.queue, 'loop.queue').forEach((p, i) => pending(p, `loop.queue[${i}]`));
  arr(loop.residual, 'loop.residual').forEach((p, i) => pending(p, `loop.residual[${i}]`));
  strs(loop.feedback, 'loop.feedback');
  strs(loop.gaveUp, 'loop.gaveUp');
  for (const [id, s] of Object.entries(obj(loop.status, 'loop.status'))) {
    const f = `loop.status.${id}`;
    const so = obj(s, f);
    str(so.memory, `${f}.memory`);
    if (so.routedTo !== undefined) str(so.routedTo, `${f}.routedTo`);
    num(so.score, `${f}.score`);
    if (typeof so.ok !== 'boolean') fail(`${f}.ok`, 'must be a boolean');
  }
  for (const [id, a] of Object.entries(obj(loop.attempts, 'loop.attempts'))) int(a, `loop.attempts.${id}`, 0, 1e9);
  int(loop.uidCounter, 'loop.uidCounter', 0, 1e15);

  if (tensorCount !== 1 + memories.length) fail('memories', `lists ${memories.length} memories but the file holds ${tensorCount} memory tensors (expected ${1 + memories.length})`);
  if (tensorShape[0] !== D || tensorShape[1] !== F) fail('base', `says [${D}, ${F}] but the memory tensors are [${tensorShape.join(', ')}]`);
}
