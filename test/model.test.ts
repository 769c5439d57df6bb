// Model-level tests: tokenizer ids and chat templates (no addon needed), loading errors, then (with the
// addon) stories260K logits / greedy text against reference_outputs.json, batching, sampling, the
// queue, abort, dispose and context limits.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { rmSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadModel, Model, type GenerateResult } from '../lib/model.js';
import { ModelTokenizer } from '../lib/tokenizer.js';
import { RepairError } from '../lib/errors.js';
import { native } from '../lib/native.js';
import { packageRoot } from '../lib/paths.js';
import { readSt, writeSt } from './helpers/st.js';
import { budget } from './helpers/time.js';
import { addonError, copyModel, rejects, useTempDir } from './helpers/setup.js';

const STORIES = join(packageRoot(), '..', 'shared', 'models', 'stories260K', 'hf');
const haveStories = existsSync(join(STORIES, 'config.json'));
if (!haveStories) console.warn(`[model.test] ${STORIES} is absent: stories260K tests are skipped`);

const haveAddon = addonError === '';
if (!haveAddon) console.warn(`[model.test] the native addon is not built (${addonError}): model tests that run the network are skipped`);
const cudaAvailable = haveAddon && native().info().cuda.available;

interface RefCase {
  prompt: string;
  input_ids: number[];
  last_logits_top5: { id: number; logit: number }[];
  last_logits_first8: number[];
  greedy_32_ids: number[];
  greedy_32_text: string;
}
const ref: { cases: RefCase[] } = haveStories ? JSON.parse(readFileSync(join(STORIES, 'reference_outputs.json'), 'utf8')) : { cases: [] };

const tmpDir = useTempDir('repair-model-');
/** A copy of stories260K in a temp folder, with files replaced/patched. */
const storiesCopy = (patch?: (dir: string) => void): string => copyModel(STORIES, tmpDir(), patch);

const CHAT_TEMPLATE =
  "{{ bos_token }}{% for m in messages %}{{ '[' + m['role'] + '] ' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}";

describe.skipIf(!haveStories)('tokenizer (stories260K)', () => {
  let tok: ModelTokenizer;
  beforeAll(() => {
    tok = ModelTokenizer.fromDir(STORIES);
  });

  it('encodes the reference prompts to the reference ids (BOS added)', () => {
    for (const c of ref.cases) expect(tok.encode(c.prompt)).toEqual(c.input_ids);
    expect(tok.encode('Once upon a time', { addSpecialTokens: false })).toEqual(ref.cases[0]!.input_ids.slice(1));
    expect(tok.bosTokenId).toBe(1);
    expect(tok.eosTokenId).toBe(2);
  });

  it('decodes prompt + greedy ids to the reference text', () => {
    for (const c of ref.cases) expect(tok.decode([...c.input_ids, ...c.greedy_32_ids])).toBe(c.greedy_32_text);
    expect(tok.decode([])).toBe('');
    expect(tok.decode([1, 403, 2], { skipSpecialTokens: false })).toBe('<s> Once</s>');
    expect(tok.decode([1, 403, 2])).toBe('Once');
  });

  it('has no chat template: messages are refused with ERR_TOKENIZER', () => {
    expect(tok.hasChatTemplate).toBe(false);
    expect(() => tok.applyChatTemplate([{ role: 'user', content: 'hi' }])).toThrow(RepairError);
    try {
      tok.applyChatTemplate([{ role: 'user', content: 'hi' }]);
    } catch (e) {
      expect((e as RepairError).code).toBe('ERR_TOKENIZER');
      expect((e as RepairError).message).toMatch(/no chat template/);
    }
  });

  it('renders a chat template from tokenizer_config.json with bos/eos and add_generation_prompt', () => {
    const d = storiesCopy((dir) => {
      const tc = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
      writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ ...tc, chat_template: CHAT_TEMPLATE }));
    });
    const t = ModelTokenizer.fromDir(d);
    expect(t.hasChatTemplate).toBe(true);
    const msgs = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Once upon a time' },
    ];
    expect(t.applyChatTemplate(msgs)).toBe('<s>[system] Be brief.\n[user] Once upon a time\n[assistant] ');
    expect(t.applyChatTemplate(msgs, { addGenerationPrompt: false })).toBe('<s>[system] Be brief.\n[user] Once upon a time\n');
    expect(() => t.applyChatTemplate([])).toThrow(/non-empty/);
  });

  it('a broken template or tokenizer file is ERR_TOKENIZER', () => {
    const d = storiesCopy((dir) => {
      const tc = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
      writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ ...tc, chat_template: '{% for m in messages %}{{ m.content ' }));
    });
    expect(() => ModelTokenizer.fromDir(d).applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(/chat template/);
    const e = storiesCopy((dir) => writeFileSync(join(dir, 'tokenizer.json'), '{"model": '));
    expect(() => ModelTokenizer.fromDir(e)).toThrow(RepairError);
    const f = storiesCopy((dir) => rmSync(join(dir, 'tokenizer.json')));
    try {
      ModelTokenizer.fromDir(f);
      expect.unreachable();
    } catch (err) {
      expect((err as RepairError).code).toBe('ERR_TOKENIZER');
      expect((err as RepairError).message).toMatch(/tokenizer\.json not found/);
    }
  });
});

describe.skipIf(!haveStories)('loadModel: bad folders fail with typed errors before any native work', () => {
  it('missing folder → ERR_IO', async () => {
    await rejects(loadModel(join(tmpDir(), 'does-not-exist')), 'ERR_IO', /does-not-exist/);
  });
  it('config.json missing → ERR_CONFIG', async () => {
    await rejects(loadModel(storiesCopy((d) => rmSync(join(d, 'config.json')))), 'ERR_CONFIG', /config\.json not found/);
  });
  it('unsupported model_type → ERR_UNSUPPORTED_ARCH naming it', async () => {
    const d = storiesCopy((dir) => {
      const c = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...c, model_type: 'bert' }));
    });
    await rejects(loadModel(d), 'ERR_UNSUPPORTED_ARCH', /"bert"/);
  });
  it('absurd sizes → ERR_CONFIG naming the field', async () => {
    const d = storiesCopy((dir) => {
      const c = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...c, num_hidden_layers: 100000 }));
    });
    await rejects(loadModel(d), 'ERR_CONFIG', /"num_hidden_layers"/);
  });
  it('wrong shape for the config → ERR_SHAPE', async () => {
    const d = storiesCopy((dir) => {
      const c = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...c, num_key_value_heads: 8 }));
    });
    await rejects(loadModel(d), 'ERR_SHAPE', /k_proj\.weight/, /\[32, 64\]/, /expected \[64, 64\]/);
  });
  it('truncated safetensors → ERR_SAFETENSORS', async () => {
    const d = storiesCopy((dir) => {
      const b = readFileSync(join(dir, 'model.safetensors'));
      writeFileSync(join(dir, 'model.safetensors'), b.subarray(0, b.length - 1000));
    });
    await rejects(loadModel(d), 'ERR_SAFETENSORS', /model\.safetensors/, /truncated/);
  });
  it('missing tensor → ERR_MISSING_TENSOR', async () => {
    const d = storiesCopy((dir) => {
      // dropped with its bytes: the rest still tiles the data section
      const { header, data } = readSt(join(dir, 'model.safetensors'));
      writeSt(join(dir, 'model.safetensors'), header, data, ['model.layers.2.self_attn.o_proj.weight']);
    });
    await rejects(loadModel(d), 'ERR_MISSING_TENSOR', /"model\.layers\.2\.self_attn\.o_proj\.weight"/);
  });
  it('bad options → ERR_INVALID_ARG', async () => {
    await rejects(loadModel(STORIES, { backend: 'tpu' as never }), 'ERR_INVALID_ARG', /backend/);
    await rejects(loadModel(STORIES, { contextLength: -1 }), 'ERR_INVALID_ARG', /contextLength/);
  });
  it('an aborted signal → ERR_ABORTED', async () => {
    await rejects(loadModel(STORIES, { signal: AbortSignal.abort() }), 'ERR_ABORTED');
  });
});

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

const backends: ('cpu' | 'cuda')[] = cudaAvailable ? ['cpu', 'cuda'] : ['cpu'];

describe.skipIf(!haveStories || !haveAddon).each(backends)('stories260K on %s', (backend) => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(STORIES, { backend });
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it('loads with the requested backend and the parsed config', () => {
    expect(model.backend).toBe(backend);
    expect(model.config.modelType).toBe('llama');
    expect(model.contextLength).toBe(512);
    expect(model.memoryBytes()).toBeGreaterThan(0);
  });

  it('memoryPeakBytes: the allocation high-water mark, reset to the bytes in use', async () => {
    const now = model.memoryBytes();
    expect(model.memoryPeakBytes({ reset: true })).toBeGreaterThanOrEqual(now);
    expect(model.memoryPeakBytes()).toBe(now); // just reset: the mark is what is in use
    // a longer batch than any before grows the scratch buffers: the mark rises with them and stays
    const ids = Array.from({ length: 4 }, (_, b) => Array.from({ length: 200 }, (_, t) => 1 + ((b * 7 + t * 13) % 500)));
    await model.logits(ids, { positions: 'all' });
    const peak = model.memoryPeakBytes();
    expect(peak).toBeGreaterThan(now);
    expect(peak).toBeGreaterThanOrEqual(model.memoryBytes());
    expect(model.memoryPeakBytes()).toBe(peak);
  });

  it('last-position logits match reference_outputs.json within 1e-4', async () => {
    for (const c of ref.cases) {
      const r = await model.logits([c.input_ids]);
      expect(r.rows).toEqual([{ sequence: 0, position: c.input_ids.length - 1 }]);
      expect(r.vocab).toBe(512);
      const row = r.row(0);
      expect(maxAbsDiff(row.subarray(0, 8), c.last_logits_first8)).toBeLessThan(1e-4);
      for (const t of c.last_logits_top5) expect(Math.abs(row[t.id]! - t.logit)).toBeLessThan(1e-4);
      const top5 = Array.from(row.keys())
        .sort((a, b) => row[b]! - row[a]!)
        .slice(0, 5);
      expect(top5).toEqual(c.last_logits_top5.map((t) => t.id));
    }
  });

  it('32 greedy tokens and the text match exactly', async () => {
    for (const c of ref.cases) {
      const r = await model.generate(c.prompt, { maxNewTokens: 32, temperature: 0 });
      expect(r.promptTokens).toEqual(c.input_ids);
      expect(r.tokens).toEqual(c.greedy_32_ids);
      expect(r.text).toBe(c.greedy_32_text);
      expect(r.finishReason).toBe('length');
      expect(r.completion).toBe(model.tokenizer.decode(c.greedy_32_ids));
    }
  });

  it('batched logits with different lengths equal the per-sequence logits (left padding)', async () => {
    const batch = ref.cases.map((c) => c.input_ids);
    batch.push([1], [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315]);
    const all = await model.logits(batch, { positions: 'all' });
    expect(all.rows.length).toBe(batch.reduce((s, b) => s + b.length, 0));
    for (let b = 0; b < batch.length; b++) {
      const single = await model.logits([batch[b]!], { positions: 'all' });
      for (let p = 0; p < batch[b]!.length; p++) {
        expect(maxAbsDiff(all.at(b, p), single.at(0, p)), `sequence ${b} position ${p}`).toBeLessThan(1e-4);
      }
    }
    // 'last' and explicit (negative) positions pick the same rows (the lm_head GEMM may block differently for
    // a different number of rows, so equal within f32 rounding, not bitwise).
    const last = await model.logits(batch);
    const explicit = await model.logits(batch, { positions: batch.map((s) => [-1, 0, s.length - 1]) });
    for (let b = 0; b < batch.length; b++) {
      expect(maxAbsDiff(last.row(b), all.at(b, -1))).toBeLessThan(1e-4);
      expect(explicit.rows.slice(3 * b, 3 * b + 3)).toEqual([
        { sequence: b, position: batch[b]!.length - 1 },
        { sequence: b, position: 0 },
        { sequence: b, position: batch[b]!.length - 1 },
      ]);
      expect(maxAbsDiff(explicit.row(3 * b + 1), all.at(b, 0))).toBeLessThan(1e-4);
    }
  });

  it('greedy generation equals argmax of teacher-forced logits', async () => {
    const c = ref.cases[1]!;
    const ids = [...c.input_ids, ...c.greedy_32_ids.slice(0, 31)];
    const r = await model.logits([ids], { positions: 'all' });
    for (let k = 0; k < 32; k++) {
      const row = r.at(0, c.input_ids.length - 1 + k);
      let best = 0;
      for (let v = 1; v < row.length; v++) if (row[v]! > row[best]!) best = v;
      expect(best).toBe(c.greedy_32_ids[k]);
    }
  });

  it('chunk size does not change the tokens (greedy and sampled)', async () => {
    const c = ref.cases[0]!;
    for (const temperature of [0, 0.9]) {
      const runs: number[][] = [];
      for (const chunkSize of [1, 3, 8, 64]) {
        runs.push((await model.generate(c.prompt, { maxNewTokens: 40, temperature, topK: 40, topP: 0.95, seed: 7, chunkSize })).tokens);
      }
      for (const r of runs) expect(r).toEqual(runs[0]);
      if (temperature === 0) expect(runs[0]!.slice(0, 32)).toEqual(c.greedy_32_ids);
    }
  });

  it('sampling is reproducible for a seed and differs across seeds', async () => {
    const p = ref.cases[2]!.prompt;
    const a = await model.generate(p, { maxNewTokens: 48, temperature: 1, seed: 1234, stopOnEos: false });
    const b = await model.generate(p, { maxNewTokens: 48, temperature: 1, seed: 1234, stopOnEos: false });
    const seeds = [1, 2, 3, 4].map((seed) => model.generate(p, { maxNewTokens: 48, temperature: 1, seed, stopOnEos: false }));
    const others = await Promise.all(seeds);
    expect(b.tokens).toEqual(a.tokens);
    expect(a.tokens.length).toBe(48);
    const distinct = new Set([a, ...others].map((r) => r.tokens.join(',')));
    expect(distinct.size).toBe(5);
    // top-k 1 is greedy whatever the temperature.
    const k1 = await model.generate(ref.cases[0]!.prompt, { maxNewTokens: 32, temperature: 1.5, topK: 1, seed: 99 });
    expect(k1.tokens).toEqual(ref.cases[0]!.greedy_32_ids);
  });

  it('onToken streams every token in order and its text adds up to the completion', async () => {
    const c = ref.cases[0]!;
    const seen: { id: number; index: number; text: string }[] = [];
    const r = await model.generate(c.prompt, { maxNewTokens: 32, onToken: (t) => seen.push(t) });
    expect(seen.map((t) => t.id)).toEqual(c.greedy_32_ids);
    expect(seen.map((t) => t.index)).toEqual([...Array(32).keys()]);
    expect(seen.map((t) => t.text).join('')).toBe(r.completion);
  });

  it('stop strings cut the text before the stop string', async () => {
    const c = ref.cases[0]!; // "... a little girl named Lily. She loved ..."
    const r = await model.generate(c.prompt, { maxNewTokens: 32, stop: ['Lily', 'zzz'] });
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe('Once upon a time, there was a little girl named ');
    expect(r.completion).toBe(', there was a little girl named ');
    expect(model.tokenizer.decode(r.tokens)).toContain('Lily');
    expect(r.tokens).toEqual(c.greedy_32_ids.slice(0, r.tokens.length));
    expect(model.tokenizer.decode(r.tokens.slice(0, -1))).not.toContain('Lily');
  });

  it('maxNewTokens 0 returns the prompt; generation stops where the context is full', async () => {
    const r0 = await model.generate('Once upon a time', { maxNewTokens: 0 });
    expect(r0).toMatchObject({ tokens: [], completion: '', text: 'Once upon a time', finishReason: 'length' });
    const small = await loadModel(STORIES, { backend, contextLength: 16 });
    try {
      const c = ref.cases[0]!; // 5 prompt tokens: 16 - 5 + 1 = 12 new tokens fit (the last is never fed back)
      const r = await small.generate(c.prompt, { maxNewTokens: 100 });
      expect(r.finishReason).toBe('length');
      expect(r.tokens).toEqual(c.greedy_32_ids.slice(0, 12));
    } finally {
      await small.dispose();
    }
  });

  it('a prompt longer than the context → ERR_CONTEXT_LENGTH naming the lengths', async () => {
    const small = await loadModel(STORIES, { backend, contextLength: 8 });
    try {
      const c = ref.cases[2]!; // 9 tokens
      await rejects(small.generate(c.prompt), 'ERR_CONTEXT_LENGTH', /9 tokens/, /context length 8/);
      await rejects(small.logits([[1, 2, 3], c.input_ids]), 'ERR_CONTEXT_LENGTH', /batch\[1\]/, /9 tokens/);
      // It still works afterwards.
      expect((await small.generate(ref.cases[0]!.prompt, { maxNewTokens: 3 })).tokens).toEqual(ref.cases[0]!.greedy_32_ids.slice(0, 3));
    } finally {
      await small.dispose();
    }
    await rejects(model.generate('x '.repeat(600)), 'ERR_CONTEXT_LENGTH', /longer than the context length 512/);
  });

  it('bad arguments → ERR_INVALID_ARG', async () => {
    await rejects(model.logits([[1, 512]]), 'ERR_INVALID_ARG', /token id 512/);
    await rejects(model.logits([[1, -1]]), 'ERR_INVALID_ARG', /token id -1/);
    await rejects(model.logits([[1, 2.5]]), 'ERR_INVALID_ARG');
    await rejects(model.logits([]), 'ERR_INVALID_ARG');
    await rejects(model.logits([[]]), 'ERR_INVALID_ARG', /empty/);
    await rejects(model.logits([[1, 2]], { positions: [[2]] }), 'ERR_INVALID_ARG', /position 2/);
    await rejects(model.logits([[1, 2]], { positions: [[0], [1]] }), 'ERR_INVALID_ARG', /positions/);
    await rejects(model.generate({ tokens: [1, 9999] }), 'ERR_INVALID_ARG', /9999/);
    await rejects(model.generate('x', { temperature: -1 }), 'ERR_INVALID_ARG', /temperature/);
    await rejects(model.generate('x', { topP: 0 }), 'ERR_INVALID_ARG', /topP/);
    await rejects(model.generate('x', { seed: 2 ** 32 }), 'ERR_INVALID_ARG', /seed/);
    await rejects(model.generate('x', { maxNewTokens: 1.5 }), 'ERR_INVALID_ARG', /maxNewTokens/);
    await rejects(model.generate('x', { stop: [''] }), 'ERR_INVALID_ARG', /stop/);
    await rejects(model.generate([{ role: 'user', content: 'hi' }]), 'ERR_TOKENIZER', /chat template/);
    // Token-id prompts are fed as they are.
    const r = await model.generate({ tokens: ref.cases[0]!.input_ids }, { maxNewTokens: 4 });
    expect(r.tokens).toEqual(ref.cases[0]!.greedy_32_ids.slice(0, 4));
  });

  it('abort mid-generation → ERR_ABORTED, and the model keeps working', async () => {
    const ac = new AbortController();
    let count = 0;
    const p = model.generate(ref.cases[0]!.prompt, {
      maxNewTokens: 400,
      stopOnEos: false,
      chunkSize: 4,
      signal: ac.signal,
      onToken: () => {
        if (count++ === 0) ac.abort();
      },
    });
    await rejects(p, 'ERR_ABORTED');
    expect(count).toBe(1); // no more tokens are delivered after the abort
    const after = await model.generate(ref.cases[0]!.prompt, { maxNewTokens: 32 });
    expect(after.text).toBe(ref.cases[0]!.greedy_32_text);
    await rejects(model.generate('x', { signal: AbortSignal.abort() }), 'ERR_ABORTED');
    await rejects(model.logits([[1, 2]], { signal: AbortSignal.abort() }), 'ERR_ABORTED');
  });

  it('abort during a long single chunk stops the native call', async () => {
    const ac = new AbortController();
    const p = model.generate(ref.cases[0]!.prompt, { maxNewTokens: 500, stopOnEos: false, chunkSize: 1000, signal: ac.signal });
    setTimeout(() => ac.abort(), 5);
    const t0 = Date.now();
    let res: GenerateResult | undefined;
    try {
      res = await p;
    } catch (e) {
      expect((e as RepairError).code).toBe('ERR_ABORTED');
    }
    // Either it was cut short, or the machine finished 500 tokens within a few ms (tiny model): both are fine.
    if (res) expect(res.tokens.length).toBe(500);
    expect(Date.now() - t0).toBeLessThan(budget(30_000));
    expect((await model.generate(ref.cases[1]!.prompt, { maxNewTokens: 32 })).text).toBe(ref.cases[1]!.greedy_32_text);
  });

  it('concurrent callers are serialised and never interleave', async () => {
    const jobs: Promise<unknown>[] = [];
    for (let i = 0; i < 3; i++) {
      for (const c of ref.cases) jobs.push(model.generate(c.prompt, { maxNewTokens: 32, chunkSize: 2 }));
      jobs.push(model.logits(ref.cases.map((c) => c.input_ids)));
    }
    const out = await Promise.all(jobs);
    for (let i = 0; i < 3; i++) {
      ref.cases.forEach((c, k) => expect((out[i * 4 + k] as GenerateResult).text).toBe(c.greedy_32_text));
    }
  });

  it('a queued call whose signal aborts while waiting rejects without running', async () => {
    const first = model.generate(ref.cases[0]!.prompt, { maxNewTokens: 64, chunkSize: 1 });
    const ac = new AbortController();
    const second = model.generate(ref.cases[1]!.prompt, { maxNewTokens: 64, signal: ac.signal });
    ac.abort();
    await rejects(second, 'ERR_ABORTED');
    expect((await first).tokens.length).toBe(64);
  });
});

describe.skipIf(!haveStories || !haveAddon)('lifetimes and backend choice', () => {
  it('calls after dispose reject with ERR_DISPOSED; dispose is idempotent', async () => {
    const m = await loadModel(STORIES, { backend: 'cpu' });
    await m.dispose();
    await m.dispose();
    expect(m.disposed).toBe(true);
    expect(m.memoryBytes()).toBe(0);
    await rejects(m.generate('Once'), 'ERR_DISPOSED');
    await rejects(m.logits([[1, 2]]), 'ERR_DISPOSED');
  });

  it('dispose while calls run or wait: they reject with ERR_DISPOSED (or finish), nothing crashes', async () => {
    const m = await loadModel(STORIES, { backend: 'cpu' });
    const running = m.generate(ref.cases[0]!.prompt, { maxNewTokens: 400, stopOnEos: false, chunkSize: 1 });
    const queued = m.logits([[1, 2, 3]]);
    await new Promise((r) => setTimeout(r, 1));
    await m.dispose();
    const [a, b] = await Promise.allSettled([running, queued]);
    for (const s of [a, b]) {
      if (s.status === 'rejected') expect((s.reason as RepairError).code).toBe('ERR_DISPOSED');
    }
    expect(b.status).toBe('rejected');
  });

  it('Symbol.asyncDispose disposes', async () => {
    const m = await loadModel(STORIES, { backend: 'cpu' });
    {
      await using held = m;
      expect(held.disposed).toBe(false);
    }
    expect(m.disposed).toBe(true);
  });

  it('REPAIR_BACKEND overrides auto; an explicit backend wins over it', async () => {
    const saved = process.env.REPAIR_BACKEND;
    try {
      process.env.REPAIR_BACKEND = 'cpu';
      const m = await loadModel(STORIES);
      expect(m.backend).toBe('cpu');
      await m.dispose();
      process.env.REPAIR_BACKEND = 'gpu';
      await rejects(loadModel(STORIES), 'ERR_INVALID_ARG', /REPAIR_BACKEND/);
      const e = await loadModel(STORIES, { backend: 'cpu' });
      expect(e.backend).toBe('cpu');
      await e.dispose();
    } finally {
      if (saved === undefined) delete process.env.REPAIR_BACKEND;
      else process.env.REPAIR_BACKEND = saved;
    }
  });

  it.skipIf(cudaAvailable)('backend cuda without a device → ERR_CUDA_UNAVAILABLE with the reason', async () => {
    await rejects(loadModel(STORIES, { backend: 'cuda' }), 'ERR_CUDA_UNAVAILABLE', /CUDA/);
  });

  it('EOS ids come from generation_config.json; stopOnEos false runs past them', async () => {
    const c = ref.cases[0]!;
    const eos = c.greedy_32_ids[1]!; // pretend the second greedy token is an end-of-sequence token
    const d = storiesCopy((dir) => writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [eos, 2] })));
    const m = await loadModel(d, { backend: 'cpu' });
    try {
      expect(m.config.eosTokenIds).toEqual([eos, 2]);
      const r = await m.generate(c.prompt, { maxNewTokens: 32 });
      expect(r.finishReason).toBe('eos');
      expect(r.tokens).toEqual(c.greedy_32_ids.slice(0, 2));
      const r2 = await m.generate(c.prompt, { maxNewTokens: 32, stopOnEos: false });
      expect(r2.tokens).toEqual(c.greedy_32_ids);
    } finally {
      await m.dispose();
    }
  });

  it('chat messages go through the chat template', async () => {
    const d = storiesCopy((dir) => {
      const tc = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
      writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ ...tc, chat_template: CHAT_TEMPLATE }));
    });
    const m = await loadModel(d, { backend: 'cpu' });
    try {
      const msgs = [{ role: 'user', content: 'Once upon a time' }];
      const rendered = m.tokenizer.applyChatTemplate(msgs);
      const r = await m.generate(msgs, { maxNewTokens: 8 });
      expect(r.promptTokens).toEqual(m.tokenizer.encode(rendered, { addSpecialTokens: false }));
      expect(r.promptTokens[0]).toBe(1); // BOS from the template, not added twice
      expect(r.promptTokens[1]).not.toBe(1);
      expect(r.tokens.length).toBeGreaterThan(0);
    } finally {
      await m.dispose();
    }
  });
});
