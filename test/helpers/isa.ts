// isa.ts — the CPU kernel variants (ISA levels, native/cpu/isa.h) the op tests run against float64:
// every level this CPU supports, or the comma-separated list in REPAIR_TEST_ISAS (baseline,v3,v4).
import { native } from '../../lib/native.js';

export type IsaLevel = 'baseline' | 'v3' | 'v4';
const BY_NAME: Record<string, IsaLevel> = { 'x86-64': 'baseline', 'x86-64-v3': 'v3', 'x86-64-v4': 'v4' };

export function cpuIsas(): IsaLevel[] {
  const supported = native().info().cpu.isaSupported.map((n) => BY_NAME[n]!).filter(Boolean);
  const want = process.env.REPAIR_TEST_ISAS;
  if (!want) return supported;
  return want.split(',').map((s) => s.trim() as IsaLevel).filter((l) => supported.includes(l));
}

/** The runOp backend name that forces one ISA level's kernels. */
export const cpuBackend = (isa: IsaLevel): string => `cpu:${isa}`;
