// Safetensors header parsing and validation: every hostile file gets ERR_SAFETENSORS naming the file and
// the tensor/field, and nothing else is ever thrown.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync, mkdirSync, copyFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSafetensorsHeader, readSafetensorsDir, toNativeSpec, MAX_HEADER_BYTES } from '../lib/safetensors.js';
import { RepairError } from '../lib/errors.js';
import { packageRoot } from '../lib/paths.js';

const STORIES = join(packageRoot(), '..', 'shared', 'models', 'stories260K', 'hf');
const haveStories = existsSync(join(STORIES, 'model.safetensors'));
if (!haveStories) console.warn(`[safetensors.test] ${STORIES} is absent: tests on the real checkpoint are skipped`);

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-st-'));
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

let counter = 0;
function path(name = 'x.safetensors'): string {
  const d = join(tmp, `case${counter++}`);
  mkdirSync(d);
  return join(d, name);
}

/** Write [u64 len][header][data]; `header` is an object (JSON-encoded) or raw bytes/string. */
function writeST(file: string, header: unknown, dataBytes: number, opts: { headerLen?: bigint; raw?: boolean } = {}): string {
  const h = opts.raw ? (Buffer.isBuffer(header) ? header : Buffer.from(String(header))) : Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(opts.headerLen ?? BigInt(h.length));
  writeFileSync(file, Buffer.concat([len, h, Buffer.alloc(dataBytes)]));
  return file;
}

function expectSt(fn: () => unknown, ...fragments: (string | RegExp)[]): RepairError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected an error').toBeInstanceOf(RepairError);
  const err = caught as RepairError;
  expect(err.code).toBe('ERR_SAFETENSORS');
  for (const f of fragments) expect(err.message).toMatch(f);
  return err;
}

const ok = { a: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] }, b: { dtype: 'BF16', shape: [4], data_offsets: [24, 32] } };

describe('parseSafetensorsHeader: valid files', () => {
  it('parses a small file with absolute offsets', () => {
    const f = writeST(path(), { __metadata__: { format: 'pt' }, ...ok }, 32);
    const p = parseSafetensorsHeader(f);
    const hl = Buffer.byteLength(JSON.stringify({ __metadata__: { format: 'pt' }, ...ok }));
    expect(p.headerLength).toBe(hl);
    expect(p.metadata).toEqual({ format: 'pt' });
    expect(p.tensors.size).toBe(2);
    expect(p.tensors.get('a')).toMatchObject({ dtype: 'F32', shape: [2, 3], offset: 8 + hl, nbytes: 24, file: f });
    expect(p.tensors.get('b')).toMatchObject({ dtype: 'BF16', shape: [4], offset: 8 + hl + 24, nbytes: 8 });
  });

  it('accepts a space-padded header, scalars and empty tensors', () => {
    const hdr = JSON.stringify({ s: { dtype: 'F16', shape: [], data_offsets: [0, 2] }, e: { dtype: 'F32', shape: [0, 5], data_offsets: [2, 2] } });
    const f = writeST(path(), hdr + '       ', 2, { raw: true });
    const p = parseSafetensorsHeader(f);
    expect(p.tensors.get('s')!.nbytes).toBe(2);
    expect(p.tensors.get('e')!.nbytes).toBe(0);
  });

  it.skipIf(!haveStories)('parses the stories260K checkpoint', () => {
    const file = join(STORIES, 'model.safetensors');
    const p = parseSafetensorsHeader(file);
    const emb = p.tensors.get('model.embed_tokens.weight')!;
    expect(emb).toMatchObject({ dtype: 'F32', shape: [512, 64], nbytes: 512 * 64 * 4 });
    // The offsets really point at the tensor: compare with bytes read directly.
    const bytes = readFileSync(file);
    const hl = Number(bytes.readBigUInt64LE(0));
    const hdr = JSON.parse(bytes.subarray(8, 8 + hl).toString('utf8'));
    expect(emb.offset).toBe(8 + hl + hdr['model.embed_tokens.weight'].data_offsets[0]);
    for (const t of p.tensors.values()) expect(t.offset + t.nbytes).toBeLessThanOrEqual(bytes.length);
  });
});

describe('parseSafetensorsHeader: hostile files', () => {
  it('missing file', () => {
    expectSt(() => parseSafetensorsHeader(join(tmp, 'nope.safetensors')), 'nope.safetensors', /cannot open/);
  });

  it('file shorter than 8 bytes', () => {
    const f = path();
    writeFileSync(f, Buffer.from([1, 2, 3]));
    expectSt(() => parseSafetensorsHeader(f), f, /truncated/);
  });

  it('empty file', () => {
    const f = path();
    writeFileSync(f, Buffer.alloc(0));
    expectSt(() => parseSafetensorsHeader(f), /truncated/);
  });

  it('header length past the end of the file', () => {
    const f = writeST(path(), ok, 32, { headerLen: 10_000n });
    expectSt(() => parseSafetensorsHeader(f), f, /header length 10000 runs past the end/);
  });

  it('absurd header length (2^63)', () => {
    const f = writeST(path(), ok, 32, { headerLen: 1n << 63n });
    expectSt(() => parseSafetensorsHeader(f), /absurd/);
  });

  it('header length just over the 100 MB limit', () => {
    const f = writeST(path(), ok, 32, { headerLen: BigInt(MAX_HEADER_BYTES + 1) });
    expectSt(() => parseSafetensorsHeader(f), /absurd/);
  });

  it('header that is not JSON', () => {
    const f = writeST(path(), '{"a": {"dtype": "F32", ', 0, { raw: true });
    expectSt(() => parseSafetensorsHeader(f), f, /not valid JSON/);
  });

  it('header that is not UTF-8', () => {
    const f = writeST(path(), Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), 0, { raw: true });
    expectSt(() => parseSafetensorsHeader(f), /UTF-8/);
  });

  it.each([
    ['an array', '[1, 2]', /got an array/],
    ['a number', '42', /got number/],
    ['null', 'null', /got null/],
    ['a string', '"hello"', /got string/],
  ])('header JSON that is %s', (_what, raw, re) => {
    const f = writeST(path(), raw, 0, { raw: true });
    expectSt(() => parseSafetensorsHeader(f), /must be an object/, re);
  });

  it('entry that is not an object', () => {
    const f = writeST(path(), { w: 5 }, 0);
    expectSt(() => parseSafetensorsHeader(f), /tensor "w"/, /must be an object/);
  });

  it('missing dtype', () => {
    const f = writeST(path(), { w: { shape: [1], data_offsets: [0, 4] } }, 4);
    expectSt(() => parseSafetensorsHeader(f), /tensor "w"/, /dtype/);
  });

  it('unknown dtype', () => {
    const f = writeST(path(), { w: { dtype: 'Q4_K', shape: [1], data_offsets: [0, 4] } }, 4);
    const e = expectSt(() => parseSafetensorsHeader(f), /tensor "w"/, /unknown dtype "Q4_K"/);
    expect(e.details).toMatchObject({ tensor: 'w', field: 'dtype' });
  });

  it.each([
    ['not an array', 7],
    ['negative', [2, -1]],
    ['fractional', [1.5]],
    ['a string element', ['3']],
    ['unsafe integer', [2 ** 60]],
  ])('shape %s', (_what, shape) => {
    const f = writeST(path(), { w: { dtype: 'F32', shape, data_offsets: [0, 4] } }, 4);
    expectSt(() => parseSafetensorsHeader(f), /tensor "w"/, /shape/);
  });

  it('shape whose element count overflows', () => {
    const f = writeST(path(), { w: { dtype: 'F32', shape: [2 ** 30, 2 ** 30, 2 ** 30], data_offsets: [0, 4] } }, 4);
    expectSt(() => parseSafetensorsHeader(f), /tensor "w"/, /too large/);
  });

  it.each([
    ['missing', undefined],
    ['one element', [0]],
    ['end before begin', [8, 4]],
    ['negative', [-4, 0]],
    ['not numbers', ['0', '4']],
  ])('data_offsets %s', (_what, offs) => {
    const f = writeST(path(), { w: { dtype: 'F32', shape: [1], data_offsets: offs } }, 8);
    expectSt(() => parseSafetensorsHeader(f), /tensor "w"/, /data_offsets/);
  });

  it('data_offsets past the end of the data section', () => {
    const f = writeST(path(), { w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, 8);
    const e = expectSt(() => parseSafetensorsHeader(f), f, /tensor "w"/, /past the end of the data section \(8 bytes\)/);
    expect(e.details).toMatchObject({ tensor: 'w', field: 'data_offsets' });
  });

  it('data_offsets not matching shape × dtype', () => {
    const f = writeST(path(), { w: { dtype: 'F16', shape: [3, 2], data_offsets: [0, 24] } }, 24);
    expectSt(() => parseSafetensorsHeader(f), /tensor "w"/, /hold 24 bytes/, /needs 12/);
  });

  it('overlapping tensors', () => {
    const f = writeST(
      path(),
      { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [4], data_offsets: [8, 24] } },
      24,
    );
    expectSt(() => parseSafetensorsHeader(f), /overlaps/, /"a"/, /"b"/);
  });

  it('identical ranges overlap too', () => {
    const f = writeST(
      path(),
      { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'I32', shape: [2], data_offsets: [0, 8] } },
      8,
    );
    expectSt(() => parseSafetensorsHeader(f), /overlaps/);
  });

  it('a gap between tensors (issue 14: the data section must be covered without holes)', () => {
    const f = writeST(
      path(),
      { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [12, 20] } },
      20,
    );
    const e = expectSt(() => parseSafetensorsHeader(f), /tensor "b" starts at data offset 12/, /"a" ends at 8/, /without gaps/);
    expect(e.details).toMatchObject({ tensor: 'b', field: 'data_offsets' });
  });

  it('a data section that does not start at offset 0', () => {
    const f = writeST(path(), { a: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12);
    expectSt(() => parseSafetensorsHeader(f), /tensor "a" starts at data offset 4/);
  });

  it('trailing bytes that belong to no tensor', () => {
    const f = writeST(path(), ok, 33);
    expectSt(() => parseSafetensorsHeader(f), /cover 32 bytes of the 33-byte data section/, /1 trailing bytes/);
  });

  it.skipIf(!haveStories)('a header length one byte short (JSON still parses thanks to its padding) is refused', () => {
    const bytes = Buffer.from(readFileSync(join(STORIES, 'model.safetensors')));
    const hl = Number(bytes.readBigUInt64LE(0));
    expect(bytes[8 + hl - 1]).toBe(0x20); // the header ends with padding spaces: the shorter header is still JSON
    bytes.writeBigUInt64LE(BigInt(hl - 1), 0);
    const f = path();
    writeFileSync(f, bytes);
    expectSt(() => parseSafetensorsHeader(f), /cover|without gaps/);
  });

  it.skipIf(!haveStories)('F32 tensors relabelled BF16 with consistent offsets are refused', () => {
    const bytes = readFileSync(join(STORIES, 'model.safetensors'));
    const hl = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + hl).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    let off = 0;
    for (const [k, t] of Object.entries(header)) {
      if (k === '__metadata__') continue;
      t.dtype = 'BF16';
    }
    const names = Object.keys(header).filter((k) => k !== '__metadata__').sort((x, y) => header[x]!.data_offsets[0] - header[y]!.data_offsets[0]);
    for (const k of names) {
      const t = header[k]!;
      const n = t.shape.reduce((a, b) => a * b, 1) * 2;
      t.data_offsets = [off, off + n];
      off += n;
    }
    const f = writeST(path(), header, 0, { raw: false });
    writeFileSync(f, Buffer.concat([readFileSync(f), bytes.subarray(8 + hl)]));
    expectSt(() => parseSafetensorsHeader(f), /trailing bytes/);
  });

  it('bad __metadata__', () => {
    expectSt(() => parseSafetensorsHeader(writeST(path(), { __metadata__: [1], ...ok }, 32)), /__metadata__/);
    expectSt(() => parseSafetensorsHeader(writeST(path(), { __metadata__: { format: 1 }, ...ok }, 32)), /__metadata__\.format/);
  });

  it.skipIf(!haveStories)('a truncated copy of the real checkpoint names the first tensor that no longer fits', () => {
    const bytes = readFileSync(join(STORIES, 'model.safetensors'));
    const f = path();
    writeFileSync(f, bytes.subarray(0, Math.floor(bytes.length / 2)));
    expectSt(() => parseSafetensorsHeader(f), f, /tensor "model\./, /truncated/);
    // Cut inside the header.
    const g = path();
    writeFileSync(g, bytes.subarray(0, 100));
    expectSt(() => parseSafetensorsHeader(g), /runs past the end/);
  });

  it.skipIf(!haveStories)('random corruption of the header never escapes as anything but ERR_SAFETENSORS', () => {
    const bytes = readFileSync(join(STORIES, 'model.safetensors'));
    const hl = Number(bytes.readBigUInt64LE(0));
    let seed = 12345;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    const f = path();
    let errors = 0;
    for (let i = 0; i < 300; i++) {
      const b = Buffer.from(bytes.subarray(0, 8 + hl + 64)); // header + a little data is enough
      const flips = 1 + rnd(4);
      for (let k = 0; k < flips; k++) b[rnd(8 + hl)] = rnd(256);
      writeFileSync(f, b);
      try {
        parseSafetensorsHeader(f);
      } catch (e) {
        expect(e).toBeInstanceOf(RepairError);
        expect((e as RepairError).code).toBe('ERR_SAFETENSORS');
        errors++;
      }
    }
    expect(errors).toBeGreaterThan(250);
  });
});

describe('toNativeSpec', () => {
  it('refuses weight dtypes the runtime cannot hold, naming the tensor', () => {
    const f = writeST(path(), { 'model.norm.weight': { dtype: 'I64', shape: [2], data_offsets: [0, 16] } }, 16);
    const t = parseSafetensorsHeader(f).tensors.get('model.norm.weight')!; // parsing an I64 tensor is fine
    const e = expectSt(() => toNativeSpec(t), /unsupported dtype I64 for tensor "model\.norm\.weight"/, f);
    expect(e.details).toMatchObject({ tensor: 'model.norm.weight', dtype: 'I64' });
    for (const dt of ['F64', 'U8']) {
      expectSt(() => toNativeSpec({ ...t, dtype: dt }), new RegExp(`unsupported dtype ${dt}`));
    }
  });

  it('keeps F32/F16/BF16 with absolute offsets', () => {
    const f = writeST(path(), ok, 32);
    const p = parseSafetensorsHeader(f);
    const s = toNativeSpec(p.tensors.get('b')!);
    expect(s).toEqual({ name: 'b', file: f, offset: p.dataOffset + 24, nbytes: 8, dtype: 'BF16', shape: [4] });
  });
});

describe('readSafetensorsDir', () => {
  it('missing folder → ERR_IO; folder without weights → ERR_SAFETENSORS', () => {
    let e: unknown;
    try {
      readSafetensorsDir(join(tmp, 'no-such-dir'));
    } catch (x) {
      e = x;
    }
    expect((e as RepairError).code).toBe('ERR_IO');
    const d = join(tmp, `empty${counter++}`);
    mkdirSync(d);
    expectSt(() => readSafetensorsDir(d), /no model\.safetensors/);
  });

  it.skipIf(!haveStories)('reads a sharded checkpoint through model.safetensors.index.json', () => {
    const file = join(STORIES, 'model.safetensors');
    const bytes = readFileSync(file);
    const hl = Number(bytes.readBigUInt64LE(0));
    const hdr = JSON.parse(bytes.subarray(8, 8 + hl).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    const names = Object.keys(hdr).filter((k) => k !== '__metadata__').sort();
    const halves = [names.slice(0, 20), names.slice(20)];
    const d = join(tmp, `sharded${counter++}`);
    mkdirSync(d);
    const weightMap: Record<string, string> = {};
    halves.forEach((group, i) => {
      const shard = `model-0000${i + 1}-of-00002.safetensors`;
      const h: Record<string, unknown> = {};
      const chunks: Buffer[] = [];
      let off = 0;
      for (const n of group) {
        const [b, e] = hdr[n]!.data_offsets;
        const data = bytes.subarray(8 + hl + b, 8 + hl + e);
        h[n] = { dtype: hdr[n]!.dtype, shape: hdr[n]!.shape, data_offsets: [off, off + data.length] };
        chunks.push(data);
        off += data.length;
        weightMap[n] = shard;
      }
      const hb = Buffer.from(JSON.stringify(h));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(hb.length));
      writeFileSync(join(d, shard), Buffer.concat([len, hb, ...chunks]));
    });
    writeFileSync(join(d, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    const all = readSafetensorsDir(d);
    expect(all.size).toBe(names.length);
    // Every tensor's bytes at its absolute offset equal the original ones.
    for (const n of names) {
      const t = all.get(n)!;
      const shardBytes = readFileSync(t.file);
      const [b, e] = hdr[n]!.data_offsets;
      expect(Buffer.compare(shardBytes.subarray(t.offset, t.offset + t.nbytes), bytes.subarray(8 + hl + b, 8 + hl + e))).toBe(0);
    }

    // Hostile indexes.
    const bad = (index: unknown, ...re: RegExp[]): void => {
      writeFileSync(join(d, 'model.safetensors.index.json'), typeof index === 'string' ? index : JSON.stringify(index));
      expectSt(() => readSafetensorsDir(d), ...re);
    };
    bad('{not json', /index\.json/, /not valid JSON/);
    bad({ metadata: {} }, /weight_map/);
    bad({ weight_map: { ...weightMap, 'model.extra.weight': 'model-00001-of-00002.safetensors' } }, /"model\.extra\.weight"/, /not in this shard/);
    bad({ weight_map: { [names[0]!]: '../../etc/passwd' } }, /outside the model folder/);
    bad({ weight_map: { [names[0]!]: 'model-00009-of-00009.safetensors' } }, /00009/, /cannot open/);
    bad({ weight_map: { [names[0]!]: 3 } }, /must be a file name/);
  });

  it.skipIf(!haveStories)('copies of the real folder parse the same way', () => {
    const d = join(tmp, `copy${counter++}`);
    mkdirSync(d);
    for (const f of readdirSync(STORIES)) copyFileSync(join(STORIES, f), join(d, f));
    const a = readSafetensorsDir(d);
    const b = readSafetensorsDir(STORIES);
    expect([...a.keys()]).toEqual([...b.keys()]);
  });
});
