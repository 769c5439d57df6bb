// Issue 14 regressions: inputs that used to load and silently give garbage (NaN weights, tokenizer
// vocabularies, tampered side-memory files), fs errors of save/load, and the promises of the editor
// (aborted repair edits, transactional rollback, dispose mid-call, divergence, throwing progress callbacks).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { writeFileSync, readFileSync, mkdirSync, readdirSync, existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { loadModel, type Model } from '../lib/model.js';
import { Editor } from '../lib/editor.js';
import { RepairError } from '../lib/errors.js';
import { patchF32, readSt } from './helpers/st.js';
import { rewriteMemoryFile } from './helpers/mem.js';
import { copyModel, FIXTURES, rejects, STORIES, useTempDir } from './helpers/setup.js';

const BF16 = join(FIXTURES, 'tiny-llama3-bf16');

const tmpDir = useTempDir('repair-rel-');

function json(file: string): Record<string, unknown> {
  return JSON.parse(readFileSync(file, 'utf8'));
}

describe('model inputs that used to load and give NaN logits or empty text', () => {
  it('a NaN or Inf weight is refused at load, naming the tensor; checkFinite: false loads it', async () => {
    const d = copyModel(STORIES, tmpDir(), (dir) => patchF32(join(dir, 'model.safetensors'), 'model.layers.1.mlp.down_proj.weight', 17, Number.NaN));
    await rejects(loadModel(d, { backend: 'cpu' }), 'ERR_SAFETENSORS', /model\.layers\.1\.mlp\.down_proj\.weight/, /NaN, an Inf or a value of magnitude >= 2\^27/, /element 17/);
    const e = copyModel(STORIES, tmpDir(), (dir) => patchF32(join(dir, 'model.safetensors'), 'model.norm.weight', 3, Number.POSITIVE_INFINITY));
    await rejects(loadModel(e, { backend: 'cpu' }), 'ERR_SAFETENSORS', /model\.norm\.weight/);
    // FLT_MAX is finite but overflows the forward into NaN logits: refused as out of range
    const f = copyModel(STORIES, tmpDir(), (dir) => patchF32(join(dir, 'model.safetensors'), 'model.layers.0.self_attn.q_proj.weight', 5, 3.4028234663852886e38));
    await rejects(loadModel(f, { backend: 'cpu' }), 'ERR_SAFETENSORS', /q_proj/, /element 5/);
    const m = await loadModel(d, { backend: 'cpu', checkFinite: false }); // the opt-out for trusted files
    await m.dispose();
    await rejects(loadModel(STORIES, { backend: 'cpu', checkFinite: 'no' as never }), 'ERR_INVALID_ARG', /checkFinite/);
  });

  it('a BF16 Inf (exponent all ones) is refused too', async () => {
    const d = copyModel(BF16, tmpDir(), (dir) => {
      const f = join(dir, 'model.safetensors');
      const { header } = readSt(f);
      const t = header['model.norm.weight'] as { dtype: string; data_offsets: [number, number] };
      expect(t.dtype).toBe('BF16');
      const b = readFileSync(f);
      const hl = Number(b.readBigUInt64LE(0));
      b.writeUInt16LE(0x7f80, 8 + hl + t.data_offsets[0] + 2); // +Inf in bf16
      writeFileSync(f, b);
    });
    await rejects(loadModel(d, { backend: 'cpu' }), 'ERR_SAFETENSORS', /model\.norm\.weight/, /element 1/);
    const ok = await loadModel(BF16, { backend: 'cpu' });
    await ok.dispose();
  });

  it('rms_norm_eps 1e-300 is ERR_CONFIG from the config check, not ERR_INVALID_ARG from native code', async () => {
    const d = copyModel(STORIES, tmpDir(), (dir) => writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...json(join(dir, 'config.json')), rms_norm_eps: 1e-300 })));
    const e = await rejects(loadModel(d, { backend: 'cpu' }), 'ERR_CONFIG', /rms_norm_eps/);
    expect(e.details?.field).toBe('rms_norm_eps');
  });

  it('tokenizer.json with a non-object model.vocab → ERR_TOKENIZER naming model.vocab', async () => {
    for (const vocab of [[1, 2, 3], 'abc', null, {}]) {
      const d = copyModel(STORIES, tmpDir(), (dir) => {
        const tj = json(join(dir, 'tokenizer.json')) as { model: Record<string, unknown> };
        tj.model.vocab = vocab;
        writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tj));
      });
      const e = await rejects(loadModel(d, { backend: 'cpu' }), 'ERR_TOKENIZER', /model\.vocab/);
      expect(e.details?.field).toBe('model.vocab');
    }
  });

  it('token ids outside the model vocabulary → ERR_TOKENIZER at load (not at generate time)', async () => {
    const d = copyModel(STORIES, tmpDir(), (dir) => {
      const tj = json(join(dir, 'tokenizer.json')) as { model: { vocab: Record<string, number> } };
      tj.model.vocab['zzz_new'] = 100000;
      writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tj));
    });
    await rejects(loadModel(d, { backend: 'cpu' }), 'ERR_TOKENIZER', /up to 100000/, /vocab_size 512/);
    const e = copyModel(STORIES, tmpDir(), (dir) => {
      const tj = json(join(dir, 'tokenizer.json')) as { model: { vocab: Record<string, unknown> } };
      tj.model.vocab['<s>'] = -4;
      writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tj));
    });
    await rejects(loadModel(e, { backend: 'cpu' }), 'ERR_TOKENIZER', /non-negative integer/);
  });
});

// ---- the editor ----------------------------------------------------------------------------------------
const REC = [
  { prompt: 'The cat was', target: 'blue', id: 'a' },
  { prompt: 'Lily had a', target: 'dragon', id: 'b' },
  { prompt: 'The sun was', target: 'green', id: 'c' },
];
const PROBE = ['The cat was blue', 'Lily had a dragon', 'The sun was green', 'Once upon a time'];

describe('side-memory files, save and load', () => {
  let model: Model;
  let ed: Editor;
  let file: string;
  beforeAll(async () => {
    model = await loadModel(STORIES, { backend: 'cpu' });
    ed = await Editor.create(model, { nIter: 8, saveFreq: 1, mergeFreq: 2 });
    for (const r of REC) await ed.edit(r);
    file = join(tmpDir(), 'good.mem');
    await ed.save(file);
  });
  afterAll(async () => {
    await ed.dispose();
    await model.dispose();
  });

  it('a saved file loads and gives the same logits', async () => {
    const ids = PROBE.map((p) => model.tokenizer.encode(p));
    const e2 = await Editor.load(model, file);
    const a = await ed.logits(ids, { positions: 'all' });
    const b = await e2.logits(ids, { positions: 'all' });
    expect(Buffer.from(b.data.buffer).equals(Buffer.from(a.data.buffer))).toBe(true);
    await e2.dispose();
  });

  it('a flipped byte anywhere in the memory weights → ERR_MEMORY_FILE (checksum)', async () => {
    const bytes = readFileSync(file);
    const hl = Number(bytes.readBigUInt64LE(0));
    for (const at of [8 + hl, 8 + hl + 12345, bytes.length - 1]) {
      const b = Buffer.from(bytes);
      b[at] = b[at]! ^ 0x01;
      writeFileSync(join(tmpDir(), 'flip.mem'), b);
      const e = await rejects(Editor.load(model, join(tmpDir(), 'flip.mem')), 'ERR_MEMORY_FILE', /checksum/);
      expect(e.details?.failed).toBe('checksum');
    }
  });

  it('edited thresholds, retrieve or method fields → ERR_MEMORY_FILE (checksum)', async () => {
    const edits: ((m: Record<string, any>) => void)[] = [
      (m) => (m.memories[0].minAct = m.memories[0].minAct * 0.01),
      (m) => (m.globalMinAct = 0),
      (m) => (m.config.retrieve = !m.config.retrieve),
      (m) => (m.config.method = 'ft'),
    ];
    for (const edit of edits) {
      const f = rewriteMemoryFile(file, join(tmpDir(), 'edited.mem'), (_h, m) => edit(m), { reseal: false });
      await rejects(Editor.load(model, f), 'ERR_MEMORY_FILE', /checksum mismatch/);
    }
  });

  it('negative, aliased or misaligned data_offsets → ERR_MEMORY_FILE, never a RangeError', async () => {
    const cases: ((h: Record<string, any>) => void)[] = [
      (h) => (h['memory.1'].data_offsets = [-64, h['memory.1'].data_offsets[1] - 64]),
      (h) => (h['memory.1'].data_offsets = [...h['memory.0'].data_offsets]),
      (h) => (h['memory.1'].data_offsets = [h['memory.1'].data_offsets[0] + 2, h['memory.1'].data_offsets[1] + 2]),
    ];
    for (const c of cases) {
      for (const reseal of [false, true]) {
        const f = rewriteMemoryFile(file, join(tmpDir(), 'offsets.mem'), (h) => c(h), { reseal });
        const e = await rejects(Editor.load(model, f), 'ERR_MEMORY_FILE');
        expect(e).not.toBeInstanceOf(RangeError);
      }
    }
  });

  it('a well-sealed file with a broken structure → ERR_MEMORY_FILE naming the field (no TypeError later)', async () => {
    const cases: [string, (m: Record<string, any>) => void][] = [
      ['working', (m) => (m.working = 2147483648)],
      ['memories[0].edits', (m) => (m.memories[0].edits = null)],
      ['loop.queue', (m) => (m.loop = {})],
      ['edits', (m) => delete m.edits],
      ['memories[0].edits[0]', (m) => (m.memories[0].edits = ['nope'])],
      ['config.method', (m) => (m.config.method = 'magic')],
      ['memories[0].weights', (m) => (m.memories[0].weights = [])],
      ['memories', (m) => m.memories.pop()],
      ['marginScale', (m) => (m.marginScale = -2)],
      ['marginScale', (m) => (m.marginScale = 'auto')],
    ];
    for (const [field, edit] of cases) {
      const f = rewriteMemoryFile(file, join(tmpDir(), 'struct.mem'), (_h, m) => edit(m));
      const e = await rejects(Editor.load(model, f), 'ERR_MEMORY_FILE', field);
      expect(String(e.details?.field ?? '')).toContain(field.split('[')[0]);
    }
  });

  it('a version-1 file (no checksum) loads only with allowUnverified', async () => {
    const f = rewriteMemoryFile(file, join(tmpDir(), 'v1.mem'), (h) => {
      h.__metadata__.version = '1';
      delete h.__metadata__.checksum;
    }, { reseal: false });
    await rejects(Editor.load(model, f), 'ERR_MEMORY_FILE', /allowUnverified/);
    const e = await Editor.load(model, f, { allowUnverified: true });
    expect(e.edits()).toEqual(ed.edits());
    await e.dispose();
  });

  it('save to a missing folder, to "" or to a folder, and load of a folder → ERR_IO; no temp file is left', async () => {
    const dir = join(tmpDir(), 'savedir');
    mkdirSync(dir);
    await rejects(ed.save(join(tmpDir(), 'no', 'such', 'dir', 'x.mem')), 'ERR_IO', /ENOENT/);
    await rejects(ed.save(''), 'ERR_IO');
    await rejects(ed.save(dir), 'ERR_IO', /directory/);
    await rejects(Editor.load(model, dir), 'ERR_IO', /directory/);
    await rejects(Editor.load(model, join(tmpDir(), 'absent.mem')), 'ERR_IO', /ENOENT/);
    expect(readdirSync(tmpDir()).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('orphan temp files of a killed save are removed by the next save to that path', async () => {
    const dir = join(tmpDir(), 'orphans');
    mkdirSync(dir);
    const target = join(dir, 'x.mem');
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString();
    expect(Number(dead)).toBeGreaterThan(0);
    const orphan = join(dir, `.x.mem.${dead}.1700000000000.tmp`);
    const other = join(dir, `.y.mem.${dead}.1700000000000.tmp`); // another file's temp: not ours to touch
    writeFileSync(orphan, Buffer.alloc(1000));
    writeFileSync(other, Buffer.alloc(10));
    await ed.save(target);
    expect(existsSync(orphan)).toBe(false);
    expect(existsSync(other)).toBe(true);
    expect(readdirSync(dir).sort()).toEqual([`.y.mem.${dead}.1700000000000.tmp`, 'x.mem']);
  });
});

describe('editor promises: abort, rollback, dispose, divergence, progress callbacks', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(STORIES, { backend: 'cpu' });
  });
  afterAll(async () => {
    await model.dispose();
  });

  async function snapshot(ed: Editor): Promise<{ logits: Buffer; edits: string[]; memories: unknown; pending: unknown }> {
    const lg = await ed.logits(PROBE.map((p) => model.tokenizer.encode(p)), { positions: 'all' });
    return { logits: Buffer.from(lg.data.buffer), edits: ed.edits(), memories: ed.memories(), pending: ed.pending() };
  }
  async function expectSame(ed: Editor, s: Awaited<ReturnType<typeof snapshot>>): Promise<void> {
    const now = await snapshot(ed);
    expect(now.edits).toEqual(s.edits);
    expect(now.memories).toEqual(s.memories);
    expect(now.pending).toEqual(s.pending);
    expect(now.logits.equals(s.logits)).toBe(true);
  }

  it('an aborted repair edit leaves nothing queued, saved or trained later', async () => {
    const ed = await Editor.create(model, { method: 'repair', nIter: 8 });
    await ed.edit(REC[0]!);
    const s = await snapshot(ed);
    await rejects(ed.edit(REC[1]!, { signal: AbortSignal.abort() }), 'ERR_ABORTED');
    expect(ed.pending().queued).toEqual([]);
    await expectSame(ed, s);
    const ac = new AbortController();
    const p = ed.edit(REC[2]!, { signal: ac.signal });
    setImmediate(() => ac.abort());
    await p.catch(() => {});
    if (!ed.edits().includes('c')) expect(ed.pending().queued).toEqual([]);
    const r = await ed.editMany([]);
    expect(r.results.map((x) => x.id)).not.toContain('b');
    await ed.dispose();
  });

  it('an abort after a repair edit was trained (during its monitor) restores the editor exactly', async () => {
    const ed = await Editor.create(model, { method: 'repair', nIter: 8 });
    await ed.edit(REC[0]!);
    const s = await snapshot(ed);
    const ac = new AbortController();
    await rejects(ed.edit(REC[1]!, { signal: ac.signal, onEvent: (e) => e.type === 'edit-trained' && ac.abort() }), 'ERR_ABORTED');
    await expectSame(ed, s);
    await ed.dispose();
  });

  it('concurrent mutating calls on one editor are serialised: every save holds a consistent state', async () => {
    const ed = await Editor.create(model, { nIter: 5, saveFreq: 1, mergeFreq: 2 });
    const files = [0, 1, 2, 3].map((i) => join(tmpDir(), `conc${i}.mem`));
    const calls = [
      ed.edit(REC[0]!),
      ed.save(files[0]!),
      ed.edit(REC[1]!),
      ed.save(files[1]!),
      ed.editMany([REC[2]!]),
      ed.save(files[2]!),
      ed.rollback('b'),
      ed.save(files[3]!),
    ];
    const settled = await Promise.allSettled(calls);
    expect(settled.map((x) => x.status)).toEqual(calls.map(() => 'fulfilled'));
    const expected = [['a'], ['a', 'b'], ['a', 'b', 'c'], ['a', 'c']];
    for (const [i, f] of files.entries()) {
      const e = await Editor.load(model, f);
      expect(e.edits()).toEqual(expected[i]);
      await e.dispose();
    }
    await ed.dispose();
  });

  it('rollback is transactional: an abort during its replay leaves every edit and every output as it was', async () => {
    const ed = await Editor.create(model, { nIter: 10, saveFreq: 3, mergeFreq: 3 });
    for (const r of REC) await ed.edit(r);
    await ed.edit({ prompt: 'Tim saw a', target: 'whale', id: 'd' });
    const s = await snapshot(ed);
    // abort after the first replayed edit of the shard (a, b, c minus a = b, c): the slot used to be left at
    // the base weight while b and c were still listed
    let aborted = 0;
    for (const delay of [1, 3, 6, 10, 20]) {
      const ac = new AbortController();
      const t = setTimeout(() => ac.abort(), delay);
      try {
        await ed.rollback('a', { signal: ac.signal });
        clearTimeout(t);
        break; // finished before the abort: nothing more to probe
      } catch (e) {
        clearTimeout(t);
        expect((e as RepairError).code).toBe('ERR_ABORTED');
        aborted++;
        await expectSame(ed, s);
      }
    }
    expect(aborted).toBeGreaterThan(0);
    await ed.dispose();
  });

  it('rollback: a divergence during the replay is refused and the editor is unchanged', async () => {
    const ed = await Editor.create(model, { nIter: 10, saveFreq: 3, mergeFreq: 3 });
    for (const r of REC) await ed.edit(r);
    const s = await snapshot(ed);
    // the replay uses the editor's hyper-parameters: make them diverge for the replay only
    (ed as unknown as { config: Record<string, unknown> }).config = Object.freeze({ ...ed.config, lr: 1e30, normConstraint: 0 });
    await rejects(ed.rollback('a'), 'ERR_DIVERGED');
    await expectSame(ed, s);
    await ed.dispose();
  });

  it('dispose() during edit and editMany → ERR_DISPOSED (not ERR_INVALID_ARG, not a resolved edit)', async () => {
    const e1 = await Editor.create(model, { nIter: 10 });
    const p1 = e1.edit(REC[0]!, { onProgress: (p) => p.step === 1 && void e1.dispose() });
    await rejects(p1, 'ERR_DISPOSED');
    const e2 = await Editor.create(model, { nIter: 10, saveFreq: 1, mergeFreq: 1 });
    const p2 = e2.editMany(REC);
    setImmediate(() => void e2.dispose());
    await rejects(p2, 'ERR_DISPOSED');
    const e3 = await Editor.create(model, { nIter: 10 });
    const p3 = e3.edit(REC[0]!);
    void e3.dispose(); // queued behind the edit: the edit finishes natively, yet the call must not resolve
    await rejects(p3, 'ERR_DISPOSED');
    const e4 = await Editor.create(model, { method: 'repair', nIter: 10 });
    const p4 = e4.edit(REC[0]!);
    void e4.dispose();
    await rejects(p4, 'ERR_DISPOSED');
  });

  it('a diverging edit (lr 1e30, no norm constraint) is refused with ERR_DIVERGED and nothing is kept', async () => {
    const ed = await Editor.create(model, { nIter: 10 });
    await ed.edit(REC[0]!);
    const s = await snapshot(ed);
    const bad = await Editor.create(model, { nIter: 10, lr: 1e30, normConstraint: 0 });
    const e = await rejects(bad.edit(REC[1]!), 'ERR_DIVERGED', /diverged/);
    expect(e.message).toMatch(/not stored/);
    expect(bad.edits()).toEqual([]);
    const g = await bad.explain('Once upon a time');
    expect(g.route).toBe('main');
    await expectSame(ed, s);
    await ed.dispose();
    await bad.dispose();
  });

  it("a progress callback that throws rejects the call with the user's error and keeps nothing", async () => {
    const ed = await Editor.create(model, { nIter: 10 });
    await ed.edit(REC[0]!);
    const s = await snapshot(ed);
    class Mine extends Error {}
    for (const at of [0, 3, 9]) {
      let caught: unknown;
      try {
        await ed.edit(REC[1]!, {
          onProgress: (p) => {
            if (p.step === at) throw new Mine(`stop at ${at}`);
          },
        });
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(Mine);
      await expectSame(ed, s);
    }
    await ed.edit(REC[1]!, { onProgress: () => {} }); // and the editor still edits
    expect(ed.edits()).toEqual(['a', 'b']);
    await ed.dispose();
  });
});
