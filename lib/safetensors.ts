// safetensors.ts — parse and validate safetensors headers in TypeScript. Only the 8-byte length prefix
// and the JSON header are read (fs.read at known offsets); tensor bytes are never touched here: the
// native loader reads them by the absolute offsets computed below.
//
// Format: [u64 little-endian N][N bytes UTF-8 JSON header][data section]. The header maps tensor names
// to { dtype, shape, data_offsets: [begin, end] } (offsets relative to the data section), plus an
// optional "__metadata__" object of string → string.

import { openSync, readSync, closeSync, fstatSync, readFileSync, existsSync, statSync } from 'node:fs';
import { join, resolve, sep, isAbsolute } from 'node:path';
import { RepairError } from './errors.js';
import type { NativeDType, NativeTensorSpec } from './native.js';

/** Bytes per element of every dtype in the safetensors specification. */
export const DTYPE_SIZES: Readonly<Record<string, number>> = Object.freeze({
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
});

/** Dtypes the runtime can hold weights in. */
export const WEIGHT_DTYPES: readonly NativeDType[] = ['F32', 'F16', 'BF16'];

/** Headers larger than this are refused (real checkpoints have headers well under 10 MB). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** One tensor as described by a header; offsets are ABSOLUTE file offsets. */
export interface SafetensorsTensor {
  name: string;
  file: string;
  dtype: string; // any dtype of DTYPE_SIZES
  shape: number[];
  offset: number; // 8 + headerLen + begin
  nbytes: number; // end - begin
}

export interface SafetensorsFile {
  file: string;
  headerLength: number;
  dataOffset: number; // 8 + headerLength
  fileSize: number;
  metadata: Record<string, string>;
  tensors: Map<string, SafetensorsTensor>;
}

function fail(file: string, message: string, details?: Record<string, unknown>): never {
  throw new RepairError('ERR_SAFETENSORS', `${file}: ${message}`, { file, ...details });
}

function readExactly(fd: number, length: number, position: number): Buffer {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const n = readSync(fd, buf, got, length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got === length ? buf : buf.subarray(0, got);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parse and validate one .safetensors file's header. Throws ERR_SAFETENSORS naming the file and tensor/field. */
export function parseSafetensorsHeader(file: string, opts: { strict?: boolean } = {}): SafetensorsFile {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new RepairError('ERR_SAFETENSORS', `${file}: cannot open (${code ?? (e as Error).message})`, { file }, { cause: e });
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) fail(file, 'not a regular file');
    const fileSize = st.size;
    if (fileSize < 8) fail(file, `file is truncated: ${fileSize} bytes, shorter than the 8-byte header length`, { fileSize });
    const lenBuf = readExactly(fd, 8, 0);
    if (lenBuf.length < 8) fail(file, 'file is truncated while reading the header length');
    const headerLen64 = lenBuf.readBigUInt64LE(0);
    if (headerLen64 > BigInt(MAX_HEADER_BYTES)) {
      fail(file, `header length ${headerLen64} is absurd (more than ${MAX_HEADER_BYTES} bytes)`, { headerLength: headerLen64.toString() });
    }
    const headerLength = Number(headerLen64);
    if (8 + headerLength > fileSize) {
      fail(file, `header length ${headerLength} runs past the end of the file (${fileSize} bytes): the file is truncated or not safetensors`, {
        headerLength,
        fileSize,
      });
    }
    if (headerLength < 2) fail(file, `header length ${headerLength} is too small for a JSON object`, { headerLength });
    const headerBuf = readExactly(fd, headerLength, 8);
    if (headerBuf.length < headerLength) fail(file, 'file is truncated while reading the header');
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(headerBuf);
    } catch {
      fail(file, 'header is not valid UTF-8');
    }
    let header: unknown;
    try {
      header = JSON.parse(text);
    } catch (e) {
      fail(file, `header is not valid JSON (${(e as Error).message})`);
    }
    if (!isPlainObject(header)) {
      fail(file, `header JSON must be an object, got ${header === null ? 'null' : Array.isArray(header) ? 'an array' : typeof header}`);
    }
    return validateHeader(file, header, headerLength, fileSize, opts.strict === true);
  } finally {
    closeSync(fd);
  }
}

function validateHeader(file: string, header: Record<string, unknown>, headerLength: number, fileSize: number, strict = false): SafetensorsFile {
  const dataOffset = 8 + headerLength;
  const dataSize = fileSize - dataOffset;
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, SafetensorsTensor>();
  const ranges: { name: string; begin: number; end: number }[] = [];

  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isPlainObject(entry)) fail(file, '"__metadata__" must be an object of strings', { field: '__metadata__' });
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== 'string') fail(file, `"__metadata__.${k}" must be a string`, { field: `__metadata__.${k}` });
        metadata[k] = v;
      }
      continue;
    }
    const where = `tensor "${name}"`;
    if (!isPlainObject(entry)) fail(file, `${where}: entry must be an object`, { tensor: name });
    const { dtype, shape, data_offsets: offsets } = entry;
    if (strict) {
      // files this package writes: an entry holds exactly dtype, shape and data_offsets
      const extra = Object.keys(entry).filter((k) => k !== 'dtype' && k !== 'shape' && k !== 'data_offsets');
      if (extra.length) fail(file, `${where}: unexpected field(s) ${extra.map((k) => JSON.stringify(k)).join(', ')}`, { tensor: name, field: extra[0] });
    }
    if (typeof dtype !== 'string') fail(file, `${where}: missing or non-string "dtype"`, { tensor: name, field: 'dtype' });
    const size = DTYPE_SIZES[dtype];
    if (size === undefined) fail(file, `${where}: unknown dtype "${dtype}"`, { tensor: name, field: 'dtype', dtype });
    if (!Array.isArray(shape)) fail(file, `${where}: "shape" must be an array`, { tensor: name, field: 'shape' });
    let numel = 1;
    for (const d of shape) {
      if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
        fail(file, `${where}: "shape" must hold non-negative integers, got ${JSON.stringify(shape)}`, { tensor: name, field: 'shape' });
      }
      numel *= d;
      if (!Number.isSafeInteger(numel)) fail(file, `${where}: shape ${JSON.stringify(shape)} is too large`, { tensor: name, field: 'shape' });
    }
    if (!Array.isArray(offsets) || offsets.length !== 2) {
      fail(file, `${where}: "data_offsets" must be [begin, end]`, { tensor: name, field: 'data_offsets' });
    }
    const [begin, end] = offsets as unknown[];
    if (typeof begin !== 'number' || typeof end !== 'number' || !Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || begin < 0 || end < begin) {
      fail(file, `${where}: "data_offsets" ${JSON.stringify(offsets)} must be integers with 0 <= begin <= end`, {
        tensor: name,
        field: 'data_offsets',
      });
    }
    if (end > dataSize) {
      fail(file, `${where}: data_offsets [${begin}, ${end}] run past the end of the data section (${dataSize} bytes): the file is truncated`, {
        tensor: name,
        field: 'data_offsets',
        dataSize,
      });
    }
    const expected = numel * size;
    if (!Number.isSafeInteger(expected) || end - begin !== expected) {
      fail(
        file,
        `${where}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes but shape ${JSON.stringify(shape)} × ${dtype} (${size} bytes) needs ${expected}`,
        { tensor: name, field: 'data_offsets', nbytes: end - begin, expected },
      );
    }
    ranges.push({ name, begin, end });
    tensors.set(name, { name, file, dtype, shape: [...(shape as number[])], offset: dataOffset + begin, nbytes: end - begin });
  }

  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let prev: { name: string; begin: number; end: number } | undefined;
  for (const r of ranges) {
    if (r.end === r.begin) continue; // empty tensors occupy no bytes
    if (prev && r.begin < prev.end) {
      fail(file, `tensor "${r.name}" [${r.begin}, ${r.end}] overlaps tensor "${prev.name}" [${prev.begin}, ${prev.end}]`, {
        tensor: r.name,
        field: 'data_offsets',
        other: prev.name,
      });
    }
    // The format requires the data section to be indexed entirely, without holes: the tensors, in offset
    // order, must tile it from 0 to its end. A gap means the header and the bytes disagree (a header
    // length off by one, F32 bytes relabelled as a 2-byte dtype...), which would otherwise load garbage.
    const expectedBegin = prev ? prev.end : 0;
    if (r.begin !== expectedBegin) {
      fail(
        file,
        `tensor "${r.name}" starts at data offset ${r.begin} but ${prev ? `tensor "${prev.name}" ends at ${prev.end}` : 'the data section starts at 0'}: ` +
          'the data section must be covered by the tensors without gaps (corrupt header or header length)',
        { tensor: r.name, field: 'data_offsets', expectedBegin },
      );
    }
    prev = r;
  }
  const covered = prev ? prev.end : 0;
  if (covered !== dataSize) {
    fail(
      file,
      `the tensors cover ${covered} bytes of the ${dataSize}-byte data section: ${dataSize - covered} trailing bytes belong to no tensor (corrupt header, header length or truncated tensor list)`,
      { field: 'data_offsets', covered, dataSize },
    );
  }
  return { file, headerLength, dataOffset, fileSize, metadata, tensors };
}

/** Resolve a shard file name from an index, refusing names that escape the model folder. */
function shardPath(dir: string, indexFile: string, shard: unknown, tensor: string): string {
  if (typeof shard !== 'string' || shard.length === 0) {
    throw new RepairError('ERR_SAFETENSORS', `${indexFile}: weight_map["${tensor}"] must be a file name`, { file: indexFile, tensor });
  }
  const root = resolve(dir);
  const p = resolve(root, shard);
  if (isAbsolute(shard) || !(p.startsWith(root + sep))) {
    throw new RepairError('ERR_SAFETENSORS', `${indexFile}: weight_map["${tensor}"] = "${shard}" points outside the model folder`, {
      file: indexFile,
      tensor,
    });
  }
  return p;
}

/**
 * Read all tensor descriptions of a Hugging Face model folder: `model.safetensors`, or the shards
 * listed in `model.safetensors.index.json` (its weight_map decides which shard holds each tensor).
 */
export function readSafetensorsDir(dir: string): Map<string, SafetensorsTensor> {
  const indexFile = join(dir, 'model.safetensors.index.json');
  const single = join(dir, 'model.safetensors');
  if (existsSync(indexFile)) {
    let index: unknown;
    try {
      index = JSON.parse(readFileSync(indexFile, 'utf8'));
    } catch (e) {
      throw new RepairError('ERR_SAFETENSORS', `${indexFile}: not valid JSON (${(e as Error).message})`, { file: indexFile }, { cause: e });
    }
    if (!isPlainObject(index) || !isPlainObject(index.weight_map)) {
      throw new RepairError('ERR_SAFETENSORS', `${indexFile}: missing "weight_map" object`, { file: indexFile, field: 'weight_map' });
    }
    const shards = new Map<string, SafetensorsFile>();
    const out = new Map<string, SafetensorsTensor>();
    for (const [tensor, shard] of Object.entries(index.weight_map)) {
      const path = shardPath(dir, indexFile, shard, tensor);
      let parsed = shards.get(path);
      if (!parsed) {
        parsed = parseSafetensorsHeader(path);
        shards.set(path, parsed);
      }
      const t = parsed.tensors.get(tensor);
      if (!t) {
        throw new RepairError('ERR_SAFETENSORS', `${path}: tensor "${tensor}" is listed in ${indexFile} but not in this shard`, {
          file: path,
          tensor,
        });
      }
      out.set(tensor, t);
    }
    return out;
  }
  if (existsSync(single)) return parseSafetensorsHeader(single).tensors;
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    /* reported below */
  }
  if (!isDir) throw new RepairError('ERR_IO', `model folder ${dir} does not exist or is not a directory`, { file: dir });
  throw new RepairError('ERR_SAFETENSORS', `${dir}: no model.safetensors or model.safetensors.index.json`, { file: dir });
}

/** Convert a tensor for the native loader, refusing dtypes the runtime cannot hold weights in. */
export function toNativeSpec(t: SafetensorsTensor): NativeTensorSpec {
  if (!(WEIGHT_DTYPES as readonly string[]).includes(t.dtype)) {
    throw new RepairError(
      'ERR_SAFETENSORS',
      `${t.file}: unsupported dtype ${t.dtype} for tensor "${t.name}" (weights must be ${WEIGHT_DTYPES.join(', ')})`,
      { file: t.file, tensor: t.name, dtype: t.dtype },
    );
  }
  return { name: t.name, file: t.file, offset: t.offset, nbytes: t.nbytes, dtype: t.dtype as NativeDType, shape: [...t.shape] };
}
