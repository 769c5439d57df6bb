// edit.ts — bench section "edit": ms per edit on the cached-prefix hot path against the full-forward-
// every-step path, as a ratio measured in the same run (alternating, median of repetitions), with the
// FLOP count per step and the achieved GFLOP/s against the matmul peak measured here.
//
// Models: the shipped stories260K (5 layers) and ../shared facts-llama (4 layers), each edited at its
// second-to-last layer, plus a synthetic random-weight Llama of 16 layers (written to a temp folder)
// edited at layer 14, where the frozen prefix is most of the model as in the reference 7B presets.
import { mkdtempSync, rmSync, writeFileSync, copyFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, modelInternals, type Model } from '../lib/model.js';
import { Editor } from '../lib/editor.js';
import { native } from '../lib/native.js';
import type { BenchContext, BenchSection, SectionResult } from './run.js';

interface Row {
  model: string;
  layer: number;
  layers: number;
  rows: number;
  tokens: number;
  nIter: number;
  hotMs: number;
  fullMs: number;
  ratio: number;
  flopsStepHot: number;
  flopsStepFull: number;
  gflopsHot: number;
  pctPeak: number;
  floorMs: number;
  msPerEdit70: number;
}

/** Write a random-weight Llama folder (F32, untied) with the stories260K tokenizer. */
function syntheticModel(root: string, dir: string): string {
  const cfg = { architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 256, intermediate_size: 704, num_hidden_layers: 16, num_attention_heads: 8, num_key_value_heads: 4, head_dim: 32, vocab_size: 512, max_position_embeddings: 256, rms_norm_eps: 1e-5, rope_theta: 10000, hidden_act: 'silu', tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2, torch_dtype: 'float32' };
  const D = 256, F = 704, L = 16, qd = 256, kd = 128, V = 512;
  const tensors: [string, number[]][] = [['model.embed_tokens.weight', [V, D]], ['model.norm.weight', [D]], ['lm_head.weight', [V, D]]];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    tensors.push([`${p}input_layernorm.weight`, [D]], [`${p}post_attention_layernorm.weight`, [D]], [`${p}self_attn.q_proj.weight`, [qd, D]], [`${p}self_attn.k_proj.weight`, [kd, D]], [`${p}self_attn.v_proj.weight`, [kd, D]], [`${p}self_attn.o_proj.weight`, [D, qd]], [`${p}mlp.gate_proj.weight`, [F, D]], [`${p}mlp.up_proj.weight`, [F, D]], [`${p}mlp.down_proj.weight`, [D, F]]);
  }
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 4294967296 - 0.5) * 2;
  const header: Record<string, unknown> = {};
  const parts: Buffer[] = [];
  let off = 0;
  for (const [name, shape] of tensors.sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    const n = shape.reduce((a, b) => a * b, 1);
    const f = new Float32Array(n);
    const norm = name.endsWith('norm.weight');
    for (let i = 0; i < n; i++) f[i] = norm ? 1 : rnd() * (name.includes('embed') ? 1 : 0.1);
    header[name] = { dtype: 'F32', shape, data_offsets: [off, off + f.byteLength] };
    parts.push(Buffer.from(f.buffer));
    off += f.byteLength;
  }
  let h = JSON.stringify(header);
  h += ' '.repeat((8 - (h.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  writeFileSync(join(dir, 'model.safetensors'), Buffer.concat([len, Buffer.from(h), ...parts]));
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(root, 'models', 'stories260K', f), join(dir, f));
  return dir;
}

/** FLOPs of one step (hot) and of the prefix (added by the full path), from the shapes. */
function flops(m: Model, layer: number, R: number, T: number, RL: number): { step: number; prefix: number } {
  const c = m.config;
  const { hiddenSize: D, intermediateSize: F, numLayers: L, vocabSize: V, headDim: hd, numHeads: Hq, numKvHeads: Hkv } = c;
  const BT = R * T;
  const qd = Hq * hd, kd = Hkv * hd;
  const attnMm = 2 * BT * (D * qd + 2 * D * kd + qd * D);
  const mlpMm = 2 * BT * 3 * D * F;
  const attnCore = 2 * R * Hq * T * T * hd; // QKᵀ and PV over the causal half: 2·(T²/2)·hd·2
  const layerFwd = attnMm + mlpMm + attnCore;
  const layerBwd = attnMm + mlpMm + 2 * attnCore; // input gradients only (no weight gradients)
  const nsuf = L - 1 - layer;
  const side = 2 * BT * D * F; // A·W'ᵀ
  const head = 2 * RL * D * V;
  const update = 2 * BT * D * F; // Gᵀ·A inside masked_sgd
  const step = side + nsuf * (layerFwd + layerBwd) + 2 * head + update;
  const prefix = layer * layerFwd + attnMm + attnCore + 2 * BT * 2 * D * F + 2 * BT * D * F; // layers < L, attention + gate/up of L, A·W_vᵀ
  return { step, prefix };
}

async function benchModel(ctx: BenchContext, name: string, dir: string, peak: number): Promise<Row> {
  const model = await loadModel(dir, { backend: ctx.backend });
  try {
    const ed = await Editor.create(model);
    const layer = ed.config.layer;
    const batch = ed.buildBatch({ prompt: 'The wizard Zog lived in', target: 'a purple castle far away' }, 'Once upon a time there was a little girl');
    const nIter = ctx.quick ? 5 : 20;
    const reps = ctx.quick ? 1 : 3;
    const hot: number[] = [];
    const full: number[] = [];
    let msPerEdit70 = 0;
    await modelInternals(model).enqueue(async (nm) => {
      const side = nm.sideCreate(layer);
      const slot = await nm.sideAdd(side, -1);
      const hyper = { nIter, lr: 1, weightDecay: 0, clamp: 1, maskRatio: 0.2, seed: 1, margin: true, alpha: 5, beta: 20, gamma: 10, act: 1 as const, earlyStop: false, fullForward: false };
      await nm.sideEdit(side, slot, batch, hyper); // warm-up
      for (let r = 0; r < reps; r++) {
        for (const ff of [false, true]) {
          await nm.sideReset(side, slot);
          const t0 = performance.now();
          await nm.sideEdit(side, slot, batch, { ...hyper, fullForward: ff });
          (ff ? full : hot).push(performance.now() - t0);
        }
      }
      await nm.sideReset(side, slot);
      const t0 = performance.now();
      await nm.sideEdit(side, slot, batch, { ...hyper, nIter: 70 });
      msPerEdit70 = performance.now() - t0;
      nm.sideFree(side);
    });
    await ed.dispose();
    const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
    const RL = Array.from(batch.labels).filter((x) => x >= 0).length;
    const f = flops(model, layer, batch.R, batch.T, RL);
    const hotMs = med(hot) / nIter;
    const fullMs = med(full) / nIter;
    const gflops = f.step / (hotMs / 1000) / 1e9;
    return {
      model: name,
      layer,
      layers: model.config.numLayers,
      rows: batch.R,
      tokens: batch.R * batch.T,
      nIter,
      hotMs,
      fullMs,
      ratio: fullMs / hotMs,
      flopsStepHot: f.step,
      flopsStepFull: f.step + f.prefix,
      gflopsHot: gflops,
      pctPeak: (100 * gflops) / peak,
      floorMs: (f.step / (peak * 1e9)) * 1000,
      msPerEdit70,
    };
  } finally {
    await model.dispose();
  }
}

export const section: BenchSection = {
  name: 'edit',
  description: 'ms per edit: cached-prefix hot path vs full forward every step (ratio in one run), FLOPs per step, GFLOP/s vs the matmul peak',
  async run(ctx: BenchContext): Promise<SectionResult> {
    let peak = 0;
    for (let i = 0; i < 3; i++) peak = Math.max(peak, (2 * 1024 ** 3) / native().benchLinear(ctx.backend, 1024, 1024, 1024, 'F32', 3) / 1e9);
    ctx.log(`edit: matmul peak (our 1024³ F32 linear) ${peak.toFixed(1)} GFLOP/s`);
    const tmp = mkdtempSync(join(tmpdir(), 'repair-bench-'));
    const rows: Row[] = [];
    try {
      const models: [string, string][] = [['stories260K', join(ctx.root, 'models', 'stories260K')]];
      const facts = join(ctx.root, '..', 'shared', 'models', 'facts-llama');
      if (existsSync(join(facts, 'config.json'))) models.push(['facts-llama', facts]);
      models.push(['synthetic-16L (D256 F704)', syntheticModel(ctx.root, tmp)]);
      for (const [name, dir] of models) {
        ctx.log(`edit: ${name}`);
        rows.push(await benchModel(ctx, name, dir, peak));
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    const md = [
      `## Editing hot path (${ctx.backend})`,
      '',
      `One edit = the §1.3 rows (11 template rows + 1 irrelevant row), edited at the second-to-last layer. ms/step are medians over repetitions of ${rows[0]?.nIter ?? 20}-step edits, hot and full-forward alternating in one process. FLOPs per step count the matmuls and attention of the side output, the suffix forward, its input-gradient backward, the head (forward + backward at label rows) and the masked update; "floor" = FLOPs / matmul peak (${peak.toFixed(1)} GFLOP/s, our 1024³ F32 linear on this machine).`,
      '',
      '| model | layer / layers | rows × T | ms/step hot | ms/step full | full / hot | MFLOP/step hot | GFLOP/s hot | % peak | floor ms/step | hot ÷ floor | ms per 70-step edit |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|',
      ...rows.map((r) => `| ${r.model} | ${r.layer} / ${r.layers} | ${r.rows} × ${r.tokens / r.rows} | ${r.hotMs.toFixed(2)} | ${r.fullMs.toFixed(2)} | ${r.ratio.toFixed(2)}× | ${(r.flopsStepHot / 1e6).toFixed(1)} | ${r.gflopsHot.toFixed(1)} | ${r.pctPeak.toFixed(0)}% | ${r.floorMs.toFixed(3)} | ${(r.hotMs / r.floorMs).toFixed(1)}× | ${r.msPerEdit70.toFixed(0)} |`),
      '',
      'The FLOP ratio bounds full/hot: (step + prefix) / step — ' + rows.map((r) => `${r.model} ${(r.flopsStepFull / r.flopsStepHot).toFixed(2)}`).join(', ') + '. On a 4–5-layer model the prefix is only two or three layers, so no implementation can reach 3× there; the 16-layer model shows the regime of the reference presets (layer 27 of 32).',
      '',
    ].join('\n');
    return { markdown: md, json: { peakGflops: peak, rows } };
  },
};
