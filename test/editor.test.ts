// Editor (WISE engine) behaviour: one edit on stories260K and on the facts model (target learned,
// unrelated prompts unchanged, routing), ten sequential edits through saves and TIES merges,
// save/load round trips and killed saves, rollback, the ft baseline, and bad input that must leave the
// editor exactly as it was.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, type Model } from '../lib/model.js';
import { Editor, FAIL_SAVE_AFTER, MEMORY_FORMAT_VERSION, type EditRequest } from '../lib/editor.js';
import { memoryChecksum } from '../lib/memfile.js';
import { FACTS, haveFacts, loadZsreRecords, rejects, STORIES, tfAcc, tfPredictions, useTempDir, zsreEdit } from './helpers/setup.js';

if (!haveFacts) console.warn('[editor.test] ../shared/models/facts-llama or the ZsRE file is absent: facts-model tests are skipped');

const zsre = loadZsreRecords();

const STORY_UNRELATED = [
  'Once upon a time',
  'One day, a little girl',
  'Lily and Tom went to the',
  'She was happy because',
  'The sun was shining and',
  'Tim wanted to play with',
  'They went to the park',
  'Mom said, "Let\'s go',
  'The little bird flew',
  'Ben saw a big',
  'At night, the stars',
  'The bunny hopped',
  'Sue had a red',
  'He ran very fast',
  'The tree was tall and',
  'Anna liked to sing',
  'The boat was on the',
  'They all laughed and',
  'After lunch, the kids',
  'The old man smiled',
];

const tmpDir = useTempDir('repair-editor-');

describe('one edit on stories260K', () => {
  let model: Model;
  let ed: Editor;
  const req: EditRequest = { prompt: 'The wizard Zog lived in', target: 'a purple castle' };
  const before = new Map<string, string>();
  beforeAll(async () => {
    model = await loadModel(STORIES, { backend: 'cpu' });
    for (const u of STORY_UNRELATED) before.set(u, (await model.generate(u, { maxNewTokens: 3 })).completion);
    ed = await Editor.create(model);
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it('learns the target (teacher-forced accuracy 1.0) and generates it', async () => {
    expect(await tfAcc(model, model, req.prompt, req.target)).toBeLessThan(1);
    const r = await ed.edit(req);
    expect(r.steps).toBeGreaterThan(0);
    expect(r.losses.length).toBe(r.steps);
    expect(r.losses.at(-1)!).toBeLessThan(r.losses[0]!);
    expect(await tfAcc(model, ed, req.prompt, req.target)).toBe(1);
    expect((await ed.generate(req.prompt, { maxNewTokens: 6 })).completion).toMatch(/^a purple/);
  });

  it('routes the edit prompt to the side memory and unrelated prompts to the main weight', async () => {
    const e = await ed.explain(req.prompt);
    expect(e.route).toBe(-1); // the working memory
    expect(e.score).toBeGreaterThan(e.threshold);
    expect((await ed.explain(`${req.prompt} ${req.target}`, { teacherForced: true })).route).toBe(-1);
    let main = 0;
    for (const u of STORY_UNRELATED) if ((await ed.explain(u)).route === 'main') main++;
    expect(main).toBe(STORY_UNRELATED.length);
  });

  it('leaves the greedy continuations of 20 unrelated prompts unchanged', async () => {
    for (const u of STORY_UNRELATED) expect((await ed.generate(u, { maxNewTokens: 3 })).completion).toBe(before.get(u));
  });
});

describe.skipIf(!haveFacts)('the facts model', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(FACTS, { backend: 'cpu' });
  });
  afterAll(async () => {
    await model?.dispose();
  });
  const rec = (i: number): EditRequest => zsreEdit(zsre, i, { rephrase: true });

  it('one edit: target learned, rephrase generalises, 20 locality prompts keep their answers and route to main', async () => {
    const ed = await Editor.create(model);
    const r = rec(0);
    expect(await tfAcc(model, model, r.prompt, r.target)).toBeLessThan(1);
    const locBefore: { pred: number[]; want: number[] }[] = [];
    for (let i = 1; i <= 20; i++) locBefore.push(await tfPredictions(model, model, zsre[i]!.loc, zsre[i]!.loc_ans));
    await ed.edit(r);
    expect(await tfAcc(model, ed, r.prompt, r.target)).toBe(1);
    expect((await ed.explain(r.prompt)).route).toBe(-1);
    for (let i = 1; i <= 20; i++) {
      expect((await tfPredictions(model, ed, zsre[i]!.loc, zsre[i]!.loc_ans)).pred).toEqual(locBefore[i - 1]!.pred);
      expect((await ed.explain(zsre[i]!.loc)).route).toBe('main');
    }
    await ed.dispose();
  });

  it('ten sequential edits through saves, TIES merges and multi-memory retrieval: every edit still recalled', async () => {
    const ed = await Editor.create(model, { saveFreq: 2, mergeFreq: 4 });
    const pre: number[] = [];
    for (let i = 0; i < 10; i++) pre.push(await tfAcc(model, model, zsre[i]!.src, zsre[i]!.alt));
    for (let i = 0; i < 10; i++) await ed.edit(rec(i));
    const mem = ed.memories();
    expect(mem.memories.map((m) => m.kind)).toEqual(['merged', 'merged', 'shard']);
    expect(mem.memories.map((m) => m.edits.length)).toEqual([4, 4, 2]);
    expect(mem.working.edits).toEqual([]);
    const post: number[] = [];
    for (let i = 0; i < 10; i++) post.push(await tfAcc(model, ed, zsre[i]!.src, zsre[i]!.alt));
    console.log('[editor.test] ten edits, teacher-forced accuracy before:', pre.map((v) => v.toFixed(2)).join(' '), 'after:', post.map((v) => v.toFixed(2)).join(' '));
    // Recalled: every edit is predicted better than before editing, and most perfectly.
    post.forEach((p, i) => expect(p).toBeGreaterThan(pre[i]!));
    expect(post.filter((p) => p === 1).length).toBeGreaterThanOrEqual(7);
    expect(post.reduce((a, b) => a + b, 0) / 10).toBeGreaterThanOrEqual(0.9);
    // Routing picks memories by score: edits of different memories go to different memories.
    const routes = new Set<number | string>();
    for (const i of [0, 5, 9]) routes.add((await ed.explain(zsre[i]!.src)).route);
    expect(routes.size).toBe(3);
    await ed.dispose();
  });

  it('save -> load round trip gives bit-identical outputs; a killed save leaves the previous file loadable', async () => {
    const ed = await Editor.create(model, { saveFreq: 2, mergeFreq: 4 });
    for (let i = 0; i < 5; i++) await ed.edit(rec(i));
    const file = join(tmpDir(), 'facts.repair.safetensors');
    await ed.save(file);
    const probe = [model.tokenizer.encode(`${zsre[0]!.src} ${zsre[0]!.alt}`), model.tokenizer.encode(`${zsre[4]!.src} ${zsre[4]!.alt}`), model.tokenizer.encode(zsre[30]!.loc)];
    const a = await ed.logits(probe, { positions: 'all' });
    const ga = await ed.generate(zsre[4]!.src, { maxNewTokens: 8 });
    const ed2 = await Editor.load(model, file);
    const b = await ed2.logits(probe, { positions: 'all' });
    expect(Buffer.from(b.data.buffer).equals(Buffer.from(a.data.buffer))).toBe(true);
    expect((await ed2.generate(zsre[4]!.src, { maxNewTokens: 8 })).tokens).toEqual(ga.tokens);
    expect(ed2.edits()).toEqual(ed.edits());
    expect(ed2.memories()).toEqual(ed.memories());
    // The loaded editor keeps editing with the same cadence.
    await ed2.edit(rec(5));
    expect(ed2.memories().memories.length).toBe(ed.memories().memories.length + 1);

    // A save that dies mid-write: the previous file is intact and loads; no temp file is left behind.
    await ed.edit(rec(6));
    (ed as unknown as Record<symbol, number>)[FAIL_SAVE_AFTER] = 5000;
    await rejects(ed.save(file), 'ERR_IO');
    delete (ed as unknown as Record<symbol, number>)[FAIL_SAVE_AFTER];
    expect(readdirSync(tmpDir()).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    const ed3 = await Editor.load(model, file);
    expect(ed3.edits()).toEqual(ed2.edits().slice(0, 5));
    const c = await ed3.logits(probe, { positions: 'all' });
    expect(Buffer.from(c.data.buffer).equals(Buffer.from(a.data.buffer))).toBe(true);
    for (const e of [ed, ed2, ed3]) await e.dispose();
  });

  it('rollback restores the pre-edit predictions of that edit and keeps the others', async () => {
    const ed = await Editor.create(model, { saveFreq: 1, mergeFreq: 1 });
    const pre = await tfPredictions(model, model, zsre[1]!.src, zsre[1]!.alt);
    for (let i = 0; i < 3; i++) await ed.edit({ ...rec(i), id: `z${i}` });
    expect(await tfAcc(model, ed, zsre[1]!.src, zsre[1]!.alt)).toBe(1);
    await ed.rollback('z1');
    expect(ed.edits()).toEqual(['z0', 'z2']);
    expect((await tfPredictions(model, ed, zsre[1]!.src, zsre[1]!.alt)).pred).toEqual(pre.pred);
    expect(await tfAcc(model, ed, zsre[0]!.src, zsre[0]!.alt)).toBe(1);
    expect(await tfAcc(model, ed, zsre[2]!.src, zsre[2]!.alt)).toBe(1);
    await rejects(ed.rollback('z1'), 'ERR_UNKNOWN_EDIT');
    // Rolling back inside a shard of several edits retrains it without the edit.
    const ed2 = await Editor.create(model, { saveFreq: 3, mergeFreq: 3 });
    for (let i = 0; i < 3; i++) await ed2.edit({ ...rec(i), id: `y${i}` });
    await ed2.rollback('y0');
    expect(ed2.memories().memories[0]!.edits).toEqual(['y1', 'y2']);
    expect(await tfAcc(model, ed2, zsre[2]!.src, zsre[2]!.alt)).toBe(1);
    await ed.dispose();
    await ed2.dispose();
  });

  it("the 'ft' baseline fine-tunes the weight for every input", async () => {
    const ed = await Editor.create(model, { method: 'ft' });
    const r = rec(3);
    await ed.edit(r);
    expect(await tfAcc(model, ed, r.prompt, r.target)).toBe(1);
    expect((await ed.explain(zsre[40]!.loc)).route).toBe(-1); // FT has no router: everything uses the tuned weight
    await ed.dispose();
  });
});

describe('bad input leaves the editor unchanged', () => {
  let model: Model;
  let ed: Editor;
  const probe = 'The name of the dog was Spot';
  let ref: Float32Array;
  const same = async () => {
    const lg = await ed.logits([model.tokenizer.encode(probe)], { positions: 'all' });
    expect(Buffer.from(lg.data.buffer).equals(Buffer.from(ref.buffer))).toBe(true);
  };
  beforeAll(async () => {
    model = await loadModel(STORIES, { backend: 'cpu' });
    ed = await Editor.create(model);
    await ed.edit({ prompt: 'The name of the dog was', target: 'Spot' });
    ref = (await ed.logits([model.tokenizer.encode(probe)], { positions: 'all' })).data.slice();
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it('empty or missing target / prompt', async () => {
    await rejects(ed.edit({ prompt: 'The cat', target: '' }), 'ERR_EDIT_REQUEST');
    await rejects(ed.edit({ prompt: 'The cat', target: '   ' }), 'ERR_EDIT_REQUEST');
    await rejects(ed.edit({ prompt: '', target: 'x' }), 'ERR_EDIT_REQUEST');
    await rejects(ed.edit({ prompt: 'a' } as EditRequest), 'ERR_EDIT_REQUEST');
    await rejects(ed.edit({ prompt: 'The name of the dog was', target: 'Spot', id: ed.edits()[0]! }), 'ERR_EDIT_REQUEST');
    expect(ed.editCount).toBe(1);
    await same();
  });

  it('a target longer than the context', async () => {
    await rejects(ed.edit({ prompt: 'The cat', target: 'very '.repeat(600) }), 'ERR_CONTEXT_LENGTH');
    expect(ed.editCount).toBe(1);
    await same();
  });

  it('invalid options: layer out of range, unknown keys, bad cadence', async () => {
    await rejects(Editor.create(model, { layer: 5 }), 'ERR_INVALID_ARG');
    await rejects(Editor.create(model, { layer: -1 }), 'ERR_INVALID_ARG');
    await rejects(Editor.create(model, { lr: Number.NaN }), 'ERR_INVALID_ARG');
    await rejects(Editor.create(model, { saveFreq: 3, mergeFreq: 4 }), 'ERR_INVALID_ARG');
    await rejects(Editor.create(model, { bogus: 1 } as never), 'ERR_INVALID_ARG');
  });

  it('a NaN/Inf loss is refused and nothing is stored', async () => {
    const hot = await Editor.create(model, { lr: 3e38, normConstraint: 0, earlyStop: false });
    const before = (await hot.logits([model.tokenizer.encode(probe)], { positions: 'all' })).data.slice();
    await rejects(hot.edit({ prompt: 'The cat was', target: 'blue and green' }), 'ERR_NAN_LOSS');
    expect(hot.editCount).toBe(0);
    expect(hot.edits()).toEqual([]);
    const after = (await hot.logits([model.tokenizer.encode(probe)], { positions: 'all' })).data;
    expect(Buffer.from(after.buffer).equals(Buffer.from(before.buffer))).toBe(true);
    await hot.dispose();
  });

  it('abort mid-edit', async () => {
    const ac = new AbortController();
    await rejects(
      ed.edit({ prompt: 'The cat was', target: 'blue' }, { signal: ac.signal, onProgress: (p) => p.step === 3 && ac.abort() }),
      'ERR_ABORTED',
    );
    expect(ed.editCount).toBe(1);
    await same();
    const done = new AbortController();
    done.abort();
    await rejects(ed.edit({ prompt: 'The cat was', target: 'blue' }, { signal: done.signal }), 'ERR_ABORTED');
    await same();
  });

  it('corrupt, truncated and mismatched memory files', async () => {
    const file = join(tmpDir(), 'stories.mem');
    await ed.save(file);
    const bytes = readFileSync(file);
    writeFileSync(join(tmpDir(), 'trunc.mem'), bytes.subarray(0, bytes.length - 100));
    await rejects(Editor.load(model, join(tmpDir(), 'trunc.mem')), 'ERR_MEMORY_FILE');
    writeFileSync(join(tmpDir(), 'garbage.mem'), Buffer.from('not a memory file at all, sorry'));
    await rejects(Editor.load(model, join(tmpDir(), 'garbage.mem')), 'ERR_MEMORY_FILE');
    await rejects(Editor.load(model, join(tmpDir(), 'absent.mem')), 'ERR_IO');
    // A newer format version, and a different base weight fingerprint.
    const hlen = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + hlen).toString('utf8'));
    const rewrite = (name: string, edit: (h: Record<string, { version?: string; editor?: string; checksum?: string; format?: string }>) => void) => {
      const h = structuredClone(header);
      edit(h);
      const md = h.__metadata__!;
      if (md.version === String(MEMORY_FORMAT_VERSION)) {
        // re-seal the checksum, as a careful tamperer would: the fingerprint check behind it must still hold
        const table = Object.entries(h)
          .filter(([k]) => k !== '__metadata__')
          .map(([k, t]) => ({ name: k, ...(t as unknown as { dtype: string; shape: number[]; data_offsets: [number, number] }) }))
          .map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, begin: t.data_offsets[0], end: t.data_offsets[1] }))
          .sort((a, b) => a.begin - b.begin);
        md.checksum = memoryChecksum(md.format!, md.version!, md.editor!, table, bytes.subarray(8 + hlen));
      }
      let s = JSON.stringify(h);
      s += ' '.repeat((8 - (Buffer.byteLength(s) % 8)) % 8);
      const hb = Buffer.from(s);
      const lb = Buffer.alloc(8);
      lb.writeBigUInt64LE(BigInt(hb.length));
      writeFileSync(join(tmpDir(), name), Buffer.concat([lb, hb, bytes.subarray(8 + hlen)]));
      return join(tmpDir(), name);
    };
    await rejects(Editor.load(model, rewrite('v99.mem', (h) => (h.__metadata__!.version = '99'))), 'ERR_MEMORY_VERSION');
    const fp = rewrite('fp.mem', (h) => {
      const m = JSON.parse(h.__metadata__!.editor!);
      m.base.fingerprint = '0000000000000000';
      h.__metadata__!.editor = JSON.stringify(m);
    });
    await rejects(Editor.load(model, fp), 'ERR_MEMORY_MISMATCH');
    if (haveFacts) {
      const facts = await loadModel(FACTS, { backend: 'cpu' });
      await rejects(Editor.load(facts, file), 'ERR_MEMORY_MISMATCH');
      await facts.dispose();
    }
    await same();
  });

  it('dispose mid-edit, and editing a disposed model', async () => {
    const m2 = await loadModel(STORIES, { backend: 'cpu' });
    const e2 = await Editor.create(m2);
    const p = e2.edit({ prompt: 'The cat was', target: 'blue' }, { onProgress: (s) => s.step === 2 && void m2.dispose() });
    await rejects(p, 'ERR_DISPOSED');
    expect(e2.disposed).toBe(true);
    await rejects(e2.edit({ prompt: 'The cat was', target: 'blue' }), 'ERR_DISPOSED');
    await rejects(e2.generate('The cat'), 'ERR_DISPOSED');
    await rejects(Editor.create(m2), 'ERR_DISPOSED');
    await e2.dispose(); // idempotent after the model went away
  });
});

describe('chat-template rows (§1.3 variant for chat models)', () => {
  it('wraps each template row as a user turn with the generation prompt, then " " + target', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'repair-chat-'));
    try {
      for (const f of ['config.json', 'model.safetensors', 'tokenizer.json']) writeFileSync(join(dir, f), readFileSync(join(STORIES, f)));
      const tc = JSON.parse(readFileSync(join(STORIES, 'tokenizer_config.json'), 'utf8'));
      tc.chat_template = '{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}';
      writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tc));
      const model = await loadModel(dir, { backend: 'cpu' });
      const ed = await Editor.create(model, { useChatTemplate: true, nIter: 30 });
      expect(ed.config.useChatTemplate).toBe(true);
      const b = ed.buildBatch({ prompt: 'Who is Zog?', target: 'a wizard' }, 'Once upon a time');
      const row0 = Array.from(b.tokens.subarray(b.pad[0]!, b.T));
      expect(model.tokenizer.decode(row0)).toBe('[user] Who is Zog?\n[assistant] a wizard');
      const labelled = Array.from(b.labels.subarray(0, b.T)).filter((x) => x >= 0);
      expect(model.tokenizer.decode(labelled)).toContain('wizard');
      await ed.dispose();
      await model.dispose();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
