// config.json validation, RoPE inverse frequencies and the tensor check against the architecture.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync, mkdirSync, copyFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readConfig, parseConfig, computeInvFreq, expectedTensors, matchTensors, type ModelConfig } from '../lib/config.js';
import { readSafetensorsDir, type SafetensorsTensor } from '../lib/safetensors.js';
import { RepairError, type ErrorCode } from '../lib/errors.js';
import { packageRoot } from '../lib/paths.js';

const MODELS = join(packageRoot(), '..', 'shared', 'models');
const STORIES = join(MODELS, 'stories260K', 'hf');
const FACTS = join(MODELS, 'facts-llama');
const haveStories = existsSync(join(STORIES, 'config.json'));
const haveFacts = existsSync(join(FACTS, 'config.json'));
if (!haveStories) console.warn(`[config.test] ${STORIES} is absent: tests on the real checkpoint are skipped`);

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-cfg-'));
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

const baseLlama = {
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 172,
  num_hidden_layers: 5,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  vocab_size: 512,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  hidden_act: 'silu',
  tie_word_embeddings: true,
  eos_token_id: 2,
  bos_token_id: 1,
};

function expectCode(fn: () => unknown, code: ErrorCode, ...fragments: (string | RegExp)[]): RepairError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected an error').toBeInstanceOf(RepairError);
  const err = caught as RepairError;
  expect(err.code).toBe(code);
  for (const f of fragments) expect(err.message).toMatch(f);
  return err;
}

let n = 0;
function dirWithConfig(cfg: unknown, raw = false): string {
  const d = join(tmp, `c${n++}`);
  mkdirSync(d);
  writeFileSync(join(d, 'config.json'), raw ? String(cfg) : JSON.stringify(cfg));
  return d;
}

describe('readConfig', () => {
  it.skipIf(!haveStories)('reads stories260K', () => {
    const c = readConfig(STORIES);
    expect(c).toMatchObject({
      modelType: 'llama',
      hiddenSize: 64,
      intermediateSize: 172,
      numLayers: 5,
      numHeads: 8,
      numKvHeads: 4,
      headDim: 8,
      vocabSize: 512,
      maxPositionEmbeddings: 512,
      maxPositions: 512,
      tieEmbeddings: true,
      qkvBias: false,
      eosTokenIds: [2],
      bosTokenId: 1,
    });
    expect(c.invFreq).toBeInstanceOf(Float32Array);
    expect(Array.from(c.invFreq)).toEqual(Array.from(Float32Array.from([1, 0.1, 0.01, 0.001])));
  });

  it.skipIf(!haveFacts)('reads facts-llama (explicit head_dim, untied)', () => {
    const c = readConfig(FACTS);
    expect(c).toMatchObject({ headDim: 32, tieEmbeddings: false, maxPositions: 256 });
  });

  it('caps the context at the contextLength option and at max_position_embeddings', () => {
    expect(parseConfig(baseLlama).maxPositions).toBe(512);
    expect(parseConfig(baseLlama, { contextLength: 100 }).maxPositions).toBe(100);
    expect(parseConfig({ ...baseLlama, max_position_embeddings: 131072 }).maxPositions).toBe(4096);
    expectCode(() => parseConfig(baseLlama, { contextLength: 0 }), 'ERR_INVALID_ARG', /contextLength/);
  });

  it('config.json missing → ERR_CONFIG naming the file', () => {
    const d = join(tmp, `empty${n++}`);
    mkdirSync(d);
    const e = expectCode(() => readConfig(d), 'ERR_CONFIG', /config\.json not found/);
    expect(e.details?.file).toBe(join(d, 'config.json'));
  });

  it('config.json not JSON / not an object', () => {
    expectCode(() => readConfig(dirWithConfig('{"model_type": ', true)), 'ERR_CONFIG', /config\.json/, /not valid JSON/);
    expectCode(() => readConfig(dirWithConfig('[1,2]', true)), 'ERR_CONFIG', /JSON object/);
  });

  it('unsupported model_type is named', () => {
    expectCode(() => readConfig(dirWithConfig({ ...baseLlama, model_type: 'bert' })), 'ERR_UNSUPPORTED_ARCH', /"bert"/, /llama, mistral, qwen2/);
    expectCode(() => parseConfig({ ...baseLlama, model_type: 'gptj' }), 'ERR_UNSUPPORTED_ARCH', /"gptj" is not supported yet/);
    expect(parseConfig({ model_type: 'gpt2', n_embd: 64, n_layer: 2, n_head: 4, n_positions: 64, vocab_size: 512 }).arch).toBe('gpt2');
    const { model_type: _, ...noType } = baseLlama;
    expectCode(() => parseConfig(noType), 'ERR_UNSUPPORTED_ARCH', /missing "model_type"/);
  });

  it.each([
    ['hidden_size', 2_000_000],
    ['hidden_size', 1e9],
    ['num_hidden_layers', 5000],
    ['intermediate_size', 1e12],
    ['vocab_size', 1e9],
    ['num_attention_heads', 1e6],
    ['max_position_embeddings', 2 ** 40],
  ])('absurd %s = %d → ERR_CONFIG naming it', (field, value) => {
    const e = expectCode(() => readConfig(dirWithConfig({ ...baseLlama, [field]: value })), 'ERR_CONFIG', new RegExp(`"${field}"`), /absurd/);
    expect(e.details?.field).toBe(field);
  });

  it.each([
    ['hidden_size', 0],
    ['hidden_size', -64],
    ['hidden_size', 63.5],
    ['hidden_size', '64'],
    ['num_hidden_layers', null],
    ['vocab_size', Number.NaN],
  ])('bad %s = %s → ERR_CONFIG', (field, value) => {
    expectCode(() => parseConfig({ ...baseLlama, [field]: value }), 'ERR_CONFIG', new RegExp(`"${field}"`));
  });

  it('head counts must divide', () => {
    expectCode(() => parseConfig({ ...baseLlama, num_attention_heads: 7 }), 'ERR_CONFIG', /"num_attention_heads" \(7\) must divide "hidden_size" \(64\)/);
    expectCode(() => parseConfig({ ...baseLlama, num_key_value_heads: 3 }), 'ERR_CONFIG', /num_key_value_heads/);
    expectCode(() => parseConfig({ ...baseLlama, num_key_value_heads: 16 }), 'ERR_CONFIG', /num_key_value_heads/);
    expectCode(() => parseConfig({ ...baseLlama, head_dim: 7 }), 'ERR_CONFIG', /even/);
    // An explicit head_dim need not equal hidden/heads.
    expect(parseConfig({ ...baseLlama, head_dim: 16 }).headDim).toBe(16);
    // num_key_value_heads defaults to num_attention_heads.
    const { num_key_value_heads: _, ...mha } = baseLlama;
    expect(parseConfig(mha).numKvHeads).toBe(8);
  });

  it('hidden_act must be silu; unsupported bias variants are refused', () => {
    expectCode(() => parseConfig({ ...baseLlama, hidden_act: 'gelu' }), 'ERR_UNSUPPORTED_ARCH', /hidden_act "gelu"/);
    expectCode(() => parseConfig({ ...baseLlama, attention_bias: true }), 'ERR_UNSUPPORTED_ARCH', /attention_bias/);
    expectCode(() => parseConfig({ ...baseLlama, mlp_bias: true }), 'ERR_UNSUPPORTED_ARCH', /mlp_bias/);
  });

  it('qwen2 has q/k/v biases; tie_word_embeddings defaults to false', () => {
    const { tie_word_embeddings: _, ...untied } = baseLlama;
    expect(parseConfig(untied).tieEmbeddings).toBe(false);
    const q = parseConfig({ ...untied, model_type: 'qwen2' });
    expect(q.qkvBias).toBe(true);
    expect(q.tieEmbeddings).toBe(false);
    expect(parseConfig({ ...untied, model_type: 'qwen2', tie_word_embeddings: true }).tieEmbeddings).toBe(true);
    expect(parseConfig({ ...untied, model_type: 'mistral' }).qkvBias).toBe(false);
  });

  it('sliding windows cap the context (mistral always, qwen2 only with use_sliding_window)', () => {
    expect(parseConfig({ ...baseLlama, model_type: 'mistral', sliding_window: 128 }).maxPositions).toBe(128);
    expect(parseConfig({ ...baseLlama, model_type: 'mistral', sliding_window: null }).maxPositions).toBe(512);
    expect(parseConfig({ ...baseLlama, model_type: 'qwen2', sliding_window: 128, use_sliding_window: false }).maxPositions).toBe(512);
    expect(parseConfig({ ...baseLlama, model_type: 'qwen2', sliding_window: 128, use_sliding_window: true }).maxPositions).toBe(128);
  });

  it('EOS ids: generation_config.json overrides config.json, arrays allowed', () => {
    const d = dirWithConfig({ ...baseLlama, eos_token_id: [2, 3] });
    expect(readConfig(d).eosTokenIds).toEqual([2, 3]);
    writeFileSync(join(d, 'generation_config.json'), JSON.stringify({ eos_token_id: 5, bos_token_id: 1 }));
    const c = readConfig(d);
    expect(c.eosTokenIds).toEqual([5]);
    expect(c.generationConfig).toMatchObject({ eos_token_id: 5 });
    writeFileSync(join(d, 'generation_config.json'), '{oops');
    expectCode(() => readConfig(d), 'ERR_CONFIG', /generation_config\.json/);
    expectCode(() => parseConfig({ ...baseLlama, eos_token_id: 9999 }), 'ERR_CONFIG', /eos_token_id 9999/);
  });
});

describe('config.json field validation (issue 14: every field typed, named, in range)', () => {
  it('rope_theta too small to give finite RoPE frequencies → ERR_CONFIG rope_theta', () => {
    for (const v of [1e-300, 0.5, '10000', 1e300]) {
      const e = expectCode(() => parseConfig({ ...baseLlama, rope_theta: v }), 'ERR_CONFIG', /rope_theta/);
      expect(e.details?.field).toBe('rope_theta');
    }
    expect(parseConfig({ ...baseLlama, rope_theta: 500000 }).ropeTheta).toBe(500000);
  });

  it('rms_norm_eps / layer_norm_epsilon that underflow f32 → ERR_CONFIG (not a native ERR_INVALID_ARG)', () => {
    expectCode(() => parseConfig({ ...baseLlama, rms_norm_eps: 1e-300 }), 'ERR_CONFIG', /"rms_norm_eps"/);
    expectCode(() => parseConfig({ model_type: 'gpt2', n_embd: 64, n_layer: 2, n_head: 4, vocab_size: 100, n_positions: 64, layer_norm_epsilon: 1e-300 }), 'ERR_CONFIG', /layer_norm_epsilon/);
    expect(parseConfig({ ...baseLlama, rms_norm_eps: 1e-12 }).rmsNormEps).toBe(1e-12);
  });

  it('boolean fields must be booleans: attention_bias "true" / 1 is not silently false', () => {
    for (const v of ['true', 1, 'false', 0]) {
      const e = expectCode(() => parseConfig({ ...baseLlama, attention_bias: v }), 'ERR_CONFIG', /"attention_bias" must be true or false/);
      expect(e.details?.field).toBe('attention_bias');
    }
    expectCode(() => parseConfig({ ...baseLlama, mlp_bias: 'yes' }), 'ERR_CONFIG', /mlp_bias/);
    expectCode(() => parseConfig({ ...baseLlama, tie_word_embeddings: 'true' }), 'ERR_CONFIG', /tie_word_embeddings/);
    expectCode(() => parseConfig({ ...baseLlama, model_type: 'qwen2', use_sliding_window: 1 }), 'ERR_CONFIG', /use_sliding_window/);
    expectCode(() => parseConfig({ ...baseLlama, model_type: 'mistral', sliding_window: 'big' }), 'ERR_CONFIG', /sliding_window/);
    expect(parseConfig({ ...baseLlama, attention_bias: false }).qkvBias).toBe(false);
  });

  it('special token ids must be integer ids inside the vocabulary', () => {
    expectCode(() => parseConfig({ ...baseLlama, eos_token_id: '2' }), 'ERR_CONFIG', /eos_token_id/);
    expectCode(() => parseConfig({ ...baseLlama, eos_token_id: [2, 1.5] }), 'ERR_CONFIG', /eos_token_id/);
    expectCode(() => parseConfig({ ...baseLlama, bos_token_id: 512 }), 'ERR_CONFIG', /"bos_token_id" 512 is outside the vocabulary/);
    expectCode(() => parseConfig({ ...baseLlama, pad_token_id: {} }), 'ERR_CONFIG', /pad_token_id/);
    expect(parseConfig({ ...baseLlama, pad_token_id: -1 }).padTokenId).toBeUndefined(); // the -1 some configs carry = none
  });

  it.skipIf(!haveStories)('num_hidden_layers smaller than the checkpoint\'s layers → ERR_CONFIG naming num_hidden_layers', () => {
    const c = readConfig(STORIES);
    const t = readSafetensorsDir(STORIES);
    const e = expectCode(() => matchTensors({ ...c, numLayers: c.numLayers - 1 }, t), 'ERR_CONFIG', /"num_hidden_layers" is 4 but the checkpoint holds 5 layers/);
    expect(e.details?.field).toBe('num_hidden_layers');
    expect(matchTensors(c, t).length).toBe(47);
  });
});

describe('RoPE inverse frequencies', () => {
  it('default: theta^(-2i/d)', () => {
    const f = computeInvFreq(16, 500000);
    for (let i = 0; i < 8; i++) expect(f[i]).toBe(Math.fround(500000 ** (-(2 * i) / 16)));
    expect(parseConfig({ ...baseLlama, rope_scaling: null }).ropeScaling).toEqual({ type: 'default' });
    expect(parseConfig({ ...baseLlama, rope_scaling: { rope_type: 'default' } }).ropeScaling).toEqual({ type: 'default' });
  });

  it('linear (rope_type or legacy type key): divided by factor', () => {
    for (const key of ['rope_type', 'type']) {
      const c = parseConfig({ ...baseLlama, rope_scaling: { [key]: 'linear', factor: 4 } });
      expect(c.ropeScaling).toEqual({ type: 'linear', factor: 4 });
      for (let i = 0; i < 4; i++) expect(c.invFreq[i]).toBe(Math.fround(10000 ** (-(2 * i) / 8) / 4));
    }
  });

  it('llama3: high frequencies kept, low ones divided by factor, the middle smoothed (Llama 3.1 parameters)', () => {
    const s = { type: 'llama3' as const, factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 };
    const f = computeInvFreq(128, 500000, s);
    const base = computeInvFreq(128, 500000);
    let high = 0,
      low = 0,
      mid = 0;
    for (let i = 0; i < 64; i++) {
      const wl = (2 * Math.PI) / base[i]!;
      if (wl < 8192 / 4) {
        expect(f[i]).toBe(base[i]);
        high++;
      } else if (wl > 8192 / 1) {
        expect(f[i]).toBeCloseTo(base[i]! / 8, 12);
        low++;
      } else {
        const b = 500000 ** (-(2 * i) / 128);
        const smooth = (8192 / ((2 * Math.PI) / b) - 1) / (4 - 1);
        const want = (1 - smooth) * (b / 8) + smooth * b;
        expect(Math.abs(f[i]! - want)).toBeLessThanOrEqual(want * 2 ** -24);
        expect(f[i]! < base[i]! && f[i]! > base[i]! / 8).toBe(true);
        mid++;
      }
    }
    expect(high > 0 && low > 0 && mid > 0).toBe(true);
    const c = parseConfig({
      ...baseLlama,
      rope_theta: 500000,
      head_dim: 128,
      rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    });
    expect(Array.from(c.invFreq)).toEqual(Array.from(f));
  });

  it('unknown rope types are refused by name; bad llama3 fields by field', () => {
    expectCode(() => parseConfig({ ...baseLlama, rope_scaling: { rope_type: 'yarn', factor: 4 } }), 'ERR_UNSUPPORTED_ARCH', /"yarn"/);
    expectCode(() => parseConfig({ ...baseLlama, rope_scaling: { type: 'dynamic', factor: 2 } }), 'ERR_UNSUPPORTED_ARCH', /"dynamic"/);
    expectCode(() => parseConfig({ ...baseLlama, rope_scaling: { rope_type: 'llama3', factor: 8 } }), 'ERR_CONFIG', /rope_scaling\.low_freq_factor/);
    expectCode(() => parseConfig({ ...baseLlama, rope_scaling: { rope_type: 'linear', factor: -1 } }), 'ERR_CONFIG', /rope_scaling\.factor/);
    expectCode(() => parseConfig({ ...baseLlama, rope_scaling: 'linear' }), 'ERR_CONFIG', /rope_scaling/);
  });

  const FIXTURES = join(packageRoot(), 'test', 'fixtures');
  const fixtureDirs = existsSync(FIXTURES)
    ? readdirSync(FIXTURES).filter((d) => existsSync(join(FIXTURES, d, 'reference.json')) && existsSync(join(FIXTURES, d, 'config.json')))
    : [];
  it.skipIf(fixtureDirs.length === 0).each(fixtureDirs.length ? fixtureDirs : ['(none)'])('inv_freq of fixture %s matches its float64 reference', (d) => {
    const ref = JSON.parse(readFileSync(join(FIXTURES, d, 'reference.json'), 'utf8')) as { inv_freq: number[] };
    const c = readConfig(join(FIXTURES, d));
    expect(c.invFreq.length).toBe(ref.inv_freq.length);
    // Computed in float64, rounded once to float32: within half an f32 ulp of the float64 value.
    ref.inv_freq.forEach((v, i) => expect(Math.abs(c.invFreq[i]! - v)).toBeLessThanOrEqual(Math.abs(v) * 2 ** -24));
  });
});

describe('tensors vs config', () => {
  function stories(): { c: ModelConfig; t: Map<string, SafetensorsTensor> } {
    return { c: readConfig(STORIES), t: readSafetensorsDir(STORIES) };
  }

  it('lists the expected tensors per architecture', () => {
    const llama = expectedTensors(parseConfig(baseLlama));
    expect(llama.length).toBe(1 + 5 * 9 + 1); // tied: no lm_head
    expect(llama.find((t) => t.name === 'model.layers.0.self_attn.k_proj.weight')!.shape).toEqual([32, 64]);
    expect(llama.find((t) => t.name === 'model.layers.4.mlp.down_proj.weight')!.shape).toEqual([64, 172]);
    const qwen = expectedTensors(parseConfig({ ...baseLlama, model_type: 'qwen2', tie_word_embeddings: false }));
    expect(qwen.length).toBe(1 + 5 * 12 + 2);
    expect(qwen.find((t) => t.name === 'model.layers.0.self_attn.k_proj.bias')!.shape).toEqual([32]);
    expect(qwen.find((t) => t.name === 'lm_head.weight')!.shape).toEqual([512, 64]);
  });

  it.skipIf(!haveStories)('stories260K matches its config; the native list has absolute offsets', () => {
    const { c, t } = stories();
    const specs = matchTensors(c, t);
    expect(specs.length).toBe(47);
    expect(specs[0]).toMatchObject({ name: 'model.embed_tokens.weight', dtype: 'F32', shape: [512, 64], nbytes: 512 * 64 * 4 });
    expect(specs[0]!.offset).toBeGreaterThan(8);
  });

  it.skipIf(!haveStories)('missing tensor → ERR_MISSING_TENSOR naming it', () => {
    const { c, t } = stories();
    t.delete('model.layers.3.mlp.up_proj.weight');
    const e = expectCode(() => matchTensors(c, t), 'ERR_MISSING_TENSOR', /"model\.layers\.3\.mlp\.up_proj\.weight"/);
    expect(e.details?.tensor).toBe('model.layers.3.mlp.up_proj.weight');
  });

  it.skipIf(!haveStories)('untied config without lm_head → ERR_MISSING_TENSOR lm_head.weight; tied with lm_head ignores it', () => {
    const { c, t } = stories();
    expectCode(() => matchTensors({ ...c, tieEmbeddings: false }, t), 'ERR_MISSING_TENSOR', /"lm_head\.weight"/);
    t.set('lm_head.weight', { ...t.get('model.embed_tokens.weight')!, name: 'lm_head.weight' });
    expect(matchTensors(c, t).some((s) => s.name === 'lm_head.weight')).toBe(false);
  });

  it.skipIf(!haveStories)('wrong shape for the config → ERR_SHAPE naming tensor, expected and actual', () => {
    const d = join(tmp, `shape${n++}`);
    mkdirSync(d);
    for (const f of readdirSync(STORIES)) copyFileSync(join(STORIES, f), join(d, f));
    const cfg = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
    writeFileSync(join(d, 'config.json'), JSON.stringify({ ...cfg, intermediate_size: 128 }));
    const e = expectCode(() => matchTensors(readConfig(d), readSafetensorsDir(d)), 'ERR_SHAPE', /"model\.layers\.0\.mlp\.gate_proj\.weight"/, /\[172, 64\]/, /expected \[128, 64\]/);
    expect(e.details).toMatchObject({ expected: [128, 64], actual: [172, 64] });
    writeFileSync(join(d, 'config.json'), JSON.stringify({ ...cfg, vocab_size: 1024 }));
    expectCode(() => matchTensors(readConfig(d), readSafetensorsDir(d)), 'ERR_SHAPE', /model\.embed_tokens\.weight/, /expected \[1024, 64\]/);
  });

  it.skipIf(!haveStories)('a weight stored as I64 → ERR_SAFETENSORS unsupported dtype naming it', () => {
    const { t } = stories();
    const w = t.get('model.norm.weight')!;
    const only = new Map(t);
    const cfg = parseConfig({ ...baseLlama });
    only.set('model.norm.weight', { ...w, dtype: 'I64', nbytes: 64 * 8 });
    expectCode(() => matchTensors(cfg, only), 'ERR_SAFETENSORS', /unsupported dtype I64 for tensor "model\.norm\.weight"/);
  });
});
