// GPT-2 family (issue 7): config parsing, the byte-level BPE tokenizer (tokenizer.json, and vocab.json +
// merges.txt converted at load), loading variants (the "transformer." prefix, extra tensors), typed errors
// for bad folders (missing biases, wrong Conv1D shapes, n_positions exceeded), the gpt2 / gpt2-xl presets,
// and one WISE edit on tiny-gpt2 (side memory on mlp.c_proj with its bias): recalled teacher-forced, and
// unrelated prompts keep their greedy next token. Logit parity with the float64 reference is in
// parity.test.ts, the edit gradient in grad.test.ts, the new ops in ops_gpt2.test.ts.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, modelInternals, type Model } from '../lib/model.js';
import { parseConfig, readConfig, toNativeArch, matchTensors } from '../lib/config.js';
import { readSafetensorsDir } from '../lib/safetensors.js';
import { Editor, presetFor } from '../lib/editor.js';
import { native } from '../lib/native.js';
import { ModelTokenizer } from '../lib/tokenizer.js';
import { packageRoot } from '../lib/paths.js';
import { addonError, argmax, rejects, throws } from './helpers/setup.js';

const DIR = join(packageRoot(), 'test', 'fixtures', 'tiny-gpt2');
const haveAddon = addonError === '';
if (!haveAddon) console.warn(`[gpt2.test] the native addon is not built (${addonError}): model tests are skipped`);

interface Ref {
  cases: { input_ids: number[]; positions: number[]; logits_all: number[][] }[];
  tokenizer_cases: { text: string; ids: number[] }[];
}
const ref = JSON.parse(readFileSync(join(DIR, 'reference.json'), 'utf8')) as Ref;
const cfgJson = JSON.parse(readFileSync(join(DIR, 'config.json'), 'utf8')) as Record<string, unknown>;


// ---- safetensors rewriting (test folders derived from the fixture) ------------------------------------
interface Entry {
  name: string;
  dtype: string;
  shape: number[];
  data: Buffer;
}
function readEntries(file: string): Entry[] {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out: Entry[] = [];
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    out.push({ name, dtype: t.dtype, shape: t.shape, data: buf.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]) });
  }
  return out;
}
function writeEntries(file: string, entries: Entry[]): void {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const e of entries) {
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + e.data.length] };
    off += e.data.length;
  }
  let h = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - ((8 + h.length) % 8)) % 8;
  h = Buffer.concat([h, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  writeFileSync(file, Buffer.concat([len, h, ...entries.map((e) => e.data)]));
}
/** [R, C] f32 -> [C, R]. */
function transposeF32(data: Buffer, R: number, C: number): Buffer {
  const src = new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.length));
  const dst = new Float32Array(src.length);
  for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) dst[c * R + r] = src[r * C + c]!;
  return Buffer.from(dst.buffer);
}

let tmp: string;
let nDir = 0;
/** A copy of the fixture with its tensors passed through `edit` (and optionally another config). */
function variant(edit: (es: Entry[]) => Entry[], cfg: Record<string, unknown> = cfgJson, withTokenizerJson = true): string {
  const d = join(tmp, `v${nDir++}`);
  mkdirSync(d);
  writeEntries(join(d, 'model.safetensors'), edit(readEntries(join(DIR, 'model.safetensors'))));
  writeFileSync(join(d, 'config.json'), JSON.stringify(cfg));
  copyFileSync(join(DIR, 'tokenizer_config.json'), join(d, 'tokenizer_config.json'));
  if (withTokenizerJson) copyFileSync(join(DIR, 'tokenizer.json'), join(d, 'tokenizer.json'));
  return d;
}

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-gpt2-'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('gpt2 config', () => {
  it('parses the fixture (n_embd / n_layer / n_head / n_positions, n_inner default 4·n_embd, tied, no RoPE)', () => {
    const c = readConfig(DIR);
    expect(c.modelType).toBe('gpt2');
    expect(c.arch).toBe('gpt2');
    expect(c.hiddenAct).toBe('gelu_new');
    expect([c.hiddenSize, c.numLayers, c.numHeads, c.numKvHeads, c.headDim, c.intermediateSize, c.vocabSize]).toEqual([64, 2, 4, 4, 16, 256, 512]);
    expect(c.maxPositionEmbeddings).toBe(64);
    expect(c.maxPositions).toBe(64); // min(n_positions, default context 4096)
    expect(c.rmsNormEps).toBe(1e-5);
    expect(c.invFreq.length).toBe(0);
    expect(c.tieEmbeddings).toBe(true);
    expect(c.eosTokenIds).toEqual([511]);
    const a = toNativeArch(c);
    expect(a.kind).toBe('gpt2');
    expect(a.numPositions).toBe(64);
    expect(readConfig(DIR, { contextLength: 16 }).maxPositions).toBe(16);
  });

  it('GPT-2 XL shapes and defaults (layer_norm_epsilon, activation_function, n_inner)', () => {
    const c = parseConfig({ model_type: 'gpt2', n_embd: 1600, n_layer: 48, n_head: 25, n_positions: 1024, vocab_size: 50257 });
    expect([c.headDim, c.intermediateSize, c.rmsNormEps, c.hiddenAct, c.maxPositions]).toEqual([64, 6400, 1e-5, 'gelu_new', 1024]);
    expect(parseConfig({ ...cfgJson, n_inner: 100 }).intermediateSize).toBe(100);
    expect(parseConfig({ ...cfgJson, activation_function: 'gelu_pytorch_tanh' }).hiddenAct).toBe('gelu_pytorch_tanh');
  });

  it('variants the runtime does not compute are refused with ERR_UNSUPPORTED_ARCH; bad sizes with ERR_CONFIG', () => {
    throws(() => parseConfig({ ...cfgJson, activation_function: 'relu' }), 'ERR_UNSUPPORTED_ARCH', /activation_function "relu"/);
    throws(() => parseConfig({ ...cfgJson, activation_function: 'gelu' }), 'ERR_UNSUPPORTED_ARCH', /gelu_new/);
    throws(() => parseConfig({ ...cfgJson, scale_attn_by_inverse_layer_idx: true }), 'ERR_UNSUPPORTED_ARCH', /scale_attn_by_inverse_layer_idx/);
    throws(() => parseConfig({ ...cfgJson, scale_attn_weights: false }), 'ERR_UNSUPPORTED_ARCH', /scale_attn_weights/);
    throws(() => parseConfig({ ...cfgJson, tie_word_embeddings: false }), 'ERR_UNSUPPORTED_ARCH', /tie_word_embeddings/);
    const { n_embd: _, ...noEmbd } = cfgJson;
    throws(() => parseConfig(noEmbd), 'ERR_CONFIG', /"n_embd"/);
    throws(() => parseConfig({ ...cfgJson, n_head: 5 }), 'ERR_CONFIG', /"n_head" \(5\) must divide "n_embd" \(64\)/);
  });
});

describe('gpt2 tokenizer', () => {
  it('tokenizer.json: the independent BPE encodings of the fixture, no BOS added, and decode round trips', () => {
    const tok = ModelTokenizer.fromDir(DIR);
    for (const c of ref.tokenizer_cases) {
      expect(tok.encode(c.text), c.text).toEqual(c.ids);
      expect(tok.decode(c.ids)).toBe(c.text);
    }
    expect(tok.eosTokenId).toBe(511);
    expect(tok.encode('<|endoftext|>')).toEqual([511]);
    expect(tok.decode([265, 511], { skipSpecialTokens: true })).toBe('The');
  });

  it('vocab.json + merges.txt (no tokenizer.json) is converted at load and encodes identically', () => {
    const tj = JSON.parse(readFileSync(join(DIR, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number>; merges: string[] } };
    const d = join(tmp, 'vocab-merges');
    mkdirSync(d);
    writeFileSync(join(d, 'vocab.json'), JSON.stringify({ ...tj.model.vocab, '<|endoftext|>': 511 }));
    writeFileSync(join(d, 'merges.txt'), `#version: 0.2\n${tj.model.merges.join('\n')}\n`);
    copyFileSync(join(DIR, 'tokenizer_config.json'), join(d, 'tokenizer_config.json'));
    const a = ModelTokenizer.fromDir(DIR);
    const b = ModelTokenizer.fromDir(d);
    const texts = [...ref.tokenizer_cases.map((c) => c.text), 'café ☃ naïve — ünïcödé 😀', 'tabs\tand\nnewlines\n\n  x', "it's we'll they're"];
    for (const t of texts) {
      expect(b.encode(t), t).toEqual(a.encode(t));
      expect(b.decode(b.encode(t))).toBe(t);
    }
    expect(b.eosTokenId).toBe(511);
    expect(b.encode('x<|endoftext|>')).toEqual(a.encode('x<|endoftext|>'));
  });

  it('a bad merges.txt is refused with ERR_TOKENIZER', () => {
    const d = join(tmp, 'bad-merges');
    mkdirSync(d);
    writeFileSync(join(d, 'vocab.json'), JSON.stringify({ a: 0, b: 1 }));
    writeFileSync(join(d, 'merges.txt'), 'a b c\n');
    throws(() => ModelTokenizer.fromDir(d), 'ERR_TOKENIZER', /merges\.txt line 1/);
  });
});

describe.skipIf(!haveAddon)('gpt2 loading variants and bad folders', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(DIR, { backend: 'cpu' });
  });
  afterAll(async () => {
    await model?.dispose();
  });
  const c = ref.cases[1]!;

  it('the "transformer." prefix, extra tensors (attn.bias mask buffers, an lm_head copy) and vocab.json + merges.txt load the same model', async () => {
    const d = variant(
      (es) => [
        ...es.map((e) => ({ ...e, name: `transformer.${e.name}` })),
        { name: 'transformer.h.0.attn.bias', dtype: 'F32', shape: [1, 1, 4, 4], data: Buffer.alloc(64) },
        { ...es.find((e) => e.name === 'wte.weight')!, name: 'lm_head.weight' },
      ],
      cfgJson,
      false,
    );
    const tj = JSON.parse(readFileSync(join(DIR, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number>; merges: string[] } };
    writeFileSync(join(d, 'vocab.json'), JSON.stringify({ ...tj.model.vocab, '<|endoftext|>': 511 }));
    writeFileSync(join(d, 'merges.txt'), tj.model.merges.join('\n'));
    const specs = matchTensors(readConfig(d), readSafetensorsDir(d));
    expect(specs.every((s) => !s.name.startsWith('transformer.'))).toBe(true);
    const m2 = await loadModel(d, { backend: 'cpu' });
    try {
      const a = await model.logits([c.input_ids], { positions: 'all' });
      const b = await m2.logits([c.input_ids], { positions: 'all' });
      expect(Array.from(b.data)).toEqual(Array.from(a.data));
      expect(m2.tokenizer.encode(ref.tokenizer_cases[0]!.text)).toEqual(ref.tokenizer_cases[0]!.ids);
    } finally {
      await m2.dispose();
    }
  });

  it('a missing bias → ERR_MISSING_TENSOR naming it', async () => {
    for (const name of ['h.1.mlp.c_proj.bias', 'h.0.attn.c_attn.bias', 'h.0.ln_2.bias', 'ln_f.bias']) {
      const d = variant((es) => es.filter((e) => e.name !== name));
      await rejects(loadModel(d, { backend: 'cpu' }), 'ERR_MISSING_TENSOR', new RegExp(`"${name.replace(/\./g, '\\.')}"`));
    }
    const d = variant((es) => es.filter((e) => e.name !== 'h.0.attn.c_proj.bias').map((e) => ({ ...e, name: `transformer.${e.name}` })));
    await rejects(loadModel(d, { backend: 'cpu' }), 'ERR_MISSING_TENSOR', /"transformer\.h\.0\.attn\.c_proj\.bias"/);
  });

  it('a Conv1D weight in the wrong shape → ERR_SHAPE naming the expected [in, out] layout', async () => {
    // stored transposed, as an nn.Linear [out, in]
    const t = variant((es) => es.map((e) => (e.name === 'h.1.mlp.c_fc.weight' ? { ...e, shape: [256, 64], data: transposeF32(e.data, 64, 256) } : e)));
    const e1 = await rejects(loadModel(t, { backend: 'cpu' }), 'ERR_SHAPE', /"h\.1\.mlp\.c_fc\.weight" has shape \[256, 64\], expected \[64, 256\]/, /Conv1D layout \[in, out\]/, /stored transposed/);
    expect(e1.details?.expected).toEqual([64, 256]);
    // a wrong size altogether
    const w = variant((es) => es.map((e) => (e.name === 'h.0.attn.c_attn.weight' ? { ...e, shape: [64, 128], data: e.data.subarray(0, 64 * 128 * 4) } : e)));
    await rejects(loadModel(w, { backend: 'cpu' }), 'ERR_SHAPE', /c_attn\.weight" has shape \[64, 128\], expected \[64, 192\]/, /Conv1D layout \[in, out\]/);
    // wpe shorter than n_positions
    const p = variant((es) => es.map((e) => (e.name === 'wpe.weight' ? { ...e, shape: [32, 64], data: e.data.subarray(0, 32 * 64 * 4) } : e)));
    await rejects(loadModel(p, { backend: 'cpu' }), 'ERR_SHAPE', /"wpe\.weight" has shape \[32, 64\], expected \[64, 64\]/);
  });

  it('the native loader re-checks the Conv1D layout (ERR_SHAPE) when handed a transposed tensor directly', async () => {
    const cfg = readConfig(DIR);
    const specs = matchTensors(cfg, readSafetensorsDir(DIR)).map((s) => (s.name === 'h.0.mlp.c_proj.weight' ? { ...s, shape: [64, 256] } : s));
    const nm = new (native().NativeModel)({ backend: 'cpu', device: 0, arch: toNativeArch(cfg), tensors: specs });
    try {
      await expect(nm.load()).rejects.toThrow(/h\.0\.mlp\.c_proj\.weight has shape \[64, 256\], expected \[256, 64\] \(GPT-2 Conv1D layout \[in, out\]\)/);
    } finally {
      nm.dispose();
    }
    // the arch itself: n_positions below the context length
    expect(() => new (native().NativeModel)({ backend: 'cpu', device: 0, arch: { ...toNativeArch(cfg), numPositions: 32 }, tensors: specs })).toThrow(/n_positions/);
  });

  it('prompts longer than n_positions → ERR_CONTEXT_LENGTH (the context is capped at n_positions)', async () => {
    const m = await loadModel(DIR, { backend: 'cpu', contextLength: 4096 });
    try {
      expect(m.contextLength).toBe(64);
      const long = Array.from({ length: 65 }, (_, i) => (i * 7) % 500);
      await rejects(m.generate({ tokens: long }, { maxNewTokens: 1 }), 'ERR_CONTEXT_LENGTH', /65 tokens, longer than the context length 64/);
      await rejects(m.logits([long]), 'ERR_CONTEXT_LENGTH');
      const ok = await m.generate({ tokens: long.slice(0, 60) }, { maxNewTokens: 10, stopOnEos: false });
      expect(ok.finishReason).toBe('length');
      expect(ok.tokens.length).toBe(5); // stops where the 64 positions are full
      const ed = await Editor.create(m, { contextTemplates: ['{}'], irrelevantPool: ['Hello world'] });
      await rejects(ed.edit({ prompt: 'word '.repeat(70), target: 'x' }), 'ERR_CONTEXT_LENGTH');
    } finally {
      await m.dispose();
    }
  });
});

describe('gpt2 presets (ALGORITHM.md §1.10)', () => {
  const gpt2 = (n_layer: number, n_embd: number, n_head: number) => parseConfig({ model_type: 'gpt2', n_embd, n_layer, n_head, n_positions: 1024, vocab_size: 50257 });
  it('gpt2-xl: layer 8, n_iter 40, act_ratio 0.80, margins [5, 20, 10]; gpt2: layer 8; other sizes at 2/3 depth', () => {
    const xl = presetFor(gpt2(48, 1600, 25));
    expect(xl).toMatchObject({ preset: 'gpt2-xl', layer: 8, nIter: 40, actRatio: 0.8, actMargin: [5, 20, 10], lr: 1 });
    expect(presetFor(gpt2(12, 768, 12))).toMatchObject({ preset: 'gpt2', layer: 8, nIter: 40, actRatio: 0.8 });
    expect(presetFor(gpt2(24, 1024, 16))).toMatchObject({ layer: 16, nIter: 40 });
    expect(presetFor(readConfig(DIR))).toMatchObject({ layer: 0, nIter: 40 });
  });
});

describe.skipIf(!haveAddon)('one WISE edit on tiny-gpt2 (side memory on mlp.c_proj, with its bias)', () => {
  let model: Model;
  let ed: Editor;
  const req = { prompt: 'The wizard Zog lived in', target: 'a purple castle' };
  // Chosen before any edit was run; plain English over the fixture's merges.
  const UNRELATED = [
    'The capital of France is',
    'Hello world',
    'Once upon a time there was',
    'The river is called',
    'Yes, we will go',
    'In 1990 the team',
    'She liked to play in the',
    'The president of the company',
  ];
  const before = new Map<string, Float32Array>();
  beforeAll(async () => {
    model = await loadModel(DIR, { backend: 'cpu' });
    for (const u of UNRELATED) before.set(u, (await model.logits([model.tokenizer.encode(u)])).row(0).slice());
    // [ours] irrelevantRows 4: on this 2-layer random-weight model one irrelevant row (the reference)
    // leaves the routing margin loose (2 of these 8 prompts route to the memory and change their next
    // token); four irrelevant rows per edit tighten it (EditorConfig.irrelevantRows).
    ed = await Editor.create(model, { irrelevantRows: 4 });
  });
  afterAll(async () => {
    await model?.dispose();
  });

  async function tfAcc(e: { logits: Model['logits'] }): Promise<number> {
    const ids = model.tokenizer.encode(`${req.prompt} ${req.target}`);
    const pl = model.tokenizer.encode(req.prompt).length;
    const lg = await e.logits([ids], { positions: 'all' });
    let ok = 0;
    for (let j = pl; j < ids.length; j++) if (argmax(lg.at(0, j - 1)) === ids[j]) ok++;
    return ok / (ids.length - pl);
  }

  it('the gpt2 preset applies (layer 0 of 2, 40 steps, GELU routing score)', () => {
    expect(ed.config).toMatchObject({ layer: 0, nIter: 40, actRatio: 0.8, actMargin: [5, 20, 10] });
    expect(ed.config.preset).toMatch(/gpt2/);
  });

  it('the edit is recalled (teacher-forced accuracy 1.0) and generated', async () => {
    expect(await tfAcc(model)).toBeLessThan(1);
    const r = await ed.edit(req);
    expect(r.steps).toBe(40);
    expect(r.losses.at(-1)!).toBeLessThan(r.losses[0]! / 4);
    expect(await tfAcc(ed)).toBe(1);
    expect((await ed.generate(req.prompt, { maxNewTokens: 4 })).completion).toMatch(/^ ?a purple castle/);
    const x = await ed.explain(req.prompt);
    expect(x.route).toBe(-1);
    expect(x.score).toBeGreaterThan(x.threshold);
    console.log(`[gpt2] edit: loss ${r.losses[0]!.toFixed(3)} -> ${r.losses.at(-1)!.toFixed(3)}; prompt score ${x.score.toFixed(2)}, threshold ${x.threshold.toFixed(2)}`);
  });

  it('unrelated prompts keep their greedy next token; those routed to the main weight keep their exact logits', async () => {
    let kept = 0;
    let main = 0;
    const scores: string[] = [];
    for (const u of UNRELATED) {
      const row = (await ed.logits([model.tokenizer.encode(u)])).row(0);
      const want = before.get(u)!;
      if (argmax(row) === argmax(want)) kept++;
      const x = await ed.explain(u);
      scores.push(`${x.score.toFixed(1)}${x.route === 'main' ? '' : '*'}`);
      if (x.route === 'main') {
        main++;
        expect(Array.from(row)).toEqual(Array.from(want));
      }
    }
    console.log(`[gpt2] unrelated: ${kept}/${UNRELATED.length} keep their next token, ${main} routed to main (scores ${scores.join(', ')}; * = routed to the memory)`);
    expect(kept).toBe(UNRELATED.length);
    expect(main).toBeGreaterThanOrEqual(UNRELATED.length - 1);
  });

  it('save / load round trip keeps routing and recall (the c_proj bias is part of every score)', async () => {
    const f = join(tmp, 'gpt2.repair.safetensors');
    await ed.save(f);
    const ed2 = await Editor.load(model, f);
    const a = await ed.explain(req.prompt);
    const b = await ed2.explain(req.prompt);
    expect(b.score).toBeCloseTo(a.score, 4);
    expect(await tfAcc(ed2)).toBe(1);
  });
});

describe.skipIf(!haveAddon)("editMatrix 'key': the reference's c_fc side memory (parity option)", () => {
  let model: Model;
  const req = { prompt: 'The wizard Zog lived in', target: 'a purple castle' };
  const UNRELATED = ['The capital of France is', 'Hello world', 'Once upon a time there was', 'The river is called', 'Yes, we will go', 'In 1990 the team', 'She liked to play in the', 'The president of the company'];
  beforeAll(async () => {
    model = await loadModel(DIR, { backend: 'cpu' });
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it('an edit of c_fc (through gelu and c_proj) is recalled and generated; unrelated prompts keep their next token; save/load', async () => {
    const before = new Map<string, number>();
    for (const u of UNRELATED) before.set(u, argmax((await model.logits([model.tokenizer.encode(u)])).row(0)));
    const ed = await Editor.create(model, { editMatrix: 'key' });
    expect(ed.config.editMatrix).toBe('key');
    const ids = model.tokenizer.encode(`${req.prompt} ${req.target}`);
    const pl = model.tokenizer.encode(req.prompt).length;
    const acc = async (e: { logits: Model['logits'] }): Promise<number> => {
      const lg = await e.logits([ids], { positions: 'all' });
      let ok = 0;
      for (let j = pl; j < ids.length; j++) if (argmax(lg.at(0, j - 1)) === ids[j]) ok++;
      return ok / (ids.length - pl);
    };
    const r = await ed.edit(req);
    expect(r.losses.at(-1)!).toBeLessThan(r.losses[0]! / 4);
    expect(await acc(ed)).toBe(1); // routed forward: the slot replaces c_fc for the routed rows
    expect((await ed.generate(req.prompt, { maxNewTokens: 4 })).completion).toMatch(/^ ?a purple castle/); // routed KV-cache path
    let kept = 0;
    for (const u of UNRELATED) if (argmax((await ed.logits([model.tokenizer.encode(u)])).row(0)) === before.get(u)) kept++;
    console.log(`[gpt2] key (c_fc) edit: loss ${r.losses[0]!.toFixed(3)} -> ${r.losses.at(-1)!.toFixed(3)}; unrelated kept ${kept}/${UNRELATED.length}`);
    expect(kept).toBe(UNRELATED.length);
    const f = join(tmp, 'gpt2-key.repair.safetensors');
    await ed.save(f);
    const ed2 = await Editor.load(model, f);
    expect(ed2.config.editMatrix).toBe('key');
    expect((await ed2.explain(req.prompt)).score).toBeCloseTo((await ed.explain(req.prompt)).score, 4);
    expect(await acc(ed2)).toBe(1);
    await Promise.all([ed.dispose(), ed2.dispose()]);
  });

  it("editMatrix 'key' is refused on a Llama-family model; a bad value is refused", async () => {
    const llama = await loadModel(join(packageRoot(), 'test', 'fixtures', 'tiny-llama3'), { backend: 'cpu' });
    try {
      await rejects(Editor.create(llama, { editMatrix: 'key', contextTemplates: ['{}'], irrelevantPool: ['x'] }), 'ERR_INVALID_ARG', /only for gpt2/);
    } finally {
      await llama.dispose();
    }
    await rejects(Editor.create(model, { editMatrix: 'up' as 'key', contextTemplates: ['{}'], irrelevantPool: ['x'] }), 'ERR_INVALID_ARG', /editMatrix/);
  });

  it('native stores: target 1 only on gpt2, target 2 nowhere; the key and value fingerprints differ', async () => {
    const fps = await modelInternals(model).enqueue(async (nm) => {
      expect(() => nm.sideCreate(0, 2 as 1)).toThrow(/target must be 0/);
      return [await nm.baseFingerprint(0, 0), await nm.baseFingerprint(0, 1)];
    });
    expect(fps[0]).not.toBe(fps[1]);
    const llama = await loadModel(join(packageRoot(), 'test', 'fixtures', 'tiny-llama3'), { backend: 'cpu' });
    try {
      await modelInternals(llama).enqueue(async (nm) => {
        expect(() => nm.sideCreate(0, 1)).toThrow(/only for gpt2/);
      });
    } finally {
      await llama.dispose();
    }
  });
});
