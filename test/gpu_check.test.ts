// CI slice of scripts/gpu-check.sh, so the device check cannot rot between the rare GPU windows: its discovery of
// test files with CUDA cases, and one --dry-run --ci pass on the CPU backend over a minimal file set (stage 4 on
// test/cuda_info.test.ts, then the e2e stage comparing two CPU kernel levels, the scale stage on a tiny generated
// model). The script must write gpu-results.md with every stage and count, and must fail when a stage fails.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../lib/paths.js';
import { opFamilies } from './helpers/opsdef.js';

const root = packageRoot();
const script = join(root, 'scripts', 'gpu-check.sh');
const haveAddon = existsSync(join(root, 'build', 'Release', 'repair_edit.node'));
if (!haveAddon) console.warn('[gpu_check.test] the addon is not built: the dry run is skipped');

function run(args: string[], dir: string, extra: Record<string, string> = {}): { code: number; out: string; results: string } {
  const env = { ...process.env, ...extra, GPU_RESULTS: join(dir, 'gpu-results.md'), GPU_LOGDIR: join(dir, 'logs'), OUT: '' };
  const r = spawnSync('bash', [script, ...args], { cwd: root, env, encoding: 'utf8', timeout: 240_000 });
  const results = existsSync(env.GPU_RESULTS) ? readFileSync(env.GPU_RESULTS, 'utf8') : '';
  return { code: r.status ?? -1, out: `${r.stdout}\n${r.stderr}`, results };
}

describe('scripts/gpu-check.sh', () => {
  it('finds every test file with CUDA cases (not a hand-kept list)', () => {
    const r = spawnSync('bash', [script, '--list'], { cwd: root, encoding: 'utf8' });
    expect(r.status).toBe(0);
    const files = r.stdout.trim().split('\n');
    // every op family's file (native/ops.def), whether or not it names CUDA itself, and the other CUDA-vs-CPU files
    const families = opFamilies();
    expect(families.length).toBeGreaterThan(0);
    for (const f of families) expect(files).toContain(`test/ops_${f}.test.ts`);
    for (const f of ['optest', 'parity', 'model', 'elementwise_big']) expect(files).toContain(`test/${f}.test.ts`);
    expect(files).not.toContain('test/e2e_cuda.test.ts'); // its own stage
    expect(files.every((f) => existsSync(join(root, f)))).toBe(true);
  });

  describe.skipIf(!haveAddon)('--dry-run --ci', () => {
    let dir = '';
    let ok: ReturnType<typeof run>;
    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), 'gpu-check-'));
      ok = run(['--dry-run', '--ci', 'test/cuda_info.test.ts'], join(dir, 'ok'));
    }, 240_000);
    afterAll(() => {
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it('passes and writes gpu-results.md with every stage, its time and the test counts', () => {
      if (ok.code !== 0) console.log(ok.out.slice(-4000));
      expect(ok.code).toBe(0);
      const md = ok.results;
      expect(md).toMatch(/^# GPU check \(dry run on the CPU backend\)/);
      expect(md).toMatch(/Overall: PASS/);
      for (const stage of ['device', 'build', 'info', 'tests', 'e2e', 'scale']) expect(md).toMatch(new RegExp(`^\\| ${stage} \\|`, 'm'));
      expect(md).toMatch(/^\| info \| ok \(cpu\) \| \d+ s \|$/m);
      const row = /^\| test\/cuda_info\.test\.ts \| passed \| (\d+) \| 0 \| \d+ \| \d+ s \|$/m.exec(md);
      expect(row, md).not.toBeNull();
      expect(Number(row![1])).toBeGreaterThan(0);
      expect(md).toMatch(/^\| test\/e2e_cuda\.test\.ts \| passed \| [1-9]\d* \| 0 \|/m);
      expect(md).toMatch(/^\| scale \| ok \([\d.]+ ms per edit\) \|/m);
      expect(md).toMatch(/## 8B-scale bench \(cpu; tiny shape/);
      expect(ok.out).toMatch(/--- e2e: ok \(\d+ s, \d+ s since start\)/); // each stage prints its time
    });

    it('fails (exit 1, Overall: FAIL) when a test file fails', () => {
      const bad = run(['--dry-run', '--ci', 'test/no-such-file.test.ts'], join(dir, 'bad'), { SKIP_E2E: '1', SKIP_SCALE: '1' });
      expect(bad.code).toBe(1);
      expect(bad.results).toMatch(/Overall: FAIL/);
      expect(bad.results).toMatch(/^\| test\/no-such-file\.test\.ts \| FAILED \|/m);
    }, 240_000);
  });
});
