// readme.test.ts — every ```js block of README.md runs as written (Node >= 20.19, the package as a
// consumer imports it: a temp project whose node_modules/repair-edit links to this checkout's built
// dist/), on the shipped model. A block that throws or exits non-zero fails here.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../lib/paths.js';
import { budget as timeBudget } from './helpers/time.js';

const root = packageRoot();
const blocks = [...readFileSync(join(root, 'README.md'), 'utf8').matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]!);
const built = existsSync(join(root, 'dist', 'index.js'));
let tmp = '';

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-readme-'));
  mkdirSync(join(tmp, 'node_modules'));
  symlinkSync(root, join(tmp, 'node_modules', 'repair-edit'), 'dir');
  writeFileSync(join(tmp, 'package.json'), '{ "name": "readme-check", "private": true, "type": "module" }\n');
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function run(file: string): Promise<{ code: number; out: string }> {
  return new Promise((res) => {
    execFile(process.execPath, [file], { cwd: tmp, timeout: timeBudget(240_000), env: { ...process.env, REPAIR_BACKEND: 'cpu' } }, (err, stdout, stderr) => {
      res({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: `${stdout}\n${stderr}` });
    });
  });
}

describe.skipIf(!built)('README code blocks', () => {
  it('has js blocks to run', () => expect(blocks.length).toBeGreaterThanOrEqual(2));
  blocks.forEach((code, i) => {
    it(`block ${i + 1} runs as written`, async () => {
      const file = join(tmp, `block${i + 1}.mjs`);
      writeFileSync(file, code);
      const r = await run(file);
      expect(r.code, r.out.slice(-2000)).toBe(0);
    }, timeBudget(300_000));
  });
  it('require() of the package works (CommonJS consumers)', async () => {
    const file = join(tmp, 'req.cjs');
    writeFileSync(file, "const { Editor, loadModel, info } = require('repair-edit'); if (typeof Editor !== 'function' || typeof loadModel !== 'function') process.exit(3); console.log(info().version);\n");
    const r = await run(file);
    expect(r.code, r.out).toBe(0);
  }, timeBudget(60_000));
});
