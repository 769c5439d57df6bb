// Helpers that rewrite a safetensors file consistently (the tensors tile the data section, as the format
// requires): drop tensors, or patch one tensor's bytes.
import { readFileSync, writeFileSync } from 'node:fs';

export interface StEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

export function readSt(file: string): { header: Record<string, unknown>; data: Buffer } {
  const b = readFileSync(file);
  const hl = Number(b.readBigUInt64LE(0));
  return { header: JSON.parse(b.subarray(8, 8 + hl).toString('utf8')), data: b.subarray(8 + hl) };
}

/** Write header + data, with the tensors laid out contiguously in their current offset order. */
export function writeSt(file: string, header: Record<string, unknown>, data: Buffer, drop: readonly string[] = []): void {
  const names = Object.keys(header).filter((k) => k !== '__metadata__' && !drop.includes(k));
  names.sort((a, b) => (header[a] as StEntry).data_offsets[0] - (header[b] as StEntry).data_offsets[0]);
  const out: Record<string, unknown> = header.__metadata__ ? { __metadata__: header.__metadata__ } : {};
  const parts: Buffer[] = [];
  let off = 0;
  for (const n of names) {
    const t = header[n] as StEntry;
    const bytes = data.subarray(t.data_offsets[0], t.data_offsets[1]);
    out[n] = { ...t, data_offsets: [off, off + bytes.length] };
    parts.push(bytes);
    off += bytes.length;
  }
  const hb = Buffer.from(JSON.stringify(out));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hb.length));
  writeFileSync(file, Buffer.concat([len, hb, ...parts]));
}

/** Overwrite element `index` of an F32 tensor with `value` (in place, offsets unchanged). */
export function patchF32(file: string, tensor: string, index: number, value: number): void {
  const b = readFileSync(file);
  const hl = Number(b.readBigUInt64LE(0));
  const h = JSON.parse(b.subarray(8, 8 + hl).toString('utf8')) as Record<string, StEntry>;
  const t = h[tensor]!;
  if (t.dtype !== 'F32') throw new Error(`${tensor} is ${t.dtype}`);
  b.writeFloatLE(value, 8 + hl + t.data_offsets[0] + 4 * index);
  writeFileSync(file, b);
}
