// scripts/repair-paper-golden.ts — writes test/fixtures/repair-paper-golden.json: the outputs of method
// 'repair' with the paper's mechanisms only (the defaults before issue 12) on the facts model, so that a
// test can check that switching every issue-12 mechanism off reproduces them. Generated at commit a62dbf5
// (the per-ISA CPU kernels, before the issue-12 mechanisms existed) with the baseline kernels, which sum
// in the same order on every x86-64 CPU: `REPAIR_CPU_ISA=baseline npx tsx scripts/repair-paper-golden.ts`.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadModel } from '../lib/model.js';
import { Editor, type EditRequest } from '../lib/editor.js';
import { packageRoot } from '../lib/paths.js';

const FACTS = join(packageRoot(), '..', 'shared', 'models', 'facts-llama');
const ZSRE = join(packageRoot(), '..', 'shared', 'data', 'zsre', 'zsre_mend_train-1k.json');
const zsre = JSON.parse(readFileSync(ZSRE, 'utf8')) as { src: string; alt: string; loc: string; loc_ans: string }[];
const rec = (i: number): EditRequest => ({ prompt: zsre[i]!.src, target: zsre[i]!.alt, irrelevant: `${zsre[500 + i]!.loc} ${zsre[500 + i]!.loc_ans}`, id: `z${i}` });
const repair = process.argv[2] ? JSON.parse(process.argv[2]) : undefined;
const out = process.argv[3] ?? join(packageRoot(), 'test', 'fixtures', 'repair-paper-golden.json');

const model = await loadModel(FACTS, { backend: 'cpu', threads: 1 });
const ed = await Editor.create(model, { method: 'repair', saveFreq: 3, mergeFreq: 6, seed: 3, ...(repair ? { repair } : {}) });
const recs = Array.from({ length: 8 }, (_, i) => rec(i));
const events: string[] = [];
const r = await ed.editMany(recs, { onEvent: (e) => events.push(e.type) });
const probes = [...recs.map((x) => x.prompt), zsre[40]!.loc, zsre[41]!.loc];
const explain = [];
for (const p of probes) {
  const e = await ed.explain(p);
  const t = await ed.explain(p, { teacherForced: true });
  explain.push({ route: e.route, score: e.score, threshold: e.threshold, tfRoute: t.route, tfScore: t.score });
}
const gen = [];
for (const x of recs.slice(0, 4)) gen.push((await ed.generate(x.prompt, { maxNewTokens: 6 })).tokens);
writeFileSync(
  out,
  `${JSON.stringify({ results: r.results.map((x) => ({ id: x.id, steps: x.steps, loss: x.losses.at(-1), memory: x.memory, score: x.score })), events, memories: ed.memories(), explain, gen }, null, 1)}\n`,
);
await ed.dispose();
await model.dispose();
