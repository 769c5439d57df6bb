// `repair-edit memory ls | show ID | rollback ID` on a memory file written by `repair-edit edit`, run as
// a user runs them (node dist/cli.js) on the shipped stories260K.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../lib/paths.js';
import { TIME_FACTOR as factor } from './helpers/time.js';
import { cliRunner } from './helpers/cli.js';

const ROOT = packageRoot();
const CLI = join(ROOT, 'dist', 'cli.js');
const ready = existsSync(CLI) && existsSync(join(ROOT, 'models', 'stories260K', 'config.json'));

const cli = cliRunner('dist', { timeoutMs: 120_000, env: { REPAIR_BACKEND: 'cpu' } });

let tmp = '';
let mem = '';
beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-cli-memory-'));
  if (!ready) return;
  const edits = join(tmp, 'edits.jsonl');
  writeFileSync(
    edits,
    [
      { id: 'zog', prompt: 'The wizard Zog lived in', target: 'a purple castle', rephrase: 'Zog the wizard made his home in' },
      { id: 'blix', prompt: 'The dragon Blix liked to eat', target: 'blue cheese' },
    ].map((r) => JSON.stringify(r)).join('\n') + '\n',
  );
  mem = join(tmp, 'm.safetensors');
  const r = await cli(['edit', '--edits', edits, '--out', mem, '--n-iter', '20']);
  expect(r.code, r.stderr).toBe(0);
}, 180_000 * factor);
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!ready)('CLI memory', () => {
  it('ls lists the memories and every edit with its prompt and target (table and JSON)', async () => {
    const t = await cli(['memory', 'ls', '--memory', mem]);
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/2 edits in effect/);
    expect(t.stdout).toMatch(/zog\s+working\s+The wizard Zog lived in\s+a purple castle/);
    const j = JSON.parse((await cli(['memory', 'ls', '--memory', mem, '--json'])).stdout);
    expect(j.edits.map((e: { id: string }) => e.id)).toEqual(['zog', 'blix']);
    expect(j.memories[0]).toMatchObject({ name: 'working', kind: 'working' });
    expect(j.memories[0].threshold).toBeGreaterThan(0);
  }, 120_000 * factor);

  it('show prints one edit; an unknown id is ERR_UNKNOWN_EDIT naming the ids there', async () => {
    const s = await cli(['memory', 'show', 'zog', '--memory', mem, '--json']);
    expect(s.code, s.stderr).toBe(0);
    expect(JSON.parse(s.stdout)).toMatchObject({ id: 'zog', memory: 'working', request: { prompt: 'The wizard Zog lived in', target: 'a purple castle', rephrase: 'Zog the wizard made his home in' } });
    const bad = await cli(['memory', 'show', 'nope', '--memory', mem]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/ERR_UNKNOWN_EDIT: .* holds no edit "nope" \(its edits: zog, blix\)/);
  }, 120_000 * factor);

  it('rollback removes the edit and saves to --out, leaving the original file as it was', async () => {
    const out = join(tmp, 'm2.safetensors');
    const r = await cli(['memory', 'rollback', 'zog', '--memory', mem, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/rolled back zog \(working\); 1 edit left; saved/);
    const after = JSON.parse((await cli(['memory', 'ls', '--memory', out, '--json'])).stdout);
    expect(after.edits.map((e: { id: string }) => e.id)).toEqual(['blix']);
    const before = JSON.parse((await cli(['memory', 'ls', '--memory', mem, '--json'])).stdout);
    expect(before.edits).toHaveLength(2);
  }, 240_000 * factor);
});

describe.skipIf(!ready)('CLI edit: Ctrl-C keeps finished work, --resume continues', () => {
  it('an interrupted edit saves every finished edit (exit 130) and --resume trains only the rest', async () => {
    const edits = join(tmp, 'many.jsonl');
    const lines: string[] = [];
    for (let k = 0; k < 8; k++) lines.push(JSON.stringify({ id: `f${k}`, prompt: `The wizard number ${k} lived in`, target: `castle ${k}` }));
    writeFileSync(edits, lines.join('\n') + '\n');
    const out = join(tmp, 'resume.safetensors');
    const first = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const p = spawn(process.execPath, [CLI, 'edit', '--edits', edits, '--out', out, '--n-iter', '200', '--checkpoint-secs', '0'], { cwd: ROOT, env: { ...process.env, REPAIR_BACKEND: 'cpu' } });
      let err = '';
      let sent = false;
      p.stderr.on('data', (d: Buffer) => {
        err += d.toString();
        if (!sent && /edit 2\/8/.test(err)) {
          sent = true;
          p.kill('SIGINT');
        }
      });
      p.on('exit', (code) => resolve({ code, stderr: err }));
    });
    expect(first.code, first.stderr).toBe(130);
    expect(first.stderr).toMatch(/interrupted: .* holds the \d+ finished edits?; run the same command with --resume/);
    const held = JSON.parse((await cli(['memory', 'ls', '--memory', out, '--json'])).stdout).edits.map((e: { id: string }) => e.id);
    expect(held.length).toBeGreaterThanOrEqual(2);
    expect(held.length).toBeLessThan(8);
    expect(held).toEqual(Array.from({ length: held.length }, (_, k) => `f${k}`));
    const second = await cli(['edit', '--edits', edits, '--out', out, '--n-iter', '200', '--resume', '--json']);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toMatch(new RegExp(`resuming .*: ${held.length} of 8 edits already held, ${8 - held.length} to go`));
    expect(JSON.parse(second.stdout).results).toHaveLength(8 - held.length);
    const all = JSON.parse((await cli(['memory', 'ls', '--memory', out, '--json'])).stdout).edits.map((e: { id: string }) => e.id);
    expect(all).toEqual(Array.from({ length: 8 }, (_, k) => `f${k}`));
  }, 600_000 * factor);
});
