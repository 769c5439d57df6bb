// isa.test.ts — the CPU kernels' ISA level is chosen by us (native/cpu/isa.h), reported by info(), and
// can be forced with REPAIR_CPU_ISA; a level this CPU lacks or an unknown name is refused with a typed error.
// (The op-family suites test/ops_<family>.test.ts run every supported level against float64.)
import { describe, it, expect, afterEach } from 'vitest';
import { join } from 'node:path';
import { info } from '../lib/info.js';
import { loadModel } from '../lib/model.js';
import { packageRoot } from '../lib/paths.js';

const STORIES = join(packageRoot(), 'models', 'stories260K');
const saved = { isa: process.env.REPAIR_CPU_ISA, max: process.env.REPAIR_CPU_ISA_MAX };
afterEach(() => {
  if (saved.isa === undefined) delete process.env.REPAIR_CPU_ISA;
  else process.env.REPAIR_CPU_ISA = saved.isa;
  if (saved.max === undefined) delete process.env.REPAIR_CPU_ISA_MAX;
  else process.env.REPAIR_CPU_ISA_MAX = saved.max;
});

describe('CPU kernel ISA selection', () => {
  it('runs the best level the CPU supports, never the baseline on an AVX2 machine', () => {
    delete process.env.REPAIR_CPU_ISA;
    const c = info().cpu;
    expect(c.isaSupported).toContain('x86-64');
    expect(c.isa).toBe(c.isaDetected);
    expect(c.isaDetected).toBe(c.isaSupported[c.isaSupported.length - 1]);
    if (c.isaSupported.includes('x86-64-v3')) expect(['x86-64-v3', 'x86-64-v4']).toContain(c.isa);
    if (c.isaSupported.includes('x86-64-v4')) expect(c.isa).toBe('x86-64-v4');
    for (const fam of ['matmul', 'linear_dx', 'masked_sgd', 'attention', 'attention_bwd', 'rmsnorm', 'swiglu', 'cross_entropy', 'act_dist'])
      expect(c.kernels[fam], fam).toMatch(new RegExp(`^${c.isa} `));
  });

  it('REPAIR_CPU_ISA forces every supported level, and a model loads and generates under each', async () => {
    const levels = info().cpu.isaSupported;
    const texts: string[] = [];
    for (const [env, name] of [['baseline', 'x86-64'], ['v3', 'x86-64-v3'], ['v4', 'x86-64-v4']] as const) {
      if (!levels.includes(name)) continue;
      process.env.REPAIR_CPU_ISA = env;
      expect(info().cpu.isa).toBe(name);
      expect(info().cpu.kernels.matmul).toMatch(new RegExp(`^${name} `));
      const m = await loadModel(STORIES, { backend: 'cpu', threads: 1 });
      try {
        texts.push((await m.generate('Once upon a time', { maxNewTokens: 12 })).text);
      } finally {
        await m.dispose();
      }
    }
    expect(texts.length).toBeGreaterThanOrEqual(1);
    for (const t of texts) expect(t).toBe(texts[0]); // greedy text is the same under every level
  });

  it('refuses an unknown level name with ERR_INVALID_ARG, at load and in info()', async () => {
    process.env.REPAIR_CPU_ISA = 'v9';
    expect(info().cpu.isa).toBe('');
    expect(info().cpu.isaError).toMatch(/ERR_INVALID_ARG/);
    await expect(loadModel(STORIES, { backend: 'cpu' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
  });

  it('on a CPU capped at AVX2 (REPAIR_CPU_ISA_MAX=v3) selects v3 and refuses v4 with ERR_UNSUPPORTED_CPU', async () => {
    if (!info().cpu.isaSupported.includes('x86-64-v3')) return; // a pre-AVX2 CPU: covered by the next case
    process.env.REPAIR_CPU_ISA_MAX = 'v3';
    delete process.env.REPAIR_CPU_ISA;
    expect(info().cpu.isaSupported).toEqual(['x86-64', 'x86-64-v3']);
    expect(info().cpu.isa).toBe('x86-64-v3');
    process.env.REPAIR_CPU_ISA = 'v4';
    expect(info().cpu.isa).toBe('');
    expect(info().cpu.isaError).toMatch(/ERR_UNSUPPORTED_CPU/);
    await expect(loadModel(STORIES, { backend: 'cpu' })).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED_CPU' });
  });

  it('refuses a level this CPU lacks with ERR_UNSUPPORTED_CPU (capped at baseline)', async () => {
    process.env.REPAIR_CPU_ISA_MAX = 'baseline';
    process.env.REPAIR_CPU_ISA = 'v3';
    expect(info().cpu.isaSupported).toEqual(['x86-64']);
    expect(info().cpu.isaError).toMatch(/ERR_UNSUPPORTED_CPU/);
    await expect(loadModel(STORIES, { backend: 'cpu' })).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED_CPU' });
    delete process.env.REPAIR_CPU_ISA;
    expect(info().cpu.isa).toBe('x86-64');
  });
});
