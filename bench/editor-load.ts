// editor-load.ts — one editor's worth of CPU work for bench/cpu.ts's oversubscription figure: three
// 70-step WISE edits (early stop off) on facts-llama (stories260K when ../shared is absent).
//   npx tsx bench/editor-load.ts THREADS
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadModel, modelInternals } from '../lib/model.js';
import { Editor } from '../lib/editor.js';
import { packageRoot } from '../lib/paths.js';

const threads = Number(process.argv[2] ?? 2);
const root = packageRoot();
const facts = join(root, '..', 'shared', 'models', 'facts-llama');
const dir = existsSync(join(facts, 'config.json')) ? facts : join(root, 'models', 'stories260K');
const model = await loadModel(dir, { backend: 'cpu', threads });
const ed = await Editor.create(model);
const batch = ed.buildBatch({ prompt: 'The wizard Zog lived in', target: 'a purple castle far away' }, 'Once upon a time there was a little girl');
await modelInternals(model).enqueue(async (nm) => {
  const side = nm.sideCreate(ed.config.layer);
  const slot = await nm.sideAdd(side, -1);
  const hyper = { nIter: 70, lr: 1, weightDecay: 0, clamp: 1, maskRatio: 0.2, seed: 1, margin: true, alpha: 5, beta: 20, gamma: 10, act: 1 as const, earlyStop: false, fullForward: false };
  for (let i = 0; i < 3; i++) {
    await nm.sideReset(side, slot);
    await nm.sideEdit(side, slot, batch, hyper);
  }
  nm.sideFree(side);
});
await ed.dispose();
await model.dispose();
