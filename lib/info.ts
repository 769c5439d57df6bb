// info.ts — what this installation can run on: package version, built backends, CPU threads and the ISA
// level of the CPU kernels, CUDA devices.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { callNativeSync, RepairError } from './errors.js';
import { native, type BackendName, type NativeCudaDevice, type NativeInfo } from './native.js';
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
    /** CUDA architectures compiled in ("80-real,90-real,90-virtual"; '' when not built). */
    archs: string;
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

/**
 * Which kernel image of a build a device of compute capability `cc` ("8.6") runs, from the build's architecture
 * list (CMake CUDA_ARCHITECTURES entries, comma- or semicolon-separated: "80-real,90-real,90-virtual"):
 *   'sass' — a cubin sm_XY runs on the same major with minor >= Y (arch-specific "90a" cubins only on 9.0 itself);
 *   'ptx'  — PTX compute_XY is JIT-compiled by the driver for any cc >= X.Y;
 *   null   — nothing runs there (every launch would fail with cudaErrorNoKernelImageForDevice).
 * A bare entry ("90") means both, as in CMake.
 */
export function cudaKernelImage(cc: string, archs: string): 'sass' | 'ptx' | null {
  const m = /^(\d+)\.(\d+)$/.exec(cc.trim());
  if (!m) return null;
  const major = Number(m[1]), minor = Number(m[2]);
  const dev = major * 10 + minor;
  let ptx = false;
  for (const raw of archs.split(/[,;\s]+/)) {
    const e = /^(\d+)([a-z]?)(?:-(real|virtual))?$/.exec(raw.trim());
    if (!e) continue;
    const n = Number(e[1]), specific = e[2] !== '', kind = e[3];
    if (kind !== 'virtual') {
      if (specific ? n === dev : Math.floor(n / 10) === major && n % 10 <= minor) return 'sass';
    }
    if (kind !== 'real' && !specific && n <= dev) ptx = true;
  }
  return ptx ? 'ptx' : null;
}

/** "80-real,90-real,90-virtual" → "sm_80, sm_90, PTX compute_90". */
export function describeCudaArchs(archs: string): string {
  const parts = archs.split(/[,;\s]+/).filter(Boolean).map((a) => {
    const [n, kind] = a.split('-');
    return kind === 'virtual' ? `PTX compute_${n}` : kind === 'real' ? `sm_${n}` : `sm_${n} + PTX compute_${n}`;
  });
  return parts.length ? parts.join(', ') : '(unknown architectures)';
}

/**
 * CUDA's availability from the addon's report: usable only when some device has a kernel image in this build.
 * The native probe (cudaFuncGetAttributes on a kernel, cuda/cuda_backend.cu) is authoritative; the architecture
 * list decides where no probe result exists, and words the reason.
 */
export function cudaVerdict(c: NativeInfo['cuda']): { available: boolean; reason: string; kernelImage: boolean[] } {
  const image = c.devices.map((d) => (typeof d.kernelImage === 'boolean' ? d.kernelImage : c.archs ? cudaKernelImage(d.computeCapability, c.archs) !== null : true));
  if (!c.built) return { available: false, reason: c.reason || 'the CUDA backend was not built (nvcc not found at build time)', kernelImage: image };
  if (c.devices.length === 0) return { available: false, reason: c.reason || 'no CUDA device', kernelImage: image };
  if (image.some(Boolean)) return { available: c.available, reason: c.available ? '' : c.reason || 'no usable CUDA device', kernelImage: image };
  const why = c.devices
    .map((d) => `device ${d.index} (${d.name}, compute capability ${d.computeCapability}) has no kernel image in this build (built for ${describeCudaArchs(c.archs)}${d.kernelImageError ? `; ${d.kernelImageError}` : ''}): rebuild with REPAIR_CUDA_ARCHS=${d.computeCapability.replace('.', '')}`)
    .join('; ');
  return { available: false, reason: c.reason || why, kernelImage: image };
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
  const verdict = cudaVerdict(n.cuda);
  let defaultBackend: BackendName;
  try {
    defaultBackend = resolveAutoBackend(verdict.available);
  } catch {
    defaultBackend = verdict.available ? 'cuda' : 'cpu';
  }
  return {
    version: packageVersion(),
    backends: [...n.backends],
    defaultBackend,
    cpu: { threads: n.cpuThreads, ...n.cpu, isaSupported: [...n.cpu.isaSupported], kernels: { ...n.cpu.kernels } },
    cuda: {
      built: n.cuda.built,
      available: verdict.available,
      reason: verdict.reason,
      driverVersion: n.cuda.driverVersion,
      runtimeVersion: n.cuda.runtimeVersion,
      driver: formatCudaVersion(n.cuda.driverVersion),
      runtime: formatCudaVersion(n.cuda.runtimeVersion),
      archs: n.cuda.archs ?? '',
      devices: n.cuda.devices.map((d, i) => ({ ...d, kernelImage: verdict.kernelImage[i]!, kernelImageError: d.kernelImageError ?? '' })),
    },
  };
}
