// The cost of the load-time weight check (loadModel's checkFinite, default on): NaN / Inf / |w| >= 2^27,
// tested on the exponent bits in one vectorised pass over the bytes as they are read. A synthetic
// llama-shaped checkpoint (random weights, F32 and BF16) is loaded alternately with the check on and off;
// the table gives median load times and the check's throughput.
//   npx tsx bench/finite.ts [--layers 4] [--reps 7] [--out bench/results/finite-check.md]
import { mkdtempSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadModel } from '../lib/model.js';
import { packageRoot } from '../lib/paths.js';

const { values: a } = parseArgs({ options: { layers: { type: 'string', default: '4' }, reps: { type: 'string', default: '7' }, out: { type: 'string' } } });
const L = Number(a.layers);
const reps = Number(a.reps);
const D = 1024;
const F = 2816;
const V = 512;
const STORIES = join(packageRoot(), 'models', 'stories260K');

function tensors(): [string, number[]][] {
  const t: [string, number[]][] = [['model.embed_tokens.weight', [V, D]], ['model.norm.weight', [D]]];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    t.push([`${p}input_layernorm.weight`, [D]], [`${p}post_attention_layernorm.weight`, [D]]);
    for (const n of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) t.push([`${p}self_attn.${n}.weight`, [D, D]]);
    t.push([`${p}mlp.gate_proj.weight`, [F, D]], [`${p}mlp.up_proj.weight`, [F, D]], [`${p}mlp.down_proj.weight`, [D, F]]);
  }
  return t;
}

function writeModel(dir: string, dtype: 'F32' | 'BF16'): number {
  const es = dtype === 'F32' ? 4 : 2;
  const header: Record<string, unknown> = {};
  let off = 0;
  const list = tensors();
  for (const [name, shape] of list) {
    const n = shape.reduce((x, y) => x * y, 1) * es;
    header[name] = { dtype, shape, data_offsets: [off, off + n] };
    off += n;
  }
  let hs = JSON.stringify(header);
  hs += ' '.repeat((8 - (hs.length % 8)) % 8);
  const data = Buffer.alloc(off);
  // small pseudo-random weights (|w| < 0.05): an LCG, written as f32 or as the top half of the f32 (bf16)
  let x = 12345;
  for (let i = 0; i < off / es; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const f = ((x / 4294967296) - 0.5) * 0.1;
    if (es === 4) data.writeFloatLE(f, i * 4);
    else {
      const b = Buffer.alloc(4);
      b.writeFloatLE(f, 0);
      data.writeUInt16LE(b.readUInt16LE(2), i * 2);
    }
  }
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hs.length));
  writeFileSync(join(dir, 'model.safetensors'), Buffer.concat([len, Buffer.from(hs), data]));
  writeFileSync(
    join(dir, 'config.json'),
    JSON.stringify({ model_type: 'llama', hidden_size: D, intermediate_size: F, num_hidden_layers: L, num_attention_heads: 16, num_key_value_heads: 16, vocab_size: V, max_position_embeddings: 512, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: true, torch_dtype: dtype === 'F32' ? 'float32' : 'bfloat16' }),
  );
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(STORIES, f), join(dir, f));
  return off;
}

const median = (v: number[]) => [...v].sort((p, q) => p - q)[Math.floor(v.length / 2)]!;
const rows: string[] = [];
const root = mkdtempSync(join(tmpdir(), 'repair-finite-'));
try {
  for (const dtype of ['F32', 'BF16'] as const) {
    const dir = join(root, dtype);
    (await import('node:fs')).mkdirSync(dir);
    const bytes = writeModel(dir, dtype);
    const t: Record<'on' | 'off', number[]> = { on: [], off: [] };
    for (let i = 0; i < reps + 1; i++) {
      for (const mode of i % 2 ? (['on', 'off'] as const) : (['off', 'on'] as const)) {
        const t0 = process.hrtime.bigint();
        const m = await loadModel(dir, { backend: 'cpu', checkFinite: mode === 'on' });
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        await m.dispose();
        if (i > 0) t[mode].push(ms); // the first round warms the page cache
      }
    }
    // the minimum is the least disturbed by other work on a shared machine; the median is given beside it
    const on = Math.min(...t.on);
    const off = Math.min(...t.off);
    const extra = on - off;
    rows.push(`| ${dtype} | ${(bytes / 2 ** 20).toFixed(0)} MiB | ${off.toFixed(1)} (${median(t.off).toFixed(1)}) | ${on.toFixed(1)} (${median(t.on).toFixed(1)}) | ${extra.toFixed(1)} (${((extra / off) * 100).toFixed(1)} %) | ${extra > 0 ? (bytes / 2 ** 30 / (extra / 1000)).toFixed(1) : '—'} |`);
  }
} finally {
  rmSync(root, { recursive: true, force: true });
}
const md = [
  `# Load-time weight check (checkFinite)`,
  ``,
  `\`npx tsx bench/finite.ts --layers ${L} --reps ${reps}\` on ${cpus()[0]?.model ?? 'cpu'} (${cpus().length} cores, shared), CPU backend; a synthetic`,
  `llama-shaped checkpoint (D ${D}, F ${F}, ${L} layers, random weights) from the page cache; minimum (median) of ${reps} alternating loads.`,
  ``,
  `| dtype | weights | load, check off: min (median) ms | load, check on: min (median) ms | check cost, min vs min (ms) | check throughput (GiB/s) |`,
  `|---|---:|---:|---:|---:|---:|`,
  ...rows,
  ``,
].join('\n');
console.log(md);
if (a.out) writeFileSync(a.out, md);
