// Fuzz cases: seeded mutators and the runners that feed each mutated input to the library. Every case
// is a pure function of (seed, index): `npm run fuzz -- --seed S --only-case I` replays one.
//
// Kinds: safetensors / config / tokenizer (a mutated copy of the shipped stories260K folder, loaded and,
// when it loads, run), memory (a mutated real side-memory file, loaded and run), dataset (mutated ZsRE /
// JSONL files through loadDataset), request (random edit requests and editor options through edit()),
// and the fault scripts: abort (wise / repair / rollback aborted at a random time), dispose (editor
// disposed mid-call), concurrent (20 mixed calls at once), killsave (kill -9 of a process saving over an
// existing file).
import { mkdirSync, readFileSync, writeFileSync, copyFileSync, readdirSync, existsSync, rmSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { xoroshiro128plus } from 'pure-rand/generator/xoroshiro128plus';
import { uniformInt } from 'pure-rand/distribution/uniformInt';
import { loadModel, type Model } from '../../lib/model.js';
import { Editor, type EditRequest } from '../../lib/editor.js';
import { RepairError } from '../../lib/errors.js';
import { loadDataset } from '../../lib/datasets.js';
import { memoryChecksum } from '../../lib/memfile.js';
import { packageRoot } from '../../lib/paths.js';

export const KINDS = ['safetensors', 'config', 'tokenizer', 'memory', 'dataset', 'request', 'abort', 'dispose', 'concurrent', 'killsave'] as const;
export type Kind = (typeof KINDS)[number];
/** Relative frequency of each kind (the fault scripts are slower, so rarer). */
export const WEIGHTS: Record<Kind, number> = { safetensors: 30, config: 20, tokenizer: 15, memory: 25, dataset: 10, request: 6, abort: 2, dispose: 1, concurrent: 0.5, killsave: 0.3 };

export interface CaseResult {
  kind: Kind;
  /** 'typed': a RepairError was thrown (code); 'loaded': the input was accepted; 'untyped': anything else thrown. */
  outcome: 'typed' | 'loaded' | 'untyped';
  code?: string;
  /** Loaded, and the outputs differ from the unmutated input's. */
  changed?: boolean;
  /** Loaded, and gave non-finite logits. */
  nan?: boolean;
  /** A memory file whose content was changed (not re-sealed) was accepted. */
  tamperedAccepted?: boolean;
  /** A fault script's promise was broken (state changed after a failed call, a corrupt or unexpected file...). */
  violation?: string;
  detail?: string;
}

// ---- randomness -------------------------------------------------------------------------------------
export class Rng {
  private g;
  constructor(seed: number) {
    this.g = xoroshiro128plus(seed | 0);
  }
  int(lo: number, hi: number): number {
    return uniformInt(this.g, lo, hi);
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(0, a.length - 1)]!;
  }
  chance(p: number): boolean {
    return this.int(0, 999999) < p * 1e6;
  }
}

/** The seed of case `index` of a run seeded `seed`. */
export function caseSeed(seed: number, index: number): number {
  let x = (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(index + 1, 0xc2b2ae35)) >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x ^= x >>> 15;
  return x | 0;
}

export function kindOf(seed: number, index: number, kinds: readonly Kind[]): Kind {
  const r = new Rng(caseSeed(seed, index) ^ 0x5bd1e995);
  const total = kinds.reduce((a, k) => a + WEIGHTS[k], 0);
  let x = (r.int(0, 999999) / 1e6) * total;
  for (const k of kinds) {
    x -= WEIGHTS[k];
    if (x < 0) return k;
  }
  return kinds[kinds.length - 1]!;
}

// ---- mutators -----------------------------------------------------------------------------------------
const INTERESTING: unknown[] = [
  0, -1, 1, 2, 3, 7, 8, 64, 255, 256, 511, 512, 513, 65535, 2147483647, 2147483648, -2147483648, 4294967296, 2 ** 53, -(2 ** 53), 1e300, -1e300, 1e-300, 5e-324, 0.5, -0.5, 1.5,
  '', '0', '1', 'true', 'false', 'null', 'NaN', 'Infinity', 'F32', 'BF16', 'F16', 'I64', 'llama', 'gpt2', 'x'.repeat(300), '\u0000', '{}',
  true, false, null, [], [0], [1, 2], [-1, 5], {}, { a: 1 },
];

type Json = unknown;

/** Every path to a value in a JSON tree (capped), for picking a mutation point. */
function paths(v: Json, cap = 4000): (string | number)[][] {
  const out: (string | number)[][] = [];
  const walk = (x: Json, p: (string | number)[]): void => {
    if (out.length >= cap) return;
    out.push(p);
    if (Array.isArray(x)) {
      const n = x.length;
      // long arrays (merges, vocab lists): a sample of their elements
      const step = n > 64 ? Math.ceil(n / 64) : 1;
      for (let i = 0; i < n; i += step) walk(x[i], [...p, i]);
    } else if (typeof x === 'object' && x !== null) {
      const keys = Object.keys(x);
      const step = keys.length > 256 ? Math.ceil(keys.length / 256) : 1;
      for (let i = 0; i < keys.length; i += step) walk((x as Record<string, Json>)[keys[i]!], [...p, keys[i]!]);
    }
  };
  walk(v, []);
  return out;
}

function getAt(root: Json, p: (string | number)[]): Json {
  let x = root as Record<string | number, Json>;
  for (const k of p) x = x[k] as Record<string | number, Json>;
  return x;
}

/** One structural mutation of a JSON value (in place when possible; returns the new root). */
export function mutateJson(r: Rng, root: Json, opts: { focus?: (p: (string | number)[]) => boolean } = {}): Json {
  let ps = paths(root);
  if (opts.focus) {
    const f = ps.filter(opts.focus);
    if (f.length) ps = f;
  }
  const p = r.pick(ps);
  if (p.length === 0) return r.pick(INTERESTING);
  const parent = getAt(root, p.slice(0, -1)) as Record<string | number, Json>;
  const key = p[p.length - 1]!;
  const cur = parent[key];
  const op = r.int(0, 9);
  if (op === 0) {
    if (Array.isArray(parent)) parent.splice(Number(key), 1);
    else delete parent[key];
  } else if (op <= 3) {
    parent[key] = r.pick(INTERESTING);
  } else if (op <= 5 && typeof cur === 'number') {
    parent[key] = r.pick([cur + 1, cur - 1, -cur, cur * 2, cur / 2, cur * 1e10, Math.floor(cur / 3), cur + 0.5, String(cur), 0]);
  } else if (op === 6) {
    parent[key] = typeof cur === 'string' ? cur + r.pick(['x', ' ', '\u00e9', '{}', '"']) : String(cur);
  } else if (op === 7) {
    parent[key] = Array.isArray(cur) ? { ...cur } : typeof cur === 'object' && cur !== null ? Object.values(cur) : [cur];
  } else if (op === 8 && Array.isArray(parent)) {
    parent.push(structuredClone(cur) as Json);
  } else {
    const k2 = r.pick(['extra', '__proto__', 'constructor', 'data_offsets', 'dtype', 'shape', 'vocab', 'edits', 'loop']);
    (typeof cur === 'object' && cur !== null && !Array.isArray(cur) ? (cur as Record<string, Json>) : parent)[k2] = r.pick(INTERESTING);
  }
  return root;
}

/** Byte-level damage: bit flips, random bytes, truncation, insertion/deletion, NaN/Inf float patterns. */
export function mutateBytes(r: Rng, b: Buffer, region?: [number, number]): Buffer {
  const [lo, hi] = region ?? [0, b.length];
  const pos = () => r.int(lo, Math.max(lo, hi - 1));
  const op = r.int(0, 7);
  const out = Buffer.from(b);
  switch (op) {
    case 0:
    case 1: {
      const n = r.int(1, 4);
      for (let i = 0; i < n; i++) {
        const at = pos();
        out[at] = out[at]! ^ (1 << r.int(0, 7));
      }
      return out;
    }
    case 2: {
      out[pos()] = r.int(0, 255);
      return out;
    }
    case 3:
      return out.subarray(0, r.int(0, b.length - 1));
    case 4: {
      const at = pos();
      return Buffer.concat([out.subarray(0, at), Buffer.from([r.int(0, 255)]), out.subarray(at)]);
    }
    case 5: {
      const at = pos();
      return Buffer.concat([out.subarray(0, at), out.subarray(at + 1)]);
    }
    case 6: {
      const at = pos() & ~3;
      if (at + 4 <= out.length) out.writeUInt32LE(r.pick([0x7fc00000, 0x7f800000, 0xff800000, 0x7f7fffff, 0x00000001]), at);
      return out;
    }
    default: {
      const at = pos() & ~1;
      if (at + 2 <= out.length) out.writeUInt16LE(r.pick([0x7f80, 0x7fc0, 0x7c00, 0xfc00, 0xffff]), at);
      return out;
    }
  }
}

/** Split a safetensors file into its header object and data. */
function splitSt(b: Buffer): { header: Record<string, Json>; data: Buffer } {
  const hl = Number(b.readBigUInt64LE(0));
  return { header: JSON.parse(b.subarray(8, 8 + hl).toString('utf8')), data: b.subarray(8 + hl) };
}
function joinSt(header: Json, data: Buffer, lenDelta = 0): Buffer {
  let s = JSON.stringify(header);
  s += ' '.repeat((8 - (Buffer.byteLength(s) % 8)) % 8);
  const hb = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Math.max(0, hb.length + lenDelta)));
  return Buffer.concat([len, hb, data]);
}

// ---- the context a worker keeps ---------------------------------------------------------------------------
const STORIES = join(packageRoot(), 'models', 'stories260K');
const PROBES = ['Once upon a time', 'The cat was blue', 'Lily had a dragon', 'Tom went to the'];
const MEM_EDITS: EditRequest[] = [
  { prompt: 'The cat was', target: 'blue', id: 'a' },
  { prompt: 'Lily had a', target: 'dragon', id: 'b' },
  { prompt: 'The sun was', target: 'green', id: 'c' },
];

export interface Ctx {
  dir: string;
  files: Map<string, Buffer>;
  model: Model;
  baseTokens: number[];
  memFile: string;
  memBytes: Buffer;
  memBaseline: string;
  datasets: { name: string; bytes: Buffer; format?: 'zsre' | 'jsonl' }[];
}

async function runModel(m: Model): Promise<{ tokens: number[]; nan: boolean }> {
  const g = await m.generate(PROBES[0]!, { maxNewTokens: 6 });
  const lg = await m.logits(PROBES.map((p) => m.tokenizer.encode(p)), { positions: 'last' });
  return { tokens: g.tokens, nan: !lg.data.every(Number.isFinite) };
}

async function memBehaviour(ed: Editor): Promise<{ sig: string; nan: boolean }> {
  const parts: unknown[] = [];
  for (const p of PROBES) {
    const x = await ed.explain(p);
    parts.push([x.route, x.scores.map((s) => s.score.toFixed(4))]);
  }
  const lg = await ed.logits(PROBES.map((p) => ed.model.tokenizer.encode(p)), { positions: 'last' });
  parts.push(ed.memories(), ed.edits(), ed.pending());
  return { sig: JSON.stringify(parts), nan: !lg.data.every(Number.isFinite) };
}

export async function makeCtx(workDir: string): Promise<Ctx> {
  mkdirSync(workDir, { recursive: true });
  const dir = join(workDir, 'model');
  mkdirSync(dir, { recursive: true });
  const files = new Map<string, Buffer>();
  for (const f of readdirSync(STORIES)) {
    if (!/\.(json|safetensors)$/.test(f)) continue;
    files.set(f, readFileSync(join(STORIES, f)));
    copyFileSync(join(STORIES, f), join(dir, f));
  }
  const model = await loadModel(STORIES, { backend: 'cpu', threads: 1 });
  const baseTokens = (await runModel(model)).tokens;
  const ed = await Editor.create(model, { nIter: 8, saveFreq: 1, mergeFreq: 2 });
  for (const r of MEM_EDITS) await ed.edit(r);
  const memFile = join(workDir, 'base.mem');
  await ed.save(memFile);
  const memBaseline = (await memBehaviour(ed)).sig;
  await ed.dispose();
  const datasets: Ctx['datasets'] = [{ name: 'demo.jsonl', bytes: readFileSync(join(packageRoot(), 'data', 'demo-edits.jsonl')), format: 'jsonl' }];
  const zsre = join(packageRoot(), '..', 'shared', 'data', 'zsre', 'zsre_mend_train-1k.json');
  if (existsSync(zsre)) datasets.push({ name: 'zsre.json', bytes: Buffer.from(JSON.stringify(JSON.parse(readFileSync(zsre, 'utf8')).slice(0, 12))), format: 'zsre' });
  return { dir, files, model, baseTokens, memFile, memBytes: readFileSync(memFile), memBaseline, datasets };
}

function classify(kind: Kind, e: unknown): CaseResult {
  if (e instanceof RepairError) return { kind, outcome: 'typed', code: e.code };
  const err = e as Error;
  return { kind, outcome: 'untyped', code: err?.constructor?.name ?? typeof e, detail: String(err?.stack ?? err).slice(0, 400) };
}

// ---- runners --------------------------------------------------------------------------------------------
async function modelCase(kind: Kind, r: Rng, ctx: Ctx): Promise<CaseResult> {
  const file = kind === 'safetensors' ? 'model.safetensors' : kind === 'config' ? 'config.json' : 'tokenizer.json';
  const orig = ctx.files.get(file)!;
  let bytes: Buffer;
  if (kind === 'safetensors') {
    const { header, data } = splitSt(orig);
    const hl = Number(orig.readBigUInt64LE(0));
    const mode = r.int(0, 9);
    if (mode <= 3) bytes = joinSt(mutateJson(r, header), data, r.chance(0.3) ? r.pick([-1, 1, -8, 8, -2]) : 0);
    else if (mode <= 5) bytes = mutateBytes(r, orig, [0, 8 + hl]);
    else if (mode <= 8) bytes = mutateBytes(r, orig, [8 + hl, orig.length]);
    else bytes = mutateBytes(r, orig);
  } else {
    const text = orig.toString('utf8');
    bytes = r.chance(0.8) ? Buffer.from(JSON.stringify(mutateJson(r, JSON.parse(text)))) : mutateBytes(r, orig);
  }
  writeFileSync(join(ctx.dir, file), bytes);
  if (process.env.FUZZ_DUMP) writeFileSync(process.env.FUZZ_DUMP, bytes); // --only-case with FUZZ_DUMP=file keeps the input
  let m: Model | undefined;
  try {
    m = await loadModel(ctx.dir, { backend: 'cpu', threads: 1 });
    const out = await runModel(m);
    return { kind, outcome: 'loaded', changed: !isDeepStrictEqual(out.tokens, ctx.baseTokens), nan: out.nan };
  } catch (e) {
    return classify(kind, e);
  } finally {
    await m?.dispose();
    writeFileSync(join(ctx.dir, file), orig);
  }
}

async function memoryCase(r: Rng, ctx: Ctx): Promise<CaseResult> {
  const kind: Kind = 'memory';
  const orig = ctx.memBytes;
  const { header, data } = splitSt(orig);
  const hl = Number(orig.readBigUInt64LE(0));
  let bytes: Buffer;
  let resealed = false;
  const mode = r.int(0, 9);
  if (mode <= 3) {
    // the editor metadata (thresholds, method, retrieve, edits, loop...), re-sealed half of the time: a
    // re-sealed file reaches the structural checks behind the checksum
    const md = header.__metadata__ as Record<string, string>;
    const meta = JSON.parse(md.editor!);
    md.editor = JSON.stringify(mutateJson(r, meta));
    if (r.chance(0.5)) {
      resealed = true;
      const table = Object.entries(header)
        .filter(([k]) => k !== '__metadata__')
        .map(([name, t]) => ({ name, ...(t as { dtype: string; shape: number[]; data_offsets: [number, number] }) }))
        .map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, begin: t.data_offsets[0], end: t.data_offsets[1] }))
        .sort((a, b) => a.begin - b.begin);
      md.checksum = memoryChecksum(md.format!, md.version!, md.editor, table, data);
    }
    bytes = joinSt(header, data);
  } else if (mode <= 5) {
    bytes = joinSt(mutateJson(r, header, { focus: (p) => p[0] !== '__metadata__' || p[1] !== 'editor' }), data, r.chance(0.2) ? r.pick([-1, 1, 8]) : 0);
  } else if (mode <= 7) {
    bytes = mutateBytes(r, orig, [8 + hl, orig.length]);
  } else {
    bytes = mutateBytes(r, orig, [0, 8 + hl]);
  }
  const f = join(ctx.dir, '..', 'case.mem');
  writeFileSync(f, bytes);
  if (process.env.FUZZ_DUMP) writeFileSync(process.env.FUZZ_DUMP, bytes);
  let ed: Editor | undefined;
  try {
    ed = await Editor.load(ctx.model, f);
    const b = await memBehaviour(ed);
    // a content change that was not re-sealed and still loaded (whitespace-only header changes excepted)
    let same = false;
    try {
      const m = splitSt(bytes);
      same = m.data.equals(data) && isDeepStrictEqual(m.header, splitSt(orig).header);
    } catch {
      same = false;
    }
    // then the loaded editor must keep working; a re-sealed file may carry a valid but huge nIter (65535
    // steps take minutes), so the edit is bounded by a time limit (ERR_ABORTED), not by the hang watchdog
    await ed.edit({ prompt: 'Tom went to the', target: 'moon' }, { signal: AbortSignal.timeout(Number(process.env.FUZZ_EDIT_MS ?? 15000)) });
    return { kind, outcome: 'loaded', changed: b.sig !== ctx.memBaseline, nan: b.nan, tamperedAccepted: !resealed && !same, detail: resealed ? 'resealed' : undefined };
  } catch (e) {
    return classify(kind, e);
  } finally {
    await ed?.dispose();
  }
}

async function datasetCase(r: Rng, ctx: Ctx): Promise<CaseResult> {
  const kind: Kind = 'dataset';
  const ds = r.pick(ctx.datasets);
  let bytes: Buffer;
  if (r.chance(0.6)) {
    if (ds.format === 'jsonl') {
      const lines = ds.bytes.toString('utf8').split('\n');
      const i = r.int(0, lines.length - 1);
      try {
        lines[i] = JSON.stringify(mutateJson(r, JSON.parse(lines[i]!)));
      } catch {
        lines[i] = r.pick(['{', '[]', 'null', '"x"', '{"prompt": 1}']);
      }
      bytes = Buffer.from(lines.join('\n'));
    } else {
      bytes = Buffer.from(JSON.stringify(mutateJson(r, JSON.parse(ds.bytes.toString('utf8')))));
    }
  } else {
    bytes = mutateBytes(r, ds.bytes);
  }
  const f = join(ctx.dir, '..', ds.name);
  writeFileSync(f, bytes);
  try {
    const d = loadDataset(f, { format: ds.format, skipInvalid: r.chance(0.5) });
    return { kind, outcome: 'loaded', changed: d.records.length === 0 };
  } catch (e) {
    return classify(kind, e);
  }
}

function randomRequest(r: Rng): EditRequest {
  const valid = (): unknown => r.pick(['The cat was', 'blue', 'Who is the CEO of Acme?', 'Jane Doe', 'Lily had a', 'dragon', ' a b c', '\u00e9t\u00e9', 'x'.repeat(r.int(1, 40))]);
  const text = (): unknown =>
    r.chance(0.7) ? valid() : r.pick(['The cat was', 'blue', '', ' ', 'x'.repeat(r.int(1, 3000)), '\u{1F600}\u0000\uFFFF', 'Who is the CEO of Acme?', 42, null, undefined, ['a'], { a: 1 }, 'Lily ' + 'had '.repeat(r.int(0, 200))]);
  const req: Record<string, unknown> = { prompt: text(), target: text() };
  if (r.chance(0.3)) req.rephrase = text();
  if (r.chance(0.3)) req.irrelevant = r.chance(0.5) ? text() : [text(), text()];
  if (r.chance(0.3)) req.id = r.pick(['a', '', 'e1', 7, null, 'x'.repeat(100)]);
  if (r.chance(0.1)) req.locality = r.pick([[], [{ prompt: 'a', answer: 'b' }], 'x']);
  if (r.chance(0.05)) return r.pick([null, 'str', 5, []]) as unknown as EditRequest;
  return req as unknown as EditRequest;
}

async function requestCase(r: Rng, ctx: Ctx): Promise<CaseResult> {
  const kind: Kind = 'request';
  // mostly valid options (so that most requests reach training), each sometimes hostile
  const opts: Record<string, unknown> = { nIter: r.chance(0.85) ? r.pick([1, 2, 3, 5]) : r.pick([0, -1, 1.5, '3', Number.NaN, null, 100001]) };
  if (r.chance(0.6)) opts.method = r.chance(0.9) ? r.pick(['wise', 'repair', 'ft']) : r.pick(['magic', 1]);
  if (r.chance(0.3)) opts.lr = r.chance(0.7) ? r.pick([1, 1e-3, 1e30, 1e10, 1e5]) : r.pick([0, -1, Number.POSITIVE_INFINITY, '1']);
  if (r.chance(0.3)) opts.normConstraint = r.pick([0, 1, 1e30, 0.01]);
  if (r.chance(0.1)) opts.layer = r.pick([0, 4, 5, -1, 100, 2.5]);
  if (r.chance(0.2)) opts.saveFreq = r.pick([1, 2]);
  if (r.chance(0.1)) opts.mergeFreq = r.pick([2, 4, 3]);
  if (r.chance(0.05)) opts.actMargin = r.pick([[1, 2, 3], [Number.NaN, 0, 0], 'x']);
  if (r.chance(0.03)) opts.unknownOption = 1;
  let ed: Editor | undefined;
  try {
    ed = await Editor.create(ctx.model, opts);
    const many = r.chance(0.3);
    if (many) await ed.editMany([randomRequest(r), randomRequest(r)]);
    else await ed.edit(randomRequest(r));
    const b = await memBehaviour(ed);
    return { kind, outcome: 'loaded', nan: b.nan };
  } catch (e) {
    return classify(kind, e);
  } finally {
    await ed?.dispose();
  }
}

// ---- fault scripts ------------------------------------------------------------------------------------------
async function snap(ed: Editor): Promise<string> {
  const lg = await ed.logits(PROBES.map((p) => ed.model.tokenizer.encode(p)), { positions: 'all' });
  return JSON.stringify([ed.edits(), ed.memories(), ed.pending(), Buffer.from(lg.data.buffer).toString('base64')]);
}

const delay = (ms: number) => new Promise<void>((res) => setTimeout(res, ms));

async function abortCase(r: Rng, ctx: Ctx): Promise<CaseResult> {
  const kind: Kind = 'abort';
  const what = r.pick(['wise', 'repair', 'rollback'] as const);
  const ed = await Editor.create(ctx.model, { method: what === 'repair' ? 'repair' : 'wise', nIter: 10, saveFreq: 2, mergeFreq: 2 });
  try {
    await ed.edit(MEM_EDITS[0]!);
    await ed.edit(MEM_EDITS[1]!);
    if (what === 'rollback') await ed.edit(MEM_EDITS[2]!);
    const before = await snap(ed);
    const ac = new AbortController();
    const t = setTimeout(() => ac.abort(), r.int(0, 40));
    try {
      if (what === 'rollback') await ed.rollback(r.pick(['a', 'b', 'c']), { signal: ac.signal });
      else await ed.edit(MEM_EDITS[2]!, { signal: ac.signal });
    } catch (e) {
      clearTimeout(t);
      if (!(e instanceof RepairError)) return classify(kind, e);
      if (e.code !== 'ERR_ABORTED') return { kind, outcome: 'typed', code: e.code, violation: `${what}: ${e.code} instead of ERR_ABORTED` };
      const after = await snap(ed);
      return { kind, outcome: 'typed', code: e.code, violation: after === before ? undefined : `${what}: state changed after ERR_ABORTED` };
    }
    clearTimeout(t);
    return { kind, outcome: 'loaded' };
  } finally {
    await ed.dispose();
  }
}

async function disposeCase(r: Rng, ctx: Ctx): Promise<CaseResult> {
  const kind: Kind = 'dispose';
  const what = r.pick(['edit', 'editMany', 'rollback', 'save', 'generate'] as const);
  const ed = await Editor.create(ctx.model, { method: r.pick(['wise', 'repair'] as const), nIter: 10, saveFreq: 1, mergeFreq: 2 });
  await ed.edit(MEM_EDITS[0]!);
  const call =
    what === 'edit' ? ed.edit(MEM_EDITS[1]!) : what === 'editMany' ? ed.editMany(MEM_EDITS.slice(1)) : what === 'rollback' ? ed.rollback('a') : what === 'save' ? ed.save(join(ctx.dir, '..', 'd.mem')) : ed.generate('Once upon a time');
  const ms = r.int(0, 20);
  const d = ms === 0 ? ed.dispose() : delay(ms).then(() => ed.dispose());
  try {
    await call;
    await d;
    // a call that resolved must have finished before dispose() was called
    return { kind, outcome: 'loaded' };
  } catch (e) {
    await d;
    if (!(e instanceof RepairError)) return classify(kind, e);
    return { kind, outcome: 'typed', code: e.code, violation: e.code === 'ERR_DISPOSED' ? undefined : `${what}: ${e.code} after dispose()` };
  }
}

async function concurrentCase(r: Rng, ctx: Ctx): Promise<CaseResult> {
  const kind: Kind = 'concurrent';
  const ed = await Editor.create(ctx.model, { method: r.pick(['wise', 'repair'] as const), nIter: 5, saveFreq: 2, mergeFreq: 2 });
  const calls: Promise<unknown>[] = [];
  for (let i = 0; i < 20; i++) {
    const op = r.int(0, 7);
    const p = PROBES[i % PROBES.length]!;
    calls.push(
      op === 0 ? ed.edit({ prompt: p, target: `t${i}` })
      : op === 1 ? ed.editMany([{ prompt: p, target: `m${i}` }])
      : op === 2 ? ed.generate(p, { maxNewTokens: 4 })
      : op === 3 ? ed.explain(p)
      : op === 4 ? ed.logits([ctx.model.tokenizer.encode(p)])
      : op === 5 ? ed.save(join(ctx.dir, '..', `c${i}.mem`))
      : op === 6 ? ed.rollback(r.pick(['e1', 'e2', 'nope']))
      : ctx.model.generate(p, { maxNewTokens: 3 }),
    );
  }
  const settled = await Promise.allSettled(calls);
  try {
    for (const s of settled) if (s.status === 'rejected' && !(s.reason instanceof RepairError)) return classify(kind, s.reason);
    const b = await memBehaviour(ed);
    const codes = settled.filter((s): s is PromiseRejectedResult => s.status === 'rejected').map((s) => (s.reason as RepairError).code);
    const bad = codes.filter((c) => c !== 'ERR_UNKNOWN_EDIT');
    return { kind, outcome: codes.length ? 'typed' : 'loaded', code: codes[0], nan: b.nan, violation: bad.length ? `unexpected ${bad.join(',')}` : undefined };
  } finally {
    await ed.dispose();
  }
}

/** kill -9 of a process saving over an existing file: the file must be the old or the new state, never corrupt. */
async function killSaveCase(r: Rng, ctx: Ctx): Promise<CaseResult> {
  const kind: Kind = 'killsave';
  const d = join(ctx.dir, '..', 'killsave');
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d);
  const target = join(d, 'x.mem');
  writeFileSync(target, ctx.memBytes); // the old state
  const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'saver.ts'), ctx.memFile, target, join(d, 'new.ref')], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (b) => (out += String(b)));
  child.stderr.on('data', (b) => (out += String(b)));
  const exited = new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
  // wait until it saves in a loop, then kill it at a random moment
  const t0 = Date.now();
  while (!out.includes('saving') && Date.now() - t0 < 60_000 && child.exitCode === null) await delay(5);
  if (!out.includes('saving')) {
    child.kill('SIGKILL');
    await exited;
    return { kind, outcome: 'untyped', code: 'saver', detail: out.slice(-400) };
  }
  await delay(r.int(0, 30));
  child.kill('SIGKILL');
  await exited;
  const now = readFileSync(target);
  const ref = readFileSync(join(d, 'new.ref'));
  const which = now.equals(ctx.memBytes) ? 'old' : now.equals(ref) ? 'new' : 'corrupt';
  // the next save sweeps what the killed save left
  const ed = await Editor.load(ctx.model, target);
  try {
    await ed.save(target);
  } finally {
    await ed.dispose();
  }
  const left = readdirSync(d).filter((f) => f.endsWith('.tmp'));
  const violation = which === 'corrupt' ? 'the saved file is neither the old nor the new state' : left.length ? `temp files left after the next save: ${left.join(', ')}` : undefined;
  return { kind, outcome: 'loaded', code: which, violation };
}

export async function runCase(kind: Kind, seed: number, ctx: Ctx): Promise<CaseResult> {
  const r = new Rng(seed);
  try {
    switch (kind) {
      case 'safetensors':
      case 'config':
      case 'tokenizer':
        return await modelCase(kind, r, ctx);
      case 'memory':
        return await memoryCase(r, ctx);
      case 'dataset':
        return await datasetCase(r, ctx);
      case 'request':
        return await requestCase(r, ctx);
      case 'abort':
        return await abortCase(r, ctx);
      case 'dispose':
        return await disposeCase(r, ctx);
      case 'concurrent':
        return await concurrentCase(r, ctx);
      case 'killsave':
        return await killSaveCase(r, ctx);
    }
  } catch (e) {
    return classify(kind, e);
  }
}
