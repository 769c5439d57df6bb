// cli/info.ts — `repair-edit info [--json]`.

import type { Command } from 'commander';
import { info } from '../info.js';
import { addJsonOptions, checkWritable, emit, type CliCommand, type JsonOutput } from './common.js';

function gib(bytes: number): string {
  return `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
}

export const infoCommand: CliCommand = {
  name: 'info',
  register(program: Command): void {
    addJsonOptions(program.command('info').description('show the version, the built backends, the CPU threads and kernel ISA level, and the CUDA devices'), 'the information').action(
      async (opts: JsonOutput) => {
        if (opts.jsonFile !== undefined) checkWritable(opts.jsonFile, '--json-file');
        const i = info();
        await emit(opts, i, () => text(i));
      },
    );
  },
};

function text(i: ReturnType<typeof info>): string {
  const lines = [
    `repair-edit ${i.version}`,
    `backends built:  ${i.backends.join(', ')}`,
    `default backend: ${i.defaultBackend}`,
    `cpu threads:     ${i.cpu.threads}`,
    `cpu kernels:     ${i.cpu.isa || `none (${i.cpu.isaError})`}${i.cpu.isaForced ? ` (REPAIR_CPU_ISA=${i.cpu.isaForced})` : ''}; this CPU supports ${i.cpu.isaSupported.join(', ')}`,
    `cuda:            ${i.cuda.available ? 'available' : `unavailable (${i.cuda.reason})`}`,
  ];
  if (i.cuda.driverVersion || i.cuda.runtimeVersion) {
    lines.push(`cuda driver:     ${i.cuda.driver || 'none'}   runtime: ${i.cuda.runtime || 'none'}`);
  }
  for (const [fam, v] of Object.entries(i.cpu.kernels)) lines.push(`  ${fam.padEnd(14)} ${v}`);
  for (const d of i.cuda.devices) {
    lines.push(`  [${d.index}] ${d.name}  sm_${d.computeCapability.replace('.', '')}  ${d.multiprocessors} SMs  ${gib(d.freeMemory)} free / ${gib(d.totalMemory)}`);
  }
  return `${lines.join('\n')}\n`;
}
