// cpu.ts — bench section "cpu": our CPU matmul under each ISA level this machine supports, against
// OpenBLAS sgemm (numpy) running the kernel of the same ISA class, measured in the same run (ours and
// numpy alternate, best of the samples), at 1 and 2 threads, on 1024³ and the editing hot path's shapes;
// and the thread pool under oversubscription (two editors side by side on this machine's cores).
//
// Peers: x86-64-v3 (AVX2/FMA) ↔ OPENBLAS_CORETYPE=Haswell, x86-64-v4 (AVX-512) ↔ SkylakeX,
// baseline x86-64 (SSE2) ↔ Prescott. Forcing a CORETYPE makes one AVX-512 machine measure the AVX2
// pairing that AVX2-only machines run. OPENBLAS_L2_SIZE is removed for the numpy runs.
import { spawnSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { native } from '../lib/native.js';
import { testing } from '../lib/testing.js';
import type { BenchContext, BenchSection, SectionResult } from './run.js';

const LEVELS: { isa: 'baseline' | 'v3' | 'v4'; name: string; blasCore: string }[] = [
  { isa: 'baseline', name: 'x86-64', blasCore: 'Prescott' },
  { isa: 'v3', name: 'x86-64-v3', blasCore: 'Haswell' },
  { isa: 'v4', name: 'x86-64-v4', blasCore: 'SkylakeX' },
];
const SHAPES: [string, number, number, number][] = [
  ['square 1024³', 1024, 1024, 1024],
  ['hot: q/k/v·o (540 rows, D128)', 540, 128, 128],
  ['hot: gate/up (540 × 384 × 128)', 540, 384, 128],
  ['hot: down (540 × 128 × 384)', 540, 128, 384],
  ['hot: Gᵀ·A update (128 × 384 × 540)', 128, 384, 540],
  ['hot: 16-layer up (540 × 704 × 256)', 540, 704, 256],
];

const NUMPY = `
import json, sys, time
import numpy as np
M, N, K, reps = map(int, sys.argv[1:5])
rng = np.random.default_rng(0)
a = (rng.random((M, K), dtype=np.float32) - 0.5); b = (rng.random((K, N), dtype=np.float32) - 0.5)
it = max(1, int(2e8 / (2 * M * N * K)))
a @ b
best = 1e9
for _ in range(reps):
    t = time.perf_counter()
    for _ in range(it): a @ b
    best = min(best, (time.perf_counter() - t) / it)
print(json.dumps({'s': best}))
`;

function numpySgemm(M: number, N: number, K: number, threads: number, core: string, reps: number): number | undefined {
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads), OPENBLAS_CORETYPE: core };
  delete env.OPENBLAS_L2_SIZE;
  const r = spawnSync('python3', ['-c', NUMPY, String(M), String(N), String(K), String(reps)], { encoding: 'utf8', env, timeout: 120_000 });
  if (r.status !== 0) return undefined;
  try {
    return (JSON.parse(r.stdout.trim().split('\n').pop()!) as { s: number }).s;
  } catch {
    return undefined;
  }
}

function ours(isa: string, M: number, N: number, K: number, threads: number, reps: number): number {
  const it = Math.max(1, Math.round(2e8 / (2 * M * N * K)));
  let best = Infinity;
  for (let r = 0; r < reps; r++) best = Math.min(best, testing().benchLinear(`cpu:${isa}`, M, N, K, 'F32', it, threads));
  return best;
}

/** Seconds for `n` editors each running `edits` 70-step WISE edits on facts-llama (or stories260K) at `threads` threads, side by side. */
async function editors(root: string, n: number, threads: number): Promise<number> {
  const script = join(root, 'bench', 'editor-load.ts');
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: n }, () =>
      new Promise<void>((res, rej) => {
        const p = spawn(process.execPath, ['--import', 'tsx', script, String(threads)], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
        p.on('exit', (c) => (c === 0 ? res() : rej(new Error(`editor-load exited ${c}`))));
      }),
    ),
  );
  return (performance.now() - t0) / 1000;
}

function cpuFlags(): string {
  try {
    const f = /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim().split(/\s+/) ?? [];
    return ['sse4_2', 'avx', 'avx2', 'fma', 'f16c', 'avx512f', 'avx512bw', 'avx512dq', 'avx512vl', 'avx512_bf16'].filter((x) => f.includes(x)).join(' ');
  } catch {
    return 'unknown';
  }
}

const pct = (a: number, b: number | undefined) => (b ? `${((100 * b) / a).toFixed(0)} %` : '–');

export const section: BenchSection = {
  name: 'cpu',
  description: 'matmul per ISA level vs OpenBLAS sgemm of the same ISA class (same run, 1 and 2 threads), and two editors side by side',
  async run(ctx: BenchContext): Promise<SectionResult> {
    if (ctx.backend !== 'cpu') return { markdown: '## CPU kernels\n\n(skipped: backend is not cpu)\n', json: { skipped: true } };
    const ci = native().info().cpu;
    const reps = ctx.quick ? 2 : 5;
    const levels = LEVELS.filter((l) => ci.isaSupported.includes(l.name));
    const threadsList = [1, 2];
    const rows: { level: string; threads: number; shape: string; M: number; N: number; K: number; ours: number; numpy?: number }[] = [];
    for (const lv of levels)
      for (const threads of threadsList)
        for (const [label, M, N, K] of SHAPES) {
          ctx.log(`cpu: ${lv.name} ${threads}T ${label}`);
          const o = ours(lv.isa, M, N, K, threads, reps);
          const np = numpySgemm(M, N, K, threads, lv.blasCore, reps);
          rows.push({ level: lv.name, threads, shape: label, M, N, K, ours: (2 * M * N * K) / o / 1e9, numpy: np ? (2 * M * N * K) / np / 1e9 : undefined });
        }
    // Oversubscription: 1 editor vs 2 side by side, each at 2 threads on this machine's cores.
    ctx.log('cpu: editors side by side');
    const one = await editors(ctx.root, 1, 2);
    const two = await editors(ctx.root, 2, 2);
    const md = [
      '## CPU kernels: matmul per ISA level vs OpenBLAS, and the thread pool under load',
      '',
      `CPU flags: ${cpuFlags()}. Kernel level chosen here: **${ci.isa}** (supported: ${ci.isaSupported.join(', ')}). ` +
        `GFLOP/s = 2·M·N·K / best time of ${reps} samples; ours (\`benchLinear('cpu:<level>')\`) and numpy's OpenBLAS sgemm with the kernel of the same ISA class alternate shape by shape in one run.`,
      '',
      '| level (OpenBLAS kernel) | threads | shape | M × N × K | ours GFLOP/s | OpenBLAS GFLOP/s | ours / OpenBLAS |',
      '|---|---|---|---|---|---|---|',
      ...rows.map((r) => {
        const core = LEVELS.find((l) => l.name === r.level)!.blasCore;
        return `| ${r.level} (${core}) | ${r.threads} | ${r.shape} | ${r.M} × ${r.N} × ${r.K} | ${r.ours.toFixed(1)} | ${r.numpy?.toFixed(1) ?? '–'} | ${r.numpy ? pct(r.numpy, r.ours) : '–'} |`;
      }),
      '',
      `Two editors side by side (each a separate process running 3 WISE edits of 70 steps on facts-llama, 2 threads each, on ${ctx.native.cpuThreads} cores): one alone ${one.toFixed(1)} s, two together ${two.toFixed(1)} s = **${(two / one).toFixed(2)}×** the time of one (2.0× is a fair share of the cores; a collapsing pool shows 3–10×).`,
      '',
    ].join('\n');
    return { markdown: md, json: { isa: ci.isa, isaSupported: ci.isaSupported, flags: cpuFlags(), rows, editorsSideBySide: { oneSeconds: one, twoSeconds: two, ratio: two / one } } };
  },
};
