// optest — the op-test table itself (native/optest.cpp, reached through testing().runOp): every op of the list is
// known to it, and its argument validation across the ops (unknown ops, mis-sized tensors, non-integral sizes,
// weights in the wrong array type, out-of-range indices, cache overflows, the editing ops' arguments), on the CPU
// and, with a device, on CUDA (a bad argument is ERR_INVALID_ARG, not a CUDA error, and the backend stays
// usable); without a device, the cuda backend reports ERR_CUDA_UNAVAILABLE. The ops themselves:
// test/ops_<family>.test.ts, one file per family of native/ops.def.
// Note (TOOLCHAIN pitfall 10): describe.skipIf still runs the describe body, so all work happens inside `it`.
import { describe, it, expect } from 'vitest';
import { native } from '../lib/native.js';
import { testing } from '../lib/testing.js';
import { errCode, expectKnownOp } from './helpers/optest.js';
import { opsOf } from './helpers/opsdef.js';

const info = native().info();
const cudaAvailable = info.cuda.available;

// an empty call must be rejected as a missing argument, not as an unknown op (the families' ops, from native/ops.def)
function expectFamiliesKnown(...families: string[]): void {
  const ops = opsOf(...families);
  expect(ops.length, families.join(', ')).toBeGreaterThan(0);
  for (const op of ops) expectKnownOp(op);
}

describe('native ops: op table', () => {
  it('runOp knows every op of backend.h', () => expectFamiliesKnown('matmul', 'norm', 'elementwise', 'rope', 'attention'));
});

describe('editing ops: op table', () => {
  it('runOp knows every editing op', () => expectFamiliesKnown('backward', 'wise'));
});

describe('runOp argument validation', () => {
  const x = new Float32Array(6), W = new Float32Array(6);
  it('rejects an unknown op', () => {
    expect(errCode(() => testing().runOp('cpu', 'conv2d', {}))).toBe('ERR_INVALID_ARG');
  });
  it('rejects mis-sized tensors', () => {
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: 2, N: 2, K: 3, x, W: new Float32Array(5) }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: 2, N: 2, K: 4, x, W }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'add', { a: x, b: new Float32Array(5) }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'rope', { n_tok: 1, n_head: 1, head_dim: 6, x, pos: new Int32Array(1), inv_freq: new Float32Array(2) }))).toBe('ERR_INVALID_ARG');
  });
  it('rejects non-integral or negative sizes', () => {
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: 1.5, N: 2, K: 3, x, W }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: -2, N: 2, K: 3, x, W }))).toBe('ERR_INVALID_ARG');
  });
  it('rejects a weight given in the wrong array type for its dtype', () => {
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: 2, N: 2, K: 3, x, W, dtype: 'BF16' }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: 2, N: 2, K: 3, x, W: new Uint16Array(6), dtype: 'F32' }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'linear', { M: 2, N: 2, K: 3, x, W, dtype: 'F64' }))).toBe('ERR_INVALID_ARG');
  });
  it('rejects out-of-range indices and cache overflows', () => {
    expect(errCode(() => testing().runOp('cpu', 'embedding', { D: 2, ids: Int32Array.of(3), table: x }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'gather_rows', { D: 3, idx: Int32Array.of(-1), x }))).toBe('ERR_INVALID_ARG');
    const k = new Float32Array(2 * 4);
    expect(errCode(() => testing().runOp('cpu', 'kv_store', { B: 1, Tn: 2, Hkv: 1, hd: 4, S: 3, P: 2, k, v: k }))).toBe('ERR_INVALID_ARG');
    expect(
      errCode(() => testing().runOp('cpu', 'attention', { B: 1, Tn: 1, Hq: 3, Hkv: 2, hd: 4, S: 2, P: 0, q: new Float32Array(12), kc: new Float32Array(16), vc: new Float32Array(16), pad: Int32Array.of(0) })),
    ).toBe('ERR_INVALID_ARG');
  });
  it.skipIf(cudaAvailable)('the cuda backend reports ERR_CUDA_UNAVAILABLE when there is no device', () => {
    expect(info.cuda.reason.length).toBeGreaterThan(0);
    expect(errCode(() => testing().runOp('cuda', 'add', { a: x, b: x }))).toBe('ERR_CUDA_UNAVAILABLE');
  });
});

describe('editing ops: argument validation', () => {
  it('rejects bad arguments with ERR_INVALID_ARG', () => {
    const x = new Float32Array(6);
    expect(errCode(() => testing().runOp('cpu', 'scatter_add_rows', { D: 3, idx: Int32Array.of(1, 1), x, y: x }))).toBe('ERR_INVALID_ARG'); // repeated idx
    expect(errCode(() => testing().runOp('cpu', 'scatter_add_rows', { D: 3, idx: Int32Array.of(2), x: new Float32Array(3), y: x }))).toBe('ERR_INVALID_ARG'); // idx >= R
    expect(errCode(() => testing().runOp('cpu', 'linear_dx', { M: 2, N: 3, K: 2, dy: x, W: x, dx: x }))).toBe('ERR_INVALID_ARG'); // dx given, accumulate 0
    expect(errCode(() => testing().runOp('cpu', 'linear_dx', { M: 2, N: 3, K: 2, dy: x, W: x, accumulate: 1 }))).toBe('ERR_INVALID_ARG'); // dx missing
    expect(errCode(() => testing().runOp('cpu', 'cross_entropy', { R: 1, V: 6, logits: x, labels: Int32Array.of(6), weight: Float32Array.of(1) }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'act_dist', { n: 1, nm: 1, D: 6, act: 3, os: x, om: x }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'attention_bwd', { B: 1, T: 1, Hq: 1, Hkv: 1, hd: 6, dout: x, q: x, kc: x, vc: x, pad: Int32Array.of(2) }))).toBe('ERR_INVALID_ARG');
    const sgd = { M: 1, N: 2, K: 3, Wp: x, G: new Float32Array(2), A: new Float32Array(3), Wv: x, rho: 0.2, lr: 1, wd: 0, clamp: 0 };
    expect(errCode(() => testing().runOp('cpu', 'masked_sgd', { ...sgd }))).toBe('ERR_INVALID_ARG'); // no seed
    expect(errCode(() => testing().runOp('cpu', 'masked_sgd', { ...sgd, seed: 2 ** 53 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'masked_sgd', { ...sgd, seed: 1.5 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'masked_sgd', { ...sgd, seed_lo: 1 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'masked_sgd', { ...sgd, seed: 1, seed_lo: 1, seed_hi: 0 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'masked_sgd', { ...sgd, seed_lo: 2 ** 32, seed_hi: 0 }))).toBe('ERR_INVALID_ARG');
    const ties = { k: 2, base: new Float32Array(3), shards: x, weights: Float32Array.of(1, 1) };
    expect(errCode(() => testing().runOp('cpu', 'ties_merge', { ...ties, density: 1.5 }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'ties_merge', { ...ties, density: 0.5, shards: new Float32Array(5) }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cpu', 'ties_merge', { ...ties, density: 0.5, alias: 2 }))).toBe('ERR_INVALID_ARG');
  });
});

describe.skipIf(!cudaAvailable)('cuda backend vs cpu backend', () => {
  it('reports a device', () => {
    expect(info.cuda.devices.length).toBeGreaterThan(0);
    expect(info.cuda.runtimeVersion).toBeGreaterThan(0);
    expect(info.cuda.driverVersion).toBeGreaterThan(0);
  });
  it('rejects bad arguments with ERR_INVALID_ARG (not a CUDA error)', () => {
    const x = new Float32Array(6);
    expect(errCode(() => testing().runOp('cuda', 'linear', { M: 2, N: 2, K: 4, x, W: x }))).toBe('ERR_INVALID_ARG');
    expect(errCode(() => testing().runOp('cuda', 'attention', { B: 1, Tn: 1, Hq: 1, Hkv: 1, hd: 300, S: 1, P: 0, q: new Float32Array(300), kc: new Float32Array(300), vc: new Float32Array(300), pad: Int32Array.of(0) }))).toBe('ERR_INVALID_ARG');
    // the backend stays usable afterwards
    const r = testing().runOp('cuda', 'add', { a: x, b: x });
    expect(r.guardOk).toBe(true);
  });
});
