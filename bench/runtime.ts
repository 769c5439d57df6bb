// runtime.ts — bench section "runtime": prefill and decode tokens/s of the shipped and shared models,
// matmul GFLOP/s of the backend's linear() against a measured reference (numpy's BLAS on the CPU), and
// on CUDA the achieved bandwidth of weight reads against a measured GEMV bandwidth proxy.
// See bench/README.md for what each figure means and how it is counted.

import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { loadModel, modelInternals, type Model } from '../lib/model.js';
import { native, type BackendName, type NativeDType } from '../lib/native.js';
import { testing } from '../lib/testing.js';
import type { ModelConfig } from '../lib/config.js';
import type { BenchContext, BenchSection, SectionResult } from './run.js';

// ---- timing -----------------------------------------------------------------------------------------

interface Timing {
  /** Seconds per call: median and best over the samples. */
  median: number;
  best: number;
  samples: number;
  /** Calls per sample (chosen so a sample lasts at least minSampleMs). */
  inner: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Warm up, calibrate the calls per sample, then time `samples` samples; returns seconds per call. */
async function timeAsync(fn: () => Promise<unknown>, samples: number, minSampleMs: number, warmup = 2): Promise<Timing> {
  for (let i = 0; i < warmup; i++) await fn();
  const t0 = performance.now();
  await fn();
  const one = Math.max(performance.now() - t0, 1e-3);
  const inner = Math.max(1, Math.min(10_000, Math.ceil(minSampleMs / one)));
  const per: number[] = [];
  for (let s = 0; s < samples; s++) {
    const a = performance.now();
    for (let i = 0; i < inner; i++) await fn();
    per.push((performance.now() - a) / 1000 / inner);
  }
  return { median: median(per), best: Math.min(...per), samples, inner };
}

// ---- FLOP and byte counts ---------------------------------------------------------------------------

interface Shape {
  D: number;
  F: number;
  L: number;
  Hq: number;
  Hkv: number;
  hd: number;
  V: number;
}

function shapeOf(c: ModelConfig): Shape {
  return { D: c.hiddenSize, F: c.intermediateSize, L: c.numLayers, Hq: c.numHeads, Hkv: c.numKvHeads, hd: c.headDim, V: c.vocabSize };
}

/** Matmul FLOPs of one layer for one token (q, k, v, o, gate, up, down). */
function layerLinearFlops(s: Shape): number {
  const qd = s.Hq * s.hd;
  const kd = s.Hkv * s.hd;
  return 2 * (s.D * qd + 2 * s.D * kd + qd * s.D + 3 * s.D * s.F);
}

/** FLOPs of one token through every layer attending to `ctx` positions (itself included), no lm_head. */
function tokenFlops(s: Shape, ctx: number): number {
  return s.L * (layerLinearFlops(s) + 4 * ctx * s.hd * s.Hq);
}

/** Prefill of B rows of T tokens, logits of the last position of each row (causal: token t attends to t+1). */
function prefillFlops(s: Shape, B: number, T: number): number {
  let f = 0;
  for (let t = 1; t <= T; t++) f += tokenFlops(s, t);
  return B * f + B * 2 * s.D * s.V;
}

/** Decode of the tokens fed at contexts c0..c1 (inclusive), each followed by the lm_head. */
function decodeFlops(s: Shape, c0: number, c1: number): number {
  let f = 0;
  for (let c = c0; c <= c1; c++) f += tokenFlops(s, c) + 2 * s.D * s.V;
  return f;
}

const DTYPE_BYTES: Record<NativeDType, number> = { F32: 4, F16: 2, BF16: 2 };

interface WeightStats {
  params: number;
  bytes: number;
  dtypes: string;
  /** Weight bytes read per decoded token: every tensor once, but only one row of an untied embedding. */
  bytesPerDecodeToken: number;
}

function weightStats(model: Model): WeightStats {
  const spec = modelInternals(model).spec;
  let params = 0;
  let bytes = 0;
  let perToken = 0;
  const byDtype = new Map<string, number>();
  for (const t of spec.tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    params += n;
    bytes += t.nbytes;
    byDtype.set(t.dtype, (byDtype.get(t.dtype) ?? 0) + t.nbytes);
    const untiedEmbed = t.name === 'model.embed_tokens.weight' && !spec.arch.tieEmbeddings;
    perToken += untiedEmbed ? spec.arch.hiddenSize * DTYPE_BYTES[t.dtype] : t.nbytes;
  }
  const dtypes = [...byDtype.entries()].sort((a, b) => b[1] - a[1]).map(([d]) => d).join('+');
  return { params, bytes, dtypes, bytesPerDecodeToken: perToken };
}

// ---- formatting -------------------------------------------------------------------------------------

/** ~3 significant digits, thousands grouped. */
function num(x: number, digits = 3): string {
  if (!Number.isFinite(x)) return String(x);
  if (x === 0) return '0';
  const mag = Math.floor(Math.log10(Math.abs(x)));
  const dp = Math.max(0, digits - 1 - mag);
  return x.toLocaleString('en-US', { minimumFractionDigits: dp, maximumFractionDigits: dp });
}

function si(x: number, unit: string): string {
  const p: [number, string][] = [
    [1e12, 'T'],
    [1e9, 'G'],
    [1e6, 'M'],
    [1e3, 'k'],
  ];
  for (const [v, s] of p) if (Math.abs(x) >= v) return `${num(x / v)} ${s}${unit}`;
  return `${num(x)} ${unit}`;
}

function table(head: string[], rows: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(' | ')} |`;
  return [line(head), line(head.map(() => '---')), ...rows.map(line)].join('\n');
}

// ---- model benchmarks -------------------------------------------------------------------------------

interface ModelEntry {
  name: string;
  dir: string;
}

function modelEntries(root: string): ModelEntry[] {
  return [
    { name: 'stories260K', dir: join(root, 'models', 'stories260K') },
    { name: 'facts-llama', dir: resolve(root, '..', 'shared', 'models', 'facts-llama') },
    { name: 'facts-llama-bf16', dir: resolve(root, '..', 'shared', 'models', 'facts-llama-bf16') },
  ];
}

const PREFILL_SHAPES: { B: number; T: number }[] = [
  { B: 1, T: 128 },
  { B: 8, T: 64 },
];
const DECODE_NEW = 128;
const DECODE_PROMPT = 'Once upon a time';

interface PrefillFigure {
  B: number;
  T: number;
  secondsPerCall: number;
  secondsPerCallBest: number;
  tokensPerSecond: number;
  flopsPerToken: number;
  gflops: number;
}

interface DecodeFigure {
  promptTokens: number;
  newTokens: number;
  /** model.generate() end to end (prompt prefill, sampling, detokenisation, chunkSize 8), tokens/s. */
  apiSeconds: number;
  apiTokensPerSecond: number;
  /** One native generate call of DECODE_NEW tokens minus one of 1 token: DECODE_NEW-1 decode steps. */
  nativeStepSeconds: number;
  nativeTokensPerSecond: number;
  flopsPerToken: number; // average over the decode steps
  gflops: number;
  weightBytesPerToken: number;
  weightGBps: number;
  /** weightGBps as a fraction of the measured bandwidth reference (CUDA only). */
  ofBandwidth?: number;
}

interface ModelFigures {
  name: string;
  dir: string;
  present: boolean;
  error?: string;
  dtypes?: string;
  params?: number;
  weightBytes?: number;
  config?: { D: number; F: number; L: number; Hq: number; Hkv: number; hd: number; V: number; context: number };
  prefill?: PrefillFigure[];
  decode?: DecodeFigure;
}

function tokenIds(n: number, V: number, seed: number): number[] {
  let r = seed >>> 0;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    r = (Math.imul(r, 1664525) + 1013904223) >>> 0;
    out.push(3 + (r % Math.max(1, V - 3))); // skip the usual specials (0 unk/pad, 1 bos, 2 eos)
  }
  return out;
}

async function benchModel(ctx: BenchContext, e: ModelEntry, samples: number, minMs: number): Promise<ModelFigures> {
  if (!existsSync(join(e.dir, 'config.json'))) return { name: e.name, dir: e.dir, present: false };
  ctx.log(`model ${e.name}: load on ${ctx.backend}`);
  const model = await loadModel(e.dir, { backend: ctx.backend });
  try {
    const c = model.config;
    const s = shapeOf(c);
    const w = weightStats(model);
    const fig: ModelFigures = {
      name: e.name,
      dir: e.dir,
      present: true,
      dtypes: w.dtypes,
      params: w.params,
      weightBytes: w.bytes,
      config: { ...s, context: c.maxPositions },
      prefill: [],
    };

    for (const { B, T } of PREFILL_SHAPES) {
      if (T > c.maxPositions) continue;
      const batch = Array.from({ length: B }, (_, b) => tokenIds(T, s.V, 1000 + b));
      ctx.log(`model ${e.name}: prefill B=${B} T=${T}`);
      const t = await timeAsync(() => model.logits(batch, { positions: 'last' }), samples, minMs);
      const flops = prefillFlops(s, B, T);
      fig.prefill!.push({
        B,
        T,
        secondsPerCall: t.median,
        secondsPerCallBest: t.best,
        tokensPerSecond: (B * T) / t.median,
        flopsPerToken: flops / (B * T),
        gflops: flops / t.median / 1e9,
      });
    }

    const prompt = model.promptTokens(DECODE_PROMPT);
    const P = prompt.length;
    const nNew = Math.min(DECODE_NEW, c.maxPositions - P + 1);
    ctx.log(`model ${e.name}: decode ${nNew} tokens after a ${P}-token prompt`);
    const api = await timeAsync(async () => {
      const r = await model.generate({ tokens: prompt }, { maxNewTokens: nNew, stopOnEos: false });
      if (r.tokens.length !== nNew) throw new Error(`${e.name}: generate returned ${r.tokens.length} tokens, expected ${nNew}`);
    }, samples, minMs, 1);
    // The native loop alone: one call of nNew tokens (prompt prefill + nNew-1 fed tokens) minus one call of
    // 1 token (prompt prefill), so the difference is nNew-1 decode steps at contexts P+1 .. P+nNew-1.
    const internals = modelInternals(model);
    const ids = Int32Array.from(prompt);
    const nativeGen = (n: number) => (): Promise<Int32Array> =>
      internals.enqueue((nm) => nm.generate(ids, { reset: true, maxTokens: n, temperature: 0, topK: 0, topP: 1, seed: 0, step0: 0, eos: new Int32Array(0) }));
    const full = await timeAsync(nativeGen(nNew), samples, minMs, 1);
    const pre = await timeAsync(nativeGen(1), samples, minMs, 1);
    const steps = nNew - 1;
    const stepSec = Math.max(full.median - pre.median, 1e-12) / steps;
    const flopsPerTok = decodeFlops(s, P + 1, P + steps) / steps;
    fig.decode = {
      promptTokens: P,
      newTokens: nNew,
      apiSeconds: api.median,
      apiTokensPerSecond: nNew / api.median,
      nativeStepSeconds: stepSec,
      nativeTokensPerSecond: 1 / stepSec,
      flopsPerToken: flopsPerTok,
      gflops: flopsPerTok / stepSec / 1e9,
      weightBytesPerToken: w.bytesPerDecodeToken,
      weightGBps: w.bytesPerDecodeToken / stepSec / 1e9,
    };
    return fig;
  } finally {
    await model.dispose();
  }
}

// ---- matmul -----------------------------------------------------------------------------------------

interface MatmulCase {
  label: string;
  M: number;
  N: number;
  K: number;
  dtype: NativeDType;
  /** M=1: a weight-streaming GEMV, reported as GB/s too. */
  gemv: boolean;
  /** Square F32: a candidate for "our measured peak". */
  square: boolean;
  role?: 'bandwidth-proxy';
}

interface MatmulFigure extends MatmulCase {
  secondsPerCall: number;
  secondsPerCallBest: number;
  iters: number;
  gflops: number;
  gflopsBest: number;
  weightGBps: number; // N·K·sizeof(dtype) / s (median)
  weightGBpsBest: number;
}

function matmulCases(backend: BackendName): MatmulCase[] {
  const cases: MatmulCase[] = [
    { label: '1024² square', M: 1024, N: 1024, K: 1024, dtype: 'F32', gemv: false, square: true },
    { label: '2048² square', M: 2048, N: 2048, K: 2048, dtype: 'F32', gemv: false, square: true },
    { label: 'prefill-like', M: 512, N: 4096, K: 4096, dtype: 'BF16', gemv: false, square: false },
    { label: 'decode GEMV', M: 1, N: 4096, K: 4096, dtype: 'F32', gemv: true, square: false },
    { label: 'decode GEMV', M: 1, N: 4096, K: 4096, dtype: 'BF16', gemv: true, square: false },
  ];
  if (backend === 'cuda') {
    cases.splice(2, 0, { label: '4096² square', M: 4096, N: 4096, K: 4096, dtype: 'F32', gemv: false, square: true });
    cases.push({ label: 'bandwidth proxy', M: 1, N: 8192, K: 8192, dtype: 'F32', gemv: true, square: false, role: 'bandwidth-proxy' });
  }
  return cases;
}

function benchMatmul(ctx: BenchContext, c: MatmulCase): MatmulFigure {
  const addon = testing();
  const target = ctx.quick ? 0.1 : 0.3; // seconds per sample
  const samples = ctx.quick ? 3 : 7;
  ctx.log(`matmul ${c.M}x${c.N}x${c.K} ${c.dtype}`);
  const est = Math.max(addon.benchLinear(ctx.backend, c.M, c.N, c.K, c.dtype, 1), 1e-7);
  const iters = Math.max(1, Math.min(100_000, Math.ceil(target / est)));
  const per: number[] = [];
  for (let s = 0; s < samples; s++) per.push(addon.benchLinear(ctx.backend, c.M, c.N, c.K, c.dtype, iters));
  const med = median(per);
  const best = Math.min(...per);
  const flops = 2 * c.M * c.N * c.K;
  const wbytes = c.N * c.K * DTYPE_BYTES[c.dtype];
  return {
    ...c,
    secondsPerCall: med,
    secondsPerCallBest: best,
    iters,
    gflops: flops / med / 1e9,
    gflopsBest: flops / best / 1e9,
    weightGBps: wbytes / med / 1e9,
    weightGBpsBest: wbytes / best / 1e9,
  };
}

// ---- the CPU reference: numpy's BLAS, else a labelled theoretical estimate ------------------------------

interface CpuReference {
  kind: 'numpy' | 'estimate';
  gflops: number;
  detail: string;
  numpy?: { version: string; blas: string; n: number; bestSeconds: number; times: number[]; openblasEnvUnset: string[] };
  numpyError?: string;
}

const NUMPY_SCRIPT = `
import json, time
import numpy as np
n = 2048
rng = np.random.default_rng(0)
a = (rng.random((n, n), dtype=np.float32) - 0.5)
b = (rng.random((n, n), dtype=np.float32) - 0.5)
a @ b; a @ b
ts = []
for _ in range(5):
    t = time.perf_counter(); c = a @ b; ts.append(time.perf_counter() - t)
blas = 'unknown'
try:
    d = np.show_config(mode='dicts')['Build Dependencies']['blas']
    blas = '%s %s' % (d.get('name', '?'), d.get('version', '?'))
except Exception:
    pass
print(json.dumps({'version': np.__version__, 'blas': blas, 'n': n, 'times': ts}))
`;

function numpyReference(ctx: BenchContext): CpuReference | { error: string } {
  const probe = spawnSync('python3', ['-c', 'import numpy'], { encoding: 'utf8', timeout: 60_000 });
  if (probe.error || probe.status !== 0) {
    return { error: probe.error ? `python3 not runnable (${probe.error.message})` : `python3 -c "import numpy" failed: ${probe.stderr.trim().split('\n').pop()}` };
  }
  // OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE may be set for this environment; the reference runs OpenBLAS
  // with its own detection, so both are removed together, for this one command only.
  const env = { ...process.env };
  const unset = ['OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE'].filter((k) => k in env);
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  ctx.log('numpy f32 matmul 2048² (best of 5)');
  const r = spawnSync('python3', ['-c', NUMPY_SCRIPT], { encoding: 'utf8', env, timeout: 300_000 });
  if (r.error || r.status !== 0) return { error: `numpy reference failed: ${r.error?.message ?? r.stderr.trim().split('\n').pop()}` };
  try {
    const j = JSON.parse(r.stdout.trim().split('\n').pop()!) as { version: string; blas: string; n: number; times: number[] };
    const best = Math.min(...j.times);
    const gflops = (2 * j.n ** 3) / best / 1e9;
    return {
      kind: 'numpy',
      gflops,
      detail: `numpy ${j.version} (${j.blas}) float32 ${j.n}² matmul, best of ${j.times.length}, all cores`,
      numpy: { version: j.version, blas: j.blas, n: j.n, bestSeconds: best, times: j.times, openblasEnvUnset: unset },
    };
  } catch (e) {
    return { error: `numpy reference: unreadable output (${(e as Error).message})` };
  }
}

function theoreticalEstimate(): CpuReference {
  let flags = '';
  let mhz = 0;
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    flags = /^flags\s*:(.*)$/m.exec(info)?.[1] ?? '';
    mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(info)?.[1] ?? 0);
  } catch {
    /* not Linux */
  }
  if (!mhz) mhz = os.cpus()[0]?.speed ?? 0;
  const f = new Set(flags.trim().split(/\s+/));
  // f32 FLOP per cycle per core, assuming two FMA pipes at the full vector width.
  const perCycle = f.has('avx512f') ? 64 : f.has('avx2') && f.has('fma') ? 32 : f.has('avx') ? 16 : 8;
  const cores = os.cpus().length;
  const gflops = (cores * (mhz / 1000) * perCycle) || NaN;
  return {
    kind: 'estimate',
    gflops,
    detail:
      `THEORETICAL ESTIMATE, not measured: ${cores} logical CPUs × ${num(mhz / 1000)} GHz × ${perCycle} f32 FLOP/cycle ` +
      `(${f.has('avx512f') ? 'AVX-512' : f.has('avx2') ? 'AVX2' : 'SSE'} FMA, 2 pipes assumed; SMT siblings and ` +
      `split 512-bit units make the real ceiling lower)`,
  };
}

// ---- the section ------------------------------------------------------------------------------------

async function run(ctx: BenchContext): Promise<SectionResult> {
  const samples = ctx.quick ? 3 : 9;
  const minMs = ctx.quick ? 10 : 50;
  const md: string[] = [];
  md.push(`## Runtime (backend ${ctx.backend})`, '');

  // Matmul first: the bandwidth reference (CUDA) is needed for the decode table.
  const matmul = matmulCases(ctx.backend).map((c) => benchMatmul(ctx, c));
  const proxy = matmul.find((m) => m.role === 'bandwidth-proxy');
  const bandwidth = proxy ? { GBps: proxy.weightGBpsBest, method: `benchLinear cuda M=1 N=K=${proxy.N} F32: weight bytes read per second (best of the samples); a GEMV proxy, not a device-to-device copy` } : undefined;

  let ref: CpuReference | undefined;
  let numpyError: string | undefined;
  if (ctx.backend === 'cpu') {
    const r = numpyReference(ctx);
    if ('error' in r) {
      numpyError = r.error;
      ref = { ...theoreticalEstimate(), numpyError: r.error };
    } else ref = r;
  }
  // "Our peak": the best sample of our largest square F32 matmul (2048² on the CPU: the reference's size).
  const squares = matmul.filter((m) => m.square);
  const ourPeakCase = squares.reduce((a, b) => (b.M * b.N * b.K > a.M * a.N * a.K ? b : a));
  const ourPeak = ourPeakCase.gflopsBest;
  const ourBest = squares.reduce((a, b) => (b.gflopsBest > a.gflopsBest ? b : a));

  const models: ModelFigures[] = [];
  for (const e of modelEntries(ctx.root)) {
    try {
      const f = await benchModel(ctx, e, samples, minMs);
      if (f.decode && bandwidth) f.decode.ofBandwidth = f.decode.weightGBps / bandwidth.GBps;
      models.push(f);
    } catch (err) {
      ctx.log(`model ${e.name}: FAILED: ${(err as Error).message}`);
      models.push({ name: e.name, dir: e.dir, present: true, error: (err as Error).message });
    }
  }

  // ---- markdown ----
  const present = models.filter((m) => m.present && !m.error);
  md.push('### Models', '');
  md.push(
    table(
      ['model', 'weights', 'params', 'D / F / L / Hq / Hkv / hd / V', 'weight bytes'],
      present.map((m) => {
        const c = m.config!;
        return [m.name, m.dtypes!, si(m.params!, ''), `${c.D} / ${c.F} / ${c.L} / ${c.Hq} / ${c.Hkv} / ${c.hd} / ${c.V}`, si(m.weightBytes!, 'B')];
      }),
    ),
  );
  for (const m of models) {
    if (!m.present) md.push('', `- ${m.name}: absent (${m.dir}), skipped`);
    else if (m.error) md.push('', `- ${m.name}: FAILED: ${m.error}`);
  }
  md.push('');

  md.push(`### Prefill (model.logits, positions 'last'; median of ${samples} samples after warm-up)`, '');
  md.push(
    table(
      ['model', 'B × T', 'ms / call', 'tokens/s', 'FLOP/token', 'GFLOP/s'],
      present.flatMap((m) =>
        m.prefill!.map((p) => [m.name, `${p.B} × ${p.T}`, num(p.secondsPerCall * 1e3), num(p.tokensPerSecond), si(p.flopsPerToken, 'FLOP'), num(p.gflops)]),
      ),
    ),
  );
  md.push('');

  const dec = present.filter((m) => m.decode);
  md.push(`### Decode (greedy, ${DECODE_NEW} new tokens, stopOnEos false, prompt "${DECODE_PROMPT}")`, '');
  const decHead = ['model', 'generate() tokens/s', 'native tokens/s', 'ms / token', 'FLOP/token', 'GFLOP/s', 'weight bytes/token', 'weight GB/s'];
  if (bandwidth) decHead.push('% of bandwidth ref');
  md.push(
    table(
      decHead,
      dec.map((m) => {
        const d = m.decode!;
        const row = [
          m.name,
          num(d.apiTokensPerSecond),
          num(d.nativeTokensPerSecond),
          num(d.nativeStepSeconds * 1e3),
          si(d.flopsPerToken, 'FLOP'),
          num(d.gflops),
          si(d.weightBytesPerToken, 'B'),
          num(d.weightGBps),
        ];
        if (bandwidth) row.push(`${num(100 * d.ofBandwidth!)} %`);
        return row;
      }),
    ),
  );
  md.push(
    '',
    '`generate() tokens/s`: the public call end to end (prompt prefill, sampling, detokenisation, chunks of 8). ' +
      '`native tokens/s`: one native generate call of 128 tokens minus one of 1 token, i.e. the 127 decode steps alone; ' +
      'FLOP/token, GFLOP/s and GB/s are per decode step (weights read once per step; KV-cache reads not counted).',
    '',
  );

  md.push(`### Matmul (native benchLinear, y[M,N] = x[M,K]·W[N,K]ᵀ, x and y f32; ${ctx.quick ? 3 : 7} samples)`, '');
  const refG = ref?.gflops;
  const mmHead = ['shape', 'M × N × K', 'W dtype', 'ms / call', 'GFLOP/s (median)', 'GFLOP/s (best)', 'weight GB/s (median)'];
  if (refG) mmHead.push(ref!.kind === 'numpy' ? '% of numpy f32 (best)' : '% of estimate (best)');
  md.push(
    table(
      mmHead,
      matmul.map((m) => {
        const row = [
          m.label,
          `${m.M} × ${m.N} × ${m.K}`,
          m.dtype,
          num(m.secondsPerCall * 1e3),
          num(m.gflops),
          num(m.gflopsBest),
          m.gemv ? num(m.weightGBps) : '–',
        ];
        if (refG) row.push(m.gemv ? '–' : `${num((100 * m.gflopsBest) / refG)} %`);
        return row;
      }),
    ),
  );
  md.push('');

  if (ctx.backend === 'cpu' && ref) {
    md.push('### Measured peak of this machine (CPU)', '');
    if (ref.kind === 'numpy') {
      md.push(`- BLAS reference: **${num(ref.gflops)} GFLOP/s** — ${ref.detail}${ref.numpy!.openblasEnvUnset.length ? ` (run with ${ref.numpy!.openblasEnvUnset.join(' and ')} unset)` : ''}.`);
    } else {
      md.push(`- numpy reference unavailable: ${numpyError}.`);
      md.push(`- Peak: **${num(ref.gflops)} GFLOP/s** — ${ref.detail}.`);
    }
    md.push(
      `- Ours: **${num(ourPeak)} GFLOP/s** (our largest square matmul, ${ourPeakCase.M}×${ourPeakCase.N}×${ourPeakCase.K} F32, best sample) = **${num((100 * ourPeak) / ref.gflops)} %** of the ${ref.kind === 'numpy' ? 'BLAS reference' : 'estimate'}.`,
    );
    if (ourBest !== ourPeakCase) {
      md.push(`- Our best square sample: ${num(ourBest.gflopsBest)} GFLOP/s at ${ourBest.M}×${ourBest.N}×${ourBest.K} F32 (${num((100 * ourBest.gflopsBest) / ref.gflops)} %).`);
    }
    md.push('');
  }
  if (bandwidth) {
    md.push('### Bandwidth reference (CUDA)', '');
    md.push(`- ${num(bandwidth.GBps)} GB/s — ${bandwidth.method}. Decode "% of bandwidth ref" divides by this.`, '');
  }

  const json = {
    backend: ctx.backend,
    quick: ctx.quick,
    samples,
    models,
    matmul,
    cpuReference: ref ?? null,
    ourPeak: { method: 'best sample of our largest square F32 matmul', gflops: ourPeak, case: `${ourPeakCase.M}x${ourPeakCase.N}x${ourPeakCase.K} ${ourPeakCase.dtype}`, ofReference: ref ? ourPeak / ref.gflops : null },
    bandwidthReference: bandwidth ?? null,
  };
  return { markdown: md.join('\n'), json };
}

export const section: BenchSection = {
  name: 'runtime',
  description: 'prefill/decode tokens/s of the shipped and shared models, matmul GFLOP/s vs a measured reference, CUDA bandwidth',
  run,
};
