// A new side memory starts as the base matrix widened to f32 exactly (side_add(-1): W′ = W_v). The widening now
// runs on the backend (native/edit.cpp widen_base: embedding() over ids 0..D-1, no host round trip of the base);
// this checks bit for bit, for F32, BF16 and F16 weights (and GPT-2's c_fc, transposed at load), that the working
// memory of a fresh editor equals the stored tensor widened here, on the CPU and, where one exists, on CUDA.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../lib/model.js';
import { Editor } from '../lib/editor.js';
import { parseSafetensorsHeader } from '../lib/safetensors.js';
import { packageRoot } from '../lib/paths.js';
import { native } from '../lib/native.js';

const FIX = join(packageRoot(), 'test', 'fixtures');
let haveAddon = true;
let cuda = false;
try {
  cuda = native().info().cuda.available;
} catch {
  haveAddon = false;
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** The stored tensor widened to f32 (row-major as stored). */
function storedF32(dir: string, name: string): { data: Float32Array; shape: number[] } {
  const h = parseSafetensorsHeader(join(dir, 'model.safetensors'));
  const t = h.tensors.get(name)!;
  const raw = readFileSync(join(dir, 'model.safetensors')).subarray(t.offset, t.offset + t.nbytes);
  const n = t.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const u8 = new Uint8Array(raw);
  const dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) {
    if (t.dtype === 'F32') out[i] = dv.getFloat32(4 * i, true);
    else if (t.dtype === 'BF16') bits[i] = dv.getUint16(2 * i, true) << 16;
    else out[i] = f16ToF32(dv.getUint16(2 * i, true));
  }
  return { data: out, shape: t.shape };
}

function memory0(file: string): Float32Array {
  const h = parseSafetensorsHeader(file);
  const t = h.tensors.get('memory.0')!;
  const raw = readFileSync(file).subarray(t.offset, t.offset + t.nbytes);
  return new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
}

const CASES: { fixture: string; dtype: string; layer: number; tensor: string; key?: boolean }[] = [
  { fixture: 'tiny-llama3', dtype: 'F32', layer: 1, tensor: 'model.layers.1.mlp.down_proj.weight' },
  { fixture: 'tiny-llama3-bf16', dtype: 'BF16', layer: 2, tensor: 'model.layers.2.mlp.down_proj.weight' },
  { fixture: 'tiny-mistral', dtype: 'F16', layer: 0, tensor: 'model.layers.0.mlp.down_proj.weight' },
  { fixture: 'tiny-gpt2', dtype: 'F32', layer: 1, tensor: 'h.1.mlp.c_fc.weight', key: true }, // [in, out] on disk, [F, D] in memory
];

describe.skipIf(!haveAddon)('a new side memory is the base weight widened exactly (on the backend)', () => {
  for (const backend of cuda ? (['cpu', 'cuda'] as const) : (['cpu'] as const)) {
    for (const c of CASES) {
      it(`${backend} ${c.fixture} (${c.dtype}${c.key ? ', c_fc' : ''}) layer ${c.layer}`, async () => {
        const dir = join(FIX, c.fixture);
        const model = await loadModel(dir, { backend });
        const tmp = mkdtempSync(join(tmpdir(), 'side-base-'));
        try {
          const ed = await Editor.create(model, { layer: c.layer, contextTemplates: ['{}'], irrelevantPool: ['x'], ...(c.key ? { editMatrix: 'key' as const } : {}) });
          await ed.save(join(tmp, 'm.safetensors'));
          const got = memory0(join(tmp, 'm.safetensors'));
          const { data, shape } = storedF32(dir, c.tensor);
          let want = data;
          if (c.key) {
            // stored [D, F] (Conv1D in, out); the side memory holds it as [F, D]
            const [D, F] = shape as [number, number];
            want = new Float32Array(D * F);
            for (let i = 0; i < D; i++) for (let j = 0; j < F; j++) want[j * D + i] = data[i * F + j]!;
          }
          expect(got.length).toBe(want.length);
          const gb = new Uint32Array(got.buffer), wb = new Uint32Array(want.buffer);
          let diff = 0;
          for (let i = 0; i < gb.length; i++) if (gb[i] !== wb[i]) diff++;
          expect(diff, `${diff} of ${gb.length} elements differ from the widened base`).toBe(0);
          await ed.dispose();
        } finally {
          rmSync(tmp, { recursive: true, force: true });
          await model.dispose();
        }
      });
    }
  }
});
