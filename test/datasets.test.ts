// Dataset loaders (lib/datasets.ts): every format on good records (field mapping), every kind of bad
// record (ERR_DATASET naming the file, record index and field; nothing skipped unless skipInvalid, and
// then listed), format detection, named datasets under ../shared/data, and the training-time irrelevant
// rows (§1.3).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  detectFormat,
  editSlice,
  loadCounterFact,
  loadDataset,
  loadHallucination,
  loadJsonl,
  loadTemporal,
  loadZsre,
  namedDatasetPath,
  datasetDirs,
  shippedDataDir,
  sharedDataDir,
  NAMED_DATASETS,
  withIrrelevant,
  type Dataset,
} from '../lib/datasets.js';
import { RepairError } from '../lib/errors.js';
import { packageRoot } from '../lib/paths.js';

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-datasets-'));
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

let fileNo = 0;
function write(text: string, ext = 'json'): string {
  const f = join(tmp, `f${fileNo++}.${ext}`);
  writeFileSync(f, text);
  return f;
}
const json = (v: unknown) => write(JSON.stringify(v));

function catchErr(fn: () => unknown): RepairError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(RepairError);
    return e as RepairError;
  }
  throw new Error('expected an error');
}

/** The error is ERR_DATASET and names the file, the record index and the field. */
function expectBad(fn: () => unknown, file: string, index: number | undefined, field: string | undefined, msg: RegExp): void {
  const e = catchErr(fn);
  expect(e.code).toBe('ERR_DATASET');
  expect(e.message).toContain(file);
  expect(e.message).toMatch(msg);
  expect(e.details?.file).toBe(file);
  if (index !== undefined) {
    expect(e.message).toContain(`record ${index}`);
    expect(e.details?.index).toBe(index);
  }
  if (field !== undefined) {
    expect(e.details?.field).toBe(field);
    expect(e.message).toContain(field);
  }
}

const ZSRE = {
  subject: 'UniFirst',
  src: 'What is the product made by UniFirst?',
  pred: 'uniform',
  rephrase: 'What will be the product of UniFirst?',
  alt: 'unmanned aircraft',
  answers: ['uniform'],
  loc: "nq question: john goodman's character in the big lebowski",
  loc_ans: 'Walter Sobchak',
  cond: 'uniform >> unmanned aircraft || What is the product made by UniFirst?',
};
const CF = {
  case_id: 7,
  prompt: 'The mother tongue of Danielle Darrieux is',
  target_new: 'English',
  subject: 'Danielle Darrieux',
  ground_truth: 'French',
  rephrase_prompt: 'Where Danielle Darrieux is from, people speak the language of',
  locality_prompt: 'Michel Rocard is a native speaker of',
  locality_ground_truth: 'French',
};
const HALL = { prompt: 'This is a Wikipedia passage about x. X was', target_new: 'born in 1969.', subject: 'x', locality_prompt: 'Map of South America. Looking for an antique map, historica', locality_ground_truth: 'l print or plan?' };
const TEMP = { prompt: 'Tesla, Inc.,', target_new: 'originally known as Tesla Motors, is a company.', subject: 'Tesla, Inc.,', ood_rephrase: 'Tesla, Inc., an American company, makes cars.', locality_prompt: 'What can we learn', locality_ground_truth: 'from EU colleagues?' };

describe('good records: field mapping', () => {
  it('ZsRE (MEND): prompt = src, target = alt, rephrase, locality [{loc, loc_ans}], ids by index', () => {
    const f = json([ZSRE, { ...ZSRE, src: 'Q2?', answers: undefined }]);
    const ds = loadZsre(f);
    expect(ds).toMatchObject({ name: 'zsre', format: 'zsre', file: f, skipped: [] });
    expect(ds.records).toHaveLength(2);
    expect(ds.records[0]).toEqual({
      id: 'zsre-0',
      index: 0,
      prompt: ZSRE.src,
      target: ZSRE.alt,
      rephrase: ZSRE.rephrase,
      locality: [{ prompt: ZSRE.loc, answer: ZSRE.loc_ans }],
      subject: 'UniFirst',
      groundTruth: 'uniform',
    });
    expect(ds.records[1]!.id).toBe('zsre-1');
    expect(ds.records[1]!.groundTruth).toBeUndefined();
    // a subject that is not a span of the prompt (record 1: "Q2?") is left off the record, which stays
    expect(ds.records[1]!.subject).toBeUndefined();
  });

  it('CounterFact: target = target_new, rephrase = rephrase_prompt, locality, ground truth, id from case_id', () => {
    const ds = loadCounterFact(json([CF]));
    expect(ds.records[0]).toEqual({
      id: 'counterfact-7',
      index: 0,
      prompt: CF.prompt,
      target: 'English',
      rephrase: CF.rephrase_prompt,
      locality: [{ prompt: CF.locality_prompt, answer: 'French' }],
      subject: CF.subject,
      groundTruth: 'French',
    });
  });

  it('hallucination: no rephrase; temporal: oodRephrase', () => {
    const h = loadHallucination(json([HALL])).records[0]!;
    expect(h).toEqual({ id: 'hallucination-0', index: 0, prompt: HALL.prompt, target: HALL.target_new, locality: [{ prompt: HALL.locality_prompt, answer: HALL.locality_ground_truth }], subject: 'x' });
    const t = loadTemporal(json([TEMP])).records[0]!;
    expect(t).toMatchObject({ id: 'temporal-0', prompt: TEMP.prompt, target: TEMP.target_new, oodRephrase: TEMP.ood_rephrase, locality: [{ prompt: TEMP.locality_prompt, answer: TEMP.locality_ground_truth }] });
    expect(t.rephrase).toBeUndefined();
  });

  it('JSONL: blank lines are not records; index counts records, line counts lines; ids default to line-N', () => {
    const f = write(
      [
        JSON.stringify({ prompt: 'The wizard Zog lived in', target: 'a purple castle' }),
        '',
        '   ',
        JSON.stringify({ id: 'blix', prompt: 'Blix ate', target: 'cheese', rephrase: 'Blix liked', locality: [{ prompt: 'Once upon a time', answer: 'there was' }], irrelevant: 'Tom ran.', subject: 'Blix' }),
      ].join('\r\n'),
      'jsonl',
    );
    const ds = loadJsonl(f);
    expect(ds.format).toBe('jsonl');
    expect(ds.name).toBe(f.split('/').pop()!.replace('.jsonl', ''));
    expect(ds.records).toEqual([
      { id: 'line-1', index: 0, line: 1, prompt: 'The wizard Zog lived in', target: 'a purple castle' },
      { id: 'blix', index: 1, line: 4, prompt: 'Blix ate', target: 'cheese', rephrase: 'Blix liked', irrelevant: 'Tom ran.', subject: 'Blix', locality: [{ prompt: 'Once upon a time', answer: 'there was' }] },
    ]);
  });
});

describe('bad records → ERR_DATASET naming file, index and field', () => {
  it('whole-file problems: invalid JSON, not an array, no records; a missing file is ERR_IO', () => {
    for (const [text, msg] of [
      ['[{"src": 1,', /invalid JSON/],
      ['{"src": "x"}', /expected a JSON array/],
      ['[]', /no records/],
    ] as const) {
      const f = write(text);
      expectBad(() => loadZsre(f), f, undefined, undefined, msg);
    }
    expect(catchErr(() => loadZsre(join(tmp, 'nope.json'))).code).toBe('ERR_IO');
    expect(catchErr(() => loadJsonl(join(tmp, 'nope.jsonl'))).code).toBe('ERR_IO');
  });

  it('ZsRE: a non-object record, each missing / mistyped / empty mapped field, bad answers', () => {
    const cases: [unknown, string | undefined, RegExp][] = [
      ['just a string', undefined, /expected a JSON object, got string/],
      [null, undefined, /got null/],
      [[1, 2], undefined, /got an array/],
      ...(['src', 'alt', 'rephrase', 'loc', 'loc_ans'] as const).flatMap((k): [unknown, string, RegExp][] => [
        [{ ...ZSRE, [k]: undefined }, k, new RegExp(`missing field "${k}"`)],
        [{ ...ZSRE, [k]: 3 }, k, new RegExp(`field "${k}" must be a string, got number`)],
        [{ ...ZSRE, [k]: '  ' }, k, new RegExp(`field "${k}" must be a non-empty string`)],
      ]),
      [{ ...ZSRE, subject: 5 }, 'subject', /"subject" must be a string/],
      [{ ...ZSRE, pred: [] }, 'pred', /"pred" must be a string, got an array/],
      [{ ...ZSRE, answers: 'uniform' }, 'answers', /"answers" must be an array of strings/],
      [{ ...ZSRE, answers: ['a', 2] }, 'answers[1]', /"answers\[1\]" must be a string/],
    ];
    for (const [rec, field, msg] of cases) {
      const f = json([ZSRE, ZSRE, rec]);
      expectBad(() => loadZsre(f), f, 2, field, msg);
    }
  });

  it('CounterFact: bad case_id, duplicate case_id, missing fields', () => {
    let f = json([CF, { ...CF, case_id: -1 }]);
    expectBad(() => loadCounterFact(f), f, 1, 'case_id', /case_id" must be a non-negative integer/);
    f = json([CF, { ...CF, case_id: '7' }]);
    expectBad(() => loadCounterFact(f), f, 1, 'case_id', /non-negative integer/);
    f = json([CF, { ...CF }]);
    expectBad(() => loadCounterFact(f), f, 1, 'id', /duplicate id "counterfact-7" \(first used by record 0\)/);
    for (const k of ['prompt', 'target_new', 'rephrase_prompt', 'locality_prompt', 'locality_ground_truth']) {
      f = json([{ ...CF, [k]: undefined }]);
      expectBad(() => loadCounterFact(f), f, 0, k, new RegExp(`missing field "${k}"`));
    }
    f = json([{ ...CF, ground_truth: '' }]);
    expectBad(() => loadCounterFact(f), f, 0, 'ground_truth', /non-empty/);
  });

  it('hallucination and temporal: missing / empty fields (the shipped files have empty locality answers)', () => {
    for (const k of ['prompt', 'target_new', 'locality_prompt', 'locality_ground_truth']) {
      const f = json([HALL, { ...HALL, [k]: '' }]);
      expectBad(() => loadHallucination(f), f, 1, k, /non-empty string/);
    }
    for (const k of ['prompt', 'target_new', 'ood_rephrase', 'locality_prompt', 'locality_ground_truth']) {
      const f = json([{ ...TEMP, [k]: undefined }]);
      expectBad(() => loadTemporal(f), f, 0, k, new RegExp(`missing field "${k}"`));
    }
  });

  it('JSONL: invalid JSON, non-object, unknown field, bad locality in every way, duplicate id — with the line number', () => {
    const good = JSON.stringify({ prompt: 'p', target: 't' });
    const cases: [string, string | undefined, RegExp][] = [
      ['{"prompt": "x", target: 1}', undefined, /invalid JSON/],
      ['[1]', undefined, /expected a JSON object, got an array/],
      ['{"prompt": "x"}', 'target', /missing field "target"/],
      ['{"prompt": "x", "target": 2}', 'target', /must be a string, got number/],
      ['{"prompt": "x", "target": "y", "target_new": "z"}', 'target_new', /unknown field "target_new"/],
      ['{"prompt": "x", "target": "y", "rephrase": ""}', 'rephrase', /non-empty/],
      ['{"prompt": "x", "target": "y", "locality": {"prompt": "a"}}', 'locality', /"locality" must be an array/],
      ['{"prompt": "x", "target": "y", "locality": ["a"]}', 'locality[0]', /"locality\[0\]" must be an object/],
      ['{"prompt": "x", "target": "y", "locality": [{"prompt": "a"}]}', 'locality[0].answer', /missing field "locality\[0\]\.answer"/],
      ['{"prompt": "x", "target": "y", "locality": [{"prompt": "a", "answer": 3}]}', 'locality[0].answer', /must be a string/],
      ['{"prompt": "x", "target": "y", "locality": [{"prompt": " ", "answer": "b"}]}', 'locality[0].prompt', /non-empty/],
      ['{"prompt": "x", "target": "y", "locality": [{"prompt": "a", "answer": "b", "x": 1}]}', 'locality[0].x', /unknown field "locality\[0\]\.x"/],
      ['{"id": "line-1", "prompt": "x", "target": "y"}', 'id', /duplicate id "line-1"/],
      ['{"prompt": "Who founded Acme?", "target": "y", "subject": "Acmeco"}', 'subject', /"subject" \("Acmeco"\) does not occur in the prompt/],
    ];
    for (const [line, field, msg] of cases) {
      const f = write(`${good}\n\n${line}\n`, 'jsonl');
      expectBad(() => loadJsonl(f), f, 1, field, msg);
      expect(catchErr(() => loadJsonl(f)).message).toContain('(line 3)');
    }
    const empty = write('\n\n', 'jsonl');
    expectBad(() => loadJsonl(empty), empty, undefined, undefined, /no records/);
  });

  it('skipInvalid drops bad records and lists each one; nothing is silently dropped', () => {
    const f = json([ZSRE, { ...ZSRE, alt: '' }, 'x', ZSRE]);
    const ds = loadZsre(f, { skipInvalid: true });
    expect(ds.records.map((r) => r.id)).toEqual(['zsre-0', 'zsre-3']);
    expect(ds.records.map((r) => r.index)).toEqual([0, 3]);
    expect(ds.skipped).toEqual([
      { index: 1, field: 'alt', message: 'field "alt" must be a non-empty string' },
      { index: 2, message: 'expected a JSON object, got string' },
    ]);
    const all = json([{ ...ZSRE, alt: '' }]);
    expectBad(() => loadZsre(all, { skipInvalid: true }), all, undefined, undefined, /no valid records \(1 skipped\)/);
    // whole-file errors are never skipped
    const notArray = write('{}');
    expectBad(() => loadZsre(notArray, { skipInvalid: true }), notArray, undefined, undefined, /JSON array/);
  });
});

describe('format detection and loadDataset', () => {
  it('detects each format from the first record; .jsonl by extension; unknown fields → ERR_DATASET', () => {
    expect(detectFormat(json([ZSRE]))).toBe('zsre');
    expect(detectFormat(json([CF]))).toBe('counterfact');
    expect(detectFormat(json([HALL]))).toBe('hallucination');
    expect(detectFormat(json([TEMP]))).toBe('temporal');
    expect(detectFormat(write('{"prompt": "p", "target": "t"}\n', 'jsonl'))).toBe('jsonl');
    const f = json([{ question: 'q' }]);
    expectBad(() => detectFormat(f), f, undefined, undefined, /cannot tell the dataset format/);
    expect(loadDataset(json([CF])).format).toBe('counterfact');
    // an explicit format overrides detection (and validates against it)
    const z = json([ZSRE]);
    expectBad(() => loadDataset(z, { format: 'counterfact' }), z, 0, 'prompt', /missing field "prompt"/);
    expect(catchErr(() => loadDataset(z, { format: 'csv' as never })).code).toBe('ERR_INVALID_ARG');
  });

  it('a missing file or named dataset is a clear ERR_IO', () => {
    const e = catchErr(() => loadDataset(join(tmp, 'missing.json')));
    expect(e.code).toBe('ERR_IO');
    expect(e.message).toMatch(/does not exist.*named datasets: zsre, counterfact, hallucination, temporal/);
  });

  it('named datasets resolve from dataDir, then REPAIR_DATA_DIR, then ../shared/data, then the shipped slices', () => {
    expect(sharedDataDir()).toBe(join(packageRoot(), '..', 'shared', 'data'));
    expect(datasetDirs().map((d) => d.source)).toEqual(process.env.REPAIR_DATA_DIR ? ['env', 'shared', 'shipped'] : ['shared', 'shipped']);
    expect(datasetDirs('/x').map((d) => d.source)[0]).toBe('option');
    if (existsSync(join(sharedDataDir(), NAMED_DATASETS.zsre)) && !process.env.REPAIR_DATA_DIR) {
      expect(namedDatasetPath('zsre')).toBe(join(packageRoot(), '..', 'shared', 'data', 'zsre', 'zsre_mend_train-1k.json'));
    }
    // an explicit folder wins, and one that lacks the file is an error naming where to put it
    const dir = join(tmp, 'mydata');
    mkdirSync(join(dir, 'zsre'), { recursive: true });
    copyFileSync(join(shippedDataDir(), NAMED_DATASETS.zsre), join(dir, NAMED_DATASETS.zsre));
    expect(namedDatasetPath('zsre', dir)).toBe(join(dir, NAMED_DATASETS.zsre));
    expect(loadDataset('zsre', { dataDir: dir }).file).toBe(join(dir, NAMED_DATASETS.zsre));
    const e = catchErr(() => loadDataset('temporal', { dataDir: dir }));
    expect(e.code).toBe('ERR_IO');
    expect(e.message).toContain(join(dir, NAMED_DATASETS.temporal));
    const saved = process.env.REPAIR_DATA_DIR;
    try {
      process.env.REPAIR_DATA_DIR = dir;
      expect(loadDataset('zsre').file).toBe(join(dir, NAMED_DATASETS.zsre));
      expect(catchErr(() => loadDataset('counterfact')).message).toMatch(/REPAIR_DATA_DIR/);
    } finally {
      if (saved === undefined) delete process.env.REPAIR_DATA_DIR;
      else process.env.REPAIR_DATA_DIR = saved;
    }
  });

  it('the package ships a slice of every named set, loadable as it is', () => {
    const z = loadDataset(join(shippedDataDir(), NAMED_DATASETS.zsre));
    expect(z.format).toBe('zsre');
    expect(z.records).toHaveLength(200);
    expect(z.records[0]).toMatchObject({ prompt: 'What is the product made by UniFirst?', target: 'unmanned aircraft' });
    expect(loadDataset(join(shippedDataDir(), NAMED_DATASETS.counterfact)).records).toHaveLength(200);
    expect(loadDataset(join(shippedDataDir(), NAMED_DATASETS.temporal)).records).toHaveLength(75);
    expect(loadDataset(join(shippedDataDir(), NAMED_DATASETS.hallucination), { skipInvalid: true }).records.length).toBeGreaterThan(150);
  });

  const haveShared = (Object.keys(NAMED_DATASETS) as (keyof typeof NAMED_DATASETS)[]).every((n) => existsSync(join(sharedDataDir(), NAMED_DATASETS[n])));
  it.skipIf(!haveShared)('the shipped sets: strict loading stops at their bad records; skipInvalid lists them', () => {
    const e = catchErr(() => loadDataset('zsre'));
    expect(e.code).toBe('ERR_DATASET');
    expect(e.details).toMatchObject({ index: 534, field: 'alt' });
    const z = loadDataset('zsre', { skipInvalid: true });
    expect(z.records).toHaveLength(998);
    expect(z.skipped.map((s) => s.index)).toEqual([534, 723]);
    expect(z.records[0]).toMatchObject({ prompt: 'What is the product made by UniFirst?', target: 'unmanned aircraft' });
    expect(loadDataset('counterfact').records).toHaveLength(8000);
    expect(loadDataset('temporal').records).toHaveLength(75);
    const h = loadDataset('hallucination', { skipInvalid: true });
    expect(h.records).toHaveLength(593);
    expect(h.skipped.every((s) => s.field === 'locality_ground_truth')).toBe(true);
  });
});

describe('training-time irrelevant rows (§1.3)', () => {
  const ds: Dataset = {
    name: 't',
    format: 'zsre',
    file: '/x',
    skipped: [],
    records: Array.from({ length: 5 }, (_, i) => ({ id: `r${i}`, index: i, prompt: `p${i}`, target: `t${i}`, locality: [{ prompt: `loc${i}`, answer: `ans${i}` }] })),
  };

  it('withIrrelevant: train[(i + offset) mod len] as loc + " " + loc_ans', () => {
    const train = [{ prompt: 'a', target: 'b', locality: [{ prompt: 'L0', answer: 'A0' }] }, { prompt: 'a', target: 'b', locality: [{ prompt: 'L1', answer: 'A1' }] }];
    const out = withIrrelevant(ds.records.slice(0, 3), train);
    expect(out.map((r) => r.irrelevant)).toEqual(['L0 A0', 'L1 A1', 'L0 A0']);
    expect(withIrrelevant(ds.records.slice(0, 2), train, { offset: 1 }).map((r) => r.irrelevant)).toEqual(['L1 A1', 'L0 A0']);
    expect(ds.records[0]!.irrelevant).toBeUndefined(); // not mutated
    expect(catchErr(() => withIrrelevant(ds.records, [])).code).toBe('ERR_INVALID_ARG');
    expect(catchErr(() => withIrrelevant(ds.records, [{ prompt: 'a', target: 'b' }])).code).toBe('ERR_DATASET');
  });

  it('editSlice(ds, n): the first n records, irrelevant from record (i + n) mod len, never the own pair', () => {
    expect(editSlice(ds, 2).map((r) => [r.id, r.irrelevant])).toEqual([
      ['r0', 'loc2 ans2'],
      ['r1', 'loc3 ans3'],
    ]);
    expect(editSlice(ds, 3).map((r) => r.irrelevant)).toEqual(['loc3 ans3', 'loc4 ans4', 'loc0 ans0']);
    expect(editSlice(ds, 5).map((r) => r.irrelevant)).toEqual(['loc1 ans1', 'loc2 ans2', 'loc3 ans3', 'loc4 ans4', 'loc0 ans0']);
    expect(catchErr(() => editSlice(ds, 6)).message).toMatch(/t has 5 records, fewer than the 6 edits asked for/);
    expect(catchErr(() => editSlice(ds, 0)).code).toBe('ERR_INVALID_ARG');
  });

  it('JSONL: a record keeps its own irrelevant; records without pairs keep the editor pool', () => {
    const j: Dataset = {
      ...ds,
      format: 'jsonl',
      records: [
        { id: 'a', index: 0, prompt: 'p', target: 't', irrelevant: 'mine' },
        { id: 'b', index: 1, prompt: 'p', target: 't' },
        { id: 'c', index: 2, prompt: 'p', target: 't', locality: [{ prompt: 'L', answer: 'A' }] },
      ],
    };
    expect(editSlice(j, 2).map((r) => r.irrelevant)).toEqual(['mine', 'mine']);
    expect(editSlice(j, 1).map((r) => r.irrelevant)).toEqual(['mine']);
    const none: Dataset = { ...j, records: [j.records[1]!, { ...j.records[1]!, id: 'b2' }] };
    expect(editSlice(none, 1)[0]!.irrelevant).toBeUndefined();
  });
});
