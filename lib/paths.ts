// paths.ts — find the package root by walking up to package.json (works from lib/ via tsx and from dist/).
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | undefined;

export function packageRoot(): string {
  if (root) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        if (JSON.parse(readFileSync(pj, 'utf8')).name === 'repair-edit') return (root = dir);
      } catch {
        /* keep walking */
      }
    }
    const up = dirname(dir);
    if (up === dir) throw new Error('repair-edit: cannot find the package root (package.json)');
    dir = up;
  }
}

/** The model shipped in the package (stories260K, MIT): a tiny story model for demos and smoke tests. */
export function shippedModelDir(): string {
  return join(packageRoot(), 'models', 'stories260K');
}
