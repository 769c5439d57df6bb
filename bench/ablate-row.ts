// bench/ablate-row.ts — one `eval --ablate X` row (repair with one issue-12 mechanism off) per process, without the method row
// the CLI would also run: `npx tsx bench/ablate-row.ts X N out.json` (facts-llama, ZsRE, save 5 / merge 10, CPU, 1 thread).
import { writeFileSync } from 'node:fs';
import { loadModel } from '../lib/model.js';
import { loadDataset, editSlice } from '../lib/datasets.js';
import { evaluateVariants, recordsTooLong } from '../lib/eval.js';
import { variantsOf, type Ablation } from '../lib/cli/eval.js';
const [a, n, out] = [process.argv[2] as Ablation, Number(process.argv[3]), process.argv[4]!];
const base = { saveFreq: 5, mergeFreq: 10 };
const variants = variantsOf([], [a], base);
let ds = loadDataset('zsre', { skipInvalid: true });
const model = await loadModel('/work/shared/models/facts-llama', { backend: 'cpu', threads: 1 });
const long = new Set((await recordsTooLong(model, ds.records, base)).map((x) => x.index));
ds = { ...ds, records: ds.records.filter((_, i) => !long.has(i)) };
const records = editSlice(ds, n);
const t0 = performance.now();
const results = await evaluateVariants(model, records, variants, { ns: [n], metrics: ['tf', 'exact'], routing: 'teacher-forced', dataset: ds.name });
writeFileSync(out, JSON.stringify({ format: 'repair-edit.eval-run', version: 1, config: { argv: ['(scratch) abl.ts', a, String(n)], variants, wallSeconds: (performance.now() - t0) / 1000 }, results }, null, 1));
await model.dispose();
