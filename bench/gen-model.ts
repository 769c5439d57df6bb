// gen-model.ts — write a random-init LLaMA-3-8B-shaped model folder at run time (nothing large travels to a
// GPU machine: 16 GB of bf16 weights are generated there in seconds).
//
//   npx tsx bench/gen-model.ts --out DIR [--scale full|small|tiny] [--layers N] [--dtype bf16|f16|f32] [--seed S]
//
// --scale full  : LLaMA-3-8B: 32 layers, hidden 4096, FFN 14336, 32 query heads / 8 KV heads (GQA 4:1, head_dim
//                 128), vocab 128256, rope_theta 5e5, untied lm_head — 8.03 B parameters, 16.1 GB in bf16.
// --scale small : the same architecture shrunk for dry runs on a CPU: hidden 512, FFN 1792, 8 / 2 heads (head_dim
//                 64), vocab 8192 (--layers defaults to the scale's count; pass --layers 2 for a quick run).
// --scale tiny  : hidden 128, FFN 448, 4 / 1 heads, vocab 1024.
// The tokenizer is the shipped stories260K one (512 ids, BOS 1, EOS 2): its ids are valid in every vocab here,
// so prompts work; the text is noise (random weights), which is all a timing run needs.
//
// Values: every linear and embedding weight ~ N(0, 0.02) (HF's initializer_range), norms = 1. The generator
// draws 16-bit indices from xorshift128 into a 65,536-entry table of N(0, 0.02) values (Box–Muller, same seed),
// two values per 32-bit draw, in chunks of 2^24 elements, each chunk seeded by (seed, chunk index) and written
// at its offset by one of N worker threads (pwrite into a pre-sized file): the file is identical for any worker
// count. Deterministic for a (shape, dtype, seed).
import { closeSync, copyFileSync, ftruncateSync, mkdirSync, openSync, writeFileSync, writeSync, renameSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { packageRoot } from '../lib/paths.js';

export interface GenShape {
  layers: number;
  hidden: number;
  ffn: number;
  heads: number;
  kvHeads: number;
  vocab: number;
}

export const SCALES: Record<string, GenShape> = {
  full: { layers: 32, hidden: 4096, ffn: 14336, heads: 32, kvHeads: 8, vocab: 128256 },
  small: { layers: 32, hidden: 512, ffn: 1792, heads: 8, kvHeads: 2, vocab: 8192 },
  tiny: { layers: 4, hidden: 128, ffn: 448, heads: 4, kvHeads: 1, vocab: 1024 },
};

type DT = 'BF16' | 'F16' | 'F32';

/** xorshift128 (Marsaglia), 32-bit state words; seeded through splitmix32 so nearby seeds decorrelate. */
class Rng {
  a: number; b: number; c: number; d: number;
  constructor(seed: number) {
    let s = seed >>> 0;
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0 || 1;
    };
    this.a = next(); this.b = next(); this.c = next(); this.d = next();
  }
  u32(): number {
    let t = this.d;
    const s = this.a;
    this.d = this.c; this.c = this.b; this.b = s;
    t ^= t << 11; t ^= t >>> 8;
    this.a = (t ^ s ^ (s >>> 19)) >>> 0;
    return this.a;
  }
}

const f32 = new Float32Array(1);
const u32v = new Uint32Array(f32.buffer);
function f32ToBf16(x: number): number {
  f32[0] = x;
  const u = u32v[0]!;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff; // round to nearest even (finite inputs)
}
function f32ToF16(x: number): number {
  // Float16Array is not in Node 20: round to nearest even for normal values; subnormal results flush to ±0
  f32[0] = x;
  const u = u32v[0]!;
  const sign = (u >>> 16) & 0x8000;
  const e = ((u >>> 23) & 0xff) - 127 + 15;
  if (e <= 0) return sign;
  if (e >= 31) return sign | 0x7c00;
  const m = (u >>> 13) & 0x3ff;
  const rest = u & 0x1fff;
  let h = sign | (e << 10) | m;
  if (rest > 0x1000 || (rest === 0x1000 && (m & 1))) h++; // a mantissa carry rolls into the exponent, as it should
  return h;
}

/** 65,536 N(0, std) values in the target dtype's bits (16-bit types) or as f32 bits. */
function normalTable(seed: number, std: number, dt: DT): Uint32Array {
  const r = new Rng(seed ^ 0x5bd1e995);
  const t = new Uint32Array(65536);
  for (let i = 0; i < 65536; i += 2) {
    const u1 = (r.u32() + 1) / 4294967297, u2 = r.u32() / 4294967296;
    const m = Math.sqrt(-2 * Math.log(u1)) * std;
    const z = [m * Math.cos(2 * Math.PI * u2), m * Math.sin(2 * Math.PI * u2)];
    for (let j = 0; j < 2; j++) {
      if (dt === 'BF16') t[i + j] = f32ToBf16(z[j]!);
      else if (dt === 'F16') t[i + j] = f32ToF16(z[j]!);
      else { f32[0] = z[j]!; t[i + j] = u32v[0]!; }
    }
  }
  return t;
}

interface TensorPlan { name: string; shape: number[]; kind: 'normal' | 'ones' }

export function tensorPlan(s: GenShape): TensorPlan[] {
  const hd = s.hidden / s.heads;
  const t: TensorPlan[] = [{ name: 'model.embed_tokens.weight', shape: [s.vocab, s.hidden], kind: 'normal' }];
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}.`;
    t.push(
      { name: p + 'input_layernorm.weight', shape: [s.hidden], kind: 'ones' },
      { name: p + 'self_attn.q_proj.weight', shape: [s.heads * hd, s.hidden], kind: 'normal' },
      { name: p + 'self_attn.k_proj.weight', shape: [s.kvHeads * hd, s.hidden], kind: 'normal' },
      { name: p + 'self_attn.v_proj.weight', shape: [s.kvHeads * hd, s.hidden], kind: 'normal' },
      { name: p + 'self_attn.o_proj.weight', shape: [s.hidden, s.heads * hd], kind: 'normal' },
      { name: p + 'post_attention_layernorm.weight', shape: [s.hidden], kind: 'ones' },
      { name: p + 'mlp.gate_proj.weight', shape: [s.ffn, s.hidden], kind: 'normal' },
      { name: p + 'mlp.up_proj.weight', shape: [s.ffn, s.hidden], kind: 'normal' },
      { name: p + 'mlp.down_proj.weight', shape: [s.hidden, s.ffn], kind: 'normal' },
    );
  }
  t.push({ name: 'model.norm.weight', shape: [s.hidden], kind: 'ones' }, { name: 'lm_head.weight', shape: [s.vocab, s.hidden], kind: 'normal' });
  return t;
}

export function paramCount(s: GenShape): number {
  return tensorPlan(s).reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
}

// The worker: fills its chunks (xorshift128 seeded per chunk, so the output does not depend on the worker count)
// and writes them at their file offsets. Plain JS (eval'd): no TS loader needed inside worker threads.
const WORKER_SRC = `
const { workerData, parentPort } = require('node:worker_threads');
const { openSync, writeSync, closeSync } = require('node:fs');
const { file, chunks, table, f32, one } = workerData;
const t = new Uint32Array(table);
const fd = openSync(file, 'r+');
const CH = ${1 << 24};
const draws = new Uint32Array(CH / 2), out = new Uint32Array(f32 ? CH : CH / 2);
const put = (b, pos) => { let w = 0; while (w < b.byteLength) w += writeSync(fd, b, w, b.byteLength - w, pos + w); };
for (const c of chunks) {
  const m = c.n;
  if (c.ones) {
    put(f32 ? new Uint8Array(new Uint32Array(m).fill(one).buffer) : new Uint8Array(new Uint16Array(m).fill(one).buffer), c.pos);
    continue;
  }
  let s = c.seed >>> 0;
  const sm = () => { s = (s + 0x9e3779b9) >>> 0; let z = s; z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0; z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0; return (z ^ (z >>> 16)) >>> 0 || 1; };
  let a = sm(), b = sm(), cc = sm(), d = sm();
  const words = Math.ceil(m / 2);
  for (let i = 0; i < words; i++) { let x = d; const y = a; d = cc; cc = b; b = y; x ^= x << 11; x ^= x >>> 8; a = (x ^ y ^ (y >>> 19)) >>> 0; draws[i] = a; }
  if (f32) {
    for (let i = 0, j = 0; i < words; i++, j += 2) { const r = draws[i]; out[j] = t[r & 0xffff]; out[j + 1] = t[r >>> 16]; }
    put(new Uint8Array(out.buffer, 0, m * 4), c.pos);
  } else {
    for (let i = 0; i < words; i++) { const r = draws[i]; out[i] = (t[r & 0xffff] | (t[r >>> 16] << 16)) >>> 0; }
    put(new Uint8Array(out.buffer, 0, m * 2), c.pos);
  }
  parentPort.postMessage(c.pos + (f32 ? 4 : 2) * m);
}
closeSync(fd);
`;

/** Writes config.json, model.safetensors, tokenizer files into `out` (workers: default the machine's parallelism, at most 16). */
export async function generateModel(
  out: string,
  s: GenShape,
  opts: { dtype?: DT; seed?: number; workers?: number; log?: (m: string) => void } = {},
): Promise<{ bytes: number; seconds: number; params: number }> {
  const t0 = performance.now();
  const dt: DT = opts.dtype ?? 'BF16';
  const seed = opts.seed ?? 1234;
  const es = dt === 'F32' ? 4 : 2;
  if (s.hidden % s.heads || s.heads % s.kvHeads) throw new Error(`bad shape: hidden ${s.hidden}, heads ${s.heads}/${s.kvHeads}`);
  mkdirSync(out, { recursive: true });
  const plan = tensorPlan(s);
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', generator: `repair-edit bench/gen-model.ts seed ${seed}` } };
  let off = 0;
  for (const t of plan) {
    const n = t.shape.reduce((x, y) => x * y, 1) * es;
    header[t.name] = { dtype: dt, shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let hj = JSON.stringify(header);
  hj += ' '.repeat((8 - (Buffer.byteLength(hj) % 8)) % 8);
  const hb = Buffer.from(hj, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hb.length));
  const file = join(out, 'model.safetensors');
  const tmp = file + '.tmp';
  const total = 8 + hb.length + off;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, len, 0, 8, 0);
    writeSync(fd, hb, 0, hb.length, 8);
    ftruncateSync(fd, total);
  } finally {
    closeSync(fd);
  }
  // chunks of 2^24 elements, each with its own seed
  const CH = 1 << 24;
  const chunks: { pos: number; n: number; seed: number; ones: boolean }[] = [];
  let pos = 8 + hb.length;
  for (const t of plan) {
    let n = t.shape.reduce((x, y) => x * y, 1);
    while (n > 0) {
      const m = Math.min(n, CH);
      chunks.push({ pos, n: m, seed: (Math.imul(seed, 0x9e3779b1) + chunks.length * 0x632be5ab) >>> 0, ones: t.kind === 'ones' });
      pos += m * es;
      n -= m;
    }
  }
  const table = normalTable(seed, 0.02, dt);
  const shared = new SharedArrayBuffer(table.byteLength);
  new Uint32Array(shared).set(table);
  const W = Math.max(1, Math.min(opts.workers ?? availableParallelism(), 16, chunks.length));
  let written = 0, nextLog = 1e9;
  await Promise.all(
    Array.from({ length: W }, (_, w) => new Promise<void>((resolve, reject) => {
      const mine = chunks.filter((_, i) => i % W === w);
      const wk = new Worker(WORKER_SRC, { eval: true, workerData: { file: tmp, chunks: mine, table: shared, f32: dt === 'F32', one: dt === 'BF16' ? 0x3f80 : dt === 'F16' ? 0x3c00 : 0x3f800000 } });
      wk.on('message', (end: number) => {
        void end;
        written += CH * es;
        if (opts.log && written >= nextLog) {
          opts.log(`${(Math.min(written, off) / 1e9).toFixed(1)} GB (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
          nextLog += 2e9;
        }
      });
      wk.on('error', reject);
      wk.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`gen-model worker exited with ${code}`))));
    })),
  );
  renameSync(tmp, file);
  const bytesWritten = total;
  const hd = s.hidden / s.heads;
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: s.hidden,
    intermediate_size: s.ffn,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    head_dim: hd,
    vocab_size: s.vocab,
    max_position_embeddings: 8192,
    rms_norm_eps: 1e-5,
    rope_theta: 500000.0,
    hidden_act: 'silu',
    tie_word_embeddings: false,
    attention_bias: false,
    mlp_bias: false,
    bos_token_id: 1,
    eos_token_id: 2,
    initializer_range: 0.02,
    torch_dtype: dt === 'BF16' ? 'bfloat16' : dt === 'F16' ? 'float16' : 'float32',
  };
  writeFileSync(join(out, 'config.json'), JSON.stringify(config, null, 2) + '\n');
  const tok = join(packageRoot(), 'models', 'stories260K');
  copyFileSync(join(tok, 'tokenizer.json'), join(out, 'tokenizer.json'));
  copyFileSync(join(tok, 'tokenizer_config.json'), join(out, 'tokenizer_config.json'));
  return { bytes: bytesWritten, seconds: (performance.now() - t0) / 1000, params: paramCount(s) };
}

const isMain = process.argv[1] && /gen-model\.[tj]s$/.test(process.argv[1]);
if (isMain) {
  const { values } = parseArgs({
    options: {
      out: { type: 'string' },
      scale: { type: 'string', default: 'full' },
      layers: { type: 'string' },
      dtype: { type: 'string', default: 'bf16' },
      seed: { type: 'string', default: '1234' },
      workers: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help || !values.out) {
    console.error('usage: npx tsx bench/gen-model.ts --out DIR [--scale full|small|tiny] [--layers N] [--dtype bf16|f16|f32] [--seed S] [--workers N]');
    process.exit(values.help ? 0 : 2);
  }
  const base = SCALES[values.scale!];
  if (!base) {
    console.error(`gen-model: unknown --scale ${values.scale} (full, small, tiny)`);
    process.exit(2);
  }
  const shape = { ...base, layers: values.layers ? Number(values.layers) : base.layers };
  if (!Number.isInteger(shape.layers) || shape.layers < 1) {
    console.error('gen-model: --layers must be a positive integer');
    process.exit(2);
  }
  const dt = values.dtype!.toUpperCase() as DT;
  if (!['BF16', 'F16', 'F32'].includes(dt)) {
    console.error('gen-model: --dtype must be bf16, f16 or f32');
    process.exit(2);
  }
  const r = await generateModel(values.out, shape, { dtype: dt, seed: Number(values.seed), workers: values.workers ? Number(values.workers) : undefined, log: (m) => console.error(`  ${m}`) });
  console.log(`gen-model: ${values.out}: ${JSON.stringify(shape)} ${dt}, ${(r.params / 1e9).toFixed(3)} B params, ${(r.bytes / 1e9).toFixed(2)} GB in ${r.seconds.toFixed(1)} s (${(r.bytes / 1e9 / r.seconds).toFixed(2)} GB/s)`);
}
