// info.ts — what this installation can run on: package version, built backends, CPU threads and the ISA
// level of the CPU kernels, CUDA devices.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { callNativeSync, RepairError } from './errors.js';
import { native, type BackendName, type NativeCudaDevice } from './native.js';
import { packageRoot } from './paths.js';

export type CudaDevice = NativeCudaDevice;

export interface Info {
  /** repair-edit package version. */
  version: string;
  /** Backends compiled into the addon ("cpu" always). */
  backends: BackendName[];
  /** The backend `loadModel(dir, { backend: 'auto' })` picks now (REPAIR_BACKEND honoured). */
  defaultBackend: BackendName;
  cpu: {
    threads: number;
    /** ISA level of the CPU kernels a new CPU backend runs ('x86-64' | 'x86-64-v3' | 'x86-64-v4'; '' when REPAIR_CPU_ISA names one this CPU lacks). */
    isa: string;
    /** The best level this CPU supports, and all it supports. */
    isaDetected: string;
    isaSupported: string[];
    /** REPAIR_CPU_ISA as set ('' when unset), and why it cannot be used ('' when it can). */
    isaForced: string;
    isaError: string;
    /** Op family -> kernel variant it runs. */
    kernels: Record<string, string>;
  };
  cuda: {
    built: boolean;
    available: boolean;
    /** Why CUDA cannot be used ('' when available). */
    reason: string;
    driverVersion: number; // e.g. 12040 (0 without a driver)
    runtimeVersion: number;
    /** "12.4" style versions ('' when 0). */
    driver: string;
    runtime: string;
    devices: CudaDevice[];
  };
}

let version: string | undefined;

export function packageVersion(): string {
  if (version === undefined) {
    try {
      version = String(JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')).version ?? '0.0.0');
    } catch {
      version = '0.0.0';
    }
  }
  return version;
}

/** 12040 → "12.4"; 0 → "". */
export function formatCudaVersion(v: number): string {
  if (!v) return '';
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

/** Load the addon, turning a missing/broken build into a typed error. */
export function loadNative(): ReturnType<typeof native> {
  try {
    return native();
  } catch (e) {
    throw new RepairError(
      'ERR_INTERNAL',
      `the native addon could not be loaded (${(e as Error).message.split('\n')[0]}); build it with "npx cmake-js compile" or reinstall the package`,
      undefined,
      { cause: e },
    );
  }
}

/** The backend 'auto' resolves to: REPAIR_BACKEND when set, else cuda when available, else cpu. */
export function resolveAutoBackend(cudaAvailable: boolean): BackendName {
  const env = process.env.REPAIR_BACKEND?.trim().toLowerCase();
  if (env && env !== 'auto') {
    if (env !== 'cpu' && env !== 'cuda') {
      throw new RepairError('ERR_INVALID_ARG', `REPAIR_BACKEND must be cpu, cuda or auto, got "${process.env.REPAIR_BACKEND}"`, { field: 'REPAIR_BACKEND' });
    }
    return env;
  }
  return cudaAvailable ? 'cuda' : 'cpu';
}

export function info(): Info {
  const n = callNativeSync(() => loadNative().info());
  let defaultBackend: BackendName;
  try {
    defaultBackend = resolveAutoBackend(n.cuda.available);
  } catch {
    defaultBackend = n.cuda.available ? 'cuda' : 'cpu';
  }
  return {
    version: packageVersion(),
    backends: [...n.backends],
    defaultBackend,
    cpu: { threads: n.cpuThreads, ...n.cpu, isaSupported: [...n.cpu.isaSupported], kernels: { ...n.cpu.kernels } },
    cuda: {
      built: n.cuda.built,
      available: n.cuda.available,
      reason: n.cuda.available ? '' : n.cuda.reason || (n.cuda.built ? 'no CUDA device' : 'the CUDA backend was not built (nvcc not found at build time)'),
      driverVersion: n.cuda.driverVersion,
      runtimeVersion: n.cuda.runtimeVersion,
      driver: formatCudaVersion(n.cuda.driverVersion),
      runtime: formatCudaVersion(n.cuda.runtimeVersion),
      devices: n.cuda.devices.map((d) => ({ ...d })),
    },
  };
}
