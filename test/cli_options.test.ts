// The CLI's shared conventions (issue 16), run as a user runs them (node dist/cli.js) on the shipped
// stories260K: --json prints JSON on stdout and --json-file F writes the same JSON to F on every command
// with output (eval's old `--json FILE` still works, with a warning); --config FILE (JSON or YAML) under
// the command-line flags, checked by the API's validation (ERR_CONFIG naming the key) on every command
// that takes it, the load-only ones too; --print-config; a memory file used with another model says which
// --model to pass; the edit table's per-edit figures for REPAIR batches; and an interrupted eval (SIGINT,
// SIGTERM) writing its finished runs marked partial (the run in progress: test/cli_eval_interrupt.test.ts).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../lib/paths.js';
import { budget } from './helpers/time.js';
import { cliRunner } from './helpers/cli.js';

const ROOT = packageRoot();
const CLI = join(ROOT, 'dist', 'cli.js');
const DEMO = join(ROOT, 'models', 'stories260K');
const FACTS = join(ROOT, '..', 'shared', 'models', 'facts-llama');
const ready = existsSync(CLI) && existsSync(join(DEMO, 'config.json'));
if (!ready) console.warn('[cli_options.test] dist/cli.js (npx tsc) or models/stories260K is missing: skipped');

const cli = cliRunner('dist', { timeoutMs: 120_000, env: { REPAIR_BACKEND: 'cpu' } });

let tmp = '';
let edits = '';
let mem = '';
const file = (name: string, text: string): string => {
  const f = join(tmp, name);
  writeFileSync(f, text);
  return f;
};
const EDITS = [
  { id: 'zog', prompt: 'The wizard Zog lived in', target: 'a purple castle', rephrase: 'Zog the wizard made his home in', locality: [{ prompt: 'Once upon a time', answer: 'there was a little girl' }] },
  { id: 'blix', prompt: 'The dragon Blix liked to eat', target: 'blue cheese', rephrase: 'The favourite food of Blix was', locality: [{ prompt: 'Lily and Tom went to the', answer: 'park to play' }] },
  { id: 'pim', prompt: 'Captain Pim sailed a ship called', target: 'the Silver Fox', rephrase: 'The ship of Captain Pim was called', locality: [{ prompt: 'The sun was', answer: 'shining' }] },
];

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-cli-options-'));
  edits = file('edits.jsonl', EDITS.map((e) => JSON.stringify(e)).join('\n') + '\n');
  if (!ready) return;
  mem = join(tmp, 'm.safetensors');
  const r = await cli(['edit', '--edits', edits, '--out', mem, '--n-iter', '15']);
  expect(r.code, r.stderr).toBe(0);
}, budget(180_000));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!ready)('--json and --json-file mean the same on every command', () => {
  it('every command with output lists both in its help', async () => {
    const cmds = [['info'], ['generate'], ['edit'], ['explain'], ['memory', 'ls'], ['memory', 'show'], ['memory', 'rollback'], ['eval'], ['demo']];
    const helps = await Promise.all(cmds.map((c) => cli([...c, '--help'])));
    for (const [i, h] of helps.entries()) {
      expect(h.code, cmds[i]!.join(' ')).toBe(0);
      expect(h.stdout, cmds[i]!.join(' ')).toMatch(/--json\b/);
      expect(h.stdout, cmds[i]!.join(' ')).toContain('--json-file <file>');
    }
  });

  it('--json: JSON on stdout; --json-file F: the same JSON in F and the text on stdout', async () => {
    const cases: [string, string[], string][] = [
      ['info', ['info'], 'version'],
      ['generate', ['generate', '--max-new-tokens', '4', 'Once upon a time'], 'text'],
      ['generate --memory', ['generate', '--memory', mem, '--max-new-tokens', '4', EDITS[0]!.prompt], 'route'],
      ['explain', ['explain', '--memory', mem, EDITS[1]!.prompt], 'scores'],
      ['memory ls', ['memory', 'ls', '--memory', mem], 'edits'],
      ['memory show', ['memory', 'show', 'blix', '--memory', mem], 'request'],
      ['eval', ['eval', '--data', edits, '--n', '1', '--n-iter', '5', '--metrics', 'tf', '--routing', 'off'], 'results'],
    ];
    for (const [name, args, key] of cases) {
      const f = join(tmp, `${name.replace(/\W+/g, '_')}.json`);
      const [j, t] = await Promise.all([cli([...args, '--json']), cli([...args, '--json-file', f])]);
      expect(j.code, `${name}: ${j.stderr}`).toBe(0);
      expect(t.code, `${name}: ${t.stderr}`).toBe(0);
      const a = JSON.parse(j.stdout);
      const b = JSON.parse(readFileSync(f, 'utf8'));
      expect(a, name).toHaveProperty(key);
      expect(Object.keys(b).sort(), name).toEqual(Object.keys(a).sort());
      expect(() => JSON.parse(t.stdout), `${name}: text on stdout`).toThrow();
      expect(t.stdout.length, name).toBeGreaterThan(0);
    }
    // edit and memory rollback write files: both forms on fresh outputs
    const e = await cli(['edit', '--edits', edits, '--out', join(tmp, 'e2.safetensors'), '--n-iter', '5', '--json-file', join(tmp, 'edit.json')]);
    expect(e.code, e.stderr).toBe(0);
    expect(JSON.parse(readFileSync(join(tmp, 'edit.json'), 'utf8')).results).toHaveLength(3);
    expect(e.stdout).toMatch(/^id\s+line\s+edit CE/);
    const rb = await cli(['memory', 'rollback', 'zog', '--memory', mem, '--out', join(tmp, 'rb.safetensors'), '--json']);
    expect(rb.code, rb.stderr).toBe(0);
    expect(JSON.parse(rb.stdout)).toMatchObject({ id: 'zog', editsLeft: 2 });
  });

  it("eval's old form --json FILE still writes the file, with a deprecation warning; a --json-file in a missing folder fails early", async () => {
    const f = join(tmp, 'old.json');
    const r = await cli(['eval', '--data', edits, '--n', '1', '--n-iter', '5', '--metrics', 'tf', '--routing', 'off', '--json', f]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: --json FILE is deprecated; use --json-file/);
    expect(JSON.parse(readFileSync(f, 'utf8')).format).toBe('repair-edit.eval-run');
    expect(r.stdout).toMatch(/^repair-edit eval: /);
    const bad = await cli(['info', '--json-file', join(tmp, 'no', 'such', 'x.json')]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^repair-edit: ERR_IO: cannot write .*x\.json \(--json-file\)/);
  });
});

describe.skipIf(!ready)('--config FILE and --print-config', () => {
  const printed = async (args: string[]) => {
    const r = await cli([...args, '--print-config']);
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    return JSON.parse(r.stdout);
  };

  it('YAML or JSON; the flags override the file, the file overrides the preset', async () => {
    const yaml = file('c.yaml', '# hyper-parameters\nlr: 0.5\nnIter: 7\nsaveFreq: 2\nmergeFreq: 4\nthreads: 1\nmethod: repair\nrepair:\n  batchSize: 3\n');
    const json = file('c.json', JSON.stringify({ lr: 0.25, nIter: 11, backend: 'cpu' }));
    const [preset, y, yFlag, j] = await Promise.all([
      printed(['edit']),
      printed(['edit', '--config', yaml]),
      printed(['edit', '--config', yaml, '--n-iter', '9', '--threads', '2']),
      printed(['edit', '--config', json]),
    ]);
    expect(preset.configFile).toBeNull();
    expect(y.configFile).toBe(yaml);
    expect(y.editor).toMatchObject({ method: 'repair', lr: 0.5, nIter: 7, saveFreq: 2, mergeFreq: 4 });
    expect(y.editor.repair.batchSize).toBe(3);
    expect(y.threads).toBe(1);
    expect(yFlag.editor.nIter).toBe(9); // the flag wins
    expect(yFlag.editor.lr).toBe(0.5); // the file still applies where no flag is given
    expect(yFlag.threads).toBe(2);
    expect(j.editor).toMatchObject({ method: 'wise', lr: 0.25, nIter: 11 });
    expect(preset.editor.nIter).not.toBe(7);
    expect(preset.editor.lr).not.toBe(0.5);
    // eval resolves one editor configuration per row; the file's method stands for --method
    const ev = await printed(['eval', '--config', yaml, '--ablate', 'kd']);
    expect(ev.variants.map((v: { label: string }) => v.label)).toEqual(['repair', 'repair -kd']);
    expect(ev.variants[0].editor.repair).toMatchObject({ batchSize: 3, kd: true });
    expect(ev.variants[1].editor.repair).toMatchObject({ batchSize: 3, kd: false });
    const ev2 = await printed(['eval', '--config', yaml, '--method', 'wise']);
    expect(ev2.variants.map((v: { editor: { method: string; lr: number } }) => [v.editor.method, v.editor.lr])).toEqual([['wise', 0.5]]);
    // commands that load a saved memory: runtime keys apply, the memory's own configuration is shown
    const g = await printed(['generate', '--memory', mem, '--config', yaml, 'x']);
    expect(g.threads).toBe(1);
    expect(g.editor.nIter).toBe(15);
    expect(g.ignored).toEqual(expect.arrayContaining(['lr', 'nIter']));
  });

  it('a config file edits for real: its options reach the editor', async () => {
    const c = file('real.yml', 'nIter: 4\n');
    const r = await cli(['edit', '--edits', edits, '--out', join(tmp, 'cfg.safetensors'), '--config', c, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.config.nIter).toBe(4);
    for (const x of j.results) expect(x.steps).toBeLessThanOrEqual(4);
  });

  it('errors: ERR_CONFIG naming the file and the bad key (the API validation), ERR_IO for a missing file', async () => {
    const cases: [string, string, string[], RegExp][] = [
      ['neg.json', '{"lr": -1}', ['edit', '--edits', edits, '--out', join(tmp, 'x.safetensors')], /ERR_CONFIG: .*neg\.json: key "lr": editor option lr must be a number > 0, got -1/],
      ['typo.yaml', 'nIters: 3\n', ['eval', '--data', edits, '--n', '1'], /ERR_CONFIG: .*typo\.yaml: key "nIters": unknown editor option 'nIters'/],
      ['rep.yaml', 'method: repair\nrepair:\n  window: 0\n', ['edit', '--edits', edits, '--out', join(tmp, 'x.safetensors')], /ERR_CONFIG: .*rep\.yaml: key "repair\.window": repair option window must be/],
      ['be.yaml', 'backend: tpu\n', ['info'], /unknown option '--config'|ERR_USAGE/],
      ['be2.yaml', 'backend: tpu\n', ['explain', '--memory', mem, 'x'], /ERR_CONFIG: .*be2\.yaml: key "backend": must be auto, cpu or cuda/],
      ['broken.yaml', 'lr: [1, 2\n', ['edit', '--print-config'], /ERR_CONFIG: .*broken\.yaml: not valid YAML/],
      ['list.yaml', '- 1\n- 2\n', ['edit', '--print-config'], /ERR_CONFIG: .*list\.yaml: must hold one mapping/],
    ];
    const runs = await Promise.all(cases.map(([name, text, args]) => cli([...args, '--config', file(name, text)])));
    for (const [i, r] of runs.entries()) {
      const [name, , , re] = cases[i]!;
      expect(r.code, `${name}: ${r.stderr}`).toBe(name === 'be.yaml' ? 2 : 1);
      expect(r.stderr.trim().split('\n'), name).toHaveLength(1);
      expect(r.stderr, name).toMatch(re);
    }
    const missing = await cli(['edit', '--print-config', '--config', join(tmp, 'nope.yaml')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^repair-edit: ERR_IO: cannot read the config file .*nope\.yaml: it does not exist/);
    expect(existsSync(join(tmp, 'x.safetensors'))).toBe(false);
  });
});

describe.skipIf(!ready)('--config editor keys are validated on every command that takes --config', () => {
  it('generate, explain, memory ls/show/rollback: ERR_CONFIG naming the file and the key, as the API validates', async () => {
    const out = join(tmp, 'rolled.safetensors');
    const cases: [string, string, string[], RegExp][] = [
      ['g-typo.yaml', 'nIters: 3\n', ['generate', '--max-new-tokens', '2', 'x'], /ERR_CONFIG: .*g-typo\.yaml: key "nIters": unknown editor option 'nIters'/],
      ['g-neg.json', '{"lr": -1}', ['generate', '--memory', mem, '--max-new-tokens', '2', 'x'], /ERR_CONFIG: .*g-neg\.json: key "lr": editor option lr must be a number > 0, got -1/],
      ['g-print.yaml', 'layer: 99\n', ['generate', '--print-config', 'x'], /ERR_CONFIG: .*g-print\.yaml: key "layer": editor option layer must be an integer in \[0, \d\]/],
      ['x-rep.yaml', 'method: repair\nrepair:\n  window: 0\n', ['explain', '--memory', mem, 'x'], /ERR_CONFIG: .*x-rep\.yaml: key "repair\.window": repair option window must be/],
      ['ls-typo.yaml', 'saveFrq: 2\n', ['memory', 'ls', '--memory', mem], /ERR_CONFIG: .*ls-typo\.yaml: key "saveFrq": unknown editor option 'saveFrq'/],
      ['show-freq.yaml', 'saveFreq: 3\nmergeFreq: 4\n', ['memory', 'show', '--memory', mem, 'zog'], /ERR_CONFIG: .*show-freq\.yaml: key "mergeFreq": editor option mergeFreq \(4\) must be a multiple of saveFreq \(3\)/],
      ['rb-wise.yaml', 'repair:\n  window: 4\n', ['memory', 'rollback', '--memory', mem, 'zog', '--out', out], /ERR_CONFIG: .*rb-wise\.yaml: key "repair": editor option repair is only for method 'repair'/],
    ];
    const runs = await Promise.all(cases.map(([name, text, args]) => cli([...args, '--config', file(name, text)])));
    for (const [i, r] of runs.entries()) {
      const [name, , , re] = cases[i]!;
      expect(r.code, `${name}: ${r.stderr}`).toBe(1);
      expect(r.stderr.trim().split('\n'), name).toHaveLength(1);
      expect(r.stderr, name).toMatch(re);
      expect(r.stdout, name).toBe('');
    }
    expect(existsSync(out)).toBe(false); // the rollback did not run
    // valid editor keys: checked, named as not applying to a saved memory, and the command runs
    const ok = await cli(['memory', 'ls', '--memory', mem, '--config', file('ok.yaml', 'lr: 0.5\nnIter: 3\n')]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stderr).toMatch(/note: .*ok\.yaml: editor options lr, nIter do not apply here/);
  });
});

describe.skipIf(!ready || !existsSync(join(FACTS, 'config.json')))('a memory file used with another model', () => {
  it('names the --model it was made for', async () => {
    const r = await cli(['generate', '--model', FACTS, '--memory', mem, 'x']);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^repair-edit: ERR_MEMORY_MISMATCH: .*m\.safetensors was saved for a different model .*: pass --model \S*models\/stories260K \(the model it was made for\)/);
    const ls = await cli(['memory', 'ls', '--model', FACTS, '--memory', mem]);
    expect(ls.stderr).toMatch(/pass --model \S*models\/stories260K/);
  });
});

describe.skipIf(!ready)("the edit table: each edit's own figures", () => {
  it("repair: per-edit CE and score on every row; a batch's steps, loss and time once, marked", async () => {
    const [t, j] = await Promise.all([
      cli(['edit', '--edits', edits, '--out', join(tmp, 'r1.safetensors'), '--method', 'repair', '--n-iter', '10']),
      cli(['edit', '--edits', edits, '--out', join(tmp, 'r2.safetensors'), '--method', 'repair', '--n-iter', '10', '--json']),
    ]);
    expect(t.code, t.stderr).toBe(0);
    expect(j.code, j.stderr).toBe(0);
    const res = JSON.parse(j.stdout).results as { id: string; editLoss: number; score: number; ms: number | null; batch: { index: number; size: number; steps: number; loss: number; seconds: number } }[];
    expect(res).toHaveLength(3);
    for (const r of res) {
      expect(r.ms).toBeNull(); // no made-up per-edit time: the time is the batch's
      expect(r.batch.size).toBeGreaterThanOrEqual(1);
      expect(Number.isFinite(r.editLoss)).toBe(true);
    }
    // the edits' own figures differ from one another even inside one batch
    expect(new Set(res.map((r) => r.editLoss)).size).toBe(3);
    expect(new Set(res.map((r) => r.score)).size).toBe(3);
    const lines = t.stdout.split('\n');
    expect(lines[0]).toMatch(/^id\s+line\s+edit CE\s+score\s+memory\s+batch\s+steps\*\s+batch loss\*\s+seconds\*$/);
    const rows = lines.slice(2, 5).map((l) => l.trim().split(/\s+/));
    const batches = new Map<string, number>();
    for (const r of rows) {
      const b = r[5]!; // "k" of "k (size)"
      const first = !batches.has(b);
      batches.set(b, (batches.get(b) ?? 0) + 1);
      if (first) expect(r.at(-1), r.join(' ')).toMatch(/^\d+\.\d\d$/);
      else expect(r.slice(-3), r.join(' ')).toEqual(['·', '·', '·']);
    }
    expect(t.stdout).toMatch(/^\* per batch/m);
    // wise: every figure is the edit's own
    const w = await cli(['edit', '--edits', edits, '--out', join(tmp, 'w.safetensors'), '--n-iter', '5']);
    expect(w.stdout.split('\n')[0]).toMatch(/^id\s+line\s+edit CE\s+score\s+memory\s+steps\s+final loss\s+seconds$/);
    expect(w.stdout).not.toContain('·');
  });
});

/** Start `eval`, send `sig` once the first run has finished, and collect what it printed. */
function interruptedEval(sig: NodeJS.Signals, tag: string): Promise<{ code: number | null; stdout: string; stderr: string; json: string; html: string }> {
  const json = join(tmp, `${tag}.json`);
  const html = join(tmp, `${tag}.html`);
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI, 'eval', '--data', edits, '--n', '1,3', '--method', 'wise,repair', '--n-iter', '150', '--metrics', 'tf', '--json-file', json, '--report', html], {
      cwd: ROOT,
      env: { ...process.env, REPAIR_BACKEND: 'cpu' },
    });
    let out = '';
    let err = '';
    let sent = false;
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      if (!sent && /wise N=1: /.test(err)) {
        sent = true;
        p.kill(sig);
      }
    });
    p.on('exit', (code) => resolve({ code, stdout: out, stderr: err, json, html }));
  });
}

describe.skipIf(!ready)('eval keeps finished work on interrupt', () => {
  it('SIGINT and SIGTERM: exit 130, the finished runs in JSON and report, marked partial', async () => {
    const runs = await Promise.all([interruptedEval('SIGINT', 'int'), interruptedEval('SIGTERM', 'term')]);
    for (const r of runs) {
      expect(r.code, r.stderr).toBe(130);
      expect(r.stderr.trim().split('\n').at(-1)).toMatch(/^repair-edit: ERR_ABORTED: interrupted after \d of 4 runs(; kept \S+ N=\d in part \(\d of \d edits, \d evaluated\))?; the results are in .*\.json and .*\.html \(marked partial\)$/);
      const j = JSON.parse(readFileSync(r.json, 'utf8'));
      expect(j.partial).toBe(true);
      expect(j.progress.runsPlanned).toBe(4);
      expect(j.progress.runsDone).toBeGreaterThanOrEqual(1);
      expect(j.progress.runsDone).toBeLessThan(4);
      expect(j.progress.done[0]).toEqual({ label: 'wise', n: 1 });
      expect(j.progress.notDone.length).toBe(4 - j.progress.runsDone);
      const wise = j.results[0];
      expect(wise.label).toBe('wise');
      expect(wise.config.partial).toBe(true);
      expect(wise.runs[0].n).toBe(1);
      expect(wise.runs[0].cases).toHaveLength(1); // the records done, every per-case value
      expect(typeof wise.runs[0].cases[0].rel).toBe('number');
      const h = readFileSync(r.html, 'utf8');
      expect(h).toContain('<h1>repair-edit eval (partial)</h1>');
      expect(h).toMatch(/<p class="banner" role="alert">Partial results: the run was interrupted .* after \d of 4 runs/);
      expect(h.trimEnd().endsWith('</html>')).toBe(true);
      expect(r.stdout).toMatch(/^repair-edit eval \(PARTIAL: interrupted after \d of 4 runs(; kept .* in part \(.*\))?\)/);
      expect(r.stdout).toMatch(/^wise\s+1\s/m);
    }
  }, budget(300_000));
});
