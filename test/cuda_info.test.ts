// info(): CUDA is reported available only when a device can run this build's kernels. The addon probes each
// device (cudaFuncGetAttributes on a kernel, cuda/cuda_backend.cu) and reports the compiled architecture list;
// lib/info.ts turns that into `available` and a reason naming the device, the build's architectures and the
// REPAIR_CUDA_ARCHS value that fixes it. The logic is tested here on synthetic reports (no GPU needed), and the
// live report of this machine is checked for consistency.
import { describe, it, expect } from 'vitest';
import { cudaKernelImage, cudaVerdict, describeCudaArchs, info } from '../lib/info.js';
import type { NativeInfo } from '../lib/native.js';

const DEFAULT = '80-real,90-real,90-virtual';

describe('cudaKernelImage: which image of a build a device runs', () => {
  it('cubins run on the same major with an equal or newer minor', () => {
    expect(cudaKernelImage('8.0', DEFAULT)).toBe('sass');
    expect(cudaKernelImage('8.6', DEFAULT)).toBe('sass'); // A10/RTX 30xx run the sm_80 cubin
    expect(cudaKernelImage('8.9', DEFAULT)).toBe('sass'); // L4/L40/RTX 40xx
    expect(cudaKernelImage('9.0', DEFAULT)).toBe('sass'); // H100/H200
    expect(cudaKernelImage('8.6', '86-real')).toBe('sass');
    expect(cudaKernelImage('8.0', '86-real')).toBeNull(); // an older minor cannot run a newer cubin
  });
  it('PTX is JIT-compiled for any newer device, never for an older one', () => {
    expect(cudaKernelImage('10.0', DEFAULT)).toBe('ptx'); // Blackwell: compute_90 PTX
    expect(cudaKernelImage('12.0', DEFAULT)).toBe('ptx');
    expect(cudaKernelImage('10.0', '80-real,90-real')).toBeNull(); // no PTX in the build
    expect(cudaKernelImage('7.5', '70-virtual')).toBe('ptx');
  });
  it('older cards have no image in the default build', () => {
    expect(cudaKernelImage('7.5', DEFAULT)).toBeNull(); // T4
    expect(cudaKernelImage('7.0', DEFAULT)).toBeNull(); // V100
    expect(cudaKernelImage('6.1', DEFAULT)).toBeNull();
  });
  it('a one-architecture build (gpu-check.sh) and CMake spellings', () => {
    expect(cudaKernelImage('9.0', '90-real')).toBe('sass');
    expect(cudaKernelImage('8.0', '90-real')).toBeNull();
    expect(cudaKernelImage('9.0', '90a-real')).toBe('sass');
    expect(cudaKernelImage('10.0', '90a-real;90a-virtual')).toBeNull(); // arch-specific: 9.0 only, no portable PTX
    expect(cudaKernelImage('8.9', '89')).toBe('sass'); // bare = real + virtual
    expect(cudaKernelImage('9.0', '89')).toBe('ptx');
    expect(cudaKernelImage('garbage', DEFAULT)).toBeNull();
    expect(describeCudaArchs(DEFAULT)).toBe('sm_80, sm_90, PTX compute_90');
  });
});

function report(devices: { cc: string; image?: boolean; err?: string }[], over: Partial<NativeInfo['cuda']> = {}): NativeInfo['cuda'] {
  return {
    built: true,
    available: devices.some((d) => d.image !== false),
    reason: '',
    driverVersion: 12040,
    runtimeVersion: 13000,
    archs: DEFAULT,
    devices: devices.map((d, i) => ({
      index: i, name: `GPU ${i}`, computeCapability: d.cc, totalMemory: 16e9, freeMemory: 15e9, multiprocessors: 40,
      kernelImage: d.image as boolean, kernelImageError: d.err ?? '',
    })),
    ...over,
  };
}

describe('cudaVerdict: available only with a kernel image', () => {
  it('a T4 (sm_75) with the default build: unavailable, with the device, the build and the fix named', () => {
    const v = cudaVerdict(report([{ cc: '7.5', image: false, err: 'cudaErrorNoKernelImageForDevice (no kernel image is available for execution on the device)' }], { available: false }));
    expect(v.available).toBe(false);
    expect(v.reason).toMatch(/device 0 \(GPU 0, compute capability 7\.5\) has no kernel image/);
    expect(v.reason).toMatch(/sm_80, sm_90, PTX compute_90/);
    expect(v.reason).toMatch(/REPAIR_CUDA_ARCHS=75/);
    expect(v.reason).toMatch(/NoKernelImage/);
  });
  it('the native reason wins when the addon gives one', () => {
    const v = cudaVerdict(report([{ cc: '7.5', image: false }], { available: false, reason: 'device 0 ... rebuild with REPAIR_CUDA_ARCHS=75' }));
    expect(v).toMatchObject({ available: false, reason: 'device 0 ... rebuild with REPAIR_CUDA_ARCHS=75' });
  });
  it('without a probe result (an older addon) the architecture list decides', () => {
    const v = cudaVerdict(report([{ cc: '7.0' }], { available: true }));
    expect(v.available).toBe(false);
    expect(v.kernelImage).toEqual([false]);
    expect(cudaVerdict(report([{ cc: '9.0' }])).available).toBe(true);
  });
  it('one usable device among several is enough; the probe beats the list', () => {
    expect(cudaVerdict(report([{ cc: '7.5', image: false }, { cc: '9.0', image: true }])).available).toBe(true);
    expect(cudaVerdict(report([{ cc: '12.1', image: true }], { archs: '80-real' })).available).toBe(true);
  });
  it('no device and not built keep their reasons', () => {
    expect(cudaVerdict(report([], { available: false, reason: 'cudaGetDeviceCount failed: cudaErrorInsufficientDriver' }))).toMatchObject({ available: false, reason: /InsufficientDriver/ });
    expect(cudaVerdict(report([], { built: false, available: false, reason: '' })).reason).toMatch(/not built/);
  });
});

describe('info() on this machine', () => {
  it('reports the compiled architectures and a consistent verdict', () => {
    let i: ReturnType<typeof info>;
    try {
      i = info();
    } catch {
      return; // no addon built: nothing to report (other suites say so)
    }
    if (i.cuda.built) expect(i.cuda.archs).toMatch(/^\d+[a-z]?(-(real|virtual))?(,\d+[a-z]?(-(real|virtual))?)*$/);
    else expect(i.cuda.archs).toBe('');
    if (i.cuda.available) expect(i.cuda.devices.some((d) => d.kernelImage)).toBe(true);
    else expect(i.cuda.reason).not.toBe('');
  });
});
