// The side-memory store as its own native resource (native/binding_side.cpp): NativeSideMemory objects from
// model.createSideMemory, each holding its model; dispose() (or the finalizer) frees it; calls on a disposed store
// or model give ERR_DISPOSED, never a crash. Also: the id-keyed side API lib/ uses (lib/native.ts) maps onto the
// same objects, and the test/bench hooks live only in lib/testing.ts (production code never loads them).
import { describe, it, expect } from 'vitest';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { readConfig, toNativeArch, matchTensors } from '../lib/config.js';
import { readSafetensorsDir } from '../lib/safetensors.js';
import { native, type NativeModel, type NativeSideMemory } from '../lib/native.js';
import { testing } from '../lib/testing.js';
import { packageRoot } from '../lib/paths.js';

const DIR = join(packageRoot(), 'test', 'fixtures', 'tiny-llama3');

async function loaded(): Promise<NativeModel> {
  const cfg = readConfig(DIR);
  const nm = new (native().NativeModel)({ backend: 'cpu', device: 0, arch: toNativeArch(cfg), tensors: matchTensors(cfg, readSafetensorsDir(DIR)) });
  await nm.load();
  return nm;
}
function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? 'NO_CODE';
  }
  return undefined;
}
// A full collection, then a few turns of the event loop for the finalizers.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
async function collect(): Promise<void> {
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
}

describe('NativeSideMemory', () => {
  it('is a store object: id, layer, target, slots, and the id-keyed API maps onto it', async () => {
    const nm = await loaded();
    try {
      const s = nm.createSideMemory(1);
      expect([s.layer, s.target, s.slots()]).toEqual([1, 0, 0]);
      expect(await s.add(-1)).toBe(0);
      expect(s.slots()).toBe(1);
      const w = await s.read(0);
      const id = nm.sideCreate(1);
      expect(nm.sideMemory(id).id).toBe(id);
      expect(id).not.toBe(s.id);
      expect(await nm.sideAdd(id, -1)).toBe(0);
      expect(await nm.sideRead(id, 0)).toEqual(w); // both the base weight widened
      nm.sideFree(id);
      expect(codeOf(() => nm.sideMemory(id))).toBe('ERR_INVALID_ARG');
      await expect(nm.sideAdd(id, -1)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
      s.dispose();
    } finally {
      nm.dispose();
    }
  });

  it('dispose() frees its memory; a disposed store gives ERR_DISPOSED; dispose twice is harmless', async () => {
    const nm = await loaded();
    try {
      const before = nm.memoryBytes();
      const s = nm.createSideMemory(0);
      await s.add(-1);
      await s.add(0);
      expect(nm.memoryBytes()).toBeGreaterThan(before);
      s.dispose();
      expect(nm.memoryBytes()).toBe(before);
      expect(codeOf(() => s.slots())).toBe('ERR_DISPOSED');
      expect(codeOf(() => s.add(-1))).toBe('ERR_DISPOSED');
      expect(codeOf(() => s.read(0))).toBe('ERR_DISPOSED');
      s.dispose();
    } finally {
      nm.dispose();
    }
  });

  it('a store released while its model runs a call is freed when the call ends', async () => {
    const nm = await loaded();
    try {
      const before = nm.memoryBytes();
      const s = nm.createSideMemory(0);
      await s.add(-1);
      const running = s.add(0); // the model is busy until this resolves
      s.dispose();
      expect(await running).toBe(1);
      expect(nm.memoryBytes()).toBe(before);
    } finally {
      nm.dispose();
    }
  });

  it('after the model is disposed its stores give ERR_DISPOSED (dispose stays harmless)', async () => {
    const nm = await loaded();
    const s = nm.createSideMemory(0);
    await s.add(-1);
    nm.dispose();
    expect(codeOf(() => s.slots())).toBe('ERR_DISPOSED');
    expect(codeOf(() => s.reset(0))).toBe('ERR_DISPOSED');
    expect(codeOf(() => nm.createSideMemory(0))).toBe('ERR_DISPOSED');
    s.dispose();
  });

  it('holds its model: a store whose model is otherwise unreachable still works after a collection', async () => {
    const make = async (): Promise<NativeSideMemory> => (await loaded()).createSideMemory(0);
    const s = await make();
    await collect();
    expect(await s.add(-1)).toBe(0);
    expect((await s.read(0)).length).toBeGreaterThan(0);
    s.dispose();
    await collect(); // the model may go now; nothing may crash
  });

  it('the finalizer of a dropped store frees its memory', async () => {
    const nm = await loaded();
    try {
      const before = nm.memoryBytes();
      await (async () => {
        const s = nm.createSideMemory(0);
        await s.add(-1);
        await s.add(0);
      })();
      expect(nm.memoryBytes()).toBeGreaterThan(before);
      for (let i = 0; i < 10 && nm.memoryBytes() > before; i++) await collect();
      expect(nm.memoryBytes()).toBe(before);
    } finally {
      nm.dispose();
    }
  });

  it('score(…, slots) gives the rows of those slots, in that order, equal to the all-slot call; bad slots are typed errors', async () => {
    const nm = await loaded();
    try {
      const s = nm.createSideMemory(1);
      for (let i = 0; i < 4; i++) await s.add(-1);
      // make the four slots differ: slot i = base + i·δ on a few elements
      for (let i = 0; i < 4; i++) {
        const w = await s.read(i);
        for (let k = 0; k < w.length; k += 7) w[k]! += 0.05 * (i + 1) * Math.sin(k);
        await s.write(i, w);
      }
      const B = 2;
      const T = 5;
      const tokens = Int32Array.from([1, 5, 9, 13, 17, 0, 0, 2, 3, 4]);
      const pad = Int32Array.from([0, 2]);
      const all = await s.score(tokens, B, T, pad, 1);
      expect(all.length).toBe(4 * B * T);
      const some = await s.score(tokens, B, T, pad, 1, Int32Array.from([3, 0, 2]));
      expect(some.length).toBe(3 * B * T);
      [3, 0, 2].forEach((slot, j) => {
        for (let t = 0; t < B * T; t++) expect(some[j * B * T + t]!).toBeCloseTo(all[slot * B * T + t]!, 4);
      });
      await expect(s.score(tokens, B, T, pad, 1, Int32Array.from([4]))).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
      await expect(s.score(tokens, B, T, pad, 1, Int32Array.from([-1]))).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
      expect(codeOf(() => s.score(tokens, B, T, pad, 1, new Int32Array(0)))).toBe('ERR_INVALID_ARG');
      s.dispose();
    } finally {
      await nm.dispose();
    }
  });

  it('only for NativeModels: the class refuses anything else as its model', async () => {
    const nm = await loaded();
    try {
      const s = nm.createSideMemory(0);
      const Ctor = (s as unknown as { constructor: new (...a: unknown[]) => unknown }).constructor;
      expect(codeOf(() => new Ctor({}, 0))).toBe('ERR_INVALID_ARG');
      expect(codeOf(() => nm.createSideMemory(99))).toBe('ERR_INVALID_ARG');
      s.dispose();
    } finally {
      nm.dispose();
    }
  });
});

describe('the test/bench hooks are a separate export', () => {
  it('native() has no runOp / benchLinear; testing() has them and the op list', () => {
    const addon = native() as unknown as Record<string, unknown>;
    expect(addon.runOp).toBeUndefined();
    expect(addon.benchLinear).toBeUndefined();
    const t = testing();
    expect(typeof t.runOp).toBe('function');
    expect(typeof t.benchLinear).toBe('function');
    expect(t.opNames().length).toBe(28);
  });
  it('nothing in lib/ but lib/testing.ts imports it', () => {
    const files: string[] = [];
    const walk = (d: string): void => {
      for (const f of readdirSync(d)) {
        const p = join(d, f);
        if (statSync(p).isDirectory()) walk(p);
        else if (p.endsWith('.ts')) files.push(p);
      }
    };
    walk(join(packageRoot(), 'lib'));
    const importers = files.filter((f) => !f.endsWith(join('lib', 'testing.ts')) && /from '\.{1,2}\/(\.\.\/)*testing\.js'/.test(readFileSync(f, 'utf8')));
    expect(importers).toEqual([]);
  });
});
