// The shared set-up of the behaviour tests (editor, repair, holds, reliability, model, eval): where the
// models and data live and whether they are there, the native addon's load error, ZsRE records as edit
// requests, teacher-forced accuracy through a router, typed-error catchers, and temporary folders.
// (The op tests' harness — RNG, dtype codecs, comparisons — is separate.)
import { afterAll, beforeAll, expect } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { EditRequest } from '../../lib/editor.js';
import { RepairError, type ErrorCode } from '../../lib/errors.js';
import type { Model } from '../../lib/model.js';
import { native } from '../../lib/native.js';
import { packageRoot } from '../../lib/paths.js';

/** The tiny models under test/fixtures. */
export const FIXTURES = join(packageRoot(), 'test', 'fixtures');
/** stories260K as shipped with the package. */
export const STORIES = join(packageRoot(), 'models', 'stories260K');
/** The facts model (a small LLaMA that knows ZsRE-style facts) in ../shared. */
export const FACTS = join(packageRoot(), '..', 'shared', 'models', 'facts-llama');
/** The 1k ZsRE train records in ../shared. */
export const ZSRE = join(packageRoot(), '..', 'shared', 'data', 'zsre', 'zsre_mend_train-1k.json');
/** The facts model and the ZsRE file are both there (the facts-model tests skip otherwise). */
export const haveFacts = existsSync(join(FACTS, 'config.json')) && existsSync(ZSRE);

/** '' when the native addon loads, else the first line of its load error. */
export const addonError = (() => {
  try {
    native();
    return '';
  } catch (e) {
    return (e as Error).message.split('\n')[0]!;
  }
})();

/** One ZsRE train record. */
export interface Zsre {
  src: string;
  rephrase: string;
  alt: string;
  loc: string;
  loc_ans: string;
  answers: string[];
}

/** The ZsRE train records ([] when the file is absent). */
export function loadZsreRecords(): Zsre[] {
  return haveFacts ? JSON.parse(readFileSync(ZSRE, 'utf8')) : [];
}

/**
 * ZsRE record i as an edit: its src → alt, with record 500 + i's locality pair as the irrelevant row; `id`
 * adds the id z{i}, `rephrase` the record's rephrase.
 */
export function zsreEdit(zsre: readonly Zsre[], i: number, opts: { id?: boolean; rephrase?: boolean } = {}): EditRequest {
  const r = zsre[i]!;
  const far = zsre[500 + i]!;
  return {
    prompt: r.src,
    target: r.alt,
    ...(opts.rephrase ? { rephrase: r.rephrase } : {}),
    irrelevant: `${far.loc} ${far.loc_ans}`,
    ...(opts.id ? { id: `z${i}` } : {}),
  };
}

export function argmax(row: ArrayLike<number>): number {
  let b = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[b]!) b = i;
  return b;
}

/** Anything with (routed) logits: a Model or an Editor. */
export type Routed = { logits: Model['logits'] };

/** Teacher-forced predictions at the target positions of prompt + " " + target (EasyEdit's Rel). */
export async function tfPredictions(m: Model, e: Routed, prompt: string, target: string): Promise<{ pred: number[]; want: number[] }> {
  const ids = m.tokenizer.encode(`${prompt} ${target}`);
  const pl = m.tokenizer.encode(prompt).length;
  const lg = await e.logits([ids], { positions: 'all' });
  const pred: number[] = [];
  const want: number[] = [];
  for (let j = pl; j < ids.length; j++) {
    pred.push(argmax(lg.at(0, j - 1)));
    want.push(ids[j]!);
  }
  return { pred, want };
}

/** Teacher-forced token accuracy of prompt + " " + target through `e` (an editor routes it). */
export async function tfAcc(m: Model, e: Routed, prompt: string, target: string): Promise<number> {
  const { pred, want } = await tfPredictions(m, e, prompt, target);
  return pred.filter((p, i) => p === want[i]).length / want.length;
}

/** `p` rejects with a RepairError of this code whose message matches every fragment; returns the error. */
export async function rejects(p: Promise<unknown>, code: ErrorCode, ...fragments: (string | RegExp)[]): Promise<RepairError> {
  let caught: unknown;
  try {
    await p;
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected a rejection with ${code}`).toBeInstanceOf(RepairError);
  const err = caught as RepairError;
  expect(err.code, err.message).toBe(code);
  for (const f of fragments) expect(err.message).toMatch(f);
  return err;
}

/**
 * A temporary folder for the enclosing file or describe block: created before its tests, removed after.
 * Returns its path getter.
 */
export function useTempDir(prefix: string): () => string {
  let dir = '';
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), prefix));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  return () => dir;
}

let copies = 0;
/** A copy of the model folder `src` in a new sub-folder of `into`, then patched (files replaced or edited). */
export function copyModel(src: string, into: string, patch: (dir: string) => void = () => {}): string {
  const d = join(into, `m${copies++}`);
  mkdirSync(d);
  for (const f of readdirSync(src)) copyFileSync(join(src, f), join(d, f));
  patch(d);
  return d;
}

/** `fn` throws a RepairError of this code whose message matches every fragment; returns the error. */
export function throws(fn: () => unknown, code: ErrorCode, ...fragments: (string | RegExp)[]): RepairError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected ${code}`).toBeInstanceOf(RepairError);
  const err = caught as RepairError;
  expect(err.code, err.message).toBe(code);
  for (const f of fragments) expect(err.message).toMatch(f);
  return err;
}
