// Rewrite a side-memory file's header (metadata or tensor table) and, unless told not to, re-seal its
// checksum as save() would: what a careful tamperer could do, to reach the checks behind the checksum.
import { readFileSync, writeFileSync } from 'node:fs';
import { memoryChecksum } from '../../lib/memfile.js';

type Header = Record<string, Record<string, unknown>> & { __metadata__: Record<string, string> };

export function rewriteMemoryFile(src: string, dst: string, edit: (h: Header, meta: Record<string, unknown>) => void, opts: { reseal?: boolean; data?: (d: Buffer) => Buffer } = {}): string {
  const bytes = readFileSync(src);
  const hlen = Number(bytes.readBigUInt64LE(0));
  const h = JSON.parse(bytes.subarray(8, 8 + hlen).toString('utf8')) as Header;
  const meta = JSON.parse(h.__metadata__.editor!) as Record<string, unknown>;
  edit(h, meta);
  h.__metadata__.editor = JSON.stringify(meta);
  let data = Buffer.from(bytes.subarray(8 + hlen));
  if (opts.data) data = opts.data(data);
  if (opts.reseal !== false) {
    const table = Object.entries(h)
      .filter(([k]) => k !== '__metadata__')
      .map(([name, t]) => ({ name, dtype: t.dtype as string, shape: t.shape as number[], begin: (t.data_offsets as number[])[0]!, end: (t.data_offsets as number[])[1]! }))
      .sort((a, b) => a.begin - b.begin);
    h.__metadata__.checksum = memoryChecksum(h.__metadata__.format!, h.__metadata__.version!, h.__metadata__.editor, table, data);
  }
  let s = JSON.stringify(h);
  s += ' '.repeat((8 - (Buffer.byteLength(s) % 8)) % 8);
  const hb = Buffer.from(s);
  const lb = Buffer.alloc(8);
  lb.writeBigUInt64LE(BigInt(hb.length));
  writeFileSync(dst, Buffer.concat([lb, hb, data]));
  return dst;
}
