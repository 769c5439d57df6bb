// tokenizer.ts — tokenizer.json via @huggingface/tokenizers, chat templates via @huggingface/jinja.

import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { RepairError } from './errors.js';

export type ChatRole = 'system' | 'user' | 'assistant' | (string & {});

export interface ChatMessage {
  role: ChatRole;
  content: string;
}

export interface EncodeOptions {
  /** Add the tokenizer's special tokens (BOS for Llama-family models). Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS...) from the text. Default true. */
  skipSpecialTokens?: boolean;
}

export interface ChatTemplateOptions {
  /** Append the assistant header so the model answers. Default true. */
  addGenerationPrompt?: boolean;
  /** Extra variables for the template (e.g. tools, date_string). */
  extra?: Record<string, unknown>;
}

type Json = Record<string, unknown>;

function tokError(message: string, details?: Record<string, unknown>, cause?: unknown): RepairError {
  return new RepairError('ERR_TOKENIZER', message, details, cause !== undefined ? { cause } : undefined);
}

function readJson(file: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw tokError(code === 'ENOENT' ? `${file} not found` : `${file}: cannot read or parse (${(e as Error).message})`, { file }, e);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw tokError(`${file}: must hold a JSON object`, { file });
  return v as Json;
}

/** A special-token entry of tokenizer_config.json: a string or { content }. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return undefined;
}

export class ModelTokenizer {
  /** The chat template source, when the model has one. */
  readonly chatTemplate: string | undefined;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  readonly bosTokenId: number | undefined;
  readonly eosTokenId: number | undefined;
  private readonly tok: HfTokenizer;
  private readonly config: Json;
  private template: Template | undefined;

  /** The largest token id the tokenizer can produce (vocabulary and added tokens). */
  readonly maxTokenId: number;

  /** Build from parsed tokenizer.json and tokenizer_config.json objects. */
  constructor(tokenizerJson: Json, tokenizerConfig: Json = {}, chatTemplate?: string, source = 'tokenizer.json') {
    this.maxTokenId = validateTokenizerJson(tokenizerJson, source);
    try {
      this.tok = new HfTokenizer(tokenizerJson, tokenizerConfig);
    } catch (e) {
      throw tokError(`${source}: cannot build the tokenizer (${(e as Error).message})`, { file: source }, e);
    }
    this.config = tokenizerConfig;
    this.bosToken = tokenText(tokenizerConfig.bos_token);
    this.eosToken = tokenText(tokenizerConfig.eos_token);
    this.bosTokenId = this.bosToken !== undefined ? this.tok.token_to_id(this.bosToken) : undefined;
    this.eosTokenId = this.eosToken !== undefined ? this.tok.token_to_id(this.eosToken) : undefined;
    this.chatTemplate = chatTemplate;
  }

  /**
   * Load tokenizer.json, tokenizer_config.json and the chat template of a model folder. Without a
   * tokenizer.json, a GPT-2 style vocab.json + merges.txt pair is converted into one (byte-level BPE).
   */
  static fromDir(dir: string): ModelTokenizer {
    let tjFile = join(dir, 'tokenizer.json');
    const tcFile = join(dir, 'tokenizer_config.json');
    const tc = existsSync(tcFile) ? readJson(tcFile) : {};
    let tj: Json;
    const vocabFile = join(dir, 'vocab.json');
    const mergesFile = join(dir, 'merges.txt');
    if (!existsSync(tjFile) && existsSync(vocabFile) && existsSync(mergesFile)) {
      tj = byteLevelBpeJson(readJson(vocabFile), readText(mergesFile), tc, vocabFile);
      tjFile = vocabFile;
    } else {
      tj = readJson(tjFile);
    }
    let template = pickTemplate(tc.chat_template, tcFile);
    const jinjaFile = join(dir, 'chat_template.jinja');
    if (template === undefined && existsSync(jinjaFile)) template = readFileSync(jinjaFile, 'utf8');
    const jsonFile = join(dir, 'chat_template.json');
    if (template === undefined && existsSync(jsonFile)) template = pickTemplate(readJson(jsonFile).chat_template, jsonFile);
    return new ModelTokenizer(tj, tc, template, tjFile);
  }

  get hasChatTemplate(): boolean {
    return this.chatTemplate !== undefined;
  }

  /** Token ids of `text` (with BOS etc. unless addSpecialTokens is false). */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new RepairError('ERR_INVALID_ARG', `encode: text must be a string, got ${typeof text}`);
    try {
      return this.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
    } catch (e) {
      throw tokError(`encode failed: ${(e as Error).message}`, undefined, e);
    }
  }

  /** Text of `ids` (an empty list decodes to ""). Ids the tokenizer does not know decode as its unknown token. */
  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    const arr = Array.from(ids);
    if (arr.length === 0) return '';
    for (const id of arr) {
      if (!Number.isSafeInteger(id) || id < 0) throw new RepairError('ERR_INVALID_ARG', `decode: token id ${id} is not a non-negative integer`);
    }
    try {
      return this.tok.decode(arr, { skip_special_tokens: opts.skipSpecialTokens ?? true });
    } catch (e) {
      throw tokError(`decode failed: ${(e as Error).message}`, undefined, e);
    }
  }

  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  /** Render the chat template (Jinja) for `messages` into a prompt string. */
  applyChatTemplate(messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
    if (this.chatTemplate === undefined) {
      throw tokError('this model has no chat template (tokenizer_config.json has no "chat_template"): pass a plain string prompt instead of messages');
    }
    if (!Array.isArray(messages) || messages.length === 0) {
      throw new RepairError('ERR_INVALID_ARG', 'messages must be a non-empty array of { role, content }');
    }
    for (const [i, m] of messages.entries()) {
      if (typeof m !== 'object' || m === null || typeof m.role !== 'string' || typeof m.content !== 'string') {
        throw new RepairError('ERR_INVALID_ARG', `messages[${i}] must be { role: string, content: string }`);
      }
    }
    try {
      this.template ??= new Template(this.chatTemplate);
    } catch (e) {
      throw tokError(`cannot parse the chat template (${(e as Error).message})`, undefined, e);
    }
    const specials: Record<string, string> = {};
    for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
      const t = tokenText(this.config[k]);
      if (t !== undefined) specials[k] = t;
    }
    try {
      return this.template.render({
        ...specials,
        ...opts.extra,
        messages: messages.map((m) => ({ ...m })),
        add_generation_prompt: opts.addGenerationPrompt ?? true,
      });
    } catch (e) {
      throw tokError(`the chat template failed: ${(e as Error).message}`, undefined, e);
    }
  }
}

/**
 * Check the parts of a tokenizer.json the runtime relies on (the tokenizers library accepts a malformed
 * vocabulary and then decodes everything to ""): `model` is an object; its `vocab` maps tokens to
 * non-negative integer ids (BPE / WordPiece / WordLevel) or lists [token, score] pairs (Unigram);
 * `added_tokens` entries have an integer id and a string content. Returns the largest id.
 */
export function validateTokenizerJson(tj: Json, source = 'tokenizer.json'): number {
  const bad = (field: string, msg: string): never => {
    throw tokError(`${source}: ${msg}`, { file: source, field });
  };
  const model = tj.model;
  if (typeof model !== 'object' || model === null || Array.isArray(model)) bad('model', '"model" must be an object');
  const m = model as Json;
  const type = m.type ?? (Array.isArray(m.vocab) ? 'Unigram' : 'BPE');
  if (typeof type !== 'string') bad('model.type', '"model.type" must be a string');
  let maxId = -1;
  let count = 0;
  if (type === 'Unigram') {
    if (!Array.isArray(m.vocab)) bad('model.vocab', `"model.vocab" of a Unigram model must be a list of [token, score], got ${describe(m.vocab)}`);
    (m.vocab as unknown[]).forEach((e, i) => {
      if (!Array.isArray(e) || e.length < 2 || typeof e[0] !== 'string' || typeof e[1] !== 'number' || !Number.isFinite(e[1])) {
        bad('model.vocab', `"model.vocab[${i}]" must be [token, finite score]`);
      }
    });
    count = (m.vocab as unknown[]).length;
    maxId = count - 1;
  } else {
    const v = m.vocab;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) bad('model.vocab', `"model.vocab" must be an object of token → id, got ${describe(v)}`);
    for (const [tok, id] of Object.entries(v as Json)) {
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) bad('model.vocab', `"model.vocab" id of ${JSON.stringify(tok)} must be a non-negative integer, got ${JSON.stringify(id)}`);
      maxId = Math.max(maxId, id as number);
      count++;
    }
  }
  if (count === 0) bad('model.vocab', '"model.vocab" is empty');
  const added = tj.added_tokens;
  if (added !== undefined && added !== null) {
    if (!Array.isArray(added)) bad('added_tokens', '"added_tokens" must be a list');
    (added as unknown[]).forEach((t, i) => {
      const o = t as Json;
      if (typeof t !== 'object' || t === null || typeof o.id !== 'number' || !Number.isSafeInteger(o.id) || o.id < 0 || typeof o.content !== 'string') {
        bad('added_tokens', `"added_tokens[${i}]" must be { id: non-negative integer, content: string }`);
      }
      maxId = Math.max(maxId, o.id as number);
    });
  }
  return maxId;
}

function describe(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v;
}

function readText(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw tokError(`${file}: cannot read (${(e as Error).message})`, { file }, e);
  }
}

/**
 * A tokenizer.json object for a GPT-2 style byte-level BPE given as vocab.json (token -> id) and
 * merges.txt ("a b" per line, an optional "#version" first line): the ByteLevel pre-tokenizer, decoder
 * and post-processor of HF's GPT-2 tokenizer.json, with the special tokens of tokenizer_config.json
 * (added_tokens_decoder, else bos/eos/unk/pad that are in the vocabulary) as added tokens.
 */
export function byteLevelBpeJson(vocab: Json, mergesText: string, tokenizerConfig: Json = {}, source = 'vocab.json'): Json {
  const ids = new Set<number>();
  for (const [tok, id] of Object.entries(vocab)) {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) throw tokError(`${source}: the id of ${JSON.stringify(tok)} is not a non-negative integer`, { file: source });
    if (ids.has(id)) throw tokError(`${source}: id ${id} appears twice`, { file: source });
    ids.add(id);
  }
  const merges: string[] = [];
  mergesText.split(/\r?\n/).forEach((line, i) => {
    if (line.length === 0 || (i === 0 && line.startsWith('#version'))) return;
    const parts = line.split(' ');
    if (parts.length !== 2 || !parts[0] || !parts[1]) throw tokError(`merges.txt line ${i + 1}: expected two tokens separated by one space`, { line: i + 1 });
    merges.push(line);
  });
  const added: Json[] = [];
  const decoder = tokenizerConfig.added_tokens_decoder;
  if (typeof decoder === 'object' && decoder !== null) {
    for (const [id, t] of Object.entries(decoder as Json)) {
      const content = tokenText(t);
      if (content === undefined || !/^\d+$/.test(id)) continue;
      const o = t as Json;
      added.push({ id: Number(id), content, single_word: !!o.single_word, lstrip: !!o.lstrip, rstrip: !!o.rstrip, normalized: o.normalized !== false, special: o.special !== false });
    }
  } else {
    const seen = new Set<string>();
    for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
      const content = tokenText(tokenizerConfig[k]);
      if (content === undefined || seen.has(content) || typeof vocab[content] !== 'number') continue;
      seen.add(content);
      added.push({ id: vocab[content], content, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true });
    }
  }
  const prefix = tokenizerConfig.add_prefix_space === true;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: prefix, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

function pickTemplate(v: unknown, file: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return v;
  // Older format: [{ name, template }], pick "default".
  if (Array.isArray(v)) {
    const named = v.filter((x): x is { name: string; template: string } => typeof x?.name === 'string' && typeof x?.template === 'string');
    const def = named.find((x) => x.name === 'default') ?? named[0];
    if (def) return def.template;
  }
  throw tokError(`${file}: "chat_template" must be a string or a list of { name, template }`, { file, field: 'chat_template' });
}
