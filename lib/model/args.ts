// model/args.ts — what goes into a model call: the checks of numeric options (ERR_INVALID_ARG naming the
// field), the left-padded native batch of logits() with the rows its positions ask for, stop strings.
import { RepairError } from '../errors.js';
import type { LogitsPositions, LogitsRow } from './types.js';

/** A logits() batch in the native layout. */
export interface PreparedBatch {
  tokens: Int32Array;
  B: number;
  T: number;
  pad: Int32Array;
  logitRows: Int32Array;
  rows: LogitsRow[];
}

/** generate() options, checked, with the prompt as token ids. */
export interface GenArgs {
  maxNewTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  chunkSize: number;
  stop: string[];
  promptIds: number[];
}

/** An integer option in [min, max]. */
export function intArg(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new RepairError('ERR_INVALID_ARG', `${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`, { field: name });
  }
  return v;
}

/** A finite number option that `ok` accepts. */
export function numArg(name: string, v: unknown, ok: (x: number) => boolean, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) {
    throw new RepairError('ERR_INVALID_ARG', `${name} must be ${what}, got ${JSON.stringify(v)}`, { field: name });
  }
  return v;
}

/**
 * The native layout of a logits() batch: the sequences left-padded to one length T (pad value 0), and the
 * flat row index of every requested position. `checkIds` refuses ids outside [0, vocab) or too long a row.
 */
export function prepareBatch(batch: readonly (readonly number[])[], positions: LogitsPositions, checkIds: (ids: readonly number[], what: string) => void): PreparedBatch {
  if (!Array.isArray(batch) || batch.length === 0) throw new RepairError('ERR_INVALID_ARG', 'logits: the batch must be a non-empty array of token-id arrays');
  batch.forEach((s, b) => {
    if (!Array.isArray(s)) throw new RepairError('ERR_INVALID_ARG', `logits: batch[${b}] must be an array of token ids`);
    checkIds(s, `batch[${b}]`);
  });
  if (Array.isArray(positions) && positions.length !== batch.length) {
    throw new RepairError('ERR_INVALID_ARG', `logits: positions has ${positions.length} lists for a batch of ${batch.length}`, { field: 'positions' });
  }
  if (!Array.isArray(positions) && positions !== 'last' && positions !== 'all') {
    throw new RepairError('ERR_INVALID_ARG', "logits: positions must be 'last', 'all' or one list of positions per sequence", { field: 'positions' });
  }
  const B = batch.length;
  const T = Math.max(...batch.map((s) => s.length));
  const tokens = new Int32Array(B * T); // pad value 0
  const pad = new Int32Array(B);
  const rows: LogitsRow[] = [];
  const flat: number[] = [];
  for (let b = 0; b < B; b++) {
    const s = batch[b]!;
    const len = s.length;
    pad[b] = T - len;
    tokens.set(s, b * T + pad[b]!);
    let ps: readonly number[];
    if (positions === 'last') ps = [len - 1];
    else if (positions === 'all') ps = Array.from({ length: len }, (_, i) => i);
    else ps = (positions as readonly (readonly number[])[])[b]!;
    if (!Array.isArray(ps)) throw new RepairError('ERR_INVALID_ARG', `logits: positions[${b}] must be an array`, { field: 'positions' });
    for (const p0 of ps) {
      if (!Number.isInteger(p0) || p0 >= len || p0 < -len) {
        throw new RepairError('ERR_INVALID_ARG', `logits: position ${p0} is outside sequence ${b} (length ${len})`, { field: 'positions' });
      }
      const p = p0 < 0 ? len + p0 : p0;
      rows.push({ sequence: b, position: p });
      flat.push(b * T + pad[b]! + p);
    }
  }
  if (rows.length === 0) throw new RepairError('ERR_INVALID_ARG', 'logits: no positions requested', { field: 'positions' });
  return { tokens, B, T, pad, logitRows: Int32Array.from(flat), rows };
}

/** Where the first of the stop strings starts in `text` (-1: none). */
export function firstStop(text: string, stop: readonly string[]): number {
  let best = -1;
  for (const s of stop) {
    const i = text.indexOf(s);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}
