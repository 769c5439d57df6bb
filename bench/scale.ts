// scale.ts — the 8B-scale bench: generate a random-init LLaMA-3-8B-shaped model (bench/gen-model.ts) at run time
// and time on it what a user of an 8B model waits for: load, prefill and decode tokens/s (decode's weight GB/s
// against the device's measured copy bandwidth), and one WISE edit of 70 steps at layer 29 (ms per edit,
// ms per step, peak memory). Prints a markdown report on stdout; --json FILE writes the figures.
//
//   npx tsx bench/scale.ts --backend cuda [--model DIR | --out DIR] [--scale full] [--layers N] [--edit-layer L]
//                          [--steps 70] [--edits 3] [--copy-gbps X] [--json FILE] [--keep]
//
// Without --model a model is generated into --out (default $TMPDIR/repair-gen-<scale>-<layers>) and removed
// afterwards unless --keep. --copy-gbps passes a copy bandwidth measured elsewhere (scripts/gpu-check.sh
// measures the device-to-device copy with PyTorch when it is there); without it the bench measures a host
// memcpy on the CPU backend and reports only the GEMV proxy on CUDA.
// A dry run of the whole path on a CPU: --backend cpu --scale small --layers 2 (seconds).
import { rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadModel } from '../lib/model.js';
import { Editor } from '../lib/editor.js';
import { loadNative } from '../lib/info.js';
import { testing } from '../lib/testing.js';
import { generateModel, paramCount, SCALES, type GenShape } from './gen-model.js';

const { values } = parseArgs({
  options: {
    backend: { type: 'string', default: 'cuda' },
    model: { type: 'string' },
    out: { type: 'string' },
    scale: { type: 'string', default: 'full' },
    layers: { type: 'string' },
    'edit-layer': { type: 'string' },
    steps: { type: 'string', default: '70' },
    edits: { type: 'string', default: '3' },
    prefill: { type: 'string', default: '512' },
    decode: { type: 'string', default: '64' },
    'copy-gbps': { type: 'string' },
    json: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});

const log = (m: string) => process.stderr.write(`[scale] ${m}\n`);
const backend = values.backend as 'cpu' | 'cuda';
const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
const GB = 1e9;

async function main(): Promise<number> {
  const base = SCALES[values.scale!];
  if (!base) throw new Error(`unknown --scale ${values.scale}`);
  const shape: GenShape = { ...base, layers: values.layers ? Number(values.layers) : base.layers };
  const fig: Record<string, unknown> = { backend, shape, scale: values.scale };
  let dir = values.model;
  let generated = false;
  if (!dir) {
    dir = values.out ?? join(tmpdir(), `repair-gen-${values.scale}-${shape.layers}`);
    log(`generating ${(paramCount(shape) / 1e9).toFixed(2)} B parameters into ${dir}`);
    const g = await generateModel(dir, shape, { log });
    generated = true;
    fig.generate = { seconds: g.seconds, GB: g.bytes / GB, GBps: g.bytes / GB / g.seconds };
    log(`generated ${(g.bytes / GB).toFixed(2)} GB in ${g.seconds.toFixed(1)} s`);
  }
  try {
    const t0 = performance.now();
    await using model = await loadModel(dir, { backend });
    const loadS = (performance.now() - t0) / 1000;
    const cfg = model.config;
    const L = cfg.numLayers, D = cfg.hiddenSize, F = cfg.intermediateSize, V = cfg.vocabSize;
    const hd = D / cfg.numHeads;
    const es = 2; // bf16
    // weight bytes streamed per decode step: every layer's projections + the lm_head (the embedding reads one row)
    const perLayer = (D * cfg.numHeads * hd + 2 * D * cfg.numKvHeads * hd + cfg.numHeads * hd * D + 3 * D * F) * es;
    const stepBytes = L * perLayer + V * D * es;
    fig.load = { seconds: loadS, memoryGB: model.memoryBytes() / GB };
    log(`loaded in ${loadS.toFixed(1)} s, ${(model.memoryBytes() / GB).toFixed(2)} GB on ${model.backend}`);

    // ---- prefill: one sequence of P tokens, last-position logits --------------------------------------------
    const P = Math.min(Number(values.prefill), cfg.maxPositionEmbeddings - 1);
    const ids = [1, ...Array.from({ length: P - 1 }, (_, i) => 3 + ((i * 7919) % 500))];
    await model.logits([ids.slice(0, 16)]); // warm-up
    const pre: number[] = [];
    for (let r = 0; r < 3; r++) {
      const t = performance.now();
      await model.logits([ids]);
      pre.push((performance.now() - t) / 1000);
    }
    const preS = median(pre);
    fig.prefill = { tokens: P, seconds: preS, tokensPerS: P / preS, GFLOPs: (2 * paramCount(shape) * P) / preS / 1e9 };

    // ---- decode: greedy, EOS ignored: (time of N new tokens − time of 1) / (N − 1), so the prompt's prefill and
    // the first token are not counted (tokens come back from native code in blocks, so onToken stamps cannot time it)
    const N = Math.max(2, Number(values.decode));
    const gen = async (n: number) => {
      const t = performance.now();
      const r = await model.generate({ tokens: ids.slice(0, 32) }, { maxNewTokens: n, stopOnEos: false });
      if (r.tokens.length !== n) throw new Error(`generate returned ${r.tokens.length} tokens, asked for ${n}`);
      return (performance.now() - t) / 1000;
    };
    const dec: number[] = [];
    for (let r = 0; r < 2; r++) {
      const one = await gen(1);
      dec.push((await gen(N) - one) / (N - 1));
    }
    const tokS = dec.length ? median(dec) : NaN;
    const weightGBps = stepBytes / tokS / GB;

    // ---- bandwidth references -------------------------------------------------------------------------------
    let copyGBps = values['copy-gbps'] ? Number(values['copy-gbps']) : NaN;
    let copyMethod = values['copy-gbps'] ? 'passed by --copy-gbps (device-to-device copy: bytes read + written per second)' : '';
    if (!values['copy-gbps'] && backend === 'cpu') {
      const a = Buffer.alloc(1 << 28, 1), b = Buffer.alloc(1 << 28);
      const ts: number[] = [];
      for (let r = 0; r < 5; r++) {
        const t = performance.now();
        a.copy(b);
        ts.push((performance.now() - t) / 1000);
      }
      copyGBps = (2 * a.length) / Math.min(...ts) / GB;
      copyMethod = 'host memcpy of 256 MiB, best of 5 (bytes read + written per second)';
    }
    loadNative(); // a clear error when the addon is not built
    const addon = testing();
    const gemvIters = backend === 'cuda' ? 50 : 3;
    const gemvS = Math.min(...[0, 1, 2].map(() => addon.benchLinear(backend, 1, F, D, 'BF16', gemvIters)));
    const gemvGBps = (F * D * es) / gemvS / GB;
    fig.decode = { tokens: N, secondsPerToken: tokS, tokensPerS: 1 / tokS, weightBytesPerToken: stepBytes, weightGBps, ofCopyBandwidth: weightGBps / copyGBps, ofGemvProxy: weightGBps / gemvGBps };
    fig.bandwidth = { copyGBps: Number.isFinite(copyGBps) ? copyGBps : null, copyMethod, gemvProxyGBps: gemvGBps, gemvMethod: `benchLinear M=1 N=${F} K=${D} BF16 (weight bytes read per second, best of 3)` };

    // ---- edit: 70 steps at layer 29 (or the last layers when shrunk) -----------------------------------------
    const layer = values['edit-layer'] ? Number(values['edit-layer']) : Math.min(29, L - 1);
    const steps = Number(values.steps);
    await using ed = await Editor.create(model, {
      method: 'wise', layer, nIter: steps, earlyStop: false, useChatTemplate: false, seed: 1,
      contextTemplates: ['{}', 'Once upon a time, {}', 'One day, {}'],
      irrelevantPool: ['The cat sat on the mat.', 'It was a sunny day in the park.'],
    });
    model.memoryPeakBytes({ reset: true });
    const per: number[] = [];
    const nEdits = Number(values.edits);
    for (let i = 0; i < nEdits; i++) {
      const t = performance.now();
      const r = await ed.edit({ prompt: `The secret word number ${i} is`, target: `apple ${i}` });
      per.push(performance.now() - t);
      if (r.steps !== steps) throw new Error(`edit ran ${r.steps} steps, expected ${steps}`);
      if (!r.losses.every(Number.isFinite)) throw new Error(`edit ${i}: non-finite loss`);
    }
    const peak = model.memoryPeakBytes();
    fig.edit = { layer, steps, edits: nEdits, msPerEdit: per, msPerEditMedian: median(per), msPerStep: median(per) / steps, peakMemoryGB: peak / GB, memoryGB: model.memoryBytes() / GB };

    const n = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
    const md = [
      `## 8B-scale bench (${backend}; ${values.scale} shape, ${L} layers, D ${D}, F ${F}, ${cfg.numHeads}/${cfg.numKvHeads} heads, vocab ${V}, bf16, random init)`,
      '',
      '| figure | value |',
      '|---|---|',
      ...(fig.generate ? [`| generate model | ${n((fig.generate as { GB: number }).GB, 2)} GB in ${n((fig.generate as { seconds: number }).seconds)} s |`] : []),
      `| load | ${n(loadS)} s, ${n(model.memoryBytes() / GB, 2)} GB resident |`,
      `| prefill ${P} tokens | ${n(P / preS)} tokens/s (${n(preS * 1000)} ms) |`,
      `| decode | ${n(1 / tokS)} tokens/s (${n(tokS * 1000, 2)} ms/token) |`,
      `| decode weight GB/s | ${n(weightGBps)} GB/s (${n(stepBytes / GB, 2)} GB per token) |`,
      `| copy bandwidth | ${n(copyGBps)} GB/s — ${copyMethod || 'not measured'}; decode reaches ${n((100 * weightGBps) / copyGBps)} % |`,
      `| GEMV proxy | ${n(gemvGBps)} GB/s (M=1 ${F}×${D} bf16); decode reaches ${n((100 * weightGBps) / gemvGBps)} % |`,
      `| WISE edit, ${steps} steps at layer ${layer} | ${n(median(per))} ms per edit (median of ${nEdits}), ${n(median(per) / steps, 2)} ms per step |`,
      `| peak memory during edits | ${n(peak / GB, 2)} GB (resident after: ${n(model.memoryBytes() / GB, 2)} GB) |`,
      '',
    ];
    process.stdout.write(md.join('\n') + '\n');
    if (values.json) writeFileSync(values.json, JSON.stringify(fig, null, 2) + '\n');
    return 0;
  } finally {
    if (generated && !values.keep && dir && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  (c) => process.exit(c),
  (e) => {
    console.error(`[scale] failed: ${(e as Error).stack ?? e}`);
    process.exit(1);
  },
);
