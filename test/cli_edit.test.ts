// The editing commands of the CLI, run as a user runs them (tsx lib/cli.ts ...) on the shipped
// stories260K: `edit` (JSONL in, memory file out), `generate --memory`, `explain`, `demo`, and the
// errors of bad edit files and missing options.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../lib/native.js';
import { packageRoot } from '../lib/paths.js';
import { cliRunner, type CliRun as Run } from './helpers/cli.js';

const ROOT = packageRoot();
const haveDemo = existsSync(join(ROOT, 'models', 'stories260K', 'config.json'));
const haveAddon = (() => {
  try {
    native();
    return true;
  } catch {
    return false;
  }
})();
if (!haveAddon) console.warn('[cli_edit.test] the native addon is not built: CLI runs that load a model are skipped');
if (!haveDemo) console.warn('[cli_edit.test] models/stories260K is absent: CLI editing runs are skipped');

const cli = cliRunner('source', { timeoutMs: 90_000, env: { REPAIR_BACKEND: 'cpu' } });

const EDITS = [
  { prompt: 'The wizard Zog lived in', target: 'a purple castle' },
  { id: 'blix', prompt: 'The dragon Blix liked to eat', target: 'blue cheese', rephrase: 'The favourite food of Blix was' },
  { prompt: 'Captain Pim sailed a ship called', target: 'the Silver Fox', locality: [{ prompt: 'Once upon a time', answer: ', there was' }] },
];

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-cli-edit-'));
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

function writeJsonl(name: string, lines: string[]): string {
  const f = join(tmp, name);
  writeFileSync(f, `${lines.join('\n')}\n`);
  return f;
}

describe('CLI edit: bad input', () => {
  it('a bad JSONL line → exit 1, one ERR_EDIT_REQUEST line naming the file, line and field', async () => {
    const good = JSON.stringify(EDITS[0]);
    const cases: [string[], number, RegExp][] = [
      [[good, '{"prompt": "x", target: 1}'], 2, /invalid JSON/],
      [[good, '', '{"prompt": "The cat sat on"}'], 3, /missing field "target"/],
      [['{"prompt": "The cat sat on", "target": "   "}'], 1, /field "target" must be a non-empty string/],
      [[good, good.replace('{', '{"target2": 1, ')], 2, /unknown field "target2"/],
      [[good, '{"prompt": "p", "target": "t", "locality": [{"prompt": "q"}]}'], 2, /locality\[0\]\.answer/],
      [[good, '{"prompt": "The cat sat on", "target": "t", "subject": "dog"}'], 2, /field "subject" \("dog"\) does not occur in the prompt/],
    ];
    const runs = await Promise.all(cases.map(([lines], i) => cli(['edit', '--edits', writeJsonl(`bad${i}.jsonl`, lines), '--out', join(tmp, `bad${i}.safetensors`)])));
    for (const [i, r] of runs.entries()) {
      const [, line, msg] = cases[i]!;
      expect(r.code, `case ${i}: ${r.stderr}`).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(new RegExp(`^repair-edit: ERR_EDIT_REQUEST: .*bad${i}\\.jsonl line ${line}: `));
      expect(r.stderr).toMatch(msg);
      expect(r.stdout).toBe('');
      expect(existsSync(join(tmp, `bad${i}.safetensors`))).toBe(false);
    }
  });

  it('usage errors exit 2: missing --edits / --out / --memory, bad numbers, --memory with editor flags', async () => {
    const f = writeJsonl('ok.jsonl', [JSON.stringify(EDITS[0])]);
    const out = join(tmp, 'u.safetensors');
    const cases = [
      ['edit', '--out', out],
      ['edit', '--edits', f],
      ['edit', '--edits', f, '--out', out, '--n-iter', '0'],
      ['edit', '--edits', f, '--out', out, '--method', 'rome'],
      ['edit', '--edits', f, '--out', out, '--save-freq', '3', '--merge-freq', '4'],
      ['edit', '--edits', f, '--out', out, '--memory', join(tmp, 'm.safetensors'), '--lr', '0.5'],
      ['explain', 'The wizard Zog lived in'],
    ];
    const runs = await Promise.all(cases.map((a) => cli(a)));
    for (const [i, r] of runs.entries()) {
      expect(r.code, cases[i]!.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^repair-edit: ERR_USAGE: /);
    }
    expect(runs[0]!.stderr).toMatch(/--edits/);
    expect(existsSync(out)).toBe(false);
  });

  it('--help lists the new commands and their options', async () => {
    const [top, edit] = await Promise.all([cli(['--help']), cli(['edit', '--help'])]);
    expect(top.code).toBe(0);
    for (const c of ['edit', 'explain', 'demo']) expect(top.stdout).toMatch(new RegExp(`\\b${c}\\b`));
    expect(edit.code).toBe(0);
    for (const o of ['--edits', '--out', '--memory', '--method', '--layer', '--save-freq', '--merge-freq', '--n-iter', '--lr', '--seed', '--backend', '--json']) expect(edit.stdout).toContain(o);
  });
});

describe.skipIf(!haveAddon || !haveDemo)('CLI edit → generate --memory → explain on stories260K', () => {
  let mem: string;
  let editRun: Run;
  beforeAll(async () => {
    const f = writeJsonl('edits.jsonl', [JSON.stringify(EDITS[0]), '', JSON.stringify(EDITS[1]), JSON.stringify(EDITS[2])]);
    mem = join(tmp, 'm.safetensors');
    editRun = await cli(['edit', '--edits', f, '--out', mem, '--n-iter', '30', '--save-freq', '1', '--json']);
  });

  it('edit exits 0, saves the file, and --json has one result per record', () => {
    expect(editRun.code, editRun.stderr).toBe(0);
    expect(existsSync(mem)).toBe(true);
    const j = JSON.parse(editRun.stdout);
    expect(j.results).toHaveLength(3);
    expect(j.results.map((r: { id: string }) => r.id)).toEqual(['e1', 'blix', 'e2']);
    expect(j.results.map((r: { line: number }) => r.line)).toEqual([1, 3, 4]);
    for (const r of j.results) {
      expect(r.steps).toBeGreaterThan(0);
      expect(Number.isFinite(r.loss)).toBe(true);
    }
    expect(j.results.map((r: { memory: unknown }) => r.memory)).toEqual([0, 1, 2]); // --save-freq 1: one memory each
    expect(j.config.nIter).toBe(30);
    expect(j.editCount).toBe(3);
    // not a TTY: one progress line per edit on stderr
    expect(editRun.stderr.trim().split('\n')).toHaveLength(3);
    expect(editRun.stderr).toMatch(/^edit 1\/3 e1 \(line 1\): 30 steps/);
  });

  it('generate --memory prints the target for each edited prompt; --json adds the route', async () => {
    const runs = await Promise.all(EDITS.map((e) => cli(['generate', '--memory', mem, '--max-new-tokens', '12', e.prompt])));
    for (const [i, r] of runs.entries()) {
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.startsWith(`${EDITS[i]!.prompt} ${EDITS[i]!.target}`), r.stdout).toBe(true);
    }
    const j = await cli(['generate', '--memory', mem, '--max-new-tokens', '12', '--json', EDITS[1]!.prompt]);
    expect(j.code).toBe(0);
    const g = JSON.parse(j.stdout);
    expect(g.completion.startsWith(EDITS[1]!.target)).toBe(true);
    expect(g.route.route).toBe('memory 1');
    expect(g.route.score).toBeGreaterThanOrEqual(g.route.threshold);
    const u = JSON.parse((await cli(['generate', '--memory', mem, '--max-new-tokens', '12', '--json', 'Once upon a time'])).stdout);
    expect(u.route.route).toBe('main');
  });

  it('explain reports a non-main route for an edit prompt and main for an unrelated one', async () => {
    const [e, u, t, h] = await Promise.all([
      cli(['explain', '--memory', mem, '--json', EDITS[0]!.prompt]),
      cli(['explain', '--memory', mem, '--json', 'Lily and Tom went to the']),
      cli(['explain', '--memory', mem, '--json', '--teacher-forced', `${EDITS[2]!.prompt} ${EDITS[2]!.target}`]),
      cli(['explain', '--memory', mem, EDITS[0]!.prompt]),
    ]);
    for (const r of [e, u, t, h]) expect(r.code, r.stderr).toBe(0);
    const ej = JSON.parse(e.stdout);
    expect(ej.route).not.toBe('main');
    expect(ej.route).toBe('memory 0');
    expect(ej.score).toBeGreaterThanOrEqual(ej.threshold);
    expect(ej.scores).toHaveLength(4); // working + 3 memories
    expect(ej.scores.slice(1).map((s: { edits: number }) => s.edits)).toEqual([1, 1, 1]);
    expect(JSON.parse(u.stdout).route).toBe('main');
    const tj = JSON.parse(t.stdout);
    expect(tj.basis).toBe('teacher-forced');
    expect(tj.route).toBe('memory 2');
    expect(h.stdout).toMatch(/^route: +memory 0 \(shard, 1 edit\)/);
    expect(h.stdout).toMatch(/threshold/);
    expect(h.stdout).toMatch(/<- chosen/);
  });

  it('edit --memory continues a saved memory; an id already in it is refused with its line', async () => {
    const f = writeJsonl('more.jsonl', [JSON.stringify({ prompt: 'The robot Kip was made of', target: 'shiny gold' })]);
    const out = join(tmp, 'm2.safetensors');
    const r = await cli(['edit', '--edits', f, '--out', out, '--memory', mem, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.editCount).toBe(4);
    expect(j.results[0].id).toBe('e3');
    const g = await cli(['generate', '--memory', out, '--max-new-tokens', '12', 'The robot Kip was made of']);
    expect(g.stdout.startsWith('The robot Kip was made of shiny gold')).toBe(true);
    const dup = writeJsonl('dup.jsonl', [JSON.stringify({ prompt: 'p q r', target: 's' }), JSON.stringify(EDITS[1])]);
    const d = await cli(['edit', '--edits', dup, '--out', join(tmp, 'm3.safetensors'), '--memory', mem]);
    expect(d.code).toBe(1);
    expect(d.stderr).toMatch(/^repair-edit: ERR_EDIT_REQUEST: .*dup\.jsonl line 2: .*"blix"/);
    expect(existsSync(join(tmp, 'm3.safetensors'))).toBe(false);
  });

  it('a missing memory file → ERR_IO, exit 1', async () => {
    const r = await cli(['explain', '--memory', join(tmp, 'nope.safetensors'), 'x']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^repair-edit: ERR_IO: /);
  });
});

describe.skipIf(!haveAddon || !haveDemo)('CLI demo', () => {
  it('--json: every shipped edit is learned and unrelated continuations are unchanged', async () => {
    const r = await cli(['demo', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const d = JSON.parse(r.stdout);
    const shipped = readFileSync(join(ROOT, 'data', 'demo-edits.jsonl'), 'utf8').split('\n').filter((l) => l.trim() !== '');
    expect(d.edits).toHaveLength(shipped.length);
    expect(d.edits.length).toBeGreaterThanOrEqual(5);
    for (const e of d.edits) {
      expect(e.after.startsWith(e.target), `${e.prompt} -> ${e.after}`).toBe(true);
      expect(e.before.startsWith(e.target)).toBe(false);
      expect(e.learned).toBe(true);
      expect(e.routing.edit.route).not.toBe('main');
      expect(e.routing.unrelated.route).toBe('main');
      expect(e.unrelated).toHaveLength(3);
      for (const u of e.unrelated) expect(u.after, u.prompt).toBe(u.before);
    }
    expect(d.summary.learned).toBe(d.edits.length);
    expect(d.summary.unchanged).toBe(d.summary.unrelated);
    // the wise vs repair table: both methods measured on the demo edits, values in [0, 1]
    expect(d.comparison.map((r: { label: string }) => r.label)).toEqual(['wise', 'repair']);
    for (const r of d.comparison) for (const k of ['rel', 'gen', 'loc', 'op']) expect(r[k]).toBeGreaterThanOrEqual(0), expect(r[k]).toBeLessThanOrEqual(1);
    expect(d.comparison[0].rel).toBeGreaterThanOrEqual(0.8);
    expect(d.timings.totalMs).toBeGreaterThan(0);
  });

  it('prints a readable report', async () => {
    const r = await cli(['demo']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/before: The wizard Zog lived in/);
    expect(r.stdout).toMatch(/after: +The wizard Zog lived in a purple castle/);
    expect(r.stdout).toMatch(/summary: (\d+)\/\1 edits learned, (\d+)\/\2 unrelated continuations unchanged/);
    expect(r.stdout).toMatch(/wall time: [\d.]+ s/);
  });
});
