// testing.ts — the addon's test and bench hooks (native/binding_testing.cpp), the `repair-edit/testing` subpath.
// Synchronous on the JS thread and meant for test/ and bench/ only: nothing in lib/ imports this file.
import { type BackendName, type NativeDType, nativeModule } from './native.js';

/** Op-level access for the op tests: one backend op on host inputs. */
export interface NativeOpResult {
  [output: string]: Float32Array | boolean | number;
  guardOk: boolean; // the guard regions around every output were left untouched
}

export interface NativeTesting {
  /** One backend op on host arrays (tests). backend: 'cpu', 'cpu:baseline' | 'cpu:v3' | 'cpu:v4' (forces an ISA level), or 'cuda'. */
  runOp(backend: BackendName | string, op: string, args: Record<string, Float32Array | Int32Array | Uint16Array | number | string>): NativeOpResult;
  /** The ops runOp runs: native/ops.def's list, in its order. */
  opNames(): string[];
  /** Seconds per backend linear() call of y[M,N] = x[M,K]·W[N,K]ᵀ (timed natively; for bench/). backend: 'cpu', 'cpu:<isa>' or 'cuda'. */
  benchLinear(backend: BackendName | string, M: number, N: number, K: number, dtype: NativeDType, iters: number, threads?: number): number;
}

let cached: NativeTesting | undefined;

export function testing(): NativeTesting {
  cached ??= nativeModule().loadTesting() as NativeTesting;
  return cached;
}
