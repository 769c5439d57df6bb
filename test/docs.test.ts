// The docs that ship (issue 16): every docs/*.md that the help, the report, the README or the source
// cite exists and is packed (package.json "files"); nothing user-facing cites the spec file the package
// does not contain (ALGORITHM.md); the README's example --config file is one the CLI accepts.
import { describe, it, expect } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../lib/paths.js';
import { budget } from './helpers/time.js';

const ROOT = packageRoot();

function files(dir: string, ext: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p, ext) : p.endsWith(ext) ? [p] : [];
  });
}

describe('docs/', () => {
  it('every cited docs/*.md exists, and docs/ is in the package', () => {
    const sources = [...files(join(ROOT, 'lib'), '.ts'), join(ROOT, 'README.md'), ...files(join(ROOT, 'docs'), '.md')];
    const cited = new Set<string>();
    for (const f of sources) for (const m of readFileSync(f, 'utf8').matchAll(/docs\/([\w.-]+\.md)/g)) cited.add(m[1]!);
    expect(cited.size).toBeGreaterThanOrEqual(2);
    for (const c of cited) expect(existsSync(join(ROOT, 'docs', c)), `docs/${c}`).toBe(true);
    // links between the docs pages resolve too
    for (const f of files(join(ROOT, 'docs'), '.md')) for (const m of readFileSync(f, 'utf8').matchAll(/\]\(([\w.-]+\.md)(#[\w-]+)?\)/g)) expect(existsSync(join(ROOT, 'docs', m[1]!)), `${f} -> ${m[1]}`).toBe(true);
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { files: string[] };
    expect(pkg.files).toContain('docs/');
  });

  it('the help, the report, the CLI sources and the README cite docs/, not ALGORITHM.md', () => {
    const userFacing = [...files(join(ROOT, 'lib', 'cli'), '.ts'), join(ROOT, 'README.md'), ...files(join(ROOT, 'docs'), '.md')];
    for (const f of userFacing) expect(readFileSync(f, 'utf8'), f).not.toContain('ALGORITHM.md');
    const report = readFileSync(join(ROOT, 'lib', 'cli', 'eval_report.ts'), 'utf8');
    expect(report).toContain('docs/algorithm.md');
    expect(readFileSync(join(ROOT, 'lib', 'cli', 'eval.ts'), 'utf8')).toContain('docs/metrics.md');
  });

  it.skipIf(!existsSync(join(ROOT, 'dist', 'cli.js')))("the README's example --config file is accepted as written", async () => {
    const yaml = readFileSync(join(ROOT, 'README.md'), 'utf8').match(/```yaml\n([\s\S]*?)```/)?.[1];
    expect(yaml).toBeDefined();
    const tmp = mkdtempSync(join(tmpdir(), 'repair-docs-'));
    try {
      const f = join(tmp, 'hparams.yaml');
      writeFileSync(f, yaml!);
      const r = await new Promise<{ code: number; stdout: string; stderr: string }>((res) =>
        execFile(process.execPath, [join(ROOT, 'dist', 'cli.js'), 'edit', '--config', f, '--print-config'], { cwd: ROOT, env: { ...process.env, REPAIR_BACKEND: 'cpu' }, timeout: budget(60_000) }, (err, stdout, stderr) =>
          res({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
        ),
      );
      expect(r.code, r.stderr).toBe(0);
      const c = JSON.parse(r.stdout);
      expect(c.editor.method).toBe('repair');
      expect(c.editor.nIter).toBe(40);
      expect(c.editor.repair.tauCorrect).toBe(0.9);
      expect(c.threads).toBe(2);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
