// model/results.ts — what comes out of a model call: incremental detokenisation of generated ids and the
// LogitsResult view over the flat logits of a batch.
import { RepairError } from '../errors.js';
import type { ModelTokenizer } from '../tokenizer.js';
import type { LogitsResult, LogitsRow } from './types.js';

/** Incremental detokenisation: the text each new id adds, decoding a short window with one token of left context. */
export class DecodeStream {
  private ids: number[] = [];
  private prefixStart = 0;
  private readStart = 0;
  text = '';
  constructor(private readonly tok: ModelTokenizer) {}

  push(id: number): string {
    this.ids.push(id);
    const prefix = this.tok.decode(this.ids.slice(this.prefixStart, this.readStart));
    const full = this.tok.decode(this.ids.slice(this.prefixStart));
    if (full.length > prefix.length && full.startsWith(prefix) && !full.endsWith('\uFFFD')) {
      const delta = full.slice(prefix.length);
      this.prefixStart = this.readStart;
      this.readStart = this.ids.length;
      this.text += delta;
      return delta;
    }
    return '';
  }
}

/** The LogitsResult of a forward: row i is requested position rows[i]; at() looks a (sequence, position) up. */
export function makeLogitsResult(data: Float32Array, vocab: number, rows: LogitsRow[], lengths: number[]): LogitsResult {
  let index: Map<number, number> | undefined;
  return {
    data,
    vocab,
    rows,
    row(i: number): Float32Array {
      if (!Number.isInteger(i) || i < 0 || i >= rows.length) throw new RepairError('ERR_INVALID_ARG', `row ${i} out of range [0, ${rows.length})`);
      return data.subarray(i * vocab, (i + 1) * vocab);
    },
    at(sequence: number, position: number): Float32Array {
      const len = lengths[sequence];
      if (len === undefined) throw new RepairError('ERR_INVALID_ARG', `sequence ${sequence} is not in the batch`);
      const p = position < 0 ? len + position : position;
      if (!index) {
        index = new Map();
        rows.forEach((r, i) => {
          const k = r.sequence * 0x100000000 + r.position;
          if (!index!.has(k)) index!.set(k, i);
        });
      }
      const i = index.get(sequence * 0x100000000 + p);
      if (i === undefined) throw new RepairError('ERR_INVALID_ARG', `logits of sequence ${sequence} position ${position} were not requested`);
      return data.subarray(i * vocab, (i + 1) * vocab);
    },
  };
}
