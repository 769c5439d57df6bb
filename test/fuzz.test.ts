// A bounded slice of `npm run fuzz` (scripts/fuzz/): a fixed seed, every kind of case and fault script,
// stopped after a time budget. No crash, hang, untyped error, NaN output, accepted tampered memory file
// or broken fault-script promise is allowed; the long run's table is in bench/results/fuzz-*.md.
import { describe, it, expect } from 'vitest';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { packageRoot } from '../lib/paths.js';
import { budget } from './helpers/time.js';

const ROOT = packageRoot();
const TSX = join(ROOT, 'node_modules', '.bin', 'tsx');

describe('fuzz slice', () => {
  it('a seeded slice of every case kind: 0 crashes, hangs, untyped errors, NaN outputs, tampered files accepted, fault violations', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'repair-fuzz-test-'));
    try {
      const out = join(dir, 'fuzz.json');
      const seconds = Math.round(budget(40_000) / 1000);
      const { code, stdout } = await new Promise<{ code: number | null; stdout: string }>((res) => {
        execFile(TSX, ['scripts/fuzz/run.ts', '--seed', '14', '--cases', '100000', '--max-seconds', String(seconds), '--hang-ms', String(budget(30_000)), '--quiet', '--json', out], { cwd: ROOT, timeout: budget(110_000), env: { ...process.env, REPAIR_BACKEND: 'cpu' } }, (err, stdout) => res({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout }));
      });
      const s = JSON.parse(readFileSync(out, 'utf8')) as { cases: number; all: Record<string, number>; rows: Record<string, unknown>; findings: unknown[] };
      expect(s.findings, stdout).toEqual([]);
      expect(s.all.untyped + s.all.crashes + s.all.hangs + s.all.nan + s.all.tampered + s.all.violations).toBe(0);
      expect(code).toBe(0);
      expect(s.cases).toBeGreaterThan(100);
      // every input kind is exercised
      for (const k of ['safetensors', 'config', 'tokenizer', 'memory', 'dataset', 'request', 'abort']) expect(Object.keys(s.rows)).toContain(k);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
