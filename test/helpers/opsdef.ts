// opsdef.ts — the op list of native/ops.def as the tests read it: each RE_OP line's op name and family file
// (native/cpu/<file>.cpp, cuda/<file>.cu, test/ops_<file>.test.ts). Used by op_list.test.ts (the tree against the
// list), optest.test.ts (runOp's table) and gpu_check.test.ts (every family's test file is discovered).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../../lib/paths.js';

export interface OpLine {
  name: string;
  file: string;
}
export function opList(): OpLine[] {
  const src = readFileSync(join(packageRoot(), 'native', 'ops.def'), 'utf8');
  const out: OpLine[] = [];
  for (const m of src.matchAll(/^RE_OP\((\w+),\s*(\w+),/gm)) out.push({ name: m[1]!, file: m[2]! });
  return out;
}
/** The op families (family files), in ops.def order. */
export const opFamilies = (): string[] => [...new Set(opList().map((o) => o.file))];
/** The ops of the given families, in ops.def order. */
export const opsOf = (...families: string[]): string[] => opList().filter((o) => families.includes(o.file)).map((o) => o.name);
