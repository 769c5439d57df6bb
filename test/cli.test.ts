// The CLI, run as a user runs it (tsx lib/cli.ts ...): exit codes, one-line errors, exact greedy text.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync, mkdirSync, copyFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../lib/native.js';
import { packageRoot } from '../lib/paths.js';
import { cliRunner } from './helpers/cli.js';

const ROOT = packageRoot();
const STORIES = join(ROOT, '..', 'shared', 'models', 'stories260K', 'hf');
const haveStories = existsSync(join(STORIES, 'config.json'));
const haveDemo = existsSync(join(ROOT, 'models', 'stories260K', 'config.json'));
const haveAddon = (() => {
  try {
    native();
    return true;
  } catch {
    return false;
  }
})();
if (!haveAddon) console.warn('[cli.test] the native addon is not built: CLI runs that load a model are skipped');
if (!haveStories) console.warn(`[cli.test] ${STORIES} is absent: CLI runs on stories260K are skipped`);

const cli = cliRunner('source', { timeoutMs: 60_000 });

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-cli-'));
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

const ref: { cases: { prompt: string; greedy_32_ids: number[]; greedy_32_text: string }[] } = haveStories
  ? JSON.parse(readFileSync(join(STORIES, 'reference_outputs.json'), 'utf8'))
  : { cases: [] };

describe('CLI usage and errors', () => {
  it('--help exits 0 and lists the commands', async () => {
    const r = await cli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/info/);
    expect(r.stdout).toMatch(/generate/);
  });

  it('usage errors exit 2 with one repair-edit line', async () => {
    const cases = [['bogus'], ['generate'], ['generate', '--max-new-tokens', 'x', 'hi'], ['generate', '--backend', 'tpu', 'hi'], ['generate', '--top-p', '2', 'hi']];
    const runs = await Promise.all(cases.map((args) => cli(args)));
    for (const [i, r] of runs.entries()) {
      expect(r.code, cases[i]!.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^repair-edit: ERR_USAGE: /);
      expect(r.stdout).toBe('');
    }
  });

  it('runtime errors: one line `repair-edit: <code>: <message>`, exit 1, stack only with --verbose', async () => {
    const missing = join(tmp, 'nope');
    const r = await cli(['generate', '--model', missing, 'hi']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`repair-edit: ERR_IO: model folder ${missing} does not exist\n`);
    const v = await cli(['--verbose', 'generate', '--model', missing, 'hi']);
    expect(v.code).toBe(1);
    expect(v.stderr.split('\n')[0]).toMatch(/^repair-edit: ERR_IO: /);
    expect(v.stderr).toMatch(/\n\s+at /);
  });

  it.skipIf(!haveStories)('an unsupported architecture is named', async () => {
    const d = join(tmp, 'bert');
    mkdirSync(d);
    for (const f of readdirSync(STORIES)) copyFileSync(join(STORIES, f), join(d, f));
    const c = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
    writeFileSync(join(d, 'config.json'), JSON.stringify({ ...c, model_type: 'bert' }));
    const r = await cli(['generate', '--model', d, 'hi']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^repair-edit: ERR_UNSUPPORTED_ARCH: .*"bert"/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });
});

describe.skipIf(!haveAddon)('CLI info', () => {
  it('prints a summary and --json', async () => {
    const r = await cli(['info']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/repair-edit \d+\.\d+\.\d+/);
    expect(r.stdout).toMatch(/backends built: +cpu/);
    const j = await cli(['info', '--json']);
    expect(j.code).toBe(0);
    const info = JSON.parse(j.stdout);
    expect(info.backends).toContain('cpu');
    expect(typeof info.cuda.available).toBe('boolean');
    expect(info.cpu.threads).toBeGreaterThan(0);
    if (!info.cuda.available) expect(info.cuda.reason).not.toBe('');
  });
});

describe.skipIf(!haveAddon || !haveStories)('CLI generate on stories260K', () => {
  it('greedy output is exactly the reference text plus a newline, for every case', async () => {
    const runs = await Promise.all(
      ref.cases.map((c) => cli(['generate', '--model', STORIES, '--temperature', '0', '--max-new-tokens', '32', '--backend', 'cpu', c.prompt])),
    );
    for (const [i, r] of runs.entries()) {
      const c = ref.cases[i]!;
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`${c.greedy_32_text}\n`);
    }
  });

  it('--json prints the result object', async () => {
    const c = ref.cases[0]!;
    const r = await cli(['generate', '--model', STORIES, '--max-new-tokens', '32', '--json', c.prompt]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.text).toBe(c.greedy_32_text);
    expect(j.tokens).toEqual(c.greedy_32_ids);
    expect(j.finishReason).toBe('length');
    expect(['cpu', 'cuda']).toContain(j.backend);
  });

  it('--stop (repeatable) cuts the text; sampling with a seed is reproducible', async () => {
    const c = ref.cases[0]!;
    const r = await cli(['generate', '--model', STORIES, '--max-new-tokens', '32', '--stop', 'zzz', '--stop', 'Lily', c.prompt]);
    expect(r.stdout).toBe('Once upon a time, there was a little girl named \n');
    const sampled = ['generate', '--model', STORIES, '--temperature', '1', '--seed', '5', '--max-new-tokens', '24', c.prompt];
    const [a, b] = await Promise.all([cli(sampled), cli(sampled)]);
    expect(a.code).toBe(0);
    expect(a.stdout).toBe(b.stdout);
  });

  it('a prompt longer than the context → ERR_CONTEXT_LENGTH, exit 1', async () => {
    const r = await cli(['generate', '--model', STORIES, '--context-length', '4', 'Once upon a time']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^repair-edit: ERR_CONTEXT_LENGTH: the prompt has 5 tokens, longer than the context length 4\n$/);
  });

  it('REPAIR_BACKEND=cpu is honoured by --backend auto', async () => {
    const r = await cli(['generate', '--model', STORIES, '--max-new-tokens', '4', '--json', 'Once'], { REPAIR_BACKEND: 'cpu' });
    expect(JSON.parse(r.stdout).backend).toBe('cpu');
  });

  it.skipIf(!haveDemo)('--model defaults to the shipped demo model', async () => {
    const c = ref.cases[0]!;
    const r = await cli(['generate', '--max-new-tokens', '32', c.prompt]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${c.greedy_32_text}\n`);
  });
});
